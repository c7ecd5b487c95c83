"""The scoreboard of real, published inputs (tests/data/real-inputs): does podnat give the answer a
careful engineer gives?

Each input is run through `podnat explain FILE -o json` (in process, as the CLI runs it) and judged
against its manifest entry (tests/data/real-inputs/manifest.yaml: source, format, Istio release, what
the reporter saw, the expected answer):

- read correctly: exit code as expected (0 for a healthy table, 1 for a log whose restore failed),
  the right input form, the proxy uid/gid the table exempts, the mode (sidecar, ambient), no invented
  loops or errors on a healthy table, a capture that was never installed reported as such, the
  pre-1.5 warning on tables that old;
- refused correctly: exit 4, one line on stderr, no traceback, and a message that names the problem
  (an `iptables -L` listing and what to run instead; a fragment; the undeclared chain);
- wrong: anything else, with why.

    python tools/corpus.py          # the table; exit 1 if any input is judged wrong
    python tools/corpus.py --json   # machine-readable
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "data" / "real-inputs"

READ, REFUSED, WRONG = "read correctly", "refused correctly", "wrong"

# What podnat calls each form the manifest names.
FORMS = {
    "iptables-save": {"iptables-save", "iptables-restore input"},
    # a `-S` paste without its -P lines is, by content, restore input whose `*nat` line was cut
    "iptables -S": {"iptables -S", "iptables-restore input"},
    "istio-init log": {"istio-init log", "istio-cni log", "istio-start log"},
    "istio-cni log": {"istio-cni log"},
    "vm istio-start": {"istio-start log"},
    # restore input or a dump whose `*nat` line was cut: read by content as the one or the other
    "headerless nat body": {"iptables-restore input", "iptables-save", "iptables -S"},
    "nft": {"nft list ruleset", "nft -j list ruleset"},
}

# Where the manifest's prose allows a second answer, or names a detail its fields do not carry: the
# extra checks, each with the manifest's words for it.
EXTRA: dict[str, dict[str, Any]] = {
    # "Acceptable alternative answer: refuse as an 'iptables -nvL listing' and name iptables-save -t nat"
    "05-ssup2-blog-1.8-nat-nvL.txt": {"may_refuse": True},
    # "jumps to an undeclared chain 'ISTIO_INBOUND链' ...; name the chain"
    "27-mark8s-notes-annotated-nat-S-typo.txt": {"message": ["ISTIO_INBOUND链", "not declared"]},
    # "say it is a cut istio-start journal and ask for `journalctl -u istio` in full or `sudo iptables-save`"
    "36-shenxg13-vm-1.0-systemctl-status-istio-journal-tail.txt": {"message": ["only part of a dump", "journalctl"]},
    # "ISTIO_OUTPUT:5 '-m owner ! --uid-owner 1000 -j RETURN' is reachable ... must NOT be reported"
    "14-istio-insider-hand-edited-uid-1000.txt": {"not_shadowed": ["ISTIO_OUTPUT:5", "ISTIO_OUTPUT:8"]},
    # "as pasted, ISTIO_OUTPUT rule 6 ... is unreachable because rule 5 already RETURNs": a genuine shadow
    "30-shyunny-notes-annotated-restore-input-reordered.txt": {"shadowed": ["ISTIO_OUTPUT:6"]},
    # "the last complete dump is used ..."; "ISTIO_OUTPUT:6 ... is unreachable"
    "38-clarechu-blog-vm-1.9.4-journalctl-istio-start-zh-locale.txt": {
        "notes": ["journald prefixes removed", "applied at start", "the last complete iptables-save dump"],
        "shadowed": ["ISTIO_OUTPUT:6"],
    },
    # "'no `*nat` line: read as the nat table' noted"; "the two headings skipped (noted ...)"
    "39-tongworknotes-blog-restore-input-nat-header-cut.txt": {
        "notes": ["no `*nat` line", "line 1: not a rule, skipped", "line 8: not a rule, skipped"],
    },
}


@dataclass(frozen=True, slots=True)
class Judgement:
    """One input's score and, when wrong, why."""

    file: str
    score: str
    why: str
    form: str
    release: str
    expected: str


def entries() -> list[dict[str, Any]]:
    return list(yaml.safe_load((CORPUS / "manifest.yaml").read_text(encoding="utf-8")) or [])


