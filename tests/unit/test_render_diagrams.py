"""Diagrams and the HTML report: the SVG is valid XML, deterministic and shows every flow (failing ones
marked); the mermaid text is well-formed; the page is self-contained; and the SVG is checked as a
picture: rendered to PNG by rsvg-convert and compared with a reference image within a tolerance.

Regenerate the reference images after an intended change of the picture (then look at them):
    PODNAT_UPDATE_REFERENCES=1 .venv/bin/pytest tests/unit/test_render_diagrams.py \
        tests/integration/test_render_browser.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, require

from podnat.facts import PodRef
from podnat.istio.explain import Explanation, explain
from podnat.istio.flows import PodContext
from podnat.netfilter.model import Family
from podnat.netfilter.parse import parse_ruleset
from podnat.render.data import explanation_data
from podnat.render.diagram import build_diagram
from podnat.render.mermaid import UNSAFE, diagram_mermaid, node_id
from podnat.render.svg import BAD, EXPECTED, FAINT_FILL, FAINT_TEXT, FLOW_COLOURS, INK, diagram_svg, panel_svg
from podnat.report import Explained, Failed, FamilyReport, Skipped, VerifyReport

DEFAULT = (REPO / "tests" / "data" / "default.v4.iptables-save").read_text()
REFERENCES = REPO / "tests" / "data" / "reference"
UPDATE = os.environ.get("PODNAT_UPDATE_REFERENCES") == "1"
TOLERANCE = 0.01  # mean difference per channel, 0..1: an identical render is 0, one flow's status ~0.02+
SVG_NS = "{http://www.w3.org/2000/svg}"
CASES = {
    "healthy": DEFAULT,
    "broken": DEFAULT.replace("--to-ports 15001", "--to-ports 15002"),  # types 2 and 4 refused
    "drift": DEFAULT.replace("-A PREROUTING -p tcp -j ISTIO_INBOUND\n", ""),  # types 1 and 3 bypass Envoy
    "owner": DEFAULT.replace("--uid-owner 1337", "--uid-owner 1338"),  # Envoy's own traffic: other rules
}


def explained(case: str) -> Explanation:
    return explain(parse_ruleset(CASES[case]), PodContext(), expected=parse_ruleset(DEFAULT))


def explained_pod(ref: PodRef, case: str, **header: Any) -> Explained:
    """A pod report of one of the CASES, as `inspect` makes it."""
    family = FamilyReport(family=Family.IPV4, explanation=explained(case), ruleset=parse_ruleset(CASES[case]))
    return Explained(ref=ref, families=(family,), **header)


def verify_report() -> VerifyReport:
    lab = {"node": "lab", "pod_ip": "10.99.0.2"}
    return VerifyReport(
        (
            explained_pod(
                PodRef("bookinfo", "reviews-v1"),
                "broken",
                istio_version="1.30.3",
                capture_mode="REDIRECT",
                sources={"nat": "debug container"},
                **lab,
            ),
            explained_pod(PodRef("bookinfo", "ratings-v1"), "healthy", **lab),
            Failed(
                ref=PodRef("bookinfo", "details-v1"),
                error="istio-proxy cannot read the nat table without NET_ADMIN",
                error_code=3,
            ),
            Skipped(ref=PodRef("kube-system", "coredns"), mesh="none", notes=("no istio-proxy container",)),
        )
    )


# -- PNG as pixels (no imaging library needed) ----------------------------------------------------------


def png_rgb(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, RGB bytes) of an 8-bit, non-interlaced PNG (what rsvg-convert and Chromium write)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, chunks, header = 8, [], b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and interlace == 0, "only 8-bit, non-interlaced PNGs"
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    previous = bytearray(stride)
    pixels = bytearray()
    for y in range(height):
        start = y * (stride + 1)
        kind, row = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        _unfilter(kind, row, previous, channels)
        pixels += row
        previous = row
    if channels == 3:
        return width, height, bytes(pixels)
    rgb = bytearray()
    for i in range(0, len(pixels), channels):  # grey -> grey x3; alpha dropped (the pictures are opaque)
        rgb += pixels[i : i + 3] if channels >= 3 else bytes([pixels[i]] * 3)
    return width, height, bytes(rgb)


def _unfilter(kind: int, row: bytearray, prev: bytearray, bpp: int) -> None:
    if kind == 1:
        for i in range(bpp, len(row)):
            row[i] = (row[i] + row[i - bpp]) & 255
    elif kind == 2:
        row[:] = bytes((a + b) & 255 for a, b in zip(row, prev, strict=True))
    elif kind == 3:
        for i in range(len(row)):
            row[i] = (row[i] + (((row[i - bpp] if i >= bpp else 0) + prev[i]) >> 1)) & 255
    elif kind == 4:
        for i in range(len(row)):
            a, b = (row[i - bpp] if i >= bpp else 0), prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            row[i] = (row[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255


def mean_difference(a: bytes, b: bytes) -> float:
    """How far two PNGs are apart: mean absolute difference per channel, 0..1 (1 for different sizes)."""
    width_a, height_a, pixels_a = png_rgb(a)
    width_b, height_b, pixels_b = png_rgb(b)
    if (width_a, height_a) != (width_b, height_b):
        return 1.0
    return sum(abs(x - y) for x, y in zip(pixels_a, pixels_b, strict=True)) / len(pixels_a) / 255


def check_picture(png: bytes, name: str, other: str | None = None) -> None:
    """`png` is within TOLERANCE of the reference `name` (and, given `other`, further than it from that)."""
    reference = REFERENCES / name
    if UPDATE:
        REFERENCES.mkdir(parents=True, exist_ok=True)
        reference.write_bytes(png)
    assert reference.exists(), f"no reference image {reference}: run with PODNAT_UPDATE_REFERENCES=1"
    distance = mean_difference(png, reference.read_bytes())
    assert distance <= TOLERANCE, f"{name}: the picture moved ({distance:.4f} > {TOLERANCE})"
    if other is not None and (REFERENCES / other).exists():
        apart = mean_difference(png, (REFERENCES / other).read_bytes())
        assert apart > TOLERANCE, f"{name} and {other} look alike ({apart:.4f}): the check tells nothing"


# -- SVG --------------------------------------------------------------------------------------------------


def panels(svg: str) -> list[ET.Element]:
    """The flow panels of an SVG document, in order."""
    return ET.fromstring(svg).findall(f".//{SVG_NS}g[@class='panel']")


def route(panel: ET.Element, kind: str) -> ET.Element | None:
    found = panel.findall(f"{SVG_NS}g[@class='route {kind}']")
    assert len(found) <= 1, f"{panel.get('data-flow')}: {len(found)} {kind} routes"
    return found[0] if found else None


def rule_badges(group: ET.Element) -> list[str]:
    """The rules written on a route, in the order it draws them."""
    return [g.get("data-rule") for g in group.iter(f"{SVG_NS}g") if (g.get("class") or "").startswith("rule")]


def polyline_points(group: ET.Element) -> set[tuple[float, float]]:
    return {
        tuple(map(float, point.split(",")))
        for line in group.iter(f"{SVG_NS}polyline")
        for point in line.get("points").split()
    }


def texts(svg: str) -> list[str]:
    return [t.text or "" for t in ET.fromstring(svg).iter(f"{SVG_NS}text")]


def flow_objects(case: str) -> list[dict]:
    """The flows as `podnat explain -o json` prints them (the documented contract)."""
    return explanation_data(explained(case))["flows"]


def rules_of(trace: dict) -> list[str]:
    return [rule for leg in trace["legs"] for rule in leg["rules"]]


def check_panels(svg: str, flows: list[dict]) -> None:
    """One panel per flow, each drawing one flow: its live route with exactly the rules of legs[].rules,
    and for a failing flow the expected route (expected.legs[].rules) dotted and offset beside it."""
    found = panels(svg)
    ids = [f"{f['type']}-{f['variant']}" if f.get("variant") else str(f["type"]) for f in flows]
    assert [p.get("data-flow") for p in found] == ids
    for panel, flow in zip(found, flows, strict=True):
        live = route(panel, "live")
        assert live is not None
        assert rule_badges(live) == rules_of(flow), panel.get("data-flow")
        assert panel.get("data-status") == flow.get("status", "ok")
        expected = route(panel, "expected")
        if flow.get("status", "ok") == "ok":
            assert expected is None
            continue
        assert expected is not None and flow["expected"] is not None
        assert rule_badges(expected) == rules_of(flow["expected"])
        assert all(line.get("stroke-dasharray") for line in expected.iter(f"{SVG_NS}polyline"))
        assert not any(line.get("stroke-dasharray") for line in live.iter(f"{SVG_NS}polyline"))
        assert not polyline_points(live) & polyline_points(expected), "the expected route is not offset"


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_panel_draws_one_flow_with_its_rules(case):
    svg = diagram_svg(explained(case), f"bookinfo/reviews-v1 ({case})")
    check_panels(svg, flow_objects(case))


def test_an_ambient_pods_panels_enter_ztunnel(tmp_path):
    """`podnat explain --diagram` on istio-cni's in-pod rules for ztunnel (the CLI, as a user runs it)."""
    svg = tmp_path / "ambient.svg"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "podnat",
            "explain",
            str(REPO / "tests" / "data" / "ambient" / "default.v4.iptables-save"),
            "--diagram",
            str(svg),
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    flows = json.loads(done.stdout)["flows"]
    check_panels(svg.read_text(), flows)
    by_flow = {p.get("data-flow"): p for p in panels(svg.read_text())}
    assert set(by_flow) >= {"1-hbone", "1-plaintext", "2", "7-udp"}
    words = [t.text for t in by_flow["1-hbone"].iter(f"{SVG_NS}text")]
    assert "ztunnel 15008" in words and "ztunnel (in-pod sockets)" in words and "Envoy 15006" not in words
    visited = {
        r.get("data-node") for r in by_flow["1-hbone"].iter(f"{SVG_NS}rect") if "visited" in (r.get("class") or "")
    }
    assert "listener:15008" in visited


