"""The terminal at 80 and 120 columns: `podnat explain` (the CLI, with COLUMNS set as a terminal sets
it) and `inspect`'s pod report fit the width, and a path wraps only before an arrow: every rule and
every `Envoy PORT` stays whole on its line, and the cell's lines read back as the whole path."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO
from rich.console import Console
from unit.test_render_diagrams import CASES, explained, explained_pod

from podnat.facts import PodRef
from podnat.render import console
from podnat.render.diagram import path_summary

ARGS = "istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x '' -b '*' -d 15090,15021,15020"


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the flows table: per row, per column, the cell's lines (stripped)."""
    rows: list[list[list[str]]] = []
    for line in text.splitlines():
        if not line.startswith("│"):
            continue
        cells = [cell.strip() for cell in line.strip("│").split("│")]
        if cells[0]:
            rows.append([[] for _ in cells])
        for column, cell in enumerate(cells):
            if cell:
                rows[-1][column].append(cell)
    return [[" ".join(lines) for lines in row] for row in rows], rows


def check_paths(text: str, expl, width: int, with_intent: bool) -> None:
    assert max(len(line) for line in text.splitlines()) <= width
    joined, raw = table_rows(text)
    assert len(joined) == len(expl.flows)
    beside = with_intent and width >= console.NARROW
    for report, cells, lines in zip(expl.flows, joined, raw, strict=True):
        path = cells[2]
        if with_intent and not beside and report.expected is not None and report.status.value != "ok":
            path, _, expected = path.partition(" expected: ")
            assert expected == path_summary(report.expected)
        assert path == path_summary(report.live), (width, report.spec.name)
        if beside:
            assert cells[3] == ("same" if report.status.value == "ok" else path_summary(report.expected))
        for line in lines[2][1:]:  # every wrapped line starts at an arrow (or the expected path)
            assert line[:1] in ("→", "⇒") or line.startswith("expected:"), line
        refs = [ref for leg in report.live.legs for ref in leg.rules]
        for ref in refs:  # a rule is never split
            assert any(re.search(rf"(^|\s){re.escape(ref)}(\s|$)", line) for line in lines[2]), ref


def podnat_at(width: int, *args: str) -> str:
    env = {**os.environ, "COLUMNS": str(width), "TERM": "dumb"}
    done = subprocess.run(
        [sys.executable, "-m", "podnat", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert done.returncode in (0, 1), done.stderr
    return done.stdout


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("case", ["healthy", "broken", "drift"])
def test_explain_fits_and_wraps_at_arrows(case, width, tmp_path):
    table = tmp_path / "nat.txt"
    table.write_text(CASES[case])
    text = podnat_at(width, "explain", str(table), "--args", ARGS)
    check_paths(text, explained(case), width, with_intent=True)
    assert ("✗ broken" in text) is (case == "broken") and ("✗ drift" in text) is (case == "drift")


@pytest.mark.parametrize("width", [80, 120])
def test_explain_without_intent_fits(width, tmp_path):
    table = tmp_path / "nat.txt"
    table.write_text(CASES["broken"])
    text = podnat_at(width, "explain", str(table))
    from podnat.istio.explain import explain
    from podnat.istio.flows import PodContext
    from podnat.netfilter.parse import parse_ruleset

    check_paths(text, explain(parse_ruleset(CASES["broken"]), PodContext()), width, with_intent=False)
    assert "✗ refused" in text and "✓ delivered" in text


@pytest.mark.parametrize("width", [80, 120])
def test_inspect_report_fits(width, monkeypatch):
    screen = io.StringIO()
    monkeypatch.setattr(
        console, "out", Console(file=screen, width=width, soft_wrap=False, highlight=False, color_system=None)
    )
    report = explained_pod(
        PodRef("bookinfo", "reviews-v1-7f9c6b-x2k4p"),
        "drift",
        node="lab",
        pod_ip="10.99.0.2",
        istio_version="1.30.3",
        capture_mode="REDIRECT",
        sources={"nat": "debug container podnat-debug (iptables-save -c)"},
    )
    expl = report.explanation
    console.print_pod_report(report)
    text = screen.getvalue()
    assert "bookinfo/reviews-v1-7f9c6b-x2k4p" in text and "status: drift" in text
    table = text[text.index("┏") : text.index("┘") + 1]
    check_paths(table, expl, width, with_intent=True)
    assert max(len(line.rstrip()) for line in text.splitlines()) <= width
