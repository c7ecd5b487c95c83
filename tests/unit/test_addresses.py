"""The one helper per idea for addresses: host:port splitting and inet_ntop's spelling."""

from __future__ import annotations

import ipaddress

import pytest

from podnat.netfilter.addresses import ntop, split_host_port


@pytest.mark.parametrize(
    ("text", "split"),
    [
        ("10.0.0.1:80", ("10.0.0.1", "80")),
        ("[fd00::1]:80", ("fd00::1", "80")),
        ("[fd00::1]", ("fd00::1", None)),
        ("fd00::1", ("fd00::1", None)),
        ("10.0.0.1", ("10.0.0.1", None)),
        (":15001", ("", "15001")),
    ],
)
def test_host_and_port_are_split_one_way(text: str, split: tuple[str, str | None]) -> None:
    assert split_host_port(text) == split


def test_ntop_spells_addresses_as_inet_ntop_does() -> None:
    # as iptables-save and nft list ruleset print them (tests/data/istio/kernel-save)
    assert ntop(ipaddress.ip_address("::127.0.0.53")) == "::127.0.0.53"
    assert ntop(ipaddress.ip_address("::ffff:10.0.0.1")) == "::ffff:10.0.0.1"
    assert ntop(ipaddress.ip_address("::6")) == "::6"
    assert ntop(ipaddress.ip_address("fd00::a")) == "fd00::a"
    assert ntop(ipaddress.ip_address("10.0.0.1")) == "10.0.0.1"