def test_a_native_nftables_pods_chains_sit_on_the_side_of_the_hook_that_first_meets_them(tmp_path):
    svg = tmp_path / "nft.svg"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "podnat",
            "explain",
            str(REPO / "tests" / "data" / "nft" / "default.nft-list-ruleset"),
            "--diagram",
            str(svg),
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    check_panels(svg.read_text(), json.loads(done.stdout)["flows"])
    first = panels(svg.read_text())[0]
    x = {r.get("data-node"): r.get("x") for r in first.iter(f"{SVG_NS}rect") if r.get("data-node")}
    inbound = {x[f"chain:istio-proxy-nat/{c}"] for c in ("prerouting", "istio-inbound", "istio-in-redirect")}
    outbound = {x[f"chain:istio-proxy-nat/{c}"] for c in ("output", "istio-output", "istio-redirect")}
    assert len(inbound) == len(outbound) == 1 and inbound != outbound
    assert "chain:PREROUTING" not in x  # no iptables chain drawn for a pod without them


def test_svg_is_valid_xml_and_titled():
    svg = diagram_svg(explained("healthy"), "bookinfo/reviews-v1")
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG_NS}svg" and root.find(f"{SVG_NS}title").text == "bookinfo/reviews-v1"
    assert [(p.get("data-flow"), p.get("data-type"), p.get("data-variant")) for p in panels(svg)] == [
        ("1", "1", None),
        ("2", "2", None),
        ("3", "3", None),
        ("4", "4", None),
        ("4-own-pod-ip", "4", "own-pod-ip"),
        ("5", "5", None),
        ("6", "6", None),
    ]
    assert 1700 <= float(root.get("width")) <= 1850  # two panels a row


