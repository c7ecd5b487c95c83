"""The picture of a pod's flows as data, shared by the SVG, mermaid and HTML renderers. Pure.

One panel per flow, like the classic "six traffic types" schematics: every panel of a pod has the
same layout (the pod's chains, the app, Envoy's listeners, the peers), and one route: the nodes the
flow visits in order (a `Stop` per chain visit with the rule numbers taken there, per listener, per
socket), where it ends, and, for a flow that drifted or broke, the route Istio meant it to take and
the rule where the two part (`Change`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import zip_longest
from typing import TYPE_CHECKING

from podnat.istio.actor import Actor
from podnat.istio.explain import Explanation, FlowReport, FlowStatus
from podnat.istio.flows import Endpoint, FlowType
from podnat.istio.paths import FlowTrace, Leg, Outcome
from podnat.netfilter.model import IPAddress

if TYPE_CHECKING:
    from podnat.istio.reconcile import RuleDiff

FAILING = (FlowStatus.DRIFT, FlowStatus.BROKEN, FlowStatus.UNKNOWN)
STATUS_MARK = {FlowStatus.OK: "✓", FlowStatus.DRIFT: "✗", FlowStatus.BROKEN: "✗", FlowStatus.UNKNOWN: "?"}
INBOUND_CHAINS = ("PREROUTING", "ISTIO_INBOUND", "ISTIO_IN_REDIRECT", "INPUT")
OUTBOUND_CHAINS = ("OUTPUT", "ISTIO_OUTPUT", "ISTIO_REDIRECT")
STANDARD_CHAINS = INBOUND_CHAINS + OUTBOUND_CHAINS
STANDARD_LISTENERS = {15001: "outbound", 15006: "inbound", 15090: "Prometheus"}
LISTENER_NAMES = {15021: "health", 15008: "HBONE", 15020: "merged metrics"}
ADMIN_PORT = 15000
AGENT_PORTS = (15020, 15053)
INBOUND_HOOKS = ("PREROUTING", "INPUT")


@dataclass(frozen=True, slots=True)
class Stop:
    """A node a flow visits: a chain (with the rule numbers it took there), a listener, a socket, a peer."""

    node: str  # chain:NAME | listener:PORT | app | admin | agent | proxy | void:PORT | peer:ROLE
    rules: tuple[str, ...] = ()  # rule numbers taken in this chain, in order
    leg: int = 0

    @property
    def refs(self) -> tuple[str, ...]:
        """The rules taken here as `CHAIN:N` (what `legs[].rules` lists)."""
        chain = self.node.removeprefix("chain:")
        return tuple(f"{chain}:{number}" for number in self.rules)


@dataclass(frozen=True, slots=True)
class Change:
    """Where a flow's live path leaves the intended one: the rule, on which route, and why."""

    ref: str  # CHAIN:N
    route: str  # "live": the live path took this rule instead; "expected": the live path missed it
    why: str


@dataclass(frozen=True, slots=True)
class Panel:
    """One flow's picture: its route, and for a failing flow the intended route and where they part."""

    flow: str  # the flow's id: the type, and its variant (`4-own-pod-ip`, `7-udp`)
    report: FlowReport
    live: tuple[Stop, ...]
    expected: tuple[Stop, ...] | None  # drawn beside the live route (dotted) when the two differ
    change: Change | None

    @property
    def failing(self) -> bool:
        return self.report.status in FAILING


@dataclass(frozen=True, slots=True)
class Diagram:
    """A pod's panels and the nodes every panel draws (faintly, where its flow does not go)."""

    title: str
    proxy: str  # "Envoy" (a sidecar pod) or "ztunnel" (an ambient pod: its in-pod sockets)
    addresses: tuple[IPAddress, ...]  # the pod's own, not loopback
    inbound: tuple[str, ...]  # chain nodes on the inbound side, in the order packets meet them
    outbound: tuple[str, ...]
    middle: tuple[str, ...]  # app, Envoy's listeners and upstream side, admin, pilot-agent, dead ports
    left: tuple[str, ...]  # peers a flow comes from
    right: tuple[str, ...]  # peers a flow goes to
    panels: tuple[Panel, ...]
    captions: dict[str, tuple[str, str]]  # node -> (title, note)


def flow_id(report: FlowReport) -> str:
    """`1`, `4-own-pod-ip`: what `data-flow` and the HTML anchors carry."""
    spec = report.spec
    return f"{int(spec.type)}-{spec.variant}" if spec.variant else str(int(spec.type))


