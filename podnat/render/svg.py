"""A pod's flows as pictures: one panel per flow, like the classic six-traffic-types schematics. Pure.

Every panel draws the pod's layout faintly (the inbound chains on the left, the outbound chains on the
right, the app and Envoy's listeners between them, the peers outside) and one flow strongly: its route
through the chains it crosses, a badge with the number of every rule it takes on the route, the Envoy
listener it enters and where it ends. A flow that drifted or broke is red, ends in a ✗, has the rule
where its path leaves Istio's marked with a ring, and the route Istio meant drawn beside it, dotted and
offset. Routes run in the gutters between boxes (no line crosses a box it does not visit); a leg that
revisits a chain (Envoy's own connection) runs on its own track.

`diagram_svg` is every panel of a pod in one document (the `--diagram` file); `panel_svg` one panel
(the HTML report shows the panel of the flow row clicked). The model is podnat/render/diagram.py,
shared with the mermaid and HTML renderers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise
from xml.sax.saxutils import escape

from podnat.istio.explain import Explanation, FlowStatus
from podnat.istio.flows import FlowType
from podnat.render.diagram import (
    FAILING,
    Diagram,
    Panel,
    Stop,
    build_diagram,
    flow_label,
    flow_stops,
    node_caption,
    path_summary,
    pod_addresses,
    status_word,
)

__all__ = [
    "BAD",
    "FAILING",
    "FLOW_COLOURS",
    "diagram_svg",
    "flow_stops",
    "node_caption",
    "panel_svg",
    "path_summary",
    "pod_addresses",
    "status_word",
]

SANS = "DejaVu Sans, sans-serif"
MONO = "DejaVu Sans Mono, monospace"
# Every colour carries white badge text and is read as text on white: each has a contrast of 4.5:1 or
# more against white (WCAG AA; tests/unit/test_render_diagrams.py computes it).
FLOW_COLOURS = {
    FlowType.REMOTE_TO_LOCAL: "#1a5a9a",
    FlowType.LOCAL_TO_REMOTE: "#9a5200",
    FlowType.PROMETHEUS_TO_LOCAL: "#1d7040",
    FlowType.LOCAL_TO_LOCAL: "#7a3ea6",
    FlowType.ENVOY_LOCALHOST: "#0b6b76",
    FlowType.SIDECAR_TO_ISTIOD: "#6f5410",
    FlowType.DNS: "#a3124f",
    FlowType.KUBELET_PROBE: "#5d6d7e",
}
BAD = "#c62828"
EXPECTED = "#505050"
FAINT_STROKE, FAINT_FILL, FAINT_TEXT = "#c9c9c9", "#fafafa", "#707070"
INK = "#1a1a1a"

# Geometry (px): six columns (peers in, inbound chains, two of app/Envoy, outbound chains, peers out).
COLUMNS = (104, 128, 112, 112, 128, 104)
GUTTER = 34
PAD = 12
BOX_H = 52
HEAD = 46
LEG_STEP = 4  # tracks of the legs of one route, in a gutter
EXPECTED_SHIFT = 6  # the live route runs this far left/above a gutter's middle, the expected right/below
CAPTION_LINE = 15
PANEL_GAP = 16


@dataclass(frozen=True, slots=True)
class _Box:
    node: str
    col: int
    row: int
    x: float
    y: float
    w: float
    h: float

    @property
    def cx(self) -> float:
        return self.x + self.w / 2


@dataclass(frozen=True, slots=True)
class _Grid:
    boxes: dict[str, _Box]
    col_x: tuple[float, ...]
    rows: int
    width: float
    bottom: float  # below the last row's gutter

    def row_y(self, row: int) -> float:
        return HEAD + GUTTER + row * (BOX_H + GUTTER)

    def gutter_x(self, col: int, side: int) -> float:
        """The vertical gutter left (side -1) or right (+1) of column `col`."""
        return self.col_x[col] - GUTTER / 2 if side < 0 else self.col_x[col] + COLUMNS[col] + GUTTER / 2

    def gutter_y(self, row: int, side: int) -> float:
        return self.row_y(row) - GUTTER / 2 if side < 0 else self.row_y(row) + BOX_H + GUTTER / 2


def _grid(diagram: Diagram) -> _Grid:
    col_x = [float(PAD)]
    for column_width in COLUMNS[:-1]:
        col_x.append(col_x[-1] + column_width + GUTTER)
    cells: dict[str, tuple[int, int]] = {}
    for row, node in enumerate(diagram.left):
        cells[node] = (0, row)
    for row, node in enumerate(diagram.inbound):
        cells[node] = (1, row)
    for row, node in enumerate(diagram.outbound):
        cells[node] = (4, row)
    for row, node in enumerate(diagram.right):
        cells[node] = (5, row)
    middle = [n for n in diagram.middle if n not in ("app", "agent") and not n.startswith("void:")]
    cells["app"] = (2, 0)
    if "agent" in diagram.middle:
        cells["agent"] = (3, 0)
    for index, node in enumerate(middle):
        cells[node] = (2 + index % 2, 1 + index // 2)
    free = [(3, 0)] if "agent" not in diagram.middle else []
    row = 1 + (len(middle) + 1) // 2
    for node in (n for n in diagram.middle if n.startswith("void:")):
        cells[node] = free.pop() if free else (2 + row % 2, row)
        row += 1
    rows = max(row for _, row in cells.values()) + 1
    boxes = {
        node: _Box(node, col, row, col_x[col], HEAD + GUTTER + row * (BOX_H + GUTTER), COLUMNS[col], BOX_H)
        for node, (col, row) in cells.items()
    }
    width = col_x[-1] + COLUMNS[-1] + PAD
    return _Grid(boxes, tuple(col_x), rows, width, HEAD + GUTTER + rows * (BOX_H + GUTTER))


# -- text helpers --------------------------------------------------------------------------------------


def _n(value: float) -> str:
    """A coordinate as short, stable text."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _text(
    x: float,
    y: float,
    content: str,
    size: float = 12,
    *,
    anchor: str = "start",
    weight: str = "normal",
    fill: str = INK,
    family: str = SANS,
    extra: str = "",
) -> str:
    bold = ' font-weight="bold"' if weight == "bold" else ""
    return (
        f'<text x="{_n(x)}" y="{_n(y)}" font-family="{family}" font-size="{_n(size)}" '
        f'text-anchor="{anchor}" fill="{fill}"{bold}{extra}>{escape(content)}</text>'
    )


