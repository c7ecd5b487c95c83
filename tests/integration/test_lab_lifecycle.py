"""The lab's own promises: `podnat lab` commands, what a pod looks like through the API, and that
`down` leaves nothing behind (namespaces, /etc/netns entries, processes, files, host links).

One lab (nft backend) for the module, in its own root; the last test takes it down and checks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require

from podnat.facts import PodRef
from podnat.lab.state import LabState

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.timeout(300)]

ROOT = Path("/run/podnat-lab-lifecycle")  # world-traversable: Envoy (1337) and the apps read files here


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _host_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def _identity(state: LabState) -> dict[str, int]:
    """The lab's namespaces by inode: names are global, so this tells our lab from a newer one."""
    paths = {n: Path("/run/netns", n) for n in state.netns}
    return {n: path.stat().st_ino for n, path in paths.items() if path.exists()}


def _still_ours(state: LabState, identity: dict[str, int]) -> bool:
    return _identity(state) == identity


def _alive(pid: int) -> bool:
    """Running (a zombie the test process has not reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _lab_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PODNAT_LAB_DIR": str(ROOT), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "podnat", "lab", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[LabState, dict[str, object]]]:
    require(os.geteuid() == 0, "the lab needs root")
    from podnat.lab.build import lab_down, lab_up, netns_prefix

    prefix = netns_prefix(ROOT)
    require(not any(n.startswith(prefix) for n in _netns()), f"a lab in {ROOT} is up already: take it down first")
    before = {"netns": _netns(), "links": _host_links()}

    state = lab_up("nft", ROOT)
    identity = _identity(state)
    try:
        yield state, {**before, "identity": identity}
    finally:
        # Only when the namespaces are still the ones this test made.
        if _still_ours(state, identity):
            lab_down(ROOT)


def _source(state: LabState):
    from podnat.kube.client import KubeClient, KubeOptions
    from podnat.kube.cluster import KubeCluster

    assert state.apiserver is not None
    return KubeCluster(KubeClient.connect(KubeOptions(kubeconfig=state.apiserver.kubeconfig, request_timeout=20)))


def test_status_json_lists_every_pod_with_its_namespace_ip_and_processes(lab) -> None:
    state, _ = lab
    result = _lab_cli("status", "-o", "json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert sorted(p["name"].rsplit("-", 2)[0] for p in status["pods"]) == [
        "details-v1",
        "productpage-v1",
        "ratings-v1",
        "reviews-v1",
        "reviews-v2",
        "reviews-v3",
    ]
    for pod in status["pods"]:
        assert pod["namespace"] == "bookinfo" and pod["ip"].startswith("10.99.0.")
        assert Path(pod["netns"]).exists(), pod["netns"]
        for name in ("istio-proxy", pod["name"].split("-")[0]):
            assert _alive(pod["containers"][name]["pid"]), (pod["name"], name)
    assert _lab_cli("kubeconfig").stdout.strip() == state.apiserver.kubeconfig


def test_the_served_pod_looks_injected(lab) -> None:
    state, _ = lab
    pod = _source(state).get_pod(PodRef("bookinfo", state.pods[0].name))
    init = pod["spec"]["initContainers"][0]
    assert init["name"] == "istio-init"
    assert init["args"][:14] == [
        "istio-iptables",
        "-p",
        "15001",
        "-z",
        "15006",
        "-u",
        "1337",
        "-m",
        "REDIRECT",
        "-i",
        "*",
        "-x",
        "",
        "-b",
    ]
    assert set(init["securityContext"]["capabilities"]["add"]) == {"NET_ADMIN", "NET_RAW"}
    proxy = next(c for c in pod["spec"]["containers"] if c["name"] == "istio-proxy")
    assert proxy["image"].startswith("docker.io/istio/proxyv2:1.30.") and proxy["securityContext"]["runAsUser"] == 1337
    assert json.loads(pod["metadata"]["annotations"]["sidecar.istio.io/status"])["containers"] == ["istio-proxy"]
    assert pod["status"]["phase"] == "Running" and pod["status"]["podIP"] == state.pods[0].ip
    assert pod["spec"]["nodeName"] and all(c["ready"] for c in pod["status"]["containerStatuses"])


def test_istio_init_log_is_the_1_25_format_with_a_real_dump(lab) -> None:
    state, _ = lab
    pod = state.pods[0]
    log = _source(state).read_log(PodRef("bookinfo", pod.name), "istio-init")
    assert "Running iptables restore with: iptables-nft-restore and the following input:" in log
    final = log.split("Final iptables state (IPv4):\n", 1)[1]
    assert final.startswith("# Generated by iptables-nft-save")
    assert "-A ISTIO_OUTPUT -j ISTIO_REDIRECT" in final and "-A PREROUTING -p tcp -j ISTIO_INBOUND" in final


def test_istio_proxy_lists_istios_listeners_and_cannot_read_the_table(lab) -> None:
    state, _ = lab
    source = _source(state)
    ref = PodRef("bookinfo", state.pods[0].name)
    listeners = source.exec(ref, "istio-proxy", ["pilot-agent", "request", "GET", "listeners?format=json"])
    assert listeners.returncode == 0, listeners.stderr
    names = {s["name"] for s in json.loads(listeners.stdout)["listener_statuses"]}
    assert {"virtualOutbound", "virtualInbound", "0.0.0.0_15090", "0.0.0.0_15021"} <= names
    assert {f"{vip}_9080" for vip in state.services.values()} <= names
    # istio-proxy's iptables-save is the legacy one, as in Istio's proxyv2 image; the nft one fails too
    denied = source.exec(ref, "istio-proxy", ["iptables-save"])
    assert denied.returncode not in (0, None)
    assert "Failed to list table names in /proc/net/ip_tables_names: Permission denied" in denied.stderr
    denied = source.exec(ref, "istio-proxy", ["iptables-nft-save"])
    assert denied.returncode not in (0, None)
    assert "Permission denied (you must be root)" in denied.stderr
    whoami = source.exec(ref, "istio-proxy", ["id", "-u"])
    assert whoami.stdout.strip() == "1337"


def test_service_names_resolve_to_vips_inside_pods(lab) -> None:
    state, _ = lab
    pod = state.pods[0]
    for name in ("reviews", "reviews.bookinfo.svc.cluster.local", "istiod.istio-system.svc"):
        out = subprocess.run(
            ["ip", "netns", "exec", pod.netns, "getent", "ahostsv4", name],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.split()
        expected = state.peers["istiod"] if name.startswith("istiod") else state.services["reviews"]
        assert out and out[0] == expected, (name, out)


def test_down_leaves_nothing(lab) -> None:
    state, before = lab
    pids = [*state.pids, *(c.pid for p in state.pods for c in p.containers.values() if c.pid)]
    assert state.apiserver is not None and state.apiserver.pid
    pids.append(state.apiserver.pid)
    assert _still_ours(state, before["identity"]), "another lab replaced this one's namespaces"
    result = _lab_cli("down")
    assert result.returncode == 0, result.stderr
    assert _netns() == before["netns"]
    assert _host_links() == before["links"]
    assert not [n for n in state.netns if Path("/etc/netns", n).exists()]
    assert [pid for pid in pids if _alive(pid)] == []
    assert not ROOT.exists()
    again = _lab_cli("down")
    assert again.returncode == 0 and "nothing to remove" in again.stderr
