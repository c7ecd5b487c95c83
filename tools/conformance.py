"""Golden conformance: do the generators reproduce every Istio golden in the reference data?

    make conformance            (= python tools/conformance.py)
    python tools/conformance.py [--reference DIR] [-o text|json]

iptables: for each golden under DIR/goldens (iptables/*.golden, iptables/cni-sidecar-plugin/*,
history/<tag>/*), the configuration it was made from (podnat.istio.goldens) goes through
`expected_rules`; the golden is read (podnat.netfilter.parse) and printed in the kernel's spelling
(podnat.netfilter.save), and the two are compared rule by rule per (family, table, chain). Where the
golden was loaded into a real kernel (DIR/kernel-save/iptables/NAME.v4|v6.iptables-save), the
printed golden must also equal that dump (which the printer gives back unchanged: test_save.py).

nftables: for each golden under DIR/goldens/nftables, `nft_script` (podnat.istio.generator_nft) must
equal the golden line for line. Where it was loaded (DIR/kernel-save/nftables/NAME.nft-list-ruleset),
the generated script, parsed (inserts resolved: the order the kernel holds), and with each rule in the
kernel's spelling, must equal the dump parsed, rule for rule per (family view, table, chain), with the
same base chains; and `nft_listing` must be the dump's text.

A `*.FAILED.txt` kernel load is a bad-input case (a group that does not exist on the loading host):
noted, not a failure. Ambient goldens (cni-ambient-*: istio-cni's in-pod rules for ztunnel, and the
node's probe rule) come from podnat.istio.ambient and count like the others. Prints one line per
golden and "N of M iptables goldens reproduced; N of M nftables goldens reproduced"; exits 0 only
when every golden is reproduced.

The default reference is the repository's own copy, tests/data/istio (its README says where each
file comes from); `--reference DIR` points at another folder of the same layout (e.g. one made from a
newer Istio checkout). A developer tool: it reads files and argv, so it lives beside the tests, not in
the pure podnat.istio package.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

from podnat.istio.ambient import ambient_nft_script, ambient_restore, host_probe_nft_script, host_probe_restore
from podnat.istio.config import InterceptionConfig
from podnat.istio.generator import expected_rules
from podnat.istio.generator_nft import listing_rule, nft_listing, nft_script
from podnat.istio.goldens import (
    CaseKind,
    Golden,
    GoldenCase,
    ambient_case_config,
    case_config,
    case_for,
    split_golden,
)
from podnat.netfilter.errors import ParseError
from podnat.netfilter.model import BaseChain, Family, Ruleset
from podnat.netfilter.nft import parse_nft
from podnat.netfilter.parse import parse_ruleset
from podnat.netfilter.save import format_rule

ChainKey = tuple[str, str, str]  # (family, table, chain)
BACKENDS = ("iptables", "nftables")


def load_golden(path: Path | str) -> Golden:
    """Read a golden file and split it into IPv4 and IPv6 restore input."""
    return split_golden(Path(path).read_text(encoding="utf-8"))


REFERENCE = Path(__file__).resolve().parents[1] / "tests" / "data" / "istio"


def default_reference() -> Path:
    """The repository's copy of the reference data: tests/data/istio."""
    return REFERENCE


class Outcome(str, Enum):
    """How a golden came out."""

    REPRODUCED = "reproduced"
    NOT_REPRODUCED = "NOT reproduced"
    AMBIENT = "ambient: not generated"


@dataclass(frozen=True, slots=True)
class GoldenResult:
    """One golden's verdict, why, and what its kernel dump said."""

    path: str
    verdict: Outcome
    reason: str = ""
    kernel_save: str = ""  # "matches (v4, v6)", "bad input: ...", "" when the golden was not loaded

    @property
    def backend(self) -> str:
        """`nftables` for Istio's native nftables goldens, else `iptables`."""
        return "nftables" if self.path.startswith("nftables/") else "iptables"


def chains(save_text: str, family: str) -> dict[ChainKey, list[str]]:
    """`iptables-save` text (or restore input) of one family (`v4`, `v6`) -> each rule as the kernel
    prints it, per (family, table, chain); declared empty chains included. ParseError when unreadable."""
    ruleset = parse_ruleset(save_text, Family.IPV6 if family == "v6" else Family.IPV4)
    return {
        (family, table.name, chain.name): [format_rule(rule, ruleset.family) for rule in chain.rules]
        for table in ruleset.tables.values()
        for chain in table.chains.values()
    }


