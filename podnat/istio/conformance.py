"""Golden conformance: does the generator reproduce every Istio golden in the shared reference?

    python -m podnat.istio.conformance [--reference DIR] [-o text|json]

For each golden under DIR/goldens (iptables/*.golden, iptables/cni-sidecar-plugin/*,
history/<tag>/*), the configuration it was made from (podnat.istio.goldens) goes through
`expected_rules`, the golden through `normalise_restore`, and the two are compared rule by rule per
(family, table, chain). Where the golden was loaded into a real kernel (DIR/kernel-save/iptables/
NAME.v4|v6.iptables-save), the normalised golden must also equal that dump; a `*.FAILED.txt` there is
a bad-input case (a group that does not exist on the loading host): noted, not a failure. Ambient
goldens are listed as "ambient: not generated". Prints one line per golden and "N of M goldens
reproduced"; exits 0 only when every non-ambient golden is reproduced.

The default reference is $PODNAT_SHARED/istio-reference, else ../shared/istio-reference next to the
repository. This is the one module of podnat.istio that reads files: `load_golden(path)` lives here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

from podnat.istio.generator import expected_rules
from podnat.istio.goldens import CaseKind, Golden, case_config, case_for, split_golden
from podnat.istio.normalise import NormaliseError, normalise_restore

ChainKey = tuple[str, str, str]  # (family, table, chain)


def load_golden(path: Path | str) -> Golden:
    """Read a golden file and split it into IPv4 and IPv6 restore input."""
    return split_golden(Path(path).read_text(encoding="utf-8"))


def default_reference() -> Path:
    """$PODNAT_SHARED/istio-reference, else ../shared/istio-reference next to the repository."""
    shared = os.environ.get("PODNAT_SHARED")
    if shared:
        return Path(shared) / "istio-reference"
    return Path(__file__).resolve().parents[2].parent / "shared" / "istio-reference"


class Verdict(str, Enum):
    """How a golden came out."""

    REPRODUCED = "reproduced"
    NOT_REPRODUCED = "NOT reproduced"
    AMBIENT = "ambient: not generated"


@dataclass(frozen=True, slots=True)
class GoldenResult:
    """One golden's verdict, why, and what its kernel dump said."""

    path: str
    verdict: Verdict
    reason: str = ""
    kernel_save: str = ""  # "matches (v4, v6)", "bad input: ...", "" when the golden was not loaded


def chains(save_text: str, family: str) -> dict[ChainKey, list[str]]:
    """`iptables-save` text -> rules per (family, table, chain); declared empty chains included."""
    out: dict[ChainKey, list[str]] = {}
    table = ""
    for line in save_text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith(":"):
            out.setdefault((family, table, line[1:].split()[0]), [])
        elif line.startswith("-A "):
            chain = line.split()[1]
            out.setdefault((family, table, chain), []).append(line)
    return out


def compare(want: dict[ChainKey, list[str]], got: dict[ChainKey, list[str]]) -> str:
    """ "" when equal, else the first difference in words."""
    for key in sorted(set(want) | set(got)):
        family, table, chain = key
        where = f"{family} {table} {chain}"
        if key not in got:
            return f"{where}: chain missing from the generated rules ({len(want[key])} rules in the golden)"
        if key not in want:
            return f"{where}: chain generated but not in the golden ({len(got[key])} rules)"
        a, b = want[key], got[key]
        if a == b:
            continue
        for i, (x, y) in enumerate(zip(a, b, strict=False), start=1):
            if x != y:
                return f"{where} rule {i}: golden {x!r}, generated {y!r}"
        if len(a) > len(b):
            return f"{where}: generated {len(b)} rules, golden has {len(a)}; first missing {a[len(b)]!r}"
        return f"{where}: generated {len(b)} rules, golden has {len(a)}; first extra {b[len(a)]!r}"
    return ""


def _golden_chains(golden: Golden) -> dict[ChainKey, list[str]]:
    """A golden's rules per (family, table, chain), normalised to the save form."""
    out = chains(normalise_restore(golden.v4, ipv6=False), "v4")
    if golden.v6 is not None:
        out.update(chains(normalise_restore(golden.v6, ipv6=True), "v6"))
    return out


