"""The lab's start-up time and memory: `podnat lab up` timed, then the PSS of every process it runs.

PSS (proportional set size, from /proc/PID/smaps_rollup) splits shared pages between the processes
that share them, so the sum is what the lab really costs; summed RSS would count Envoy's shared
binary six times. Needs root. Uses its own lab root, so it never touches a lab already up.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path("/run/podnat-lab-bench")


def _kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def lab_benchmark(backend: str = "nft") -> dict[str, object]:
    from podnat.lab.build import lab_down, lab_up

    started = time.perf_counter()
    state = lab_up(backend, ROOT)
    seconds = time.perf_counter() - started
    try:
        groups: dict[str, list[int]] = {"envoy": [], "app": [], "pilot-agent": [], "api server": [], "istiod peer": []}
        for pod in state.pods:
            for name, container in pod.containers.items():
                if container.pid:
                    key = "envoy" if name == "istio-proxy" else "app"
                    groups[key].append(container.pid)
        known = {pid for pids in groups.values() for pid in pids}
        for pid in state.pids:
            if pid in known:
                continue
            cmdline = (
                Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                if Path(f"/proc/{pid}").exists()
                else ""
            )
            groups["pilot-agent" if "agent.py" in cmdline else "istiod peer"].append(pid)
        if state.apiserver and state.apiserver.pid:
            groups["api server"].append(state.apiserver.pid)
        memory = {
            name: {
                "processes": len(pids),
                "pss_mb": round(sum(_kb(p, "Pss") for p in pids) / 1024, 1),
                "rss_mb": round(sum(_kb(p, "Rss") for p in pids) / 1024, 1),
            }
            for name, pids in groups.items()
        }
    finally:
        lab_down(ROOT)
    return {
        "backend": backend,
        "pods": len(state.pods),
        "startup_s": round(seconds, 2),
        "memory": memory,
        "total_pss_mb": round(sum(float(m["pss_mb"]) for m in memory.values()), 1),
    }


if __name__ == "__main__":
    print(json.dumps(lab_benchmark(sys.argv[1] if len(sys.argv) > 1 else "nft"), indent=2))