def _rect(
    x: float,
    y: float,
    w: float,
    h: float,
    fill: str,
    stroke: str,
    *,
    radius: float = 6,
    width: float = 1.2,
    dash: str = "",
    extra: str = "",
) -> str:
    dashed = f' stroke-dasharray="{dash}"' if dash else ""
    return (
        f'<rect x="{_n(x)}" y="{_n(y)}" width="{_n(w)}" height="{_n(h)}" rx="{_n(radius)}" '
        f'fill="{fill}" stroke="{stroke}" stroke-width="{_n(width)}"{dashed}{extra}/>'
    )


def wrap_path(text: str, width: int) -> list[str]:
    """Break a path (`A → B ⇒ Envoy 15001 ⇒ …`) into lines of at most `width` characters, only before an
    arrow (a rule or `Envoy 15001` is never split; one longer than `width` gets a line of its own)."""
    pieces = re.split(r" (?=[→⇒] )", text)
    lines: list[str] = []
    for piece in pieces:
        if lines and len(lines[-1]) + 1 + len(piece) <= width:
            lines[-1] += " " + piece
        else:
            lines.append(piece)
    return lines


# -- routes --------------------------------------------------------------------------------------------


def _rel(stop: Stop, legs: int) -> float:
    """A leg's place among its route's legs, centred on 0."""
    return stop.leg - (legs - 1) / 2


