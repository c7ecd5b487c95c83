"""KubePodSource against the lab: its real API server and real network-namespace pods.

The module brings its own lab up (root) and takes it down afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require

from podnat.facts import NatSource, PodRef
from podnat.kube.client import KubeClient, KubeOptions
from podnat.kube.errors import Failure, KubeSourceError
from podnat.kube.source import KubePodSource
from podnat.lab.state import LabState

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def lab() -> Iterator[LabState]:
    import os

    require(os.geteuid() == 0, "the lab needs root")
    from podnat.lab.build import lab_down, lab_up

    root = Path("/run/podnat-lab-kube-source")
    state = lab_up("nft", root)
    try:
        yield state
    finally:
        lab_down(root)


def source(lab: LabState, token: str | None = None) -> KubePodSource:
    assert lab.apiserver is not None
    client = KubeClient.connect(KubeOptions(kubeconfig=lab.apiserver.kubeconfig, request_timeout=20))
    if token is not None:
        # load_kube_config re-applies the kubeconfig token on every request unless its hook is cleared.
        client.configuration.refresh_api_key_hook = None
        client.configuration.api_key = {"BearerToken": f"Bearer {token}"}
    return KubePodSource(client, debug_wait=30)


def sidecar_pod(lab: LabState) -> PodRef:
    for pod in lab.pods:
        if "istio-proxy" in pod.containers:
            return PodRef(pod.namespace, pod.name)
    pytest.skip("no lab pod has an istio-proxy container")


def test_unprivileged_proxy_falls_back_to_init_log(lab: LabState) -> None:
    src = source(lab)
    ref = sidecar_pod(lab)
    facts = src.read_facts(src.get_pod(ref), None, False)
    assert facts.nat is not None
    assert facts.nat.source is NatSource.INIT_LOG, facts.notes
    assert facts.nat.label == "istio-init log: applied at pod start, not necessarily live"
    assert "ISTIO_OUTPUT" in facts.nat.v4
    assert any("cannot read the nat table without NET_ADMIN" in n for n in facts.notes)
    assert facts.listeners is not None and "15001" in facts.listeners.json_text


def test_source_exec_reports_the_permission_error(lab: LabState) -> None:
    src = source(lab)
    with pytest.raises(KubeSourceError) as err:
        src.read_facts(src.get_pod(sidecar_pod(lab)), NatSource.EXEC, False)
    assert err.value.failure is Failure.NAT_PERMISSION
    assert "--debug-container" in err.value.message and err.value.code == 3


def test_debug_container_reads_live_table_and_is_reused(lab: LabState) -> None:
    src = source(lab)
    ref = sidecar_pod(lab)
    first = src.read_facts(src.get_pod(ref), None, True)
    assert first.nat is not None and first.nat.source is NatSource.DEBUG, first.notes
    assert first.nat.counters and "ISTIO_OUTPUT" in first.nat.v4
    second = src.read_facts(src.get_pod(ref), None, True)
    assert second.nat is not None and second.nat.debug_container_added is False
    assert "reused ephemeral container podnat-debug" in second.notes
    spec = src.get_pod(ref)["spec"]
    assert [c["name"] for c in spec.get("ephemeralContainers", [])].count("podnat-debug") == 1


def test_readonly_token_cannot_exec(lab: LabState) -> None:
    assert lab.apiserver is not None
    src = source(lab, token=lab.apiserver.readonly_token)
    ref = sidecar_pod(lab)
    with pytest.raises(KubeSourceError) as err:
        src.read_facts(src.get_pod(ref), NatSource.EXEC, False)
    assert err.value.failure is Failure.FORBIDDEN
    assert err.value.message.startswith(f"cannot create pods/exec in namespace {ref.namespace}")
