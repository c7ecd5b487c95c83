"""Where a flow's path is decided: follow its connections through the rules and Envoy's listeners.

A flow is a chain of connections ("legs"). Each leg walks the hooks the kernel runs for its first
packet (a local sender: OUTPUT then POSTROUTING; a remote one: PREROUTING then INPUT; a connection
looped back over `lo` is not seen by nat again), and ends at a socket in the pod, outside the pod,
or nowhere. When it ends at an Envoy listener, Envoy opens the next leg the way Istio configures it:

- virtualOutbound (15001): to the original destination, or the endpoint it picks for a Service VIP;
- virtualInbound (15006): to the original destination, from 127.0.0.6 (::6), or from the client's
  own address in TPROXY mode;
- the Prometheus listener (15090): to the admin port (127.0.0.1:15000); health (15021): to pilot-agent.

Outcomes: delivered (a socket in the pod, or out of the pod), refused (nothing listens where the
rules sent it), loop (a listener got, from the proxy, a destination it already handled in this flow),
dropped (DROP/REJECT), undecided (a rule podnat cannot evaluate; it names the rule and why). Pure.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from enum import Enum
from itertools import chain as concat
from itertools import groupby
from operator import attrgetter

from podnat._typing import assert_never
from podnat.envoy.listeners import Listener, ListenerKind, istio_default_listeners
from podnat.istio import ports
from podnat.istio.actor import Actor
from podnat.istio.flows import DNS_PROXY_PORT, Endpoint, FlowSpec, FlowType, Identity, PodContext
from podnat.netfilter.matches import parse_mark
from podnat.netfilter.model import Family, IPAddress, Rule, Ruleset
from podnat.netfilter.packet import Packet
from podnat.netfilter.runs import representatives
from podnat.netfilter.traverse import TableTrace, VerdictKind, traverse

MAX_LEGS = 8
EPHEMERAL_PORT = 50000  # the source port podnat gives a connection's first packet

# The hooks the kernel runs for a connection's first packet; at each, every base chain in priority order.
LOCAL_OUT = ("OUTPUT", "POSTROUTING")
REMOTE_IN = ("PREROUTING", "INPUT")


class Outcome(str, Enum):
    """How a flow ended."""

    DELIVERED = "delivered"
    REFUSED = "refused"
    LOOP = "loop"
    DROPPED = "dropped"
    UNDECIDED = "undecided"


@dataclass(frozen=True, slots=True)
class Leg:
    """One connection of a flow: who opened it, the rules its first packet counted, where it went."""

    actor: Actor
    src: IPAddress
    dst: Endpoint
    hook: str  # PREROUTING (from the network) or OUTPUT (from a local socket)
    hits: tuple[Rule, ...]
    verdict: VerdictKind  # how nat (and the other tables) ended for it: ACCEPT, REDIRECT, DNAT, TPROXY, DROP, ...
    to: Endpoint | None  # where a REDIRECT/DNAT/TPROXY sent it
    identity: Identity | None = None

    @property
    def rules(self) -> tuple[str, ...]:
        return tuple(rule.ref for rule in self.hits)


@dataclass(frozen=True, slots=True)
class FlowTrace:
    """A flow's path: its legs, the Envoy listeners it crossed, and how it ended."""

    spec: FlowSpec
    legs: tuple[Leg, ...]
    envoy_ports: tuple[int, ...]
    outcome: Outcome
    delivered_to: Endpoint | None
    reason: str  # one sentence: why it ended this way (names the rule or listener)
    ztunnel_ports: tuple[int, ...] = ()  # an ambient pod's flows enter ztunnel's in-pod listeners instead

    @property
    def proxy_ports(self) -> tuple[int, ...]:
        """The proxy listener ports entered, in order: Envoy's for a sidecar pod, ztunnel's for an ambient one."""
        return self.ztunnel_ports or self.envoy_ports

    @property
    def type(self) -> FlowType:
        return self.spec.type

    @property
    def rules(self) -> tuple[str, ...]:
        return tuple(ref for leg in self.legs for ref in leg.rules)


