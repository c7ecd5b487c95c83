"""The one module that talks to the terminal (rich). Data goes to stdout, diagnostics to stderr."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from podnat.istio.explain import Explanation, FlowReport, FlowStatus
from podnat.istio.paths import FlowTrace, Leg, Outcome
from podnat.netfilter.model import Ruleset

out = Console(soft_wrap=False, highlight=False)
err = Console(stderr=True, highlight=False)

STATUS_STYLE = {
    FlowStatus.OK: "green",
    FlowStatus.DRIFT: "yellow",
    FlowStatus.BROKEN: "bold red",
    FlowStatus.UNKNOWN: "magenta",
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


def note(message: str) -> None:
    err.print(f"[dim]{escape(message)}[/]")


def print_data(data: Any, fmt: str) -> None:
    """JSON or YAML to stdout, untouched by rich."""
    if fmt == "yaml":
        import yaml

        sys.stdout.write(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    else:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")


def path_text(trace: FlowTrace, counters: Ruleset | None = None) -> Text:
    """A flow's path as one readable chain: rules -> Envoy port -> rules -> where it ended."""
    text = Text()
    for index, leg in enumerate(trace.legs):
        if index:
            text.append(" ⇒ ", style="dim")
        text.append_text(_leg_text(leg, counters))
        if index < len(trace.envoy_ports):
            text.append(" ⇒ ", style="dim")
            text.append(f"Envoy {trace.envoy_ports[index]}", style="bold cyan")
    end = {
        Outcome.DELIVERED: str(trace.delivered_to),
        Outcome.REFUSED: "REFUSED",
        Outcome.LOOP: "LOOP",
        Outcome.DROPPED: "DROPPED",
        Outcome.UNDECIDED: "UNDECIDED",
    }[trace.outcome]
    text.append(" ⇒ ", style="dim")
    text.append(end, style=OUTCOME_STYLE[trace.outcome])
    return text


def _leg_text(leg: Leg, counters: Ruleset | None) -> Text:
    text = Text()
    if not leg.rules:
        text.append("(no rule)", style="dim")
    for index, ref in enumerate(leg.rules):
        if index:
            text.append(" → ", style="dim")
        text.append(ref)
        if counters is not None and counters.counters:
            rule = counters.rule_by_ref(ref)
            if rule is not None and rule.counters is not None:
                text.append(f" [{rule.counters.packets:,}]", style="dim")
    return text


def print_trace(trace: FlowTrace, ruleset: Ruleset, wide: bool = True) -> None:
    out.print(Text.assemble(("path: ", "bold"), path_text(trace, ruleset)))
    out.print(Text.assemble(("outcome: ", "bold"), (trace.outcome.value, OUTCOME_STYLE[trace.outcome]),
                            f" — {trace.reason}"))
    if wide:
        _print_leg_rules(trace, ruleset)


def _print_leg_rules(trace: FlowTrace, ruleset: Ruleset) -> None:
    for number, leg in enumerate(trace.legs, start=1):
        who = leg.actor.value + (f" uid {leg.identity.uid} gid {leg.identity.gid}" if leg.identity else "")
        out.print(f"  leg {number}: {who} {leg.src} -> {leg.dst} ({leg.hook})"
                  + (f", {leg.verdict} to {leg.to}" if leg.to else ""))
        for rule in leg.hits:
            out.print(Text.assemble("    ", (f"{rule.ref:<22}", "cyan"), rule.text))


def print_explanation(expl: Explanation, ruleset: Ruleset, wide: bool = False, title: str | None = None) -> None:
    with_intent = expl.diff is not None
    table = Table(title=title, title_justify="left", show_lines=wide, expand=False)
    table.add_column("type", justify="right")
    table.add_column("flow")
    table.add_column("path (rules ⇒ Envoy ports ⇒ end)", overflow="fold")
    if with_intent:
        table.add_column("expected", overflow="fold")
    table.add_column("status" if with_intent else "outcome")
    for report in expl.flows:
        row: list[Text | str] = [str(int(report.spec.type)), report.spec.name, path_text(report.live, ruleset)]
        if with_intent:
            row.append(_expected_cell(report))
            row.append(Text(report.status.value, style=STATUS_STYLE[report.status]))
        else:
            row.append(Text(report.live.outcome.value, style=OUTCOME_STYLE[report.live.outcome]))
        table.add_row(*row)
    out.print(table)
    if wide:
        for report in expl.flows:
            out.print(Text(f"type {int(report.spec.type)}: {report.spec.name}", style="bold"))
            _print_leg_rules(report.live, ruleset)
    if expl.shadowed:
        out.print(Text("Shadowed rules (no packet can reach them):", style="bold"))
        for s in expl.shadowed:
            out.print(Text.assemble("  ", (f"{s.rule.ref:<18}", "cyan"), s.rule.text))
            out.print(Text(f"      {s.reason}", style="dim"))
    if expl.findings:
        out.print(Text("Findings:", style="bold"))
        for f in expl.findings:
            style = {"error": "red", "warning": "yellow"}.get(f.severity, "dim")
            out.print(Text.assemble("  ", (f"{f.severity:<8}", style), f.message))


def _expected_cell(report: FlowReport) -> Text:
    if report.expected is None:
        return Text("-")
    if report.status is FlowStatus.OK:
        return Text("same", style="dim")
    return path_text(report.expected)
