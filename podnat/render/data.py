"""Reports as plain data (dicts and lists) for `-o json` and `-o yaml`: the documented contract.

Field names here are an interface (README: "JSON output"); users' scripts depend on them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from podnat._typing import assert_never
from podnat.istio.evidence import evidence
from podnat.istio.explain import Explanation, Finding
from podnat.istio.paths import FlowTrace, Leg
from podnat.netfilter.model import Ruleset

if TYPE_CHECKING:  # types only
    from podnat.istio.reconcile import RuleDiff
    from podnat.istio.routing import TproxyRouting
    from podnat.netfilter.reachability import Shadowed
    from podnat.report import Explained, PodReport, VerifyReport


def leg_data(leg: Leg, counters: Ruleset | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "actor": leg.actor.value,
        "src": str(leg.src),
        "dst": str(leg.dst),
        "hook": leg.hook,
        "rules": list(leg.rules),
        "verdict": leg.verdict.value,
        "to": str(leg.to) if leg.to else None,
    }
    if leg.identity is not None:
        data["uid"], data["gid"] = leg.identity.uid, leg.identity.gid
    if counters is not None and counters.counters:
        data["packets"] = {ref: _packets(counters, ref) for ref in leg.rules}
    return data


def _packets(ruleset: Ruleset, ref: str) -> int | None:
    rule = ruleset.rule_by_ref(ref)
    return rule.counters.packets if rule is not None and rule.counters is not None else None


def trace_data(trace: FlowTrace, counters: Ruleset | None = None) -> dict[str, Any]:
    """The `podnat trace` object: legs, envoy_ports, proxy_ports, outcome, delivered_to (and a reason)."""
    return {
        "legs": [leg_data(leg, counters) for leg in trace.legs],
        "envoy_ports": list(trace.envoy_ports),
        "proxy_ports": list(trace.proxy_ports),
        "outcome": trace.outcome.value,
        "delivered_to": str(trace.delivered_to) if trace.delivered_to else None,
        "reason": trace.reason,
    }


def flow_data(trace: FlowTrace, counters: Ruleset | None = None) -> dict[str, Any]:
    """One element of `flows`: type, name (and variant), then the trace fields."""
    data: dict[str, Any] = {"type": int(trace.spec.type), "name": trace.spec.name}
    if trace.spec.variant:
        data["variant"] = trace.spec.variant
    data.update(trace_data(trace, counters))
    return data


def shadowed_data(shadowed: Shadowed) -> dict[str, Any]:
    return {
        "rule": shadowed.rule.ref,
        "text": shadowed.rule.text,
        "by": list(shadowed.by),
        "reason": shadowed.reason,
    }


def explanation_data(expl: Explanation, counters: Ruleset | None = None) -> dict[str, Any]:
    """The `podnat explain` object: flows (with expected and status given an intent), shadowed, findings, diff."""
    flows = []
    for report in expl.flows:
        data = flow_data(report.live, counters)
        if expl.diff is not None:
            data["expected"] = trace_data(report.expected) if report.expected else None
            data["status"] = report.status.value
        elif report.status.value != "ok":
            data["status"] = report.status.value
        flows.append(data)
    result: dict[str, Any] = {
        "flows": flows,
        "shadowed": [shadowed_data(s) for s in expl.shadowed],
        "findings": [finding_data(f) for f in expl.findings],
    }
    if expl.diff is not None:
        result["diff"] = [diff_data(d) for d in expl.diff]
    if expl.policy_routing is not None:
        result["policy_routing"] = policy_routing_data(expl.policy_routing)
    observed = evidence(expl, counters) if counters is not None else None
    if observed is not None:
        result["evidence"] = {
            "flows": [
                {"type": f.flow, "variant": f.variant, "consistent": f.consistent, "packets": dict(f.counts)}
                for f in observed.flows
            ],
            "unexpected": [
                {"rule": ref, "text": text, "packets": packets} for ref, text, packets in observed.unexpected
            ],
        }
    return result


def policy_routing_data(routing: TproxyRouting) -> dict[str, Any]:
    """A TPROXY pod's `ip rule` / `ip route` check: true, false, or null when not known (`unknown` says why)."""
    return {
        "family": routing.family.value,
        "source": routing.source,
        "mark": routing.mark,
        "table": routing.table,
        "fwmark_rule": routing.fwmark_rule,
        "local_route": routing.local_route,
        "missing": list(routing.missing()),
        "unknown": routing.unknown,
    }


def finding_data(finding: Finding) -> dict[str, Any]:
    return {
        "severity": finding.severity.value,
        "message": finding.message,
        "rules": list(finding.rules),
        "flow_types": list(finding.flow_types),
    }


def diff_data(diff: RuleDiff) -> dict[str, Any]:
    return {
        "kind": diff.kind.value,
        "table": diff.table,
        "chain": diff.chain,
        "rule": diff.ref,
        "live": diff.live.text if diff.live else None,
        "expected": diff.expected.text if diff.expected else None,
        "cause": diff.cause,
        "foreign": diff.foreign,
    }


def pod_report_data(report: PodReport) -> dict[str, Any]:
    """`podnat inspect -o json`, and each element of `verify`'s `pods`."""
    from podnat.report import (
        Explained,
        Failed,
        Relayed,
        Skipped,
    )  # the pod reports (and what they import): live commands only

    data: dict[str, Any] = {
        "pod": {
            "namespace": report.ref.namespace,
            "name": report.ref.name,
            "node": report.node,
            "ip": report.pod_ip,
            "istio_version": report.istio_version,
            "capture_mode": report.capture_mode,
            "mesh": report.mesh,
        },
        "status": report.status.value,
        "live": report.live,
        "sources": dict(report.sources),
        **({"context": dict(report.context)} if report.context is not None else {}),
        "notes": list(report.notes),
    }
    match report:
        case Explained():
            data.update(_explained_data(report))
        case Skipped():
            pass
        case Failed():
            data["error"] = {"message": report.error, "exit_code": report.error_code}
            if report.failure is not None:
                data["error"]["failure"] = report.failure
        case Relayed():
            data.update(report.body)
        case _:
            assert_never(report)
    return data


def _explained_data(report: Explained) -> dict[str, Any]:
    """An explained pod's listeners, flows, findings (its first family's), probe, and its other family."""
    data: dict[str, Any] = {}
    if report.listeners is not None:
        data["listeners"] = [
            {"name": listener.name, "address": listener.address, "port": listener.port, "binds": listener.binds}
            for listener in report.listeners
        ]
    first, *others = report.families
    data.update(explanation_data(first.explanation, first.ruleset))
    if report.probe is not None:
        data["probe"] = [
            {
                "type": p.flow,
                "variant": p.variant,
                "sent": p.sent,
                "observed": list(p.observed),
                "predicted": list(p.predicted),
                "matches": p.matches,
                "error": p.error,
            }
            for p in report.probe
        ]
    for other in others:  # a dual-stack pod's
        data["second_family"] = {"family": other.family.value, **explanation_data(other.explanation, other.ruleset)}
    return data


def verify_data(report: VerifyReport) -> dict[str, Any]:
    """`podnat verify -o json`: every pod, and counts per status."""
    summary: dict[str, int] = {"pods": len(report.pods)}
    for pod in report.pods:
        summary[pod.status.value] = summary.get(pod.status.value, 0) + 1
    return {"pods": [pod_report_data(p) for p in report.pods], "summary": summary, "exit_code": int(report.exit_code)}
