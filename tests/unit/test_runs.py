"""The fast paths of the engine give exactly what the plain ones give.

- networks read as integers (podnat.netfilter.addresses) equal what ipaddress reads, and fail where it fails;
- rules read from a template (netfilter/_bulk.py) equal rules read one by one (grammar.parse_rule);
- the run index (podnat.netfilter.runs) finds the same first match and counts the same rules as
  testing every rule (`traverse(..., indexed=False)`), on random tables and packets;
- a chain's spans (runs.spans) cover its rules in order, and the rules of a span differ in nothing
  but their address, text, position, line and counters.
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podnat.netfilter import runs as run_index
from podnat.netfilter.addresses import bulk_networks, parse_networks
from podnat.netfilter.grammar import parse_rule
from podnat.netfilter.model import Cond, Counters, Family, Rule
from podnat.netfilter.packet import Packet
from podnat.netfilter.parse import parse_ruleset
from podnat.netfilter.runs import MIN_RUN, AddressRun, chain_runs, find_runs, representatives, spans
from podnat.netfilter.traverse import traverse

REPO = Path(__file__).resolve().parents[2]


# --- networks -------------------------------------------------------------------------------------


def _reference(value: str) -> tuple[tuple[int, int, int], ...] | None:
    try:
        nets = [ipaddress.ip_network(part, strict=False) for part in value.split(",")]
    except ValueError:
        return None
    return tuple((n.version, n.prefixlen, int(n.network_address)) for n in nets)


def _read(value: str) -> tuple[tuple[int, int, int], ...] | None:
    try:
        return parse_networks(value)
    except ValueError:
        return None


@given(st.text(alphabet="0123456789./:af,", max_size=24))
def test_networks_read_as_ipaddress_reads_them(value: str) -> None:
    assert _read(value) == _reference(value)


@given(st.integers(0, 2**32 - 1), st.integers(0, 32), st.booleans())
def test_ipv4_networks_as_iptables_save_prints_them(address: int, length: int, bare: bool) -> None:
    text = str(ipaddress.IPv4Address(address)) + ("" if bare else f"/{length}")
    assert _read(text) == _reference(text)


def test_odd_forms_go_to_ipaddress() -> None:
    for value in (
        "010.0.0.1/8",
        "10.0.0.0/255.0.0.0",
        "10.0.0.0/033",
        "1.2.3",
        "fd00::1/64",
        "::ffff:1.2.3.4",
        "10.0.0.0/8,fd00::/8",
        "10.0.0.0/٣",
        "256.0.0.0/8",
        "",
    ):
        assert _read(value) == _reference(value), value


# --- random tables ----------------------------------------------------------------------------------

POOL = [f"10.0.0.{i}" for i in range(0, 256, 17)] + ["10.0.1.1", "192.168.0.1"]
RESTS = [
    "",
    "-p tcp",
    "-p udp",
    "-o lo",
    "-p tcp -m tcp --dport 80",
    "-m mark --mark 0x1",
    "-m owner --uid-owner 1337",
    "-m owner ! --uid-owner 1337",
    "-m set --match-set s dst",
]
TARGETS = [
    "-j RETURN",
    "-j ACCEPT",
    "-j DROP",
    "-j MARK --set-xmark 0x1/0xffffffff",
    "-j LOG",
    "-j SUB",
    "-g SUB",
    "-j REDIRECT --to-ports 15001",
    "",
]
SUB_TARGETS = [t for t in TARGETS if "SUB" not in t]

networks = st.builds(
    lambda host, length: f"{ipaddress.ip_network(f'{host}/{length}', strict=False)}",
    st.sampled_from(POOL),
    st.integers(24, 32),
)
address_forms = st.sampled_from(["-d {}", "-s {}", "! -d {}", "-s 10.0.0.0/28 -d {}", "-d {},10.0.0.64/27"])


@st.composite
def segments(draw: st.DrawFn, targets: list[str]) -> list[str]:
    """A run: rules with one address form, rest and target, differing only by network."""
    form, rest, target = draw(address_forms), draw(st.sampled_from(RESTS)), draw(st.sampled_from(targets))
    nets = draw(st.lists(networks, min_size=1, max_size=2 * MIN_RUN + 4))
    return [" ".join(part for part in (form.format(net), rest, target) if part) for net in nets]


@st.composite
def tables(draw: st.DrawFn) -> str:
    main = [rule for segment in draw(st.lists(segments(TARGETS), max_size=5)) for rule in segment]
    sub = [rule for segment in draw(st.lists(segments(SUB_TARGETS), max_size=3)) for rule in segment]
    lines = [
        "*nat",
        ":PREROUTING ACCEPT [0:0]",
        ":INPUT ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]",
        ":MAIN - [0:0]",
        ":SUB - [0:0]",
        "-A OUTPUT -p tcp -j MAIN",
        "-A OUTPUT -j MAIN",
    ]
    lines += [f"-A MAIN {rule}" for rule in main] + [f"-A SUB {rule}" for rule in sub] + ["COMMIT"]
    return "\n".join(lines) + "\n"


packets = st.builds(
    Packet,
    proto=st.sampled_from(["tcp", "udp"]),
    src=st.sampled_from(POOL).map(ipaddress.IPv4Address),
    dst=st.sampled_from(POOL).map(ipaddress.IPv4Address),
    sport=st.just(50000),
    dport=st.sampled_from([80, 443]),
    out_iface=st.sampled_from(["lo", "eth0"]),
    uid=st.sampled_from([None, 1000, 1337]),
    gid=st.sampled_from([None, 1000, 1337]),
    mark=st.sampled_from([0, 1]),
)


@settings(max_examples=300, deadline=None)
@given(tables(), st.lists(packets, min_size=1, max_size=8))
def test_indexed_traversal_equals_the_plain_walk(text: str, packets: list[Packet]) -> None:
    ruleset = parse_ruleset(text, Family.IPV4)
    for packet in packets:
        for start in (None, "MAIN", "SUB"):
            plain = traverse(ruleset, "nat", "OUTPUT", packet, start=start, indexed=False)
            assert traverse(ruleset, "nat", "OUTPUT", packet, start=start) == plain


@settings(max_examples=200, deadline=None)
@given(tables())
def test_rules_read_from_templates_equal_rules_read_one_by_one(text: str) -> None:
    ruleset = parse_ruleset(text, Family.IPV4)
    chain_names = set(ruleset.tables["nat"].chains)
    for rule in ruleset.tables["nat"].rules():
        alone = parse_rule("nat", rule.chain, rule.position, rule.line, rule.text, None, rule.spec.split(), chain_names)
        assert rule == alone
        for cond in (rule.source, rule.destination):
            if cond is not None:
                assert cond.networks == parse_networks(cond.value)


# --- the index itself -----------------------------------------------------------------------------


def _synthetic(rules: int) -> str:
    sys.path.insert(0, str(REPO / "bench"))
    try:
        from synth import synthetic_table
    finally:
        sys.path.remove(str(REPO / "bench"))
    return synthetic_table(rules)


def _packet(dst: str, uid: int = 1000) -> Packet:
    return Packet(
        "tcp",
        ipaddress.IPv4Address("10.99.0.2"),
        ipaddress.IPv4Address(dst),
        50000,
        9080,
        out_iface="eth0",
        uid=uid,
        gid=uid,
    )


def test_excluded_cidrs_are_one_run_and_only_the_matching_rule_counts() -> None:
    ruleset = parse_ruleset(_synthetic(1000))
    chain = ruleset.tables["nat"].chains["ISTIO_OUTPUT"]
    runs = chain_runs(chain)
    run = runs[8]
    assert isinstance(run, AddressRun)
    # ISTIO_OUTPUT:8, `-d 127.0.0.1/32 -j RETURN`, has the same form: the run starts there
    assert (run.start, run.stop, run.field) == (7, 1008, "destination")
    assert runs[6] is None and runs[1008] is None
    hit = traverse(ruleset, "nat", "OUTPUT", _packet("100.64.3.233"))  # in 100.64.3.232/30: rule 250 + 8
    assert hit.refs == ("OUTPUT:1", "ISTIO_OUTPUT:259")
    miss = traverse(ruleset, "nat", "OUTPUT", _packet("10.1.2.3"))
    assert miss.refs == ("OUTPUT:1", "ISTIO_OUTPUT:1009", "ISTIO_REDIRECT:1")


def test_a_walk_that_comes_back_into_a_run_finds_the_next_match() -> None:
    # The same networks twice in one run, each jumping to a chain that returns: the walk comes back
    # into the middle of the run, and the second copy counts too.
    nets = [f"10.0.{i}.0/24" for i in range(MIN_RUN)]
    rules = [f"-A MAIN -d {net} -j SUB" for net in [*nets, "10.9.0.0/16", *nets]]
    text = "\n".join(
        [
            "*nat",
            ":PREROUTING ACCEPT [0:0]",
            ":INPUT ACCEPT [0:0]",
            ":OUTPUT ACCEPT [0:0]",
            ":POSTROUTING ACCEPT [0:0]",
            ":MAIN - [0:0]",
            ":SUB - [0:0]",
            "-A OUTPUT -j MAIN",
            *rules,
            "-A SUB -j RETURN",
            "COMMIT",
            "",
        ]
    )
    ruleset = parse_ruleset(text)
    assert len({id(run) for run in chain_runs(ruleset.tables["nat"].chains["MAIN"])}) == 1
    trace = traverse(ruleset, "nat", "OUTPUT", _packet("10.0.3.7"))
    assert trace.refs == ("OUTPUT:1", "MAIN:4", "SUB:1", "MAIN:13", "SUB:1")
    assert trace == traverse(ruleset, "nat", "OUTPUT", _packet("10.0.3.7"), indexed=False)


def test_short_runs_and_mixed_rules_are_not_indexed() -> None:
    ruleset = parse_ruleset((REPO / "tests/data/default.v4.iptables-save").read_text())
    for chain in ruleset.tables["nat"].chains.values():
        assert find_runs(chain.rules) == ()


# --- rules read in blocks (runs of one shape read together, in C) ----------------------------------


def _counted(text: str) -> str:
    """The table as `iptables-save -c` prints it: every rule with [packets:bytes]."""
    return (
        "\n".join(
            f"[{i}:{i * 60}] {line}" if line.startswith("-A ") else line for i, line in enumerate(text.splitlines())
        )
        + "\n"
    )


@settings(max_examples=200, deadline=None)
@given(tables(), st.booleans(), st.integers(0, 80))
def test_rules_read_in_blocks_equal_rules_read_one_by_one(text: str, counted: bool, padding: int) -> None:
    # Padding with comments moves the table past the size where blocks are used.
    lines = text.splitlines()
    text = "\n".join(["# padding"] * padding + (_counted(text) if counted else text).splitlines()) + "\n"
    source = text.splitlines()
    ruleset = parse_ruleset(text, Family.IPV4)
    chain_names = set(ruleset.tables["nat"].chains)
    assert len(ruleset.tables["nat"].rules()) == sum(1 for line in lines if line.startswith("-A "))
    for chain in ruleset.tables["nat"].chains.values():
        for position, rule in enumerate(chain.rules, start=1):
            raw = source[rule.line - 1]
            assert rule.position == position and f"-A {chain.name} " in raw
            words = raw.split()
            counters = None
            if counted:
                packets, _, octets = words[0].strip("[]").partition(":")
                counters = Counters(int(packets), int(octets))
                words = words[1:]
            assert rule.spec == " ".join(words[2:])
            alone = parse_rule("nat", chain.name, position, rule.line, raw, counters, words[2:], chain_names)
            assert rule == alone
            for cond in (rule.source, rule.destination):
                if cond is not None:
                    assert cond.networks == parse_networks(cond.value)


cidr_values = st.one_of(
    st.builds(lambda a, n: f"{ipaddress.IPv4Address(a)}/{n}", st.integers(0, 2**32 - 1), st.integers(0, 32)),
    st.text(alphabet="0123456789./:af", max_size=18),
)


one_length = st.integers(0, 32).flatmap(
    lambda n: st.lists(
        st.one_of(
            st.integers(0, 2**32 - 1).map(lambda a: f"{ipaddress.IPv4Address(a)}/{n}"),  # the usual run
            cidr_values,  # and now and then another value
        ),
        max_size=12,
    )
)


@given(st.one_of(st.lists(cidr_values, max_size=12), one_length))
def test_bulk_networks_read_as_parse_networks_reads_them(values: list[str]) -> None:
    bulk = bulk_networks(values)
    if bulk is None:  # some value is not a.b.c.d/N: each is then read alone
        assert not all(
            v.count("/") == 1
            and _read(v) is not None
            and ":" not in v
            and _reference(v)
            and v.split("/")[1].isdigit()
            and len(v.split("/")[0].split(".")) == 4
            and all(p.isdigit() and str(int(p)) == p for p in v.split("/")[0].split("."))
            for v in values
        )
    else:
        assert bulk == [parse_networks(v) for v in values]


def test_a_table_of_excluded_cidrs_is_read_in_blocks_and_indexed() -> None:
    ruleset = parse_ruleset(_synthetic(5000))
    chain = ruleset.tables["nat"].chains["ISTIO_OUTPUT"]
    assert len(chain.rules) == 5000 + 9
    # ISTIO_OUTPUT:4008 is the 4000th excluded CIDR (after the 8 rules up to -d 127.0.0.1/32)
    network = ipaddress.IPv4Address("100.64.0.0") + 4 * 3999
    rule = chain.rules[4007]
    assert (rule.ref, rule.spec) == ("ISTIO_OUTPUT:4008", f"-d {network}/30 -j RETURN")
    assert rule.destination is not None and rule.destination.networks == ((4, 30, int(network)),)
    lines = _synthetic(5000).splitlines()
    assert lines[rule.line - 1] == f"-A ISTIO_OUTPUT -d {network}/30 -j RETURN"


def test_shadow_analysis_skips_a_large_table_on_a_bound_no_larger_than_the_count() -> None:
    from podnat.netfilter.reachability import MAX_PACKETS, _PacketSpace, shadowed_rules

    ruleset = parse_ruleset(_synthetic(3000))
    found = shadowed_rules(ruleset)
    assert any("nat OUTPUT: at least" in s and f"over {MAX_PACKETS}" in s for s in found.skipped), found.skipped
    tab = ruleset.tables["nat"]
    chains = [tab.chains[name] for name in ("OUTPUT", "ISTIO_OUTPUT", "ISTIO_REDIRECT", "ISTIO_IN_REDIRECT")]
    bounded = _PacketSpace(chains, "OUTPUT", Family.IPV4)
    counted = _PacketSpace(chains, "OUTPUT", Family.IPV4, bound=False)
    assert not bounded.exact and counted.exact
    assert MAX_PACKETS < bounded.size <= counted.size
    # the default table is small: counted exactly, analysed, nothing skipped
    assert shadowed_rules(parse_ruleset((REPO / "tests/data/default.v4.iptables-save").read_text())).skipped == ()


def test_runs_of_one_shape_are_found_in_the_text() -> None:
    from podnat.netfilter._bulk import text_lines

    def blocks(text: str) -> list[tuple[int, str, int]]:
        return [(n, b.chain, len(b.raws)) for n, _, b in text_lines(text, False) if b is not None]

    text = _synthetic(100)
    start = text.splitlines().index("-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN") + 1
    # -d 127.0.0.1/32 -j RETURN and the 100 excluded CIDRs: one shape, with or without counters
    assert blocks(text) == [(start, "ISTIO_OUTPUT", 101)]
    assert blocks(_counted(text)) == [(start, "ISTIO_OUTPUT", 101)]
    # every line where str.splitlines has it, blocks or not
    numbered = [(n + i, line) for n, raw, b in text_lines(text, False) for i, line in enumerate(b.raws if b else [raw])]
    assert numbered == list(enumerate(text.splitlines(), start=1))
    # two addresses in a line, or quoting: line by line
    two = text.replace("-A ISTIO_OUTPUT -d 100.", "-A ISTIO_OUTPUT -s 10.0.0.0/8 -d 100.")
    assert blocks(two) == []
    quoted = text.replace(" -j RETURN\n", ' -m comment --comment "x" -j RETURN\n')
    assert blocks(quoted) == []


def test_the_parser_hands_its_blocks_to_the_run_index(monkeypatch: pytest.MonkeyPatch) -> None:
    handed: list[Any] = []

    def find(rules: tuple[Rule, ...], min_run: int = MIN_RUN, blocks: Any = ()) -> Any:
        handed.append(blocks)
        return find_runs(rules, min_run, blocks)

    monkeypatch.setattr(run_index, "find_runs", find)
    ruleset = parse_ruleset(_synthetic(1000))
    chain = ruleset.tables["nat"].chains["ISTIO_OUTPUT"]
    assert chain_runs(chain) == find_runs(chain.rules)  # the same runs as grouping every rule
    assert chain_runs(chain) is chain_runs(chain)  # built once, kept beside the chain
    assert [(start, stop, field) for start, stop, field, _ in handed[0]] == [(7, 1008, "destination")]
    ((_, _, _, (lengths, networks)),) = handed[0]  # and the networks as it read them, for the index
    assert lengths == [32] + [30] * 1000 and networks[:2] == [0x7F000001, 0x64400000]
    run = chain_runs(chain)[7]
    assert run is not None and {(t.shift, len(t.first)) for t in run.tables} == {(0, 1), (2, 1000)}
    negated = parse_ruleset(_synthetic(1000).replace("-A ISTIO_OUTPUT -d 100.", "-A ISTIO_OUTPUT ! -d 100."))
    chain_runs(negated.tables["nat"].chains["ISTIO_OUTPUT"])
    assert handed[1] == ()  # a negated address is not looked up


def test_an_index_goes_with_its_chain() -> None:
    ruleset = parse_ruleset(_synthetic(1000))
    key = id(ruleset.tables["nat"].chains["ISTIO_OUTPUT"])
    chain_runs(ruleset.tables["nat"].chains["ISTIO_OUTPUT"])
    assert key in run_index._INDEXES
    del ruleset
    assert key not in run_index._INDEXES and key not in run_index._BLOCKS


# --- spans: whole-table questions asked of one rule per run ---------------------------------------

_ALIKE = ("table", "chain", "protocol", "in_iface", "out_iface", "fragment", "matches", "target")


@settings(max_examples=200, deadline=None)
@given(tables(), st.integers(0, 80), st.booleans())
def test_spans_cover_the_rules_and_their_rules_differ_only_by_address(text: str, padding: int, indexed: bool) -> None:
    text = "\n".join(["# padding"] * padding + text.splitlines()) + "\n"
    for chain in parse_ruleset(text, Family.IPV4).tables["nat"].chains.values():
        if indexed:
            chain_runs(chain)  # (the spans are the same once the chain's index is built)
        ranges = list(spans(chain))
        assert [i for start, stop in ranges for i in range(start, stop)] == list(range(len(chain.rules)))
        for start, stop in ranges:
            first = chain.rules[start]
            for rule in chain.rules[start + 1 : stop]:
                assert all(getattr(rule, name) == getattr(first, name) for name in _ALIKE)
                assert (rule.source is None) == (first.source is None)
                assert (rule.destination is None) == (first.destination is None)
        assert list(representatives(chain)) == [chain.rules[start] for start, _ in ranges]


def test_a_pods_excluded_cidrs_are_one_span() -> None:
    chain = parse_ruleset(_synthetic(1000)).tables["nat"].chains["ISTIO_OUTPUT"]
    assert (7, 1008) in list(spans(chain))  # `-d 127.0.0.1/32 -j RETURN` and the 1,000 CIDRs after it
    assert len(list(representatives(chain))) == len(chain.rules) - 1000


def test_whole_table_questions_give_the_same_answers_when_asked_of_one_rule_per_span() -> None:
    from podnat.istio.explain import captured_nameservers
    from podnat.istio.paths import tproxy_mark

    saved = REPO / "tests/data/istio/kernel-save/iptables"
    dns = (saved / "dns-uid-gid.v4.iptables-save").read_text()
    resolvers = [f"10.{i // 256}.{i % 256}.53" for i in range(300)]
    redirects = "".join(
        f"-A ISTIO_OUTPUT_DNS -d {r}/32 -p tcp -m tcp --dport 53 -j REDIRECT --to-ports 15053\n" for r in resolvers
    )
    first = "-A ISTIO_OUTPUT_DNS -d 127.0.0.53/32 -p tcp -m tcp --dport 53 -j REDIRECT --to-ports 15053\n"
    ruleset = parse_ruleset(dns.replace(first, first + redirects))
    chain = ruleset.tables["nat"].chains["ISTIO_OUTPUT_DNS"]
    assert any(stop - start > 300 for start, stop in spans(chain))  # read as one run
    assert captured_nameservers(ruleset) == ("127.0.0.53", *resolvers)
    tproxy = (saved / "tproxy.v4.iptables-save").read_text()
    inbound = "-A ISTIO_INBOUND -p tcp -j ISTIO_TPROXY\n"
    returns = "".join(f"-A ISTIO_INBOUND -d 10.1.{i // 256}.{i % 256}/32 -j RETURN\n" for i in range(300))
    assert tproxy_mark(parse_ruleset(tproxy.replace(inbound, returns + inbound))) == 0x539


def _masked(length: int, address: int) -> int:
    return address >> (32 - length) << (32 - length)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 32), st.sampled_from([0x0A000000, 0x0A000001, 0x7F000001])), max_size=9),
    st.integers(0, 32),
    st.lists(st.integers(0, 2**32 - 1) | st.sampled_from([0x0A000000, 0x0A000001]), min_size=1, max_size=40),
    st.integers(0, 20),
)
def test_an_index_from_the_readers_networks_equals_the_index_from_the_rules(
    head: list[tuple[int, int]], length: int, tail: list[int], start: int
) -> None:
    prefixes = [n for n, _ in head] + [length] * len(tail)
    nets = [_masked(n, a) for n, a in head] + [_masked(length, a) for a in tail]
    conds = [Cond(f"{ipaddress.IPv4Address(a)}/{n}", False, ((4, n, a),)) for n, a in zip(prefixes, nets, strict=True)]
    fast = run_index._from_networks((prefixes, nets), start, "destination")
    if fast is not None:
        assert fast == run_index._build(conds, start, "destination")
    else:  # a network listed twice, or other lengths than the last one's but after it or more than 8
        few = sum(n != length for n in prefixes)
        twice = len(set(zip(prefixes, nets, strict=True))) < len(nets)
        assert twice or few > 8 or any(n == length for n in prefixes[:few])
