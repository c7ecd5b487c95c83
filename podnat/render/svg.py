"""A pod's flows as a picture: the classic six-path schematic, drawn as SVG text. Pure.

The pod box holds the app, Envoy (its listeners 15001, 15006, 15090 and any other it crossed) and
pilot-agent on top, and one box per iptables chain below. Each flow is a coloured route in its own
lane: it enters every chain it crosses (the rule numbers it took are written in its lane), rises to
the listener or socket a leg ends at, and leaves for the peer outside the pod. Routes between chains
run in a corridor below the chains, routes to anything else in a corridor above them, so a line
never crosses a box it does not visit. Flows that drifted or broke are dashed and end in a red ✗.

`flow_stops` (the nodes a flow visits, in order) is shared with the mermaid renderer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from xml.sax.saxutils import escape

from podnat.istio.explain import Explanation, FlowReport, FlowStatus
from podnat.istio.flows import Actor, Endpoint, FlowType
from podnat.istio.paths import FlowTrace, Leg, Outcome
from podnat.netfilter.model import IPAddress

SANS = "DejaVu Sans, sans-serif"
MONO = "DejaVu Sans Mono, monospace"
FLOW_COLOURS = {
    FlowType.REMOTE_TO_LOCAL: "#1f6fb4",
    FlowType.LOCAL_TO_REMOTE: "#e08a00",
    FlowType.PROMETHEUS_TO_LOCAL: "#2a9d58",
    FlowType.LOCAL_TO_LOCAL: "#9b4dca",
    FlowType.ENVOY_LOCALHOST: "#139fb0",
    FlowType.SIDECAR_TO_ISTIOD: "#8a6a1c",
    FlowType.DNS: "#c2185b",
}
BAD = "#d62728"
FAILING = (FlowStatus.DRIFT, FlowStatus.BROKEN, FlowStatus.UNKNOWN)
STATUS_MARK = {FlowStatus.OK: "✓", FlowStatus.DRIFT: "✗", FlowStatus.BROKEN: "✗", FlowStatus.UNKNOWN: "?"}
STANDARD_CHAINS = ("PREROUTING", "ISTIO_INBOUND", "ISTIO_IN_REDIRECT", "INPUT",
                   "OUTPUT", "ISTIO_OUTPUT", "ISTIO_REDIRECT")
STANDARD_LISTENERS = {15001: "outbound", 15006: "inbound", 15090: "Prometheus"}
LISTENER_NAMES = {15021: "health", 15008: "HBONE", 15020: "merged metrics"}
ADMIN_PORT = 15000
AGENT_PORTS = (15020, 15053)

# Geometry (px). The canvas is at least 1200 wide and grows only for extra chains or listeners.
WIDTH = 1200
MARGIN = 20
PEER_W, PEER_H = 120, 54
POD_X = MARGIN + PEER_W + 36
BOX_W, BOX_GAP = 108, 10
LISTENER_W = 90
TOP_Y, TOP_H = 110, 54
UP_Y, UP_BAND = 206, 18  # the upper corridor: one band per lane, one sub-track per leg
LOW_BAND = 9
LEGEND_LINE = 15


@dataclass(frozen=True, slots=True)
class Stop:
    """A node a flow visits: a chain (with the rule numbers it took there), a listener, a socket, a peer."""

    node: str  # chain:NAME | listener:PORT | app | admin | agent | proxy | void:PORT | peer:ROLE
    rules: tuple[str, ...] = ()  # rule numbers taken in this chain, in order
    leg: int = 0


@dataclass(frozen=True, slots=True)
class _Box:
    node: str
    x: float
    y: float
    w: float
    h: float
    title: str
    note: str = ""

    @property
    def cx(self) -> float:
        return self.x + self.w / 2

    @property
    def cy(self) -> float:
        return self.y + self.h / 2


# -- what a flow visits ------------------------------------------------------------------------------


def flow_stops(report: FlowReport, pod_addresses: frozenset[IPAddress]) -> tuple[Stop, ...]:
    """The nodes `report`'s live path visits, from where it starts to where it ends."""
    trace = report.live
    stops = [Stop(_start_node(trace))]
    for index, leg in enumerate(trace.legs):
        last = index == len(trace.legs) - 1
        for chain, numbers in _chain_visits(leg):
            stops.append(Stop(f"chain:{chain}", numbers, index))
        if leg.actor is Actor.REMOTE and _reaches_a_local_socket(trace, leg, last, pod_addresses) \
                and "INPUT" not in (chain for chain, _ in _chain_visits(leg)):
            # nat INPUT runs for the first packet delivered to a local socket (no rule: the chain is empty).
            stops.append(Stop("chain:INPUT", (), index))
        if index < len(trace.envoy_ports):
            stops.append(Stop(f"listener:{trace.envoy_ports[index]}", (), index))
    end = _end_node(trace, pod_addresses)
    if end is not None and end != stops[-1].node:
        stops.append(Stop(end, (), len(trace.legs) - 1))
    return tuple(stops)


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


