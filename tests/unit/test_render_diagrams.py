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
import xml.etree.ElementTree as ET
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import REPO, require

from podnat.facts import PodRef
from podnat.istio.explain import Explanation, FlowStatus, explain
from podnat.istio.flows import PodContext
from podnat.netfilter.parse import parse_ruleset
from podnat.render.html import verify_html
from podnat.render.mermaid import UNSAFE, diagram_mermaid, node_id
from podnat.render.svg import BAD, diagram_svg, flow_stops, pod_addresses
from podnat.usecases import PodReport, VerifyReport

DEFAULT = (REPO / "tests" / "data" / "default.v4.iptables-save").read_text()
REFERENCES = REPO / "tests" / "data" / "reference"
UPDATE = os.environ.get("PODNAT_UPDATE_REFERENCES") == "1"
TOLERANCE = 0.01  # mean difference per channel, 0..1: an identical render is 0, one flow's status ~0.02+
SVG_NS = "{http://www.w3.org/2000/svg}"
CASES = {
    "healthy": DEFAULT,
    "broken": DEFAULT.replace("--to-ports 15001", "--to-ports 15002"),  # types 2 and 4 refused
    "drift": DEFAULT.replace("-A PREROUTING -p tcp -j ISTIO_INBOUND\n", ""),  # types 1 and 3 bypass Envoy
}


def explained(case: str) -> Explanation:
    return explain(parse_ruleset(CASES[case]), PodContext(), expected=parse_ruleset(DEFAULT))


def verify_report() -> VerifyReport:
    lab = {"node": "lab", "pod_ip": "10.99.0.2"}
    return VerifyReport((
        PodReport(PodRef("bookinfo", "reviews-v1"), istio_version="1.30.3", capture_mode="REDIRECT",
                  sources={"nat": "debug container"}, explanation=explained("broken"), **lab),
        PodReport(PodRef("bookinfo", "ratings-v1"), explanation=explained("healthy"), **lab),
        PodReport(PodRef("bookinfo", "details-v1"),
                  error="istio-proxy cannot read the nat table without NET_ADMIN", error_code=3),
        PodReport(PodRef("kube-system", "coredns"), mesh="none", notes=("no istio-proxy container",)),
    ))


# -- PNG as pixels (no imaging library needed) ----------------------------------------------------------


def png_rgb(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, RGB bytes) of an 8-bit, non-interlaced PNG (what rsvg-convert and Chromium write)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, chunks, header = 8, [], b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
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
        kind, row = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        _unfilter(kind, row, previous, channels)
        pixels += row
        previous = row
    if channels == 3:
        return width, height, bytes(pixels)
    rgb = bytearray()
    for i in range(0, len(pixels), channels):  # grey -> grey x3; alpha dropped (the pictures are opaque)
        rgb += pixels[i:i + 3] if channels >= 3 else bytes([pixels[i]] * 3)
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


def flow_groups(svg: str) -> list[ET.Element]:
    return ET.fromstring(svg).findall(f".//{SVG_NS}g[@class='flow']")


def texts(svg: str) -> list[str]:
    return [t.text or "" for t in ET.fromstring(svg).iter(f"{SVG_NS}text")]


def test_svg_is_valid_xml_with_one_route_per_flow():
    svg = diagram_svg(explained("healthy"), "bookinfo/reviews-v1")
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG_NS}svg" and root.get("width") == "1200"
    assert 700 <= int(root.get("height")) <= 900  # readable at about 1200x800
    assert [(g.get("data-type"), g.get("data-status")) for g in flow_groups(svg)] == [
        ("1", "ok"), ("2", "ok"), ("3", "ok"), ("4", "ok"), ("4", "ok"), ("5", "ok"), ("6", "ok")]
    assert root.find(f"{SVG_NS}title").text == "bookinfo/reviews-v1"


def test_svg_is_deterministic():
    assert diagram_svg(explained("broken"), "t") == diagram_svg(explained("broken"), "t")


def test_svg_draws_the_pod_chains_listeners_and_peers():
    words = texts(diagram_svg(explained("healthy"), "t"))
    for chain in ("PREROUTING", "INPUT", "OUTPUT", "ISTIO_INBOUND", "ISTIO_IN_REDIRECT", "ISTIO_OUTPUT",
                  "ISTIO_REDIRECT"):
        assert chain in words
    for name in ("app", "15001", "15006", "15090", "remote pod", "Prometheus", "istiod", "pod 10.99.0.2"):
        assert name in words
    assert "remote pod -> local pod" in words and "sidecar -> istiod" in words  # the legend names the flows


def test_svg_labels_the_rules_each_flow_takes():
    svg = diagram_svg(explained("healthy"), "t")
    titles = [t.text for t in ET.fromstring(svg).iter(f"{SVG_NS}title")]
    assert "2 local pod -> remote pod: ISTIO_OUTPUT:9" in titles
    assert "2 local pod -> remote pod: ISTIO_REDIRECT:1" in titles
    assert "1 remote pod -> local pod: INPUT (no rule: policy)" in titles
    legend = ("OUTPUT:1 → ISTIO_OUTPUT:9 → ISTIO_REDIRECT:1 ⇒ Envoy 15001 ⇒ OUTPUT:1 → ISTIO_OUTPUT:4 ⇒ "
              "10.99.0.1:9080")
    assert legend in " ".join(texts(svg))  # the legend spells each path out (wrapped at spaces)


