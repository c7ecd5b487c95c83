"""A pod's flows as mermaid text, for docs and issue trackers. Pure.

The same model as the SVG (podnat/render/diagram.py): one subgraph per flow (`flow_1`,
`flow_4_own_pod_ip`) with the nodes that flow visits and one edge per step, labelled with the rules
it takes in the chain it enters. A flow that drifted or broke is red and ends at a ✗ node naming its
status; the route Istio meant is drawn beside it as dotted edges labelled `expected`, and the node
holding the rule where the two part is marked `changed`.
"""

from __future__ import annotations

import re
from itertools import pairwise

from podnat.istio.explain import Explanation
from podnat.render.diagram import Panel, Stop, build_diagram, flow_label, status_word
from podnat.render.svg import BAD, EXPECTED, FLOW_COLOURS

# Characters mermaid reads as syntax even inside a quoted label; labels never carry them.
UNSAFE = re.compile(r'["\[\]{}|<>;#`]')


def node_id(node: str) -> str:
    """A mermaid node id for a podnat node: `chain:ISTIO_OUTPUT` -> `chain_ISTIO_OUTPUT`."""
    return re.sub(r"[^A-Za-z0-9_]", "_", node)


def label(text: str) -> str:
    """Text made safe for a quoted mermaid label."""
    return UNSAFE.sub("", text.replace("->", "→").replace('"', "'"))


def diagram_mermaid(expl: Explanation, title: str = "") -> str:
    """`flowchart LR`: a subgraph per flow, its route solid, the expected one dotted beside it."""
    diagram = build_diagram(expl, title)
    lines = ["flowchart LR"]
    edges: list[str] = []
    styles: list[str] = []
    for panel in diagram.panels:
        prefix = f"f{node_id(panel.flow)}_"
        routes = [panel.live] + ([panel.expected] if panel.expected is not None else [])
        nodes = list(dict.fromkeys(stop.node for route in routes for stop in route))
        changed = _changed_node(panel)
        lines.append(
            f'  subgraph flow_{node_id(panel.flow)}["{label(flow_label(panel.report))}: '
            f'{label(status_word(panel.report))}"]'
        )
        for node in nodes:
            title_, note = diagram.captions[node]
            text = label(f"{title_} {note}".strip() if note and not node.startswith("chain:") else title_)
            css = ":::changed" if node == changed else ""
            lines.append(f'    {prefix}{node_id(node)}["{text}"]{css}')
        colour = BAD if panel.failing else FLOW_COLOURS.get(panel.report.spec.type, "#444444")
        for a, b in pairwise(panel.live):
            edges.append(f"  {prefix}{node_id(a.node)} -->{_edge_text(b)} {prefix}{node_id(b.node)}")
            styles.append(f"stroke:{colour},stroke-width:3px")
        if panel.expected is not None:
            for a, b in pairwise(panel.expected):
                edges.append(f"  {prefix}{node_id(a.node)} -.->{_edge_text(b, 'expected')} {prefix}{node_id(b.node)}")
                styles.append(f"stroke:{EXPECTED},stroke-width:2px,stroke-dasharray:2 4")
        if panel.failing:
            end = f"{prefix}end"
            lines.append(f'    {end}(["{label(status_word(panel.report))}"]):::bad')
            edges.append(f'  {prefix}{node_id(panel.live[-1].node)} -->|"✗"| {end}')
            styles.append(f"stroke:{BAD},stroke-width:3px")
        lines.append("  end")
    lines += edges
    lines.append(f"  classDef bad fill:#fdecec,stroke:{BAD},color:{BAD}")
    lines.append(f"  classDef changed fill:#fdecec,stroke:{BAD},stroke-width:3px")
    lines += [f"  linkStyle {index} {style}" for index, style in enumerate(styles)]
    return "\n".join(lines) + "\n"


def _changed_node(panel: Panel) -> str | None:
    if panel.change is None:
        return None
    chain = panel.change.ref.rpartition(":")[0]
    return f"chain:{chain}"


def _edge_text(stop: Stop, prefix: str = "") -> str:
    """`|"ISTIO_OUTPUT:9"|`: the rules taken in the chain an edge enters (none: no label)."""
    text = " ".join(filter(None, (prefix, ", ".join(stop.refs))))
    return f'|"{label(text)}"|' if text else ""
