"""The kernel's iptables-save spelling, printed from the model: what iptables-save printed comes back
unchanged, and restore input comes out as the kernel printed it after loading it."""

# ruff: noqa: E501  (literal iptables-save lines are longer than the code limit)
from __future__ import annotations

from pathlib import Path

import pytest

from podnat.netfilter.model import Family
from podnat.netfilter.parse import parse_ruleset
from podnat.netfilter.save import format_address, format_rule, format_ruleset

REPO = Path(__file__).resolve().parents[2]


def _dumps(reference: Path) -> list[Path]:
    return [
        *sorted((reference / "kernel-save" / "iptables").glob("*.iptables-save")),
        REPO / "tests/data/default.v4.iptables-save",
    ]


def test_every_kernel_dump_prints_back_as_the_kernel_printed_it(reference: Path) -> None:
    dumps = _dumps(reference)
    assert len(dumps) >= 30
    for dump in dumps:
        text = dump.read_text(encoding="utf-8")
        family = Family.IPV6 if ".v6." in dump.name else Family.IPV4
        wanted = [line for line in text.splitlines() if line and not line.startswith("#")]
        assert format_ruleset(parse_ruleset(text, family)).splitlines() == wanted, dump.name


def test_counters_print_where_the_dump_had_them() -> None:
    text = "*nat\n:PREROUTING ACCEPT [3:180]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n[7:420] -A PREROUTING -p tcp -j RETURN\nCOMMIT\n"
    ruleset = parse_ruleset(text)
    assert format_ruleset(ruleset) == text
    assert format_ruleset(ruleset, counters=False) == text.replace("[3:180]", "[0:0]").replace("[7:420] ", "")


@pytest.mark.parametrize(
    ("restore", "save"),
    [
        ("-A OUTPUT -p tcp --destination-port 15008 -j RETURN", "-A OUTPUT -p tcp -m tcp --dport 15008 -j RETURN"),
        ("-A OUTPUT --jump MARK --set-mark 0x111/0xfff", "-A OUTPUT -j MARK --set-xmark 0x111/0xfff"),
        ("-A OUTPUT -j MARK --set-mark 0x1000/0xfff", "-A OUTPUT -j MARK --set-xmark 0x1000/0x1fff"),
        ("-A OUTPUT -m connmark --mark 0x111/0xfff -j RETURN", "-A OUTPUT -m connmark --mark 0x111/0xfff -j RETURN"),
        (
            "-A OUTPUT -j CONNMARK --restore-mark --mask 0xfff",
            "-A OUTPUT -j CONNMARK --restore-mark --nfmask 0xfff --ctmask 0xfff",
        ),
        (
            '-A OUTPUT -m comment --comment "two words" -j RETURN',
            '-A OUTPUT -m comment --comment "two words" -j RETURN',
        ),
        ("-A OUTPUT ! -f -o lo -d 10.1.2.3 -j RETURN", "-A OUTPUT -d 10.1.2.3/32 -o lo ! -f -j RETURN"),
    ],
)
def test_a_rule_in_the_kernels_spelling(restore: str, save: str) -> None:
    # each `save` is what iptables-save v1.8.9 (nf_tables) printed after iptables-restore loaded `restore`
    text = f"*mangle\n{restore}\nCOMMIT\n"
    (rule,) = parse_ruleset(text).tables["mangle"].rules()
    assert format_rule(rule) == save


def test_tproxy_on_ip_defaults_to_the_familys_any_address() -> None:
    text = "*mangle\n-A PREROUTING -p tcp -j TPROXY --on-port 15006 --tproxy-mark 1337\nCOMMIT\n"
    for family, any_address in ((Family.IPV4, "0.0.0.0"), (Family.IPV6, "::")):
        (rule,) = parse_ruleset(text, family).tables["mangle"].rules()
        assert format_rule(rule, family) == (
            f"-A PREROUTING -p tcp -j TPROXY --on-port 15006 --on-ip {any_address} --tproxy-mark 0x539/0xffffffff"
        )


def test_addresses_as_networks_and_inet_ntop() -> None:
    assert format_address("127.0.0.1/8") == "127.0.0.0/8"
    assert format_address("::ffff:10.0.0.1") == "::ffff:10.0.0.1/128"
    assert format_address("10.0.0.1,fd00::1/64") == "10.0.0.1/32,fd00::/64"
