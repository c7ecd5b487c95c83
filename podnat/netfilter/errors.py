"""The one base of every error podnat raises for input it cannot read.

    ValueError
     └── InputError                   line, text, message; str() is the one line users see
          ├── ParseError              iptables-save, restore input, nftables (netfilter.parse, netfilter.nft)
          │    └── NormaliseError     restore input that does not normalise (istio.normalise)
          ├── RoutingParseError       `ip rule` / `ip route` output (netfilter.routing)
          ├── TranscriptError         a routing transcript (istio.routing)
          ├── InitLogError            an istio-init or istio-cni log (istio.initlog)
          └── ListenersError          Envoy's listeners JSON (envoy.listeners)

istio.inputs raises InputError itself (a paste podnat refuses). The CLI and the use cases catch
InputError. Every class takes (line, text, message) in that order. Pure: no I/O.
"""

from __future__ import annotations

from typing import ClassVar


class InputError(ValueError):
    """Input podnat refuses: the 1-based line to blame (None when no line is), the offending text
    (None when not shown) and why. str() is `SUBJECT: line N: why: 'text'`, each part when there is one."""

    subject: ClassVar[str] = ""  # what the input was, said first (`listeners JSON`)
    shown_width: ClassVar[int | None] = None  # the text shown is cut to this many characters

    def __init__(self, line: int | None, text: str | None, message: str) -> None:
        self.line = line
        self.text = text
        self.message = message
        super().__init__(self._one_line())

    def _one_line(self) -> str:
        out = self.message if self.line is None else f"line {self.line}: {self.message}"
        if self.subject:
            out = f"{self.subject}: {out}"
        if self.text is None:
            return out
        shown, width = self.text, self.shown_width
        if width is not None and len(shown) > width:
            shown = shown[: width - 3] + "..."
        return f"{out}: {shown!r}"


class ParseError(InputError):
    """A line of a rule dump podnat cannot read (its number, its text, and why)."""

    shown_width = 120
    line: int
    text: str

    def __init__(self, line: int, text: str, message: str) -> None:
        super().__init__(line, text, message)
