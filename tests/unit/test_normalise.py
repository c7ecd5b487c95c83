"""Restore input -> live iptables-save text, checked against what a real kernel printed."""

# ruff: noqa: E501  (literal iptables-save lines are longer than the code limit)
from __future__ import annotations

from pathlib import Path

import pytest

from podnat.istio.goldens import split_golden
from podnat.istio.normalise import NormaliseError, canonical_rule, format_address, normalise_restore
from tools.conformance import chains, load_golden


@pytest.mark.parametrize(
    ("restore", "save"),
    [
        ("-o lo -s 127.0.0.6/32 -j RETURN", "-s 127.0.0.6/32 -o lo -j RETURN"),
        ("-p tcp --dport 15008 -j RETURN", "-p tcp -m tcp --dport 15008 -j RETURN"),
        (
            "-p udp --dport 53 -d 127.0.0.53/32 -j REDIRECT --to-port 15053",
            "-d 127.0.0.53/32 -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053",
        ),
        ("-j MARK --set-mark 1337", "-j MARK --set-xmark 0x539/0xffffffff"),
        (
            "-p tcp -m mark --mark 1337 -j CONNMARK --save-mark",
            "-p tcp -m mark --mark 0x539 -j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff",
        ),
        (
            "! -d 127.0.0.1/32 -p tcp -j TPROXY --tproxy-mark 1337/0xffffffff --on-port 15006",
            "! -d 127.0.0.1/32 -p tcp -j TPROXY --on-port 15006 --on-ip 0.0.0.0 --tproxy-mark 0x539/0xffffffff",
        ),
        (
            "-o lo ! -d 127.0.0.1/8 -p tcp -m multiport ! --dports 53,15008 -m owner --uid-owner 3 -j ISTIO_IN_REDIRECT",
            "! -d 127.0.0.0/8 -o lo -p tcp -m multiport ! --dports 53,15008 -m owner --uid-owner 3 -j ISTIO_IN_REDIRECT",
        ),
    ],
)
def test_canonical_rule(restore: str, save: str) -> None:
    assert canonical_rule(restore.split()) == save


def test_ipv6_addresses_print_as_inet_ntop() -> None:
    assert format_address("::127.0.0.53/128") == "::127.0.0.53/128"
    assert format_address("::6/128") == "::6/128"
    assert format_address("2001:db8::/32") == "2001:db8::/32"
    assert format_address("10.0.0.1") == "10.0.0.1/32"


def test_insert_positions_and_chain_grouping() -> None:
    text = """* nat
-N ISTIO_OUTPUT
-N ISTIO_INBOUND
-A ISTIO_OUTPUT -j RETURN
-A PREROUTING -p tcp -j ISTIO_INBOUND
-I PREROUTING 1 -i eth1 -j RETURN
-I PREROUTING 1 -i eth2 -j RETURN
COMMIT
"""
    assert (
        normalise_restore(text)
        == """*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:ISTIO_INBOUND - [0:0]
:ISTIO_OUTPUT - [0:0]
-A PREROUTING -i eth2 -j RETURN
-A PREROUTING -i eth1 -j RETURN
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_OUTPUT -j RETURN
COMMIT
"""
    )


def test_command_form_is_read() -> None:
    text = "iptables -t nat -N ISTIO_INBOUND\niptables -t nat -A ISTIO_INBOUND -p tcp --dport 22 -j RETURN\n"
    assert "-A ISTIO_INBOUND -p tcp -m tcp --dport 22 -j RETURN" in normalise_restore(text)


def test_bad_line_carries_its_number() -> None:
    with pytest.raises(NormaliseError) as err:
        normalise_restore("* nat\n-N X\n-Z X\nCOMMIT\n")
    assert err.value.line_no == 3


def test_golden_split_into_families() -> None:
    text = "iptables-save\nip6tables-save\n* nat\n-N A\nCOMMIT\n* nat\n-N B\nCOMMIT\niptables-save\nip6tables-save\n"
    golden = split_golden(text)
    assert golden.v4 == "* nat\n-N A\nCOMMIT\n"
    assert golden.v6 == "* nat\n-N B\nCOMMIT\n"
    assert golden.ipv6_probed


def _kernel_saves(reference: Path) -> list[Path]:
    return sorted((reference / "kernel-save" / "iptables").glob("*.iptables-save"))


def test_every_golden_normalises_to_the_kernel_dump(reference: Path) -> None:
    dumps = _kernel_saves(reference)
    assert len(dumps) >= 30
    for dump in dumps:
        name, family = dump.name.split(".")[:2]
        golden = load_golden(reference / "goldens" / "iptables" / f"{name}.golden")
        text = golden.v4 if family == "v4" else golden.v6
        assert text is not None, dump.name
        got = chains(normalise_restore(text, ipv6=family == "v6"), family)
        assert got == chains(dump.read_text(), family), dump.name
