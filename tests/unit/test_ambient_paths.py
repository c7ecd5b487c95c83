"""Ambient flows through real in-pod tables (Istio's cni-ambient goldens as the kernel lists them)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from podnat.istio.ambient import AmbientConfig, ambient_nft_listing
from podnat.istio.ambient_paths import ambient_flows, ambient_routing, explain_ambient, trace_ambient
from podnat.istio.explain import FlowStatus
from podnat.istio.flows import Endpoint, context_for
from podnat.istio.goldens import GOLDEN_CASES, CaseKind, ambient_case_config
from podnat.istio.paths import Outcome
from podnat.istio.routing import parse_transcript
from podnat.netfilter.model import Family, Ruleset
from podnat.netfilter.nft import parse_nft
from podnat.netfilter.parse import parse_ruleset

DATA = Path(__file__).resolve().parent.parent / "data"
AMBIENT = DATA / "ambient"
NFT_LISTINGS = DATA / "nft" / "cni-ambient-nftables"
CTX = context_for(None, "ipv4").replace(nameserver=Endpoint(ipaddress.IPv4Address("10.96.0.10"), 53))

# The default in-pod table (`iptables-save` of Istio's default golden loaded into a kernel), flow by flow:
# each leg's rules in the order the kernel runs them, the ztunnel ports entered, where it ended.
EXPECTED = {
    "hbone": (
        [
            ["raw/PREROUTING:1", "mangle/PREROUTING:1", "PREROUTING:1"],
            [
                "raw/OUTPUT:1",
                "mangle/OUTPUT:1",
                "OUTPUT:1",
                "ISTIO_OUTPUT:5",
                "raw/PREROUTING:1",
                "mangle/PREROUTING:1",
                "mangle/ISTIO_PRERT:1",
            ],
        ],
        (15008,),
        "10.99.0.2:9080",
    ),
    "plaintext": (
        [
            ["raw/PREROUTING:1", "mangle/PREROUTING:1", "PREROUTING:1", "ISTIO_PRERT:2"],
            [
                "raw/OUTPUT:1",
                "mangle/OUTPUT:1",
                "OUTPUT:1",
                "ISTIO_OUTPUT:5",
                "raw/PREROUTING:1",
                "mangle/PREROUTING:1",
                "mangle/ISTIO_PRERT:1",
            ],
        ],
        (15006,),
        "10.99.0.2:9080",
    ),
    "reply": (
        [
            [
                "raw/OUTPUT:1",
                "mangle/OUTPUT:1",
                "OUTPUT:1",
                "ISTIO_OUTPUT:5",
                "raw/PREROUTING:1",
                "mangle/PREROUTING:1",
                "mangle/ISTIO_PRERT:1",
            ],
            ["raw/OUTPUT:1", "mangle/OUTPUT:1", "mangle/ISTIO_OUTPUT:1"],
        ],
        (),
        "10.99.0.1:50000",
    ),
    None: (
        [
            [
                "raw/OUTPUT:1",
                "mangle/OUTPUT:1",
                "OUTPUT:1",
                "ISTIO_OUTPUT:6",
                "raw/PREROUTING:1",
                "mangle/PREROUTING:1",
            ],
            ["raw/OUTPUT:1", "mangle/OUTPUT:1", "OUTPUT:1"],
        ],
        (15001,),
        "10.99.0.1:9080",
    ),
    "own-pod-ip": (
        [["raw/OUTPUT:1", "mangle/OUTPUT:1", "OUTPUT:1", "ISTIO_OUTPUT:5", "raw/PREROUTING:1", "mangle/PREROUTING:1"]],
        (),
        "10.99.0.2:9080",
    ),
    "udp": (
        [["raw/OUTPUT:1", "mangle/OUTPUT:1", "OUTPUT:1", "ISTIO_OUTPUT:2", "raw/PREROUTING:1", "mangle/PREROUTING:1"]],
        (15053,),
        "127.0.0.1:15053",
    ),
    "tcp": (
        [["raw/OUTPUT:1", "mangle/OUTPUT:1", "OUTPUT:1", "ISTIO_OUTPUT:3", "raw/PREROUTING:1", "mangle/PREROUTING:1"]],
        (15053,),
        "127.0.0.1:15053",
    ),
    "probe": ([["raw/PREROUTING:1", "mangle/PREROUTING:1", "PREROUTING:1", "ISTIO_PRERT:1"]], (), "10.99.0.2:9080"),
}
NFT_NAMES = {
    "raw": "istio-ambient-raw",
    "mangle": "istio-ambient-mangle",
    "nat": "istio-ambient-nat",
    "PREROUTING": "prerouting",
    "OUTPUT": "output",
    "ISTIO_PRERT": "istio-prerouting",
    "ISTIO_OUTPUT": "istio-output",
}


def _key(spec_variant: str | None, type_: int) -> str | None:
    return "probe" if type_ == 8 else spec_variant


def _nft_ref(ref: str) -> str:
    table, _, rest = ref.rpartition("/")
    chain, _, number = rest.partition(":")
    return f"{NFT_NAMES[table or 'nat']}/{NFT_NAMES[chain]}:{number}"


def iptables_table() -> Ruleset:
    return parse_ruleset((AMBIENT / "default.v4.iptables-save").read_text())


@pytest.mark.parametrize("form", ["iptables", "nft"])
def test_every_flow_through_the_default_table(form: str) -> None:
    if form == "iptables":
        table = iptables_table()
    else:
        table = parse_nft((NFT_LISTINGS / "default.nft-list-ruleset").read_text(), Family.IPV4)
    seen = set()
    for spec in ambient_flows(CTX):
        key = _key(spec.variant, int(spec.type))
        legs, ports, end = EXPECTED[key]
        if form == "nft":
            legs = [[_nft_ref(ref) for ref in leg] for leg in legs]
        trace = trace_ambient(table, spec, CTX)
        assert [list(leg.rules) for leg in trace.legs] == legs, spec.name
        assert (trace.proxy_ports, trace.envoy_ports, trace.outcome, str(trace.delivered_to)) == (
            ports,
            (),
            Outcome.DELIVERED,
            end,
        ), spec.name
        seen.add(key)
    assert seen == set(EXPECTED)


@pytest.mark.parametrize(
    "case",
    [
        c
        for c in GOLDEN_CASES
        if c.kind is CaseKind.AMBIENT and c.path.startswith("nftables/") and not c.settings.get("host")
    ],
    ids=lambda c: c.path,
)
def test_nft_listing_is_the_kernels(case: object) -> None:
    """podnat's live form of each ambient nftables golden is what the kernel listed after loading it."""
    config = ambient_case_config(case)  # type: ignore[arg-type]
    name = Path(case.path).stem  # type: ignore[attr-defined]
    assert ambient_nft_listing(config) == (NFT_LISTINGS / f"{name}.nft-list-ruleset").read_text()