@dataclass(frozen=True, slots=True)
class _Arrival:
    leg: Leg
    final: Endpoint
    stop: Outcome | None
    reason: str
    ctmark: int = 0  # the connection's mark once the first packet has arrived (CONNMARK)


def trace_flow(
    ruleset: Ruleset,
    spec: FlowSpec,
    ctx: PodContext,
    listeners: tuple[Listener, ...] | None = None,
    other: Ruleset | None = None,
    mark: int = 0,
) -> FlowTrace:
    """Follow `spec` through `ruleset` (one IP family) and the sidecar's listeners.

    `other`: the pod's table of the other IP family, for a connection of that family within the flow
    (a dual-stack pod's Envoy fetches from its admin port on 127.0.0.1 for a scrape over IPv6).
    `mark`: the first packet's mark (`podnat trace --mark`)."""
    listeners = istio_default_listeners() if listeners is None else listeners
    tables = {4: ruleset, 6: ruleset}
    if other is not None:
        tables[6 if other.family is Family.IPV6 else 4] = other
    legs: list[Leg] = []
    ports: list[int] = []
    seen: set[tuple[int, Endpoint]] = set()
    actor, dst, identity = spec.actor, spec.destination, spec.identity
    src = spec.source if spec.source is not None else _source_for(dst, ctx)
    for _ in range(MAX_LEGS):
        arrival = _walk(tables[dst.address.version], ctx, actor, src, dst, identity, spec.proto, mark)
        legs.append(arrival.leg)
        if arrival.stop is not None:
            return FlowTrace(spec, tuple(legs), tuple(ports), arrival.stop, None, arrival.reason)
        final = arrival.final
        if not ctx.is_local(final.address):
            return FlowTrace(spec, tuple(legs), tuple(ports), Outcome.DELIVERED, final, f"left the pod for {final}")
        listener = _bound_listener(listeners, final)
        dns_proxy = ctx.nameserver is not None and final.port == DNS_PROXY_PORT and final.address.is_loopback
        if listener is None and dns_proxy:
            # pilot-agent's DNS proxy answers from its cache or asks the original resolver as the proxy uid.
            return FlowTrace(
                spec,
                tuple(legs),
                tuple(ports),
                Outcome.DELIVERED,
                final,
                f"answered by pilot-agent's DNS proxy on {final}",
            )
        if listener is None:
            if _other_socket(ctx, final):
                return FlowTrace(
                    spec,
                    tuple(legs),
                    tuple(ports),
                    Outcome.DELIVERED,
                    final,
                    f"reached {_socket_name(ctx, final)} on {final}",
                )
            how = f"{arrival.leg.rules[-1]} sent it to {final}" if arrival.leg.to else f"it went to {final}"
            return FlowTrace(spec, tuple(legs), tuple(ports), Outcome.REFUSED, None, f"{how}, where nothing listens")
        key = (listener.port, dst)
        if actor is Actor.PROXY and key in seen:
            return FlowTrace(
                spec,
                tuple(legs),
                tuple(ports),
                Outcome.LOOP,
                None,
                f"Envoy's own connection to {dst} came back to {listener.name} ({listener.port})",
            )
        seen.add(key)
        ports.append(listener.port)
        upstream = _envoy_upstream(listener, dst, src, ctx)
        if upstream is None:
            return FlowTrace(
                spec, tuple(legs), tuple(ports), Outcome.DELIVERED, final, f"handled by Envoy listener {listener.name}"
            )
        next_src, next_dst, mark = upstream
        if next_dst == final and arrival.leg.to is None:
            return FlowTrace(
                spec,
                tuple(legs),
                tuple(ports),
                Outcome.LOOP,
                None,
                f"{listener.name} would connect to itself ({final})",
            )
        actor, src, dst, identity = Actor.PROXY, next_src, next_dst, ctx.proxy
    return FlowTrace(
        spec,
        tuple(legs),
        tuple(ports),
        Outcome.LOOP,
        None,
        f"more than {MAX_LEGS} connections: Envoy keeps re-capturing its own traffic",
    )


