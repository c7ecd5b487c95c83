"""Bare pods: a network namespace with Istio's rules and one sleeping process, nothing else.

For the agent's tests and benchmark (110 pods on one node): no Envoy, no app, no bridge; the pod IP
on a veth pair inside the namespace (never routed anywhere), the rules loaded as the lab's istio-init loads them,
and a `sleep` in a cgroup shaped as the kubelet's (a namespace without a process cannot be found
from /proc). `remove_bare_pods` undoes everything, by the namespaces' prefix.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from podnat.lab import cgroups
from podnat.lab.build import _istio_init, run, spawn
from podnat.lab.inject import injected_pod

NODE = "podnat-bench-node"


@dataclass(frozen=True, slots=True)
class BarePod:
    """One bare pod: the Pod the API would serve, its namespace and its process."""

    manifest: dict[str, Any]
    netns: str
    pid: int


def bare_prefix(tag: str) -> str:
    return f"pnb{hashlib.sha256(tag.encode()).hexdigest()[:4]}-"


def make_bare_pods(tag: str, count: int, log_dir: Path, backend: str = "nft", start: int = 0) -> list[BarePod]:
    """`count` bare pods named bare-<tag>-N (N from `start`); pod IPs 10.98.N/256.N%256."""
    prefix = bare_prefix(tag)
    log_dir.mkdir(parents=True, exist_ok=True)
    deployment = {
        "metadata": {"name": "bare", "namespace": "bench"},
        "spec": {
            "template": {
                "metadata": {"labels": {"app": "bare", "version": "v1"}},
                "spec": {"containers": [{"name": "app", "image": "bare:1"}]},
            }
        },
    }
    pods = []
    for index in range(start, start + count):
        name = f"bare-{tag}-{index}"
        ip = f"10.98.{index // 250}.{index % 250 + 2}"
        netns = f"{prefix}{index}"
        run(["ip", "netns", "add", netns])
        run(["ip", "link", "set", "lo", "up"], netns=netns)
        run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"], netns=netns)  # no dummy module here
        run(["ip", "addr", "add", f"{ip}/32", "dev", "eth0"], netns=netns)
        run(["ip", "link", "set", "eth0", "up"], netns=netns)
        manifest = injected_pod(deployment, name, ip, "bare", lab=prefix)
        manifest["metadata"]["uid"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"podnat-bare/{prefix}{name}"))
        manifest["spec"]["nodeName"] = NODE
        _istio_init(manifest, netns, backend)
        cgroup = cgroups.container_cgroup(prefix, manifest["metadata"]["uid"], name, "app")
        pid = spawn(["sleep", "infinity"], netns, 65534, 65534, log_dir / f"{name}.log", cgroup=cgroup)
        pods.append(BarePod(manifest, netns, pid))
    for pod in pods:
        _wait_entered(pod)
    return pods


def _wait_entered(pod: BarePod, timeout: float = 10.0) -> None:
    """Until the process is in its namespace (`ip netns exec` has run): only then can /proc show it."""
    want = Path(f"/run/netns/{pod.netns}").stat().st_ino
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if (
                Path(f"/proc/{pod.pid}/ns/net").stat().st_ino == want
                and "sleep" in Path(f"/proc/{pod.pid}/comm").read_text()
            ):
                return
        time.sleep(0.01)
    raise RuntimeError(f"bare pod {pod.netns}: its process {pod.pid} did not enter the namespace")


def delete_bare_pod(pod: BarePod) -> None:
    """One bare pod gone, as a deleted pod goes: its process killed, its namespace and cgroup removed."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pod.pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pod.pid, 0)
    subprocess.run(["ip", "netns", "delete", pod.netns], check=False, capture_output=True)
    cgroups.remove_pod(pod.netns.rsplit("-", 1)[0] + "-", pod.manifest["metadata"]["uid"])


def remove_bare_pods(tag: str) -> None:
    prefix = bare_prefix(tag)
    names = [n.split()[0] for n in run(["ip", "netns", "list"]).splitlines() if n.startswith(prefix)]
    for name in names:
        for pid in run(["ip", "netns", "pids", name], check=False).split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)
    cgroups.remove(prefix)
