"""`podnat verify --html`, `podnat inspect --html`: one self-contained page per run. Pure.

Inline CSS, one inline script and inline SVG: nothing to fetch, so the file reads the same offline,
attached to a ticket, or years later. On top, a summary that fits a screen: the pods counted by
status, a filter by namespace and by status, a search. Then one folded section per pod (`<details>`,
opened by a click, Enter or Space): what podnat read, a row per flow; a click on a row (or Enter on its
button) shows that flow's panel (podnat/render/svg.py) with the text of every rule it takes, each with
a copy button. Every pod and every flow has an anchor (`#pod-NS-NAME`, `#pod-NS-NAME-flow-2`) that
opens it. Statuses are words with a mark (✓ ✗ ? ⚠), never a colour alone; every colour pair passes
WCAG AA (tests/unit/test_render_html.py computes the ratios).
"""

from __future__ import annotations

import re
from html import escape

from podnat._typing import assert_never
from podnat.istio.explain import Explanation, FlowReport, FlowStatus, Severity, flow_types
from podnat.istio.paths import FlowTrace
from podnat.render.diagram import Diagram, build_diagram, flow_id, path_summary, status_word
from podnat.render.svg import FAILING, FLOW_COLOURS, panel_svg
from podnat.report import Explained, Failed, PodReport, PodStatus, Relayed, Skipped, VerifyReport

