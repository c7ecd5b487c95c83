"""The six flows through the injected default table equal what a real kernel counted (docs/istio-capture.md)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from podnat.envoy.listeners import istio_default_listeners
from podnat.istio.flows import Actor, Endpoint, FlowSpec, FlowType, Identity, PodContext, service_context, six_flows
from podnat.istio.paths import Outcome, trace_flow
from podnat.netfilter.parse import parse_ruleset

DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture(scope="module")
def default():
    return parse_ruleset((DATA / "default.v4.iptables-save").read_text())


def flows_by_name(ruleset, ctx=None, listeners=None):
    ctx = service_context(ctx or PodContext())
    return {(s.type, s.variant): trace_flow(ruleset, s, ctx, listeners) for s in six_flows(ctx)}


# docs/istio-capture.md, "Measured on a real kernel with a real Envoy": rules counted per leg and Envoy ports.
KERNEL = {
    (FlowType.REMOTE_TO_LOCAL, None): (
        (("PREROUTING:1", "ISTIO_INBOUND:5", "ISTIO_IN_REDIRECT:1"), ("OUTPUT:1", "ISTIO_OUTPUT:1")),
        (15006,),
        "10.99.0.2:9080",
    ),
    (FlowType.LOCAL_TO_REMOTE, None): (
        (("OUTPUT:1", "ISTIO_OUTPUT:9", "ISTIO_REDIRECT:1"), ("OUTPUT:1", "ISTIO_OUTPUT:4")),
        (15001,),
        "10.99.0.1:9080",
    ),
    (FlowType.PROMETHEUS_TO_LOCAL, None): (
        (("PREROUTING:1", "ISTIO_INBOUND:2"), ("OUTPUT:1", "ISTIO_OUTPUT:4")),
        (15090,),
        "127.0.0.1:15000",
    ),
    (FlowType.LOCAL_TO_LOCAL, None): (
        (
            ("OUTPUT:1", "ISTIO_OUTPUT:9", "ISTIO_REDIRECT:1"),
            ("OUTPUT:1", "ISTIO_OUTPUT:2", "ISTIO_IN_REDIRECT:1"),
            ("OUTPUT:1", "ISTIO_OUTPUT:1"),
        ),
        (15001, 15006),
        "10.99.0.2:9080",
    ),
    (FlowType.LOCAL_TO_LOCAL, "own-pod-ip"): ((("OUTPUT:1", "ISTIO_OUTPUT:3"),), (), "10.99.0.2:9080"),
    (FlowType.ENVOY_LOCALHOST, None): ((("OUTPUT:1", "ISTIO_OUTPUT:4"),), (), "127.0.0.1:15000"),
    (FlowType.SIDECAR_TO_ISTIOD, None): ((("OUTPUT:1", "ISTIO_OUTPUT:4"),), (), "10.96.0.10:15012"),
}


@pytest.mark.parametrize("key", list(KERNEL), ids=lambda k: f"type{int(k[0])}{'-' + k[1] if k[1] else ''}")
def test_default_table_matches_the_kernel(default, key):
    legs, ports, delivered = KERNEL[key]
    trace = flows_by_name(default)[key]
    assert tuple(leg.rules for leg in trace.legs) == legs
    assert trace.envoy_ports == ports
    assert trace.outcome is Outcome.DELIVERED
    assert str(trace.delivered_to) == delivered


def test_redirect_targets_follow_the_hook(default):
    trace = flows_by_name(default)[(FlowType.LOCAL_TO_LOCAL, None)]
    assert [str(leg.to) if leg.to else None for leg in trace.legs] == ["127.0.0.1:15001", "127.0.0.1:15006", None]
    inbound = flows_by_name(default)[(FlowType.REMOTE_TO_LOCAL, None)]
    assert str(inbound.legs[0].to) == "10.99.0.2:15006"
    assert str(inbound.legs[1].src) == "127.0.0.6"


def test_uid_1000_with_gid_1337_hits_rule_7(default):
    spec = FlowSpec(
        FlowType.LOCAL_TO_REMOTE,
        "x",
        Actor.APP,
        Endpoint(ipaddress.ip_address("10.99.0.1"), 9080),
        identity=Identity(1000, 1337),
    )
    trace = trace_flow(default, spec, PodContext())
    assert trace.legs[0].rules == ("OUTPUT:1", "ISTIO_OUTPUT:7")
    assert trace.envoy_ports == ()


def test_wrong_proxy_uid_loops(default):
    ctx = PodContext(proxy=Identity(1338, 1338))
    trace = flows_by_name(default, ctx)[(FlowType.LOCAL_TO_REMOTE, None)]
    assert trace.outcome is Outcome.LOOP
    assert trace.envoy_ports == (15001,)
    assert trace.legs[1].rules == ("OUTPUT:1", "ISTIO_OUTPUT:9", "ISTIO_REDIRECT:1")


def test_redirect_to_a_port_without_listener_is_refused(default):
    listeners = tuple(listener for listener in istio_default_listeners() if listener.port != 15001)
    trace = flows_by_name(default, listeners=listeners)[(FlowType.LOCAL_TO_REMOTE, None)]
    assert trace.outcome is Outcome.REFUSED
    assert "ISTIO_REDIRECT:1 sent it to 127.0.0.1:15001" in trace.reason


def test_udp_falls_through_istio_redirect(default):
    spec = FlowSpec(
        FlowType.LOCAL_TO_REMOTE,
        "x",
        Actor.APP,
        Endpoint(ipaddress.ip_address("10.99.0.1"), 53),
        identity=Identity(1000, 1000),
        proto="udp",
    )
    trace = trace_flow(default, spec, PodContext())
    assert trace.legs[0].rules == ("OUTPUT:1", "ISTIO_OUTPUT:9")
    assert trace.outcome is Outcome.DELIVERED and str(trace.delivered_to) == "10.99.0.1:53"


def test_no_prerouting_jump_bypasses_inbound(default):
    text = (DATA / "default.v4.iptables-save").read_text().replace("-A PREROUTING -p tcp -j ISTIO_INBOUND\n", "")
    trace = flows_by_name(parse_ruleset(text))[(FlowType.REMOTE_TO_LOCAL, None)]
    assert trace.legs[0].rules == ()
    assert trace.envoy_ports == ()
    assert str(trace.delivered_to) == "10.99.0.2:9080"


def test_drop_is_dropped(default):
    text = (
        (DATA / "default.v4.iptables-save")
        .read_text()
        .replace("-A OUTPUT -j ISTIO_OUTPUT\n", "-A OUTPUT -d 10.99.0.1/32 -j DROP\n-A OUTPUT -j ISTIO_OUTPUT\n")
    )
    trace = flows_by_name(parse_ruleset(text))[(FlowType.LOCAL_TO_REMOTE, None)]
    assert trace.outcome is Outcome.DROPPED
    assert trace.legs[0].rules == ("OUTPUT:1",)


def test_unknown_match_is_undecided_and_named(default):
    text = (
        (DATA / "default.v4.iptables-save")
        .read_text()
        .replace(
            "-A OUTPUT -j ISTIO_OUTPUT\n",
            "-A OUTPUT -m set --match-set blocked dst -j RETURN\n-A OUTPUT -j ISTIO_OUTPUT\n",
        )
    )
    trace = flows_by_name(parse_ruleset(text))[(FlowType.LOCAL_TO_REMOTE, None)]
    assert trace.outcome is Outcome.UNDECIDED
    assert "OUTPUT:1" in trace.reason and "blocked" in trace.reason


def test_tproxy_paths_match_the_kernel_bench():
    """docs/istio-capture.md, TPROXY: inbound is diverted by mangle ISTIO_TPROXY to 15006; the app sees the client's
    address (ISTIO_OUTPUT #1 never counts); Envoy's legs over lo return at #3, its outbound legs at #7."""
    from conftest import REFERENCE

    text = (REFERENCE / "kernel-save/iptables/inbound-ports-wildcard-tproxy.v4.iptables-save").read_text()
    text = text.replace(
        "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN\n",
        "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN\n-A ISTIO_OUTPUT -j ISTIO_REDIRECT\n",
    )
    ctx = PodContext(proxy=Identity(0, 1337), transparent_inbound=True)
    flows = flows_by_name(parse_ruleset(text), ctx)
    inbound = flows[(FlowType.REMOTE_TO_LOCAL, None)]
    assert inbound.legs[0].rules == ("mangle/PREROUTING:1", "mangle/ISTIO_INBOUND:5", "mangle/ISTIO_TPROXY:1")
    assert inbound.legs[0].verdict == "TPROXY" and inbound.envoy_ports == (15006,)
    assert str(inbound.legs[1].src) == "10.99.0.1"
    assert "ISTIO_OUTPUT:3" in inbound.legs[1].rules and "ISTIO_OUTPUT:1" not in inbound.legs[1].rules
    assert inbound.outcome is Outcome.DELIVERED and str(inbound.delivered_to) == "10.99.0.2:9080"
    outbound = flows[(FlowType.LOCAL_TO_REMOTE, None)]
    assert outbound.legs[1].rules == ("OUTPUT:1", "ISTIO_OUTPUT:7")
    hairpin = flows[(FlowType.LOCAL_TO_LOCAL, None)]
    assert hairpin.envoy_ports == (15001, 15006)
    assert "mangle/OUTPUT:3" in hairpin.legs[1].rules and hairpin.legs[1].verdict == "TPROXY"


def test_dns_capture_adds_flow_7_to_pilot_agent():
    from conftest import REFERENCE

    from podnat.istio.explain import explain

    ruleset = parse_ruleset((REFERENCE / "kernel-save/iptables/dns-uid-gid.v4.iptables-save").read_text())
    expl = explain(ruleset, PodContext(proxy=Identity(3, 1)))
    dns = {f.spec.variant: f.live for f in expl.flows if f.spec.type is FlowType.DNS}
    assert set(dns) == {"udp", "tcp"}
    assert dns["udp"].legs[0].rules == (
        "raw/OUTPUT:1",
        "raw/ISTIO_OUTPUT_DNS:9",
        "OUTPUT:1",
        "ISTIO_OUTPUT:14",
        "ISTIO_OUTPUT_DNS:2",
        "raw/PREROUTING:1",
    )
    assert str(dns["udp"].delivered_to) == "127.0.0.1:15053" and dns["tcp"].legs[0].verdict == "REDIRECT"
    default = parse_ruleset((DATA / "default.v4.iptables-save").read_text())
    assert not [f for f in explain(default, PodContext()).flows if f.spec.type is FlowType.DNS]


def test_a_dual_stack_pods_ipv6_scrape_reaches_admin_over_ipv4():
    # Envoy's admin port is on 127.0.0.1 in a dual-stack pod (Istio's bootstrap): the Prometheus
    # listener's fetch is an IPv4 connection even for a scrape over IPv6, and counts in the IPv4 table
    # (the lab's dual-stack mode shows the kernel doing exactly that).
    from podnat.intent import expected_ruleset
    from podnat.netfilter.model import Family

    args = "-p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x '' -b '*' -d 15090,15021,15020 --dual-stack"
    v6 = expected_ruleset(Family.IPV6, args=args)
    assert v6 is not None
    # the IPv4 table with one more rule on top of ISTIO_OUTPUT, so that its positions tell the tables apart
    text = (DATA / "default.v4.iptables-save").read_text()
    first = next(line for line in text.splitlines() if line.startswith("-A ISTIO_OUTPUT "))
    v4 = parse_ruleset(text.replace(first, "-A ISTIO_OUTPUT -d 192.0.2.1/32 -j RETURN\n" + first, 1))
    pod = ipaddress.IPv6Address("fd00:99::2")
    ctx = PodContext(
        pod_ip=pod,
        remote=Endpoint(ipaddress.IPv6Address("fd00:99::1"), 9080),
        inbound_source=ipaddress.IPv6Address("::6"),
        admin=Endpoint(ipaddress.IPv4Address("127.0.0.1"), 15000),
    )
    scrape = FlowSpec(FlowType.PROMETHEUS_TO_LOCAL, "scrape", Actor.REMOTE, Endpoint(pod, 15090), ctx.remote.address)
    trace = trace_flow(v6, scrape, ctx, other=v4)
    assert trace.outcome is Outcome.DELIVERED and trace.envoy_ports == (15090,)
    fetch = trace.legs[1]
    assert (str(fetch.src), str(fetch.dst)) == ("127.0.0.1", "127.0.0.1:15000")
    assert fetch.rules == ("OUTPUT:1", "ISTIO_OUTPUT:5")
    owner = v4.rule_by_ref("ISTIO_OUTPUT:5")
    assert owner is not None and owner.text == "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN"


def test_a_table_that_sends_nothing_to_envoy_is_not_a_healthy_pod(default):
    """A nat table with no Istio capture (a published `iptables -t nat -S -v` of a host with one DNAT rule)
    must not read as a healthy sidecar: without an intent to compare with, every flow is "delivered"."""
    from podnat.istio.explain import Severity, explain

    bare = parse_ruleset(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [1:60]\n:POSTROUTING ACCEPT [1:60]\n"
        "[1:60] -A PREROUTING -d 172.30.5.206/32 -j DNAT --to-destination 172.21.0.25\nCOMMIT\n"
    )
    expl = explain(bare, PodContext())
    assert expl.uncaptured and expl.failed
    assert [f.severity for f in expl.findings] == [Severity.ERROR]
    assert expl.findings[0].message.startswith("nothing in this table sends the app's traffic to Envoy")
    healthy = explain(default, PodContext())
    assert not healthy.uncaptured and not healthy.failed
    # with an intent the difference is drift, said by the diff: no second finding
    assert not explain(bare, PodContext(), expected=default).uncaptured