def compare(want: dict[ChainKey, list[str]], got: dict[ChainKey, list[str]], source: str = "golden") -> str:
    """ "" when equal, else the first difference in words (`source` names where `want` came from)."""
    for key in sorted(set(want) | set(got)):
        family, table, chain = key
        where = f"{family} {table} {chain}"
        if key not in got:
            return f"{where}: chain missing from the generated rules ({len(want[key])} rules in the {source})"
        if key not in want:
            return f"{where}: chain generated but not in the {source} ({len(got[key])} rules)"
        a, b = want[key], got[key]
        if a == b:
            continue
        for i, (x, y) in enumerate(zip(a, b, strict=False), start=1):
            if x != y:
                return f"{where} rule {i}: {source} {x!r}, generated {y!r}"
        if len(a) > len(b):
            return f"{where}: generated {len(b)} rules, {source} has {len(a)}; first missing {a[len(b)]!r}"
        return f"{where}: generated {len(b)} rules, {source} has {len(a)}; first extra {b[len(a)]!r}"
    return ""


def _golden_chains(golden: Golden) -> dict[ChainKey, list[str]]:
    """A golden's rules per (family, table, chain), in the kernel's spelling."""
    out = chains(golden.v4, "v4")
    if golden.v6 is not None:
        out.update(chains(golden.v6, "v6"))
    return out


def check_golden(reference: Path, rel: str) -> GoldenResult:
    """Reproduce one golden (path relative to reference/goldens)."""
    case = case_for(rel)
    if case is None:
        return GoldenResult(rel, Outcome.NOT_REPRODUCED, "no configuration known for this golden")
    if case.kind is CaseKind.AMBIENT:
        return _check_ambient_golden(reference, rel, case)
    config = case_config(case)
    if config is None:  # pragma: no cover - only ambient cases have none
        return GoldenResult(rel, Outcome.NOT_REPRODUCED, "no configuration known for this golden")
    if case.kind is CaseKind.ISTIO_NFTABLES:
        return _check_nft_golden(reference, rel, case, config)
    golden = load_golden(reference / "goldens" / rel)
    try:
        want = _golden_chains(golden)
    except ParseError as exc:
        return GoldenResult(rel, Outcome.NOT_REPRODUCED, f"golden does not parse: {exc}")
    expected = expected_rules(config)
    got = chains(expected.v4, "v4")
    if expected.v6 is not None:
        got.update(chains(expected.v6, "v6"))
    kernel = _kernel_check(reference, case.kernel_save, golden)
    reason = compare(want, got)
    if not reason and kernel.startswith("DIFFERS"):
        reason = f"printed golden differs from the kernel's dump: {kernel}"
    verdict = Outcome.NOT_REPRODUCED if reason else Outcome.REPRODUCED
    note = f" ({case.note})" if case.note and not reason else ""
    return GoldenResult(rel, verdict, reason + note, kernel)


def _check_ambient_golden(reference: Path, rel: str, case: GoldenCase) -> GoldenResult:
    """An ambient golden: in-pod (or the node's probe) rules, iptables rule for rule, nftables line for line."""
    config = ambient_case_config(case)
    text = (reference / "goldens" / rel).read_text(encoding="utf-8")
    host = bool(case.settings.get("host"))
    if rel.startswith("nftables/"):
        kubelet = int(case.settings.get("KubeletUID", 0))
        script = host_probe_nft_script(config, kubelet) if host else ambient_nft_script(config)
        reason = compare_lines(text, script)
    else:
        golden = split_golden(text)
        try:
            want = _golden_chains(golden)
        except ParseError as exc:
            return GoldenResult(rel, Outcome.NOT_REPRODUCED, f"golden does not parse: {exc}")
        restore = host_probe_restore(config) if host else ambient_restore(config)
        reason = compare(want, _golden_chains(Golden(restore.v4, restore.v6, config.enable_ipv6)))
    note = f" ({case.note})" if case.note and not reason else ""
    return GoldenResult(rel, Outcome.NOT_REPRODUCED if reason else Outcome.REPRODUCED, reason + note)


def _kernel_check(reference: Path, stem: str | None, golden: Golden) -> str:
    """The golden, printed, against kernel-save/iptables/STEM.v4|v6.iptables-save, in words."""
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
        got = chains(text, family)
        diff = compare(want, got)
        if diff:
            return f"DIFFERS {diff}"
        seen.append(family)
    return f"matches the kernel's dump ({', '.join(seen)})" if seen else ""


def _check_nft_golden(reference: Path, rel: str, case: GoldenCase, config: InterceptionConfig) -> GoldenResult:
    """An nftables golden: the generated `nft -f` script, line for line, then the kernel's dump."""
    golden = (reference / "goldens" / rel).read_text(encoding="utf-8")
    script = nft_script(config)
    reason = compare_lines(golden, script)
    kernel = _nft_kernel_check(reference, case.kernel_save, script, config)
    if not reason and kernel.startswith("DIFFERS"):
        reason = f"generated script differs from the kernel's dump: {kernel}"
    verdict = Outcome.NOT_REPRODUCED if reason else Outcome.REPRODUCED
    note = f" ({case.note})" if case.note and not reason else ""
    return GoldenResult(rel, verdict, reason + note, kernel)


