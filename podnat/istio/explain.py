"""Explain a pod's rules: every flow's live path, what Istio meant, and what differs. Pure.

`explain(live, ctx)` traces the six flows; given the `expected` rule set (podnat.istio.generator) it
also traces them through the intended rules, gives each flow a status (ok, drift, broken) and diffs
the rules, naming causes. This is the one function the CLI's explain, inspect and verify share.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import Enum

from podnat.envoy.listeners import Listener
from podnat.istio.flows import (
    DNS_PROXY_PORT,
    Endpoint,
    FlowSpec,
    FlowType,
    PodContext,
    service_context,
    six_flows,
)
from podnat.istio.paths import FlowTrace, Outcome, trace_flow
from podnat.istio.reconcile import DiffKind, RuleDiff, diff_rules
from podnat.netfilter.model import Ruleset
from podnat.netfilter.reachability import Reachability, Shadowed, shadowed_rules

BROKEN = (Outcome.REFUSED, Outcome.LOOP, Outcome.DROPPED)


class FlowStatus(str, Enum):
    """A flow's live path next to the intended one."""

    OK = "ok"  # same path
    DRIFT = "drift"  # a different path
    BROKEN = "broken"  # refused, loop, dropped
    UNKNOWN = "unknown"  # a rule podnat cannot evaluate decides it


@dataclass(frozen=True, slots=True)
class Finding:
    """Something a user should know, in one sentence, with the rules it is about."""

    severity: str  # error | warning | info
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

    @property
    def failed(self) -> bool:
        return any(f.status in (FlowStatus.DRIFT, FlowStatus.BROKEN) for f in self.flows)


def same_path(a: FlowTrace, b: FlowTrace) -> bool:
    """Two traces take the same path: same legs (rules, redirects), Envoy ports and ending."""
    legs_a = [(leg.actor, leg.rules, leg.to) for leg in a.legs]
    legs_b = [(leg.actor, leg.rules, leg.to) for leg in b.legs]
    return (legs_a, a.envoy_ports, a.outcome, a.delivered_to) == (legs_b, b.envoy_ports, b.outcome, b.delivered_to)


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
) -> Explanation:
    """Trace every flow through `live` (and `expected`), diff the rules, list what stands out."""
    ctx = service_context(ctx)
    if ctx.nameserver is None:
        nameserver = captured_nameserver(expected) if expected is not None else captured_nameserver(live)
        if nameserver is not None:
            ctx = ctx.replace(nameserver=nameserver)
    specs = flows if flows is not None else six_flows(ctx)
    reports: list[FlowReport] = []
    for spec in specs:
        got = trace_flow(live, spec, ctx, listeners)
        want = trace_flow(expected, spec, ctx, expected_listeners) if expected is not None else None
        reports.append(FlowReport(got, want, flow_status(got, want)))
    reach = _shadowed(live)
    diff = diff_rules(live, expected) if expected is not None else None
    findings = _findings(reports, diff or (), live)
    findings += [Finding("info", f"shadow analysis skipped for {s}") for s in reach.skipped]
    return Explanation(tuple(reports), reach.shadowed, tuple(findings), diff)


_SHADOW_CACHE: dict[tuple[object, ...], Reachability] = {}


def _shadowed(ruleset: Ruleset) -> Reachability:
    """shadowed_rules, computed once per distinct table: `verify` meets the same table in many pods."""
    key = (ruleset.family, *((t.name, c.name, c.policy, tuple(r.spec for r in c.rules))
                            for t in ruleset.tables.values() for c in t.chains.values()))
    found = _SHADOW_CACHE.get(key)
    if found is None:
        if len(_SHADOW_CACHE) > 256:
            _SHADOW_CACHE.clear()
        found = _SHADOW_CACHE[key] = shadowed_rules(ruleset)
    return found


def captured_nameserver(ruleset: Ruleset) -> Endpoint | None:
    """The resolver whose DNS traffic the table redirects to pilot-agent (15053), if any."""
    for table in ruleset.tables.values():
        for rule in table.rules():
            target = rule.target
            ports = target.get("to-ports") if target is not None and target.name == "REDIRECT" else None
            if ports is None or ports.args[0] != str(DNS_PROXY_PORT):
                continue
            if rule.destination is not None:
                if rule.destination.negated:
                    continue  # e.g. nftables' IPv4-only rule in the IPv6 view: never matches
                address = ipaddress.ip_network(rule.destination.value.split(",")[0], strict=False)
                return Endpoint(address.network_address, 53)
            default = "10.96.0.10" if ruleset.family.value == "ipv4" else "fd00:10:96::a"
            return Endpoint(ipaddress.ip_address(default), 53)
    return None


def _findings(reports: list[FlowReport], diff: tuple[RuleDiff, ...], live: Ruleset) -> list[Finding]:
    out: list[Finding] = []
    for warning in live.warnings:
        if "legacy" in warning:
            out.append(Finding("error", "both iptables-legacy and iptables-nft rules are loaded: the kernel "
                               "evaluates both sets (a duplicate rule set); read the other with "
                               "iptables-legacy-save. Istio 1.22+ picks legacy when legacy rules exist."))
        else:
            out.append(Finding("warning", f"iptables-save warned: {warning}"))
    for report in reports:
        live_trace, want = report.live, report.expected
        title = f"type {int(report.spec.type)} ({report.spec.name})"
        if report.status is FlowStatus.BROKEN:
            out.append(Finding("error", f"{title} is {live_trace.outcome.value}: {live_trace.reason}",
                               live_trace.rules[-3:], (int(report.spec.type),)))
        elif report.status is FlowStatus.DRIFT and want is not None:
            out.append(Finding("error", f"{title} drifted: {_drift_summary(live_trace, want)}",
                               _first_difference(live_trace, want), (int(report.spec.type),)))
        elif report.status is FlowStatus.UNKNOWN:
            out.append(Finding("warning", f"{title}: {live_trace.reason}", live_trace.rules[-1:],
                               (int(report.spec.type),)))
    for d in diff:
        severity = "warning" if d.kind in (DiffKind.REORDERED, DiffKind.EXTRA_CHAIN) else "error"
        verb = {DiffKind.MISSING: "missing", DiffKind.EXTRA: "extra", DiffKind.CHANGED: "changed",
                DiffKind.REORDERED: "moved", DiffKind.MISSING_CHAIN: "missing chain",
                DiffKind.EXTRA_CHAIN: "extra chain"}[d.kind]
        affected = tuple(sorted({int(r.spec.type) for r in reports if r.status is not FlowStatus.OK
                                 and _touches(r, d)}))
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
        return "->".join(map(str, trace.envoy_ports)) or "no Envoy"

    parts = []
    if live.envoy_ports != want.envoy_ports:
        parts.append(f"crosses {ports(live)} instead of {ports(want)}")
    if live.delivered_to != want.delivered_to:
        parts.append(f"ends at {live.delivered_to} instead of {want.delivered_to}")
    if not parts:
        parts.append(f"takes {', '.join(live.rules)} instead of {', '.join(want.rules)}")
    return "; ".join(parts)


def flow_types(reports: tuple[FlowReport, ...]) -> dict[FlowType, FlowStatus]:
    """The worst status per flow type (the own-pod-IP variant counts under type 4)."""
    order = [FlowStatus.OK, FlowStatus.UNKNOWN, FlowStatus.DRIFT, FlowStatus.BROKEN]
    worst: dict[FlowType, FlowStatus] = {}
    for report in reports:
        t = report.spec.type
        if t not in worst or order.index(report.status) > order.index(worst[t]):
            worst[t] = report.status
    return worst
