"""The one module that talks to the terminal (rich). Data goes to stdout, diagnostics to stderr."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from podnat._typing import assert_never
from podnat.istio.evidence import evidence
from podnat.istio.explain import Explanation, FlowStatus, Severity
from podnat.istio.paths import FlowTrace, Outcome
from podnat.netfilter.model import Ruleset

if TYPE_CHECKING:
    from podnat.istio.routing import TproxyRouting
    from podnat.report import Explained, PodReport, VerifyReport

# Piped output (scripts, CI logs) gets long lines rather than an 80-column wrap, as kubectl does.
_PIPED_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
out = Console(soft_wrap=False, highlight=False, width=_PIPED_WIDTH)
err = Console(stderr=True, highlight=False, soft_wrap=True)

STATUS_STYLE = {
    FlowStatus.OK: "green",
    FlowStatus.DRIFT: "yellow",
    FlowStatus.BROKEN: "bold red",
    FlowStatus.UNKNOWN: "magenta",
}
STATUS_MARK = {FlowStatus.OK: "✓", FlowStatus.DRIFT: "✗", FlowStatus.BROKEN: "✗", FlowStatus.UNKNOWN: "?"}
OUTCOME_MARK = {
    Outcome.DELIVERED: "✓",
    Outcome.REFUSED: "✗",
    Outcome.LOOP: "✗",
    Outcome.DROPPED: "✗",
    Outcome.UNDECIDED: "?",
}
OUTCOME_STYLE = {
    Outcome.DELIVERED: "green",
    Outcome.REFUSED: "bold red",
    Outcome.LOOP: "bold red",
    Outcome.DROPPED: "bold red",
    Outcome.UNDECIDED: "magenta",
}


def error(message: str) -> None:
    """One line on stderr: what happened and what to do."""
    err.print(f"[bold red]podnat:[/] {escape(message)}")


def warning(message: str) -> None:
    """One line on stderr: something the user should know, that does not change the exit code."""
    err.print(f"[bold yellow]podnat: warning:[/] {escape(message)}")


def note(message: str) -> None:
    err.print(f"[dim]{escape(message)}[/]")


NARROW = 110  # below this many columns the expected path goes under the live one, not beside it


def path_pieces(trace: FlowTrace, counters: Ruleset | None = None) -> list[Text]:
    """A flow's path as the pieces a line may break between: the first rule, then `→ RULE`, `⇒ Envoy
    15001`, …, `⇒ where it ended`. A rule (or an Envoy port) is never split."""
    pieces: list[Text] = []

    def add(arrow: str, token: Text) -> None:
        pieces.append(Text.assemble((f"{arrow} ", "dim"), token) if pieces else token)

    for index, leg in enumerate(trace.legs):
        if not leg.rules:
            add("⇒", Text("(no rule)", style="dim"))
        for number, ref in enumerate(leg.rules):
            token = Text(ref)
            if counters is not None and counters.counters:
                rule = counters.rule_by_ref(ref)
                if rule is not None and rule.counters is not None:
                    token.append(f" [{rule.counters.packets:,}]", style="dim")
            add("→" if number else "⇒", token)
        if index < len(trace.proxy_ports):
            proxy = "ztunnel" if trace.ztunnel_ports else "Envoy"
            add("⇒", Text(f"{proxy} {trace.proxy_ports[index]}", style="bold cyan"))
    end = {
        Outcome.DELIVERED: str(trace.delivered_to),
        Outcome.REFUSED: "REFUSED",
        Outcome.LOOP: "LOOP",
        Outcome.DROPPED: "DROPPED",
        Outcome.UNDECIDED: "UNDECIDED",
    }[trace.outcome]
    add("⇒", Text(end, style=OUTCOME_STYLE[trace.outcome]))
    return pieces


def path_text(trace: FlowTrace, counters: Ruleset | None = None) -> Text:
    """A flow's path as one readable chain: rules -> Envoy port -> rules -> where it ended."""
    return Text(" ").join(path_pieces(trace, counters))


def wrap_pieces(pieces: list[Text], width: int) -> Text:
    """Pieces on lines of at most `width` cells, broken only between pieces (so: before an arrow)."""
    text = Text()
    used = 0
    for piece in pieces:
        if used and used + 1 + piece.cell_len > width:
            text.append("\n")
            used = 0
        elif used:
            text.append(" ")
            used += 1
        text.append_text(piece)
        used += piece.cell_len
    return text


def print_trace(trace: FlowTrace, ruleset: Ruleset, wide: bool = True) -> None:
    out.print(Text.assemble(("path: ", "bold"), path_text(trace, ruleset)))
    out.print(
        Text.assemble(("outcome: ", "bold"), (trace.outcome.value, OUTCOME_STYLE[trace.outcome]), f" — {trace.reason}")
    )
    if wide:
        _print_leg_rules(trace, ruleset)


def _print_leg_rules(trace: FlowTrace, ruleset: Ruleset) -> None:
    for number, leg in enumerate(trace.legs, start=1):
        who = leg.actor.value + (f" uid {leg.identity.uid} gid {leg.identity.gid}" if leg.identity else "")
        out.print(
            f"  leg {number}: {who} {leg.src} -> {leg.dst} ({leg.hook})"
            + (f", {leg.verdict.value} to {leg.to}" if leg.to else "")
        )
        for rule in leg.hits:
            out.print(Text.assemble("    ", (f"{rule.ref:<22}", "cyan"), " ", rule.text))


def print_explanation(expl: Explanation, ruleset: Ruleset, wide: bool = False, title: str | None = None) -> None:
    with_intent = expl.diff is not None
    beside = with_intent and out.width >= NARROW  # the expected path in its own column
    rows = []
    for report in expl.flows:
        live = path_pieces(report.live, ruleset)
        expected = path_pieces(report.expected) if report.expected is not None else None
        status = (
            Text(f"{STATUS_MARK[report.status]} {report.status.value}", style=STATUS_STYLE[report.status])
            if with_intent
            else Text(
                f"{OUTCOME_MARK[report.live.outcome]} {report.live.outcome.value}",
                style=OUTCOME_STYLE[report.live.outcome],
            )
        )
        rows.append((report, live, expected, status))
    # widths: the flow's name wraps at words; the paths take what is left, at least their widest piece
    status_w = max(len("status"), *(cell.cell_len for *_, cell in rows))
    flow_w = min(max(len(report.spec.name) for report in expl.flows), 24 if out.width >= NARROW else 18)
    columns = 5 if beside else 4
    left = out.width - (columns + 1) - 2 * columns - len("type") - flow_w - status_w
    widest = max(piece.cell_len for _, live, expected, _ in rows for piece in (*live, *(expected or ())))
    longest = max(Text(" ").join(path).cell_len for _, live, expected, _ in rows for path in (live, expected or live))
    path_w = min(max(left // 2 if beside else left, widest), longest + len("expected: "))

    table = Table(title=title, title_justify="left", show_lines=wide or (with_intent and not beside), expand=False)
    table.add_column("type", justify="right")
    table.add_column("flow", width=flow_w)
    table.add_column(
        f"path (rules ⇒ {expl.proxy} ports ⇒ end)" + (", expected" if with_intent and not beside else ""),
        width=path_w,
        overflow="fold",
    )
    if beside:
        table.add_column("expected", width=path_w, overflow="fold")
    table.add_column("status" if with_intent else "outcome", no_wrap=True)
    for report, live, expected, status in rows:
        path = wrap_pieces(live, path_w)
        if beside or not with_intent:
            other = (
                Text("-")
                if expected is None
                else Text("same", style="dim")
                if report.status is FlowStatus.OK
                else wrap_pieces(expected, path_w)
            )
        elif expected is not None and report.status is not FlowStatus.OK:
            path = Text.assemble(path, "\n", wrap_pieces([Text("expected:", style="bold"), *expected], path_w))
        cells: list[Text | str] = [str(int(report.spec.type)), report.spec.name, path]
        if beside:
            cells.append(other)
        cells.append(status)
        table.add_row(*cells)
    out.print(table)
    if wide:
        for report in expl.flows:
            out.print(Text(f"type {int(report.spec.type)}: {report.spec.name}", style="bold"))
            _print_leg_rules(report.live, ruleset)
    if expl.shadowed:
        out.print(Text("Shadowed rules (no packet can reach them):", style="bold"))
        shadowed = _hanging()
        for s in expl.shadowed:
            shadowed.add_row(Text(s.rule.ref, style="cyan"), Text.assemble(s.rule.text, "\n", (s.reason, "dim")))
        out.print(shadowed)
    observed = evidence(expl, ruleset) if ruleset is not None else None
    if observed is not None:
        out.print(Text("Counters (packets since the rules were loaded):", style="bold"))
        for flow in observed.flows:
            word = "consistent" if flow.consistent else "not yet seen: " + ", ".join(flow.silent) + " never counted"
            label = f"type {flow.flow}" + (f" ({flow.variant})" if flow.variant else "")
            out.print(Text.assemble("  ", (f"{label:<22}", "bold"), (word, "green" if flow.consistent else "yellow")))
        for ref, text, packets in observed.unexpected:
            out.print(
                Text.assemble(
                    "  traffic you did not expect: ", (ref, "cyan"), f", {packets:,} packets  ", (text, "dim")
                )
            )
    if expl.findings:
        out.print(Text("Findings:", style="bold"))
        findings = _hanging()
        for f in expl.findings:
            mark, style = _severity_look(f.severity)
            findings.add_row(Text(f"{mark} {f.severity.value}", style=style), f.message)
        out.print(findings)


def _severity_look(severity: Severity) -> tuple[str, str]:
    """A finding's mark and style."""
    match severity:
        case Severity.ERROR:
            return "✗", "red"
        case Severity.WARNING:
            return "?", "yellow"
        case Severity.INFO:
            return "·", "dim"
        case _:
            assert_never(severity)


def _hanging() -> Table:
    """Two columns, indented: a label, then text that wraps under itself (not under the label)."""
    grid = Table.grid(padding=(0, 0, 0, 2), pad_edge=True)
    grid.add_column(no_wrap=True)
    grid.add_column()
    return grid


def print_pod_report(report: PodReport, wide: bool = False) -> None:
    """`podnat inspect`: a header (pod, node, IP, release, capture mode, sources), flows, diff, advice."""
    from podnat.report import (
        Explained,
        Failed,
        Relayed,
        Skipped,
    )  # the pod reports (and what they import): live commands only

    header = Table.grid(padding=(0, 2))
    header.add_column(style="bold")
    header.add_column()
    header.add_row("pod", f"{report.ref.namespace}/{report.ref.name}")
    header.add_row("node", report.node or "-")
    header.add_row("pod IP", report.pod_ip or "-")
    header.add_row("Istio", report.istio_version or "-")
    header.add_row("capture", report.capture_mode or report.mesh)
    for name, label in report.sources.items():
        header.add_row(f"{name} from", label)
    if report.live is not None:
        header.add_row("rules", "live" if report.live else Text("applied at start, not necessarily live", "yellow"))
    families = report.families if isinstance(report, Explained) else ()
    kind = "policy" if report.capture_mode == "ambient" else "TPROXY"  # ambient: ztunnel's fwmark rule and table 100
    for family in families:
        routing = family.explanation.policy_routing
        if routing is not None:
            header.add_row(f"{kind} routing ({routing.family.value})", _routing_text(routing))
    out.print(header)
    if isinstance(report, Explained) and report.listeners is not None:
        bound = ", ".join(f"{listener.port} ({listener.name})" for listener in report.listeners if listener.binds)
        out.print(Text.assemble(("listeners ", "bold"), bound or "none"))
    for item in report.notes:
        out.print(Text(f"note: {item}", style="yellow"))
    match report:
        case Explained():
            _print_explained(report, wide)
        case Skipped():
            out.print(Text(f"not checked: {report.mesh}", style="dim"))
        case Failed():
            out.print(Text(f"error: {report.error}", style="bold red"))
        case Relayed():  # verify's only (inspect explains the facts it is sent): the flows' verdicts
            for flow_type, status in sorted(report.flow_statuses.items()):
                out.print(Text(f"type {int(flow_type)}: {status.value}", style=STATUS_STYLE[status]))
            for finding in report.findings:
                out.print(Text(f"{finding.severity.value}: {finding.message}"))
            out.print(Text.assemble(("status: ", "bold"), (report.status.value, _STATUS_WORD[report.status])))
        case _:
            assert_never(report)


def _print_explained(report: Explained, wide: bool) -> None:
    """An explained pod's flows (a dual-stack pod's: each family's, its first address's first), probe, status."""
    if len(report.families) == 1:
        print_explanation(report.explanation, report.ruleset, wide=wide)
    for index, family in enumerate(report.families if len(report.families) > 1 else ()):
        address = report.pod_ips[index] if index < len(report.pod_ips) else None
        title = f"{family.family.value}" + (f" ({address})" if address else "")
        print_explanation(family.explanation, family.ruleset, wide=wide, title=title)
    if report.probe is not None:
        table = Table(
            title="Probe: one real connection each (counted by the kernel vs predicted by podnat)", title_justify="left"
        )
        for column in ("type", "sent", "counted rules", "predicted", "match"):
            table.add_column(column, overflow="fold")
        for p in report.probe:
            label = f"{p.flow}" + (f" ({p.variant})" if p.variant else "")
            match = Text("yes", style="green") if p.matches else Text(p.error or "NO", style="bold red")
            table.add_row(label, p.sent, " → ".join(p.observed) or "(none)", " → ".join(p.predicted), match)
        out.print(table)
    out.print(Text.assemble(("status: ", "bold"), (report.status.value, _STATUS_WORD[report.status])))


def _routing_text(routing: TproxyRouting) -> Text:
    """`ip rule fwmark 0x539 lookup 133 ✓  local default dev lo in 133 ✗` (? when not known)."""
    text = Text()
    for index, (label, known) in enumerate(
        (
            (f"{routing.family_ip} rule fwmark {routing.mark:#x} lookup {routing.table}", routing.fwmark_rule),
            (f"local default dev lo in table {routing.table}", routing.local_route),
        )
    ):
        if index:
            text.append("  ")
        mark, style = ("?", "magenta") if known is None else ("✓", "green") if known else ("✗ missing", "bold red")
        text.append(f"{label} ")
        text.append(mark, style=style)
    if routing.unknown:
        text.append(f" ({routing.unknown})", style="dim")
    return text


# PodStatus (a str Enum) -> style, keyed by its values so that explain's start need not import the pod reports
_STATUS_WORD = {
    "ok": "green",
    "drift": "yellow",
    "broken": "bold red",
    "error": "bold red",
    "unknown": "magenta",
    "skipped": "dim",
}


def print_verify(report: VerifyReport) -> None:
    """`podnat verify`: one row per pod, then the totals."""
    from podnat.report import Explained, Failed, Relayed, Skipped

    table = Table(expand=False)
    for column in ("NAMESPACE", "POD", "STATUS", "LIVE", "FLOWS 1-6"):
        table.add_column(column, no_wrap=True)
    table.add_column("WHY", overflow="fold")
    for pod in report.pods:
        flows = Text()
        match pod:
            case Explained() | Relayed():
                for flow_type, status in sorted(pod.flow_statuses.items()):
                    mark = "✓" if status is FlowStatus.OK else ("?" if status is FlowStatus.UNKNOWN else "✗")
                    flows.append(f"{int(flow_type)}{mark} ", style=STATUS_STYLE[status])
                why = next((f.message for f in pod.findings if f.severity is Severity.ERROR), "")
            case Skipped():
                why = "; ".join(pod.notes)
            case Failed():
                why = pod.error
            case _:
                assert_never(pod)
        table.add_row(
            pod.ref.namespace,
            pod.ref.name,
            Text(pod.status.value, style=_STATUS_WORD[pod.status]),
            _live_word(pod.live),
            flows,
            why,
        )
    out.print(table)
    counts: dict[str, int] = {}
    for pod in report.pods:
        counts[pod.status.value] = counts.get(pod.status.value, 0) + 1
    at_start = sum(1 for pod in report.pods if pod.live is False)
    out.print(
        f"{len(report.pods)} pods: "
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        + (f" ({at_start} read from rules applied at start, not live)" if at_start else "")
    )


def _live_word(live: bool | None) -> Text:
    """`verify`'s LIVE column: yes (the rules the kernel runs now), no (applied at start: a log), - (none read)."""
    if live is None:
        return Text("-", style="dim")
    return Text("yes") if live else Text("no (at start)", style="yellow")


class VerifyProgress:
    """A progress bar on stderr while `verify` reads pods (only on a terminal)."""

    def __init__(self, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.enabled = err.is_terminal
        self._progress = Progress(
            TextColumn("reading pods"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        )
        self._task = self._progress.add_task("pods", total=total)

    def __enter__(self) -> VerifyProgress:
        if self.enabled:
            self._progress.start()
        return self

    def advance(self, _report: object = None) -> None:
        self._progress.advance(self._task)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._progress.stop()