def _walk(
    ruleset: Ruleset,
    ctx: PodContext,
    actor: Actor,
    src: IPAddress,
    dst: Endpoint,
    identity: Identity | None,
    proto: str,
    mark: int = 0,
) -> _Arrival:
    local_sender = actor is not Actor.REMOTE
    packet = Packet(
        proto=proto,
        src=src,
        dst=dst.address,
        sport=EPHEMERAL_PORT,
        dport=dst.port,
        in_iface=None if local_sender else ctx.iface,
        out_iface=_route(dst.address, ctx) if local_sender else None,
        uid=identity.uid if (local_sender and identity) else None,
        gid=identity.gid if (local_sender and identity) else None,
        groups=identity.groups if (local_sender and identity) else frozenset(),
        mark=mark,
        local_addresses=frozenset({ctx.pod_ip, _LOOPBACK[dst.address.version]}),
    )
    hook = "OUTPUT" if local_sender else "PREROUTING"
    hits: list[Rule] = []
    to: Endpoint | None = None
    verdict = VerdictKind.ACCEPT
    current = dst
    stages = [(c, h) for h in (LOCAL_OUT if local_sender else REMOTE_IN) for c in ruleset.base_chains(h)]
    for base, table_hook in stages:
        trace = traverse(ruleset, base.table, table_hook, packet, start=base.chain)
        hits.extend(trace.hits)
        packet = trace.packet
        stop = _stop(trace)
        leg = Leg(actor, src, dst, hook, tuple(hits), verdict, to, identity)
        if stop is not None:
            return _Arrival(replace(leg, verdict=trace.verdict.kind), current, *stop)
        kind = trace.verdict.kind
        if kind is VerdictKind.REDIRECT:
            address = _LOOPBACK[current.address.version] if table_hook == "OUTPUT" else ctx.pod_ip
            current = Endpoint(address, trace.verdict.port or current.port)
            to, verdict = current, VerdictKind.REDIRECT
            packet = replace(
                packet, dst=address, dport=current.port, out_iface=_route(address, ctx) if local_sender else None
            )
        elif kind is VerdictKind.DNAT and table_hook in ("OUTPUT", "PREROUTING"):
            address = ipaddress.ip_address(trace.verdict.address) if trace.verdict.address else current.address
            current = Endpoint(address, trace.verdict.port or current.port)
            to, verdict = current, VerdictKind.DNAT
            packet = replace(
                packet, dst=address, dport=current.port, out_iface=_route(address, ctx) if local_sender else None
            )
        elif kind is VerdictKind.TPROXY:
            current = Endpoint(current.address, trace.verdict.port or current.port)
            to, verdict = current, VerdictKind.TPROXY
    if local_sender and ctx.is_local(current.address):
        # Looped back over lo: nat is done with this connection, the other tables see it again.
        arrival_packet = replace(packet, in_iface="lo", out_iface=None)
        arrivals = [(c, h) for h in REMOTE_IN for c in ruleset.base_chains(h) if c.kind != "nat"]
        for base, table_hook in arrivals:
            trace = traverse(ruleset, base.table, table_hook, arrival_packet, start=base.chain)
            hits.extend(trace.hits)
            arrival_packet = trace.packet
            stop = _stop(trace)
            leg = Leg(actor, src, dst, hook, tuple(hits), verdict, to, identity)
            if stop is not None:
                return _Arrival(replace(leg, verdict=trace.verdict.kind), current, *stop)
            if trace.verdict.kind is VerdictKind.TPROXY:
                current = Endpoint(current.address, trace.verdict.port or current.port)
                to, verdict = current, VerdictKind.TPROXY
        packet = arrival_packet
    return _Arrival(Leg(actor, src, dst, hook, tuple(hits), verdict, to, identity), current, None, "", packet.ctmark)


