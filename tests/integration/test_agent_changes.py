"""podnat.agent.changes on the real kernel: what moves a namespace's stamp and what does not."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import listening, require

pytestmark = [pytest.mark.root]


@pytest.fixture
def netns() -> Iterator[str]:
    require(os.geteuid() == 0, "needs root (network namespaces)")
    name = f"podnat-t-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _in(netns: str, *argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, check=True).stdout


def _stamp(netns: str, port: int = 15000) -> object:
    from podnat.agent.changes import Target, stamps

    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        return stamps([Target("pod", fd, port)])["pod"]
    finally:
        os.close(fd)


def test_a_rule_change_moves_the_generation_and_reading_the_rules_does_not(netns: str) -> None:
    first = _stamp(netns)
    assert first is not None and first.listeners is None  # nothing listens on the admin port
    _in(netns, "iptables-nft", "-t", "nat", "-N", "ISTIO_INBOUND")
    _in(netns, "iptables-nft", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "-j", "ISTIO_INBOUND")
    changed = _stamp(netns)
    assert changed is not None and changed.generation > first.generation
    # what the agent's reading runs: none of it commits a transaction
    _in(netns, "iptables-nft-save", "-c")
    _in(netns, "ip6tables-nft-save", "-c")
    _in(netns, "nft", "-j", "list", "ruleset")
    assert _stamp(netns) == changed
    _in(netns, "nft", "flush", "ruleset")  # from nft, not iptables: the same generation moves
    assert _stamp(netns).generation > changed.generation
    # another namespace's change is not this one's
    still, other = _stamp(netns), f"{netns}-b"
    subprocess.run(["ip", "netns", "add", other], check=True)
    try:
        _in(other, "ip", "link", "set", "lo", "up")
        _in(other, "iptables-nft", "-t", "nat", "-N", "ISTIO_OUTPUT")
        assert _stamp(other).generation > 0
    finally:
        subprocess.run(["ip", "netns", "del", other], check=False)
    assert _stamp(netns) == still


def test_a_stamp_sends_no_packet_where_nothing_listens_on_the_admin_port(netns: str) -> None:
    """Whether Envoy is there is asked of the kernel (sock_diag), not by connecting: no packet crosses the
    pod's rules, so their counters (part of what a reading reads) stay as they were."""
    _in(netns, "iptables-nft", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-j", "RETURN")
    before = _in(netns, "iptables-nft-save", "-c", "-t", "nat")
    assert _stamp(netns) is not None and _stamp(netns).listeners is None
    after = _in(netns, "iptables-nft-save", "-c", "-t", "nat")
    assert [line for line in after.splitlines() if not line.startswith("#")] == [
        line for line in before.splitlines() if not line.startswith("#")
    ]
    assert "[0:0] -A OUTPUT -p tcp -j RETURN" in after


def test_a_legacy_table_leaves_the_namespace_without_a_stamp(netns: str) -> None:
    assert _stamp(netns) is not None
    _in(netns, "iptables-legacy", "-t", "nat", "-N", "ISTIO_INBOUND")
    assert _stamp(netns) is None  # iptables-legacy changes bump no generation: read the pod each time


def test_envoys_listeners_are_digested_where_something_listens_on_the_admin_port(netns: str, tmp_path: Path) -> None:
    served = tmp_path / "www"
    served.mkdir()
    (served / "listeners").write_text('{"listener_statuses": [{"name": "virtualOutbound"}]}')
    server = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "15000"],
        cwd=served,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while (first := _stamp(netns)) is None or first.listeners is None:
            assert time.monotonic() < deadline, "the HTTP server in the namespace did not listen"
            time.sleep(0.1)
        assert _stamp(netns) == first
        assert _stamp(netns, port=15001).listeners is None  # another admin port: nothing there
        (served / "listeners").write_text('{"listener_statuses": [{"name": "virtualInbound"}]}')
        assert _stamp(netns).listeners != first.listeners
    finally:
        server.terminate()
        server.wait(10)
    assert _stamp(netns).listeners is None


def test_something_silent_on_the_admin_port_costs_the_budget_not_a_wait_per_pod(netns: str) -> None:
    from podnat.agent.changes import Target, stamps

    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        with listening(netns, "127.0.0.1", 15000):  # accepts, never answers
            began = time.monotonic()
            found = stamps([Target(f"pod-{i}", fd, 15000) for i in range(20)], timeout=0.3, budget=1.0)
            took = time.monotonic() - began
        assert found == {f"pod-{i}": None for i in range(20)}  # none could be told: each is read again
        assert took < 2.0, took  # 20 x 0.3 s were it not for the budget
    finally:
        os.close(fd)


def test_policy_routing_and_listening_sockets_move_the_stamp_of_a_pod_whose_reading_prints_them(netns: str) -> None:
    """An ambient pod's (table 100, sockets) or a TPROXY one's (table 133): `ip rule` and `ip route show table T`
    for both families, and the ports listened on; what `ip` prints reading them, and other tables, do not."""
    from podnat.agent.changes import Target, stamps

    def stamp(table: int = 100) -> object:
        fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        try:
            return stamps([Target("pod", fd, 15000, table, sockets=True)])["pod"]
        finally:
            os.close(fd)

    first = stamp()
    assert first is not None and first.routing_table == 100 and first.ports == ()
    _in(netns, "ip", "rule", "add", "fwmark", "0x111/0xfff", "pref", "32764", "lookup", "100")
    ruled = stamp()
    assert ruled.routing != first.routing
    _in(netns, "ip", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100")
    routed = stamp()
    assert routed.routing != ruled.routing
    _in(netns, "ip", "rule", "show")
    _in(netns, "ip", "route", "show", "table", "100")
    _in(netns, "ip", "-6", "rule", "show")
    assert stamp() == routed
    _in(netns, "ip", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "101")  # another table
    assert stamp() == routed
    assert stamp(table=101).routing != routed.routing
    _in(netns, "ip", "-6", "rule", "add", "fwmark", "0x111/0xfff", "pref", "32764", "lookup", "100")
    six = stamp()
    assert six.routing != routed.routing
    with listening(netns, "::", 15008):
        listening_now = stamp()
        assert listening_now.ports == (15008,) and listening_now.routing == six.routing
    assert stamp() == six
