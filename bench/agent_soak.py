"""`make soak`: the agent over many sweeps while pods are created and deleted, memory and fds flat.

`pods` bare pods (podnat/lab/barepods.py) on one node; before each sweep `churn` of them are deleted
(process killed, namespace and cgroup removed, the pod dropped from the agent's list as a watch
DELETED would) and as many new ones created; the agent (in this process, its metrics rendered each
sweep) sweeps them, then answers a request for every pod checked now (`states_for`: each namespace held,
stamped and released: podnat/agent/changes.py; its JSON as /v1/pods keeps it). After a warm-up, the
process's RSS and open file descriptors are sampled; a leak shows as growth. `make soak` runs 200 pods
x 1,000 sweeps; CI runs a short version (tests/integration/test_agent_soak.py).
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any


def _rss_mb() -> float:
    found = re.search(r"VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text())
    return int(found.group(1)) / 1024 if found else 0.0


def _fds() -> int:
    return sum(1 for _ in Path("/proc/self/fd").iterdir())


def soak(
    pods: int = 200, sweeps: int = 1000, churn: int = 20, warmup: int = 5, tag: str = "soak", progress: Any = None
) -> dict[str, Any]:
    from prometheus_client import generate_latest

    from podnat.agent.http import AgentServer
    from podnat.agent.metrics import AgentMetrics
    from podnat.agent.node import NodeScanner
    from podnat.agent.service import Agent, AgentConfig
    from podnat.lab.barepods import delete_bare_pod, make_bare_pods, remove_bare_pods

    remove_bare_pods(tag)
    logs = Path(tempfile.mkdtemp(prefix="podnat-soak-"))
    agent = Agent(AgentConfig(node="podnat-bench-node"), NodeScanner(Path("/proc")))
    metrics = AgentMetrics(agent)
    agent.observers.append(metrics.observe)
    # the agent's HTTP face, not started: its sweep observer encodes each reading as verify asks for it and
    # forgets the pods gone, as in the agent; `encoded` is what /v1/pods keeps of each pod's JSON
    encoded = AgentServer(agent, metrics, "127.0.0.1", 0, "podnat-agent-soak").encoded
    samples: list[tuple[int, float, int]] = []
    made = 0
    started = time.monotonic()
    try:
        live = make_bare_pods(tag, pods, logs)
        made = pods
        agent.replace_pods([p.manifest for p in live])
        bad: dict[str, int] = {}
        errors: list[str] = []
        for sweep in range(1, sweeps + 1):
            if churn and sweep > 1:
                gone, live = live[:churn], live[churn:]
                for pod in gone:
                    delete_bare_pod(pod)
                    agent.pod_event("DELETED", pod.manifest)
                fresh = make_bare_pods(tag, churn, logs, start=made)
                made += churn
                for pod in fresh:
                    agent.pod_event("ADDED", pod.manifest)
                live += fresh
            states = agent.sweep()
            # a request as the CLI makes it: each pod checked now (held, stamped, released), its JSON as served
            checked = agent.states_for(None, None, 0.0)
            b",".join(encoded.pod(state, True, lean=True) for state in checked)
            encoded.keep_only(agent.kept())
            generate_latest(metrics.registry)
            for state in [*states, *checked]:
                if state.report.status != "ok":
                    bad[state.report.status] = bad.get(state.report.status, 0) + 1
                    if len(errors) < 10:  # what they said, not only how many
                        errors.append(f"sweep {sweep} {state.report.ref}: {getattr(state.report, 'error', '')}")
            if sweep > warmup:
                samples.append((sweep, _rss_mb(), _fds()))
            if progress is not None and sweep % 50 == 0:
                progress(f"sweep {sweep}: rss {_rss_mb():.1f} MB, fds {_fds()}, pods made {made}")
    finally:
        remove_bare_pods(tag)
    first, last = samples[0], samples[-1]
    return {
        "pods": pods,
        "sweeps": sweeps,
        "churn_per_sweep": churn,
        "pods_created": made,
        "minutes": round((time.monotonic() - started) / 60, 1),
        "rss_mb_after_warmup": round(first[1], 1),
        "rss_mb_end": round(last[1], 1),
        "rss_mb_max": round(max(s[1] for s in samples), 1),
        "fds_after_warmup": first[2],
        "fds_end": last[2],
        "fds_max": max(s[2] for s in samples),
        "not_ok_readings": bad,
        "not_ok_first": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=200)
    parser.add_argument("--sweeps", type=int, default=1000)
    parser.add_argument("--churn", type=int, default=20)
    args = parser.parse_args()
    result = soak(args.pods, args.sweeps, args.churn, progress=print)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
