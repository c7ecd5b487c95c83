"""Networks as integers: what a rule's `-s`/`-d` compares a packet's address against.

`ipaddress` objects are what podnat shows and takes; integers are what it compares. A table's
networks are read once, when it is parsed, so that a match is a shift and a compare, and a chain of
thousands of excluded CIDRs can be looked up by prefix (podnat/netfilter/runs.py). Pure.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from array import array
from collections.abc import Sequence
from itertools import repeat
from operator import and_, eq, itemgetter

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


def bulk_networks(values: Sequence[str]) -> list[tuple[Net]] | None:
    """`parse_networks` for many single IPv4 CIDRs as iptables-save prints them (`a.b.c.d/N`), read
    together in C: the networks, one 1-tuple per value, or None when any value is in another form
    (the caller then reads each one). A pod's 100,000 excluded CIDRs are read in ~0.05 s this way."""
    read = bulk_read(values)
    return None if read is None else read[0]


def bulk_read(values: Sequence[str]) -> tuple[list[tuple[Net]], list[int], list[int]] | None:
    """bulk_networks, with what a run index is built from: each value's prefix length and network, as
    integers."""
    if not values:
        return [], [], []
    text = "\n".join(values)
    # digits and dots around exactly one "/" in each value, checked in one pass over the text
    if text.translate(_DIGITS_AND_DOTS) != _ONE_SLASH_EACH * (len(values) - 1) + "/":
        return None
    # The usual run: one prefix length, perhaps after a few others (Istio's `-d 127.0.0.1/32 -j RETURN`
    # has the same form as the excluded CIDRs after it); that length is cut off in one pass.
    last = values[-1].partition("/")[2]
    suffix = f"/{last}"
    few = len(values) - 1 - text.count(suffix + "\n")
    if few <= _FEW_OTHERS and not any(value.endswith(suffix) for value in values[:few]):
        head = [value.partition("/") for value in values[:few]]
        rest = text[sum(map(len, values[:few])) + few : -len(suffix)]
        addresses = [address for address, _, _ in head] + rest.replace(suffix + "\n", "\n").split("\n")
        lengths = [length for _, _, length in head]
        kinds = {*lengths, last}
    else:
        parts = text.replace("/", "\n").split("\n")
        addresses, lengths = parts[0::2], parts[1::2]
        kinds = set(lengths)
    prefix = {}
    for length in kinds:
        if not (length.isascii() and length.isdigit() and int(length) <= 32):
            return None
        prefix[length] = int(length)
    try:
        packed = b"".join(map(socket.inet_pton, repeat(socket.AF_INET), addresses))  # strict, as _parse_network
    except OSError:
        return None
    ints = array("I")
    if ints.itemsize != 4:
        return None
    ints.frombytes(packed)
    if sys.byteorder == "little":
        ints.byteswap()
    if len(lengths) < len(values):  # the few, then one length
        prefixes = [*map(prefix.__getitem__, lengths), *repeat(prefix[last], len(values) - len(lengths))]
    else:
        prefixes = list(map(prefix.__getitem__, lengths))
    masks = {length: (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF for length in prefix.values()}
    nets = list(map(and_, ints, map(masks.__getitem__, prefixes)))
    return list(zip(zip(repeat(4), prefixes, nets))), prefixes, nets


_FEW_OTHERS = 8
_DIGITS_AND_DOTS = str.maketrans("", "", "0123456789.")
_ONE_SLASH_EACH = "/\n"


def by_prefix(nets: Sequence[Net]) -> dict[tuple[int, int], list[bool]] | None:
    """For each (IP version, prefix length) among `nets`, which of them have it (a mask for
    itertools.compress), worked out in C; None when there are too many kinds to be worth it."""
    versions = set(map(_VERSION, nets))
    if len(versions) != 1:
        return None  # one table is one family; rules podnat built across families are rare: not worth it
    (version,) = versions
    lengths = list(map(_LENGTH, nets))
    kinds = set(lengths)
    if len(kinds) > 8:
        return None
    if len(kinds) == 1:  # (the usual run) every one of them
        return {(version, length): [True] * len(nets) for length in kinds}
    return {(version, length): list(map(eq, lengths, repeat(length))) for length in kinds}


_VERSION, _LENGTH = itemgetter(0), itemgetter(1)


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


def ntop(address: IPAddress) -> str:
    """An address as inet_ntop(3) spells it (and so iptables-save and nft): IPv4-compatible and
    IPv4-mapped IPv6 addresses end in a dotted quad (`::127.0.0.53`, `::ffff:10.0.0.1`)."""
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    words = [int.from_bytes(address.packed[k : k + 2], "big") for k in range(0, 16, 2)]
    if words[:6] == [0] * 6 and words[6] != 0:
        return f"::{ipaddress.IPv4Address(address.packed[12:])}"
    if words[:5] == [0] * 5 and words[5] == 0xFFFF:
        return f"::ffff:{ipaddress.IPv4Address(address.packed[12:])}"
    return address.compressed


def split_host_port(text: str) -> tuple[str, str | None]:
    """`10.0.0.1:80` -> ("10.0.0.1", "80"), `[fd00::1]:80` -> ("fd00::1", "80"); an address alone
    (`10.0.0.1`, `fd00::1`, `[fd00::1]`) -> (address, None). Neither part is checked here."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else None
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, port
    return text, None
