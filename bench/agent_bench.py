"""The node agent on one node with 110 pods (the kubelet's default maximum), side by side with exec.

The pods are bare (podnat/lab/barepods.py): a network namespace with Istio's rules loaded by
iptables-nft-restore and a sleeping process in a kubelet-shaped cgroup; no Envoy (its listeners are
then unknown, for the agent and for exec alike). The lab's API server serves them (+`latency_ms` per
request, as bench/verify_bench.py) and the agent's pod; `podnat agent` runs as a process on this
machine reading its /proc.

Measured: the agent's full sweep (wall time from its own histogram, CPU and peak RSS of the process
over `sweeps` sweeps, every `interval` seconds); then, against an agent started afresh at its default
interval (60 s: no sweep runs while `verify` is timed, for either path), `podnat verify` through the
agent (the default: every pod checked now, read again where its namespace changed; and `--max-age
3600`, the last check's readings) vs through exec (`--source exec`, istio-proxy given NET_ADMIN so that
exec can read the table) at the default concurrency: whole processes, `runs` of each taken in turn,
the median (a first run through the agent before them, which knows no agent yet and so makes two round
trips, is reported apart); and API requests per node.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TAG = "bench"
NODE = "podnat-bench-node"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _metrics(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        body: bytes = resp.read()
    return body.decode()


def _metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mb(pid: int) -> float:
    found = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return round(int(found.group(1)) / 1024, 1) if found else 0.0


def _requests(log: Path, since: int) -> list[str]:
    return [line for line in log.read_text().splitlines()[since:] if " /api/v1/" in line]


def _start_agent(env: dict[str, str], port: int, log: Path, interval: float | None) -> subprocess.Popen[bytes]:
    """`podnat agent` on this machine's /proc (at its default interval where `interval` is None)."""
    argv = [sys.executable, "-m", "podnat", "agent", "--node", NODE, "--proc", "/proc", "--address", "127.0.0.1"]
    argv += ["--port", str(port), "--no-events", *(["--interval", f"{interval:g}"] if interval else [])]
    with log.open("ab") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _swept(agent: subprocess.Popen[bytes], port: int, log: Path) -> str:
    """The agent's metrics once its first sweep is done."""
    deadline = time.monotonic() + 120
    while True:
        try:
            text = _metrics(port)
            if _metric(text, "podnat_agent_sweep_duration_seconds_count") >= 1:
                return text
        except OSError:
            pass
        if time.monotonic() > deadline or agent.poll() is not None:
            raise RuntimeError(f"the agent did not sweep: {log.read_text()[-500:]}")
        time.sleep(0.2)


def _stop(agent: subprocess.Popen[bytes] | None) -> None:
    if agent is not None and agent.poll() is None:
        os.killpg(agent.pid, signal.SIGTERM)
        agent.wait(10)