def build_diagram(expl: Explanation, title: str) -> Diagram:
    """The model every renderer draws: one panel per flow of `expl`, over one layout."""
    pod = pod_addresses(expl)
    panels = tuple(_panel(report, pod, expl) for report in expl.flows)
    routes = [p.live for p in panels] + [p.expected for p in panels if p.expected is not None]
    visited = list(dict.fromkeys(stop.node for route in routes for stop in route))
    hooks: dict[str, str] = {"chain:INPUT": "INPUT"}  # a chain's side: the hook of the first leg crossing it
    for report in expl.flows:
        for trace in (report.live, report.expected):
            for leg in trace.legs if trace is not None else ():
                for chain, _ in chain_visits(leg):
                    hooks.setdefault(f"chain:{chain}", leg.hook)
    chains = [n for n in visited if n.startswith("chain:")]
    ztunnel = expl.proxy == "ztunnel" or any(report.live.ztunnel_ports for report in expl.flows)
    # a sidecar pod's panels show all of Istio's nat chains; an ambient pod's, the ones its flows cross
    with_rules = {stop.node for route in routes for stop in route if stop.rules}  # INPUT may be added without
    standard = not ztunnel and any(n.removeprefix("chain:") in STANDARD_CHAINS for n in with_rules)
    inbound = [f"chain:{c}" for c in INBOUND_CHAINS] if standard else []
    outbound = [f"chain:{c}" for c in OUTBOUND_CHAINS] if standard else []
    for node in chains:
        if node not in inbound and node not in outbound:
            (inbound if hooks.get(node) in INBOUND_HOOKS else outbound).append(node)
    entered = {int(n[9:]) for n in visited if n.startswith("listener:")}
    if ztunnel:  # no Envoy: ztunnel's in-pod sockets, as the flows enter them
        middle = [
            "app",
            *(f"listener:{port}" for port in sorted(entered)),
            *(n for n in ("proxy", "admin") if n in visited),
        ]
    else:
        middle = ["app", "listener:15006", "listener:15001", "listener:15090", "proxy", "admin"]
        middle += [f"listener:{port}" for port in sorted(entered) if f"listener:{port}" not in middle]
    middle += sorted(n for n in visited if n.startswith("void:"))
    if "agent" in visited:
        middle.insert(1, "agent")
    peers = [n for n in visited if n.startswith("peer:")]
    left = [n for n in ("peer:client", "peer:prometheus") if n in peers]
    order = ("peer:remote", "peer:service", "peer:istiod", "peer:dns")
    right = [n for n in order if n in peers] + [n for n in peers if n not in left and n not in order]
    nodes = [*inbound, *outbound, *middle, *left, *right]
    proxy = "ztunnel" if ztunnel else "Envoy"
    own = tuple(sorted((a for a in pod if not a.is_loopback), key=lambda a: (a.version, int(a))))
    return Diagram(
        title,
        proxy,
        own,
        tuple(inbound),
        tuple(outbound),
        tuple(middle),
        tuple(left),
        tuple(right),
        panels,
        {node: node_caption(expl, node, proxy) for node in nodes},
    )


def _panel(report: FlowReport, pod: frozenset[IPAddress], expl: Explanation) -> Panel:
    live = trace_stops(report.live, pod)
    expected = None
    change = None
    if report.status in FAILING and report.expected is not None:
        expected = trace_stops(report.expected, pod)
        change = _change(report.live, report.expected, expl)
    return Panel(flow_id(report), report, live, expected, change)


def _steps(trace: FlowTrace) -> list[str]:
    """A trace as one sequence: its rules, with each Envoy port between the legs."""
    steps: list[str] = []
    for index, leg in enumerate(trace.legs):
        steps += leg.rules
        steps.append(f"⇒{trace.proxy_ports[index]}" if index < len(trace.proxy_ports) else "⇒")
    return steps


def _change(live: FlowTrace, expected: FlowTrace, expl: Explanation) -> Change | None:
    """The first rule where the live path and the intended one differ (None: they differ only at the end)."""
    previous = None  # the last rule both took: where a redirect to another port was decided
    for ours, meant in zip_longest(_steps(live), _steps(expected)):
        if ours == meant:
            previous = ours if ours is not None and not ours.startswith("⇒") else previous
            continue
        ours_rule = ours if ours is not None and not ours.startswith("⇒") else None
        meant_rule = meant if meant is not None and not meant.startswith("⇒") else None
        # the rule the reconcile found changed or missing is the one that moved the path
        if meant_rule is not None and _diff_of(meant_rule, expl) is not None:
            return Change(meant_rule, "expected", _why(meant_rule, expl, "missed"))
        if ours_rule is not None:
            return Change(ours_rule, "live", _why(ours_rule, expl, "took"))
        if meant_rule is not None:
            return Change(meant_rule, "expected", _why(meant_rule, expl, "missed"))
        if previous is not None:
            return Change(previous, "live", _why(previous, expl, "took"))
        return None
    return None


