"""An ambient pod's flows: follow its connections through the in-pod rules and ztunnel's in-pod sockets. Pure.

ztunnel (podnat.istio.ambient) listens inside the pod's network namespace on 15001 (outbound), 15006
(plaintext inbound), 15008 (HBONE) and 15053 (DNS, on localhost), and marks every socket it opens there
0x539. Its connections, as podnat models them (ztunnel src/inpod/, src/proxy/):

- what reaches 15001: a connection to the original destination (or the endpoint it picks for a Service
  VIP), from the pod's IP, marked 0x539: ISTIO_OUTPUT does not capture it again;
- what reaches 15006 or 15008: a connection to the app (the original destination; for HBONE the tunnel's
  target, the pod's app port) from the client's own address, marked 0x539 (IP_TRANSPARENT): mangle
  ISTIO_PRERT turns the mark into connmark 0x111 when it loops back, mangle ISTIO_OUTPUT restores it on
  the app's replies, and `ip rule fwmark 0x111/0xfff lookup 100` with `local default dev lo` in table 100
  brings them back to ztunnel (flow "reply"; without either, the replies leave the pod and inbound breaks);
- what reaches 15053: answered by ztunnel's DNS proxy.

The flows (podnat's vocabulary, the sidecar's numbers where the meaning is the same): 1 remote -> app
over HBONE (15008), 1 remote -> app in plaintext (-> 15006), 1 the reply of an inbound connection,
2 app -> remote (-> 15001), 4 app -> its own pod IP (bypasses ztunnel), 7 app -> DNS (-> 15053 when
captured, UDP and TCP), 8 kubelet probe from 169.254.7.127 (accepted without capture).
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import TYPE_CHECKING

from podnat.istio.actor import Actor
from podnat.istio.ambient import (
    CONN_MARK,
    DNS_PORT,
    HBONE_PORT,
    INBOUND_PLAINTEXT_PORT,
    INPOD_MARK,
    MARK_MASK,
    OUTBOUND_PORT,
    PROBE_SNAT_V4,
    PROBE_SNAT_V6,
    ROUTE_TABLE,
    ZTUNNEL_PORTS,
    ambient_cause,
)
from podnat.istio.flows import FLOW_TITLES, Endpoint, FlowSpec, FlowType, Identity, PodContext
from podnat.istio.paths import (
    EPHEMERAL_PORT,
    MAX_LEGS,
    FlowTrace,
    Leg,
    Outcome,
    _other_socket,
    _socket_name,
    _source_for,
    _stop,
    _walk,
)
from podnat.istio.routing import TproxyRouting

if TYPE_CHECKING:
    from podnat.istio.explain import Explanation, Finding, FlowReport, ShadowMemo
    from podnat.istio.reconcile import RuleDiff
from podnat.netfilter.model import Family, IPAddress, Rule, Ruleset
from podnat.netfilter.packet import Packet
from podnat.netfilter.traverse import VerdictKind, traverse

ZTUNNEL = Identity(0, 0)  # ztunnel's in-pod sockets belong to ztunnel's process (root); no rule tests its owner
LISTENER_NAMES = {
    OUTBOUND_PORT: "outbound",
    INBOUND_PLAINTEXT_PORT: "plaintext inbound",
    HBONE_PORT: "HBONE",
    DNS_PORT: "DNS proxy",
}


def ambient_flows(ctx: PodContext, dns: bool = True) -> tuple[FlowSpec, ...]:
    """An ambient pod's flows (DNS only when the pod captures it)."""
    pod = Endpoint(ctx.pod_ip, ctx.app_port)
    probe = PROBE_SNAT_V6 if ctx.pod_ip.version == 6 else PROBE_SNAT_V4
    specs = [
        FlowSpec(
            FlowType.REMOTE_TO_LOCAL,
            "remote -> local pod over HBONE (ztunnel 15008)",
            Actor.REMOTE,
            Endpoint(ctx.pod_ip, HBONE_PORT),
            source=ctx.remote.address,
            variant="hbone",
        ),
        FlowSpec(
            FlowType.REMOTE_TO_LOCAL,
            "remote -> local pod in plaintext (ztunnel 15006)",
            Actor.REMOTE,
            pod,
            source=ctx.remote.address,
            variant="plaintext",
        ),
        FlowSpec(
            FlowType.REMOTE_TO_LOCAL,
            "reply of an inbound connection (connmark 0x111, table 100)",
            Actor.PROXY,
            pod,
            source=ctx.remote.address,
            identity=ZTUNNEL,
            variant="reply",
        ),
        FlowSpec(
            FlowType.LOCAL_TO_REMOTE, "local pod -> remote pod (ztunnel 15001)", Actor.APP, ctx.remote, identity=ctx.app
        ),
        FlowSpec(
            FlowType.LOCAL_TO_LOCAL,
            "local pod -> its own pod IP (no ztunnel)",
            Actor.APP,
            pod,
            identity=ctx.app,
            variant="own-pod-ip",
        ),
    ]
    if dns and ctx.nameserver is not None:
        specs += [
            FlowSpec(
                FlowType.DNS,
                f"app -> cluster DNS ({proto}, ztunnel 15053)",
                Actor.APP,
                ctx.nameserver,
                identity=ctx.app,
                proto=proto,
                variant=proto,
            )
            for proto in ("udp", "tcp")
        ]
    specs.append(FlowSpec(FlowType.KUBELET_PROBE, FLOW_TITLES[FlowType.KUBELET_PROBE], Actor.REMOTE, pod, source=probe))
    return tuple(specs)