def _stop(trace: TableTrace) -> tuple[Outcome, str] | None:
    verdict = trace.verdict
    if verdict.kind is VerdictKind.UNDECIDED:
        return Outcome.UNDECIDED, f"cannot decide {verdict.rule}: {verdict.reason}"
    if verdict.kind in (VerdictKind.DROP, VerdictKind.REJECT):
        by = verdict.rule or f"the {trace.table} {verdict.policy_chain} policy"
        return Outcome.DROPPED, f"{verdict.kind.value} by {by}"
    if verdict.kind is VerdictKind.QUEUE:
        return Outcome.UNDECIDED, f"cannot decide {verdict.rule}: the packet goes to a userspace queue"
    return None


def _route(address: IPAddress, ctx: PodContext) -> str:
    """The interface a locally sent packet leaves by: lo for the pod's own addresses."""
    return "lo" if ctx.is_local(address) else ctx.iface


def _source_for(dst: Endpoint, ctx: PodContext) -> IPAddress:
    return _LOOPBACK[dst.address.version] if dst.address.is_loopback else ctx.pod_ip


_LOOPBACK: dict[int, IPAddress] = {4: ipaddress.IPv4Address("127.0.0.1"), 6: ipaddress.IPv6Address("::1")}


def _bound_listener(listeners: tuple[Listener, ...], final: Endpoint) -> Listener | None:
    for listener in listeners:
        if not listener.binds or listener.port != final.port:
            continue
        if listener.address in ("0.0.0.0", "::") or ipaddress.ip_address(listener.address) == final.address:
            return listener
    return None


def _other_socket(ctx: PodContext, final: Endpoint) -> bool:
    if final == ctx.admin or (final.address.is_loopback and final.port == ctx.admin.port):
        return True
    return final.port in ctx.app_ports or final.port in ctx.agent_ports


def _socket_name(ctx: PodContext, final: Endpoint) -> str:
    if final.port == ctx.admin.port and final.address.is_loopback:
        return "Envoy's admin port"
    if final.port in ctx.agent_ports:
        return "pilot-agent"
    return "the app"


def tproxy_mark(ruleset: Ruleset) -> int | None:
    """The mark of the table's TPROXY capture (`--tproxy-mark`, nft `tproxy ... meta mark set`), or None
    when nothing is captured by TPROXY: a saved table says whether its pod's Envoy is transparent."""
    for table in ruleset.tables.values():
        for target, _ in groupby(map(_TARGET, concat.from_iterable(map(representatives, table.chains.values())))):
            if target is not None and target.name == "TPROXY":
                option = target.get("tproxy-mark")
                return parse_mark(option.args[0])[0] if option is not None and option.args else 1337
    return None


_TARGET = attrgetter("target")


def _envoy_upstream(
    listener: Listener, original: Endpoint, client: IPAddress, ctx: PodContext
) -> tuple[IPAddress, Endpoint, int] | None:
    """The connection Envoy opens for what `listener` received: (source, destination, socket mark);
    None when Envoy answers it itself."""
    kind = listener.kind
    match kind:
        case ListenerKind.VIRTUAL_OUTBOUND:
            upstream = ctx.endpoint_for(original)
            return _source_for(upstream, ctx), upstream, 0
        case ListenerKind.VIRTUAL_INBOUND:
            if ctx.transparent_inbound:
                # TPROXY: the original_src filter keeps the client's address and marks the socket (-t, 1337).
                return client, original, ctx.tproxy_mark
            return ctx.inbound_source, original, 0
        case ListenerKind.PROMETHEUS:
            return _source_for(ctx.admin, ctx), ctx.admin, 0
        case ListenerKind.HEALTH:
            return ctx.loopback, Endpoint(ctx.loopback, ctx.agent_ports[0] if ctx.agent_ports else ports.AGENT), 0
        case ListenerKind.SERVICE | ListenerKind.OTHER:
            return None
        case _:
            assert_never(kind)
