"""Native nftables: every golden parses as a script and as its live listing (text and JSON), and the
nftables form of a configuration takes the same paths as its iptables form (docs/istio-capture.md: identical on a
real kernel). The live dumps in tests/data/nft come from tests/data/nft/regenerate.sh."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest
from conftest import REFERENCE

from podnat.istio.explain import captured_nameserver, explain
from podnat.istio.flows import FlowType, Identity, PodContext, context_for
from podnat.istio.paths import FlowTrace, Outcome
from podnat.netfilter.addresses import address_cond
from podnat.netfilter.model import Cond, Family, Match, Option, Target
from podnat.netfilter.nft import detect_and_parse, looks_like_nft, parse_nft
from podnat.netfilter.packet import Packet
from podnat.netfilter.parse import ParseError, parse_ruleset
from podnat.netfilter.traverse import VerdictKind, traverse

DATA = Path(__file__).resolve().parent.parent / "data"
LIVE = DATA / "nft"
GOLDENS = REFERENCE / "goldens" / "nftables"
KERNEL_SAVE = REFERENCE / "kernel-save" / "iptables"
SCRIPTS = sorted(GOLDENS.rglob("*.golden"))
DUMPS = sorted(LIVE.rglob("*.nft-list-ruleset"))


def name_of(path: Path, root: Path) -> str:
    return str(path.relative_to(root)).split(".")[0]


def test_corpus_is_there():
    assert len(SCRIPTS) >= 40 and len(DUMPS) >= 35
    # every golden the kernel accepted has a live dump; the others left nft's error
    for script in SCRIPTS:
        name = name_of(script, GOLDENS)
        assert (LIVE / f"{name}.nft-list-ruleset").exists() or (LIVE / f"{name}.FAILED.txt").exists(), name


def shape(ruleset):
    return {(t, c): len(chain.rules) for t, table in ruleset.tables.items() for c, chain in table.chains.items()}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: name_of(p, GOLDENS))
@pytest.mark.parametrize("family", list(Family), ids=lambda f: f.value)
def test_every_golden_parses_as_script_and_live(script, family):
    ruleset = parse_nft(script.read_text(), family)
    assert ruleset.generator == "nft -f script" and ruleset.tables
    adds = len(re.findall(r"(?m)^(?:add|insert) rule ", script.read_text()))
    assert sum(shape(ruleset).values()) == adds
    for base in ruleset.declared_base_chains:
        chain = ruleset.tables[base.table].chains[base.chain]
        assert chain.policy == "ACCEPT" and base.hook == base.hook.upper()
    dump = LIVE / f"{name_of(script, GOLDENS)}.nft-list-ruleset"
    if not dump.exists():
        return  # names a group or set the loading host lacks (the .FAILED.txt beside it)
    for form in (dump, dump.with_name(dump.name + ".json")):
        live = parse_nft(form.read_text(), family)
        assert shape(live) == shape(ruleset), form.name
        assert live.declared_base_chains == ruleset.declared_base_chains
        assert live.counters


def comparable(ruleset):
    return [
        (r.ref, r.spec, r.protocol, r.source, r.destination, r.in_iface, r.out_iface, r.matches, r.target, r.counters)
        for table in ruleset.tables.values()
        for r in table.rules()
    ]


@pytest.mark.parametrize("dump", DUMPS, ids=lambda p: name_of(p, LIVE))
@pytest.mark.parametrize("family", list(Family), ids=lambda f: f.value)
def test_json_and_text_listings_are_the_same_rules(dump, family):
    text = parse_nft(dump.read_text(), family)
    data = parse_nft(dump.with_name(dump.name + ".json").read_text(), family)
    assert comparable(data) == comparable(text)
    # nothing in Istio's corpus is left unmodelled
    unknown = [r.ref for t in text.tables.values() for r in t.rules() for m in r.matches if m.module.startswith("nft ")]
    assert unknown == []


def legs(trace: FlowTrace):
    return (
        [(leg.actor, leg.to, leg.verdict) for leg in trace.legs],
        trace.envoy_ports,
        trace.outcome,
        trace.delivered_to,
    )


PAIRS = [
    (dump, KERNEL_SAVE / f"{name_of(dump, LIVE)}.{tag}.iptables-save", family)
    for dump in DUMPS
    for tag, family in (("v4", Family.IPV4), ("v6", Family.IPV6))
    if (KERNEL_SAVE / f"{name_of(dump, LIVE)}.{tag}.iptables-save").exists()
]


@pytest.mark.parametrize(("dump", "saved", "family"), PAIRS, ids=lambda v: getattr(v, "name", str(v)))
def test_iptables_and_nftables_forms_take_the_same_paths(dump, saved, family):
    ctx = context_for(family=family.value)
    contexts = [ctx]
    if "tproxy" in dump.name:  # as Istio runs a TPROXY sidecar: uid 0, gid 1337, transparent inbound
        contexts.append(context_for(family=family.value, proxy=Identity(0, 1337)).replace(transparent_inbound=True))
    iptables = parse_ruleset(saved.read_text())
    # explain() takes the resolver from the first rule redirecting to 15053; in an inet table that can
    # be an `ip daddr` rule the IPv6 view never matches, so both forms get the iptables form's flows.
    nameserver = captured_nameserver(iptables)
    contexts = [c.replace(nameserver=nameserver) for c in contexts]
    for form in (dump, dump.with_name(dump.name + ".json")):
        nftables = parse_nft(form.read_text(), family)
        for context in contexts:
            want = explain(iptables, context).flows
            got = explain(nftables, context, flows=tuple(f.spec for f in want)).flows
            assert [legs(f.live) for f in got] == [legs(f.live) for f in want]


# docs/istio-capture.md's kernel measurement, in nftables refs: the injected default (tests/data/nft/default.nft).
NAT = "istio-proxy-nat"
DEFAULT_PATHS = {
    (FlowType.REMOTE_TO_LOCAL, None): (
        (f"{NAT}/prerouting:1", f"{NAT}/istio-inbound:5", f"{NAT}/istio-in-redirect:1"),
        (f"{NAT}/output:1", f"{NAT}/istio-output:1"),
    ),
    (FlowType.LOCAL_TO_REMOTE, None): (
        (f"{NAT}/output:1", f"{NAT}/istio-output:9", f"{NAT}/istio-redirect:1"),
        (f"{NAT}/output:1", f"{NAT}/istio-output:4"),
    ),
    (FlowType.PROMETHEUS_TO_LOCAL, None): (
        (f"{NAT}/prerouting:1", f"{NAT}/istio-inbound:2"),
        (f"{NAT}/output:1", f"{NAT}/istio-output:4"),
    ),
    (FlowType.LOCAL_TO_LOCAL, None): (
        (f"{NAT}/output:1", f"{NAT}/istio-output:9", f"{NAT}/istio-redirect:1"),
        (f"{NAT}/output:1", f"{NAT}/istio-output:2", f"{NAT}/istio-in-redirect:1"),
        (f"{NAT}/output:1", f"{NAT}/istio-output:1"),
    ),
    (FlowType.LOCAL_TO_LOCAL, "own-pod-ip"): ((f"{NAT}/output:1", f"{NAT}/istio-output:3"),),
    (FlowType.ENVOY_LOCALHOST, None): ((f"{NAT}/output:1", f"{NAT}/istio-output:4"),),
    (FlowType.SIDECAR_TO_ISTIOD, None): ((f"{NAT}/output:1", f"{NAT}/istio-output:4"),),
}


@pytest.mark.parametrize("form", ["default.nft", "default.nft-list-ruleset", "default.nft-list-ruleset.json"])
def test_injected_default_matches_iptables_and_the_kernel(form):
    nftables = parse_nft((LIVE / form).read_text(), Family.IPV4)
    iptables = parse_ruleset((DATA / "default.v4.iptables-save").read_text())
    got = explain(nftables, PodContext())
    want = explain(iptables, PodContext())
    assert [legs(f.live) for f in got.flows] == [legs(f.live) for f in want.flows]
    paths = {(f.spec.type, f.spec.variant): tuple(leg.rules for leg in f.live.legs) for f in got.flows}
    assert paths == DEFAULT_PATHS
    assert all(f.live.outcome is Outcome.DELIVERED for f in got.flows)
    assert got.findings == ()
    rule = nftables.rule_by_ref(f"{NAT}/istio-output:9")
    assert rule is not None and rule.spec.endswith("jump istio-redirect")


def test_counters_handles_and_comments_in_the_listing():
    text = (LIVE / "default.nft-list-ruleset").read_text()
    text = text.replace(
        "meta skuid 1337 counter packets 0 bytes 0 return",
        'meta skuid 1337 counter packets 7 bytes 420 return comment "proxy" # handle 12',
    )
    ruleset = parse_nft(text, Family.IPV4)
    rule = ruleset.rule(NAT, "istio-output", 4)
    assert rule is not None and rule.counters is not None and rule.counters.packets == 7
    assert rule.spec == 'meta skuid 1337 counter return comment "proxy"'
    assert rule.target == Target("RETURN")
    lines = text.splitlines()
    assert rule.line == lines.index(next(line for line in lines if "packets 7" in line)) + 1


def test_base_chains_priorities_and_policies():
    text = """table inet t {
	chain pre { type filter hook prerouting priority mangle - 5; policy drop; }
	chain out {
		type nat hook output priority dstnat; policy accept;
	}
	chain post {
		type nat hook postrouting priority srcnat + 10; policy accept;
	}
	chain helper {
	}
}
"""
    ruleset = parse_nft(text, Family.IPV4)
    assert [(b.chain, b.hook, b.priority, b.kind) for b in ruleset.declared_base_chains] == [
        ("pre", "PREROUTING", -155, "filter"),
        ("out", "OUTPUT", -100, "nat"),
        ("post", "POSTROUTING", 110, "nat"),
    ]
    chains = ruleset.tables["t"].chains
    assert (chains["pre"].policy, chains["out"].policy, chains["helper"].policy) == ("DROP", "ACCEPT", None)
    packet = Packet("tcp", ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("10.0.0.2"), 1, 2, in_iface="eth0")
    assert traverse(ruleset, "t", "PREROUTING", packet, start="pre").verdict.kind is VerdictKind.DROP


def test_an_ip_rule_never_matches_an_ipv6_packet_even_negated():
    ruleset = parse_nft((LIVE / "default.nft-list-ruleset").read_text(), Family.IPV6)
    rule = ruleset.rule(NAT, "istio-output", 2)  # oifname "lo" ip daddr != 127.0.0.1 ... skuid 1337 jump
    assert rule is not None and rule.destination == address_cond("::/0", negated=True)
    proxy_to_own_ip = Packet(
        "tcp",
        ipaddress.ip_address("fd00::2"),
        ipaddress.ip_address("fd00::2"),
        50000,
        9080,
        out_iface="lo",
        uid=1337,
        gid=1337,
    )
    trace = traverse(ruleset, NAT, "OUTPUT", proxy_to_own_ip, start="output")
    assert trace.refs == (f"{NAT}/output:1", f"{NAT}/istio-output:4")  # skuid 1337 return, not rule 2


def rules_of(body: str, family: Family = Family.IPV4):
    text = (
        f"table inet t {{\n\tchain output {{\n\t\ttype nat hook output priority -100; policy accept;\n"
        f"{body}\n\t}}\n\tchain x {{\n\t}}\n}}\n"
    )
    return parse_nft(text, family).tables["t"].chains["output"].rules


def test_translations():
    rules = rules_of("""
		ip daddr { 10.0.0.0/8, 192.168.1.1 } udp dport 1000-2000 jump x
		tcp sport != { 1, 3-4 } meta mark & 0xff != 0x1 goto x
		oifname "eth*" ct state { new, untracked } dnat ip to 10.1.1.1:8080
		meta l4proto tcp ct mark set meta mark & 0x0000ffff
		ct mark set ct mark & 0xfffff000 | 0x00000111
		meta mark set ct mark
		skgid 10-20 masquerade to :3000-3010
		ip saddr 10.0.0.1-10.0.0.3 ct zone set 2""")
    assert (rules[0].destination, rules[0].source) == (address_cond("10.0.0.0/8,192.168.1.1/32"), None)
    assert rules[0].matches == (Match("udp", (Option("dport", ("1000:2000",)),)),)
    assert rules[0].target == Target("x")
    assert rules[1].protocol == Cond("tcp")
    assert rules[1].matches == (
        Match("multiport", (Option("sports", ("1,3:4",), True),)),
        Match("mark", (Option("mark", ("0x1/0xff",), True),)),
    )
    assert rules[1].target == Target("x", goto=True)
    assert rules[2].out_iface == Cond("eth+")
    assert rules[2].matches == (Match("conntrack", (Option("ctstate", ("NEW,UNTRACKED",)),)),)
    assert rules[2].target == Target("DNAT", (Option("to-destination", ("10.1.1.1:8080",)),))
    assert rules[3].target == Target(
        "CONNMARK", (Option("save-mark", ()), Option("nfmask", ("0xffff",)), Option("ctmask", ("0xffffffff",)))
    )
    assert rules[4].target == Target("CONNMARK", (Option("set-xmark", ("0x111/0xfff",)),))
    assert rules[5].target is not None and rules[5].target.get("restore-mark") is not None
    assert rules[6].matches == (Match("owner", (Option("gid-owner", ("10-20",)),)),)
    assert rules[6].target == Target("MASQUERADE", (Option("to-ports", ("3000-3010",)),))
    assert rules[7].source == address_cond("10.0.0.1/32,10.0.0.2/31")
    assert rules[7].target == Target("CT", (Option("zone", ("2",)),))


def undecided(body: str) -> FlowTrace:
    text = f"""table inet t {{
	chain output {{
		type nat hook output priority -100; policy accept;
{body}
	}}
}}
"""
    flows = explain(parse_nft(text, Family.IPV4), PodContext()).flows
    return next(f.live for f in flows if f.spec.type is FlowType.LOCAL_TO_REMOTE)


@pytest.mark.parametrize(
    "body",
    [
        '\t\tmeta hour "12:00"-"13:00" counter packets 0 bytes 0 accept',
        "\t\ttcp dport ssh counter packets 0 bytes 0 redirect to :15001",
        "\t\tip daddr @blocked counter packets 0 bytes 0 drop",
        "\t\tmeta mark set 0x1 accept",
        "\t\ttproxy ip to :15006",
        "\t\tmeta skuid { 1000, 1001 } accept",
    ],
)
def test_what_podnat_does_not_model_is_undecided_naming_the_rule(body):
    trace = undecided(body)
    assert trace.outcome is Outcome.UNDECIDED
    assert "t/output:1" in trace.reason


def test_named_groups_are_undecided_not_guessed():
    ruleset = parse_nft((GOLDENS / "outbound-owner-groups.golden").read_text(), Family.IPV4)
    flows = explain(ruleset, PodContext()).flows
    app = next(f.live for f in flows if f.spec.type is FlowType.LOCAL_TO_REMOTE)
    assert app.outcome is Outcome.UNDECIDED and "java" in app.reason


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("hello world\n", 1, "not nftables"),
        ("table inet t {\n\tchain c {\n\t\ttcp dport 1 accept\n", 3, "not closed"),
        ("table inet t {\n\tchain c {\n\t\tjump nowhere\n\t}\n}\n", 3, "not declared"),
        ("table inet t {\n\tchain c {\n\t\ttcp dport\n\t}\n}\n", 3, "needs a value"),
        ("table inet t {\n\tchain c {\n\t\ttype nat hook sideways priority 0;\n\t}\n}\n", 3, "hook"),
        ("table inet t {\n\tchain c {\n\t\tip daddr fd00::1 accept\n\t}\n}\n", 3, "IPv6 address"),
        ("add table inet t\nadd rule inet t c accept\n", 2, "chain c is not declared"),
        ("add table inet t\nadd chain inet t c\ninsert rule inet t c index 3 accept\n", 3, "out of range"),
        ('{"nftables": [\n {"table": {"family": "inet", "name": "t"}},\n {"chain": \n', 4, "invalid JSON"),
        ('{"nftables": [{"rule": {"family": "inet", "table": "t", "chain": "c", "expr": []}}]}', 1, "table inet t"),
    ],
)
def test_bad_input_is_a_parse_error_with_a_line(text, line, message):
    with pytest.raises(ParseError) as info:
        parse_nft(text, Family.IPV4)
    assert info.value.line == line
    assert message in str(info.value)


def test_detect_and_parse_reads_every_form():
    iptables = (DATA / "default.v4.iptables-save").read_text()
    assert not looks_like_nft(iptables)
    assert detect_and_parse(iptables).tables.keys() == {"nat"}
    for form, generator in (
        ("default.nft", "nft -f script"),
        ("default.nft-list-ruleset", "nft list ruleset"),
        ("default.nft-list-ruleset.json", "nft -j list ruleset"),
    ):
        ruleset = detect_and_parse((LIVE / form).read_text())
        assert ruleset.family is Family.IPV4 and ruleset.generator is not None
        assert ruleset.generator.startswith(generator) and NAT in ruleset.tables
    v6_only = "table ip6 t {\n\tchain output {\n\t\ttype filter hook output priority 0; policy accept;\n\t}\n}\n"
    assert detect_and_parse(v6_only).family is Family.IPV6
    assert detect_and_parse((LIVE / "default.nft").read_text(), Family.IPV6).family is Family.IPV6


def test_iptables_nft_tables_next_to_native_ones_are_reported():
    text = (
        "# Warning: table ip nat is managed by iptables-nft, do not touch!\ntable ip nat {\n"
        "\tchain OUTPUT {\n\t\ttype nat hook output priority -100; policy accept;\n"
        "\t\tmeta l4proto tcp counter packets 0 bytes 0 redirect to :15001\n\t}\n}\n"
    )
    ruleset = parse_nft(text + (LIVE / "default.nft-list-ruleset").read_text(), Family.IPV4)
    assert set(ruleset.tables) == {"nat", NAT}
    assert ruleset.rule("nat", "OUTPUT", 1) is not None and ruleset.rule("nat", "OUTPUT", 1).ref == "OUTPUT:1"
    assert any("iptables-nft" in w and "both" in w for w in ruleset.warnings)
    # both run: the iptables-nft OUTPUT chain (same priority, listed first) redirects before Istio's
    flows = explain(ruleset, PodContext()).flows
    envoy = next(f.live for f in flows if f.spec.type is FlowType.ENVOY_LOCALHOST)
    assert envoy.legs[0].rules[0] == "OUTPUT:1"


def test_a_rule_podnat_cannot_decide_is_never_called_shadowed() -> None:
    from podnat.netfilter.reachability import shadowed_rules

    text = (
        "table inet istio-proxy-nat {\n chain output {\n  type nat hook output priority -100; policy accept;\n"
        "  meta skuid 1337 countr return\n }\n}\n"
    )
    ruleset = parse_nft(text, Family.IPV4)
    assert shadowed_rules(ruleset).shadowed == ()