def _chain_visits(leg: Leg) -> Iterator[tuple[str, tuple[str, ...]]]:
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
        return "peer:prometheus" if trace.type is FlowType.PROMETHEUS_TO_LOCAL else "peer:remote"
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
        return f"listener:{to.port}" if to is not None and to.port in trace.envoy_ports else None
    if trace.outcome is not Outcome.DELIVERED or trace.delivered_to is None:
        return None
    return _socket_node(trace, trace.delivered_to, pod)


def _socket_node(trace: FlowTrace, where: Endpoint, pod: frozenset[IPAddress]) -> str:
    if not _is_local(where.address, pod):
        return f"peer:{_peer_role(trace, where)}"
    if where.port in trace.envoy_ports:
        return f"listener:{where.port}"
    if where.port == ADMIN_PORT:
        return "admin"
    if where.port in AGENT_PORTS:
        return "agent"
    return "app"


def _peer_role(trace: FlowTrace, where: Endpoint) -> str:
    if where.address == trace.spec.destination.address:
        return {FlowType.SIDECAR_TO_ISTIOD: "istiod", FlowType.DNS: "dns",
                FlowType.LOCAL_TO_LOCAL: "service"}.get(trace.type, "remote")
    return f"other-{where.address}"


# -- text ----------------------------------------------------------------------------------------------


def path_summary(trace: FlowTrace) -> str:
    """A flow's path on one line: rules → … ⇒ Envoy port ⇒ … ⇒ where it ended (plain text)."""
    parts: list[str] = []
    for index, leg in enumerate(trace.legs):
        parts.append(" → ".join(leg.rules) or "(no rule)")
        if index < len(trace.envoy_ports):
            parts.append(f"Envoy {trace.envoy_ports[index]}")
    if trace.outcome is Outcome.DELIVERED:
        parts.append(str(trace.delivered_to))
    else:
        parts.append(trace.outcome.value.upper())
    return " ⇒ ".join(parts)


def flow_label(report: FlowReport) -> str:
    """`4 local pod -> its own pod IP (no Service)`: type number and name."""
    return f"{int(report.spec.type)} {report.spec.name}"


def status_word(report: FlowReport) -> str:
    status = report.status
    if status is FlowStatus.OK:
        return "✓ ok"
    if status is FlowStatus.BROKEN:
        return f"✗ broken ({report.live.outcome.value})"
    return f"{STATUS_MARK[status]} {status.value}"


def _wrap(text: str, width: int) -> list[str]:
    """Break `text` at spaces into lines of at most `width` characters (longer words stay whole)."""
    lines: list[str] = []
    line = ""
    for word in text.split(" "):
        candidate = f"{line} {word}" if line else word
        if len(candidate) > width and line:
            lines.append(line)
            line = word
        else:
            line = candidate
    if line:
        lines.append(line)
    return lines


