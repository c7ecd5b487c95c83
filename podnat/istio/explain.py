"""Explain a pod's rules: every flow's live path, what Istio meant, and what differs. Pure.

`explain(live, ctx)` traces the six flows; given the `expected` rule set (podnat.istio.generator) it
also traces them through the intended rules, gives each flow a status (ok, drift, broken) and diffs
the rules, naming causes. This is the one function the CLI's explain, inspect and verify share.

Two facts outside the table also decide paths: a TPROXY pod's policy routing (`policy_routing`, read
live: without `ip rule fwmark 1337 lookup 133` and its local route inbound connections never complete)
and whether DNS capture was asked for (`dns_requested`: istio-init silently skips it when it finds no
nameserver).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, replace
from enum import Enum
from operator import attrgetter
from typing import TYPE_CHECKING

from podnat.envoy.listeners import Listener
from podnat.istio.actor import Actor
from podnat.istio.era import predates_split_listeners
from podnat.istio.flows import (
    DNS_PROXY_PORT,
    Endpoint,
    FlowSpec,
    FlowType,
    PodContext,
    service_context,
    six_flows,
)
from podnat.istio.paths import FlowTrace, Leg, Outcome, trace_flow
from podnat.istio.reconcile import DiffKind, RuleDiff, diff_rules
from podnat.netfilter.model import IPAddress, Rule, Ruleset
from podnat.netfilter.reachability import Reachability, Shadowed, shadowed_rules
from podnat.netfilter.runs import spans
from podnat.netfilter.traverse import VerdictKind

if TYPE_CHECKING:  # loaded when a TPROXY pod's routing was read, not for every explain
    from podnat.istio.routing import TproxyRouting

BROKEN = (Outcome.REFUSED, Outcome.LOOP, Outcome.DROPPED)

ShadowMemo = MutableMapping[tuple[object, ...], Reachability]
"""Shadow analyses by `rules_key`, owned by a caller that explains many pods with one table (verify's run,
the agent's sweep) and passed to explain(); this module keeps nothing between calls."""


class FlowStatus(str, Enum):
    """A flow's live path next to the intended one."""

    OK = "ok"  # same path
    DRIFT = "drift"  # a different path
    BROKEN = "broken"  # refused, loop, dropped
    UNKNOWN = "unknown"  # a rule podnat cannot evaluate decides it

    def __str__(self) -> str:
        return self.value

    @property
    def rank(self) -> int:
        """0 for ok up to 3 for broken: the worse of two statuses has the higher rank."""
        return _FLOW_RANK[self]


_FLOW_RANK = {FlowStatus.OK: 0, FlowStatus.UNKNOWN: 1, FlowStatus.DRIFT: 2, FlowStatus.BROKEN: 3}


class Severity(str, Enum):
    """How much a finding matters: an error fails the pod (drift), a warning and an info do not."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Finding:
    """Something a user should know, in one sentence, with the rules it is about."""

    severity: Severity
    message: str
    rules: tuple[str, ...] = ()
    flow_types: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class FlowReport:
    """One flow: its live path, the intended one (when known) and the verdict."""

    live: FlowTrace
    expected: FlowTrace | None
    status: FlowStatus

    @property
    def spec(self) -> FlowSpec:
        return self.live.spec


@dataclass(frozen=True, slots=True)
class Explanation:
    """Everything `podnat explain` says about one rule set."""

    flows: tuple[FlowReport, ...]
    shadowed: tuple[Shadowed, ...]
    findings: tuple[Finding, ...]
    diff: tuple[RuleDiff, ...] | None  # None when no intent was given
    policy_routing: TproxyRouting | None = None  # TPROXY pods read live: the routing the flows depend on
    uncaptured: bool = False  # no intent given, and neither the app's inbound nor its outbound enters Envoy
    proxy: str = "Envoy"  # whose listeners the flows enter: Envoy's (a sidecar pod) or ztunnel's (an ambient pod)

    @property
    def failed(self) -> bool:
        return self.uncaptured or any(f.status in (FlowStatus.DRIFT, FlowStatus.BROKEN) for f in self.flows)


def same_path(a: FlowTrace, b: FlowTrace) -> bool:
    """Two traces take the same path: same legs (rules, redirects), Envoy ports and ending."""
    legs_a = [(leg.actor, leg.rules, leg.to) for leg in a.legs]
    legs_b = [(leg.actor, leg.rules, leg.to) for leg in b.legs]
    return (legs_a, a.proxy_ports, a.outcome, a.delivered_to) == (legs_b, b.proxy_ports, b.outcome, b.delivered_to)


def flow_status(live: FlowTrace, expected: FlowTrace | None) -> FlowStatus:
    if live.outcome is Outcome.UNDECIDED:
        return FlowStatus.UNKNOWN
    if live.outcome in BROKEN and (expected is None or expected.outcome not in BROKEN):
        return FlowStatus.BROKEN
    if expected is None or same_path(live, expected):
        return FlowStatus.OK
    return FlowStatus.DRIFT


def explain(
    live: Ruleset,
    ctx: PodContext,
    listeners: tuple[Listener, ...] | None = None,
    expected: Ruleset | None = None,
    flows: tuple[FlowSpec, ...] | None = None,
    expected_listeners: tuple[Listener, ...] | None = None,
    *,
    policy_routing: TproxyRouting | None = None,
    dns_requested: bool = False,
    other: Ruleset | None = None,
    other_expected: Ruleset | None = None,
    releases: Mapping[str, Ruleset] | None = None,
    shadows: ShadowMemo | None = None,
) -> Explanation:
    """Trace every flow through `live` (and `expected`), diff the rules, list what stands out.

    `policy_routing`: a TPROXY pod's `ip rule`/`ip route` as read; when broken, the flows whose
    replies depend on it are dropped. `dns_requested`: DNS capture was asked for (istio-init's
    --redirect-dns / ISTIO_META_DNS_CAPTURE), so a table without it gets a finding. `other` and
    `other_expected`: the pod's live and intended tables of its other IP family, for a connection of
    that family within a flow (see trace_flow). `releases`: the same configuration as other Istio
    releases write it, so that a release's own rule is not blamed on tampering. `shadows`: the caller's
    memo of shadow analyses (see ShadowMemo); without it the table is analysed here."""
    ctx = service_context(ctx)
    if ctx.nameserver is None:
        nameserver = (captured_nameserver(expected) if expected is not None else None) or captured_nameserver(live)
        if nameserver is not None:
            ctx = ctx.replace(nameserver=nameserver)
    specs = flows if flows is not None else six_flows(ctx)
    # (a memo key: every rule's text, 10 ms for 100,000 rules; not made when nothing is compared or memoised)
    live_key = rules_key(live) if expected is not None or shadows is not None else None
    # The usual case, a pod whose rules are as Istio meant: every expected path is the live one.
    same = (
        expected is not None
        and rules_key(expected) == live_key
        and _bound(listeners) == _bound(expected_listeners)
        and (other is None) == (other_expected is None)
        and (other is None or other_expected is None or rules_key(other) == rules_key(other_expected))
    )
    reports: list[FlowReport] = []
    for spec in specs:
        traced = trace_flow(live, spec, ctx, listeners, other)
        got = traced
        if policy_routing is not None and policy_routing.broken and replies_need_policy_routing(got, ctx):
            got = _without_policy_routing(got, policy_routing, ctx)
        want = None
        if expected is not None:
            want = traced if same else trace_flow(expected, spec, ctx, expected_listeners, other_expected)
        reports.append(FlowReport(got, want, flow_status(got, want)))
    reach = shadow_analysis(live, shadows, live_key)
    diff = None
    if expected is not None:
        diff = diff_rules(live, expected, releases=releases)
    cosmetic = tuple(d for d in diff or () if d.kind is DiffKind.COSMETIC)
    if diff is not None:
        diff = tuple(d for d in diff if d.kind is not DiffKind.COSMETIC)
    findings = _findings(reports, diff or (), live)
    uncaptured = expected is None and flows is None and not _captures_anything(reports)
    if uncaptured:
        findings.append(_nothing_captured())
    if cosmetic:
        findings.append(
            Finding(
                Severity.INFO,
                f"{len(cosmetic)} rule{'s' if len(cosmetic) > 1 else ''} written differently from the intent "
                "but the same for every packet (nft's counter keyword, option order, -m tcp spelled or implied, "
                "comments): not drift",
                tuple(d.ref for d in cosmetic[:3]),
            )
        )
    if policy_routing is not None:
        findings += _routing_findings(policy_routing, reports, ctx)
    if dns_requested and captured_nameserver(live) is None:
        findings.append(_dns_switched_off())
    findings += [Finding(Severity.INFO, f"shadow analysis skipped for {s}") for s in reach.skipped]
    era = predates_split_listeners(live)
    if era:
        findings.append(
            Finding(
                Severity.WARNING,
                "this table predates Istio 1.5: " + "; ".join(era) + ". podnat reads and traces its rules "
                "as written, but models Envoy's behaviour as of today's releases (separate outbound 15001 and inbound "
                "15006 listeners): what happens after Envoy may not be what that release's Envoy did",
            )
        )
    return Explanation(tuple(reports), reach.shadowed, tuple(findings), diff, policy_routing, uncaptured)


def replies_need_policy_routing(trace: FlowTrace, ctx: PodContext) -> bool:
    """Does the flow hand the app a connection from an address outside the pod (TPROXY's original_src)?

    The app answers that address; only the fwmark rule and its local route bring the answer back to
    Envoy over lo instead of out of the pod."""
    return any(_spoofed(leg, ctx) for leg in trace.legs)


def _spoofed(leg: Leg, ctx: PodContext) -> bool:
    return leg.actor is Actor.PROXY and not ctx.is_local(leg.src) and ctx.is_local(leg.dst.address)


def _without_policy_routing(trace: FlowTrace, routing: TproxyRouting, ctx: PodContext) -> FlowTrace:
    leg = next(leg for leg in trace.legs if _spoofed(leg, ctx))
    reason = (
        f"the app's replies to {leg.src} (marked {routing.mark:#x} by CONNMARK) are routed out of the pod "
        f"instead of back to Envoy over lo: {_routing_gap(routing)}"
    )
    return replace(trace, outcome=Outcome.DROPPED, delivered_to=None, reason=reason)


def _routing_gap(routing: TproxyRouting) -> str:
    parts = []
    if routing.fwmark_rule is False:
        parts.append(f"no `{routing.family_ip} rule fwmark {routing.mark:#x} lookup {routing.table}`")
    if routing.local_route is False:
        parts.append(f"no `local default dev lo` in table {routing.table}")
    return " and ".join(parts)


def _routing_findings(routing: TproxyRouting, reports: list[FlowReport], ctx: PodContext) -> list[Finding]:
    ip, table = routing.family_ip, routing.table
    if routing.broken:
        affected = tuple(sorted({int(r.spec.type) for r in reports if replies_need_policy_routing(r.live, ctx)}))
        tproxy = tuple(
            dict.fromkeys(
                ref
                for r in reports
                for leg in r.live.legs
                if leg.verdict is VerdictKind.TPROXY
                for ref in leg.rules[-1:]
            )
        )
        missing = " and ".join(f"`{command}`" for command in routing.missing())
        first = (
            f" (they meet `{routing.first_rule}` first)" if routing.fwmark_rule is False and routing.first_rule else ""
        )
        return [
            Finding(
                Severity.ERROR,
                f"TPROXY policy routing ({routing.family.value}) is incomplete: {missing} "
                f"{'are' if len(routing.missing()) > 1 else 'is'} missing (istio-init runs "
                f"{'them' if len(routing.missing()) > 1 else 'it'} in TPROXY mode). Packets marked {routing.mark:#x}, "
                "the app's replies on inbound connections diverted by mangle ISTIO_TPROXY (they carry the client's "
                f"address), are routed out of the pod instead of being delivered locally to Envoy over lo{first}: "
                f"inbound connections never complete. Restart the pod so istio-init runs again; check with `{ip} rule "
                f"show` and `{ip} route show table {table}` in the pod.",
                tproxy,
                affected,
            )
        ]
    if routing.unknown is not None:
        return [
            Finding(
                Severity.WARNING,
                f"TPROXY policy routing ({routing.family.value}) not known: {routing.unknown}. "
                "Inbound connections need "
                f"`{ip} rule fwmark {routing.mark:#x} lookup {table}` and `local default dev lo` in table {table}; "
                f"podnat assumes they are there (check with `{ip} rule show` and `{ip} route show table {table}` in "
                "the pod, or rerun with --debug-container).",
            )
        ]
    return []


def _captures_anything(reports: list[FlowReport]) -> bool:
    """Whether any of the app's connections, in (type 1) or out (type 2), is sent into Envoy."""
    directions = (FlowType.REMOTE_TO_LOCAL, FlowType.LOCAL_TO_REMOTE)
    return any(report.live.envoy_ports for report in reports if report.spec.type in directions)


def _nothing_captured() -> Finding:
    # Without an intent to compare with, a table that sends nothing to Envoy (a published
    # `iptables -t nat -S -v` of a host with one DNAT rule) would otherwise read as a healthy pod.
    return Finding(
        Severity.ERROR,
        "nothing in this table sends the app's traffic to Envoy: neither inbound (type 1) nor outbound (type 2) "
        "connections are redirected (no Istio chain or REDIRECT/TPROXY to Envoy's ports leads there). If this is "
        "a sidecar pod's table, capture is not installed and every flow goes straight past Envoy (istio-init or "
        "istio-cni did not run, interception mode NONE, or the rules were flushed); if it is not a mesh pod's "
        "table, there is no capture to explain",
        (),
        (int(FlowType.REMOTE_TO_LOCAL), int(FlowType.LOCAL_TO_REMOTE)),
    )


def _dns_switched_off() -> Finding:
    return Finding(
        Severity.WARNING,
        "DNS capture was requested (ISTIO_META_DNS_CAPTURE=true / --redirect-dns) but the table redirects "
        f"no DNS to pilot-agent's DNS proxy ({DNS_PROXY_PORT}): istio-init switches DNS capture off, silently, "
        "when it finds no nameserver in the pod's /etc/resolv.conf at start. The app's DNS goes straight to the "
        "resolver, not through the proxy, so ServiceEntry hostnames (and other names only the mesh knows) will "
        "not resolve. Check the pod's /etc/resolv.conf (`kubectl exec POD -c istio-proxy -- cat "
        "/etc/resolv.conf`, and the pod's dnsPolicy/dnsConfig), then restart the pod.",
        (),
        (int(FlowType.DNS),),
    )


_SPEC = attrgetter("spec")


def rules_key(ruleset: Ruleset) -> tuple[object, ...]:
    """What a table does, as a comparable value: its rules' texts in every table and chain, policies
    and base chains. Two tables with one key give every packet the same path and the same rule numbers."""
    return (
        ruleset.family,
        ruleset.declared_base_chains,
        *(
            (t.name, c.name, c.policy, tuple(map(_SPEC, c.rules)))
            for t in ruleset.tables.values()
            for c in t.chains.values()
        ),
    )


def _bound(listeners: tuple[Listener, ...] | None) -> tuple[Listener, ...] | None:
    """The listeners a path can meet: those that bind their port (None: Istio's standard set)."""
    return None if listeners is None else tuple(sorted((x for x in listeners if x.binds), key=repr))


def shadow_analysis(
    ruleset: Ruleset, memo: ShadowMemo | None = None, key: tuple[object, ...] | None = None
) -> Reachability:
    """shadowed_rules(ruleset), looked up first in the caller's `memo` by `key` (its rules_key) and kept there."""
    if memo is None:
        return shadowed_rules(ruleset)
    key = rules_key(ruleset) if key is None else key
    found = memo.get(key)
    if found is None:
        found = memo[key] = shadowed_rules(ruleset)
    return found


def captured_nameserver(ruleset: Ruleset) -> Endpoint | None:
    """The resolver whose DNS traffic the table redirects to pilot-agent (15053), if any."""
    for address in _dns_redirects(ruleset):
        # None: capture-all, any resolver; podnat picks the usual cluster DNS address
        default = ipaddress.ip_address("10.96.0.10" if ruleset.family.value == "ipv4" else "fd00:10:96::a")
        return Endpoint(address or default, 53)
    return None


def captured_nameservers(ruleset: Ruleset) -> tuple[str, ...]:
    """Every resolver the table redirects to 15053 by address: the nameservers istio-init found."""
    return tuple(dict.fromkeys(str(a) for a in _dns_redirects(ruleset) if a is not None))


def _dns_redirects(ruleset: Ruleset) -> list[IPAddress | None]:
    """The destinations of the rules that redirect DNS to 15053, in order (None: any destination)."""
    found: list[IPAddress | None] = []
    # a run read from one template (one target) is looked at once: its rules only if it redirects DNS
    for chain in (c for t in ruleset.tables.values() for c in t.chains.values()):
        for start, stop in spans(chain):
            target = chain.rules[start].target
            ports = target.get("to-ports") if target is not None and target.name == "REDIRECT" else None
            if ports is not None and ports.args[0] == str(DNS_PROXY_PORT):
                found += _destinations(chain.rules[start:stop])
    return found


def _destinations(rules: tuple[Rule, ...]) -> list[IPAddress | None]:
    """The destinations of `rules`, in order: None for a rule with none (any destination)."""
    found: list[IPAddress | None] = []
    for rule in rules:
        if rule.destination is None:
            found.append(None)
        elif not rule.destination.negated:  # negated: e.g. nftables' IPv4-only rule in the IPv6 view
            for value in rule.destination.value.split(","):
                found.append(ipaddress.ip_network(value, strict=False).network_address)
    return found


def _findings(reports: list[FlowReport], diff: tuple[RuleDiff, ...], live: Ruleset) -> list[Finding]:
    out: list[Finding] = []
    for warning in live.warnings:
        if "legacy" in warning:
            out.append(
                Finding(
                    Severity.ERROR,
                    "both iptables-legacy and iptables-nft rules are loaded: the kernel "
                    "evaluates both sets (a duplicate rule set); read the other with "
                    "iptables-legacy-save. Istio 1.22+ picks legacy when legacy rules exist.",
                )
            )
        else:
            out.append(Finding(Severity.WARNING, f"iptables-save warned: {warning}"))
    for report in reports:
        live_trace, want = report.live, report.expected
        title = f"type {int(report.spec.type)} ({report.spec.name})"
        if report.status is FlowStatus.BROKEN:
            out.append(
                Finding(
                    Severity.ERROR,
                    f"{title} is {live_trace.outcome.value}: {live_trace.reason}",
                    live_trace.rules[-3:],
                    (int(report.spec.type),),
                )
            )
        elif report.status is FlowStatus.DRIFT and want is not None:
            out.append(
                Finding(
                    Severity.ERROR,
                    f"{title} drifted: {_drift_summary(live_trace, want)}",
                    _first_difference(live_trace, want),
                    (int(report.spec.type),),
                )
            )
        elif report.status is FlowStatus.UNKNOWN:
            out.append(
                Finding(
                    Severity.WARNING, f"{title}: {live_trace.reason}", live_trace.rules[-1:], (int(report.spec.type),)
                )
            )
    return out + (_diff_findings(reports, diff) if diff else [])


def _diff_findings(reports: list[FlowReport], diff: tuple[RuleDiff, ...]) -> list[Finding]:
    """One finding per rule that differs from the intent, with the flows it touches."""
    out: list[Finding] = []
    for d in diff:
        severity = (
            Severity.WARNING if d.kind in (DiffKind.REORDERED, DiffKind.EXTRA_CHAIN) or d.releases else Severity.ERROR
        )
        verb = {
            DiffKind.MISSING: "missing",
            DiffKind.EXTRA: "extra",
            DiffKind.CHANGED: "changed",
            DiffKind.REORDERED: "moved",
            DiffKind.MISSING_CHAIN: "missing chain",
            DiffKind.EXTRA_CHAIN: "extra chain",
            DiffKind.COSMETIC: "written differently",
        }[d.kind]
        affected = tuple(
            sorted({int(r.spec.type) for r in reports if r.status is not FlowStatus.OK and _touches(r, d)})
        )
        out.append(Finding(severity, f"{verb} {d.text}: {d.cause}", (d.ref,), affected))
    return out


def _touches(report: FlowReport, d: RuleDiff) -> bool:
    refs = set(report.live.rules) | set(report.expected.rules if report.expected else ())
    return any(r is not None and r.ref in refs for r in (d.live, d.expected)) or d.kind is DiffKind.MISSING


def _first_difference(live: FlowTrace, want: FlowTrace) -> tuple[str, ...]:
    for got_leg, want_leg in zip(live.legs, want.legs, strict=False):
        if got_leg.rules != want_leg.rules:
            return tuple(r for r in got_leg.rules if r not in want_leg.rules) or want_leg.rules
    return live.rules[-1:]


def _drift_summary(live: FlowTrace, want: FlowTrace) -> str:
    def ports(trace: FlowTrace) -> str:
        return "->".join(map(str, trace.proxy_ports)) or (
            "no ztunnel" if trace.ztunnel_ports or want.ztunnel_ports else "no Envoy"
        )

    parts = []
    if live.proxy_ports != want.proxy_ports:
        parts.append(f"crosses {ports(live)} instead of {ports(want)}")
    if live.delivered_to != want.delivered_to:
        parts.append(f"ends at {live.delivered_to} instead of {want.delivered_to}")
    if not parts:
        parts.append(f"takes {', '.join(live.rules)} instead of {', '.join(want.rules)}")
    return "; ".join(parts)


def flow_types(reports: tuple[FlowReport, ...]) -> dict[FlowType, FlowStatus]:
    """The worst status per flow type (the own-pod-IP variant counts under type 4)."""
    worst: dict[FlowType, FlowStatus] = {}
    for report in reports:
        t = report.spec.type
        if t not in worst or report.status.rank > worst[t].rank:
            worst[t] = report.status
    return worst