def test_svg_is_deterministic():
    assert diagram_svg(explained("broken"), "t") == diagram_svg(explained("broken"), "t")


def test_every_panel_draws_the_whole_pod_and_its_flow_strongly():
    svg = diagram_svg(explained("healthy"), "t")
    words = texts(svg)
    for chain in (
        "PREROUTING",
        "INPUT",
        "OUTPUT",
        "ISTIO_INBOUND",
        "ISTIO_IN_REDIRECT",
        "ISTIO_OUTPUT",
        "ISTIO_REDIRECT",
    ):
        assert words.count(chain) == 7, chain  # the layout, in every panel
    for name in ("app", "Envoy 15001", "Envoy 15006", "Envoy 15090", "remote pod", "remote client", "istiod"):
        assert words.count(name) == 7, name
    by_flow = {p.get("data-flow"): p for p in panels(svg)}
    visited = {
        flow: {r.get("data-node") for r in panel.iter(f"{SVG_NS}rect") if "visited" in (r.get("class") or "")}
        for flow, panel in by_flow.items()
    }
    assert visited["2"] == {
        "app",
        "chain:OUTPUT",
        "chain:ISTIO_OUTPUT",
        "chain:ISTIO_REDIRECT",
        "listener:15001",
        "peer:remote",
    }
    assert visited["3"] == {
        "peer:prometheus",
        "chain:PREROUTING",
        "chain:ISTIO_INBOUND",
        "chain:INPUT",
        "listener:15090",
        "chain:OUTPUT",
        "chain:ISTIO_OUTPUT",
        "admin",
    }
    assert "path: OUTPUT:1 → ISTIO_OUTPUT:3 ⇒ 10.99.0.2:9080" in words


