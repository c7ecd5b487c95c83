"""Policy routing: `ip rule show` / `ip route show table N` as iproute2 6.1 printed them in a real
network namespace (tests/data/routing/README.md), and TPROXY's check on top of them."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from podnat.istio.routing import TproxyRouting, tproxy_routing
from podnat.netfilter.routing import (
    FULL_MASK,
    RoutingParseError,
    local_default,
    mark_lookup,
    parse_routes,
    parse_rules,
)

ROUTING = Path(__file__).resolve().parent.parent / "data" / "routing"


def recorded(name: str) -> str:
    return (ROUTING / name).read_text()


def check(
    rules: str | None,
    routes: str | None,
    *,
    family: str = "ipv4",
    mark: int = 1337,
    table: int = 133,
    unreadable: str | None = None,
) -> TproxyRouting:
    return tproxy_routing(rules, routes, family=family, mark=mark, table=table, source="test", unreadable=unreadable)


# --- the generic parser -------------------------------------------------------------------------


def test_rule_show_is_parsed() -> None:
    rules = parse_rules(recorded("rule-present.txt"))
    assert [(r.priority, r.action, r.table, r.fwmark, r.fwmask) for r in rules] == [
        (0, "lookup", "local", None, FULL_MASK),
        (32765, "lookup", "133", 0x539, FULL_MASK),
        (32766, "lookup", "main", None, FULL_MASK),
        (32767, "lookup", "default", None, FULL_MASK),
    ]
    assert rules[1].text == "32765: from all fwmark 0x539 lookup 133"
    assert all(not r.selectors and not r.negated for r in rules)


def test_masked_mark_and_other_selectors() -> None:
    masked = parse_rules(recorded("rule-masked.txt"))[1]
    assert (masked.fwmark, masked.fwmask, masked.table) == (0x539, 0xFFF, "134")
    assert masked.matches_mark(0x1539) and not masked.matches_mark(0x53A)
    other = parse_rules("100:\tnot from 10.0.0.0/8 iif eth0 fwmark 0x539 lookup 133 proto static\n")[0]
    assert (other.negated, other.selectors) == (True, ("from 10.0.0.0/8", "iif eth0"))
    assert not other.matches_mark(0x539)  # needs more than the mark: not counted as Istio's rule


def test_route_show_is_parsed() -> None:
    (route,) = parse_routes(recorded("route-present.txt"), 4)
    assert (route.type, route.destination, route.device) == ("local", ipaddress.ip_network("0.0.0.0/0"), "lo")
    (route6,) = parse_routes(recorded("route6-present.txt"), 6)
    assert (route6.type, route6.destination, route6.device) == ("local", ipaddress.ip_network("::/0"), "lo")
    assert local_default(parse_routes("local 0.0.0.0/0 dev lo scope host\n", 4)) is not None
    assert local_default(parse_routes(recorded("route-other.txt"), 4)) is None  # unicast 10/8 only
    table_all = parse_routes(
        "local default dev lo table 133 scope host \n10.0.0.0/8\n\tnexthop via 10.0.0.1 dev eth0 weight 1\n", 4
    )
    assert [(r.type, r.table) for r in table_all] == [("local", "133"), ("unicast", None)]


def test_unreadable_lines_name_the_line() -> None:
    with pytest.raises(RoutingParseError) as err:
        parse_rules("0:\tfrom all lookup local\nError: something\n")
    assert err.value.line == 2 and "not an `ip rule` line" in str(err.value)
    with pytest.raises(RoutingParseError, match="line 1: unknown word 'frobnicate'"):
        parse_rules("5:\tfrom all frobnicate lookup 133\n")
    with pytest.raises(RoutingParseError, match="is not a route destination"):
        parse_routes("local nowhere dev lo\n", 4)


def test_mark_lookup_follows_priorities() -> None:
    present = mark_lookup(parse_rules(recorded("rule-present.txt")), 1337, "133")
    assert present.rule is not None and present.rule.priority == 32765
    missing = mark_lookup(parse_rules(recorded("rule-default.txt")), 1337, "133")
    assert missing.rule is None and missing.first is not None and missing.first.table == "main"
    # The fwmark rule after `lookup main` is never reached: main's default route decides first.
    late = mark_lookup(
        parse_rules(
            "0:\tfrom all lookup local\n32766:\tfrom all lookup main\n32767:\tfrom all fwmark 0x539 lookup 133\n"
        ),
        1337,
        "133",
    )
    assert late.rule is None and late.first is not None and late.first.priority == 32766
    # A rule that suppresses main's default route (WireGuard's) does not decide.
    suppressed = mark_lookup(
        parse_rules("100:\tfrom all lookup main suppress_prefixlength 0\n200:\tfrom all fwmark 0x539 lookup 133\n"),
        1337,
        "133",
    )
    assert suppressed.rule is not None and suppressed.rule.priority == 200
    blackhole = mark_lookup(parse_rules("10:\tfrom all fwmark 0x539 blackhole\n"), 1337, "133")
    assert blackhole.first is not None and blackhole.first.action == "blackhole"


# --- TPROXY's check -----------------------------------------------------------------------------


def test_present_v4_and_v6() -> None:
    v4 = check(recorded("rule-present.txt"), recorded("route-present.txt"))
    assert (v4.fwmark_rule, v4.local_route, v4.broken, v4.unknown, v4.missing()) == (True, True, False, None, ())
    v6 = check(recorded("rule6-present.txt"), recorded("route6-present.txt"), family="ipv6")
    assert (v6.fwmark_rule, v6.local_route, v6.broken) == (True, True, False)


def test_missing_rule() -> None:
    result = check(recorded("rule-default.txt"), recorded("route-present.txt"))
    assert (result.fwmark_rule, result.local_route, result.broken) == (False, True, True)
    assert result.first_rule == "32766: from all lookup main"
    assert result.missing() == ("ip rule add fwmark 1337 lookup 133",)


def test_missing_route() -> None:
    # iproute2 prints nothing on stdout (and "FIB table does not exist" on stderr): the source keeps "".
    assert "FIB table does not exist" in recorded("route-missing.stderr")
    result = check(recorded("rule-present.txt"), "")
    assert (result.fwmark_rule, result.local_route) == (True, False)
    assert result.missing() == ("ip route add local default dev lo table 133",)
    v6 = check(recorded("rule6-default.txt"), "", family="ipv6")
    assert v6.missing() == ("ip -6 rule add fwmark 1337 lookup 133", "ip -6 route add local default dev lo table 133")
    # A table with other routes but no local default is missing the route too.
    assert check(recorded("rule-present.txt"), recorded("route-other.txt"), table=135).local_route is False


def test_custom_mark_and_table() -> None:
    # istio-init -t 4242 -r 200: the recorded namespace has `fwmark 0x1092 lookup 200` (and no 0x539 rule).
    custom = check(recorded("rule-custom.txt"), recorded("route-custom.txt"), mark=4242, table=200)
    assert (custom.fwmark_rule, custom.local_route) == (True, True)
    default = check(recorded("rule-custom.txt"), recorded("route-custom.txt"))
    assert default.fwmark_rule is False
    # A masked rule selects the mark when (mark & mask) == value: 0x539/0xfff sends 1337 to 134.
    masked = check(recorded("rule-masked.txt"), recorded("route-present.txt"), table=134)
    assert masked.fwmark_rule is True


def test_ip_missing_is_unknown_not_broken() -> None:
    result = check(None, None, unreadable="`ip` is not in the image of istio-proxy")
    assert (result.fwmark_rule, result.local_route, result.broken) == (None, None, False)
    assert result.unknown == "`ip` is not in the image of istio-proxy"
    assert result.missing() == ()
    garbled = check("Usage: ip rule ...\n", recorded("route-present.txt"))
    assert garbled.fwmark_rule is None and garbled.local_route is True
    assert garbled.unknown is not None and "`ip rule show` output not understood" in garbled.unknown