POD_MARK = {
    PodStatus.OK: "✓",
    PodStatus.DRIFT: "✗",
    PodStatus.BROKEN: "✗",
    PodStatus.ERROR: "⚠",
    PodStatus.UNKNOWN: "?",
    PodStatus.SKIPPED: "–",
}
FLOW_MARK = {FlowStatus.OK: "✓", FlowStatus.DRIFT: "✗", FlowStatus.BROKEN: "✗", FlowStatus.UNKNOWN: "?"}
# text colour per status, each >= 4.5:1 on white and on the row highlight (#eef4fb)
STATUS_COLOURS = {
    "ok": "#1d6b35",
    "drift": "#8a4500",
    "broken": "#b71c1c",
    "error": "#b71c1c",
    "unknown": "#6a1b9a",
    "skipped": "#555555",
}
CSS = """
:root { --ink: #1a1a1a; --muted: #555555; --line: #c8c8c8; --focus: #0b57d0; }
* { box-sizing: border-box; }
body { font-family: "DejaVu Sans", sans-serif; margin: 0; color: var(--ink); background: #fff; }
header { position: sticky; top: 0; z-index: 2; background: #fff; border-bottom: 1px solid var(--line);
         padding: 12px 20px 10px; }
main { padding: 8px 20px 40px; }
h1 { font-size: 20px; margin: 0 0 6px; }
h2 { font-size: 15px; margin: 0; display: inline; }
h3 { font-size: 14px; margin: 14px 0 6px; }
.counts { display: flex; flex-wrap: wrap; gap: 8px; margin: 0 0 8px; padding: 0; list-style: none; }
.counts button { font: inherit; font-size: 14px; border: 1px solid var(--line); background: #fff; border-radius: 14px;
                 padding: 3px 12px; cursor: pointer; color: var(--ink); }
.counts button[aria-pressed="true"] { border-color: var(--ink); background: #eef4fb; }
.filters { display: flex; flex-wrap: wrap; gap: 14px; align-items: center; font-size: 14px; }
.filters input, .filters select { font: inherit; padding: 3px 6px; border: 1px solid #767676; border-radius: 4px; }
.filters input { width: 22em; }
#shown { color: var(--muted); }
:focus-visible { outline: 3px solid var(--focus); outline-offset: 2px; }
details.pod { border: 1px solid var(--line); border-radius: 6px; margin: 8px 0; }
details.pod > summary { cursor: pointer; padding: 8px 12px; list-style-position: inside; }
details.pod[open] > summary { border-bottom: 1px solid var(--line); background: #f7f7f7; }
.pod-body { padding: 4px 14px 14px; }
.status { font-weight: bold; white-space: nowrap; }
.s-ok { color: #1d6b35; } .s-drift { color: #8a4500; } .s-broken, .s-error { color: #b71c1c; }
.s-unknown { color: #6a1b9a; } .s-skipped { color: #555555; }
.marks { font-family: "DejaVu Sans Mono", monospace; font-size: 13px; margin-left: 10px; }
.why { color: var(--muted); font-size: 13px; margin-left: 10px; }
table { border-collapse: collapse; margin: 8px 0 10px; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.path { font-family: "DejaVu Sans Mono", monospace; font-size: 12px; }
tr.flow-row { cursor: pointer; }
tr.flow-row, details.pod, .flow-view { scroll-margin-top: 130px; }
tr.flow-row:hover, tr.flow-row.selected { background: #eef4fb; }
tr.flow-row button { font: inherit; border: 0; background: none; padding: 0; color: var(--ink); cursor: pointer;
                     text-align: left; text-decoration: underline; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 2px 14px; font-size: 13px; margin: 8px 0; }
dl.facts dt { font-weight: bold; } dl.facts dd { margin: 0; }
.flow-view { border: 1px solid var(--line); border-radius: 6px; padding: 8px; margin: 6px 0 12px; }
.flow-view svg { display: block; width: 100%; max-width: 1000px; height: auto; }
ol.rules { font-size: 12.5px; margin: 6px 0; padding-left: 22px; }
ol.rules li { margin: 3px 0; }
ol.rules code { font-family: "DejaVu Sans Mono", monospace; }
ol.rules code.rule { background: #f5f5f5; padding: 1px 4px; user-select: all; }
button.copy { font: inherit; font-size: 12px; margin-left: 6px; padding: 0 6px; border: 1px solid #767676;
              border-radius: 3px; background: #fff; color: var(--ink); cursor: pointer; }
ul.findings li { margin: 2px 0; font-size: 13px; }
.note { color: #6b4f00; font-size: 13px; }
[hidden] { display: none !important; }
"""
SCRIPT = """
(function () {
  "use strict";
  var all = function (sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); };
  var search = document.getElementById("search"), ns = document.getElementById("namespace"),
      status = document.getElementById("status"), shown = document.getElementById("shown");
  function apply() {
    var text = search.value.trim().toLowerCase(), count = 0, pods = all("details.pod");
    pods.forEach(function (pod) {
      var ok = (!ns.value || pod.dataset.namespace === ns.value) &&
               (!status.value || pod.dataset.status === status.value) &&
               (!text || pod.dataset.search.indexOf(text) >= 0);
      pod.hidden = !ok;
      if (ok) { count += 1; }
    });
    all(".counts button").forEach(function (b) {
      b.setAttribute("aria-pressed", String(b.dataset.status === status.value));
    });
    shown.textContent = count + " of " + pods.length + " pods shown";
  }
  search.addEventListener("input", apply);
  ns.addEventListener("change", apply);
  status.addEventListener("change", apply);
  all(".counts button").forEach(function (b) {
    b.addEventListener("click", function () {
      status.value = status.value === b.dataset.status ? "" : b.dataset.status;
      apply();
    });
  });
  function showFlow(row, focus) {
    var pod = row.closest("details.pod"), table = row.closest("table");
    pod.open = true;
    all("tr.flow-row", table).forEach(function (r) {
      var on = r === row;
      r.classList.toggle("selected", on);
      r.querySelector("button").setAttribute("aria-expanded", String(on));
      document.getElementById(r.dataset.view).hidden = !on;
    });
    if (focus) { row.querySelector("button").focus(); }
  }
  all("tr.flow-row").forEach(function (row) {
    row.addEventListener("click", function (event) {
      if (event.target.closest("button.copy")) { return; }
      showFlow(row, false);
      history.replaceState(null, "", "#" + row.id);
    });
    row.addEventListener("keydown", function (event) {
      var rows = all("tr.flow-row", row.closest("table")), at = rows.indexOf(row);
      var next = event.key === "ArrowDown" ? rows[at + 1] : event.key === "ArrowUp" ? rows[at - 1] : null;
      if (next) { next.querySelector("button").focus(); event.preventDefault(); }
    });
  });
  all("button.copy").forEach(function (b) {
    b.addEventListener("click", function () {
      var text = b.dataset.copy, done = function () { b.textContent = "copied"; };
      if (copied(text)) { done(); }
      else if (navigator.clipboard) { navigator.clipboard.writeText(text).then(done); }
    });
  });
  function copied(text) {
    var area = document.createElement("textarea"), ok = false;
    area.value = text; document.body.appendChild(area); area.select();
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    document.body.removeChild(area);
    return ok;
  }
  function follow() {
    var target = location.hash && document.getElementById(decodeURIComponent(location.hash.slice(1)));
    if (!target) { return; }
    if (target.matches("tr.flow-row")) { showFlow(target, true); }
    else if (target.matches("details.pod")) { target.open = true; target.querySelector("summary").focus(); }
    target.scrollIntoView();
  }
  window.addEventListener("hashchange", follow);
  apply();
  follow();
})();
"""


