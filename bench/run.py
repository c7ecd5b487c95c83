"""`make bench`: podnat's speed and memory, measured side by side in one run.

1. engine: whole process against whole process, `podnat explain -o json FILE` against
   `iptables-restore --test FILE` (the machine's default build, nf_tables on Debian 12) and
   `iptables-legacy-restore --test` on the same file: the injected default table, and 10,000 and
   100,000 rules in two shapes (bench/synth.py). Root only for iptables-restore (a throwaway netns).
2. startup: `podnat explain` on the default table beside `python -c pass` and `kubectl version --client`.
3. live: `podnat inspect POD --debug-container -o json` of one lab pod beside `kubectl exec` of the
   same read (bench/live_bench.py; root only).
4. verify: 200 pods against the lab API server with 50 ms added to every request (bench/verify_bench.py).
5. lab: the lab's start-up time and memory (bench/lab_bench.py; root only).
6. agent: the node agent with 110 pods on one node, verify through it vs through exec (bench/agent_bench.py).

Medians of several repetitions, the compared commands interleaved: these machines are shared and
noisy. `--json` for machine output, `--only engine,startup,live,verify,lab,agent` to pick sections; a
new section is a function added to SECTIONS. A section that fails prints why and the others still run.
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


def _run(argv: list[str]) -> tuple[float, int, int]:
    """One whole process as a user runs it: wall seconds, its own peak RSS (KB) and exit status."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if proc.returncode not in (0, 1):  # 1: a path drifted, a verdict like 0
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {stderr.strip()[-300:]}")
    return took, usage.ru_maxrss, proc.returncode


def _timed(argv: list[str], repeat: int) -> dict[str, float]:
    """Median and fastest wall time of `repeat` runs of argv, and the largest peak RSS."""
    runs = [_run(argv) for _ in range(repeat)]
    times = [t for t, _, _ in runs]
    return {
        "median_s": round(statistics.median(times), 4),
        "min_s": round(min(times), 4),
        "peak_rss_mb": round(max(kb for _, kb, _ in runs) / 1024, 1),
    }


def _podnat() -> list[str]:
    """podnat as the venv installs it (the console script), else `python -m podnat`."""
    script = shutil.which("podnat", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "podnat"]


def _byte_compile() -> None:
    # Byte-compiled first, as an installed package is: with PYTHONDONTWRITEBYTECODE (set on some
    # machines) a source tree's stale .pyc files would be compiled again at every start.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "podnat")], check=False)


def engine_child(path: str) -> None:
    """The in-process breakdown (not a comparison): parse, then explain, timed inside one fresh
    process. Printed as JSON for engine()."""
    from podnat.istio.explain import explain
    from podnat.istio.flows import context_for
    from podnat.netfilter.parse import parse_ruleset

    text = Path(path).read_text()
    start = time.perf_counter()
    ruleset = parse_ruleset(text)
    parsed = time.perf_counter()
    explain(ruleset, context_for(family=ruleset.family.value))
    done = time.perf_counter()
    print(json.dumps({"parse_s": parsed - start, "parse_explain_s": done - start}))


# (shape, excluded networks): the injected default table, then tables of 10,000 and 100,000 rules.
TABLES = (("default", 0), ("consecutive", 10_000), ("consecutive", 100_000), ("spread", 100_000))


