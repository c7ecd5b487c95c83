"""The native nftables form of the expected model: Istio's nftables goldens, the kernel's listing, and
reconcile of a pod in native nftables mode (live `nft list ruleset` against the expected listing)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REFERENCE

from podnat.intent import expected_ruleset, intent_for_pod
from podnat.istio.config import InterceptionConfig, InterceptionMode, IstioRelease
from podnat.istio.explain import FlowStatus, explain
from podnat.istio.flows import PodContext, context_for
from podnat.istio.generator_nft import expected_nft, listing_rule, nft_listing, nft_script
from podnat.istio.goldens import GOLDEN_CASES, CaseKind, GoldenCase, case_config
from podnat.istio.mesh import MeshMode
from podnat.istio.pod import read_pod
from podnat.istio.reconcile import DiffKind
from podnat.netfilter.model import Family
from podnat.netfilter.nft import parse_nft

GOLDENS = REFERENCE / "goldens"
KERNEL_SAVE = REFERENCE / "kernel-save" / "nftables"
NFT_CASES = [case for case in GOLDEN_CASES if case.kind is CaseKind.ISTIO_NFTABLES]
LOADED = [case for case in NFT_CASES if (KERNEL_SAVE / f"{case.kernel_save}.nft-list-ruleset").exists()]
NAT = "istio-proxy-nat"
DEFAULT_ARGS = "istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x '' -b '*' -d 15090,15021,15020"
NFT_ARGS = f"{DEFAULT_ARGS} --native-nftables"


def config_of(case: GoldenCase) -> InterceptionConfig:
    config = case_config(case)
    assert config is not None and config.native_nftables
    return config


def nft_pod(reference: Path) -> dict[str, Any]:
    """The injected Deployment of tests/data/istio/pod-specs, with `--native-nftables` added to istio-init."""
    workload = next(d for d in yaml.safe_load_all((reference / "pod-specs" / "hello.yaml.injected").read_text()) if d)
    init = next(c for c in workload["spec"]["template"]["spec"]["initContainers"] if c["name"] == "istio-init")
    init["args"] = [*init["args"], "--native-nftables"]
    return dict(workload)


def test_every_nftables_golden_has_a_case(reference: Path) -> None:
    on_disk = {str(p.relative_to(GOLDENS)) for p in (GOLDENS / "nftables").glob("*.golden")}
    assert on_disk == {case.path for case in NFT_CASES}
    assert len(NFT_CASES) == 28 and len(LOADED) == 24
    ambient = {str(p.relative_to(GOLDENS)) for p in (GOLDENS / "nftables" / "cni-ambient-nftables").glob("*.golden")}
    assert ambient == {c.path for c in GOLDEN_CASES if c.kind is CaseKind.AMBIENT and c.path.startswith("nftables/")}


@pytest.mark.parametrize("case", NFT_CASES, ids=lambda c: c.path)
def test_golden_script_reproduced(case: GoldenCase) -> None:
    assert nft_script(config_of(case)) == (GOLDENS / case.path).read_text()


@pytest.mark.parametrize("case", LOADED, ids=lambda c: c.path)
def test_listing_is_the_kernels(case: GoldenCase) -> None:
    """The generated listing is the text `nft list ruleset` printed after loading the golden."""
    live = (KERNEL_SAVE / f"{case.kernel_save}.nft-list-ruleset").read_text()
    config = config_of(case)
    assert nft_listing(config) == live
    for family in Family:
        want = parse_nft(live, family)
        got = expected_nft(config)[family]
        assert [(r.ref, r.spec) for t in got.tables.values() for r in t.rules()] == [
            (r.ref, r.spec) for t in want.tables.values() for r in t.rules()
        ]
        assert got.declared_base_chains == want.declared_base_chains


LISTED = [  # (the script's spelling, the kernel's)
    (
        "oifname lo ip saddr 127.0.0.6/32 counter return",
        'oifname "lo" ip saddr 127.0.0.6 counter packets 0 bytes 0 return',
    ),
    ("meta l4proto tcp tcp dport 15008 counter return", "tcp dport 15008 counter packets 0 bytes 0 return"),
    # capture-all DNS (istio-cni): not in the corpus; the tcp test implies the l4proto one
    (
        "meta l4proto tcp tcp dport 53 counter redirect to :15053",
        "tcp dport 53 counter packets 0 bytes 0 redirect to :15053",
    ),
    (
        "meta l4proto tcp ct state related,established counter jump istio-divert",
        "meta l4proto tcp ct state established,related counter packets 0 bytes 0 jump istio-divert",
    ),
    (
        "meta l4proto tcp mark 1337 counter ct mark set mark",
        "meta l4proto tcp meta mark 0x00000539 counter packets 0 bytes 0 ct mark set meta mark",
    ),
    (
        "meta l4proto tcp ct mark 1337 counter meta mark set ct mark",
        "meta l4proto tcp ct mark 0x00000539 counter packets 0 bytes 0 meta mark set ct mark",
    ),
    (
        "iifname lo meta l4proto tcp mark != 1338 counter return",
        'iifname "lo" meta l4proto tcp meta mark != 0x0000053a counter packets 0 bytes 0 return',
    ),
    ("ip daddr 127.0.0.1/8 counter return", "ip daddr 127.0.0.0/8 counter packets 0 bytes 0 return"),
    (
        "ip6 daddr ::127.0.0.53/128 udp dport 53 redirect to :15053",
        "ip6 daddr ::127.0.0.53 udp dport 53 redirect to :15053",
    ),
    ("ip6 daddr ::ffff:10.0.0.1/128 return", "ip6 daddr ::ffff:10.0.0.1 return"),
    ("oifname lo skuid != 1337 counter return", 'oifname "lo" meta skuid != 1337 counter packets 0 bytes 0 return'),
    (
        "udp dport 53 meta skgid 1337 counter ct zone set 1",
        "udp dport 53 meta skgid 1337 counter packets 0 bytes 0 ct zone set 1",
    ),
]


@pytest.mark.parametrize(("script", "listed"), LISTED)
def test_listing_rule(script: str, listed: str) -> None:
    assert listing_rule(script) == listed
    assert listing_rule(script, counter_values=False) == listed.replace(" packets 0 bytes 0", "")


def test_injected_default_and_release_1_27() -> None:
    config = InterceptionConfig.from_args(NFT_ARGS)
    assert config.native_nftables
    live = (Path(__file__).resolve().parent.parent / "data" / "nft" / "default.nft-list-ruleset").read_text()
    assert nft_listing(config) == live
    # 1.27 programmed the same rules without counters (counters came in 1.28)
    old = nft_script(config.with_release("1.27"))
    assert "counter" not in old
    assert old.replace(" ", "") == nft_script(config).replace("counter", "").replace(" ", "")
    assert nft_script(replace(config, mode=InterceptionMode.NONE)) == ""
    assert expected_nft(replace(config, mode=InterceptionMode.NONE)) == {}


def test_capture_all_dns_cni_pod_and_excluded_outbound_ports() -> None:
    config = replace(InterceptionConfig.from_cni({}, {"ISTIO_META_DNS_CAPTURE": "true"}), native_nftables=True)
    rules = [line.split(" ", 4)[4] for line in nft_script(config).splitlines() if line.startswith("add rule")]
    assert "istio-output tcp dport 15020 counter return" in rules
    assert "istio-output udp dport 15020 counter return" in rules
    assert "istio-output-dns meta l4proto tcp tcp dport 53 counter redirect to :15053" in rules
    assert "istio-output-dns udp dport 53 counter redirect to :15053" in rules
    assert "istio-inbound udp sport 53 counter ct zone set 1" in rules
    assert "istio-output oifname lo meta l4proto tcp tcp dport != 53 skuid != 1337 counter return" in rules


def test_from_args_env_and_pods_read_native_nftables(reference: Path) -> None:
    assert not InterceptionConfig.from_args(DEFAULT_ARGS).native_nftables
    assert InterceptionConfig.from_args(DEFAULT_ARGS, {"NATIVE_NFTABLES": "true"}).native_nftables
    assert not InterceptionConfig.from_args(f"{DEFAULT_ARGS} --native-nftables=false").native_nftables
    found = read_pod(nft_pod(reference))
    assert found.mesh is MeshMode.SIDECAR and found.config is not None and found.config.native_nftables
    assert any("native nftables" in note for note in found.notes)
    cni = {
        "kind": "Pod",
        "metadata": {},
        "spec": {
            "initContainers": [
                {
                    "name": "istio-validation",
                    "args": ["istio-iptables", "--run-validation", "--skip-rule-apply", "--native-nftables"],
                }
            ],
            "containers": [{"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.26.1"}],
        },
    }
    found = read_pod(cni)
    assert found.config is not None and found.config.native_nftables
    assert any("predates" in note for note in found.notes)  # 1.26 has no --native-nftables


# --- reconcile: a pod in native nftables mode -------------------------------------------------------


@pytest.mark.parametrize("family", list(Family), ids=lambda f: f.value)
def test_untouched_nft_pod_reconciles_with_no_diff(reference: Path, family: Family) -> None:
    intent = intent_for_pod(nft_pod(reference))
    expected = intent.expected(family)
    assert expected is not None and NAT in expected.tables
    live_text = nft_listing(InterceptionConfig.from_args(NFT_ARGS))
    ctx = PodContext() if family is Family.IPV4 else context_for(family=family.value)
    for live in (
        parse_nft(live_text, family),
        parse_nft(live_text.replace("packets 0 bytes 0", "packets 9 bytes 540"), family),
    ):
        result = explain(live, ctx, expected=expected)
        assert result.diff == ()
        assert {f.status for f in result.flows} == {FlowStatus.OK}


def test_nft_pod_deleted_added_and_changed_rules_are_diffs(reference: Path) -> None:
    expected = intent_for_pod(nft_pod(reference)).expected(Family.IPV4)
    assert expected is not None
    live_text = nft_listing(InterceptionConfig.from_args(NFT_ARGS))
    live_text = live_text.replace("\t\ttcp dport 15090 counter packets 0 bytes 0 return\n", "")
    live_text = live_text.replace(
        "\t\tmeta skuid 1337 counter packets 0 bytes 0 return\n",
        "\t\tmeta skuid 1337 counter packets 0 bytes 0 return\n\t\ttcp dport 9080 counter packets 3 bytes 180 return\n",
    )
    live_text = live_text.replace("redirect to :15001", "redirect to :15002")
    result = explain(parse_nft(live_text, Family.IPV4), PodContext(), expected=expected)
    got = [(d.kind, d.ref, d.text) for d in result.diff]
    assert got == [
        (DiffKind.MISSING, f"{NAT}/istio-inbound:2", "tcp dport 15090 counter return"),
        (DiffKind.CHANGED, f"{NAT}/istio-redirect:1", "meta l4proto tcp counter redirect to :15002"),
        (DiffKind.EXTRA, f"{NAT}/istio-output:5", "tcp dport 9080 counter return"),
    ]
    changed = next(d for d in result.diff if d.kind is DiffKind.CHANGED)
    assert changed.expected is not None and changed.expected.spec == "meta l4proto tcp counter redirect to :15001"
    assert result.failed


def test_nft_pod_against_iptables_rules_misses_every_chain(reference: Path) -> None:
    """The intent says native nftables but the pod has iptables rules: Istio's tables are missing."""
    expected = intent_for_pod(nft_pod(reference)).expected(Family.IPV4)
    assert expected is not None
    from podnat.netfilter.parse import parse_ruleset

    iptables = (Path(__file__).resolve().parent.parent / "data" / "default.v4.iptables-save").read_text()
    diff = explain(parse_ruleset(iptables), PodContext(), expected=expected).diff or ()
    assert {d.table for d in diff if d.kind is DiffKind.MISSING_CHAIN} == {NAT}
    assert {d.table for d in diff if d.kind is DiffKind.EXTRA_CHAIN} == {"nat"}


