"""Does a rule match a packet? True, False, or Unknown with the reason (never a guess).

One function per match module; `rule_matches` combines them. Pure.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from podnat.netfilter.addresses import cond_networks, in_networks
from podnat.netfilter.model import Cond, IPAddress, Match, Option, Rule
from podnat.netfilter.packet import Packet

PROTOCOL_NUMBERS = {
    "6": "tcp",
    "17": "udp",
    "1": "icmp",
    "58": "icmp6",
    "132": "sctp",
    "ipv6-icmp": "icmp6",
    "icmpv6": "icmp6",
}
TCP_FLAGS = {"FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"}


@dataclass(frozen=True, slots=True)
class Unknown:
    """A match podnat cannot evaluate, and why (it needs state podnat does not have)."""

    reason: str


Result = bool | Unknown


def rule_matches(rule: Rule, packet: Packet, hook: str) -> Result:
    """Whether every condition of `rule` holds for `packet` (the first packet of its connection)."""
    if rule.source is not None and not _address(rule.source, packet.src):
        return False
    if rule.destination is not None and not _address(rule.destination, packet.dst):
        return False
    return rest_matches(rule, packet, hook)


def rest_matches(rule: Rule, packet: Packet, hook: str) -> Result:
    """rule_matches without the `-s`/`-d` tests: what rules that differ only by address share."""
    if rule.protocol is not None and not _protocol(rule.protocol, packet):
        return False
    if rule.in_iface is not None and not _iface(rule.in_iface, packet.in_iface):
        return False
    if rule.out_iface is not None and not _iface(rule.out_iface, packet.out_iface):
        return False
    if rule.fragment is True:
        return False  # a connection's first packet is never a non-first fragment
    unknown: Unknown | None = None
    for match in rule.matches:
        result = match_module(match, packet, hook)
        if result is False:
            return False
        if isinstance(result, Unknown) and unknown is None:
            unknown = result
    return unknown if unknown is not None else True


def _protocol(cond: Cond, packet: Packet) -> bool:
    value = PROTOCOL_NUMBERS.get(cond.value.lower(), cond.value.lower())
    hit = value in ("all", "0") or value == packet.proto
    return hit != cond.negated


def _address(cond: Cond, address: IPAddress) -> bool:
    return in_networks(address, cond_networks(cond)) != cond.negated


def iface_matches(pattern: str, iface: str | None) -> bool:
    """iptables interface match: exact, or a prefix when the pattern ends with `+`."""
    if iface is None:
        return False
    if pattern.endswith("+"):
        return iface.startswith(pattern[:-1])
    return iface == pattern


def _iface(cond: Cond, iface: str | None) -> bool:
    return iface_matches(cond.value, iface) != cond.negated


def match_module(match: Match, packet: Packet, hook: str) -> Result:
    """Evaluate one `-m MODULE` (or implicit protocol module) against the packet."""
    evaluate = _MODULES.get(match.module)
    if evaluate is None:
        return Unknown(f"match module {match.module!r} is not modelled")
    return evaluate(match, packet, hook)


def port_in(spec: str, port: int | None) -> bool:
    """`80`, `1000:2000`, `:1024`, `1024:` (iptables port or range)."""
    if port is None:
        return False
    if ":" in spec:
        low, high = spec.split(":", 1)
        return (int(low) if low else 0) <= port <= (int(high) if high else 65535)
    return port == int(spec)


def _ports(match: Match, packet: Packet, hook: str) -> Result:
    del hook
    if packet.proto != _proto_of_module(match.module):
        return False
    for option in match.options:
        if option.name in ("sport", "source-port"):
            hit = port_in(option.args[0], packet.sport)
        elif option.name in ("dport", "destination-port"):
            hit = port_in(option.args[0], packet.dport)
        elif option.name == "syn":
            hit = True  # the first packet of a TCP connection is a SYN
        elif option.name == "tcp-flags":
            mask = _flags(option.args[0])
            wanted = _flags(option.args[1])
            hit = ({"SYN"} & mask) == wanted
        else:
            return Unknown(f"--{option.name} of match {match.module} is not modelled")
        if hit == option.negated:
            return False
    return True


def _proto_of_module(module: str) -> str:
    return "icmp6" if module == "icmp6" else module


def _flags(spec: str) -> set[str]:
    if spec == "ALL":
        return set(TCP_FLAGS)
    if spec == "NONE":
        return set()
    return {flag for flag in spec.split(",") if flag}


def _multiport(match: Match, packet: Packet, hook: str) -> Result:
    del hook
    if packet.proto not in ("tcp", "udp", "sctp"):
        return False
    for option in match.options:
        ports = option.args[0].split(",")
        if option.name in ("dports", "destination-ports"):
            hit = any(port_in(p, packet.dport) for p in ports)
        elif option.name in ("sports", "source-ports"):
            hit = any(port_in(p, packet.sport) for p in ports)
        elif option.name == "ports":
            hit = any(port_in(p, packet.dport) or port_in(p, packet.sport) for p in ports)
        else:
            return Unknown(f"--{option.name} of match multiport is not modelled")
        if hit == option.negated:
            return False
    return True


def _id_range(spec: str) -> tuple[int, int] | Unknown:
    low, _, high = spec.partition("-")
    if not low.isdigit() or (high and not high.isdigit()):
        return Unknown(f"owner {spec!r} is a name; iptables-save prints numbers, so podnat cannot resolve it")
    return int(low), int(high or low)


def _owner(match: Match, packet: Packet, hook: str) -> Result:
    if hook not in ("OUTPUT", "POSTROUTING"):
        return Unknown(f"match owner is only valid in OUTPUT and POSTROUTING, not {hook}")
    if packet.uid is None:
        # No local socket: the kernel matches only when every owner test is negated.
        return all(option.negated for option in match.options)
    suppl = match.get("suppl-groups") is not None
    for option in match.options:
        if option.name == "socket-exists":
            hit = True
        elif option.name == "suppl-groups":
            continue
        elif option.name in ("uid-owner", "gid-owner"):
            bounds = _id_range(option.args[0])
            if isinstance(bounds, Unknown):
                return bounds
            low, high = bounds
            if option.name == "uid-owner":
                hit = low <= packet.uid <= high
            else:
                gids = {packet.gid} | (set(packet.groups) if suppl else set())
                hit = any(g is not None and low <= g <= high for g in gids)
        else:
            return Unknown(f"--{option.name} of match owner is not modelled")
        if hit == option.negated:
            return False
    return True


def parse_mark(spec: str) -> tuple[int, int]:
    """`0x539`, `1337`, `0x539/0xffffffff` -> (value, mask)."""
    value, _, mask = spec.partition("/")
    return int(value, 0), int(mask, 0) if mask else 0xFFFFFFFF


def _mark(match: Match, packet: Packet, hook: str) -> Result:
    del hook
    current = packet.mark if match.module == "mark" else packet.ctmark
    for option in match.options:
        value, mask = parse_mark(option.args[0])
        if ((current & mask) == value) == option.negated:
            return False
    return True


def _ctstate(option: Option, packet: Packet) -> bool:
    states = {s.upper() for s in option.args[0].split(",")}
    return (packet.ct_state in states) != option.negated


def _conntrack(match: Match, packet: Packet, hook: str) -> Result:
    del hook
    for option in match.options:
        if option.name in ("ctstate", "state"):
            if not _ctstate(option, packet):
                return False
        else:
            return Unknown(f"--{option.name} of match {match.module} needs conntrack state podnat does not have")
    return True


def _addrtype(match: Match, packet: Packet, hook: str) -> Result:
    del hook
    for option in match.options:
        if option.name not in ("src-type", "dst-type"):
            return Unknown(f"--{option.name} of match addrtype is not modelled")
        address = packet.src if option.name == "src-type" else packet.dst
        kinds = set(option.args[0].upper().split(","))
        actual = _address_type(address, packet)
        if isinstance(actual, Unknown):
            return actual
        if (actual in kinds) == option.negated:
            return False
    return True


def _address_type(address: ipaddress.IPv4Address | ipaddress.IPv6Address, packet: Packet) -> str | Unknown:
    if address.is_multicast:
        return "MULTICAST"
    if isinstance(address, ipaddress.IPv4Address) and address == ipaddress.IPv4Address("255.255.255.255"):
        return "BROADCAST"
    if address.is_loopback:
        return "LOCAL"
    if packet.local_addresses is None:
        return Unknown("match addrtype needs the pod's local addresses")
    return "LOCAL" if address in packet.local_addresses else "UNICAST"


def _always(match: Match, packet: Packet, hook: str) -> Result:
    del match, packet, hook
    return True


def _set(match: Match, packet: Packet, hook: str) -> Result:
    del packet, hook
    option = match.get("match-set")
    name = option.args[0] if option else "?"
    return Unknown(f"match set {name!r}: ipset contents are not in the table")


def _icmp(match: Match, packet: Packet, hook: str) -> Result:
    del hook
    if packet.proto != _proto_of_module(match.module):
        return False
    return Unknown("icmp type matches are not modelled") if match.options else True


_MODULES = {
    "tcp": _ports,
    "udp": _ports,
    "sctp": _ports,
    "multiport": _multiport,
    "owner": _owner,
    "mark": _mark,
    "connmark": _mark,
    "conntrack": _conntrack,
    "state": _conntrack,
    "addrtype": _addrtype,
    "comment": _always,
    "set": _set,
    "icmp": _icmp,
    "icmp6": _icmp,
}
