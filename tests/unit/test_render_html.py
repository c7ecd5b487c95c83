"""The HTML report as text: self-contained (nothing to fetch), a folded section per pod with anchors,
a row per flow tied to its panel, the rules' text to copy, statuses in words, WCAG AA colours. What
a browser does with it (filter, search, open, click) is tests/integration/test_render_browser.py."""

from __future__ import annotations

import re
import subprocess
import sys
from html.parser import HTMLParser

from unit.test_render_diagrams import (
    CASES,
    contrast,
    explained_pod,
    flow_objects,
    rules_of,
    verify_report,
)

from podnat.facts import PodRef
from podnat.render.html import CSS, STATUS_COLOURS, pod_html, verify_html

VOID = ("meta", "br", "rect", "polyline", "polygon", "line", "input")


class Page(HTMLParser):
    """Tags (checked balanced) and every element's attributes, in order."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.open: list[str] = []
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        if tag not in VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        self.open.pop()

    def find(self, tag: str, **attrs: str) -> list[dict[str, str | None]]:
        return [
            a for t, a in self.elements if t == tag and all(a.get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]


def test_html_is_self_contained():
    page = verify_html(verify_report())
    for fetch in ("http://", "https://", "src=", "url(", "@import", "<link", "<iframe", "//cdn"):
        assert fetch not in page.lower(), fetch
    parsed = Page(page)
    assert parsed.open == []
    assert [t for t, _ in parsed.elements].count("script") == 1  # one inline script, nothing loaded


def test_summary_counts_filters_and_search():
    parsed = Page(verify_html(verify_report()))
    assert [b["data-status"] for b in parsed.find("button") if b.get("data-status")] == [
        "broken",
        "error",
        "ok",
        "skipped",
    ]
    assert [o["value"] for o in parsed.find("option")] == [
        "",
        "bookinfo",
        "kube-system",
        "",
        "broken",
        "error",
        "ok",
        "skipped",
    ]
    assert parsed.find("input", id="search")


def test_each_pod_is_folded_with_an_anchor_its_status_and_what_to_search():
    page = verify_html(verify_report())
    pods = Page(page).find("details")
    assert [(p["id"], p["data-status"], "open" in p) for p in pods] == [
        ("pod-bookinfo-reviews-v1", "broken", False),
        ("pod-bookinfo-ratings-v1", "ok", False),
        ("pod-bookinfo-details-v1", "error", False),
        ("pod-kube-system-coredns", "skipped", False),
    ]
    assert "istio_redirect:1" in pods[0]["data-search"] and "--to-ports 15002" in pods[0]["data-search"]
    assert "✗ broken</span> <h2>bookinfo/reviews-v1</h2>" in page  # a word and a mark, not colour alone
    assert "⚠ error</span> <h2>bookinfo/details-v1</h2>" in page
    assert "istio-proxy cannot read the nat table without NET_ADMIN" in page


def test_each_flow_row_is_tied_to_its_panel_and_rules():
    page = verify_html(verify_report())
    parsed = Page(page)
    rows = parsed.find("tr", **{"class": "flow-row"})
    flows = flow_objects("broken")
    ids = [f"{f['type']}-{f['variant']}" if f.get("variant") else str(f["type"]) for f in flows]
    mine = [r for r in rows if r["id"].startswith("pod-bookinfo-reviews-v1-")]
    assert [r["id"] for r in mine] == [f"pod-bookinfo-reviews-v1-flow-{i}" for i in ids]
    views = {v["id"]: v for v in parsed.find("section") if v.get("class") == "flow-view"}
    for row in mine:
        view = views[row["data-view"]]
        assert "hidden" in view and view["data-flow"] == row["data-flow"]
    panels = [g for g in parsed.find("g") if g.get("class") == "panel"]
    assert len(panels) == 2 * len(flows)  # two pods with flows, a panel per flow, each once
    assert len({g["id"] for g in panels}) == len(panels)
    copies = [b["data-copy"] for b in parsed.find("button") if b.get("class") == "copy"]
    assert "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15002" in copies
    # the broken flow lists the rules it took and the ones Istio meant (same refs, another port)
    section = page[page.index('id="pod-bookinfo-reviews-v1-view-2"') :]
    section = section[: section.index("</section>")]
    refs = re.findall(r'<code class="ref">([^<]+)</code>', section)
    assert refs == rules_of(flows[1]) + rules_of(flows[1]["expected"])


def test_inspect_page_is_one_pod_opened():
    report = explained_pod(PodRef("bookinfo", "reviews-v1"), "drift", pod_ip="10.99.0.2")
    parsed = Page(pod_html(report))
    assert [(p["id"], "open" in p) for p in parsed.find("details")] == [("pod-bookinfo-reviews-v1", True)]
    assert [t for t, _ in parsed.elements].count("svg") == 7


def test_status_colours_pass_wcag_aa():
    backgrounds = ("#ffffff", "#eef4fb", "#f7f7f7", "#f3f3f3")
    for colour in STATUS_COLOURS.values():
        for background in backgrounds:
            assert contrast(colour, background) >= 4.5, (colour, background)
    for css_class, colour in STATUS_COLOURS.items():
        assert re.search(rf"\.s-{css_class}\b[^{{]*\{{ color: {colour}; }}", CSS), css_class
    for colour in re.findall(r"(?<![-\w])color: (#[0-9a-f]{6})", CSS):
        assert contrast(colour, "#ffffff") >= 4.5, colour


def test_explain_writes_the_page_of_a_table(tmp_path):
    """`podnat explain FILE --args … --html` (the CLI): one pod, opened, a panel per flow, the drift said."""
    table = tmp_path / "no-prerouting-jump.iptables-save"
    table.write_text(CASES["drift"])
    page = tmp_path / "page.html"
    args = "istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x '' -b '*' -d 15090,15021,15020"
    done = subprocess.run(
        [sys.executable, "-m", "podnat", "explain", str(table), "--args", args, "--html", str(page)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr  # drift
    text = page.read_text()
    parsed = Page(text)
    assert "<title>podnat explain no-prerouting-jump.iptables-save</title>" in text
    assert [(p["data-status"], "open" in p) for p in parsed.find("details")] == [("drift", True)]
    assert [r["data-status"] for r in parsed.find("tr", **{"class": "flow-row"})] == [
        "drift",
        "ok",
        "drift",
        "ok",
        "ok",
        "ok",
        "ok",
    ]
    assert len([g for g in parsed.find("g") if g.get("class") == "panel"]) == 7


def test_html_is_deterministic():
    assert verify_html(verify_report()) == verify_html(verify_report())


def test_each_pod_says_whether_its_rules_were_read_live_or_applied_at_start():
    def rules_line(live: bool | None) -> list[str]:
        page = pod_html(explained_pod(PodRef("bookinfo", "reviews-v1"), "healthy", live=live))
        return re.findall(r"<dt>rules</dt><dd>([^<]*)</dd>", page)

    assert rules_line(True) == ["live"]
    assert rules_line(False) == ["applied at start, not necessarily live"]
    assert rules_line(None) == []  # no rules read: nothing said
