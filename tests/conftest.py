"""Test layers: unit (pure), integration (root: netns, iptables, Envoy), e2e (a cluster, opt-in).

A test that needs root or a cluster skips with a one-line reason locally and FAILS under CI=true,
so nothing silently stops being tested.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
# Istio's goldens, the kernel-loaded dumps and an injected pod spec: copied into the repository
# (tests/data/istio/README.md says from where), so a fresh clone tests itself.
REFERENCE = REPO / "tests" / "data" / "istio"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Where the agents were (podnat/kube/agentcache.py): a directory of the session's, never the user's cache;
# the podnat processes the tests start inherit it.
os.environ["PODNAT_CACHE_DIR"] = tempfile.mkdtemp(prefix="podnat-test-cache-")
atexit.register(shutil.rmtree, os.environ["PODNAT_CACHE_DIR"], True)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--e2e", action="store_true", help="run the end-to-end suite (tests/e2e)")


def require(condition: bool, reason: str) -> None:
    """Skip locally, fail in CI: for tests that need root, a kernel feature or a cluster."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_e2e = config.getoption("--e2e")
    for item in items:
        if item.get_closest_marker("e2e") is not None and not run_e2e:
            item.add_marker(pytest.mark.skip(reason="end-to-end suite is opt-in: pass --e2e"))


@pytest.fixture(autouse=True)
def _require_root(request: pytest.FixtureRequest) -> None:
    if "root" in request.keywords:
        require(os.geteuid() == 0, "needs root (network namespaces, iptables)")
        require(shutil.which("iptables-restore") is not None, "needs iptables (make install)")
        require(shutil.which("ip") is not None, "needs iproute2 (make install)")


@pytest.fixture(scope="session")
def reference() -> Path:
    assert REFERENCE.is_dir(), f"the Istio reference data is missing from the repository: {REFERENCE}"
    return REFERENCE


@dataclass(frozen=True)
class Lab:
    """A lab up for a test module: its state, a podnat source against its API server, its root."""

    state: Any
    source: Any
    root: Path


@contextmanager
def running_lab(root: Path, backend: str = "nft", **options: Any) -> Iterator[Lab]:
    """`lab_up` (root only), podnat's debug container in every pod as `inspect --debug-container` adds
    it, and `lab_down` whatever happens."""
    require(os.geteuid() == 0, "the lab needs root")
    from podnat.facts import PodRef
    from podnat.kube.client import KubeClient, KubeOptions
    from podnat.kube.cluster import KubeCluster
    from podnat.lab.build import lab_down, lab_up
    from podnat.sources import LiveSource

    try:
        state = lab_up(backend, root, **options)
        client = KubeClient.connect(KubeOptions(kubeconfig=state.apiserver.kubeconfig, request_timeout=20))
        source = LiveSource(KubeCluster(client))
        for pod in state.pods:
            source.read_facts(source.get_pod(PodRef(pod.namespace, pod.name)), None, True)
        yield Lab(state, source, root)
    finally:
        lab_down(root)


_NETNS_NAMES = itertools.count()


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace of this test's own (pntest-<pid>-<n>) for loading rules with nft, deleted afterwards."""
    require(shutil.which("nft") is not None, "needs nft (make install)")
    name = f"pntest-{os.getpid()}-{next(_NETNS_NAMES)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


@contextmanager
def listening(netns: str, address: str, port: int) -> Iterator[None]:
    """A TCP socket listening on address:port in `netns` (and never answering) while the block runs."""
    import sys

    family = "AF_INET6" if ":" in address else "AF_INET"
    code = (
        f"import socket, time; s = socket.socket(socket.{family}); s.bind(({address!r}, {port})); s.listen(); "
        "print('up', flush=True); time.sleep(120)"
    )
    process = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "up"
        yield
    finally:
        process.kill()
        process.wait(10)


def comparable_report(data: dict[str, Any]) -> dict[str, Any]:
    """A pod's report without what differs by source: where it was read, notes, input, packet counters."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in ("packets", "counters", "bytes")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip({k: v for k, v in data.items() if k not in ("sources", "notes", "input")})


def pod_manifest(name: str, labels: dict[str, str]) -> dict[str, Any]:
    """A running Bookinfo pod in namespace bookinfo as an injector leaves it (the lab API server tests' pods)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "bookinfo",
            "labels": labels,
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {
            "nodeName": "lab",
            "initContainers": [{"name": "istio-init", "image": "docker.io/istio/proxyv2:1.30.3"}],
            "containers": [
                {"name": "app", "image": "docker.io/istio/examples-bookinfo-reviews-v1:1.20.2"},
                {"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.30.3"},
            ],
        },
        "status": {
            "phase": "Running",
            "podIP": "10.89.0.2",
            "containerStatuses": [
                {"name": n, "ready": True, "restartCount": 0, "state": {"running": {}}} for n in ("app", "istio-proxy")
            ],
        },
    }
