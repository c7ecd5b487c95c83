"""The source policy over KubeCluster against the lab: its real API server and real network-namespace pods.

The module brings its own lab up (root) and takes it down afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require

from podnat.facts import NatSource, PodRef
from podnat.kube.client import KubeClient, KubeOptions
from podnat.kube.cluster import KubeCluster
from podnat.kube.errors import Failure, KubeSourceError
from podnat.lab.state import LabState
from podnat.report import Explained
from podnat.sources import LiveSource

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


def source(lab: LabState, token: str | None = None) -> LiveSource:
    assert lab.apiserver is not None
    client = KubeClient.connect(KubeOptions(kubeconfig=lab.apiserver.kubeconfig, request_timeout=20))
    if token is not None:
        # load_kube_config re-applies the kubeconfig token on every request unless its hook is cleared.
        client.configuration.refresh_api_key_hook = None
        client.configuration.api_key = {"BearerToken": f"Bearer {token}"}
    return LiveSource(KubeCluster(client, debug_wait=30))


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
    assert facts.live is False
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
    assert first.live is True
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


def test_inspect_debug_container_reads_nft_rules_through_the_proxy_image_toolset(lab: LabState) -> None:
    """The lab's proxy has Istio's proxyv2 toolset (`iptables-save` is the legacy binary) while istio-init
    wrote with iptables-nft: the unqualified read sees an empty table, podnat reads the live nft rules."""
    import json
    import subprocess
    import sys

    assert lab.apiserver is not None
    src = source(lab)
    ref = sidecar_pod(lab)
    env = {
        "KUBECONFIG": lab.apiserver.kubeconfig,
        "HOME": lab.root,
        "PATH": "/usr/sbin:/usr/bin:/bin",
        "COLUMNS": "200",
    }
    run = subprocess.run(
        [sys.executable, "-m", "podnat", "inspect", ref.name, "-n", ref.namespace, "--debug-container", "-o", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    report = json.loads(run.stdout)
    assert report["sources"]["nat"] == "ephemeral container podnat-debug (uid 0, NET_ADMIN): iptables-nft-save -c"
    assert report["live"] is True
    packets = [n for f in report["flows"] for leg in f.get("legs", []) for n in (leg.get("packets") or {}).values()]
    assert packets and None not in packets and sum(packets) > 0  # live counters beside the traced rules
    facts = src.read_facts(src.get_pod(ref), NatSource.DEBUG, True)
    assert facts.nat is not None and facts.nat.counters
    from podnat.netfilter.model import Family
    from podnat.netfilter.nft import detect_and_parse

    live = detect_and_parse(facts.nat.v4, Family.IPV4)
    assert live.backend == "nf_tables"
    assert any(r.counters is not None and r.counters.packets for t in live.tables.values() for r in t.rules())
    # What the old capture read, in the same container: the image's unqualified iptables-save.
    version = src.cluster.exec(ref, "podnat-debug", ["iptables-save", "--version"])
    assert "legacy" in version.stdout
    old = src.cluster.exec(ref, "podnat-debug", ["iptables-save", "-c"])
    assert old.returncode == 0 and "-A " not in old.stdout and "ISTIO" not in old.stdout


def test_inspect_and_verify_read_each_pod_once(lab: LabState, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pod is read once per inspect (podnat.istio.pod.read_pod): the use case, the intent, the adapter
    (its exec, admin port, TPROXY table, log fallback) and the explanation share one PodInfo."""
    import podnat.istio.pod as pods
    from podnat.usecases import inspect_pod, verify_pods

    real = pods.read_pod
    calls: list[str] = []

    def counting(raw: object, namespace_labels: object = None) -> pods.PodInfo:
        calls.append(str(raw["metadata"]["name"]))  # type: ignore[index]
        return real(raw, namespace_labels)  # type: ignore[arg-type]

    monkeypatch.setattr(pods, "read_pod", counting)
    src = source(lab)
    ref = sidecar_pod(lab)
    report = inspect_pod(src, src.get_pod(ref), None, True)
    assert isinstance(report, Explained), report
    assert calls == [ref.name]
    calls.clear()
    listed = src.list_pods(ref.namespace)
    result = verify_pods(lambda: source(lab), listed, 2)
    assert len(result.pods) == len(listed) and sorted(calls) == sorted(p["metadata"]["name"] for p in listed)


def test_debug_container_denied_falls_back_never_silently_and_source_debug_is_a_demand(lab: LabState) -> None:
    """A token that may not exec nor patch pods/ephemeralcontainers (the lab's read-only one): with
    --debug-container the istio-init log is read, the notes say why, and the report says the rules are not
    live (JSON and table); with --source debug it is exit 3 saying what to grant."""
    import json
    import subprocess
    import sys

    assert lab.apiserver is not None
    ref = sidecar_pod(lab)
    env = {
        "KUBECONFIG": str(Path(lab.apiserver.kubeconfig).with_name("kubeconfig.readonly")),
        "HOME": lab.root,
        "PATH": "/usr/sbin:/usr/bin:/bin",
        "COLUMNS": "200",
    }

    def inspect(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "podnat", "inspect", ref.name, "-n", ref.namespace, *args]
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)

    run = inspect("--debug-container", "-o", "json")
    report = json.loads(run.stdout)
    assert run.returncode == 0 and report["status"] == "ok", run.stderr
    assert report["live"] is False
    assert report["sources"]["nat"] == "istio-init log: applied at pod start, not necessarily live"
    # The module's earlier tests added podnat-debug: this token may not exec in it (nor patch a new one).
    denied = f"cannot create pods/exec in namespace {ref.namespace}: grant it"
    assert [n for n in report["notes"] if n.startswith(denied)], report["notes"]
    table = inspect("--debug-container")
    assert table.returncode == 0 and "applied at start, not necessarily live" in table.stdout
    demanded = inspect("--source", "debug", "-o", "json")
    assert demanded.returncode == 3
    assert json.loads(demanded.stdout)["error"]["message"].startswith(denied)
