"""Has a pod's network namespace changed since the agent read it? Told without starting a process.

Reading a pod costs the agent processes (nsenter, sh, the `-save` commands, nft): about 10 ms of CPU
each time. Telling that nothing changed since the last reading costs a few system calls, so a request
for pods read now (`/v1/pods?maxAge=0`, the CLI's default) re-reads only the pods whose stamp moved:

- the nftables generation of the namespace (`NFT_MSG_GETGEN` over netlink, the ruleset's
  generation ID: every committed nftables transaction in that namespace bumps it, iptables-nft's
  included; reading the rules does not; the kernel keeps one per network namespace);
- the x_tables tables loaded there (`ip_tables_names`, `ip6_tables_names`): where any is loaded,
  iptables-legacy may change it without a generation, so the pod has no stamp and is read again;
- Envoy's listeners (the admin port's `/listeners?format=json`, asked over a socket made inside the
  namespace), as a digest, where something listens on that port; whether it does is asked of the
  kernel (sock_diag, listening sockets only), not by connecting: a connection attempt would count
  packets in the pod's rules (its OUTPUT chain) where nothing listens;
- for a pod with policy routing (TPROXY: table 133; ambient: 100), what `ip rule` and `ip route show
  table T` print, as a digest of the kernel's own dumps of them (RTM_GETRULE, RTM_GETROUTE over
  rtnetlink, both families; a route's cache info and expiry, which move by themselves, left out);
- for an ambient pod, the TCP ports something listens on (ztunnel's), read from the namespace's
  `tcp` and `tcp6` by the same reader as the pod's reading (podnat.capture.listening_ports).

The namespaces are entered with setns(2) by one short-lived thread (CAP_SYS_ADMIN, which the agent
has for nsenter); sockets made there stay in that namespace, and /proc/thread-self/net is that
namespace's. The thread ends after the last pod, so no other thread of the agent ever runs elsewhere.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import http.client
import os
import socket
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from podnat.capture import listening_ports

CLONE_NEWNET = 0x40000000
NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN = 15
NFT_MSG_GETGEN = 16
NFTA_GEN_ID = 1
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
NETLINK_ROUTE = 0
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
TCP_LISTEN = 10
_DIAG_REQ = struct.Struct("=BBBBI")  # inet_diag_req_v2 before its sockid: family, protocol, ext, pad, states
RTM_GETROUTE = 26
RTM_GETRULE = 34
RTA_TABLE = 15
RTA_CACHEINFO = 12
RTA_EXPIRES = 23
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg (and fib_rule_hdr, of the same shape): family .. table .. flags
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid
_NFGENMSG = struct.Struct("=BBH")  # nfgenmsg: family, version, res_id (big-endian, 0 here)
_ATTR = struct.Struct("=HH")  # nlattr: length, type


@dataclass(frozen=True, slots=True)
class Stamp:
    """What a pod's namespace looked like, as far as a check without processes tells."""

    generation: int  # the nftables ruleset generation
    listeners: str | None  # status and digest of Envoy's /listeners?format=json; None: nothing listens there
    routing_table: int | None = None  # the policy-routing table digested (None: none)
    routing: str | None = None  # digest of the rules (all) and of that table's routes, IPv4 and IPv6
    ports: tuple[int, ...] | None = None  # the TCP ports listened on (an ambient pod's; None: not read)


@dataclass(frozen=True, slots=True)
class Target:
    """A pod to stamp: its namespace (a held fd), Envoy's admin port and what else its reading reads."""

    key: str
    fd: int
    admin_port: int
    routing_table: int | None = None  # the policy-routing table its reading prints (TPROXY, ambient)
    sockets: bool = False  # its reading lists the listening sockets (ambient)


def getgen_request(seq: int = 1) -> bytes:
    """The NFT_MSG_GETGEN request (AF_UNSPEC)."""
    kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN
    body = _NFGENMSG.pack(socket.AF_UNSPEC, 0, 0)
    return _HEADER.pack(_HEADER.size + len(body), kind, NLM_F_REQUEST, seq, 0) + body