def engine(repeat: int = 5) -> dict[str, Any]:
    """Whole process against whole process, as a user runs them: `podnat explain -o json FILE` (start-up,
    reading, parsing, explaining, writing the JSON) against `iptables-restore --test FILE` on the same
    file, alternated in the same run. Both run under `ip netns exec` in a throwaway network namespace
    (iptables-restore --test talks to the kernel's netfilter there; podnat gets the same wrapper)."""
    _byte_compile()
    skipped = _restore_skip_reason()
    netns = f"podnat-bench-{os.getpid()}"
    wrap: list[str] = [] if skipped else ["ip", "netns", "exec", netns]
    restores = {} if skipped else {"default": "iptables-restore", "legacy": "iptables-legacy-restore"}
    default_build = (
        None
        if skipped
        else subprocess.run(
            ["iptables-restore", "--version"], check=False, capture_output=True, text=True
        ).stdout.strip()
    )
    rows = []
    if not skipped:
        subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for shape, size in TABLES:
                text = DEFAULT.read_text() if size == 0 else synthetic_table(size, shape)
                path = Path(tmp) / f"table-{shape}-{size}.txt"
                path.write_text(text)
                rules = sum(1 for line in text.splitlines() if line.startswith("-A "))
                commands = {"podnat": [*wrap, *_podnat(), "explain", "-o", "json", str(path)]}
                commands.update({name: [*wrap, binary, "--test", str(path)] for name, binary in restores.items()})
                samples: dict[str, list[tuple[float, int, int]]] = {name: [] for name in commands}
                for _ in range(repeat):  # interleaved: a slow phase of the machine hits both sides
                    for name, argv in commands.items():
                        samples[name].append(_run(argv))
                inproc = [
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
                row: dict[str, Any] = {"shape": shape, "rules": rules}
                for name, runs in samples.items():
                    row[f"{name}_s"] = round(statistics.median(t for t, _, _ in runs), 4)
                    row[f"{name}_peak_rss_mb"] = round(max(kb for _, kb, _ in runs) / 1024, 1)
                for name in restores:
                    row[f"ratio_to_{name}"] = round(row["podnat_s"] / row[f"{name}_s"], 2)
                row["podnat_us_per_rule"] = round(row["podnat_s"] / rules * 1e6, 2)
                row["in_process_parse_s"] = round(statistics.median(r["parse_s"] for r in inproc), 4)
                row["in_process_parse_explain_s"] = round(statistics.median(r["parse_explain_s"] for r in inproc), 4)
                rows.append(row)
    finally:
        if not skipped:
            subprocess.run(["ip", "netns", "delete", netns], check=False)
    return {"repeat": repeat, "rows": rows, "restore_skipped": skipped, "iptables_restore": default_build}


def _restore_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "not root: iptables-restore --test needs a network namespace of its own (ip netns add)"
    missing = [b for b in ("ip", "iptables-restore", "iptables-legacy-restore") if shutil.which(b) is None]
    return f"missing {', '.join(missing)}" if missing else None


def startup(repeat: int = 15) -> dict[str, Any]:
    """Cold start of `podnat explain` on the default table (table and -o json), medians of `repeat`
    fresh processes, beside two yardsticks run in the same loop: the same interpreter doing nothing
    (`python -c pass`) and `kubectl version --client`."""
    _byte_compile()
    commands = {
        "podnat_explain": [*_podnat(), "explain", str(DEFAULT)],
        "podnat_explain_json": [*_podnat(), "explain", "-o", "json", str(DEFAULT)],
        "python_pass": [sys.executable, "-c", "pass"],
    }
    if shutil.which("kubectl"):
        commands["kubectl_version_client"] = ["kubectl", "version", "--client"]
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeat):  # interleaved: a slow phase of the machine hits every command alike
        for name, argv in commands.items():
            samples[name].append(_run(argv)[0])
    result: dict[str, Any] = {"repeat": repeat}
    for name, times in samples.items():
        result[f"{name}_s"] = round(statistics.median(times), 3)
        result[f"{name}_min_s"] = round(min(times), 3)
    result["kubectl_skipped"] = None if "kubectl_version_client" in commands else "kubectl is not installed"
    imported = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "podnat", "explain", str(DEFAULT)],
        capture_output=True,
        text=True,
        check=False,
    ).stderr
    names = {line.split("|")[-1].strip().split(".")[0] for line in imported.splitlines() if "|" in line}
    result["imports"] = {lib: lib in names for lib in ("kubernetes", "yaml", "pydantic", "urllib3", "pygments")}
    return result


# The sections `make bench` runs, in order: name -> a function returning JSON-able results. A new
# benchmark is a function in bench/ added here (and a printer in PRINTERS, or it prints as JSON).
def _verify() -> dict[str, Any]:
    _byte_compile()
    from verify_bench import verify_benchmark

    return verify_benchmark()


def _lab() -> dict[str, Any]:
    if os.geteuid() != 0:
        return {"skipped": "not root: the lab needs network namespaces"}
    from lab_bench import lab_benchmark

    return lab_benchmark()


def _live() -> dict[str, Any]:
    if os.geteuid() != 0:
        return {"skipped": "not root: the lab needs network namespaces"}
    _byte_compile()
    from live_bench import live_benchmark

    return live_benchmark()


def _agent() -> dict[str, Any]:
    if os.geteuid() != 0:
        return {"skipped": "not root: the agent's pods are network namespaces"}
    _byte_compile()
    from agent_bench import agent_benchmark

    return agent_benchmark()


SECTIONS: dict[str, Any] = {
    "engine": engine,
    "startup": startup,
    "live": _live,
    "verify": _verify,
    "lab": _lab,
    "agent": _agent,
}