def test_explain_args_with_native_nftables_expects_the_nft_form() -> None:
    for family in Family:
        expected = expected_ruleset(family, args=NFT_ARGS, version="1.30")
        assert set(expected.tables) == {NAT}
        assert expected.generator == "nft list ruleset"
    assert IstioRelease(1, 30) == InterceptionConfig.from_args(NFT_ARGS).release


def test_every_nft_rule_istio_writes_has_its_origin_in_istio_terms(reference: Path) -> None:
    from podnat.istio.origins import rule_origin

    for dump in sorted((reference / "kernel-save/nftables").glob("*.nft-list-ruleset")):
        ruleset = parse_nft(dump.read_text(), Family.IPV4)
        for table in ruleset.tables.values():
            for rule in table.rules():
                assert rule_origin(rule.table, rule.chain, rule.spec), (dump.name, rule.ref, rule.spec)
    assert "excludeOutboundIPRanges" in (rule_origin(NAT, "istio-output", "ip daddr 10.0.0.0/8 counter return") or "")
    jump = "meta l4proto tcp counter jump istio-inbound"
    assert "includeInboundPorts" in (rule_origin(NAT, "prerouting", jump) or "")
    assert (rule_origin(NAT, "istio-inbound", "tcp dport 9080 counter return") or "").startswith(
        "traffic.sidecar.istio.io/excludeInboundPorts"
    )
    assert (rule_origin(NAT, "istio-output", "tcp dport 9080 counter return") or "").startswith(
        "traffic.sidecar.istio.io/excludeOutboundPorts"
    )
    assert "DNS capture" in (rule_origin("istio-proxy-raw", "prerouting", "counter jump istio-inbound") or "")


