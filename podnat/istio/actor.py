"""Who opens a connection. Pure, and a leaf: the CLI's `--from` takes it as it starts."""

from __future__ import annotations

from enum import Enum


class Actor(str, Enum):
    """Who opens a connection."""

    APP = "app"
    PROXY = "proxy"
    REMOTE = "remote"