def _n(value: float) -> str:
    """A coordinate as short, stable text."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _text(x: float, y: float, content: str, size: float = 12, *, anchor: str = "start",
          weight: str = "normal", fill: str = "#222", family: str = SANS, extra: str = "") -> str:
    bold = ' font-weight="bold"' if weight == "bold" else ""
    return (f'<text x="{_n(x)}" y="{_n(y)}" font-family="{family}" font-size="{_n(size)}" '
            f'text-anchor="{anchor}" fill="{fill}"{bold}{extra}>{escape(content)}</text>')


def _rect(box: _Box, fill: str, stroke: str, *, dash: str = "", radius: int = 6, width: float = 1.2) -> str:
    dashed = f' stroke-dasharray="{dash}"' if dash else ""
    return (f'<rect x="{_n(box.x)}" y="{_n(box.y)}" width="{_n(box.w)}" height="{_n(box.h)}" rx="{radius}" '
            f'fill="{fill}" stroke="{stroke}" stroke-width="{_n(width)}"{dashed}/>')


# -- layout --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Layout:
    boxes: dict[str, _Box]
    envoy: _Box
    pod: _Box
    lanes: int
    width: float
    low_y: float  # top of the lower corridor

    def lane_x(self, node: str, lane: int) -> float:
        box = self.boxes[node]
        step = min(12.0, (box.w - 12) / max(self.lanes, 1))
        start = box.cx - step * (self.lanes - 1) / 2
        return start + lane * step

    def low(self, lane: int) -> float:
        return self.low_y + 12 + LOW_BAND * lane


def _layout(expl: Explanation, stops: list[tuple[Stop, ...]]) -> _Layout:
    visited = [stop.node for route in stops for stop in route]
    chains = list(STANDARD_CHAINS) + sorted(
        {node[6:] for node in visited if node.startswith("chain:")} - set(STANDARD_CHAINS),
        key=lambda chain: visited.index(f"chain:{chain}"))
    listeners = sorted(set(STANDARD_LISTENERS) | {int(n[9:]) for n in visited if n.startswith("listener:")})
    voids = sorted({int(n[5:]) for n in visited if n.startswith("void:")})
    lanes = len(expl.flows)
    most_rules = max((sum(len(s.rules) or 1 for s in route if s.node == node)
                      for route in stops for node in {s.node for s in route} if node.startswith("chain:")),
                     default=1)
    chain_h = 34 + 13 * max(most_rules, 2)

    boxes: dict[str, _Box] = {}
    x = POD_X + 16
    boxes["app"] = _Box("app", x, TOP_Y, BOX_W, TOP_H, *node_caption(expl, "app"))
    x += BOX_W + 18
    envoy_x = x
    x += 10
    for node in ["proxy", *(f"listener:{port}" for port in listeners), "admin"]:
        boxes[node] = _Box(node, x, TOP_Y, LISTENER_W, TOP_H, *node_caption(expl, node))
        x += LISTENER_W + 6
    envoy = _Box("envoy", envoy_x, TOP_Y - 28, x + 4 - envoy_x, TOP_H + 38, "Envoy (istio-proxy)")
    x += 22
    agent = ["agent"] if "agent" in visited else []  # pilot-agent appears when a flow reaches it
    for node in [*agent, *(f"void:{port}" for port in voids)]:
        boxes[node] = _Box(node, x, TOP_Y, BOX_W, TOP_H, *node_caption(expl, node))
        x += BOX_W + 14
    top_right = x

    chain_y = UP_Y + UP_BAND * lanes + 4  # the upper corridor sits between the top row and the chains
    x = POD_X + 16
    for chain in chains:
        boxes[f"chain:{chain}"] = _Box(f"chain:{chain}", x, chain_y, BOX_W, chain_h, chain)
        x += BOX_W + BOX_GAP
    pod_right = max(top_right, x) + 6
    low_y = chain_y + chain_h
    pod = _Box("pod", POD_X, 48, pod_right - POD_X, low_y + 20 + LOW_BAND * lanes - 48, "pod")
    width = max(WIDTH, pod_right + 36 + PEER_W + MARGIN)

    roles = [n[5:] for n in dict.fromkeys(visited) if n.startswith("peer:")]
    left = [r for r in ("remote", "prometheus") if r in roles]
    right = [r for r in roles if r not in left]
    for column, peers in ((MARGIN, left), (width - MARGIN - PEER_W, right)):
        y = UP_Y - 30
        for role in peers:
            boxes[f"peer:{role}"] = _Box(f"peer:{role}", column, y, PEER_W, PEER_H,
                                         *node_caption(expl, f"peer:{role}"))
            y += PEER_H + 22
    return _Layout(boxes, envoy, pod, lanes, width, low_y)


def _proxy_note(expl: Explanation) -> str:
    uids = sorted({leg.identity.uid for r in expl.flows for leg in r.live.legs
                   if leg.actor is Actor.PROXY and leg.identity is not None})
    return f"uid {uids[0]}" if uids else "connections"


def node_caption(expl: Explanation, node: str) -> tuple[str, str]:
    """A node's name and a second line (a port's role, an identity, an address)."""
    kind, _, key = node.partition(":")
    if kind == "chain":
        return key, ""
    if kind == "listener":
        port = int(key)
        return key, STANDARD_LISTENERS.get(port) or LISTENER_NAMES.get(port, "listener")
    if kind == "void":
        return f":{key}", "nothing listens"
    if kind == "peer":
        return _peer_names(expl, key)
    return {"app": ("app", _app_note(expl)), "proxy": ("upstream", _proxy_note(expl)),
            "admin": ("admin 15000", "socket"), "agent": ("pilot-agent", "15020, 15053")}[node]


def _app_note(expl: Explanation) -> str:
    uids = sorted({leg.identity.uid for r in expl.flows for leg in r.live.legs[:1]
                   if r.spec.actor is Actor.APP and leg.identity is not None})
    return f"uid {uids[0]}" if uids else "container"


def _peer_names(expl: Explanation, role: str) -> tuple[str, str]:
    by_type = {r.spec.type: r.spec for r in expl.flows if r.spec.variant is None}
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


# -- routes --------------------------------------------------------------------------------------------


def _riser(layout: _Layout, node: str, lane: int, leg: int, down: bool) -> list[tuple[float, float]]:
    """Points from `node` (in `lane`) to its corridor: the lower one between chains, else the upper one."""
    box = layout.boxes[node]
    if node.startswith("chain:"):
        x = layout.lane_x(node, lane)
        if down:
            return [(x, box.y + box.h - 6), (x, layout.low(lane))]
        return [(x, box.y + 28), (x, _up(layout, lane, leg))]
    if node.startswith("peer:"):
        leftward = box.x < layout.pod.x
        edge = box.x + box.w if leftward else box.x
        jog = edge + (6 + 4 * lane) * (1 if leftward else -1)
        y = box.y + 12 + (box.h - 24) * (lane + 0.5) / max(layout.lanes, 1)
        return [(edge, y), (jog, y), (jog, _up(layout, lane, leg))]
    x = layout.lane_x(node, lane)
    return [(x, box.y + box.h), (x, _up(layout, lane, leg))]


def _up(layout: _Layout, lane: int, leg: int) -> float:
    return UP_Y + UP_BAND * lane + 4 * (leg % 4)


def _connect(layout: _Layout, a: Stop, b: Stop, lane: int) -> list[tuple[float, float]]:
    low = a.node.startswith("chain:") and b.node.startswith("chain:")
    leg = b.leg
    start = _riser(layout, a.node, lane, leg, low)
    end = _riser(layout, b.node, lane, leg, low)
    return start + end[::-1]


def _polyline(points: list[tuple[float, float]]) -> str:
    kept: list[tuple[float, float]] = []
    for point in points:
        if not kept or kept[-1] != point:
            kept.append(point)
    return " ".join(f"{_n(x)},{_n(y)}" for x, y in kept)


def _arrow(points: list[tuple[float, float]], colour: str) -> str:
    (x1, y1), (x2, y2) = points[-2], points[-1]
    if abs(x2 - x1) > abs(y2 - y1):
        d = 1 if x2 > x1 else -1
        shape = [(x2, y2), (x2 - 8 * d, y2 - 4), (x2 - 8 * d, y2 + 4)]
    else:
        d = 1 if y2 > y1 else -1
        shape = [(x2, y2), (x2 - 4, y2 - 8 * d), (x2 + 4, y2 - 8 * d)]
    return f'<polygon points="{_polyline(shape)}" fill="{colour}"/>'


def _route(layout: _Layout, report: FlowReport, lane: int, stops: tuple[Stop, ...]) -> list[str]:
    colour = FLOW_COLOURS.get(report.spec.type, "#555")
    failing = report.status in FAILING
    out = [f'<g class="flow" data-type="{int(report.spec.type)}" data-status="{report.status.value}">',
           f"<title>{escape(flow_label(report))}: {escape(path_summary(report.live))}</title>"]
    segments = [_connect(layout, a, b, lane) for a, b in pairwise(stops)]
    points = [p for segment in segments for p in segment]
    if failing:
        out.append(f'<polyline points="{_polyline(points)}" fill="none" stroke="{BAD}" stroke-width="6" '
                   'stroke-opacity="0.3" stroke-linejoin="round"/>')
    dash = ' stroke-dasharray="7 4"' if failing else ""
    out.append(f'<polyline points="{_polyline(points)}" fill="none" stroke="{colour}" stroke-width="2.2" '
               f'stroke-linejoin="round"{dash}/>')
    for segment, stop in zip(segments, stops[1:], strict=True):
        if not stop.node.startswith("chain:"):
            out.append(_arrow(segment, colour))
    if failing and points:
        x, y = points[-1]
        if stops[-1].node.startswith("chain:"):
            box = layout.boxes[stops[-1].node]
            y = box.y + box.h + 12
        out.append(_text(x, y + 6, "✗" if report.status is not FlowStatus.UNKNOWN else "?", 20,
                         anchor="middle", weight="bold", fill=BAD))
    out.append("</g>")
    return out


def _rule_tags(layout: _Layout, reports: tuple[FlowReport, ...], stops: list[tuple[Stop, ...]]) -> list[str]:
    """The rule numbers each flow took, written in its lane inside each chain box, one per row."""
    out: list[str] = []
    rows: dict[tuple[str, int], int] = {}
    for lane, (report, route) in enumerate(zip(reports, stops, strict=True)):
        colour = FLOW_COLOURS.get(report.spec.type, "#555")
        for stop in route:
            if not stop.node.startswith("chain:"):
                continue
            box = layout.boxes[stop.node]
            x = layout.lane_x(stop.node, lane)
            chain = stop.node[6:]
            for number in stop.rules or ("·",):
                row = rows.get((stop.node, lane), 0)
                rows[(stop.node, lane)] = row + 1
                y = box.y + 36 + 13 * row
                wide = 5 + 3.5 * len(number)
                label = f"{chain}:{number}" if number != "·" else f"{chain} (no rule: policy)"
                out.append(f'<g><title>{escape(flow_label(report))}: {escape(label)}</title>'
                           f'<rect x="{_n(x - wide / 2)}" y="{_n(y - 9)}" width="{_n(wide)}" height="11" '
                           f'rx="3" fill="{colour}"/>'
                           + _text(x, y, number, 9, anchor="middle", weight="bold", fill="#fff", family=MONO)
                           + "</g>")
    return out


# -- the picture ---------------------------------------------------------------------------------------


def diagram_svg(expl: Explanation, title: str) -> str:
    """The pod, its chains and every flow's route through them, as a standalone SVG document."""
    pod = pod_addresses(expl)
    stops = [flow_stops(report, pod) for report in expl.flows]
    layout = _layout(expl, stops)
    legend_top = layout.pod.y + layout.pod.h + 34
    legend, legend_h = _legend(expl, legend_top, layout.width)
    height = legend_top + legend_h + MARGIN
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_n(layout.width)}" height="{_n(height)}" '
           f'viewBox="0 0 {_n(layout.width)} {_n(height)}" font-family="{SANS}">',
           f"<title>{escape(title)}</title>",
           f'<rect x="0" y="0" width="{_n(layout.width)}" height="{_n(height)}" fill="#ffffff"/>',
           _text(MARGIN, 30, title, 18, weight="bold"),
           _text(layout.width - MARGIN, 30, _summary(expl), 13, anchor="end", fill="#444")]
    out += _frame(expl, layout, pod)
    for lane, (report, route) in enumerate(zip(expl.flows, stops, strict=True)):
        out += _route(layout, report, lane, route)
    out += _rule_tags(layout, expl.flows, stops)
    out += _chain_titles(layout)
    out += legend
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _summary(expl: Explanation) -> str:
    counts: dict[str, int] = {}
    for report in expl.flows:
        counts[report.status.value] = counts.get(report.status.value, 0) + 1
    order = [s.value for s in FlowStatus]
    return f"{len(expl.flows)} flows: " + ", ".join(f"{counts[s]} {s}" for s in order if s in counts)


