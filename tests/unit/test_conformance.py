"""Golden conformance over the reference data (tests/data/istio): every golden reproduced, ambient ones included."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from podnat.istio.generator import expected_rules
from podnat.istio.goldens import GOLDEN_CASES, CaseKind, case_config, case_for
from podnat.istio.normalise import normalise_restore
from tools import conformance
from tools.conformance import Outcome, chains, compare, run, summary


def test_every_golden_is_reproduced(reference: Path) -> None:
    results = run(reference)
    failures = [f"{r.path}: {r.reason}" for r in results if r.verdict is Outcome.NOT_REPRODUCED]
    assert failures == []
    assert summary(results, "iptables") == (202, 202)
    assert summary(results, "nftables") == (42, 42)
    assert summary(results) == (244, 244)
    assert not any(r.verdict is Outcome.AMBIENT for r in results)


def test_every_golden_file_has_a_case(reference: Path) -> None:
    on_disk = set(conformance.golden_paths(reference))
    assert on_disk == {case.path for case in GOLDEN_CASES}


def test_bad_input_goldens_are_noted_not_failed(reference: Path) -> None:
    result = conformance.check_golden(reference, "iptables/outbound-owner-groups.golden")
    assert result.verdict is Outcome.REPRODUCED
    assert result.kernel_save.startswith("bad input, not loaded: ")
    assert "java" in result.kernel_save


def test_kernel_dump_is_checked(reference: Path) -> None:
    result = conformance.check_golden(reference, "iptables/tproxy.golden")
    assert result.kernel_save == "matches the kernel's dump (v4, v6)"
    result = conformance.check_golden(reference, "nftables/tproxy.golden")
    assert result.verdict is Outcome.REPRODUCED
    assert result.kernel_save == (
        "matches the kernel's dump (ipv4 and ipv6 views, rule for rule; nft_listing is its text)"
    )


def test_nft_bad_input_and_a_wrong_config(reference: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = conformance.check_golden(reference, "nftables/outbound-owner-groups.golden")
    assert result.verdict is Outcome.REPRODUCED
    assert result.kernel_save.startswith("bad input, not loaded: ") and "Group does not exist" in result.kernel_save
    case = case_for("nftables/empty.golden")
    assert case is not None
    monkeypatch.setitem(case.settings, "InboundPortsInclude", "*")
    result = conformance.check_golden(reference, "nftables/empty.golden")
    assert result.verdict is Outcome.NOT_REPRODUCED
    assert result.reason == (
        "line 3: golden 'add chain inet istio-proxy-nat output { type nat hook output priority -100 ; }', "
        "generated 'add chain inet istio-proxy-nat prerouting { type nat hook prerouting priority -100 ; }'"
    )


def test_nft_kernel_check_compares_the_kernels_spelling(reference: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the listing normalisation the script's rules are not the kernel's: the check notices."""
    monkeypatch.setattr(conformance, "listing_rule", lambda text, counter_values=True: text)
    result = conformance.check_golden(reference, "nftables/empty.golden")
    assert result.verdict is Outcome.NOT_REPRODUCED
    assert (
        "ipv4 istio-proxy-nat istio-inbound rule 1: kernel 'tcp dport 15008 counter return', "
        "generated 'meta l4proto tcp tcp dport 15008 counter return'" in result.reason
    )


def test_a_wrong_release_is_not_reproduced(reference: Path) -> None:
    case = case_for("history/1.12.0/inbound-ports-wildcard.golden")
    assert case is not None
    config = case_config(case)
    assert config is not None
    golden = conformance.load_golden(reference / "goldens" / case.path)
    want = chains(normalise_restore(golden.v4, ipv6=False), "v4")
    got = chains(expected_rules(replace(config, release=config.release.__class__(1, 30))).v4, "v4")
    assert compare(want, got) == (
        "v4 nat ISTIO_INBOUND rule 2: golden '-A ISTIO_INBOUND -p tcp -m tcp --dport 22 -j RETURN', "
        "generated '-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT'"
    )


def test_ambient_cases_are_listed() -> None:
    ambient = [c for c in GOLDEN_CASES if c.kind is CaseKind.AMBIENT]
    assert len(ambient) == 28  # 14 per backend
    assert all(case_config(c) is None for c in ambient)


def test_a_wrong_ambient_setting_is_not_reproduced(reference: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    case = case_for("iptables/cni-ambient-iptables/ingress.golden")
    assert case is not None
    monkeypatch.setitem(case.settings, "IngressMode", False)
    result = conformance.check_golden(reference, case.path)
    assert result.verdict is Outcome.NOT_REPRODUCED
    assert result.reason == (
        "v4 nat ISTIO_PRERT: generated 2 rules, golden has 0; "
        "first extra '-A ISTIO_PRERT -s 169.254.7.127/32 -p tcp -m tcp -j ACCEPT'"
    )
    case = case_for("nftables/cni-ambient-nftables/hostprobe.golden")
    assert case is not None
    monkeypatch.setitem(case.settings, "KubeletUID", 0)
    result = conformance.check_golden(reference, case.path)
    assert result.verdict is Outcome.NOT_REPRODUCED and "skuid 1000" in result.reason


def test_cli_text_and_json(reference: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert conformance.main(["--reference", str(reference)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "202 of 202 iptables goldens reproduced; 42 of 42 nftables goldens reproduced"
    assert any(line.startswith("reproduced") and "cni-ambient-nftables/default.golden" in line for line in out)
    assert conformance.main(["--reference", str(reference), "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["reproduced"], doc["total"]) == (244, 244)
    assert doc["backends"] == {
        "iptables": {"reproduced": 202, "total": 202},
        "nftables": {"reproduced": 42, "total": 42},
    }
    assert {g["backend"] for g in doc["goldens"]} == {"iptables", "nftables"}


def test_cli_without_reference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert conformance.main(["--reference", str(tmp_path)]) == 2
    assert "no goldens under" in capsys.readouterr().err
