"""Drift cases built by hand: each detected, with the right flow statuses and the cause in Istio terms."""

from __future__ import annotations

from pathlib import Path

import pytest

from podnat.istio.explain import FlowStatus, explain
from podnat.istio.flows import FlowType, PodContext
from podnat.istio.reconcile import DiffKind
from podnat.netfilter.parse import parse_ruleset

DEFAULT = (Path(__file__).resolve().parent.parent / "data" / "default.v4.iptables-save").read_text()


def run(live_text: str):
    expected = parse_ruleset(DEFAULT)
    return explain(parse_ruleset(live_text), PodContext(), expected=expected)


def statuses(expl):
    return {(int(f.spec.type), f.spec.variant): f.status for f in expl.flows}


def test_identical_tables_are_all_ok():
    expl = run(DEFAULT)
    assert set(statuses(expl).values()) == {FlowStatus.OK}
    assert expl.diff == ()
    assert not expl.failed


def test_a_table_as_istio_meant_it_is_traced_once_and_the_paths_are_the_same():
    from podnat.istio.paths import trace_flow

    expected = parse_ruleset(DEFAULT)
    # the live dump has counters and other line numbers: the same rules all the same
    live = parse_ruleset(DEFAULT.replace("\n-A ", "\n[3:180] -A ").replace("*nat", "# Generated\n*nat"))
    expl = explain(live, PodContext(), expected=expected)
    for flow in expl.flows:
        assert flow.expected is flow.live  # traced once
        assert _path(trace_flow(expected, flow.spec, expl_ctx(expl, flow))) == _path(flow.live)
    # one rule moved: both tables traced
    drifted = explain(
        parse_ruleset(DEFAULT.replace("-A PREROUTING -p tcp -j ISTIO_INBOUND\n", "")), PodContext(), expected=expected
    )
    assert all(flow.expected is not flow.live for flow in drifted.flows)


def _path(trace):
    """What anyone reads of a path: per leg its rules (reference and text), and how it ended."""
    legs = tuple(
        (leg.actor, leg.src, leg.dst, leg.hook, leg.verdict, leg.to, tuple((r.ref, r.text) for r in leg.hits))
        for leg in trace.legs
    )
    return legs, trace.envoy_ports, trace.outcome, trace.delivered_to, trace.reason


def expl_ctx(expl, flow):
    from podnat.istio.flows import service_context

    ctx = service_context(PodContext())
    return ctx.with_endpoint(flow.spec.destination, flow.live.delivered_to) if flow.spec.variant == "service" else ctx


def test_missing_prerouting_jump():
    expl = run(DEFAULT.replace("-A PREROUTING -p tcp -j ISTIO_INBOUND\n", ""))
    got = statuses(expl)
    assert got[(1, None)] is FlowStatus.DRIFT
    assert got[(3, None)] is FlowStatus.DRIFT  # 15090 no longer passes ISTIO_INBOUND's RETURN
    assert got[(2, None)] is FlowStatus.OK and got[(6, None)] is FlowStatus.OK
    (missing,) = [d for d in expl.diff if d.kind is DiffKind.MISSING]
    assert missing.expected.text == "-A PREROUTING -p tcp -j ISTIO_INBOUND"
    assert "includeInboundPorts" in missing.cause and "deleted" in missing.cause
    flow1 = next(f for f in expl.flows if f.spec.type is FlowType.REMOTE_TO_LOCAL)
    assert flow1.live.envoy_ports == () and flow1.expected.envoy_ports == (15006,)
    assert expl.failed


def test_excluded_inbound_port_names_the_annotation():
    live = DEFAULT.replace(
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN\n",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN\n"
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 9080 -j RETURN\n",
    )
    expl = run(live)
    assert statuses(expl)[(1, None)] is FlowStatus.DRIFT
    (extra,) = [d for d in expl.diff if d.kind is DiffKind.EXTRA]
    assert extra.live.ref == "ISTIO_INBOUND:2"
    assert "9080 bypasses the sidecar" in extra.cause
    assert "traffic.sidecar.istio.io/excludeInboundPorts" in extra.cause


def test_foreign_accept_on_top_of_output():
    live = DEFAULT.replace("-A OUTPUT -j ISTIO_OUTPUT\n", "-A OUTPUT -j ACCEPT\n-A OUTPUT -j ISTIO_OUTPUT\n")
    expl = run(live)
    got = statuses(expl)
    assert got[(2, None)] is FlowStatus.DRIFT
    assert got[(4, None)] is FlowStatus.DRIFT
    assert got[(1, None)] is FlowStatus.DRIFT  # Envoy's leg to the app now ends at OUTPUT:1
    extra = [d for d in expl.diff if d.kind is DiffKind.EXTRA]
    assert len(extra) == 1 and extra[0].foreign
    assert "not something Istio installs" in extra[0].cause and "top of OUTPUT" in extra[0].cause


def test_changed_proxy_uid_loops():
    live = DEFAULT.replace("--uid-owner 1337", "--uid-owner 1338").replace("--gid-owner 1337", "--gid-owner 1338")
    expl = run(live)
    got = statuses(expl)
    assert got[(2, None)] is FlowStatus.BROKEN
    flow2 = next(f for f in expl.flows if f.spec.type is FlowType.LOCAL_TO_REMOTE)
    assert flow2.live.outcome.value == "loop"
    changed = [d for d in expl.diff if d.kind is DiffKind.CHANGED]
    assert changed and all("runAsUser" in d.cause for d in changed)


def test_redirect_to_a_dead_port_is_refused():
    expl = run(DEFAULT.replace("--to-ports 15001", "--to-ports 15002"))
    got = statuses(expl)
    assert got[(2, None)] is FlowStatus.BROKEN and got[(4, None)] is FlowStatus.BROKEN
    (changed,) = [d for d in expl.diff if d.kind is DiffKind.CHANGED]
    assert "15002 instead of 15001" in changed.cause


def test_legacy_and_nft_both_loaded():
    live = "# Warning: iptables-legacy tables present, use iptables-legacy-save to see them\n" + DEFAULT
    expl = run(live)
    assert any("both iptables-legacy and iptables-nft" in f.message and f.severity == "error" for f in expl.findings)


def test_reordered_rule():
    lines = DEFAULT.splitlines()
    a = lines.index("-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN")
    b = lines.index("-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN")
    lines[a], lines[b] = lines[b], lines[a]
    expl = run("\n".join(lines) + "\n")
    assert [d.kind for d in expl.diff] == [DiffKind.REORDERED]


@pytest.mark.parametrize(
    "rule,cause",
    [
        ("-A ISTIO_OUTPUT -p tcp -m tcp --dport 3306 -j RETURN", "excludeOutboundPorts"),
        ("-A ISTIO_OUTPUT -d 10.0.0.0/8 -j RETURN", "excludeOutboundIPRanges"),
    ],
)
def test_outbound_exclusions_name_their_annotation(rule, cause):
    live = DEFAULT.replace("-A ISTIO_OUTPUT -j ISTIO_REDIRECT\n", f"{rule}\n-A ISTIO_OUTPUT -j ISTIO_REDIRECT\n")
    expl = run(live)
    (extra,) = [d for d in expl.diff if d.kind is DiffKind.EXTRA]
    assert cause in extra.cause