def print_engine(e: dict[str, Any]) -> None:
    print(
        f"engine: whole processes as a user runs them, median of {e['repeat']} (interleaved): "
        "`podnat explain -o json FILE` against `iptables-restore --test FILE` on the same file"
        + (f" (iptables-restore is {e['iptables_restore']})" if e["iptables_restore"] else "")
    )
    print(
        f"{'shape':>11} {'rules':>7} {'podnat s':>9} {'us/rule':>8} {'RSS MB':>7} {'restore s':>10} "
        f"{'podnat/restore':>14} {'legacy s':>9} {'podnat/legacy':>13} {'in-process parse, +explain s':>29}"
    )
    for r in e["rows"]:
        per_rule = r["podnat_us_per_rule"] if r["rules"] >= 1000 else "-"  # start-up dominates a small table
        print(
            f"{r['shape']:>11} {r['rules']:>7} {r['podnat_s']:>9.3f} {per_rule:>8} "
            f"{r['podnat_peak_rss_mb']:>7} {_num(r.get('default_s')):>10} {_ratio(r.get('ratio_to_default')):>14} "
            f"{_num(r.get('legacy_s')):>9} {_ratio(r.get('ratio_to_legacy')):>13} "
            f"{r['in_process_parse_s']:>20.3f}, {r['in_process_parse_explain_s']:.3f}"
        )
    if e["restore_skipped"]:
        print(f"  iptables-restore --test skipped: {e['restore_skipped']}")


def print_startup(s: dict[str, Any]) -> None:
    kubectl = (
        f"{s['kubectl_version_client_s']} s (fastest {s['kubectl_version_client_min_s']})"
        if s["kubectl_skipped"] is None
        else f"skipped ({s['kubectl_skipped']})"
    )
    print(
        f"cold start, median of {s['repeat']} (fastest): podnat explain (default table) {s['podnat_explain_s']} s "
        f"({s['podnat_explain_min_s']}), -o json {s['podnat_explain_json_s']} s ({s['podnat_explain_json_min_s']}); "
        f"yardsticks: python -c pass {s['python_pass_s']} s ({s['python_pass_min_s']}), kubectl version --client "
        f"{kubectl}; explain imports {', '.join(k for k, v in s['imports'].items() if v) or 'none'} of "
        f"{', '.join(s['imports'])}"
    )


def print_live(live: dict[str, Any]) -> None:
    if "skipped" in live:
        print(f"live: skipped ({live['skipped']})")
        return
    kubectl = (
        f"{live['kubectl_exec_s']} s (fastest {live['kubectl_exec_min_s']})"
        if live["kubectl_skipped"] is None
        else f"skipped ({live['kubectl_skipped']})"
    )
    print(
        f"live, one lab pod ({live['pod']}), median of {live['repeat']} (fastest): podnat inspect --debug-container "
        f"-o json {live['podnat_inspect_s']} s ({live['podnat_inspect_min_s']}); kubectl exec -c podnat-debug -- "
        f"iptables-save -c {kubectl}"
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
        f"mapped); verify +{a['latency_ms']} ms/request, median of {a['verify_runs']}: through the agent "
        f"{a['verify_via_agent_s']} s (last check's readings: {a['verify_via_agent_last_sweep_s']} s; the first "
        f"run, no agent known yet: {a['verify_via_agent_first_run_s']} s, {a['exec_over_agent_first_run']}x), "
        f"through exec {a['verify_via_exec_s']} s (exec/agent {a['exec_over_agent']}x, "
        f"{a['exec_over_agent_last_sweep']}x; runs {a['verify_via_agent_runs_s']} vs {a['verify_via_exec_runs_s']}, "
        f"{a['agent_sweeps_while_verify_timed']} sweeps meanwhile); requests: "
        f"{a['requests_via_agent']} via the agent ({a['proxy_requests_per_node']} pods/proxy per node), "
        f"{a['requests_via_exec']} via exec"
    )


PRINTERS: dict[str, Any] = {
    "engine": print_engine,
    "startup": print_startup,
    "live": print_live,
    "verify": print_verify,
    "lab": print_lab,
    "agent": print_agent,
}


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


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
        try:
            results[name] = SECTIONS[name]()
        except Exception as exc:  # one broken section must not lose the others' figures
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            if not args.json:
                print(f"{name}: FAILED ({results[name]['error'][:500]})", flush=True)
            continue
        if not args.json:
            PRINTERS.get(name, lambda r, n=name: print(json.dumps({n: r}, indent=2)))(results[name])
            sys.stdout.flush()
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
