"""`make bench`: podnat's speed and memory, measured side by side in one run.

1. Offline engine: parse and parse+explain of the injected default table and of synthetic tables of
   10,000 and 100,000 rules (excluded CIDRs), next to `iptables-nft-restore --test` and
   `iptables-legacy-restore --test` on the same files (in a throwaway network namespace; root only).
2. Cold start: `podnat explain` on the default table next to `kubectl version --client` (best of 10:
   noise only adds time).
3. `verify` over 200 pods against the lab API server with 50 ms added to every request (bench/verify_bench.py).
4. The lab's start-up time and memory (bench/lab_bench.py; root only).
5. The node agent with 110 pods on one node, and verify through it vs through exec (bench/agent_bench.py).

Medians of several repetitions: these machines are shared and noisy. `--json` for machine output,
`--only engine,startup,verify,lab,agent` to pick sections; a new section is a function added to SECTIONS.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth import DEFAULT, synthetic_table

REPO = Path(__file__).resolve().parent.parent
SIZES = (0, 10_000, 100_000)


def _median(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def engine_child(path: str) -> None:
    """One measurement in a fresh process (no warm caches, a heap as the CLI has it): parse, then
    explain, then the process's peak RSS. Printed as JSON for engine()."""
    import resource

    from podnat.istio.explain import explain
    from podnat.istio.flows import context_for
    from podnat.netfilter.parse import parse_ruleset

    text = Path(path).read_text()
    start = time.perf_counter()
    ruleset = parse_ruleset(text)
    parsed = time.perf_counter()
    explain(ruleset, context_for(family=ruleset.family.value))
    done = time.perf_counter()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"parse_s": parsed - start, "parse_explain_s": done - start, "peak_rss_kb": peak_kb}))


def engine(repeat: int = 5) -> dict[str, Any]:
    rows = []
    netns = f"podnat-bench-{os.getpid()}"
    skipped = _restore_skip_reason()
    if skipped is None:
        subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for size in SIZES:
                text = DEFAULT.read_text() if size == 0 else synthetic_table(size)
                path = Path(tmp) / f"table-{size}.txt"
                path.write_text(text)
                rules = sum(1 for line in text.splitlines() if line.startswith("-A "))
                runs = [
                    json.loads(
                        subprocess.run(
                            [sys.executable, __file__, "--engine-child", str(path)],
                            check=True,
                            capture_output=True,
                            text=True,
                            cwd=REPO,
                        ).stdout
                    )
                    for _ in range(repeat)
                ]
                parse = statistics.median(r["parse_s"] for r in runs)
                full = statistics.median(r["parse_explain_s"] for r in runs)
                row: dict[str, Any] = {
                    "rules": rules,
                    "parse_s": round(parse, 4),
                    "parse_explain_s": round(full, 4),
                    "per_rule_us": round(full / rules * 1e6, 2),
                    "peak_rss_mb": round(max(r["peak_rss_kb"] for r in runs) / 1024, 1),
                }
                for backend in ("nft", "legacy"):
                    if skipped is not None:
                        row[f"restore_test_{backend}_s"] = row[f"restore_test_{backend}_us_per_rule"] = None
                        continue
                    argv = ["ip", "netns", "exec", netns, f"iptables-{backend}-restore", "--test", str(path)]
                    took = _median(lambda a=argv: subprocess.run(a, check=True, capture_output=True), repeat)
                    row[f"restore_test_{backend}_s"] = round(took, 4)
                    row[f"restore_test_{backend}_us_per_rule"] = round(took / rules * 1e6, 2)
                rows.append(row)
    finally:
        if skipped is None:
            subprocess.run(["ip", "netns", "delete", netns], check=False)
    return {"repeat": repeat, "rows": rows, "restore_skipped": skipped}


def _restore_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "not root: iptables-restore --test needs a network namespace of its own (ip netns add)"
    missing = [b for b in ("ip", "iptables-nft-restore", "iptables-legacy-restore") if shutil.which(b) is None]
    return f"missing {', '.join(missing)}" if missing else None


def startup(repeat: int = 10) -> dict[str, Any]:
    def best(argv: list[str]) -> float | None:
        if shutil.which(argv[0]) is None and not Path(argv[0]).exists():
            return None
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            subprocess.run(argv, capture_output=True, check=False)
            times.append(time.perf_counter() - start)
        return round(min(times), 3)

    # Byte-compiled first, as an installed package is: with PYTHONDONTWRITEBYTECODE (set on some
    # machines) a source tree's stale .pyc files would be compiled again at every start.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "podnat")], check=False)
    podnat = shutil.which("podnat", path=str(Path(sys.executable).parent)) or sys.executable
    argv = (
        [podnat, "explain", str(DEFAULT)]
        if podnat != sys.executable
        else [podnat, "-m", "podnat", "explain", str(DEFAULT)]
    )
    kubectl = best(["kubectl", "version", "--client"])
    return {
        "podnat_explain_s": best(argv),
        "kubectl_version_client_s": kubectl,
        "kubectl_skipped": None if kubectl is not None else "kubectl is not installed",
        "imports_kubernetes": "kubernetes"
        in subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "podnat", "explain", str(DEFAULT)],
            capture_output=True,
            text=True,
            check=False,
        ).stderr,
    }