def test_ztunnels_socket_is_not_recaptured_and_a_wrong_mark_is() -> None:
    table = iptables_table()
    spec = next(s for s in ambient_flows(CTX) if s.type == 2)
    marked = trace_ambient(table, spec.__class__(spec.type, "t", spec.actor.__class__("proxy"), spec.destination), CTX)
    assert [list(leg.rules) for leg in marked.legs] == [["raw/OUTPUT:1", "mangle/OUTPUT:1", "OUTPUT:1"]]
    unmarked = trace_ambient(
        table, spec.__class__(spec.type, "t", spec.actor.__class__("proxy"), spec.destination), CTX, mark=0
    )
    assert unmarked.proxy_ports == (15001,)


def test_rules_gone_is_broken_with_istios_words() -> None:
    result = explain_ambient(Ruleset(Family.IPV4), CTX)
    assert result.findings[0].message.startswith(
        "enrolled in ambient but its traffic bypasses ztunnel: no ISTIO_PRERT/ISTIO_OUTPUT in the pod"
    )
    status = {(int(r.spec.type), r.spec.variant): r.status for r in result.flows}
    assert status[(1, "plaintext")] is FlowStatus.BROKEN and status[(2, None)] is FlowStatus.BROKEN
    assert result.failed


def test_missing_policy_routing_breaks_inbound_and_names_the_commands() -> None:
    transcript = parse_transcript((AMBIENT / "routing-missing.txt").read_text())
    routing = ambient_routing(Family.IPV4, transcript["ip rule show"], transcript["ip route show table 100"], "test")
    result = explain_ambient(iptables_table(), CTX, policy_routing=routing)
    outcome = {(int(r.spec.type), r.spec.variant): r.live.outcome for r in result.flows}
    assert outcome[(1, "plaintext")] is outcome[(1, "hbone")] is outcome[(1, "reply")] is Outcome.DROPPED
    assert outcome[(2, None)] is Outcome.DELIVERED
    reply = next(r.live for r in result.flows if r.spec.variant == "reply")
    assert reply.reason.endswith(
        "no `ip rule add fwmark 0x111/0xfff lookup 100` and no `ip route add local 0.0.0.0/0 dev lo table 100`"
    )
    good = parse_transcript((AMBIENT / "routing.txt").read_text())
    fine = ambient_routing(Family.IPV4, good["ip rule show"], good["ip route show table 100"], "test")
    assert not explain_ambient(iptables_table(), CTX, policy_routing=fine).failed