def generation_of(reply: bytes) -> int:
    """The generation ID in the kernel's answer to getgen_request; -errno when it answered an error."""
    if len(reply) < _HEADER.size + 4:
        raise ValueError(f"netlink reply of {len(reply)} bytes")
    length, kind, _, _, _ = _HEADER.unpack_from(reply)
    if kind == NLMSG_ERROR:
        (code,) = struct.unpack_from("=i", reply, _HEADER.size)
        return code if code < 0 else -errno.EPROTO
    if kind != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN:
        raise ValueError(f"netlink reply of type {kind:#x}, not NFT_MSG_NEWGEN")
    offset = _HEADER.size + _NFGENMSG.size
    while offset + _ATTR.size <= min(length, len(reply)):
        size, attr = _ATTR.unpack_from(reply, offset)
        if size < _ATTR.size:
            break
        if attr & 0x3FFF == NFTA_GEN_ID and size >= _ATTR.size + 4:
            return int(struct.unpack_from(">I", reply, offset + _ATTR.size)[0])
        offset += (size + 3) & ~3
    raise ValueError("netlink reply without NFTA_GEN_ID")


def stamps(targets: Iterable[Target], timeout: float = 1.0, budget: float = 5.0) -> dict[str, Stamp | None]:
    """Each target's stamp (None: it cannot be told here, e.g. x_tables tables are loaded; read it again).

    `timeout` bounds each answer (Envoy's above all), `budget` all of them: the targets left when it is
    spent get None (so a node where something slow listens on the admin port is read, not waited on)."""
    todo = list(targets)
    out: dict[str, Stamp | None] = {t.key: None for t in todo}
    if not todo:
        return out
    deadline = time.monotonic() + budget

    def run() -> None:  # this thread enters the pods' namespaces and ends with the last
        for target in todo:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                out[target.key] = _stamp_here(target, min(timeout, left))
            except Exception:  # whatever went wrong, only a reading tells: None
                out[target.key] = None

    worker = threading.Thread(target=run, name="podnat-stamps", daemon=True)
    worker.start()
    worker.join()
    return out


def _stamp_here(target: Target, timeout: float) -> Stamp | None:
    _setns(target.fd)
    net = "/proc/thread-self/net"
    for names in ("ip_tables_names", "ip6_tables_names"):
        try:
            with open(f"{net}/{names}", encoding="ascii") as handle:  # noqa: PTH123
                if handle.read(1):
                    return None  # a legacy table: no generation tells its changes
        except FileNotFoundError:
            continue  # no x_tables in this kernel for that family
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as nl:
        nl.settimeout(timeout)
        nl.send(getgen_request())
        generation = generation_of(nl.recv(65536))
    if generation < 0:
        return None  # the kernel did not say (no nf_tables, or refused): read the pod
    table = target.routing_table
    ports = None
    if target.sockets:
        with open(f"{net}/tcp", encoding="ascii") as v4, open(f"{net}/tcp6", encoding="ascii") as v6:  # noqa: PTH123
            ports = listening_ports(v4.read() + v6.read())
    return Stamp(
        generation,
        _listeners_digest(target.admin_port, timeout) if target.admin_port in _listening(timeout) else None,
        table,
        _routing_digest(table, timeout) if table is not None else None,
        ports,
    )


