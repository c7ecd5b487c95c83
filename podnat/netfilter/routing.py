"""Policy routing as iproute2 prints it: `ip rule show` and `ip route show table N`. Pure.

Which table a packet carrying a given fwmark is looked up in, and whether a table delivers
everything locally (`local default dev lo`). Output of iproute2 6.1 looks like:

    0:	from all lookup local
    32765:	from all fwmark 0x539 lookup 133
    32766:	from all lookup main

    local default dev lo scope host
    local default dev lo metric 1024 pref medium
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from podnat.netfilter.errors import InputError
from podnat.netfilter.model import IPNetwork

FULL_MASK = 0xFFFFFFFF
MAIN_TABLES = frozenset({"main", "254"})
LOCAL_TABLES = frozenset({"local", "255"})
# Actions of `ip rule` that end the lookup for a packet the rule matches.
TERMINAL_ACTIONS = frozenset({"blackhole", "unreachable", "prohibit"})
# Selectors of `ip rule` that take one value (besides fwmark, handled on its own).
_SELECTORS = frozenset(
    {"from", "to", "tos", "dsfield", "iif", "oif", "uidrange", "ipproto", "sport", "dport", "tun_id", "realms"}
)
# Words that qualify a rule without deciding which packets it matches.
_QUALIFIERS_WITH_VALUE = frozenset(
    {"proto", "protocol", "suppress_prefixlength", "suppress_ifgroup", "pref", "priority", "preference"}
)
_FLAGS = frozenset({"l3mdev", "detached", "unresolved", "[detached]", "[unresolved]"})
_ROUTE_TYPES = frozenset(
    {"unicast", "local", "broadcast", "multicast", "anycast", "blackhole", "unreachable", "prohibit", "throw", "nat"}
)


class RoutingParseError(InputError):
    """A line of `ip rule` / `ip route` output podnat cannot read (its number, its text, and why)."""

    def __init__(self, line: int, text: str, message: str) -> None:
        super().__init__(line, text, message)


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """One line of `ip rule show`: its priority, what it selects, and what it does."""

    priority: int
    action: str  # lookup | goto | nop | blackhole | unreachable | prohibit
    table: str | None  # for lookup: "133", "main", "local", ...
    fwmark: int | None
    fwmask: int  # FULL_MASK when the rule prints no /MASK
    negated: bool  # `not from ...`
    selectors: tuple[str, ...]  # other selectors than `from all` and fwmark, e.g. ("iif eth0",)
    suppressed: bool  # suppress_prefixlength / suppress_ifgroup: the lookup result may be discarded
    text: str  # the line, single-spaced

    def matches_mark(self, mark: int) -> bool:
        """Does this rule select any packet carrying `mark` (nothing else known about the packet)?"""
        if self.negated or self.selectors:
            return False  # a rule that needs more than the mark may not see the packet
        return self.fwmark is None or (mark & self.fwmask) == self.fwmark


@dataclass(frozen=True, slots=True)
class Route:
    """One line of `ip route show table N`."""

    type: str  # unicast | local | broadcast | ... (iproute2 omits "unicast")
    destination: IPNetwork  # `default` is 0.0.0.0/0 or ::/0
    device: str | None
    table: str | None  # printed only by `ip route show table all`
    text: str


@dataclass(frozen=True, slots=True)
class MarkLookup:
    """Where a packet carrying a mark is routed: the rule that sends it to `table`, or the one that wins first."""

    rule: PolicyRule | None  # the rule that looks the packet up in the table asked about
    first: PolicyRule | None  # otherwise: the rule that decides first (e.g. `lookup main`), if any


def parse_rules(text: str) -> tuple[PolicyRule, ...]:
    """`ip rule show` / `ip -6 rule show` output -> the rules, in priority order."""
    rules: list[PolicyRule] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        head, sep, rest = line.partition(":")
        if not sep or not head.isdigit():
            raise RoutingParseError(number, raw, "not an `ip rule` line (PRIORITY: SELECTOR ACTION)")
        rules.append(_rule(int(head), rest.split(), number, raw))
    return tuple(sorted(rules, key=lambda r: r.priority))


def _rule(priority: int, words: list[str], number: int, raw: str) -> PolicyRule:
    action, table, fwmark, fwmask = "", None, None, FULL_MASK
    negated, suppressed = False, False
    selectors: list[str] = []
    index = 0

    def value() -> str:
        if index + 1 >= len(words):
            raise RoutingParseError(number, raw, f"`{words[index]}` without a value")
        return words[index + 1]

    while index < len(words):
        word = words[index]
        if word == "not":
            negated, index = True, index + 1
        elif word == "fwmark":
            mark, _, mask = value().partition("/")
            try:
                fwmark, fwmask = int(mark, 0), int(mask, 0) if mask else FULL_MASK
            except ValueError:
                raise RoutingParseError(number, raw, f"fwmark {value()!r} is not a number") from None
            index += 2
        elif word in ("lookup", "table"):
            action, table, index = "lookup", value(), index + 2
        elif word == "goto":
            action, index = "goto", index + 2
        elif word in TERMINAL_ACTIONS or word == "nop":
            action, index = word, index + 1
        elif word in _SELECTORS:
            if not (word == "from" and value() == "all"):
                selectors.append(f"{word} {value()}")
            index += 2
        elif word in _QUALIFIERS_WITH_VALUE:
            suppressed = suppressed or word.startswith("suppress_")
            index += 2
        elif word in _FLAGS or word.startswith("["):
            index += 1
        else:
            raise RoutingParseError(number, raw, f"unknown word {word!r} in an `ip rule` line")
    if not action:
        raise RoutingParseError(number, raw, "an `ip rule` line without an action (lookup, goto, ...)")
    text = " ".join(raw.split())  # iproute2 puts a tab after the priority
    return PolicyRule(priority, action, table, fwmark, fwmask, negated, tuple(selectors), suppressed, text)


def parse_routes(text: str, version: int) -> tuple[Route, ...]:
    """`ip route show table N` (`ip -6 ...`: version 6) output -> the routes. Multipath `nexthop` lines
    belong to the route above them and are skipped."""
    routes: list[Route] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw[0].isspace():
            continue
        words = raw.split()
        kind = "unicast"
        if words[0] in _ROUTE_TYPES:
            kind, words = words[0], words[1:]
        if not words:
            raise RoutingParseError(number, raw, "a route without a destination")
        destination = _destination(words[0], version, number, raw)
        options = dict(zip(words[1::2], words[2::2], strict=False))
        routes.append(Route(kind, destination, options.get("dev"), options.get("table"), " ".join(raw.split())))
    return tuple(routes)


def _destination(word: str, version: int, number: int, raw: str) -> IPNetwork:
    if word == "default":
        return ipaddress.ip_network("0.0.0.0/0" if version == 4 else "::/0")
    try:
        return ipaddress.ip_network(word, strict=False)
    except ValueError:
        raise RoutingParseError(number, raw, f"{word!r} is not a route destination") from None


def mark_lookup(rules: tuple[PolicyRule, ...], mark: int, table: str) -> MarkLookup:
    """Follow a packet carrying `mark`, sent from the pod to an address outside it, through the rules:
    does it reach `lookup TABLE` before a rule that decides its route (`lookup main`, blackhole, ...)?

    `lookup local` is passed over (it holds only the pod's own addresses); so are tables other than
    main whose routes are not known here, and rules whose lookup result may be suppressed."""
    for rule in rules:
        if not rule.matches_mark(mark):
            continue
        if rule.action == "lookup" and rule.table == table:
            return MarkLookup(rule, None)
        if rule.action in TERMINAL_ACTIONS:
            return MarkLookup(None, rule)
        if rule.action == "lookup" and rule.table in MAIN_TABLES and not rule.suppressed:
            return MarkLookup(None, rule)
    return MarkLookup(None, None)


def local_default(routes: tuple[Route, ...]) -> Route | None:
    """The route that delivers every destination to this host (`local default dev lo`), if the table has one."""
    for route in routes:
        if route.type == "local" and route.destination.prefixlen == 0:
            return route
    return None