def trace_ambient(  # noqa: C901  ztunnel's sockets after the in-pod rules, case by case
    ruleset: Ruleset,
    spec: FlowSpec,
    ctx: PodContext,
    listening: tuple[int, ...] = ZTUNNEL_PORTS,
    routing: TproxyRouting | None = None,
    mark: int | None = None,
) -> FlowTrace:
    """Follow `spec` through an ambient pod's rules and ztunnel's in-pod listeners (`listening`: the ports
    ztunnel listens on; fewer when it is not running). `routing`: the pod's policy routing as read (None:
    as istio-cni installs it). `mark`: the first packet's mark (default: 0x539 for ztunnel, else 0)."""
    if spec.variant == "reply":
        return _reply(ruleset, spec, ctx, routing)
    legs: list[Leg] = []
    ports: list[int] = []
    seen: set[tuple[int, Endpoint]] = set()
    actor, dst, identity = spec.actor, spec.destination, spec.identity
    first_mark = mark if mark is not None else (INPOD_MARK if actor is Actor.PROXY else 0)
    src = spec.source if spec.source is not None else _source_for(dst, ctx)
    current_mark = first_mark
    for _ in range(MAX_LEGS):
        arrival = _walk(ruleset, ctx, actor, src, dst, identity, spec.proto, current_mark)
        legs.append(arrival.leg)

        def done(outcome: Outcome, to: Endpoint | None, reason: str) -> FlowTrace:
            return FlowTrace(spec, tuple(legs), (), outcome, to, reason, tuple(ports))

        if arrival.stop is not None:
            return done(arrival.stop, None, arrival.reason)
        final = arrival.final
        if not ctx.is_local(final.address):
            return done(Outcome.DELIVERED, final, f"left the pod for {final}")
        port = final.port if final.port in ZTUNNEL_PORTS else None
        if port == DNS_PORT and not final.address.is_loopback:
            port = None  # ztunnel's DNS proxy listens on localhost only
        if port is None:
            if _other_socket(ctx, final):
                if actor is Actor.PROXY and not ctx.is_local(src):
                    # ztunnel's transparent leg: only the connmark and policy routing bring the app's replies back
                    broken = _reply_broken(ruleset, ctx, src, final, arrival.ctmark, routing)
                    if broken is not None:
                        return done(Outcome.DROPPED, None, broken[1])
                return done(Outcome.DELIVERED, final, f"reached {_socket_name(ctx, final)} on {final}")
            how = f"{arrival.leg.rules[-1]} sent it to {final}" if arrival.leg.to else f"it went to {final}"
            return done(Outcome.REFUSED, None, f"{how}, where nothing listens")
        if port not in listening:
            how = f"{arrival.leg.rules[-1]} sent it to {final}" if arrival.leg.to else f"it went to {final}"
            return done(
                Outcome.REFUSED,
                None,
                f"{how}, where ztunnel's {LISTENER_NAMES[port]} listener ({port}) is not listening",
            )
        if actor is Actor.PROXY and (port, dst) in seen:
            return done(Outcome.LOOP, None, f"ztunnel's own connection to {dst} came back to its {port} listener")
        seen.add((port, dst))
        ports.append(port)
        if port == DNS_PORT:
            return done(Outcome.DELIVERED, final, f"answered by ztunnel's DNS proxy on {final}")
        if port == OUTBOUND_PORT:
            upstream = ctx.endpoint_for(dst)
            src, dst = _source_for(upstream, ctx), upstream
        elif port == HBONE_PORT:
            # the tunnel's target is the app; ztunnel connects from the client's own address
            dst = Endpoint(ctx.pod_ip, ctx.app_port)
        # 15006: to the original destination, from the client's address (src unchanged)
        actor, identity, current_mark = Actor.PROXY, ZTUNNEL, INPOD_MARK
    return FlowTrace(
        spec,
        tuple(legs),
        (),
        Outcome.LOOP,
        None,
        f"more than {MAX_LEGS} connections: ztunnel keeps re-capturing its own traffic",
        tuple(ports),
    )


