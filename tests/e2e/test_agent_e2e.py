"""The node agent end to end: manifests/agent applied to a cluster (the nightly `agent` job: kind,
the image built by manifests/agent/Dockerfile and loaded into kind), then podnat reading through it.

Skipped where no agent runs (the other jobs, `make e2e-lab`); with E2E_AGENT=1 (the agent job) a
missing agent fails instead."""

from __future__ import annotations

import os
import re
from typing import Any

import pytest
from conftest import comparable_report, require
from e2e_support import BOOKINFO, Cluster, run_podnat

pytestmark = pytest.mark.e2e
AGENT_NAMESPACE = "podnat-system"
AGENT_LABEL = "app.kubernetes.io/name=podnat-agent"


@pytest.fixture(scope="module")
def agents() -> list[Any]:
    try:
        cluster = Cluster()
        pods = cluster.core.list_namespaced_pod(AGENT_NAMESPACE, label_selector=AGENT_LABEL, _request_timeout=20).items
    except Exception as err:  # no cluster, or no agent namespace
        pods, why = [], str(err).splitlines()[0]
    else:
        why = f"no pod labelled {AGENT_LABEL} in {AGENT_NAMESPACE}: kubectl apply -k manifests/agent"
    if os.environ.get("E2E_AGENT") == "1":
        assert pods, why
    elif not pods:
        pytest.skip(f"no podnat agent runs ({why})")
    return list(pods)


def test_one_ready_agent_per_node(agents: list[Any]) -> None:
    cluster = Cluster()
    nodes = {n.metadata.name for n in cluster.core.list_node(_request_timeout=20).items}
    ready = {
        p.spec.node_name
        for p in agents
        if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    }
    assert ready == nodes


def test_verify_reads_through_the_agent_and_equals_the_debug_container(agents: list[Any]) -> None:
    via_agent = run_podnat("verify", "-n", BOOKINFO, "-o", "json", record="agent-verify").json()
    via_debug = run_podnat(
        "verify", "-n", BOOKINFO, "--source", "debug", "-o", "json", record="agent-verify-debug"
    ).json()
    assert via_agent["pods"], via_agent
    for pod in via_agent["pods"]:
        assert pod["sources"]["nat"].startswith("podnat agent "), pod["sources"]
        assert pod["status"] == "ok", pod.get("error") or pod["status"]
    debug = {p["pod"]["name"]: p for p in via_debug["pods"]}
    for pod in via_agent["pods"]:
        assert comparable_report(pod) == comparable_report(debug[pod["pod"]["name"]])


def test_the_agent_serves_its_metrics_through_pods_proxy(agents: list[Any]) -> None:
    cluster = Cluster()
    agent = agents[0]
    text = cluster.core.connect_get_namespaced_pod_proxy_with_path(
        f"{agent.metadata.name}:9477", AGENT_NAMESPACE, "metrics", _request_timeout=30
    )
    require(isinstance(text, str), "the client returned no text")
    assert re.search(r'^podnat_agent_pods\{state="mapped"\} [1-9]', text, re.M), text[:2000]
    assert "podnat_pod_status{" in text