def verify_html(report: VerifyReport, title: str = "podnat verify", open_all: bool = False) -> str:
    """The whole page: the summary (counts, filters, search), then a folded section per pod."""
    counts: dict[str, int] = {}
    for pod in report.pods:
        counts[pod.status.value] = counts.get(pod.status.value, 0) + 1
    namespaces = sorted({pod.ref.namespace for pod in report.pods})
    statuses = [s.value for s in PodStatus if s.value in counts]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        "<header>",
        f"<h1>{escape(title)}</h1>",
        f'<ul class="counts" aria-label="pods by status"><li><b>{len(report.pods)}</b> pods, '
        f"exit code <b>{int(report.exit_code)}</b></li>"
        + "".join(
            f'<li><button type="button" class="s-{s}" data-status="{s}" aria-pressed="false" '
            f'title="show only {s} pods">{POD_MARK[PodStatus(s)]} <b>{counts[s]}</b> {s}</button></li>'
            for s in statuses
        )
        + "</ul>",
        '<form class="filters" role="search" onsubmit="return false">',
        '<label>search <input id="search" type="search" placeholder="pod, namespace, rule, message"></label>',
        '<label>namespace <select id="namespace"><option value="">all</option>'
        + "".join(f'<option value="{escape(n)}">{escape(n)}</option>' for n in namespaces)
        + "</select></label>",
        '<label>status <select id="status"><option value="">all</option>'
        + "".join(f'<option value="{s}">{POD_MARK[PodStatus(s)]} {s}</option>' for s in statuses)
        + "</select></label>",
        f'<span id="shown" aria-live="polite">{len(report.pods)} of {len(report.pods)} pods shown</span>',
        "</form>",
        "</header>",
        "<main>",
    ]
    for pod in report.pods:
        parts += _pod_section(pod, open_all)
    parts += ["</main>", f"<script>{SCRIPT}</script>", "</body>", "</html>"]
    return "\n".join(parts) + "\n"


def pod_html(report: PodReport, title: str | None = None) -> str:
    """`inspect --html` (and `explain --html`): the same page for one pod, opened."""
    return verify_html(
        VerifyReport((report,)), title or f"podnat inspect {report.ref.namespace}/{report.ref.name}", open_all=True
    )


def _path_cell(text: str) -> str:
    """A path for a table cell: it may wrap before an arrow, never inside a rule or `Envoy 15001`."""
    return (
        escape(text)
        .replace(" → ", " →&nbsp;")
        .replace(" ⇒ ", " ⇒&nbsp;")
        .replace("Envoy ", "Envoy&nbsp;")
        .replace("ztunnel ", "ztunnel&nbsp;")
        .replace("(no rule)", "(no&nbsp;rule)")
    )


def pod_anchor(pod: PodReport) -> str:
    """`pod-NS-NAME`: the pod's anchor (its flows add `-flow-TYPE`)."""
    return "pod-" + re.sub(r"[^A-Za-z0-9_-]", "-", f"{pod.ref.namespace}-{pod.ref.name}")


def _why(pod: PodReport) -> str:
    match pod:
        case Explained():
            errors = (f for family in pod.families for f in family.explanation.findings if f.severity is Severity.ERROR)
            return next((f.message for f in errors), "")
        case Skipped():
            return "; ".join(pod.notes)
        case Failed():
            return pod.error
        case Relayed():
            return next((f.message for f in pod.findings if f.severity is Severity.ERROR), "")
        case _:
            assert_never(pod)