def test_broken_flows_are_red_crossed_and_name_the_rule_that_changed():
    svg = diagram_svg(explained("broken"), "t")
    for panel in panels(svg):
        live = route(panel, "live")
        strokes = {line.get("stroke") for line in live.iter(f"{SVG_NS}polyline")}
        marks = [t for t in panel.iter(f"{SVG_NS}text") if t.text == "✗"]
        changed = [g.get("data-rule") for g in panel.iter(f"{SVG_NS}g") if g.get("class") == "rule changed"]
        if panel.get("data-status") == "broken":
            assert strokes == {BAD} and marks and marks[0].get("fill") == BAD
            assert changed == ["ISTIO_REDIRECT:1"]
            words = [t.text for t in panel.iter(f"{SVG_NS}text")]
            assert "✗ broken (refused)" in words and ":15002" in words
            assert any("ISTIO_REDIRECT:1 changed: redirects to port 15002 instead of 15001" in w for w in words)
        else:
            assert BAD not in strokes and not marks and not changed
    assert {p.get("data-flow") for p in panels(svg) if p.get("data-status") == "broken"} == {"2", "4"}


def test_drifted_flows_mark_the_missing_rule_on_the_expected_route():
    svg = diagram_svg(explained("drift"), "t")
    drifted = [p for p in panels(svg) if p.get("data-status") == "drift"]
    assert [p.get("data-flow") for p in drifted] == ["1", "3"]
    for panel in drifted:
        expected = route(panel, "expected")
        ring = [g.get("data-rule") for g in expected.iter(f"{SVG_NS}g") if g.get("class") == "rule changed"]
        assert ring == ["PREROUTING:1"]
        words = [t.text or "" for t in panel.iter(f"{SVG_NS}text")]
        assert any(w.startswith("expected: PREROUTING:1 → ISTIO_INBOUND:") for w in words)
        assert any(w.startswith("✗ PREROUTING:1 missing: inbound capture is off") for w in words)


def test_a_changed_rule_the_live_path_no_longer_matches_is_ringed_on_the_expected_route():
    """Owner rules on uid 1338: Envoy's own traffic misses ISTIO_OUTPUT:4 (changed) and falls to :7."""
    svg = diagram_svg(explained("owner"), "t")
    by_flow = {p.get("data-flow"): p for p in panels(svg)}
    expected = route(by_flow["6"], "expected")
    assert [g.get("data-rule") for g in expected.iter(f"{SVG_NS}g") if g.get("class") == "rule changed"] == [
        "ISTIO_OUTPUT:4"
    ]
    assert rule_badges(route(by_flow["6"], "live")) == ["OUTPUT:1", "ISTIO_OUTPUT:7"]
    words = [t.text or "" for t in by_flow["6"].iter(f"{SVG_NS}text")]
    assert any(w.startswith("✗ ISTIO_OUTPUT:4 changed: the proxy identity differs (uid 1338") for w in words)


def test_a_panel_alone_is_a_document():
    diagram = build_diagram(explained("broken"), "bookinfo/reviews-v1")
    one = panel_svg(diagram, 1)
    assert [p.get("data-flow") for p in panels(one)] == ["2"]
    check_panels(one, flow_objects("broken")[1:2])


def _luminance(colour: str) -> float:
    channels = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    """The WCAG contrast ratio of two #rrggbb colours."""
    high, low = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_every_text_colour_passes_wcag_aa_on_its_background():
    colours = {*FLOW_COLOURS.values(), BAD, EXPECTED, FAINT_TEXT, INK}
    for colour in colours:
        assert contrast(colour, "#ffffff") >= 4.5, colour
        assert contrast(colour, FAINT_FILL) >= 4.5, colour
    svg = diagram_svg(explained("drift"), "t")
    fills = {t.get("fill") for t in ET.fromstring(svg).iter(f"{SVG_NS}text")} - {"#ffffff"}  # white: on badges
    assert all(contrast(fill, "#fafafa") >= 4.5 for fill in fills), fills


