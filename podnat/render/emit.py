"""`-o FORMAT`: the one place that turns a command's result into its output. Pure but for stdout.

Each renderer is loaded when its format is asked for (the terminal's rich only for a table: JSON and
YAML are written here).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from podnat.render.output import OutputFormat

if TYPE_CHECKING:
    from podnat.istio.explain import Explanation
    from podnat.istio.paths import FlowTrace
    from podnat.netfilter.model import Ruleset
    from podnat.report import PodReport, VerifyReport


@dataclass(frozen=True, slots=True)
class TableTrace:
    """`podnat trace`: one connection through a saved table, and what is said beside it."""

    trace: FlowTrace
    ruleset: Ruleset
    beside: Mapping[str, Any] = field(default_factory=dict)  # `input`, `context` (and `findings`) of -o json
    error: str | None = None  # said on stderr under the table: the log shows the rules were never loaded


@dataclass(frozen=True, slots=True)
class TableExplanation:
    """`podnat explain`: every flow of a saved table, and what is said beside it."""

    explanation: Explanation
    ruleset: Ruleset
    beside: Mapping[str, Any] = field(default_factory=dict)  # `input` and `context` of -o json


Result: TypeAlias = "TableTrace | TableExplanation | PodReport | VerifyReport"


class Progress(Protocol):
    """verify's progress: `advance` once per pod read, inside `with`."""

    def __enter__(self) -> Progress: ...
    def __exit__(self, *exc: object) -> None: ...
    def advance(self, _report: object = None) -> None: ...


class _NoProgress:
    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def advance(self, _report: object = None) -> None:
        return None


def verify_progress(total: int) -> Progress:
    """A progress bar on stderr where rich would show one (podnat.render.console.VerifyProgress), loading rich
    only then: where stderr is no terminal and no variable rich reads (TTY_COMPATIBLE=1, FORCE_COLOR) says it
    is one, rich would show none, and a script piping `-o json` does not pay for loading it."""
    if os.environ.get("TTY_COMPATIBLE") != "1" and not os.environ.get("FORCE_COLOR") and not _isatty(sys.stderr):
        return _NoProgress()
    from podnat.render.console import VerifyProgress

    return VerifyProgress(total)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def emit(result: Result, output: OutputFormat) -> None:
    """Print `result` in the form `output` names (the CLI offers each command only the forms it has)."""
    from podnat._typing import assert_never

    match output:
        case OutputFormat.json | OutputFormat.yaml:
            print_data(_data(result), output.value)
        case OutputFormat.table | OutputFormat.wide:
            _table(result, wide=output is OutputFormat.wide)
        case OutputFormat.mermaid:
            if isinstance(result, TableTrace):  # a trace has no picture: -o mermaid prints its table
                _table(result, wide=False)
            else:
                from podnat.render.mermaid import diagram_mermaid

                sys.stdout.write(diagram_mermaid(explanation_to_draw(result)))
        case OutputFormat.junit:
            from podnat.render.junit import verify_junit
            from podnat.report import VerifyReport

            if not isinstance(result, VerifyReport):
                raise ValueError("-o junit is verify's")
            sys.stdout.write(verify_junit(result))
        case _:
            assert_never(output)


def print_data(data: Any, fmt: str) -> None:
    """JSON or YAML to stdout, untouched by rich (which is not even loaded).

    JSON is indented for a person at a terminal; piped or redirected it is one line from the C
    encoder (indenting is pure Python: a 200-pod verify report took 0.3 s to indent, 0.05 s not to).
    The indented form is streamed (json.dumps would hold its every piece in one list)."""
    if fmt == "yaml":
        import yaml

        sys.stdout.write(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    elif sys.stdout.isatty():
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(json.dumps(data) + "\n")


def _data(result: Result) -> dict[str, Any]:
    from podnat.render import data

    if isinstance(result, TableTrace):
        return {**data.trace_data(result.trace, result.ruleset), **result.beside}
    if isinstance(result, TableExplanation):
        return {**data.explanation_data(result.explanation, result.ruleset), **result.beside}
    from podnat.report import VerifyReport

    if isinstance(result, VerifyReport):
        return data.verify_data(result)
    return data.pod_report_data(result)


def _table(result: Result, wide: bool) -> None:
    from podnat.render import console

    if isinstance(result, TableTrace):
        console.print_trace(result.trace, result.ruleset)
        if result.error is not None:
            console.error(result.error)
        return
    if isinstance(result, TableExplanation):
        console.print_explanation(result.explanation, result.ruleset, wide=wide)
        return
    from podnat.report import VerifyReport  # the pod reports (and what they import): live commands only

    if isinstance(result, VerifyReport):
        console.print_verify(result)
    else:
        console.print_pod_report(result, wide=wide)


def explanation_to_draw(result: Result, skipped_why: str | None = None) -> Explanation:
    """The flows a picture draws: an explanation, or an explained pod's (a usage error for any other pod;
    `skipped_why` says why a pod with nothing to check has none, default its mesh mode)."""
    from podnat.errors import UsageError
    from podnat.report import Explained, Failed, VerifyReport

    if isinstance(result, TableExplanation):
        return result.explanation
    if isinstance(result, Explained):
        return result.explanation
    if isinstance(result, TableTrace | VerifyReport):
        raise UsageError("-o mermaid draws one pod or one table: use -o table")
    why = result.error if isinstance(result, Failed) else (skipped_why or result.mesh)
    raise UsageError(f"no diagram for {result.ref}: {why}")