def _offset(stop: Stop, legs: int, expected: bool) -> float:
    """A leg's track in a gutter: the live route's legs on one side of the middle, the expected's on the other."""
    return (EXPECTED_SHIFT if expected else -EXPECTED_SHIFT) + LEG_STEP * _rel(stop, legs)


def _anchor(grid: _Grid, stop: Stop, legs: int, expected: bool) -> tuple[float, float]:
    """Where a route passes through a box: its leg's track, below the box's name (the expected route lower)."""
    box = grid.boxes[stop.node]
    rel = _rel(stop, legs)
    return box.cx + 24 * rel + (7 if expected else 0), box.y + (41 if expected else 26) + 3 * rel


def _hop(grid: _Grid, a: Stop, b: Stop, legs: int, expected: bool) -> tuple[list[tuple[float, float]], int]:
    """The points from `a` to `b` through the gutters, and the side `b` is entered from (0 top/bottom)."""
    box_a, box_b = grid.boxes[a.node], grid.boxes[b.node]
    start, end = _anchor(grid, a, legs, expected), _anchor(grid, b, legs, expected)
    off = _offset(b, legs, expected)
    if box_a.col == box_b.col and abs(box_a.row - box_b.row) == 1:
        return [start, (end[0], start[1]), end], 0
    if box_a.col == box_b.col:
        side = 1 if box_a.col <= 2 else -1
        gx = grid.gutter_x(box_a.col, side) + off * side
        return [start, (gx, start[1]), (gx, end[1]), end], side
    side = 1 if box_b.col > box_a.col else -1
    gx_a = grid.gutter_x(box_a.col, side) + off
    if abs(box_b.col - box_a.col) == 1:
        return [start, (gx_a, start[1]), (gx_a, end[1]), end], -side
    row_side = -1 if box_b.row >= box_a.row else 1
    gy = grid.gutter_y(box_b.row, row_side) + off
    gx_b = grid.gutter_x(box_b.col, -side) + off
    return [start, (gx_a, start[1]), (gx_a, gy), (gx_b, gy), (gx_b, end[1]), end], -side


def _points(points: list[tuple[float, float]]) -> str:
    kept: list[tuple[float, float]] = []
    for point in points:
        if not kept or kept[-1] != point:
            kept.append(point)
    return " ".join(f"{_n(x)},{_n(y)}" for x, y in kept)


def _arrow(grid: _Grid, points: list[tuple[float, float]], stop: Stop, side: int, colour: str) -> str:
    """An arrowhead where the route enters `stop`'s box."""
    box = grid.boxes[stop.node]
    x, y = points[-1]
    if side == 0:
        down = points[0][1] < y
        tip = (x, box.y if down else box.y + box.h)
        d = 1 if down else -1
        shape = [tip, (tip[0] - 5, tip[1] - 9 * d), (tip[0] + 5, tip[1] - 9 * d)]
    else:
        tip = (box.x if side < 0 else box.x + box.w, y)
        d = -side
        shape = [tip, (tip[0] - 9 * d, tip[1] - 5), (tip[0] - 9 * d, tip[1] + 5)]
    return f'<polygon points="{_points(shape)}" fill="{colour}"/>'


