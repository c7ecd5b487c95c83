"""podnat.capture on the capture script's real output, recorded in network namespaces of this machine
with Istio's proxyv2 toolset (tests/data/capture/record.py: `iptables-save` is the legacy binary, as
the image's Debian alternative sets it)."""

from __future__ import annotations

import shutil
import socket
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


# --- what the script does not run, where what it would print is known --------------------------------------

TCP_HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


def _tcp(state: str | None) -> str:
    """A /proc/net/tcp: the header, and one socket in `state` (0A: LISTEN, 01: ESTABLISHED) or none."""
    line = f"   0: 0100007F:3A98 00000000:0000 {state} 00000000:00000000 00:00000000 00000000     0        0 1 1\n"
    return TCP_HEADER + (line if state else "")


def run_script(tmp_path: Path, tools: dict[str, str], net: dict[str, str | None]) -> tuple[dict[str, object], set[str]]:
    """Run the capture script with stub `tools` (name -> what it prints) and a stub /proc/net (`net`: name ->
    content; None: a file that cannot be read); returns its sections and the tools that ran."""
    bin_dir, proc_net, ran = tmp_path / "bin", tmp_path / "net", tmp_path / "ran"
    for d in (bin_dir, proc_net, ran):
        d.mkdir(parents=True)
    (bin_dir / "sh").symlink_to(shutil.which("sh") or "/bin/sh")
    for name, out in tools.items():
        stub = bin_dir / name
        stub.write_text(f"#!/bin/sh\n: > '{ran}/{name}'\nprintf '{out}'\n")
        stub.chmod(0o755)
    for name, content in net.items():
        if content is None:
            (proc_net / name).mkdir()  # opens, cannot be read (as root too)
        else:
            (proc_net / name).write_text(content)
    script = capture_script("M", 15000, skip_known=True, proc_net=str(proc_net))
    result = subprocess.run(
        ["/bin/sh", "-c", script], env={"PATH": str(bin_dir)}, capture_output=True, text=True, check=False, timeout=20
    )
    from podnat.capture import split_sections

    sections = split_sections(result.stdout, result.stderr, "M")
    assert sections is not None
    return dict(sections), {p.name for p in ran.iterdir()}


LEGACY = {"iptables-legacy-save": "*filter\\nCOMMIT\\n", "ip6tables-legacy-save": "*filter\\nCOMMIT\\n"}


def test_a_legacy_save_runs_unless_no_x_tables_table_is_loaded(tmp_path: Path) -> None:
    sections, ran = run_script(tmp_path, LEGACY, {"ip_tables_names": "", "ip6_tables_names": "filter\n"})
    assert ran == {"ip6tables-legacy-save"}  # v4: no table loaded, nothing to print
    v4, v6 = sections["v4_legacy"], sections["v6_legacy"]
    assert (v4.stdout, v4.stderr, v4.returncode) == ("", "", 0)  # what iptables-legacy-save prints then
    assert (v6.stdout, v6.returncode) == ("*filter\nCOMMIT\n", 0)


def test_a_legacy_save_runs_where_the_tables_cannot_be_told(tmp_path: Path) -> None:
    for net, name in (({}, "absent"), ({"ip_tables_names": None, "ip6_tables_names": None}, "unreadable")):
        _, ran = run_script(tmp_path / name, LEGACY, net)
        assert ran == {"iptables-legacy-save", "ip6tables-legacy-save"}, name


def test_a_missing_legacy_binary_is_said_missing_even_with_no_table_loaded(tmp_path: Path) -> None:
    sections, _ = run_script(tmp_path, {}, {"ip_tables_names": "", "ip6_tables_names": ""})
    assert sections["v4_legacy"].returncode == 127 and "iptables-legacy-save" in sections["v4_legacy"].stderr


CURL_JSON = '{"listener_statuses":[]}'


@pytest.mark.parametrize(
    ("tcp", "tcp6", "curl_runs"),
    [
        (_tcp("0A"), _tcp(None), True),  # Envoy's admin port (or anything) listens
        (_tcp(None), _tcp("0A"), True),  # a dual-stack listener is in tcp6 only
        (_tcp("01"), _tcp(None), False),  # connections, no listener: a connection to 127.0.0.1 is refused
        (_tcp(None), _tcp(None), False),
        (None, _tcp(None), True),  # unreadable: cannot be told
        ("", _tcp(None), True),  # no header line: cannot be told
    ],
)
def test_curl_asks_envoy_only_where_a_socket_listens(
    tmp_path: Path, tcp: str | None, tcp6: str | None, curl_runs: bool
) -> None:
    sections, ran = run_script(tmp_path, {"curl": CURL_JSON}, {"tcp": tcp, "tcp6": tcp6})
    listeners = sections["listeners"]
    assert ("curl" in ran) is curl_runs
    assert "pilot-agent" in listeners.stderr  # not on the node: sh said so, as before
    if curl_runs:
        assert (listeners.stdout, listeners.returncode) == (CURL_JSON, 0)
    else:
        assert (listeners.stdout, listeners.returncode) == ("", 7)  # what curl -sf prints when refused


def test_without_skip_known_every_command_runs(tmp_path: Path) -> None:
    """The exec path's script (istio-proxy, the debug container) runs each command, as it always did."""
    assert "podnat_" not in capture_script("M", 15000)
    assert "podnat_listening" in capture_script("M", 15000, skip_known=True)


def test_curl_refused_prints_nothing_and_exits_7() -> None:
    """What the script says in curl's place is what the real curl says to a port nothing listens on."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("no curl on this machine")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused
        done = subprocess.run(
            [curl, "-sf", f"http://127.0.0.1:{port}/listeners?format=json"],
            capture_output=True,
            text=True,
            check=False,
            timeout=20,
        )
    assert (done.stdout, done.stderr, done.returncode) == ("", "", 7)