def _reply(ruleset: Ruleset, spec: FlowSpec, ctx: PodContext, routing: TproxyRouting | None) -> FlowTrace:
    """ztunnel's connection to the app (from the client's address), then the app's reply: raw and mangle
    OUTPUT (nat sees only first packets), then policy routing decides where the reply goes."""
    client = spec.source if spec.source is not None else ctx.remote.address
    arrival = _walk(ruleset, ctx, Actor.PROXY, client, spec.destination, ZTUNNEL, "tcp", INPOD_MARK)
    legs = [arrival.leg]
    if arrival.stop is not None:
        return FlowTrace(spec, tuple(legs), (), arrival.stop, None, arrival.reason)
    leg, reason = _reply_leg(ruleset, ctx, client, spec.destination, arrival.ctmark, routing)
    if reason is not None:
        return FlowTrace(spec, (*legs, leg), (), Outcome.DROPPED, None, reason)
    how = "as read" if routing is not None and routing.fwmark_rule else "as istio-cni installs it"
    restored = ", ".join(leg.rules[-1:])
    return FlowTrace(
        spec,
        (*legs, leg),
        (),
        Outcome.DELIVERED,
        leg.dst,
        f"mark {CONN_MARK:#x} restored by {restored}; `fwmark {CONN_MARK:#x}/{MARK_MASK:#x} lookup "
        f"{ROUTE_TABLE}` and `local default dev lo` in table {ROUTE_TABLE} ({how}) route the reply "
        "back over lo to ztunnel's socket",
    )


def _reply_broken(
    ruleset: Ruleset, ctx: PodContext, client: IPAddress, app: Endpoint, ctmark: int, routing: TproxyRouting | None
) -> tuple[Leg, str] | None:
    leg, reason = _reply_leg(ruleset, ctx, client, app, ctmark, routing)
    return None if reason is None else (leg, reason)


