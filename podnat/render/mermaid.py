"""A pod's flows as a mermaid `flowchart`, for docs and issue trackers. Pure.

The same nodes and routes as the SVG (podnat/render/svg.py): one edge per step of a flow, labelled
with the flow type and the rules it took in the chain it enters, coloured per flow type; a flow that
drifted or broke is dashed red and ends at a ✗ node naming its status.
"""

from __future__ import annotations

import re
from itertools import pairwise

from podnat.istio.explain import Explanation
from podnat.render.svg import (
    BAD,
    FAILING,
    FLOW_COLOURS,
    STANDARD_LISTENERS,
    Stop,
    flow_stops,
    node_caption,
    pod_addresses,
    status_word,
)

# Characters mermaid reads as syntax even inside a quoted label; labels never carry them.
UNSAFE = re.compile(r'["\[\]{}|<>;#`]')


def node_id(node: str) -> str:
    """A mermaid node id for a podnat node: `chain:ISTIO_OUTPUT` -> `chain_ISTIO_OUTPUT`."""
    return re.sub(r"[^A-Za-z0-9_]", "_", node)


def label(text: str) -> str:
    """Text made safe for a quoted mermaid label."""
    return UNSAFE.sub("", text.replace("->", "→").replace('"', "'"))


def diagram_mermaid(expl: Explanation) -> str:
    """`flowchart TB`: the pod (app, Envoy, pilot-agent, chains), the peers, and every flow's edges."""
    pod = pod_addresses(expl)
    routes = [flow_stops(report, pod) for report in expl.flows]
    visited = list(dict.fromkeys(stop.node for route in routes for stop in route))
    listeners = sorted({f"listener:{port}" for port in STANDARD_LISTENERS} | {
        n for n in visited if n.startswith("listener:")}, key=lambda n: int(n.partition(":")[2]))
    addresses = ", ".join(sorted(str(a) for a in pod if not a.is_loopback))
    lines = ["flowchart TB", f'  subgraph pod["{label(f"pod {addresses}".strip())}"]']
    lines += _nodes([n for n in ("app", "agent") if n in visited or n == "app"], expl, "    ")
    lines.append('    subgraph envoy["Envoy istio-proxy"]')
    lines += _nodes(["proxy", *listeners, *(n for n in ("admin",) if n in visited)], expl, "      ")
    lines.append("    end")
    lines += _nodes([n for n in visited if n.startswith("void:")], expl, "    ")
    lines.append('    subgraph chains["iptables chains"]')
    lines += _nodes([n for n in visited if n.startswith("chain:")], expl, "      ")
    lines.append("    end")
    lines.append("  end")
    lines += _nodes([n for n in visited if n.startswith("peer:")], expl, "  ")

    edges: list[str] = []
    styles: list[str] = []
    for lane, (report, route) in enumerate(zip(expl.flows, routes, strict=True)):
        number = int(report.spec.type)
        colour = FLOW_COLOURS.get(report.spec.type, "#555555")
        failing = report.status in FAILING
        style = f"stroke:{colour},stroke-width:2px" + (",stroke-dasharray:6 4" if failing else "")
        for a, b in pairwise(route):
            edges.append(f'  {node_id(a.node)} -->|"{label(_edge_text(number, b))}"| {node_id(b.node)}')
            styles.append(style)
        if failing:
            end = f"end_{lane}"
            edges.append(f'  {end}(["{label(f"{number} {status_word(report)}")}"]):::bad')
            edges.append(f'  {node_id(route[-1].node)} -.->|"{number}"| {end}')
            styles.append(f"stroke:{BAD},stroke-width:2px")
    lines += edges
    lines.append(f"  classDef bad fill:#fdecec,stroke:{BAD},color:{BAD}")
    lines += [f"  linkStyle {index} {style}" for index, style in enumerate(styles)]
    return "\n".join(lines) + "\n"


def _edge_text(number: int, stop: Stop) -> str:
    if stop.rules:
        chain = stop.node.partition(":")[2]
        return f"{number}: " + ", ".join(f"{chain}:{n}" for n in stop.rules)
    return str(number)


def _nodes(nodes: list[str], expl: Explanation, indent: str) -> list[str]:
    out = []
    for node in nodes:
        title, note = node_caption(expl, node)
        text = label(f"{title} {note}".strip() if note and not node.startswith("chain:") else title)
        out.append(f'{indent}{node_id(node)}["{text}"]')
    return out