def compare_lines(want: str, got: str, source: str = "golden") -> str:
    """ "" when two texts are equal line for line, else the first difference in words."""
    a, b = want.splitlines(), got.splitlines()
    for i, (x, y) in enumerate(zip(a, b, strict=False), start=1):
        if x != y:
            return f"line {i}: {source} {x!r}, generated {y!r}"
    if len(a) > len(b):
        return f"generated {len(b)} lines, {source} has {len(a)}; first missing {a[len(b)]!r}"
    if len(b) > len(a):
        return f"generated {len(b)} lines, {source} has {len(a)}; first extra {b[len(a)]!r}"
    return ""


def nft_chains(ruleset: Ruleset, *, kernel_spelling: bool = False) -> dict[ChainKey, list[str]]:
    """A parsed nftables rule set -> rule texts per (family view, table, chain), declared chains included.

    `kernel_spelling` rewrites each rule of a script as `nft list ruleset` prints it (listing_rule)."""
    out: dict[ChainKey, list[str]] = {}
    for table in ruleset.tables.values():
        for chain in table.chains.values():
            texts = [listing_rule(r.spec, counter_values=False) if kernel_spelling else r.spec for r in chain.rules]
            out[(ruleset.family.value, table.name, chain.name)] = texts
    return out


def _bases(ruleset: Ruleset) -> list[BaseChain]:
    return sorted(ruleset.declared_base_chains, key=lambda b: (b.table, b.chain))


def _nft_kernel_check(reference: Path, stem: str | None, script: str, config: InterceptionConfig) -> str:
    """The generated script against kernel-save/nftables/STEM.nft-list-ruleset, in words."""
    if not stem:
        return ""
    base = reference / "kernel-save" / "nftables"
    failed = base / f"{stem}.FAILED.txt"
    if failed.exists():
        first = failed.read_text(encoding="utf-8").strip().splitlines()[0]
        return f"bad input, not loaded: {first}"
    dump = base / f"{stem}.nft-list-ruleset"
    if not dump.exists():
        return ""
    live_text = dump.read_text(encoding="utf-8")
    for family in Family:
        try:
            live, generated = parse_nft(live_text, family), parse_nft(script, family)
        except ParseError as exc:
            return f"DIFFERS: does not parse: {exc}"
        diff = compare(nft_chains(live), nft_chains(generated, kernel_spelling=True), "kernel")
        if diff:
            return f"DIFFERS {diff}"
        if _bases(live) != _bases(generated):
            return f"DIFFERS {family.value} base chains: kernel {_bases(live)}, generated {_bases(generated)}"
    listing = compare_lines(live_text, nft_listing(config), "kernel")
    if listing:
        return f"DIFFERS nft_listing is not the kernel's text: {listing}"
    return "matches the kernel's dump (ipv4 and ipv6 views, rule for rule; nft_listing is its text)"


def golden_paths(reference: Path) -> list[str]:
    """Every golden under reference/goldens/{iptables,nftables,history}, relative to goldens/."""
    root = reference / "goldens"
    found = [p for sub in ("iptables", "nftables", "history") for p in (root / sub).rglob("*.golden")]
    return sorted(str(p.relative_to(root)) for p in found)


def run(reference: Path) -> list[GoldenResult]:
    """Check every golden in the reference."""
    return [check_golden(reference, rel) for rel in golden_paths(reference)]


def summary(results: Sequence[GoldenResult], backend: str | None = None) -> tuple[int, int]:
    """(reproduced, counted), of one backend's goldens or of all."""
    counted = [r for r in results if r.verdict is not Outcome.AMBIENT and backend in (None, r.backend)]
    return sum(r.verdict is Outcome.REPRODUCED for r in counted), len(counted)


def summary_line(results: Sequence[GoldenResult]) -> str:
    """`188 of 188 iptables goldens reproduced; 28 of 28 nftables goldens reproduced`."""
    return "; ".join(
        "{} of {} {} goldens reproduced".format(*summary(results, backend), backend) for backend in BACKENDS
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Print one line per golden and the count; 0 when every golden is reproduced."""
    parser = argparse.ArgumentParser(prog="python tools/conformance.py", description=__doc__.split("\n")[0])
    parser.add_argument("--reference", type=Path, default=None, help="reference folder (goldens/, kernel-save/)")
    parser.add_argument("-o", "--output", choices=("text", "json"), default="text")
    args = parser.parse_args(argv)
    reference: Path = args.reference or default_reference()
    if not (reference / "goldens").is_dir():
        print(f"no goldens under {reference}: pass --reference DIR (with goldens/, kernel-save/)", file=sys.stderr)
        return 2
    results = run(reference)
    ok, total = summary(results)
    if args.output == "json":
        backends = {}
        for backend in BACKENDS:
            reproduced, counted = summary(results, backend)
            backends[backend] = {"reproduced": reproduced, "total": counted}
        doc = {
            "reference": str(reference),
            "reproduced": ok,
            "total": total,
            "backends": backends,
            "goldens": [{**asdict(r), "backend": r.backend, "verdict": r.verdict.value} for r in results],
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
        print(summary_line(results))
    return 0 if ok == total else 1


if __name__ == "__main__":
    raise SystemExit(main())