def _explanations(pod: PodReport) -> list[Explanation]:
    """Each IP family's explanation (none for a pod that was not explained)."""
    return [family.explanation for family in pod.families] if isinstance(pod, Explained) else []


def _marks(expl: Explanation) -> str:
    return " ".join(
        f'<span class="s-{status.value}" title="type {int(flow_type)}: {status.value}">'
        f"{int(flow_type)}{FLOW_MARK[status]}</span>"
        for flow_type, status in sorted(flow_types(expl.flows).items())
    )


def _search_text(pod: PodReport) -> str:
    words = [pod.ref.namespace, pod.ref.name, f"{pod.ref.namespace}/{pod.ref.name}", pod.status.value, _why(pod)]
    for expl in _explanations(pod):
        for report in expl.flows:
            words.append(report.spec.name)
            words += [rule.ref for leg in report.live.legs for rule in leg.hits]
            words += [rule.text for leg in report.live.legs for rule in leg.hits]
    return " ".join(words).lower()


def _pod_section(pod: PodReport, open_all: bool) -> list[str]:
    anchor = pod_anchor(pod)
    name = f"{pod.ref.namespace}/{pod.ref.name}"
    explanations = _explanations(pod)
    marks = f'<span class="marks" aria-label="flows">{_marks(explanations[0])}</span>' if explanations else ""
    why = _why(pod)
    out = [
        f'<details class="pod" id="{anchor}" data-namespace="{escape(pod.ref.namespace)}" '
        f'data-status="{pod.status.value}" data-search="{escape(_search_text(pod))}"{" open" if open_all else ""}>',
        f'<summary><span class="status s-{pod.status.value}">{POD_MARK[pod.status]} {pod.status.value}</span> '
        f"<h2>{escape(name)}</h2>{marks}" + (f'<span class="why">{escape(why)}</span>' if why else "") + "</summary>",
        '<div class="pod-body">',
        '<dl class="facts">',
    ]
    facts = [
        ("node", pod.node),
        ("pod IP", pod.pod_ip),
        ("Istio", pod.istio_version),
        ("capture", pod.capture_mode or pod.mesh),
        *((f"{k} from", v) for k, v in pod.sources.items()),
    ]
    if pod.live is not None:  # what the rules shown are evidence of (as inspect's `rules` line says)
        facts.append(("rules", "live" if pod.live else "applied at start, not necessarily live"))
    if isinstance(pod, Explained) and pod.listeners is not None:
        bound = ", ".join(f"{item.port} ({item.name})" for item in pod.listeners if item.binds)
        facts.append(("listeners", bound or "none"))
    out += [f"<dt>{escape(k)}</dt><dd>{escape(v or '-')}</dd>" for k, v in facts]
    out.append("</dl>")
    out += [f'<p class="note">note: {escape(n)}</p>' for n in pod.notes]
    if isinstance(pod, Failed):
        out.append(f'<p class="status s-error">⚠ error: {escape(pod.error)}</p>')
    for expl, suffix in zip(explanations, ("", "second"), strict=False):
        prefix = f"{anchor}-{suffix}" if suffix else anchor
        if suffix:
            out.append("<h3>The other IP family</h3>")
        diagram = build_diagram(expl, name)
        out += _flows_table(expl, diagram, prefix)
        out += _findings(expl)
    out += ["</div>", "</details>"]
    return out


def inline_svg(svg: str) -> str:
    """An SVG document for embedding in HTML5, where it needs no namespace declaration (nor any URL)."""
    return svg.replace(' xmlns="http://www.w3.org/2000/svg"', "", 1)