def _route(grid: _Grid, stops: tuple[Stop, ...], colour: str, expected: bool, changed: str | None) -> list[str]:
    legs = max((stop.leg for stop in stops), default=0) + 1
    kind = "expected" if expected else "live"
    out = [f'<g class="route {kind}">']
    style = (
        f'stroke="{colour}" stroke-width="2" stroke-dasharray="2 4" stroke-linecap="round"'
        if expected
        else f'stroke="{colour}" stroke-width="3"'
    )
    arrows = []
    for a, b in pairwise(stops):
        points, side = _hop(grid, a, b, legs, expected)
        out.append(f'<polyline points="{_points(points)}" fill="none" {style} stroke-linejoin="round"/>')
        arrows.append(_arrow(grid, points, b, side, colour))
    out += arrows
    for stop in stops:
        if not stop.node.startswith("chain:"):
            continue
        x, y = _anchor(grid, stop, legs, expected)
        refs = stop.refs
        if not refs:
            out.append(
                _text(
                    x,
                    y + 4,
                    "policy",
                    9,
                    anchor="middle",
                    fill=colour,
                    extra=' stroke="#ffffff" stroke-width="3" paint-order="stroke"',
                )
            )
            continue
        for index, (number, ref) in enumerate(zip(stop.rules, refs, strict=True)):
            bx = x + (index - (len(refs) - 1) / 2) * 22
            w = 9 + 6.5 * len(number)
            fill, ink = ("#ffffff", colour) if expected else (colour, "#ffffff")
            ring = ""
            if ref == changed:
                ring = _rect(
                    bx - w / 2 - 4, y - 12, w + 8, 20, "none", BAD, radius=9, width=2.5, extra=' class="changed-ring"'
                )
            out.append(
                f'<g class="rule{" changed" if ref == changed else ""}" data-rule="{escape(ref)}">'
                f"<title>{escape(ref)}</title>"
                + _rect(bx - w / 2, y - 8, w, 13, fill, colour, radius=4, width=1.2)
                + _text(bx, y + 2.5, number, 10, anchor="middle", weight="bold", fill=ink, family=MONO)
                + ring
                + "</g>"
            )
    out.append("</g>")
    return out


# -- a panel -------------------------------------------------------------------------------------------


def _colour(panel: Panel) -> str:
    return BAD if panel.failing else FLOW_COLOURS.get(panel.report.spec.type, "#444444")


def _skeleton(diagram: Diagram, grid: _Grid, strong: set[str], colour: str, end: str | None) -> list[str]:
    """The pod, Envoy and every box: faint, except the boxes this flow visits."""
    envoy = [b for n, b in grid.boxes.items() if n.startswith("listener:") or n in ("proxy", "admin")]
    chains = [b for n, b in grid.boxes.items() if n.startswith("chain:")]
    pod = [b for b in grid.boxes.values() if 1 <= b.col <= 4]
    out = []
    if pod:
        x0, y0 = min(b.x for b in pod) - 10, HEAD + 6.0
        x1, y1 = max(b.x + b.w for b in pod) + 10, grid.bottom - 6
        name = "pod " + ", ".join(map(str, diagram.addresses)) if diagram.addresses else "pod"
        out.append(_rect(x0, y0, x1 - x0, y1 - y0, "none", "#9a9a9a", radius=12, width=1.2))
        out.append(_text(x0 + 10, y1 - 7, name, 11, weight="bold", fill=FAINT_TEXT))
    if envoy:
        x0, y0 = min(b.x for b in envoy) - 8, min(b.y for b in envoy) - 20
        x1, y1 = max(b.x + b.w for b in envoy) + 8, max(b.y + b.h for b in envoy) + 8
        out.append(_rect(x0, y0, x1 - x0, y1 - y0, "#f3f7fb", "#b9cde0", radius=8))
        name = "ztunnel (in-pod sockets)" if diagram.proxy == "ztunnel" else "Envoy (istio-proxy)"
        out.append(_text(x0 + 8, y0 + 13, name, 10, weight="bold", fill="#4d6a85"))
    if chains:
        for col, label in ((1, "inbound chains"), (4, "outbound chains")):
            if any(b.col == col for b in chains):
                out.append(
                    _text(grid.col_x[col] + COLUMNS[col] / 2, HEAD + 16, label, 10, anchor="middle", fill=FAINT_TEXT)
                )
    for node, box in grid.boxes.items():
        visited = node in strong
        void = node.startswith("void:")
        stroke = colour if visited else (BAD if void else FAINT_STROKE)
        fill = "#ffffff" if visited else ("#fdf0f0" if void else FAINT_FILL)
        width = 3 if node == end else 2 if visited else 1
        radius = 4 if node.startswith("chain:") else 12 if node.startswith("peer:") else 7
        out.append(
            _rect(
                box.x,
                box.y,
                box.w,
                box.h,
                fill,
                stroke,
                radius=radius,
                width=width,
                dash="5 3" if void else "",
                extra=f' class="node{" visited" if visited else ""}" data-node="{escape(node)}"',
            )
        )
    return out