def run_explain(path: Path) -> tuple[int, str, str]:
    """`podnat explain PATH -o json`, in process: exit code, stdout, stderr."""
    import warnings

    with warnings.catch_warnings():  # click's test runner uses its own deprecated helpers
        warnings.simplefilter("ignore", DeprecationWarning)
        from typer.testing import CliRunner

        from podnat.cli import app

        result = CliRunner().invoke(app, ["explain", str(path), "-o", "json"], env={"COLUMNS": "250"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return 5, result.stdout, f"Traceback: {type(result.exception).__name__}: {result.exception}"
    return result.exit_code, result.stdout, result.stderr


def judge(entry: dict[str, Any]) -> Judgement:
    name = str(entry["file"])
    expected = entry.get("expected") or {}
    extra = EXTRA.get(name, {})
    code, out, err = run_explain(CORPUS / name)
    verdict = _verdict(entry, expected, extra, code, out, err)
    return Judgement(
        name,
        verdict[0],
        verdict[1],
        str(entry.get("format", "")),
        str(entry.get("istio_release", "")),
        str(expected.get("result", "")),
    )


def _verdict(
    entry: dict[str, Any], expected: dict[str, Any], extra: dict[str, Any], code: int, out: str, err: str
) -> tuple[str, str]:
    if "Traceback" in err or code == 5:
        return WRONG, f"internal error: {err.strip()[:200]}"
    want = expected.get("result")
    if code == 4:
        if want != "refused" and not extra.get("may_refuse"):
            return WRONG, f"refused a readable input: {err.strip()[:200]}"
        return _refusal(entry, extra, err)
    if want == "refused":
        return WRONG, f"read (exit {code}) what should be refused"
    try:
        data = json.loads(out)
    except ValueError:
        return WRONG, f"exit {code} without JSON output: {err.strip()[:200]}"
    return _reading(entry, expected, extra, code, data)


def _refusal(entry: dict[str, Any], extra: dict[str, Any], err: str) -> tuple[str, str]:
    lines = err.strip().splitlines()
    if len(lines) != 1:
        return WRONG, f"refused in {len(lines)} lines, not one"
    message = lines[0]
    form = str(entry.get("format", ""))
    needed = list(extra.get("message", ()))
    if not needed and form.startswith("iptables -") and ("L" in form.rsplit(maxsplit=1)[-1]):
        needed = ["`iptables -L", "iptables-save -t nat"]
    if (
        not needed
        and form == "partial"
        and not any(p in message for p in ("before any table header", "listing", "not declared", "fragment"))
    ):
        return WRONG, f"a fragment refused without saying so: {message[:160]}"
    missing = [n for n in needed if n not in message]
    if missing:
        return WRONG, f"the refusal does not say {missing}: {message[:160]}"
    return REFUSED, ""


def _reading(
    entry: dict[str, Any], expected: dict[str, Any], extra: dict[str, Any], code: int, data: dict[str, Any]
) -> tuple[str, str]:
    problems: list[str] = []
    context, info = data.get("context") or {}, data.get("input") or {}
    errors = [f["message"] for f in data.get("findings", []) if f["severity"] == "error"]
    form = str(entry.get("format", ""))
    if form in FORMS and info.get("format") not in FORMS[form]:
        problems.append(f"read as {info.get('format')!r}, it is {form!r}")
    installed = expected.get("capture_installed", True)
    if installed is False and (not errors or not errors[0].startswith("capture was never installed")):
        problems.append("a log whose rules were never installed is not reported so")
    want_code = expected.get("exit_code", 1 if installed is False else None)
    mode = str(entry.get("mode", "sidecar"))
    if mode == "ambient":
        if context.get("mode") != "ambient":
            problems.append(f"an ambient pod's in-pod rules read as mode {context.get('mode')!r}")
        if any("loop" in e for e in errors):
            problems.append("ambient rules simulated as a sidecar (invented loops)")
    for key in ("proxy_uid", "proxy_gid"):
        if key in expected and context.get(key) != expected[key]:
            problems.append(f"{key} {context.get(key)} (the table says {expected[key]})")
    pre_1_5 = bool(expected.get("pre_1_5"))
    if pre_1_5 and not any("predates" in f["message"] for f in data.get("findings", [])):
        problems.append("no warning that the table predates Istio 1.5")
    healthy = installed is not False and mode in ("sidecar", "vm", "tproxy") and not pre_1_5
    if healthy and want_code is None:
        want_code = 0
        if errors:
            problems.append(f"errors on a healthy table: {errors[0][:120]}")
    if want_code is not None and code != want_code:
        problems.append(f"exit {code}, expected {want_code}")
    if "skipped" in str(expected.get("input_notes", "")) and not info.get("notes"):
        problems.append("the skipped lines are not noted")
    noted = " ".join(info.get("notes") or [])
    problems += [f"the input notes do not say {n!r}" for n in extra.get("notes", ()) if n not in noted]
    shadowed = {s["rule"] for s in data.get("shadowed", [])}
    problems += [
        f"{ref} reported unreachable, but packets reach it" for ref in extra.get("not_shadowed", ()) if ref in shadowed
    ]
    problems += [f"{ref} is unreachable, not reported" for ref in extra.get("shadowed", ()) if ref not in shadowed]
    if problems:
        return WRONG, "; ".join(problems)
    return READ, ""


def scoreboard(verdicts: list[Judgement]) -> dict[str, int]:
    counts = {READ: 0, REFUSED: 0, WRONG: 0}
    for v in verdicts:
        counts[v.score] += 1
    return counts


def main(argv: list[str]) -> int:
    verdicts = [judge(entry) for entry in entries()]
    counts = scoreboard(verdicts)
    if "--json" in argv:
        print(
            json.dumps(
                {
                    "inputs": len(verdicts),
                    **counts,
                    "verdicts": [{"file": v.file, "score": v.score, "why": v.why} for v in verdicts],
                },
                indent=2,
            )
        )
    else:
        width = max(len(v.file) for v in verdicts)
        for v in verdicts:
            print(f"{v.file:<{width}}  {v.score:<17}  {v.why}")
        print()
        print(
            f"{len(verdicts)} real inputs: {counts[READ]} read correctly, {counts[REFUSED]} refused correctly, "
            f"{counts[WRONG]} wrong"
        )
    return 1 if counts[WRONG] else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