def _frame(expl: Explanation, layout: _Layout, pod: frozenset[IPAddress]) -> list[str]:
    """The pod, its containers, listeners, chains and peers (everything but the routes)."""
    box = layout.pod
    addresses = sorted((a for a in pod if not a.is_loopback), key=lambda a: (a.version, int(a)))
    name = "pod " + ", ".join(map(str, addresses)) if addresses else "pod"
    out = [_rect(box, "#fafafa", "#555", radius=12, width=1.6),
           _text(box.x + 12, box.y + 20, name, 13, weight="bold"),
           _rect(layout.envoy, "#eef5fb", "#5b8db8", radius=8),
           _text(layout.envoy.x + 10, layout.envoy.y + 18, "Envoy (istio-proxy)", 12, weight="bold",
                 fill="#2c5d87")]
    first_chain = layout.boxes["chain:PREROUTING"]
    out.append(_text(first_chain.x, first_chain.y - 6, "iptables chains (rule numbers each flow took)", 11,
                     fill="#666"))
    for node, item in layout.boxes.items():
        if node.startswith("chain:"):
            out.append(_rect(item, "#fff8e6", "#b08a2e", radius=4))
            continue
        if node.startswith("void:"):
            out.append(_rect(item, "#fdecec", BAD, dash="5 3"))
            fill = BAD
        elif node.startswith("peer:"):
            out.append(_rect(item, "#f1f1f1", "#777", radius=10))
            fill = "#222"
        elif node.startswith("listener:") or node in ("admin", "proxy"):
            out.append(_rect(item, "#ffffff", "#5b8db8"))
            fill = "#2c5d87"
        else:
            out.append(_rect(item, "#eef8ef", "#4f9a5c"))
            fill = "#2d6b37"
        out.append(_text(item.cx, item.y + 20, item.title, 13, anchor="middle", weight="bold", fill=fill))
        if item.note:
            out.append(_text(item.cx, item.y + 38, item.note, 10.5, anchor="middle", fill="#555"))
    return out


