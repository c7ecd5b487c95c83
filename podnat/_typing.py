"""`assert_never` for every Python podnat supports (typing has it from 3.11). Pure."""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    from typing import assert_never
else:  # pragma: no cover - Python 3.10
    from typing import NoReturn

    def assert_never(value: NoReturn, /) -> NoReturn:
        """Mark a branch that an exhaustive `match` never reaches; mypy checks that it is so."""
        raise AssertionError(f"unhandled value: {value!r}")


__all__ = ["assert_never"]