def test_an_nft_rule_istio_would_add_for_an_annotation_says_which(reference: Path) -> None:
    expected = intent_for_pod(nft_pod(reference)).expected(Family.IPV4)
    assert expected is not None
    live_text = nft_listing(InterceptionConfig.from_args(NFT_ARGS)).replace(
        "\t\ttcp dport 15008 counter packets 0 bytes 0 return\n",
        "\t\ttcp dport 15008 counter packets 0 bytes 0 return\n\t\ttcp dport 9080 counter packets 0 bytes 0 return\n",
    )
    result = explain(parse_nft(live_text, Family.IPV4), PodContext(), expected=expected)
    (extra,) = [d for d in result.diff if d.kind is DiffKind.EXTRA]
    assert extra.ref == f"{NAT}/istio-inbound:2"
    assert "excludeInboundPorts" in extra.cause, extra.cause


def test_a_deleted_nft_capture_jump_says_what_it_turns_off(reference: Path) -> None:
    expected = intent_for_pod(nft_pod(reference)).expected(Family.IPV4)
    assert expected is not None
    live_text = nft_listing(InterceptionConfig.from_args(NFT_ARGS)).replace(
        "\t\tmeta l4proto tcp counter packets 0 bytes 0 jump istio-inbound\n", ""
    )
    result = explain(parse_nft(live_text, Family.IPV4), PodContext(), expected=expected)
    (missing,) = [d for d in result.diff if d.kind is DiffKind.MISSING]
    assert missing.ref == f"{NAT}/prerouting:1"
    assert "inbound capture is off" in missing.cause and "includeInboundPorts" in missing.cause