def test_ztunnel_not_listening_is_refused() -> None:
    result = explain_ambient(iptables_table(), CTX, listening=(15008, 15053))
    outcome = {(int(r.spec.type), r.spec.variant): r.live for r in result.flows}
    assert outcome[(1, "plaintext")].outcome is Outcome.REFUSED
    assert "ztunnel's plaintext inbound listener (15006) is not listening" in outcome[(1, "plaintext")].reason
    assert outcome[(2, None)].outcome is Outcome.REFUSED
    assert any("ztunnel is not listening on 15001, 15006" in f.message for f in result.findings)


def test_intent_from_annotations_reconciles() -> None:
    from podnat.istio.ambient import ambient_expected

    live = iptables_table()
    same = parse_ruleset(ambient_expected(AmbientConfig()).v4)
    assert not explain_ambient(live, CTX, same).failed
    bypass = parse_ruleset(
        ambient_expected(AmbientConfig.from_pod_annotations({"ambient.istio.io/bypass-inbound-capture": "true"})).v4
    )
    result = explain_ambient(live, CTX, bypass)
    drifted = {(int(r.spec.type), r.spec.variant) for r in result.flows if r.status is FlowStatus.DRIFT}
    assert (1, "plaintext") in drifted
    assert result.diff


def test_rule_diff_names_the_setting() -> None:
    from podnat.istio.ambient import ambient_expected

    live_text = (AMBIENT / "default.v4.iptables-save").read_text()
    intent = parse_ruleset(
        ambient_expected(AmbientConfig.from_pod_annotations({"ambient.istio.io/dns-capture": "false"})).v4
    )
    causes = {d.ref: d.cause for d in explain_ambient(parse_ruleset(live_text), CTX, intent).diff or ()}
    assert causes["ISTIO_OUTPUT:2"] == (
        "the app's DNS to ztunnel's DNS proxy (15053): istio-cni writes this only when DNS capture is on (the "
        "agent's default from 1.25, or ambient.istio.io/dns-capture=true), which is not so for this pod"
    )
    # the connmark rule deleted: inbound breaks, and the diff says what istio-cni would have written
    deleted = live_text.replace("-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff\n", "")
    result = explain_ambient(parse_ruleset(deleted), CTX, parse_ruleset(ambient_expected(AmbientConfig()).v4))
    status = {(int(r.spec.type), r.spec.variant): r.status for r in result.flows}
    assert status[(1, "plaintext")] is status[(1, "hbone")] is status[(1, "reply")] is FlowStatus.BROKEN
    (missing,) = [d for d in result.diff or () if d.kind.value == "missing"]
    assert missing.ref == "mangle/ISTIO_PRERT:1"
    assert missing.cause.startswith(
        "ztunnel's inbound return path (connmark 0x111): istio-cni writes this for a "
        "pod where the pod is not in ingress mode"
    )