def _reply_leg(
    ruleset: Ruleset, ctx: PodContext, client: IPAddress, app: Endpoint, ctmark: int, routing: TproxyRouting | None
) -> tuple[Leg, str | None]:
    """The app's reply to ztunnel's transparent connection, and why it does not return to ztunnel (None: it does)."""
    back = Endpoint(client, EPHEMERAL_PORT)
    packet = Packet(
        proto="tcp",
        src=ctx.pod_ip,
        dst=client,
        sport=app.port,
        dport=EPHEMERAL_PORT,
        out_iface=ctx.iface,
        uid=ctx.app.uid,
        gid=ctx.app.gid,
        ctmark=ctmark,
        ct_state="ESTABLISHED",
        local_addresses=frozenset({ctx.pod_ip}),
    )
    hits: list[Rule] = []
    for base in (b for b in ruleset.base_chains("OUTPUT") if b.kind != "nat"):
        trace = traverse(ruleset, base.table, "OUTPUT", packet, start=base.chain)
        hits.extend(trace.hits)
        packet = trace.packet
        stop = _stop(trace)
        if stop is not None:
            return Leg(Actor.APP, ctx.pod_ip, back, "OUTPUT", tuple(hits), trace.verdict.kind, None, ctx.app), stop[1]
    leg = Leg(Actor.APP, ctx.pod_ip, back, "OUTPUT", tuple(hits), VerdictKind.ACCEPT, None, ctx.app)
    if ctmark & MARK_MASK != CONN_MARK:
        return leg, (
            f"ztunnel's connection to the app got no connmark {CONN_MARK:#x} (no rule in mangle PREROUTING "
            f"turns ztunnel's mark {INPOD_MARK:#x} into it): the app's replies to {client} leave the pod "
            "instead of returning to ztunnel, and inbound connections break"
        )
    if packet.mark & MARK_MASK != CONN_MARK:
        return leg, (
            f"no rule in mangle OUTPUT restores connmark {CONN_MARK:#x} on the app's replies: they leave "
            f"the pod for {client} instead of returning to ztunnel, and inbound connections break"
        )
    if routing is not None and routing.broken:
        restored = ", ".join(
            rule.ref for rule in hits if rule.target is not None and rule.target.get("restore-mark") is not None
        )
        return leg, (
            f"the app's replies to {client} (mark {CONN_MARK:#x} restored by {restored}) are routed out of "
            f"the pod instead of back to ztunnel over lo: {routing_gap(routing)}"
        )
    return leg, None


def routing_gap(routing: TproxyRouting) -> str:
    """What is missing from an ambient pod's policy routing, as the commands istio-cni runs."""
    ip = routing.family_ip
    parts = []
    if routing.fwmark_rule is False:
        parts.append(f"no `{ip} rule add fwmark {CONN_MARK:#x}/{MARK_MASK:#x} lookup {ROUTE_TABLE}`")
    if routing.local_route is False:
        default = "::/0" if routing.family is Family.IPV6 else "0.0.0.0/0"
        parts.append(f"no `{ip} route add local {default} dev lo table {ROUTE_TABLE}`")
    return " and ".join(parts)


def needs_policy_routing(trace: FlowTrace, ctx: PodContext) -> bool:
    """Does the flow hand the app a connection from an address outside the pod (ztunnel's transparent leg)?"""
    return any(
        leg.actor is Actor.PROXY and not ctx.is_local(leg.src) and ctx.is_local(leg.dst.address) for leg in trace.legs
    )


def without_policy_routing(trace: FlowTrace, routing: TproxyRouting, ctx: PodContext) -> FlowTrace:
    """An inbound flow whose replies cannot return to ztunnel: dropped, naming what is missing."""
    if trace.spec.variant == "reply" or trace.outcome is not Outcome.DELIVERED:
        return trace
    leg = next(leg for leg in trace.legs if leg.actor is Actor.PROXY and not ctx.is_local(leg.src))
    reason = (
        f"the app's replies to {leg.src} (connmark {CONN_MARK:#x}) are routed out of the pod instead of "
        f"back to ztunnel over lo: {routing_gap(routing)}"
    )
    return replace(trace, outcome=Outcome.DROPPED, delivered_to=None, reason=reason)


