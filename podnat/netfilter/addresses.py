"""Networks as integers: what a rule's `-s`/`-d` compares a packet's address against.

`ipaddress` objects are what podnat shows and takes; integers are what it compares. A table's
networks are read once, when it is parsed, so that a match is a shift and a compare, and a chain of
thousands of excluded CIDRs can be looked up by prefix (podnat/netfilter/runs.py). Pure.
"""

from __future__ import annotations

import ipaddress
import socket

from podnat.netfilter.model import Cond, IPAddress, Net

WIDTH = {4: 32, 6: 128}


def parse_networks(value: str) -> tuple[Net, ...]:
    """`10.0.0.0/8,192.168.1.1` -> one (version, prefix length, network) per part, as
    `ipaddress.ip_network(part, strict=False)` reads it; ValueError on a part it rejects."""
    if "," not in value:
        return (_parse_network(value),)
    return tuple(_parse_network(part) for part in value.split(","))


def _parse_network(part: str) -> Net:
    address, slash, prefix = part.partition("/")
    # The form iptables-save prints (dotted quad, /N), read by the C library; anything else (IPv6,
    # netmasks, bad input) by ipaddress, which is the reference. inet_pton accepts a strict subset of
    # what ipaddress accepts: four decimal octets, no leading zeros.
    if not slash or (prefix.isascii() and prefix.isdigit() and int(prefix) <= 32):
        try:
            packed = socket.inet_pton(socket.AF_INET, address)
        except OSError:
            pass
        else:
            length = int(prefix) if slash else 32
            host = 32 - length
            return 4, length, int.from_bytes(packed, "big") >> host << host
    network = ipaddress.ip_network(part, strict=False)
    return network.version, network.prefixlen, int(network.network_address)


def address_cond(value: str, negated: bool = False) -> Cond:
    """The Cond of a `-s`/`-d` value, with its networks read; left unread (and rejected later, with
    the rule's line) when a part is not an address."""
    try:
        networks = (_parse_network(value),) if "," not in value else parse_networks(value)
    except ValueError:
        networks = ()
    return Cond(value, negated, networks)


def cond_networks(cond: Cond) -> tuple[Net, ...]:
    """The networks of an address Cond, read now if whoever built it did not."""
    return cond.networks or parse_networks(cond.value)


def in_networks(address: IPAddress, networks: tuple[Net, ...]) -> bool:
    """Whether `address` is in any of `networks` (never across IP versions, as ipaddress says)."""
    version = address.version
    value = int(address)
    width = WIDTH[version]
    return any(v == version and value >> (width - length) == net >> (width - length) for v, length, net in networks)


def network_bounds(net: Net) -> tuple[int, int]:
    """The first and last address of a network, as integers."""
    version, length, first = net
    return first, first | ((1 << (WIDTH[version] - length)) - 1)


def to_address(version: int, value: int) -> IPAddress:
    return ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)