def _chain_titles(layout: _Layout) -> list[str]:
    """Chain names, drawn over the routes with a halo so the lanes crossing them do not hide them."""
    halo = ' stroke="#fff8e6" stroke-width="4" paint-order="stroke"'
    return [_text(box.cx, box.y + 16, box.title, 10.5 if len(box.title) < 17 else 9, anchor="middle",
                  weight="bold", family=MONO, extra=halo)
            for node, box in layout.boxes.items() if node.startswith("chain:")]


def _legend(expl: Explanation, top: float, width: float) -> tuple[list[str], float]:
    x_name, x_status, x_path = MARGIN + 52, MARGIN + 362, MARGIN + 522
    chars = int((width - MARGIN - x_path) / 6.9)
    out = [_text(MARGIN, top, "flow", 12, weight="bold"), _text(x_status, top, "status", 12, weight="bold"),
           _text(x_path, top, "path: chain:rule → … ⇒ Envoy listener ⇒ where it ended", 12, weight="bold")]
    y = top + 20
    for report in expl.flows:
        colour = FLOW_COLOURS.get(report.spec.type, "#555")
        failing = report.status in FAILING
        dash = ' stroke-dasharray="7 4"' if failing else ""
        out.append(f'<line x1="{MARGIN}" y1="{_n(y - 4)}" x2="{MARGIN + 34}" y2="{_n(y - 4)}" '
                   f'stroke="{colour}" stroke-width="3"{dash}/>')
        out.append(_text(x_name - 10, y, str(int(report.spec.type)), 12, anchor="end", weight="bold",
                         fill=colour))
        name_lines = _wrap(report.spec.name, 44)
        for row, line in enumerate(name_lines):
            out.append(_text(x_name, y + LEGEND_LINE * row, line, 12))
        out.append(_text(x_status, y, status_word(report), 12, weight="bold",
                         fill=BAD if failing else "#2d6b37"))
        lines = [(line, "#222") for line in _wrap(path_summary(report.live), chars)]
        if failing and report.expected is not None:
            lines += [(line, "#777") for line in _wrap("expected: " + path_summary(report.expected), chars)]
        for row, (line, fill) in enumerate(lines):
            out.append(_text(x_path, y + LEGEND_LINE * row, line, 11, fill=fill, family=MONO))
        y += LEGEND_LINE * max(len(lines), len(name_lines)) + 7
    return out, y - top
