"""The first packet of a connection, as netfilter's nat hooks see it."""

from __future__ import annotations

from dataclasses import dataclass, field

from podnat.netfilter.model import IPAddress


@dataclass(frozen=True, slots=True)
class Packet:
    """What the rules can look at: addresses, ports, interfaces, the sender's identity, marks."""

    proto: str  # tcp | udp | icmp | icmp6
    src: IPAddress
    dst: IPAddress
    sport: int | None = None
    dport: int | None = None
    in_iface: str | None = None  # set for packets arriving from the network (PREROUTING, INPUT)
    out_iface: str | None = None  # set for locally sent packets (OUTPUT, POSTROUTING)
    uid: int | None = None  # the sending socket's owner; None when no local socket sent it
    gid: int | None = None  # primary gid of the sender (what --gid-owner sees without --suppl-groups)
    groups: frozenset[int] = field(default_factory=frozenset)  # supplementary groups
    mark: int = 0
    ctmark: int = 0
    ct_state: str = "NEW"  # nat sees only a connection's first packet
    local_addresses: frozenset[IPAddress] | None = None  # for addrtype LOCAL; None when unknown
