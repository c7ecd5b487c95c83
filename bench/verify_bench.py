"""`podnat verify` over 200 pods against an API server that adds 50 ms to every request.

The pods are synthetic (no network namespace): the lab's API server runs their exec on this host, in
containers whose PATH starts with stand-in `iptables-save` / `pilot-agent` scripts that print the
injected default table and Istio's listeners. What is measured is podnat's own cost against a slow
API: requests per pod, wall time at the default concurrency vs. one pod at a time vs. the slowest
single pod, and peak memory.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from podnat.lab.inject import istio_init_args

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TABLE = REPO / "tests" / "data" / "default.v4.iptables-save"
LISTENERS = {
    "listener_statuses": [
        {"name": name, "local_address": {"socket_address": {"address": "0.0.0.0", "port_value": port}}}
        for name, port in (
            ("virtualOutbound", 15001),
            ("virtualInbound", 15006),
            ("0.0.0.0_15090", 15090),
            ("0.0.0.0_15021", 15021),
        )
    ]
}
NAMESPACE = "bench"


def synthetic_pod(index: int) -> dict[str, Any]:
    name = f"bench-{index:03d}-7f9c6b-x{index:03d}"
    ip = f"10.98.{index // 250}.{index % 250 + 2}"
    init_args = istio_init_args({})  # the injection template's, for a pod with no annotations
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "uid": f"00000000-0000-0000-0000-{index:012d}",
            "labels": {"app": "bench", "security.istio.io/tlsMode": "istio"},
            "annotations": {
                "sidecar.istio.io/status": json.dumps(
                    {"initContainers": ["istio-init"], "containers": ["istio-proxy"], "revision": "default"}
                )
            },
            "creationTimestamp": "2026-11-26T00:00:00Z",
        },
        "spec": {
            "nodeName": "bench-node",
            "initContainers": [
                {
                    "name": "istio-init",
                    "image": "docker.io/istio/proxyv2:1.30.3",
                    "args": init_args,
                    "securityContext": {"runAsUser": 0, "capabilities": {"add": ["NET_ADMIN", "NET_RAW"]}},
                }
            ],
            "containers": [
                {
                    "name": "app",
                    "image": "docker.io/istio/examples-bookinfo-reviews-v1:1.20.2",
                    "ports": [{"containerPort": 9080}],
                },
                {
                    "name": "istio-proxy",
                    "image": "docker.io/istio/proxyv2:1.30.3",
                    "securityContext": {"runAsUser": 1337, "runAsGroup": 1337},
                },
            ],
        },
        "status": {
            "phase": "Running",
            "podIP": ip,
            "hostIP": "10.98.255.1",
            "containerStatuses": [{"name": n, "ready": True, "state": {"running": {}}} for n in ("app", "istio-proxy")],
        },
    }


def build_state(root: Path, pods: int) -> Any:
    from podnat.lab.state import LabContainer, LabPod, LabState

    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True)
    table = DEFAULT_TABLE.read_text().replace("\n-A ", "\n[12:720] -A ")
    (root / "table").write_text(table)
    (root / "listeners.json").write_text(json.dumps(LISTENERS))
    scripts = {
        "iptables-save": f"#!/bin/sh\ncat {root / 'table'}\n",
        "ip6tables-save": "#!/bin/sh\nexit 0\n",
        # the capture script reads each backend's own save command first (podnat/capture.py)
        "iptables-nft-save": f"#!/bin/sh\ncat {root / 'table'}\n",
        "ip6tables-nft-save": "#!/bin/sh\nexit 0\n",
        "iptables-legacy-save": "#!/bin/sh\nexit 0\n",
        "ip6tables-legacy-save": "#!/bin/sh\nexit 0\n",
        "nft": "#!/bin/sh\nexit 1\n",
        "pilot-agent": f"#!/bin/sh\ncat {root / 'listeners.json'}\n",
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(body)
        path.chmod(0o755)
    uid, gid = os.getuid(), os.getgid()
    state = LabState(root=str(root))
    for index in range(pods):
        manifest = synthetic_pod(index)
        containers = {
            "app": LabContainer("app", uid, gid),
            "istio-proxy": LabContainer("istio-proxy", uid, gid, path=[str(bin_dir)]),
            "istio-init": LabContainer("istio-init", uid, gid, init=True),
        }
        state.pods.append(
            LabPod(NAMESPACE, manifest["metadata"]["name"], manifest["status"]["podIP"], "", manifest, containers)
        )
    return state


def run(argv: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900, check=False)
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if result.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(argv[:4])} failed ({result.returncode}): {result.stderr.strip()[:300]}")
    return elapsed, max(peak, before), result.stdout


def requests_in_log(log: Path) -> int:
    return sum(1 for line in log.read_text().splitlines() if " /api/v1/" in line)


def verify_benchmark(pods: int = 200, latency_ms: int = 50, sample: int = 5) -> dict[str, Any]:
    from podnat.lab.apiserver import start_apiserver, stop_apiserver

    root = Path(tempfile.mkdtemp(prefix="podnat-bench-"))
    state = build_state(root, pods)
    state.apiserver = start_apiserver(root, latency_ms=latency_ms, state=state)
    env = {**os.environ, "KUBECONFIG": state.apiserver.kubeconfig, "HOME": str(root)}
    podnat = [sys.executable, "-m", "podnat"]
    try:
        log = root / "apiserver.log"
        singles = []
        for index in range(sample):
            name = state.pods[index * (pods // sample)].name
            elapsed, _, _ = run([*podnat, "inspect", name, "-n", NAMESPACE, "-o", "json"], env)
            singles.append(elapsed)
        mark = requests_in_log(log)
        concurrent, peak_kb, out = run([*podnat, "verify", "-n", NAMESPACE, "-o", "json"], env)
        requests = requests_in_log(log) - mark
        checked = json.loads(out)["summary"]
        serial, _, _ = run([*podnat, "verify", "-n", NAMESPACE, "--concurrency", "1", "-o", "json"], env)
    finally:
        stop_apiserver(state.apiserver)
        shutil.rmtree(root, ignore_errors=True)
    slowest = max(singles)
    return {
        "pods": pods,
        "latency_ms": latency_ms,
        "summary": checked,
        "requests_per_pod_after_list": round((requests - 2) / pods, 2),  # after the namespace check and the list
        "verify_default_concurrency_s": round(concurrent, 2),
        "verify_one_at_a_time_s": round(serial, 2),
        "slowest_single_pod_inspect_s": round(slowest, 2),
        "ratio_to_slowest_single": round(concurrent / slowest, 2),
        "peak_rss_mb": round(peak_kb / 1024, 1),
    }


if __name__ == "__main__":
    print(json.dumps(verify_benchmark(), indent=2))
