"""The live path: `podnat inspect POD --debug-container -o json` of one lab pod, whole process, beside
`kubectl exec POD -c podnat-debug -- iptables-save -c` of the same table (the same read without the
explanation: what a user would type instead).

Starts its own lab (its own root, so a lab already up is never touched; needs root), runs one inspect
first (it adds the ephemeral container `podnat-debug`, which the timed runs then find running), then
alternates the two commands `repeat` times and takes medians. Uses the lab's kubeconfig, as
`KUBECONFIG=$(podnat lab kubeconfig)` would.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path("/run/podnat-lab-bench-live")
DEPLOYMENT = "reviews-v1"  # one pod of Bookinfo, with a sidecar


def _timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    took = time.perf_counter() - start
    if result.returncode not in (0, 1):  # 1: a path drifted, still a full answer
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()[-300:]}")
    return took


def live_benchmark(repeat: int = 5, backend: str = "nft") -> dict[str, Any]:
    from podnat.lab.build import lab_down, lab_up

    podnat = shutil.which("podnat", path=str(Path(sys.executable).parent))
    podnat_argv = [podnat] if podnat else [sys.executable, "-m", "podnat"]
    state = lab_up(backend, ROOT, deployments=[DEPLOYMENT])
    try:
        assert state.apiserver is not None
        namespace, name = state.pods[0].namespace, state.pods[0].name
        env = {**os.environ, "KUBECONFIG": state.apiserver.kubeconfig}
        inspect = [*podnat_argv, "inspect", name, "-n", namespace, "--debug-container", "-o", "json"]
        first = subprocess.run(inspect, env=env, capture_output=True, text=True, check=False)
        if first.returncode not in (0, 1):
            raise RuntimeError(f"podnat inspect exited {first.returncode}: {first.stderr.strip()[-300:]}")
        live = json.loads(first.stdout)
        commands = {"podnat_inspect": inspect}
        kubectl = shutil.which("kubectl")
        if kubectl:
            commands["kubectl_exec"] = [
                kubectl,
                "exec",
                name,
                "-n",
                namespace,
                "-c",
                "podnat-debug",
                "--",
                "iptables-save",
                "-c",
            ]
        samples: dict[str, list[float]] = {key: [] for key in commands}
        for _ in range(repeat):  # interleaved: a slow phase of the machine hits both alike
            for key, argv in commands.items():
                samples[key].append(_timed(argv, env))
    finally:
        lab_down(ROOT, quiet=True)
    result: dict[str, Any] = {"repeat": repeat, "pod": f"{namespace}/{name}", "sources": _source(live)}
    for key, times in samples.items():
        result[f"{key}_s"] = round(statistics.median(times), 3)
        result[f"{key}_min_s"] = round(min(times), 3)
    result["kubectl_skipped"] = None if "kubectl_exec" in commands else "kubectl is not installed"
    return result


def _source(report: Any) -> Any:
    """Where the first inspect read the rules (`sources`: the debug container, for the timed runs)."""
    return report.get("sources") if isinstance(report, dict) else None


if __name__ == "__main__":
    print(json.dumps(live_benchmark(), indent=2))