def dump_request(kind: int, family: int, seq: int = 1) -> bytes:
    """An rtnetlink dump request (RTM_GETRULE, RTM_GETROUTE) for one address family."""
    body = _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
    return _HEADER.pack(_HEADER.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def dump_messages(data: bytes) -> tuple[list[bytes], bool]:
    """The payloads (after nlmsghdr) of the messages in one read of a dump, and whether it ended (NLMSG_DONE).
    Raises OSError for an NLMSG_ERROR, ValueError for a message cut short."""
    out: list[bytes] = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _, _, _ = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size or offset + length > len(data):
            raise ValueError(f"netlink message of {length} bytes at {offset} in {len(data)}")
        if kind == NLMSG_DONE:
            return out, True
        if kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", data, offset + _HEADER.size)
            raise OSError(-code, os.strerror(-code) if code < 0 else "netlink error")
        out.append(data[offset + _HEADER.size : offset + length])
        offset += (length + 3) & ~3
    return out, False


def route_in_table(payload: bytes, table: int) -> bytes | None:
    """An RTM_NEWROUTE payload as digested when its route is in `table` (the attributes that move by
    themselves, cache info and expiry, left out); None for a route of another table."""
    found = _RTMSG.unpack_from(payload)[4]  # rtm_table (RT_TABLE_UNSPEC, 0, where RTA_TABLE says it)
    kept = [payload[: _RTMSG.size]]
    offset = _RTMSG.size
    while offset + _ATTR.size <= len(payload):
        size, attr = _ATTR.unpack_from(payload, offset)
        if size < _ATTR.size:
            break
        if attr == RTA_TABLE and size >= _ATTR.size + 4:
            found = struct.unpack_from("=I", payload, offset + _ATTR.size)[0]
        if attr not in (RTA_CACHEINFO, RTA_EXPIRES):
            kept.append(payload[offset : offset + size])
        offset += (size + 3) & ~3
    return b"".join(kept) if found == table else None


def _dump(kind: int, family: int, timeout: float) -> list[bytes]:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as nl:
        nl.settimeout(timeout)
        nl.send(dump_request(kind, family))
        payloads: list[bytes] = []
        while True:
            found, done = dump_messages(nl.recv(1 << 16))
            payloads += found
            if done:
                return payloads


def _routing_digest(table: int, timeout: float) -> str:
    """What `ip rule show` and `ip route show table T` would print here, both families, digested."""
    digest = hashlib.blake2b(digest_size=16)
    for family in (socket.AF_INET, socket.AF_INET6):
        for rule in _dump(RTM_GETRULE, family, timeout):
            digest.update(b"rule" + len(rule).to_bytes(4, "little") + rule)
        for route in _dump(RTM_GETROUTE, family, timeout):
            kept = route_in_table(route, table)
            if kept is not None:
                digest.update(b"route" + len(kept).to_bytes(4, "little") + kept)
        digest.update(b"family")
    return digest.hexdigest()


def listening_request(family: int, seq: int = 1) -> bytes:
    """A sock_diag dump request for the TCP sockets of one family in LISTEN (inet_diag_req_v2)."""
    body = _DIAG_REQ.pack(family, socket.IPPROTO_TCP, 0, 0, 1 << TCP_LISTEN) + bytes(48)  # any inet_diag_sockid
    return _HEADER.pack(_HEADER.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def local_port(payload: bytes) -> int:
    """The local port of an inet_diag_msg (its inet_diag_sockid's sport, big-endian, after 4 bytes)."""
    return int(struct.unpack_from(">H", payload, 4)[0])


def _listening(timeout: float) -> set[int]:
    """The TCP ports something listens on in this thread's namespace, IPv4 and IPv6 (no packet sent)."""
    ports: set[int] = set()
    for family in (socket.AF_INET, socket.AF_INET6):
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(timeout)
            nl.send(listening_request(family))
            while True:
                found, done = dump_messages(nl.recv(1 << 16))
                ports.update(local_port(p) for p in found)
                if done:
                    break
    return ports


def _listeners_digest(port: int, timeout: float) -> str:
    """Envoy's answer on the admin port of this thread's namespace (something listens there), digested."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/listeners?format=json")
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    return f"{resp.status}:{hashlib.blake2b(body, digest_size=16).hexdigest()}"


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    """This thread into the network namespace `fd` holds."""
    setns = getattr(os, "setns", None)  # Python 3.12+
    if setns is not None:
        setns(fd, CLONE_NEWNET)
    elif _libc().setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