def _diff_of(ref: str, expl: Explanation) -> RuleDiff | None:
    for diff in expl.diff or ():
        for rule in (diff.live, diff.expected):
            if rule is not None and rule.ref == ref:
                return diff
    return None


def _why(ref: str, expl: Explanation, verb: str) -> str:
    diff = _diff_of(ref, expl)
    if diff is not None:
        return f"{ref} {diff.kind.value}: {diff.cause}"
    return f"the live path {verb} {ref}" + (" (Istio's rule is not there)" if verb == "missed" else " instead")


# -- what a flow visits ------------------------------------------------------------------------------


def trace_stops(trace: FlowTrace, pod: frozenset[IPAddress]) -> tuple[Stop, ...]:
    """The nodes `trace` visits, from where it starts to where it ends."""
    stops = [Stop(_start_node(trace))]
    for index, leg in enumerate(trace.legs):
        last = index == len(trace.legs) - 1
        visits = list(chain_visits(leg))
        for chain, numbers in visits:
            stops.append(Stop(f"chain:{chain}", numbers, index))
        if (
            leg.actor is Actor.REMOTE
            and _reaches_a_local_socket(trace, leg, last, pod)
            and "INPUT" not in (chain for chain, _ in visits)
        ):
            # nat INPUT runs for the first packet delivered to a local socket (no rule: the chain is empty).
            stops.append(Stop("chain:INPUT", (), index))
        if index < len(trace.proxy_ports):
            stops.append(Stop(f"listener:{trace.proxy_ports[index]}", (), index))
    end = _end_node(trace, pod)
    if end is not None and end != stops[-1].node:
        stops.append(Stop(end, (), max(len(trace.legs) - 1, 0)))
    return tuple(stops)


def flow_stops(report: FlowReport, pod: frozenset[IPAddress]) -> tuple[Stop, ...]:
    """The nodes `report`'s live path visits."""
    return trace_stops(report.live, pod)


def pod_addresses(expl: Explanation) -> frozenset[IPAddress]:
    """The pod's own addresses, as the flows show them (a remote peer's destination, the app's source)."""
    found: set[IPAddress] = set()
    for report in expl.flows:
        spec = report.spec
        if spec.actor is Actor.REMOTE:
            found.add(spec.destination.address)
        elif spec.actor is Actor.APP and report.live.legs and not report.live.legs[0].src.is_loopback:
            found.add(report.live.legs[0].src)
    return frozenset(found)


def chain_visits(leg: Leg) -> Iterator[tuple[str, tuple[str, ...]]]:
    """A leg's rules grouped by chain visit: (`ISTIO_OUTPUT`, (`9`,)), in order."""
    chain, numbers = "", list[str]()
    for ref in leg.rules:
        name, _, number = ref.rpartition(":")
        if name != chain and numbers:
            yield chain, tuple(numbers)
            numbers = []
        chain = name
        numbers.append(number)
    if numbers:
        yield chain, tuple(numbers)


def _start_node(trace: FlowTrace) -> str:
    actor = trace.spec.actor
    if actor is Actor.REMOTE:
        return "peer:prometheus" if trace.type is FlowType.PROMETHEUS_TO_LOCAL else "peer:client"
    return "app" if actor is Actor.APP else "proxy"


def _is_local(address: IPAddress, pod: frozenset[IPAddress]) -> bool:
    return address.is_loopback or address in pod or address == ipaddress.ip_address("::6")


def _reaches_a_local_socket(trace: FlowTrace, leg: Leg, last: bool, pod: frozenset[IPAddress]) -> bool:
    if not last:
        return True
    if trace.outcome in (Outcome.DROPPED, Outcome.UNDECIDED):
        return False
    target = leg.to or trace.delivered_to or leg.dst
    return _is_local(target.address, pod)


def _end_node(trace: FlowTrace, pod: frozenset[IPAddress]) -> str | None:
    if trace.outcome is Outcome.REFUSED:
        leg = trace.legs[-1]
        return f"void:{(leg.to or leg.dst).port}"
    if trace.outcome is Outcome.LOOP:
        to = trace.legs[-1].to
        return f"listener:{to.port}" if to is not None and to.port in trace.proxy_ports else None
    if trace.outcome is not Outcome.DELIVERED or trace.delivered_to is None:
        return None
    return _socket_node(trace, trace.delivered_to, pod)


def _socket_node(trace: FlowTrace, where: Endpoint, pod: frozenset[IPAddress]) -> str:
    if not _is_local(where.address, pod):
        return f"peer:{_peer_role(trace, where)}"
    if where.port in trace.proxy_ports:
        return f"listener:{where.port}"
    if where.port == ADMIN_PORT:
        return "admin"
    if where.port in AGENT_PORTS:
        return "agent"
    return "app"


