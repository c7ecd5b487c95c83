from __future__ import annotations

import re
from pathlib import Path

from podnat.istio.evidence import evidence
from podnat.istio.explain import explain
from podnat.istio.flows import PodContext
from podnat.netfilter.parse import parse_ruleset

DEFAULT = (Path(__file__).resolve().parent.parent / "data" / "default.v4.iptables-save").read_text()


def counted(values: dict[str, int]) -> str:
    """The default table with counters: rule text -> packets (others 0)."""
    out = []
    for line in DEFAULT.splitlines():
        packets = values.get(line, 0)
        out.append(f"[{packets}:{packets * 60}] {line}" if line.startswith("-A ") else line)
    return "\n".join(out) + "\n"


def test_no_counters_no_evidence():
    live = parse_ruleset(DEFAULT)
    assert evidence(explain(live, PodContext()), live) is None


def test_counted_paths_are_consistent_and_the_rest_is_unexpected():
    values = {
        "-A OUTPUT -j ISTIO_OUTPUT": 10,
        "-A ISTIO_OUTPUT -j ISTIO_REDIRECT": 4,
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001": 4,
        "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN": 6,
        "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN": 1204,
    }
    live = parse_ruleset(counted(values))
    ev = evidence(explain(live, PodContext()), live)
    by_type = {(f.flow, f.variant): f for f in ev.flows}
    assert by_type[(2, None)].consistent
    assert by_type[(2, None)].counts == (
        ("OUTPUT:1", 10),
        ("ISTIO_OUTPUT:9", 4),
        ("ISTIO_REDIRECT:1", 4),
        ("ISTIO_OUTPUT:4", 6),
    )
    assert not by_type[(1, None)].consistent and "PREROUTING:1" in by_type[(1, None)].silent
    assert ev.unexpected == (("ISTIO_OUTPUT:7", "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN", 1204),)
    assert re.match(r"ISTIO_OUTPUT:\d", ev.unexpected[0][0])
