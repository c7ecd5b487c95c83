"""Restore input (what istio-iptables feeds `iptables-restore`) -> the text `iptables-save` prints.

    normalise_restore(text) -> str     one family's restore input (or `iptables -t T ...` commands)
                                       -> live `iptables-save` text
    canonical_rule(tokens) -> str      one rule's options (after `-A CHAIN`) in save's canonical form

Reading is podnat.netfilter.parse's (`-N`, `-I CHAIN N`, command lines, the implicit `-m tcp`) and
printing is podnat.netfilter.save's (the kernel's spelling): normalising is the two, with the
chain counters the kernel starts from ([0:0]). Pure: no I/O.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from podnat.netfilter.errors import ParseError
from podnat.netfilter.grammar import TARGET_OPTIONS, parse_rule
from podnat.netfilter.model import Family
from podnat.netfilter.parse import parse_ruleset
from podnat.netfilter.save import format_address, format_ruleset, format_spec

__all__ = ["NormaliseError", "canonical_rule", "format_address", "normalise_restore"]

_JUMPS = ("-j", "--jump", "-g", "--goto")


class NormaliseError(ParseError):
    """A line of restore input podnat cannot read; carries the line number and text."""

    @property
    def line_no(self) -> int:
        return self.line


def normalise_restore(text: str, *, ipv6: bool | None = None) -> str:
    """One family's restore input (or `iptables -t ...` commands) -> live `iptables-save` text."""
    if ipv6 is None:
        ipv6 = _looks_v6(text)
    try:
        ruleset = parse_ruleset(text, Family.IPV6 if ipv6 else Family.IPV4)
    except ParseError as exc:
        raise NormaliseError(exc.line, exc.text, exc.message) from None
    return format_ruleset(ruleset, counters=False)


def canonical_rule(tokens: Sequence[str], *, ipv6: bool = False) -> str:
    """The options of one rule (everything after `-A CHAIN`) in iptables-save's canonical order. A
    chain the rule jumps to is taken as declared. ValueError (a ParseError) when it cannot be read."""
    words = list(tokens)
    chains = {words[i + 1] for i, word in enumerate(words[:-1]) if word in _JUMPS} - TARGET_OPTIONS.keys()
    rule = parse_rule("filter", "RULE", 1, 1, " ".join(["-A", "RULE", *words]), None, words, chains)
    return format_spec(rule, Family.IPV6 if ipv6 else Family.IPV4)


def _looks_v6(text: str) -> bool:
    """Whether restore input is for ip6tables: its commands say so, or its addresses are IPv6."""
    for line in text.splitlines():
        words = line.split()
        if words and words[0].startswith("ip6tables"):
            return True
        if words and words[0].startswith("iptables"):
            return False
        for opt, value in itertools.pairwise(words):
            if opt in ("-s", "-d", "--on-ip") and ":" in value:
                return True
    return False
