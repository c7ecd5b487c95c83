"""`make bench`: podnat's speed and memory, measured side by side in one run.

1. Offline engine: parse and parse+explain of the injected default table and of synthetic tables of
   10,000 and 100,000 rules (excluded CIDRs), next to `iptables-nft-restore --test` and
   `iptables-legacy-restore --test` on the same files (in a throwaway network namespace; root only).
2. Cold start: `podnat explain` on the default table next to `kubectl version --client` (best of 5).
3. `verify` over 200 pods against the lab API server with 50 ms added to every request (bench/verify_bench.py).
4. The lab's start-up time and memory (bench/lab_bench.py; root only).

Medians of several repetitions: these machines are shared and noisy. `--json` for machine output,
`--only engine,startup,verify,lab` to pick sections.
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
import tracemalloc
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


def engine(repeat: int = 3) -> list[dict[str, Any]]:
    from podnat.istio.explain import explain
    from podnat.istio.flows import PodContext
    from podnat.netfilter.parse import parse_ruleset

    rows = []
    netns = f"podnat-bench-{os.getpid()}"
    can_restore = os.geteuid() == 0 and shutil.which("iptables-nft-restore") is not None
    if can_restore:
        subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for size in SIZES:
                text = DEFAULT.read_text() if size == 0 else synthetic_table(size)
                path = Path(tmp) / f"table-{size}.txt"
                path.write_text(text)
                rules = sum(1 for line in text.splitlines() if line.startswith("-A "))
                parse = _median(lambda t=text: parse_ruleset(t), repeat)
                full = _median(lambda t=text: explain(parse_ruleset(t), PodContext()), repeat)
                tracemalloc.start()
                explain(parse_ruleset(text), PodContext())
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                row: dict[str, Any] = {"rules": rules, "parse_s": round(parse, 4), "parse_explain_s": round(full, 4),
                                       "per_rule_us": round(full / rules * 1e6, 2), "peak_mb": round(peak / 2**20, 1)}
                for backend in ("nft", "legacy"):
                    if not can_restore:
                        row[f"restore_test_{backend}_s"] = None
                        continue
                    argv = ["ip", "netns", "exec", netns, f"iptables-{backend}-restore", "--test", str(path)]
                    row[f"restore_test_{backend}_s"] = round(_median(
                        lambda a=argv: subprocess.run(a, check=True, capture_output=True), repeat), 4)
                rows.append(row)
    finally:
        if can_restore:
            subprocess.run(["ip", "netns", "delete", netns], check=False)
    return rows


def startup(repeat: int = 5) -> dict[str, Any]:
    def best(argv: list[str]) -> float | None:
        if shutil.which(argv[0]) is None and not Path(argv[0]).exists():
            return None
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            subprocess.run(argv, capture_output=True, check=False)
            times.append(time.perf_counter() - start)
        return round(min(times), 3)

    return {
        "podnat_explain_s": best([sys.executable, "-m", "podnat", "explain", str(DEFAULT), "-o", "json"]),
        "kubectl_version_client_s": best(["kubectl", "version", "--client"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--only", default="engine,startup,verify,lab")
    args = parser.parse_args()
    only = set(args.only.split(","))
    results: dict[str, Any] = {}
    if "engine" in only:
        results["engine"] = engine()
    if "startup" in only:
        results["startup"] = startup()
    if "verify" in only:
        from verify_bench import verify_benchmark

        results["verify"] = verify_benchmark()
    if "lab" in only and os.geteuid() == 0:
        from lab_bench import lab_benchmark

        results["lab"] = lab_benchmark()
    if args.json:
        print(json.dumps(results, indent=2))
        return
    if "engine" in results:
        print("engine (median of 3)        rules   parse s  parse+explain s  us/rule  peak MB  "
              "restore --test nft s  legacy s")
        for r in results["engine"]:
            print(f"{'':27}{r['rules']:>7} {r['parse_s']:>9} {r['parse_explain_s']:>16} {r['per_rule_us']:>8} "
                  f"{r['peak_mb']:>8} {r['restore_test_nft_s']!s:>21} {r['restore_test_legacy_s']!s:>9}")
    if "startup" in results:
        s = results["startup"]
        print(f"cold start (best of 5)     podnat explain {s['podnat_explain_s']} s   "
              f"kubectl version --client {s['kubectl_version_client_s']} s")
    if "verify" in results:
        v = results["verify"]
        print(f"verify {v['pods']} pods, +{v['latency_ms']} ms/request: {v['verify_default_concurrency_s']} s at "
              f"default concurrency, {v['verify_one_at_a_time_s']} s one at a time, slowest single pod "
              f"{v['slowest_single_pod_inspect_s']} s (ratio {v['ratio_to_slowest_single']}), "
              f"{v['requests_per_pod_after_list']} requests/pod, peak RSS {v['peak_rss_mb']} MB")
    if "lab" in results:
        lab = results["lab"]
        print(f"lab: {lab['pods']} pods up in {lab['startup_s']} s, {lab['total_pss_mb']} MB PSS in all")


if __name__ == "__main__":
    main()
