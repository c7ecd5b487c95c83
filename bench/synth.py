"""Synthetic tables for the benchmark: the injected default plus N excluded CIDRs (-x), as a pod
with a long excludeOutboundIPRanges would have them, in live iptables-save form."""

from __future__ import annotations

import ipaddress
from pathlib import Path

DEFAULT = Path(__file__).resolve().parent.parent / "tests" / "data" / "default.v4.iptables-save"


def synthetic_table(rules: int) -> str:
    lines = DEFAULT.read_text().splitlines()
    at = lines.index("-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN") + 1
    base = int(ipaddress.IPv4Address("100.64.0.0"))
    extra = [f"-A ISTIO_OUTPUT -d {ipaddress.IPv4Address(base + 4 * i)}/30 -j RETURN" for i in range(rules)]
    return "\n".join(lines[:at] + extra + lines[at:]) + "\n"