def _flows_table(expl: Explanation, diagram: Diagram, prefix: str) -> list[str]:
    with_intent = expl.diff is not None
    head = (
        '<tr><th scope="col">type</th><th scope="col">flow (click for its picture)</th>'
        f'<th scope="col">path (rules ⇒ {escape(expl.proxy)} ports ⇒ end)</th>'
    )
    head += (
        '<th scope="col">expected</th><th scope="col">status</th></tr>'
        if with_intent
        else '<th scope="col">outcome</th></tr>'
    )
    rows = ["<table>", f"<caption hidden>flows of {escape(diagram.title)}</caption>", head]
    views = []
    for index, report in enumerate(expl.flows):
        flow = flow_id(report)
        row_id, view_id = f"{prefix}-flow-{flow}", f"{prefix}-view-{flow}"
        colour = FLOW_COLOURS.get(report.spec.type, "#555555")
        cells = [
            f'<td><span class="swatch" style="background:{colour}" aria-hidden="true"></span>'
            f"{int(report.spec.type)}</td>",
            f'<td><button type="button" aria-expanded="false" aria-controls="{view_id}">'
            f"{escape(report.spec.name)}</button></td>",
            f'<td class="path">{_path_cell(path_summary(report.live))}</td>',
        ]
        if with_intent:
            cells.append(f'<td class="path">{_path_cell(_expected(report))}</td>')
            cells.append(f'<td class="status s-{report.status.value}">{escape(status_word(report))}</td>')
        else:
            css = "broken" if report.status in FAILING else "ok"
            mark = "✗" if report.status in FAILING else "✓"
            cells.append(f'<td class="status s-{css}">{mark} {escape(report.live.outcome.value)}</td>')
        rows.append(
            f'<tr class="flow-row" id="{row_id}" data-flow="{flow}" data-status="{report.status.value}" '
            f'data-view="{view_id}">' + "".join(cells) + "</tr>"
        )
        views.append(_flow_view(report, diagram, index, view_id, prefix))
    rows.append("</table>")
    return rows + views


def _flow_view(report: FlowReport, diagram: Diagram, index: int, view_id: str, prefix: str) -> str:
    picture = inline_svg(panel_svg(diagram, index, id_prefix=f"{prefix}-svg-"))
    parts = [
        f'<section class="flow-view" id="{view_id}" data-flow="{flow_id(report)}" hidden '
        f'aria-label="{escape(report.spec.name)}">',
        picture,
        "<h3>Rules it takes</h3>",
        _rules(report.live),
    ]
    if report.expected is not None and report.status is not FlowStatus.OK:
        parts += ["<h3>Rules Istio meant it to take</h3>", _rules(report.expected)]
    parts.append(f"<p>{escape(report.live.reason)}</p></section>")
    return "\n".join(parts)


def _rules(trace: FlowTrace) -> str:
    items = []
    for number, leg in enumerate(trace.legs, start=1):
        for rule in leg.hits:
            items.append(
                f'<li>leg {number}: <code class="ref">{escape(rule.ref)}</code> '
                f'<code class="rule">{escape(rule.text)}</code>'
                f'<button type="button" class="copy" data-copy="{escape(rule.text)}" '
                f'aria-label="copy the rule {escape(rule.ref)}">copy</button></li>'
            )
    if not items:
        return "<p>no rule: every chain it crossed let it through by its policy</p>"
    return '<ol class="rules">' + "".join(items) + "</ol>"


def _expected(report: FlowReport) -> str:
    if report.expected is None:
        return "-"
    return "same" if report.status is FlowStatus.OK else path_summary(report.expected)


def _severity_look(severity: Severity) -> tuple[str, str]:
    """A finding's status class and mark."""
    match severity:
        case Severity.ERROR:
            return "broken", "✗"
        case Severity.WARNING:
            return "unknown", "?"
        case Severity.INFO:
            return "skipped", "·"
        case _:
            assert_never(severity)


def _findings(expl: Explanation) -> list[str]:
    if not expl.findings and not expl.shadowed:
        return []
    out = ["<h3>Findings</h3>", '<ul class="findings">']
    for finding in expl.findings:
        css, mark = _severity_look(finding.severity)
        rules = f" ({', '.join(finding.rules)})" if finding.rules else ""
        out.append(
            f'<li><span class="status s-{css}">{mark} {escape(finding.severity.value)}</span> '
            f"{escape(finding.message)}{escape(rules)}</li>"
        )
    for shadowed in expl.shadowed:
        out.append(
            f'<li><span class="status s-skipped">– shadowed</span> {escape(shadowed.rule.ref)} '
            f"<code>{escape(shadowed.rule.text)}</code>: {escape(shadowed.reason)}</li>"
        )
    out.append("</ul>")
    return out