def test_broken_flows_are_dashed_red_and_crossed():
    svg = diagram_svg(explained("broken"), "t")
    groups = {(g.get("data-type"), g.get("data-status")) for g in flow_groups(svg)}
    assert ("2", "broken") in groups and ("4", "broken") in groups and ("1", "ok") in groups
    for group in flow_groups(svg):
        lines = group.findall(f"{SVG_NS}polyline")
        marks = [t for t in group.iter(f"{SVG_NS}text") if t.text == "✗"]
        if group.get("data-status") == "broken":
            assert any(line.get("stroke") == BAD for line in lines)
            assert any(line.get("stroke-dasharray") for line in lines)
            assert marks and marks[0].get("fill") == BAD
        else:
            assert not marks and not any(line.get("stroke-dasharray") for line in lines)
    words = texts(svg)
    assert words.count("✗ broken (refused)") == 2 and ":15002" in words and "nothing listens" in words


def test_drifted_flows_show_the_expected_path():
    svg = diagram_svg(explained("drift"), "t")
    assert {g.get("data-type") for g in flow_groups(svg) if g.get("data-status") == "drift"} == {"1", "3"}
    assert "✗ drift" in texts(svg)
    assert any(t.startswith("expected: PREROUTING:1 → ISTIO_INBOUND:5") for t in texts(svg))


# -- mermaid ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_mermaid_is_well_formed(case):
    expl = explained(case)
    text = diagram_mermaid(expl)
    lines = text.splitlines()
    assert lines[0] == "flowchart TB"
    opened = sum(line.strip().startswith("subgraph ") for line in lines)
    assert opened == sum(line.strip() == "end" for line in lines) == 3
    declared = {m[1] for line in lines if (m := re.match(r"^\s+(\w+)\[\"", line))}
    edges = [m for line in lines if (m := re.match(r'^\s+(\w+) (-->|-\.->)\|"([^"]*)"\| (\w+)$', line))]
    assert all(re.fullmatch(r"[A-Za-z0-9_]+", e[1]) and re.fullmatch(r"[A-Za-z0-9_]+", e[4]) for e in edges)
    ends = {m[1] for line in lines if (m := re.match(r"^\s+(end_\d+)\(\[", line))}
    assert {e[1] for e in edges} | {e[4] for e in edges} <= declared | ends
    for label in re.findall(r'"([^"]*)"', text):
        assert not UNSAFE.search(label), label
    assert len([line for line in lines if line.strip().startswith("linkStyle ")]) == len(edges)
    pod = pod_addresses(expl)
    for number, report in enumerate(expl.flows):
        stops = flow_stops(report, pod)
        mine = [e for e in edges if e[2] == "-->" and re.match(rf"{int(report.spec.type)}(:|$)", e[3])]
        assert len(mine) >= len(stops) - 1
        assert f"{node_id(stops[0].node)} -->" in text
        failing = report.status is not FlowStatus.OK
        assert (f"end_{number}" in ends) is failing


def test_mermaid_labels_rules_and_marks_failures():
    text = diagram_mermaid(explained("broken"))
    assert '-->|"2: ISTIO_OUTPUT:9"| chain_ISTIO_OUTPUT' in text
    assert '(["2 ✗ broken (refused)"]):::bad' in text and "stroke-dasharray" in text
    assert 'peer_istiod["istiod 10.96.0.10:15012"]' in text


# -- HTML -------------------------------------------------------------------------------------------------


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.seen: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen.append(tag)
        if tag not in ("meta", "br", "rect", "polyline", "polygon", "line"):
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        self.open.pop()


def test_html_is_self_contained():
    page = verify_html(verify_report())
    for fetch in ("http://", "https://", "<script", "src=", "url(", "@import", "<link", "<iframe"):
        assert fetch not in page.lower(), fetch
    tags = _Tags()
    tags.feed(page)
    assert tags.open == [] and tags.seen.count("svg") == 2 and "style" in tags.seen


def test_html_shows_summary_pods_flows_and_findings():
    page = verify_html(verify_report())
    assert "<b>4</b> pods" in page and '<span class="broken"><b>1</b> broken</span>' in page
    assert "exit code <b>1</b>" in page
    for pod in ("reviews-v1", "ratings-v1", "details-v1", "coredns"):
        assert f'id="pod-{"kube-system" if pod == "coredns" else "bookinfo"}-{pod}"' in page
    assert "istio-proxy cannot read the nat table without NET_ADMIN" in page
    assert "OUTPUT:1 → ISTIO_OUTPUT:9 → ISTIO_REDIRECT:1 ⇒ REFUSED" in page
    assert "✗ broken (refused)" in page and "15002 instead of 15001" in page
    assert page == verify_html(verify_report())


# -- the SVG as a picture ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "other"), [("healthy", "broken"), ("broken", "healthy")])
def test_svg_looks_like_the_reference(case, other, tmp_path):
    rsvg = shutil.which("rsvg-convert")
    require(rsvg is not None, "needs rsvg-convert (apt: librsvg2-bin) to render the SVG")
    require(Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").exists(), "needs fonts-dejavu-core")
    source = tmp_path / f"{case}.svg"
    source.write_text(diagram_svg(explained(case), f"bookinfo/reviews-v1 ({case})"))
    rendered = subprocess.run([rsvg, "--zoom=0.5", str(source)], capture_output=True, check=True, timeout=60)
    png = rendered.stdout
    check_picture(png, f"svg-{case}.png", f"svg-{other}.png")


def test_json_is_indented_on_a_terminal_and_one_line_when_piped(capsys, monkeypatch):
    import sys

    from podnat.render.console import print_data

    data = {"pods": [{"name": "a", "flows": [1, 2]}], "summary": {"ok": 1}}
    print_data(data, "json")
    piped = capsys.readouterr().out
    assert piped == '{"pods": [{"name": "a", "flows": [1, 2]}], "summary": {"ok": 1}}\n'
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    print_data(data, "json")
    shown = capsys.readouterr().out
    assert shown.startswith('{\n  "pods": [\n    {\n      "name": "a",') and json.loads(shown) == data