def _labels(diagram: Diagram, grid: _Grid, strong: set[str]) -> list[str]:
    """Box names, on top of the routes (with a halo, so a route passing under one does not hide it)."""
    out = []
    for node, box in grid.boxes.items():
        title, note = diagram.captions[node]
        visited = node in strong
        fill = INK if visited else FAINT_TEXT
        halo = f' stroke="{"#ffffff" if visited else FAINT_FILL}" stroke-width="3" paint-order="stroke"'
        if node.startswith("chain:"):
            table, _, chain = title.rpartition("/")
            size = 10.5 if len(chain) <= 17 else 9
            out.append(
                _text(
                    box.cx, box.y + 14, chain, size, anchor="middle", weight="bold", fill=fill, family=MONO, extra=halo
                )
            )
            if table:
                out.append(_text(box.x + 4, box.y - 3, table, 8.5, fill=FAINT_TEXT, family=MONO))
            continue
        out.append(
            _text(
                box.cx,
                box.y + 15,
                title,
                11.5,
                anchor="middle",
                weight="bold",
                fill=BAD if node.startswith("void:") else fill,
                extra=halo,
            )
        )
        if note:
            out.append(
                _text(box.cx, box.y + 46, note, 9.5, anchor="middle", fill=fill if visited else FAINT_TEXT, extra=halo)
            )
    return out


def _panel_body(diagram: Diagram, grid: _Grid, panel: Panel) -> tuple[list[str], float]:
    """A panel's elements (origin at its top left) and its height."""
    colour = _colour(panel)
    report = panel.report
    strong = {stop.node for stop in panel.live}
    end = panel.live[-1].node if panel.live else None
    out = [_rect(0, 0, grid.width, 10, "#ffffff", "none", radius=0, width=0)]  # replaced below (height)
    out.append(_text(PAD, 24, flow_label(report), 15, weight="bold"))
    out.append(
        _text(
            grid.width - PAD,
            24,
            status_word(report),
            14,
            anchor="end",
            weight="bold",
            fill=BAD if panel.failing else "#1d6b35",
        )
    )
    if panel.expected is not None:
        out.append(
            _text(grid.width - PAD, 40, "solid: live path   dotted: what Istio meant", 10, anchor="end", fill="#555555")
        )
    out += _skeleton(diagram, grid, strong, colour, end)
    changed = panel.change.ref if panel.change is not None else None
    if panel.expected is not None:
        out += _route(
            grid, panel.expected, EXPECTED, True, changed if panel.change and panel.change.route == "expected" else None
        )
    out += _route(grid, panel.live, colour, False, changed if panel.change and panel.change.route == "live" else None)
    out += _labels(diagram, grid, strong)
    if panel.failing and end is not None:
        box = grid.boxes[end]
        out.append(
            _text(
                box.x + box.w - 2,
                box.y + 4,
                "✗" if report.status is not FlowStatus.UNKNOWN else "?",
                22,
                anchor="middle",
                weight="bold",
                fill=BAD,
                extra=' class="end-mark" stroke="#ffffff" stroke-width="3" paint-order="stroke"',
            )
        )
    y = grid.bottom + 4
    chars = int((grid.width - 2 * PAD) / 6.6)
    lines = [(line, INK) for line in wrap_path("path: " + path_summary(report.live), chars)]
    if panel.expected is not None and report.expected is not None:
        lines += [(line, "#4a4a4a") for line in wrap_path("expected: " + path_summary(report.expected), chars)]
    if panel.change is not None:
        lines += [(line, BAD) for line in _plain_wrap("✗ " + panel.change.why, chars)]
    for line, fill in lines:
        y += CAPTION_LINE
        out.append(_text(PAD, y, line, 11, fill=fill, family=MONO))
    height = y + 12
    out[0] = _rect(0, 0, grid.width, height, "#ffffff", "#d0d0d0", radius=8, width=1)
    return out, height


