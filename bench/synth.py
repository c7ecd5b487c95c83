"""Synthetic tables for the benchmark: the injected default plus N excluded CIDRs (-x), as a pod
with a long excludeOutboundIPRanges would have them, in live iptables-save form.

Two shapes of the excluded ranges (SHAPES):
  consecutive   /30s one after the other from 100.64.0.0 (100.64.0.0/30, 100.64.0.4/30, ...)
  spread        /24s spread over many /8s: each rule's first octet differs from the last one's
                (1.0.0.0/24, 2.0.0.0/24, ... 223.0.0.0/24, 1.0.1.0/24, ...; 0, 127 and 224+ left out)
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

DEFAULT = Path(__file__).resolve().parent.parent / "tests" / "data" / "default.v4.iptables-save"
SHAPES = ("consecutive", "spread")
_FIRST_OCTETS = [octet for octet in range(1, 224) if octet != 127]


def excluded_networks(rules: int, shape: str = "consecutive") -> list[str]:
    """`rules` distinct networks of one shape (SHAPES), as iptables-save prints them."""
    if shape == "consecutive":
        base = int(ipaddress.IPv4Address("100.64.0.0"))
        return [f"{ipaddress.IPv4Address(base + 4 * i)}/30" for i in range(rules)]
    if shape == "spread":
        width = len(_FIRST_OCTETS)
        return [f"{_FIRST_OCTETS[i % width]}.{(i // width) >> 8 & 255}.{(i // width) & 255}.0/24" for i in range(rules)]
    raise ValueError(f"unknown shape {shape!r}: one of {', '.join(SHAPES)}")


def synthetic_table(rules: int, shape: str = "consecutive") -> str:
    """The default table with `rules` excluded networks of `shape` (SHAPES) after ISTIO_OUTPUT's
    `-d 127.0.0.1/32 -j RETURN`."""
    lines = DEFAULT.read_text().splitlines()
    at = lines.index("-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN") + 1
    extra = [f"-A ISTIO_OUTPUT -d {network} -j RETURN" for network in excluded_networks(rules, shape)]
    return "\n".join(lines[:at] + extra + lines[at:]) + "\n"
