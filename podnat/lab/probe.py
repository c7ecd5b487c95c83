"""Real connections in the lab, and what the kernel and Envoy counted for them (tests and demos).

`connect` opens one connection from inside a lab namespace as a given uid; `nat_counters` reads a
pod's rule counters through the Kubernetes API from podnat's debug container (as a user would);
`listener_connections` reads Envoy's per-listener connection totals; `first_packets` records, with
nftables' packet tracing, the rules each connection's first packet matched (the mangle and raw
tables count every packet, nat only the first: the trace says which rules the first one took).
Only lab addresses are used.
"""

from __future__ import annotations

import contextlib
import json
import queue
import random
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from podnat.facts import Cluster, PodRef
from podnat.netfilter.model import rule_ref
from podnat.netfilter.nft import detect_and_parse

TRACE_TABLE = "podnat-probe-trace"
MARKER_PORT = 9  # discard: the trace table drops what is sent there


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """How one connection ended: curl's exit code, and the body when it got an answer."""

    returncode: int
    body: str

    @property
    def answered(self) -> bool:
        return self.returncode == 0

    @property
    def refused(self) -> bool:
        return self.returncode == 7  # curl: failed to connect

    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


def connect(
    netns: str,
    url: str,
    uid: int | None = None,
    gid: int | None = None,
    timeout: float = 3.0,
    source: str | None = None,
) -> ProbeResult:
    """`curl URL` from `netns` as uid/gid (root when None), from address `source` when given; a
    `tcp://IP:PORT` URL only connects."""
    if url.startswith("tcp://"):
        host, port = url[len("tcp://") :].rsplit(":", 1)
        script = (
            f"import socket; s=socket.create_connection(({host!r}, {port}), timeout={timeout}); "
            "s.close(); print('connected')"
        )
        argv = ["/usr/bin/python3", "-c", script]
    else:
        argv = ["curl", "-s", "-m", str(timeout), *(["--interface", source] if source else []), url]
    if uid is not None:
        argv = [
            "setpriv",
            "--reuid",
            str(uid),
            "--regid",
            str(gid if gid is not None else uid),
            "--clear-groups",
            "--",
            *argv,
        ]
    result = subprocess.run(
        ["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, timeout=timeout + 10, check=False
    )
    returncode = result.returncode
    if url.startswith("tcp://") and returncode != 0:  # spoken as curl's codes: 7 refused, 28 timed out
        returncode = 7 if "refused" in result.stderr.lower() else 28
    return ProbeResult(returncode, result.stdout)


def parse_counters(text: str) -> dict[str, int]:
    """`iptables-save -c` text -> {rule ref: packets}."""
    ruleset = detect_and_parse(text)
    return {
        rule.ref: rule.counters.packets
        for table in ruleset.tables.values()
        for rule in table.rules()
        if rule.counters is not None
    }


def nat_counters(
    cluster: Cluster, pod: PodRef, container: str = "podnat-debug", save: str = "iptables-save"
) -> tuple[str, dict[str, int]]:
    """The pod's live table with counters, read through the API in podnat's debug container; `save` is
    an iptables-save of either family and backend, or `nft` (`nft list ruleset`: native nftables)."""
    result = cluster.exec(pod, container, ["nft", "list", "ruleset"] if save == "nft" else [save, "-c"])
    if result.returncode not in (0, None):
        raise RuntimeError(f"iptables-save in {container}: {result.stderr.strip()[:200]}")
    return result.stdout, parse_counters(result.stdout)


def listener_connections(netns: str) -> dict[str, int]:
    """Envoy's downstream connection totals per listener (`listener.<name>.downstream_cx_total`)."""
    result = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            netns,
            "curl",
            "-s",
            "-m",
            "3",
            "http://127.0.0.1:15000/stats?filter=downstream_cx_total$",
        ],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    totals: dict[str, int] = {}
    for line in result.stdout.splitlines():
        name, _, value = line.partition(": ")
        if (
            name.startswith("listener.")
            and name.endswith(".downstream_cx_total")
            and ".worker_" not in name
            and value.strip().isdigit()
        ):
            totals[name[len("listener.") : -len(".downstream_cx_total")]] = int(value)
    return totals


def envoy_ports_moved(before: dict[str, int], after: dict[str, int]) -> Counter[int]:
    """Listener totals (listener_connections) that moved, as Envoy ports: a per-service listener counts
    as virtualOutbound's (15001), the admin port is not a listener."""
    moved: Counter[int] = Counter()
    for name, value in after.items():
        delta = value - before.get(name, 0)
        address, _, port = name.rpartition("_")
        if delta > 0 and port.isdigit():
            moved[int(port) if address in ("0.0.0.0", "[::]", "::") else 15001] += delta
    return moved


