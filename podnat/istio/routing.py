"""TPROXY mode's policy routing: does the pod deliver packets marked for Envoy locally? Pure.

In TPROXY mode istio-iptables also runs (per IP family)

    ip rule add fwmark 1337 lookup 133
    ip route add local default dev lo table 133

(mark `-t/--inbound-tproxy-mark`, table `-r/--inbound-tproxy-route-table`). Envoy's inbound leg to the
app keeps the client's address, and mangle OUTPUT restores the connection's mark (0x539) on the app's
replies: this rule and route send them back over lo to Envoy. Without either, the replies leave the
pod for the client, and inbound connections diverted by mangle ISTIO_TPROXY never complete.
"""

from __future__ import annotations

from dataclasses import dataclass

from podnat.netfilter.errors import InputError
from podnat.netfilter.model import Family
from podnat.netfilter.routing import RoutingParseError, local_default, mark_lookup, parse_routes, parse_rules


@dataclass(frozen=True, slots=True)
class TproxyRouting:
    """One IP family's policy routing for TPROXY, as read from the pod; None fields: not known."""

    family: Family
    mark: int
    table: int
    source: str  # where it was read, e.g. "exec istio-proxy: ip rule show; ip route show table 133"
    fwmark_rule: bool | None  # a rule sends packets marked `mark` to `table` before `lookup main`
    local_route: bool | None  # `table` has `local default dev lo`
    first_rule: str | None = None  # when fwmark_rule is False: the rule that routes marked packets instead
    unknown: str | None = None  # why something is not known (e.g. `ip` is not in the image)

    @property
    def broken(self) -> bool:
        return self.fwmark_rule is False or self.local_route is False

    @property
    def family_ip(self) -> str:
        """`ip` or `ip -6`: the command for this family."""
        return _ip(self.family)

    def missing(self) -> tuple[str, ...]:
        """The commands istio-iptables would have run for what is missing."""
        out = []
        ip = self.family_ip
        if self.fwmark_rule is False:
            out.append(f"{ip} rule add fwmark {self.mark} lookup {self.table}")
        if self.local_route is False:
            out.append(f"{ip} route add local default dev lo table {self.table}")
        return tuple(out)


def tproxy_routing(
    rules_text: str | None,
    routes_text: str | None,
    *,
    family: Family,
    mark: int,
    table: int,
    source: str,
    unreadable: str | None = None,
) -> TproxyRouting:
    """`ip rule show` and `ip route show table TABLE` output (None: not read, `unreadable` says why)."""
    family = Family(family)
    version = 6 if family is Family.IPV6 else 4
    why: list[str] = []
    fwmark_rule: bool | None = None
    first: str | None = None
    if rules_text is None:
        why.append(unreadable or f"`{_ip(family)} rule show` was not read")
    else:
        try:
            lookup = mark_lookup(parse_rules(rules_text), mark, str(table))
        except RoutingParseError as exc:
            why.append(f"`{_ip(family)} rule show` output not understood ({exc})")
        else:
            fwmark_rule = lookup.rule is not None
            first = lookup.first.text if lookup.first is not None else None
    local_route: bool | None = None
    if routes_text is None:
        if rules_text is not None or unreadable is None:
            why.append(f"`{_ip(family)} route show table {table}` was not read")
    else:
        try:
            local_route = local_default(parse_routes(routes_text, version)) is not None
        except RoutingParseError as exc:
            why.append(f"`{_ip(family)} route show table {table}` output not understood ({exc})")
    return TproxyRouting(family, mark, table, source, fwmark_rule, local_route, first, "; ".join(why) or None)


def _ip(family: Family) -> str:
    return "ip -6" if family is Family.IPV6 else "ip"


class TranscriptError(InputError):
    """A routing transcript that cannot be read (names the line)."""


def parse_transcript(text: str) -> dict[str, str]:
    """A transcript of commands and their output -> {command: output}.

    Each output is preceded by a line `$ COMMAND` naming it (`$ ip rule show`, `$ ip route show table 100`,
    `$ ip -6 rule show`, ...), as `inspect` runs them in the pod; spaces in a command are normalised."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("$"):
            command = " ".join(line[1:].split())
            if not command:
                raise TranscriptError(number, None, "`$` without a command")
            current = found.setdefault(command, [])
        elif current is None:
            if line.strip():
                raise TranscriptError(number, line.strip(), "output before any `$ COMMAND` line")
        else:
            current.append(line)
    if not found:
        raise TranscriptError(None, None, "no `$ COMMAND` line: expected e.g. `$ ip rule show` followed by its output")
    return {command: "\n".join(lines) + "\n" for command, lines in found.items()}


def routing_from_transcript(
    transcript: dict[str, str], *, family: Family, mark: int, table: int, source: str
) -> TproxyRouting:
    """The policy routing of one family from a transcript (`ip rule show` / `ip route show table T`; for
    IPv6 `ip -6 ...`); a command the transcript lacks is not known."""
    ip = _ip(Family(family))
    rules = transcript.get(f"{ip} rule show", transcript.get(f"{ip} rule list"))
    routes = transcript.get(f"{ip} route show table {table}", transcript.get(f"{ip} route list table {table}"))
    return tproxy_routing(rules, routes, family=family, mark=mark, table=table, source=source)