def _plain_wrap(text: str, width: int) -> list[str]:
    lines: list[str] = []
    for word in text.split(" "):
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def _panel_group(
    diagram: Diagram, grid: _Grid, panel: Panel, x: float, y: float, id_prefix: str = ""
) -> tuple[list[str], float]:
    body, height = _panel_body(diagram, grid, panel)
    spec = panel.report.spec
    variant = f' data-variant="{escape(spec.variant)}"' if spec.variant else ""
    head = (
        f'<g class="panel" id="{escape(id_prefix)}flow-{escape(panel.flow)}" data-flow="{escape(panel.flow)}" '
        f'data-type="{int(spec.type)}"{variant} data-status="{panel.report.status.value}" '
        f'transform="translate({_n(x)},{_n(y)})">'
    )
    title = f"<title>{escape(flow_label(panel.report))}: {escape(status_word(panel.report))}</title>"
    return [head, title, *body, "</g>"], height


def _document(width: float, height: float, title: str, body: list[str]) -> str:
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_n(width)}" height="{_n(height)}" '
        f'viewBox="0 0 {_n(width)} {_n(height)}" font-family="{SANS}" role="img">',
        f"<title>{escape(title)}</title>",
        f'<rect x="0" y="0" width="{_n(width)}" height="{_n(height)}" fill="#ffffff"/>',
        *body,
        "</svg>",
    ]
    return "\n".join(out) + "\n"


def diagram_svg(expl: Explanation, title: str, columns: int = 2) -> str:
    """Every flow's panel of a pod in one SVG document, `columns` panels a row, under a title line."""
    diagram = build_diagram(expl, title)
    grid = _grid(diagram)
    body = [
        _text(PAD, 28, title, 18, weight="bold"),
        _text(
            PAD + (grid.width + PANEL_GAP) * columns - PANEL_GAP, 28, _summary(expl), 13, anchor="end", fill="#444444"
        ),
    ]
    y = 44.0
    for start in range(0, len(diagram.panels), columns):
        row_height = 0.0
        for index, panel in enumerate(diagram.panels[start : start + columns]):
            group, height = _panel_group(diagram, grid, panel, PAD + index * (grid.width + PANEL_GAP), y)
            body += group
            row_height = max(row_height, height)
        y += row_height + PANEL_GAP
    width = 2 * PAD + columns * grid.width + (columns - 1) * PANEL_GAP
    return _document(width, y, title, body)


def panel_svg(diagram: Diagram, index: int, id_prefix: str = "") -> str:
    """One flow's panel as its own SVG document (its group's id is `{id_prefix}flow-TYPE`)."""
    grid = _grid(diagram)
    panel = diagram.panels[index]
    group, height = _panel_group(diagram, grid, panel, 0, 0, id_prefix)
    return _document(grid.width, height, f"{diagram.title}: {flow_label(panel.report)}", group)


def _summary(expl: Explanation) -> str:
    counts: dict[str, int] = {}
    for report in expl.flows:
        counts[report.status.value] = counts.get(report.status.value, 0) + 1
    order = [s.value for s in FlowStatus]
    return f"{len(expl.flows)} flows: " + ", ".join(f"{counts[s]} {s}" for s in order if s in counts)
