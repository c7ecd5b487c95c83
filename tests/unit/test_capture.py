"""podnat.capture on the capture script's real output, recorded in network namespaces of this machine
with Istio's proxyv2 toolset (tests/data/capture/record.py: `iptables-save` is the legacy binary, as
the image's Debian alternative sets it)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from podnat.capture import (
    Backend,
    DumpState,
    IpFamily,
    NatFailure,
    NatProblem,
    NatTables,
    NftContent,
    capture_script,
    nat_tables,
    nft_content,
    parse_output,
)
from podnat.netfilter.model import Family
from podnat.netfilter.nft import detect_and_parse

DATA = Path(__file__).resolve().parents[1] / "data"
RECORDED = DATA / "capture"
MARKER = "podnat-recorded"


def recorded(name: str):  # type: ignore[no-untyped-def]
    capture = parse_output((RECORDED / f"{name}.stdout").read_text(), (RECORDED / f"{name}.stderr").read_text(), MARKER)
    assert capture is not None
    return capture


def states(name: str) -> dict[tuple[str, str], DumpState]:
    return {(d.backend.value, d.family.value): d.state for d in recorded(name).iptables}


def test_istio_init_with_iptables_nft_the_old_read_saw_nothing() -> None:
    # The pod's unqualified iptables-save (legacy, by the image's alternative) printed no rule at all ...
    assert "-A " not in (RECORDED / "nft-rules.unqualified-iptables-save").read_text()
    # ... while the explicit nft backend holds Istio's rules, with live counters.
    capture = recorded("nft-rules")
    assert states("nft-rules") == {
        ("nft", "v4"): DumpState.ISTIO,
        ("nft", "v6"): DumpState.ISTIO,
        ("legacy", "v4"): DumpState.EMPTY,
        ("legacy", "v6"): DumpState.EMPTY,
    }
    assert capture.nft_content is NftContent.IPTABLES_NFT  # upper-case ISTIO_* chains in nft's own listing
    found = nat_tables(capture)
    assert isinstance(found, NatTables)
    assert (found.command, found.backend, found.also) == ("iptables-nft-save -c", Backend.NFT, ())
    live = detect_and_parse(found.v4, Family.IPV4)
    assert live.backend == "nf_tables" and live.counters
    output = live.rule("nat", "OUTPUT", 1)
    assert output is not None and output.counters is not None
    assert (output.counters.packets, output.counters.bytes) == (3, 180)  # the traffic record.py sent
    assert found.v6 is not None and "::6/128" in found.v6


def test_legacy_rules_are_read_from_the_legacy_backend() -> None:
    found = nat_tables(recorded("legacy-rules"))
    assert states("legacy-rules")[("nft", "v4")] is DumpState.EMPTY
    assert isinstance(found, NatTables)
    assert (found.command, found.backend, found.also) == ("iptables-legacy-save -c", Backend.LEGACY, ())
    live = detect_and_parse(found.v4, Family.IPV4)
    assert live.rule("nat", "ISTIO_REDIRECT", 1) is not None
    assert live.warnings == ()  # no both-backends warning: only legacy holds rules


def test_both_backends_hold_istio_rules_both_are_reported() -> None:
    found = nat_tables(recorded("both-backends"))
    assert isinstance(found, NatTables)
    assert found.backend is Backend.NFT
    assert found.also == ("iptables-legacy-save -c",)
    # iptables-nft-save's own warning travels with the dump: the analysis turns it into a finding.
    live = detect_and_parse(found.v4, Family.IPV4)
    assert live.warnings == ("iptables-legacy tables present, use iptables-legacy-save to see them",)


def test_native_nftables() -> None:
    capture = recorded("native-nftables")
    assert all(d.state is DumpState.EMPTY for d in capture.iptables)
    assert capture.nft_content is NftContent.NATIVE
    found = nat_tables(capture)
    assert isinstance(found, NatTables)
    assert (found.command, found.v4, found.backend) == ("nft -j list ruleset (native nftables)", "", None)
    assert found.nft is not None
    assert not detect_and_parse(found.nft, Family.IPV4).empty


def test_unprivileged_proxy_permission_messages_of_both_backends_and_nft() -> None:
    capture = recorded("unprivileged")
    assert {d.state for d in capture.iptables} == {DumpState.DENIED}
    assert capture.permission_messages == (
        "iptables-nft-save v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied "
        "(you must be root)",
        "ip6tables-nft-save v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied "
        "(you must be root)",
        "Failed to list table names in /proc/net/ip_tables_names: Permission denied",
        "Failed to list table names in /proc/net/ip6_tables_names: Permission denied",
        "Operation not permitted (you must be root)",
    )
    found = nat_tables(capture)
    assert isinstance(found, NatFailure)
    assert (found.problem, found.command, found.nft) == (
        NatProblem.PERMISSION,
        "iptables-nft-save -c",
        NftContent.UNREAD,
    )


def test_iptables_nft_tables_found_in_nfts_listing_when_no_nft_save() -> None:
    capture = recorded("nft-rules-no-nft-save")
    assert states("nft-rules-no-nft-save") == {
        ("nft", "v4"): DumpState.MISSING,
        ("nft", "v6"): DumpState.MISSING,
        ("legacy", "v4"): DumpState.EMPTY,
        ("legacy", "v6"): DumpState.EMPTY,
    }
    found = nat_tables(capture)
    assert isinstance(found, NatTables)
    assert found.command == "nft -j list ruleset (iptables-nft tables)"
    assert found.v4 == found.nft and found.v6 == found.nft
    live = detect_and_parse(found.v4, Family.IPV4)
    assert live.rule("nat", "ISTIO_OUTPUT", 1) is not None  # upper-case chains, keyed as iptables' tables


@pytest.mark.parametrize(
    "listing",
    [
        "table ip nat {\n\tchain ISTIO_OUTPUT {\n\t}\n}\n",
        "table ip nat {\n\tchain istio_output {\n\t}\n}\n",
        '{"nftables": [{"chain": {"family": "ip6", "table": "nat", "name": "Istio_Inbound"}}]}',
    ],
)
def test_iptables_nft_chain_names_in_any_case(listing: str) -> None:
    assert nft_content(listing) is NftContent.IPTABLES_NFT


def test_nft_content_other_tables() -> None:
    assert nft_content("table inet filter {\n\tchain input {\n\t}\n}\n") is NftContent.NONE
    assert nft_content("table inet istio-proxy-nat {\n\tchain istio-output {\n\t}\n}\n") is NftContent.NATIVE


def test_unqualified_only_where_neither_backend_exists(tmp_path: Path) -> None:
    """The script runs iptables-save only when no -nft/-legacy binary of the family exists."""
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "sh").symlink_to(shutil.which("sh") or "/bin/sh")
    for name in ("iptables-save", "ip6tables-save", "ip6tables-legacy-save"):
        stub = tools / name
        stub.write_text(f"#!/bin/sh\necho '# {name}'\n")
        stub.chmod(0o755)
    script = capture_script("M", 15000, listeners=False)
    result = subprocess.run(
        ["sh", "-c", script], env={"PATH": str(tools)}, capture_output=True, text=True, check=False, timeout=20
    )
    capture = parse_output(result.stdout, result.stderr, "M")
    assert capture is not None
    ran = {(d.backend, d.family): d.state for d in capture.iptables}
    assert ran == {
        (Backend.NFT, IpFamily.V4): DumpState.MISSING,
        (Backend.NFT, IpFamily.V6): DumpState.MISSING,
        (Backend.LEGACY, IpFamily.V4): DumpState.MISSING,
        (Backend.LEGACY, IpFamily.V6): DumpState.EMPTY,
        (Backend.UNQUALIFIED, IpFamily.V4): DumpState.EMPTY,
    }
    assert capture.listeners is None


@pytest.mark.parametrize(
    ("name", "nft_states"),
    [
        # IPv6 rules print: the IPv4 table (empty of what iptables-nft-save could not print) must not be traced
        ("nft-rules-unprintable", (DumpState.FAILED, DumpState.ISTIO)),
        # IPv4 only: nft's listing of the same tables shows iptables' matches as opaque `xt` expressions
        ("nft-v4-rules-unprintable", (DumpState.FAILED, DumpState.EMPTY)),
    ],
)
def test_a_table_iptables_nft_save_cannot_print_is_a_failure(name: str, nft_states: tuple[DumpState, ...]) -> None:
    """Another tool's nft rule in iptables-nft's nat table: iptables-nft-save exits 3 with the dump cut
    short. That table is unreadable (an error for the pod), not a table to trace as unknown or drift."""
    capture = recorded(name)
    assert (states(name)[("nft", "v4")], states(name)[("nft", "v6")]) == nft_states
    assert capture.nft_content is NftContent.IPTABLES_NFT
    found = nat_tables(capture)
    assert isinstance(found, NatFailure)
    assert (found.problem, found.command, found.returncode) == (NatProblem.FAILED, "iptables-nft-save -c", 3)
    assert found.detail.startswith("Error: meta sreg key not supported iptables-nft-save v1.8.9 (nf_tables): Parsing")