def dns_query(
    netns: str, server: str, name: str, proto: str = "udp", uid: int | None = None, timeout: float = 3.0
) -> list[str]:
    """One DNS A query for `name` to `server`:53 over udp or tcp, from `netns` as uid; the addresses."""
    code = f"""
import socket, struct, sys
query = struct.pack("!HHHHHH", 0x5a5a, 0x0100, 1, 0, 0, 0)
query += b"".join(bytes([len(p)]) + p.encode() for p in {name!r}.split(".")) + b"\\0" + struct.pack("!HH", 1, 1)
family = socket.AF_INET6 if ":" in {server!r} else socket.AF_INET
if {proto!r} == "udp":
    s = socket.socket(family, socket.SOCK_DGRAM); s.settimeout({timeout})
    s.sendto(query, ({server!r}, 53)); reply = s.recv(4096)
else:
    s = socket.create_connection(({server!r}, 53), timeout={timeout})
    s.sendall(struct.pack("!H", len(query)) + query); size = struct.unpack("!H", s.recv(2))[0]
    reply = b""
    while len(reply) < size:
        reply += s.recv(size - len(reply))
count = struct.unpack("!H", reply[6:8])[0]
print(" ".join(socket.inet_ntoa(reply[-16 * count:][16 * i + 12:16 * i + 16]) for i in range(count)))
"""
    argv = ["/usr/bin/python3", "-c", code]
    if uid is not None:
        argv = ["setpriv", "--reuid", str(uid), "--regid", str(uid), "--clear-groups", "--", *argv]
    result = subprocess.run(
        ["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, timeout=timeout + 10, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"DNS query {name} to {server} over {proto} failed: {result.stderr.strip()[-300:]}")
    return result.stdout.split()


@dataclass(slots=True)
class TracedPacket:
    """One traced first packet: its IP version, what nft printed about it, and the rules it matched
    (podnat's refs), in the order the kernel ran them."""

    family: int
    packet: str
    rules: list[str] = field(default_factory=list)


_TRACE_RULE = re.compile(r"^trace id (\w+) (ip6?|inet) (\S+) (\S+) rule .* # handle (\d+) \(verdict")
_TRACE_PACKET = re.compile(r"^trace id (\w+) (?:ip6?|inet) (\S+) \S+ packet: (.*)$")


def rule_positions(netns: str) -> dict[tuple[str, str, str, int], str]:
    """(family, table, chain, handle) -> podnat's rule ref, for every rule nft lists in `netns`."""
    data = json.loads(
        subprocess.run(
            ["ip", "netns", "exec", netns, "nft", "-j", "-a", "list", "ruleset"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    )
    positions: dict[tuple[str, str, str], int] = {}
    refs: dict[tuple[str, str, str, int], str] = {}
    for item in data.get("nftables", []):
        rule = item.get("rule")
        if rule is None:
            continue
        chain = (rule["family"], rule["table"], rule["chain"])
        positions[chain] = positions.get(chain, 0) + 1
        key = (*chain, int(rule["handle"]))  # not refs[(*chain, ...)]: mypy reads that as 3.11 syntax
        refs[key] = rule_ref(rule["table"], rule["chain"], positions[chain])
    return refs


@contextlib.contextmanager
def first_packets(netns: str, timeout: float = 10.0) -> Iterator[list[TracedPacket]]:
    """Trace the first packet of every connection made in the block (a TCP SYN, a UDP datagram to
    port 53) through every netfilter table of `netns`; the list fills when the block ends.

    A table of our own sets `nftrace` at priority -500 (before raw) on the output and prerouting hooks
    and is deleted afterwards, so the pod's own tables, their order and their counters are untouched.
    A marker datagram (to 127.0.0.1:9, traced and dropped by that table before any other sees it)
    shows when the monitor listens, and, at the end, that every event before it has arrived. The
    trace sees iptables-nft and nftables rules alike (not iptables-legacy ones)."""
    refs = rule_positions(netns)
    chains = "".join(
        f"chain {hook} {{ type filter hook {hook} priority -500; policy accept;\n"
        f"udp dport {MARKER_PORT} meta nftrace set 1 drop\n"
        "tcp flags & (syn | ack) == syn meta nftrace set 1\nudp dport 53 meta nftrace set 1\n}\n"
        for hook in ("prerouting", "output")
    )
    subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "-f", "-"],
        input=f"table inet {TRACE_TABLE} {{\n{chains}}}\n",
        text=True,
        check=True,
        timeout=20,
    )
    monitor = subprocess.Popen(
        ["ip", "netns", "exec", netns, "nft", "-a", "monitor", "trace"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in monitor.stdout or ():
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    output: list[str] = []
    packets: list[TracedPacket] = []
    try:
        _await_marker(netns, lines, [], timeout)
        yield packets
        _await_marker(netns, lines, output, timeout)
    finally:
        monitor.terminate()
        monitor.wait(timeout=10)
        subprocess.run(
            ["ip", "netns", "exec", netns, "nft", "delete", "table", "inet", TRACE_TABLE], check=False, timeout=20
        )
    by_id: dict[str, TracedPacket] = {}
    for line in output:
        packet = _TRACE_PACKET.match(line)
        if packet and packet.group(1) not in by_id:
            text = packet.group(3).strip()
            by_id[packet.group(1)] = TracedPacket(6 if re.search(r"\bip6 saddr", text) else 4, text)
            packets.append(by_id[packet.group(1)])
        rule = _TRACE_RULE.match(line)
        if rule is None or rule.group(3) == TRACE_TABLE or rule.group(1) not in by_id:
            continue
        _, family, table, chain, handle = rule.groups()
        by_id[rule.group(1)].rules.append(
            refs.get((family, table, chain, int(handle)), f"{table}/{chain}:handle{handle}")
        )


def _await_marker(netns: str, lines: queue.Queue[str], out: list[str], timeout: float) -> None:
    """Send marker datagrams (each from its own source port) until the monitor prints one; the lines
    before it, but none of the trace table's own, go to `out`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sport = random.randint(20000, 60000)
        send = (
            f"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('127.0.0.1', {sport})); "
            f"s.sendto(b'podnat', ('127.0.0.1', {MARKER_PORT}))"
        )
        subprocess.run(["ip", "netns", "exec", netns, "/usr/bin/python3", "-c", send], check=False, timeout=20)
        try:
            while True:
                line = lines.get(timeout=0.2)
                if f" {TRACE_TABLE} " not in line:
                    out.append(line)
                elif f"udp sport {sport} udp dport {MARKER_PORT} " in line:
                    return
        except queue.Empty:
            continue
    raise RuntimeError(f"nft monitor trace in {netns} printed no marker within {timeout:g}s")