# The sections `make bench` runs, in order: name -> a function returning JSON-able results. A new
# benchmark is a function in bench/ added here (and a printer in PRINTERS, or it prints as JSON).
def _verify() -> dict[str, Any]:
    from verify_bench import verify_benchmark

    return verify_benchmark()


def _lab() -> dict[str, Any]:
    if os.geteuid() != 0:
        return {"skipped": "not root: the lab needs network namespaces"}
    from lab_bench import lab_benchmark

    return lab_benchmark()


def _agent() -> dict[str, Any]:
    if os.geteuid() != 0:
        return {"skipped": "not root: the agent's pods are network namespaces"}
    from agent_bench import agent_benchmark

    return agent_benchmark()


SECTIONS: dict[str, Any] = {"engine": engine, "startup": startup, "verify": _verify, "lab": _lab, "agent": _agent}


def print_engine(e: dict[str, Any]) -> None:
    print(
        f"engine: parse and parse+explain in a fresh process each time, median of {e['repeat']}; "
        "iptables-restore --test on the same file in a throwaway netns"
    )
    print(
        f"{'rules':>8} {'parse s':>8} {'+explain s':>10} {'us/rule':>8} {'peak RSS MB':>11} "
        f"{'nft --test s':>12} {'us/rule':>8} {'legacy --test s':>15} {'us/rule':>8}"
    )
    for r in e["rows"]:
        print(
            f"{r['rules']:>8} {r['parse_s']:>8.3f} {r['parse_explain_s']:>10.3f} {r['per_rule_us']:>8} "
            f"{r['peak_rss_mb']:>11} {_num(r['restore_test_nft_s']):>12} "
            f"{_num(r['restore_test_nft_us_per_rule'], 2):>8} {_num(r['restore_test_legacy_s']):>15} "
            f"{_num(r['restore_test_legacy_us_per_rule'], 2):>8}"
        )
    if e["restore_skipped"]:
        print(f"  iptables-restore --test skipped: {e['restore_skipped']}")


def print_startup(s: dict[str, Any]) -> None:
    kubectl = (
        f"{s['kubectl_version_client_s']} s"
        if s["kubectl_version_client_s"] is not None
        else f"skipped ({s['kubectl_skipped']})"
    )
    print(
        f"cold start, best of 10: podnat explain (default table) {s['podnat_explain_s']} s, "
        f"kubernetes client imported: {s['imports_kubernetes']}; kubectl version --client {kubectl}"
    )


def print_verify(v: dict[str, Any]) -> None:
    print(
        f"verify {v['pods']} pods, +{v['latency_ms']} ms/request: {v['verify_default_concurrency_s']} s at "
        f"default concurrency, {v['verify_one_at_a_time_s']} s one at a time, slowest single pod "
        f"{v['slowest_single_pod_inspect_s']} s (ratio {v['ratio_to_slowest_single']}), "
        f"{v['requests_per_pod_after_list']} requests/pod, peak RSS {v['peak_rss_mb']} MB"
    )


def print_lab(lab: dict[str, Any]) -> None:
    if "skipped" in lab:
        print(f"lab: skipped ({lab['skipped']})")
        return
    print(f"lab: {lab['pods']} pods up in {lab['startup_s']} s, {lab['total_pss_mb']} MB PSS in all")


def print_agent(a: dict[str, Any]) -> None:
    if "skipped" in a:
        print(f"agent: skipped ({a['skipped']})")
        return
    print(
        f"agent, {a['pods']} pods on one node: sweep {a['agent_sweep_s']} s wall, "
        f"{a['agent_cpu_s_per_sweep']} s CPU, peak RSS {a['agent_peak_rss_mb']} MB ({a['agent_pods_mapped']} "
        f"mapped); verify +{a['latency_ms']} ms/request: through the agent {a['verify_via_agent_s']} s "
        f"(last sweep's readings: {a['verify_via_agent_last_sweep_s']} s), through exec {a['verify_via_exec_s']} s "
        f"(exec/agent {a['exec_over_agent']}x, {a['exec_over_agent_last_sweep']}x); requests: "
        f"{a['requests_via_agent']} via the agent ({a['proxy_requests_per_node']} pods/proxy per node), "
        f"{a['requests_via_exec']} via exec"
    )


PRINTERS: dict[str, Any] = {
    "engine": print_engine,
    "startup": print_startup,
    "verify": print_verify,
    "lab": print_lab,
    "agent": print_agent,
}


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"sections, from {','.join(SECTIONS)}")
    parser.add_argument("--engine-child", metavar="FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine_child:
        engine_child(args.engine_child)
        return
    results: dict[str, Any] = {}
    for name in args.only.split(","):
        if name not in SECTIONS:
            parser.error(f"unknown section {name}: pick from {','.join(SECTIONS)}")
        results[name] = SECTIONS[name]()
        if not args.json:
            PRINTERS.get(name, lambda r, n=name: print(json.dumps({n: r}, indent=2)))(results[name])
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