def ambient_routing(family: Family, rules_text: str | None, routes_text: str | None, source: str) -> TproxyRouting:
    """An ambient pod's policy routing (mark 0x111/0xfff, table 100) from `ip rule show` / `ip route show table
    100` output (None: not read)."""
    from podnat.istio.routing import tproxy_routing

    return tproxy_routing(rules_text, routes_text, family=family, mark=CONN_MARK, table=ROUTE_TABLE, source=source)


def probe_address(version: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address kubelet's probes arrive from in an ambient pod."""
    return PROBE_SNAT_V6 if version == 6 else PROBE_SNAT_V4


# --- explain ---------------------------------------------------------------------------------------------

BYPASS = "enrolled in ambient but its traffic bypasses ztunnel: no ISTIO_PRERT/ISTIO_OUTPUT in the pod"


def has_inpod_rules(ruleset: Ruleset) -> bool:
    """The pod's namespace holds ztunnel's capture: nat ISTIO_OUTPUT redirecting to 15001, in iptables or in
    `inet istio-ambient-nat`."""
    for table in ruleset.tables.values():
        if table.name not in ("nat", "istio-ambient-nat"):
            continue
        for rule in table.rules():
            ports = rule.target.get("to-ports") if rule.target is not None else None
            if (
                rule.target is not None
                and rule.target.name == "REDIRECT"
                and ports is not None
                and ports.args[0] == str(OUTBOUND_PORT)
            ):
                return True
    return False


def explain_ambient(
    live: Ruleset,
    ctx: PodContext,
    expected: Ruleset | None = None,
    *,
    listening: tuple[int, ...] = ZTUNNEL_PORTS,
    policy_routing: TproxyRouting | None = None,
    enrolled: bool = True,
    shadows: ShadowMemo | None = None,
) -> Explanation:
    """Every ambient flow through `live` (and `expected`, istio-cni's intent), statuses, rule diff, findings.

    A pod enrolled in ambient whose table holds no in-pod capture is `broken` however its flows end:
    its traffic bypasses ztunnel (istio/istio#61182). `listening`: ztunnel's in-pod listeners as read
    (default: all four). `policy_routing`: as read (None: as istio-cni installs it). `shadows`: the caller's
    memo of shadow analyses (explain.ShadowMemo)."""
    from podnat.istio.explain import (
        Explanation,
        Finding,
        FlowReport,
        FlowStatus,
        Severity,
        _findings,
        flow_status,
        shadow_analysis,
    )

    if ctx.nameserver is None:
        nameserver = _dns_target(expected) if expected is not None else _dns_target(live)
        if nameserver is not None:
            ctx = ctx.replace(nameserver=nameserver)
    specs = ambient_flows(ctx)
    bypassed = enrolled and not has_inpod_rules(live)
    reports: list[FlowReport] = []
    for spec in specs:
        got = trace_ambient(live, spec, ctx, listening, policy_routing)
        if policy_routing is not None and policy_routing.broken and needs_policy_routing(got, ctx):
            got = without_policy_routing(got, policy_routing, ctx)
        want = trace_ambient(expected, spec, ctx) if expected is not None else None
        status = flow_status(got, want)
        if bypassed and (spec.variant == "plaintext" or spec.type is FlowType.LOCAL_TO_REMOTE):
            status = FlowStatus.BROKEN
        reports.append(FlowReport(got, want, status))
    diff = ambient_diff(live, expected) if expected is not None else None
    findings: list[Finding] = []
    if bypassed:
        findings.append(
            Finding(
                Severity.ERROR,
                f"{BYPASS}: the app's connections and inbound plaintext go straight to their destination "
                "(no mTLS, no policy). istio-cni writes these rules when the pod starts or is enrolled; after a node "
                "reboot or re-enrolment they can be missing. Restart the pod (or remove and re-add the "
                "istio.io/dataplane-mode=ambient label) so the istio-cni node agent writes them again.",
                (),
                (int(FlowType.REMOTE_TO_LOCAL), int(FlowType.LOCAL_TO_REMOTE)),
            )
        )
    missing_ports = [port for port in (OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, HBONE_PORT) if port not in listening]
    if missing_ports:
        findings.append(
            Finding(
                Severity.ERROR,
                f"ztunnel is not listening on {', '.join(map(str, missing_ports))} in the pod's network "
                "namespace: connections the rules send there are refused. Check the ztunnel pod on this node "
                "(`kubectl -n istio-system logs ds/ztunnel`) and that it has this pod in its inventory.",
            )
        )
    findings += _findings(reports, diff or (), live)
    if policy_routing is not None:
        findings += _routing_findings(policy_routing, reports)
    reach = shadow_analysis(live, shadows)
    findings += [Finding(Severity.INFO, f"shadow analysis skipped for {s}") for s in reach.skipped]
    return Explanation(tuple(reports), reach.shadowed, tuple(findings), diff, policy_routing, proxy="ztunnel")


AMBIENT_TABLES = ("mangle", "nat", "raw", "istio-ambient-nat", "istio-ambient-mangle", "istio-ambient-raw")


def ambient_diff(live: Ruleset, expected: Ruleset) -> tuple[RuleDiff, ...]:
    """The rule diff of an ambient pod (its iptables or `inet istio-ambient-*` tables), causes in Istio terms."""
    from podnat.istio.reconcile import diff_rules

    out = []
    for d in diff_rules(live, expected, AMBIENT_TABLES):
        rule = d.expected or d.live
        out.append(replace(d, cause=ambient_cause(d.kind.value, d.table, d.chain, rule.spec if rule else None)))
    return tuple(out)


def _dns_target(ruleset: Ruleset) -> Endpoint | None:
    """The resolver an ambient table captures DNS for: any (ztunnel captures every port-53 query)."""
    for table in ruleset.tables.values():
        for rule in table.rules():
            ports = rule.target.get("to-ports") if rule.target is not None else None
            if ports is not None and ports.args[0] == str(DNS_PORT):
                v6 = ruleset.family is Family.IPV6
                return Endpoint(ipaddress.ip_address("fd00:10:96::a" if v6 else "10.96.0.10"), 53)
    return None


def _routing_findings(routing: TproxyRouting, reports: list[FlowReport]) -> list[Finding]:
    from podnat.istio.explain import Finding, Severity

    ip = routing.family_ip
    if routing.broken:
        affected = tuple(sorted({int(r.spec.type) for r in reports if r.live.outcome is Outcome.DROPPED}))
        return [
            Finding(
                Severity.ERROR,
                f"ambient policy routing ({routing.family.value}) is incomplete: {routing_gap(routing)}. "
                "istio-cni adds them with the in-pod rules; the app's replies on inbound connections "
                f"(connmark {CONN_MARK:#x}, "
                "from ztunnel's transparent connection with the client's address) leave the pod instead of "
                "returning to ztunnel: inbound connections never complete. Restart the pod so istio-cni writes "
                f"them again; check with `{ip} rule show` and `{ip} route show table {ROUTE_TABLE}` in the pod.",
                (),
                affected,
            )
        ]
    if routing.unknown is not None:
        return [
            Finding(
                Severity.WARNING,
                f"ambient policy routing ({routing.family.value}) not known: {routing.unknown}; "
                f"podnat assumes `fwmark {CONN_MARK:#x}/{MARK_MASK:#x} lookup {ROUTE_TABLE}` and "
                f"`local default dev lo` in table {ROUTE_TABLE} are there.",
            )
        ]
    return []
