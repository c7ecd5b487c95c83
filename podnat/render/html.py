"""`podnat verify --html`: one self-contained page per run. Pure.

Inline CSS and inline SVG only: no scripts, no fonts or images to fetch, so the file reads the same
offline, attached to a ticket, or years later. Per pod: what podnat read, every flow's path next to
the expected one, the pod's diagram (podnat/render/svg.py) and the findings.
"""

from __future__ import annotations

import re
from html import escape

from podnat.istio.explain import Explanation, FlowReport, FlowStatus, flow_types
from podnat.render.svg import FAILING, FLOW_COLOURS, diagram_svg, path_summary, status_word
from podnat.usecases import PodReport, VerifyReport

STATUS_ORDER = ("broken", "drift", "error", "unknown", "ok", "skipped")
CSS = """
body { font-family: "DejaVu Sans", sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 22px; margin: 0 0 8px; }
h2 { font-size: 18px; margin: 0 0 8px; }
section.pod { border-top: 2px solid #ddd; margin-top: 28px; padding-top: 16px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.path { font-family: "DejaVu Sans Mono", monospace; font-size: 12px; }
.status { font-weight: bold; }
.ok { color: #2d6b37; } .drift, .broken, .error { color: #c62828; }
.unknown { color: #8e24aa; } .skipped { color: #777; }
.counts span { margin-right: 16px; font-size: 15px; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px; margin-right: 6px; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 2px 14px; font-size: 13px; }
dl.facts dt { font-weight: bold; } dl.facts dd { margin: 0; }
.diagram { border: 1px solid #e3e3e3; max-width: 1200px; }
.diagram svg { display: block; width: 100%; height: auto; }
ul.findings li { margin: 2px 0; font-size: 13px; }
.note { color: #8a6d00; font-size: 13px; }
"""


def verify_html(report: VerifyReport) -> str:
    """The whole page: summary counts, a row per pod, then a section per pod."""
    counts: dict[str, int] = {}
    for pod in report.pods:
        counts[pod.status] = counts.get(pod.status, 0) + 1
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             "<title>podnat verify</title>", f"<style>{CSS}</style>", "</head>", "<body>",
             "<h1>podnat verify</h1>",
             '<p class="counts">' + f"<span><b>{len(report.pods)}</b> pods</span>"
             + "".join(f'<span class="{s}"><b>{counts[s]}</b> {s}</span>' for s in STATUS_ORDER
                       if s in counts)
             + f"<span>exit code <b>{int(report.exit_code)}</b></span></p>"]
    parts += _overview(report)
    for pod in report.pods:
        parts += _pod_section(pod)
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


def _anchor(pod: PodReport) -> str:
    return "pod-" + re.sub(r"[^A-Za-z0-9_-]", "-", f"{pod.ref.namespace}-{pod.ref.name}")


def _overview(report: VerifyReport) -> list[str]:
    rows = ["<table>", "<tr><th>namespace</th><th>pod</th><th>status</th><th>flows</th><th>why</th></tr>"]
    for pod in report.pods:
        flows = ""
        if pod.explanation is not None:
            flows = " ".join(
                f'<span class="{status.value}">{int(flow_type)}'
                f'{"✓" if status is FlowStatus.OK else "?" if status is FlowStatus.UNKNOWN else "✗"}</span>'
                for flow_type, status in sorted(flow_types(pod.explanation.flows).items()))
        rows.append(f"<tr><td>{escape(pod.ref.namespace)}</td>"
                    f'<td><a href="#{_anchor(pod)}">{escape(pod.ref.name)}</a></td>'
                    f'<td class="status {pod.status}">{pod.status}</td><td>{flows}</td>'
                    f"<td>{escape(_why(pod))}</td></tr>")
    rows.append("</table>")
    return rows


def _why(pod: PodReport) -> str:
    if pod.error is not None:
        return pod.error
    if pod.explanation is not None:
        return next((f.message for f in pod.explanation.findings if f.severity == "error"), "")
    return "; ".join(pod.notes)


def _pod_section(pod: PodReport) -> list[str]:
    name = f"{pod.ref.namespace}/{pod.ref.name}"
    out = [f'<section class="pod" id="{_anchor(pod)}">',
           f'<h2>{escape(name)} <span class="status {pod.status}">{pod.status}</span></h2>',
           '<dl class="facts">']
    facts = [("node", pod.node), ("pod IP", pod.pod_ip), ("Istio", pod.istio_version),
             ("capture", pod.capture_mode or pod.mesh), *((f"{k} from", v) for k, v in pod.sources.items())]
    if pod.listeners is not None:
        bound = ", ".join(f"{item.port} ({item.name})" for item in pod.listeners if item.binds)
        facts.append(("listeners", bound or "none"))
    out += [f"<dt>{escape(k)}</dt><dd>{escape(v or '-')}</dd>" for k, v in facts]
    out.append("</dl>")
    out += [f'<p class="note">note: {escape(n)}</p>' for n in pod.notes]
    if pod.error is not None:
        out.append(f'<p class="status error">error: {escape(pod.error)}</p>')
    if pod.explanation is not None:
        out += _flows_table(pod.explanation)
        out.append('<div class="diagram">' + inline_svg(diagram_svg(pod.explanation, name)) + "</div>")
        out += _findings(pod.explanation)
    out.append("</section>")
    return out


def inline_svg(svg: str) -> str:
    """An SVG document for embedding in HTML5, where it needs no namespace declaration (nor any URL)."""
    return svg.replace(' xmlns="http://www.w3.org/2000/svg"', "", 1)


def _flows_table(expl: Explanation) -> list[str]:
    with_intent = expl.diff is not None
    head = "<tr><th>type</th><th>flow</th><th>path (rules ⇒ Envoy ports ⇒ end)</th>"
    head += "<th>expected</th><th>status</th></tr>" if with_intent else "<th>outcome</th></tr>"
    rows = ["<table>", head]
    for report in expl.flows:
        colour = FLOW_COLOURS.get(report.spec.type, "#555")
        cells = [f'<td><span class="swatch" style="background:{colour}"></span>{int(report.spec.type)}</td>',
                 f"<td>{escape(report.spec.name)}</td>",
                 f'<td class="path">{escape(path_summary(report.live))}</td>']
        if with_intent:
            cells.append(f'<td class="path">{escape(_expected(report))}</td>')
            cells.append(f'<td class="status {report.status.value}">{escape(status_word(report))}</td>')
        else:
            css = "broken" if report.status in FAILING else "ok"
            cells.append(f'<td class="status {css}">{escape(report.live.outcome.value)}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    rows.append("</table>")
    return rows


def _expected(report: FlowReport) -> str:
    if report.expected is None:
        return "-"
    return "same" if report.status is FlowStatus.OK else path_summary(report.expected)


def _findings(expl: Explanation) -> list[str]:
    if not expl.findings and not expl.shadowed:
        return []
    out = ["<h3>Findings</h3>", '<ul class="findings">']
    for finding in expl.findings:
        css = {"error": "broken", "warning": "unknown"}.get(finding.severity, "skipped")
        rules = f" ({', '.join(finding.rules)})" if finding.rules else ""
        out.append(f'<li><span class="status {css}">{escape(finding.severity)}</span> '
                   f"{escape(finding.message)}{escape(rules)}</li>")
    for shadowed in expl.shadowed:
        out.append(f'<li><span class="status skipped">shadowed</span> {escape(shadowed.rule.ref)} '
                   f"<code>{escape(shadowed.rule.text)}</code>: {escape(shadowed.reason)}</li>")
    out.append("</ul>")
    return out
