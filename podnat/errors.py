"""podnat's own errors: each carries one line that says what to do, and the exit code to leave with."""

from __future__ import annotations

from podnat.exitcodes import ExitCode


class PodnatError(Exception):
    """An error a user can act on. `message` is one line; `code` is the documented exit code."""

    def __init__(self, message: str, code: int = ExitCode.BAD_INPUT) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class BadInput(PodnatError):
    """An input file or table podnat cannot read (exit 4)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.BAD_INPUT)


class UsageError(PodnatError):
    """Flags that do not fit together (exit 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.USAGE)
