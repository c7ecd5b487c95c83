"""`-o`'s formats. A leaf: the CLI takes it as it starts (podnat/render/emit.py prints them)."""

from __future__ import annotations

from enum import Enum


class OutputFormat(str, Enum):
    """`-o`: kubectl's forms, and the pictures and CI reports podnat adds; each command takes a subset."""

    table = "table"
    wide = "wide"
    json = "json"
    yaml = "yaml"
    mermaid = "mermaid"
    junit = "junit"

    def __str__(self) -> str:
        return self.value