def _peer_role(trace: FlowTrace, where: Endpoint) -> str:
    if where.address == trace.spec.destination.address:
        return {FlowType.SIDECAR_TO_ISTIOD: "istiod", FlowType.DNS: "dns", FlowType.LOCAL_TO_LOCAL: "service"}.get(
            trace.type, "remote"
        )
    return f"other-{where.address}"


# -- words -------------------------------------------------------------------------------------------


def path_summary(trace: FlowTrace) -> str:
    """A flow's path on one line: rules → … ⇒ Envoy port ⇒ … ⇒ where it ended (plain text)."""
    parts: list[str] = []
    for index, leg in enumerate(trace.legs):
        parts.append(" → ".join(leg.rules) or "(no rule)")
        if index < len(trace.proxy_ports):
            parts.append(f"{'ztunnel' if trace.ztunnel_ports else 'Envoy'} {trace.proxy_ports[index]}")
    if trace.outcome is Outcome.DELIVERED:
        parts.append(str(trace.delivered_to))
    else:
        parts.append(trace.outcome.value.upper())
    return " ⇒ ".join(parts)


def flow_label(report: FlowReport) -> str:
    """`4 local pod -> its own pod IP (no Service)`: type number and name."""
    return f"{int(report.spec.type)} {report.spec.name}"


def status_word(report: FlowReport) -> str:
    """`✓ ok`, `✗ drift`, `✗ broken (refused)`, `? unknown`: the status in words and a mark."""
    status = report.status
    if status is FlowStatus.OK:
        return "✓ ok"
    if status is FlowStatus.BROKEN:
        return f"✗ broken ({report.live.outcome.value})"
    return f"{STATUS_MARK[status]} {status.value}"


def _proxy_note(expl: Explanation) -> str:
    uids = sorted(
        {
            leg.identity.uid
            for r in expl.flows
            for leg in r.live.legs
            if leg.actor is Actor.PROXY and leg.identity is not None
        }
    )
    return f"uid {uids[0]}" if uids else "connections"


ZTUNNEL_SOCKETS = {15008: "HBONE", 15006: "plaintext in", 15001: "outbound", 15053: "DNS proxy"}


def node_caption(expl: Explanation, node: str, proxy: str = "Envoy") -> tuple[str, str]:
    """A node's name and a second line (a port's role, an identity, an address)."""
    kind, _, key = node.partition(":")
    if kind == "chain":
        return key, ""
    if kind == "listener":
        port = int(key)
        if proxy == "ztunnel":
            return f"ztunnel {key}", ZTUNNEL_SOCKETS.get(port, "socket")
        return f"Envoy {key}", STANDARD_LISTENERS.get(port) or LISTENER_NAMES.get(port, "listener")
    if node == "proxy" and proxy == "ztunnel":
        return "ztunnel upstream", _proxy_note(expl)
    if kind == "void":
        return f":{key}", "nothing listens"
    if kind == "peer":
        return _peer_names(expl, key)
    return {
        "app": ("app", _app_note(expl)),
        "proxy": ("Envoy upstream", _proxy_note(expl)),
        "admin": ("admin 15000", "Envoy's admin"),
        "agent": ("pilot-agent", "15020, 15053"),
    }[node]


def _app_note(expl: Explanation) -> str:
    uids = sorted(
        {
            leg.identity.uid
            for r in expl.flows
            for leg in r.live.legs[:1]
            if r.spec.actor is Actor.APP and leg.identity is not None
        }
    )
    return f"uid {uids[0]}" if uids else "container"


def _peer_names(expl: Explanation, role: str) -> tuple[str, str]:
    by_type = {r.spec.type: r.spec for r in expl.flows if r.spec.variant is None}
    if role == "client":
        spec = by_type.get(FlowType.REMOTE_TO_LOCAL)
        return "remote client", str(spec.source) if spec and spec.source else ""
    if role == "remote":
        spec = by_type.get(FlowType.LOCAL_TO_REMOTE)
        return "remote pod", str(spec.destination.address) if spec else ""
    if role == "prometheus":
        spec = by_type.get(FlowType.PROMETHEUS_TO_LOCAL)
        return "Prometheus", str(spec.source) if spec and spec.source else ""
    if role == "istiod":
        spec = by_type.get(FlowType.SIDECAR_TO_ISTIOD)
        return "istiod", str(spec.destination) if spec else ""
    if role == "dns":
        dns = [r.spec for r in expl.flows if r.spec.type is FlowType.DNS]
        return "cluster DNS", str(dns[0].destination) if dns else ""
    if role == "service":
        spec = by_type.get(FlowType.LOCAL_TO_LOCAL)
        return "Service VIP", str(spec.destination) if spec else ""
    return "outside", role.removeprefix("other-")