def check_golden(reference: Path, rel: str) -> GoldenResult:
    """Reproduce one golden (path relative to reference/goldens)."""
    case = case_for(rel)
    if case is None:
        return GoldenResult(rel, Verdict.NOT_REPRODUCED, "no configuration known for this golden")
    if case.kind is CaseKind.AMBIENT:
        return GoldenResult(rel, Verdict.AMBIENT, case.note)
    golden = load_golden(reference / "goldens" / rel)
    try:
        want = _golden_chains(golden)
    except NormaliseError as exc:
        return GoldenResult(rel, Verdict.NOT_REPRODUCED, f"golden does not parse: {exc}")
    config = case_config(case)
    if config is None:  # pragma: no cover - only ambient cases have none
        return GoldenResult(rel, Verdict.AMBIENT, case.note)
    expected = expected_rules(config)
    got = chains(expected.v4, "v4")
    if expected.v6 is not None:
        got.update(chains(expected.v6, "v6"))
    kernel = _kernel_check(reference, case.kernel_save, golden)
    reason = compare(want, got)
    if not reason and kernel.startswith("DIFFERS"):
        reason = f"normalised golden differs from the kernel's dump: {kernel}"
    verdict = Verdict.NOT_REPRODUCED if reason else Verdict.REPRODUCED
    note = f" ({case.note})" if case.note and not reason else ""
    return GoldenResult(rel, verdict, reason + note, kernel)


def _kernel_check(reference: Path, stem: str | None, golden: Golden) -> str:
    """normalise(golden) against kernel-save/iptables/STEM.v4|v6.iptables-save, in words."""
    if not stem:
        return ""
    base = reference / "kernel-save" / "iptables"
    seen: list[str] = []
    for family, text in (("v4", golden.v4), ("v6", golden.v6)):
        dump = base / f"{stem}.{family}.iptables-save"
        failed = base / f"{stem}.{family}.iptables-save.FAILED.txt"
        if failed.exists():
            first = failed.read_text(encoding="utf-8").strip().splitlines()[0]
            return f"bad input, not loaded: {first}"
        if not dump.exists() or text is None:
            continue
        want = chains(dump.read_text(encoding="utf-8"), family)
        got = chains(normalise_restore(text, ipv6=family == "v6"), family)
        diff = compare(want, got)
        if diff:
            return f"DIFFERS {diff}"
        seen.append(family)
    return f"matches the kernel's dump ({', '.join(seen)})" if seen else ""


def golden_paths(reference: Path) -> list[str]:
    """Every golden under reference/goldens/{iptables,history}, relative to goldens/."""
    root = reference / "goldens"
    found = [p for sub in ("iptables", "history") for p in (root / sub).rglob("*.golden")]
    return sorted(str(p.relative_to(root)) for p in found)


def run(reference: Path) -> list[GoldenResult]:
    """Check every golden in the reference."""
    return [check_golden(reference, rel) for rel in golden_paths(reference)]


def summary(results: Sequence[GoldenResult]) -> tuple[int, int]:
    """(reproduced, counted): ambient goldens are not counted."""
    counted = [r for r in results if r.verdict is not Verdict.AMBIENT]
    return sum(r.verdict is Verdict.REPRODUCED for r in counted), len(counted)


def main(argv: Sequence[str] | None = None) -> int:
    """Print one line per golden and the count; 0 when every non-ambient golden is reproduced."""
    parser = argparse.ArgumentParser(
        prog="python -m podnat.istio.conformance", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--reference", type=Path, default=None, help="the shared istio-reference directory")
    parser.add_argument("-o", "--output", choices=("text", "json"), default="text")
    args = parser.parse_args(argv)
    reference: Path = args.reference or default_reference()
    if not (reference / "goldens").is_dir():
        print(f"no goldens under {reference}: pass --reference DIR or set PODNAT_SHARED", file=sys.stderr)
        return 2
    results = run(reference)
    ok, total = summary(results)
    if args.output == "json":
        doc = {
            "reference": str(reference),
            "reproduced": ok,
            "total": total,
            "goldens": [{**asdict(r), "verdict": r.verdict.value} for r in results],
        }
        print(json.dumps(doc, indent=2))
    else:
        for r in results:
            line = f"{r.verdict.value:<24} {r.path}"
            if r.reason:
                line += f": {r.reason}"
            if r.kernel_save:
                line += f" [kernel-save: {r.kernel_save}]"
            print(line)
        print(f"{ok} of {total} goldens reproduced")
    return 0 if ok == total else 1


if __name__ == "__main__":
    raise SystemExit(main())