# -- mermaid ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_mermaid_is_well_formed(case):
    expl = explained(case)
    text = diagram_mermaid(expl)
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    subgraphs = [m[1] for line in lines if (m := re.match(r"^  subgraph (\w+)\[", line))]
    flows = flow_objects(case)
    assert subgraphs == [
        "flow_" + node_id(f"{f['type']}-{f['variant']}" if f.get("variant") else str(f["type"])) for f in flows
    ]
    assert sum(line == "  end" for line in lines) == len(subgraphs)
    declared = {m[1] for line in lines if (m := re.match(r"^\s+(\w+)(\[\"|\(\[)", line))}
    edges = [m for line in lines if (m := re.match(r'^  (\w+) (-->|-\.->)(?:\|"([^"]*)"\|)? (\w+)$', line))]
    assert {e[1] for e in edges} | {e[4] for e in edges} <= declared
    for quoted in re.findall(r'"([^"]*)"', text):
        assert not UNSAFE.search(quoted), quoted
    assert len([line for line in lines if line.startswith("  linkStyle ")]) == len(edges)
    members: dict[str, str] = {}
    current = ""
    for line in lines:
        if m := re.match(r"^  subgraph (\w+)\[", line):
            current = m[1]
        elif m := re.match(r"^    (\w+)(\[\"|\(\[)", line):
            members[m[1]] = current
    for flow, name in zip(flows, subgraphs, strict=True):
        mine = [e for e in edges if members[e[1]] == name and e[2] == "-->"]
        labelled = [rule for e in mine if e[3] and e[3] != "✗" for rule in e[3].split(", ")]
        assert labelled == rules_of(flow)
        theirs = [e for e in edges if members[e[1]] == name and e[2] == "-.->"]
        if flow.get("status", "ok") == "ok":
            assert not theirs
        else:
            expected = [
                r for e in theirs for r in (e[3] or "expected").removeprefix("expected").strip().split(", ") if r
            ]
            assert expected == rules_of(flow["expected"])


def test_mermaid_labels_rules_and_marks_failures():
    text = diagram_mermaid(explained("broken"))
    assert 'f2_chain_OUTPUT -->|"ISTIO_OUTPUT:9"| f2_chain_ISTIO_OUTPUT' in text
    assert 'f2_end(["✗ broken (refused)"]):::bad' in text and "stroke-dasharray" in text
    assert 'f2_chain_ISTIO_REDIRECT["ISTIO_REDIRECT"]:::changed' in text
    assert 'f6_peer_istiod["istiod 10.96.0.10:15012"]' in text


# -- the SVG as a picture ---------------------------------------------------------------------------------


PICTURES = [("healthy", 1, "broken"), ("broken", 1, "healthy"), ("healthy", 0, "drift"), ("drift", 0, "healthy")]


def panel_picture(case: str, index: int) -> str:
    return panel_svg(build_diagram(explained(case), f"bookinfo/reviews-v1 ({case})"), index)


@pytest.mark.parametrize(("case", "index", "other"), PICTURES)
def test_svg_looks_like_the_reference(case, index, other, tmp_path):
    rsvg = shutil.which("rsvg-convert")
    require(rsvg is not None, "needs rsvg-convert (apt: librsvg2-bin) to render the SVG")
    require(Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").exists(), "needs fonts-dejavu-core")
    source = tmp_path / f"{case}.svg"
    source.write_text(panel_picture(case, index))
    rendered = subprocess.run([rsvg, "--zoom=0.5", str(source)], capture_output=True, check=True, timeout=60)
    check_picture(rendered.stdout, f"svg-{case}-{index}.png", f"svg-{other}-{index}.png")


def test_json_is_indented_on_a_terminal_and_one_line_when_piped(capsys, monkeypatch):
    import sys

    from podnat.render.emit import print_data

    data = {"pods": [{"name": "a", "flows": [1, 2]}], "summary": {"ok": 1}}
    print_data(data, "json")
    piped = capsys.readouterr().out
    assert piped == '{"pods": [{"name": "a", "flows": [1, 2]}], "summary": {"ok": 1}}\n'
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    print_data(data, "json")
    shown = capsys.readouterr().out
    assert shown.startswith('{\n  "pods": [\n    {\n      "name": "a",') and json.loads(shown) == data