def agent_benchmark(
    pods: int = 110, latency_ms: int = 50, sweeps: int = 5, interval: float = 4.0, runs: int = 5
) -> dict[str, Any]:
    from podnat.lab.apiserver import start_apiserver, stop_apiserver
    from podnat.lab.barepods import make_bare_pods, remove_bare_pods
    from podnat.lab.build import agent_pod_manifest
    from podnat.lab.state import LabContainer, LabPod, LabState

    root = Path(tempfile.mkdtemp(prefix="podnat-agent-bench-"))
    root.chmod(0o755)
    remove_bare_pods(TAG)
    agent: subprocess.Popen[bytes] | None = None
    state: LabState | None = None
    try:
        started = time.monotonic()
        bare = make_bare_pods(TAG, pods, root / "logs")
        made = time.monotonic() - started
        state = LabState(root=str(root), netns_prefix="pnb-none-")
        for pod in bare:
            name = pod.manifest["metadata"]["name"]
            # exec in istio-proxy as a privileged proxy would (uid 0, NET_ADMIN): exec can read the table
            containers = {
                "app": LabContainer("app", 65534, 65534, pid=pod.pid),
                "istio-proxy": LabContainer("istio-proxy", 0, 0, ["NET_ADMIN", "NET_RAW"], pid=pod.pid),
                "istio-init": LabContainer("istio-init", 0, 0, init=True),
            }
            state.pods.append(
                LabPod("bench", name, pod.manifest["status"]["podIP"], pod.netns, pod.manifest, containers)
            )
        port = _free_port()
        agent_name = "podnat-agent-bench"
        manifest = agent_pod_manifest(agent_name, "00000000-0000-0000-0000-0000000a6e47", "127.0.0.1", port, NODE)
        state.agent = LabPod("podnat-system", agent_name, "127.0.0.1", "", manifest, {})
        state.apiserver = start_apiserver(root, latency_ms=latency_ms, state=state)
        env = {**os.environ, "KUBECONFIG": state.apiserver.kubeconfig, "HOME": str(root), "POD_NAME": agent_name}
        log = root / "agent.log"
        agent = _start_agent(env, port, log, interval)
        text = _swept(agent, port, log)
        cpu_before = _cpu_seconds(agent.pid)
        count_before = _metric(text, "podnat_agent_sweep_duration_seconds_count")
        sum_before = _metric(text, "podnat_agent_sweep_duration_seconds_sum")
        while _metric(text := _metrics(port), "podnat_agent_sweep_duration_seconds_count") < count_before + sweeps:
            time.sleep(0.5)
        count = _metric(text, "podnat_agent_sweep_duration_seconds_count") - count_before
        sweep_s = (_metric(text, "podnat_agent_sweep_duration_seconds_sum") - sum_before) / count
        cpu_per_sweep = (_cpu_seconds(agent.pid) - cpu_before) / count
        mapped = re.search(r'podnat_agent_pods\{state="mapped"\} ([0-9.]+)', text)
        statuses = re.findall(r'podnat_pod_status\{[^}]*status="(\w+)"', text)
        peak_rss = _peak_rss_mb(agent.pid)
        _stop(agent)
        agent = _start_agent(env, port, log, None)  # the default interval: no sweep while verify is timed
        _swept(agent, port, log)

        podnat = [sys.executable, "-m", "podnat"]
        api_log = root / "apiserver.log"

        def verify(*extra: str) -> tuple[float, dict[str, Any], list[str]]:
            since = len(api_log.read_text().splitlines())
            begin = time.perf_counter()
            done = subprocess.run(
                [*podnat, "verify", "-n", "bench", "-o", "json", *extra],
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
            took = time.perf_counter() - begin
            if done.returncode not in (0, 1):
                raise RuntimeError(f"verify {' '.join(extra)} failed ({done.returncode}): {done.stderr[-300:]}")
            return took, json.loads(done.stdout), _requests(api_log, since)

        # The first run knows no agent yet (podnat/kube/agentcache.py): it asks the agent once the lists have
        # answered, two round trips, as a first verify (or one in a fresh container) does. The timed runs that
        # follow are a user's next ones: one round trip.
        first_run = verify()[0]
        timed: dict[str, list[float]] = {"agent": [], "cache": [], "exec": []}
        for _ in range(runs):  # in turn, so that a noisy moment weighs on each alike
            took, agent_report, agent_requests = verify()
            timed["agent"].append(took)
            timed["cache"].append(verify("--max-age", "3600")[0])
            took, exec_report, exec_requests = verify("--source", "exec")
            timed["exec"].append(took)
        sweeps_meanwhile = _metric(_metrics(port), "podnat_agent_sweep_duration_seconds_count") - 1
        via_agent, via_cache, via_exec = (statistics.median(timed[k]) for k in ("agent", "cache", "exec"))
        sources = {p["sources"].get("nat", "").split(",")[0].split(":")[0] for p in agent_report["pods"]}
        return {
            "pods": pods,
            "latency_ms": latency_ms,
            "pods_made_s": round(made, 1),
            "agent_sweeps_measured": int(count),
            "agent_sweep_s": round(sweep_s, 2),
            "agent_cpu_s_per_sweep": round(cpu_per_sweep, 2),
            "agent_peak_rss_mb": peak_rss,
            "agent_pods_mapped": int(float(mapped.group(1))) if mapped else 0,
            "agent_statuses": {s: statuses.count(s) for s in sorted(set(statuses))},
            "verify_runs": runs,
            "verify_via_agent_runs_s": [round(t, 2) for t in timed["agent"]],
            "verify_via_exec_runs_s": [round(t, 2) for t in timed["exec"]],
            "agent_sweeps_while_verify_timed": int(sweeps_meanwhile),
            "verify_via_agent_s": round(via_agent, 2),
            "verify_via_agent_first_run_s": round(first_run, 2),
            "exec_over_agent_first_run": round(via_exec / first_run, 1),
            "verify_via_exec_s": round(via_exec, 2),
            "exec_over_agent": round(via_exec / via_agent, 1),
            "verify_via_agent_last_sweep_s": round(via_cache, 2),
            "exec_over_agent_last_sweep": round(via_exec / via_cache, 1),
            "verify_via_agent_summary": agent_report["summary"],
            "verify_via_exec_summary": exec_report["summary"],
            "verify_via_agent_sources": sorted(sources),
            "requests_via_agent": len(agent_requests),
            "proxy_requests_per_node": sum(1 for r in agent_requests if "/proxy/" in r),
            "requests_via_exec": len(exec_requests),
        }
    finally:
        _stop(agent)
        if state is not None and state.apiserver is not None:
            stop_apiserver(state.apiserver)
        remove_bare_pods(TAG)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(agent_benchmark(), indent=2))
