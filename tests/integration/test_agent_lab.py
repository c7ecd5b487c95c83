"""The node agent on the lab: a pod of podnat-system on the lab's node, this machine's /proc, the lab
pods' processes in kubelet-shaped cgroups. What it reports, what the CLI reads through it, what it
exports and records when a fault is made from outside podnat, and the API server going away."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import comparable_report, require

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.timeout(300)]

ROOT = Path("/run/podnat-lab-agent")
INTERVAL = 2.0


@pytest.fixture(scope="module")
def lab() -> Iterator[Any]:
    require(os.geteuid() == 0, "the lab needs root")
    from podnat.lab.build import lab_down, lab_up

    try:
        yield lab_up("nft", ROOT, agent=True, agent_interval=INTERVAL)
    finally:
        lab_down(ROOT)


def _source(state: Any) -> Any:
    from podnat.kube.client import KubeClient, KubeOptions
    from podnat.kube.cluster import KubeCluster
    from podnat.sources import LiveSource

    client = KubeClient.connect(KubeOptions(kubeconfig=state.apiserver.kubeconfig, request_timeout=30))
    return LiveSource(KubeCluster(client))


def _cli(state: Any, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": state.apiserver.kubeconfig, "COLUMNS": "250"}
    return subprocess.run(
        [sys.executable, "-m", "podnat", *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def _agent_get(state: Any, path: str) -> str:
    from podnat.lab.build import AGENT_PORT

    return _cli_raw(state, f"/api/v1/namespaces/podnat-system/pods/{state.agent.name}:{AGENT_PORT}/proxy{path}")


def _cli_raw(state: Any, path: str) -> str:
    return subprocess.run(
        ["kubectl", "--kubeconfig", state.apiserver.kubeconfig, "get", "--raw", path],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "HOME": str(ROOT)},
    ).stdout


def _requests(state: Any, since: int, client: str | None = None) -> list[str]:
    """Requests in the API server's access log since line `since` (from `client` only, when given: the
    CLI dials 127.0.0.1, the agent pod the node IP)."""
    lines = Path(state.root, "apiserver.log").read_text().splitlines()[since:]
    return [
        m.group(2)
        for line in lines
        if (m := re.search(r'aiohttp\.access (\S+) .*?"((?:GET|POST|PATCH|PUT|DELETE) [^"]+)"', line))
        and (client is None or m.group(1) == client)
    ]


def _log_length(state: Any) -> int:
    return len(Path(state.root, "apiserver.log").read_text().splitlines())


def _status_metric(state: Any, pod: str) -> str | None:
    for line in _agent_get(state, "/metrics").splitlines():
        if line.startswith("podnat_pod_status{") and f'pod="{pod}"' in line:
            return re.search(r'status="(\w+)"', line).group(1)  # type: ignore[union-attr]
    return None


def _events(state: Any) -> list[dict[str, Any]]:
    path = Path(state.root, "events.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait(condition: Any, timeout: float, step: float = 0.2) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout:g}s")
        time.sleep(step)
    return time.monotonic() - started


def test_the_cli_reads_through_the_agent_with_exactly_the_shipped_rbac(lab: Any) -> None:
    """First (no debug container exists yet): podnat as the lab's kubeconfig.cli user (manifests/rbac's
    ClusterRole podnat, cli-rbac.yaml's pods/proxy in podnat-system) verifies and inspects through the
    agent; a debug container, which that ClusterRole does not grant, is exit 3 saying what to grant."""
    env = {**os.environ, "KUBECONFIG": str(Path(lab.apiserver.kubeconfig).with_name("kubeconfig.cli"))}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "podnat", *args]
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)

    ok = cli("verify", "-n", "bookinfo", "-o", "json")
    assert ok.returncode == 0, ok.stderr
    agent = f"podnat agent {lab.agent.name} on node podnat-lab"
    assert {p["sources"]["nat"].split(",")[0] for p in json.loads(ok.stdout)["pods"]} == {agent}
    reviews = next(p for p in lab.pods if p.name.startswith("reviews-v1-"))
    one = cli("inspect", reviews.name, "-n", "bookinfo", "-o", "json")
    assert one.returncode == 0 and json.loads(one.stdout)["sources"]["nat"].startswith(agent), one.stderr
    denied = cli("inspect", reviews.name, "-n", "bookinfo", "--source", "debug", "-o", "json")
    assert denied.returncode == 3, denied.stdout + denied.stderr
    message = json.loads(denied.stdout)["error"]["message"]
    assert message.startswith("cannot patch pods/ephemeralcontainers in namespace bookinfo") and (
        "ClusterRole podnat-debug-container" in message
    ), message


def test_the_agents_report_equals_the_debug_containers_for_every_bookinfo_pod(lab: Any) -> None:
    from podnat.facts import NatSource, PodRef
    from podnat.render.data import pod_report_data
    from podnat.usecases import inspect_pod

    source = _source(lab)
    for pod in lab.pods:
        manifest = source.get_pod(PodRef(pod.namespace, pod.name))
        node = inspect_pod(source, manifest, NatSource.NODE)
        debug = inspect_pod(source, manifest, NatSource.DEBUG, True)
        assert node.status == debug.status == "ok", (node, debug)
        assert node.sources["nat"].startswith(f"podnat agent {lab.agent.name} on node podnat-lab, live at ")
        assert debug.sources["nat"].startswith("ephemeral container podnat-debug")
        assert comparable_report(pod_report_data(node)) == comparable_report(pod_report_data(debug))


def test_verify_reads_through_the_agent_and_catches_a_fault_made_outside_podnat(lab: Any) -> None:
    from podnat.lab.build import run

    since = _log_length(lab)
    ok = _cli(lab, "verify", "-n", "bookinfo", "-o", "json")
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert {p["sources"]["nat"].split(",")[0] for p in report["pods"]} == {
        f"podnat agent {lab.agent.name} on node podnat-lab"
    }
    reviews = next(p for p in lab.pods if p.name.startswith("reviews-v1-"))
    # from outside podnat: the PREROUTING jump deleted on the node, in the pod's namespace
    run(["iptables-nft", "-t", "nat", "-D", "PREROUTING", "-p", "tcp", "-j", "ISTIO_INBOUND"], netns=reviews.netns)
    try:
        bad = _cli(lab, "verify", "-n", "bookinfo")
        assert bad.returncode == 1, bad.stdout + bad.stderr
        assert re.search(rf"{reviews.name}\s*│\s*drift", bad.stdout), bad.stdout
        everyone = _requests(lab, since)  # the CLI's and the agent's (its watch, its Events)
        assert not [r for r in everyone if "/exec" in r or "ephemeralcontainers" in r], everyone
        # each run of the CLI: does the namespace exist, the pod list, the agent lookup, and one pods/proxy
        # request for the (one) node (the agent the last run found there is asked with the others: that order
        # is test_agent_node.py's, on a server slow enough to show it)
        cli = sorted(r.split()[1].split("?")[0] for r in _requests(lab, since, client="127.0.0.1"))
        agent = f"/api/v1/namespaces/podnat-system/pods/{lab.agent.name}:9477/proxy/v1/pods"
        each_run = ["/api/v1/namespaces/bookinfo", "/api/v1/namespaces/bookinfo/pods", agent]
        assert cli == sorted([*each_run, "/api/v1/namespaces/podnat-system/pods"] * 2), cli
    finally:
        run(
            ["iptables-nft", "-t", "nat", "-I", "PREROUTING", "1", "-p", "tcp", "-j", "ISTIO_INBOUND"],
            netns=reviews.netns,
        )
    assert _cli(lab, "verify", "-n", "bookinfo").returncode == 0


def test_a_fault_flips_the_metric_and_records_an_event_within_two_intervals_and_recovery_flips_back(lab: Any) -> None:
    from podnat.lab.build import run

    pod = next(p for p in lab.pods if p.name.startswith("ratings-v1-"))
    assert _status_metric(lab, pod.name) == "ok"
    run(
        ["iptables-nft", "-t", "nat", "-I", "ISTIO_INBOUND", "2", "-p", "tcp", "--dport", "9080", "-j", "RETURN"],
        netns=pod.netns,
    )
    try:
        flipped = _wait(lambda: _status_metric(lab, pod.name) == "drift", 2 * INTERVAL + 1)
        _wait(
            lambda: any(
                e["event"]["reason"] == "CaptureDrift" and e["event"]["regarding"]["name"] == pod.name
                for e in _events(lab)
            ),
            2 * INTERVAL + 1 - flipped,
        )
    finally:
        run(
            ["iptables-nft", "-t", "nat", "-D", "ISTIO_INBOUND", "-p", "tcp", "--dport", "9080", "-j", "RETURN"],
            netns=pod.netns,
        )
    _wait(lambda: _status_metric(lab, pod.name) == "ok", 2 * INTERVAL + 1)
    _wait(
        lambda: any(
            e["event"]["reason"] == "CaptureRecovered" and e["event"]["regarding"]["name"] == pod.name
            for e in _events(lab)
        ),
        2 * INTERVAL + 1,
    )
    event = next(
        e["event"]
        for e in _events(lab)
        if e["event"]["reason"] == "CaptureDrift" and e["event"]["regarding"]["name"] == pod.name
    )
    assert event["type"] == "Warning" and event["reportingController"] == "podnat.dev/agent"
    assert event["regarding"]["uid"] == pod.manifest["metadata"]["uid"] and "type 1 drift" in event["note"]


def _kubectl(state: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed kubectl against the lab (its caches in the lab's root)."""
    return subprocess.run(
        ["kubectl", "--kubeconfig", state.apiserver.kubeconfig, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, "HOME": str(ROOT)},
    )


def _answered(state: Any, since: int, client: str) -> list[tuple[str, int]]:
    """(request line, HTTP status) of `client`'s requests in the API server's access log since line `since`."""
    lines = Path(state.root, "apiserver.log").read_text().splitlines()[since:]
    return [
        (m.group(2), int(m.group(3)))
        for line in lines
        if (m := re.search(r'aiohttp\.access (\S+) .*?"((?:GET|POST|PATCH|PUT|DELETE) [^"]+)" (\d{3})', line))
        and m.group(1) == client
    ]


def test_the_agent_works_with_its_service_accounts_rbac_and_nothing_more(lab: Any) -> None:
    """The agent pod authenticates as its ServiceAccount, with the rules manifests/agent's ClusterRole
    gives it: everything it asked while the lab ran (list, watch, Events) was allowed; an exec or a
    debug container with its token is refused as RBAC refuses it."""
    import yaml

    from podnat.lab.build import AGENT_IP

    agent_config = yaml.safe_load(Path(lab.root, "kubeconfig.agent").read_text())
    (user,) = agent_config["users"]
    assert user == {
        "name": "system:serviceaccount:podnat-system:podnat-agent",
        "user": {"token": lab.apiserver.agent_token},
    }
    asked = _answered(lab, 0, AGENT_IP)  # the agent pod dials the API server from its own IP
    # (a watch is logged when it ends; a refused one would end at once, with its 403)
    assert any(r.startswith("GET /api/v1/pods?fieldSelector=spec.nodeName%3D") for r, _ in asked), asked
    assert "podnat_agent_api_up 1.0" in _metrics_from_node(lab)  # the pods watch is connected
    assert any(r.startswith("POST /apis/events.k8s.io/v1/namespaces/bookinfo/events") for r, _ in asked), asked
    assert [(r, code) for r, code in asked if code >= 400] == []
    reviews = next(p for p in lab.pods if p.name.startswith("reviews-v1-"))
    token = ["--token", lab.apiserver.agent_token]
    denied = _kubectl(lab, *token, "exec", reviews.name, "-n", "bookinfo", "-c", "istio-proxy", "--", "true")
    assert denied.returncode == 1
    assert (
        f'pods "{reviews.name}" is forbidden: User "system:serviceaccount:podnat-system:podnat-agent" cannot '
        'create resource "pods/exec" in API group "" in the namespace "bookinfo"'
    ) in denied.stderr
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=lab.apiserver.kubeconfig, client_configuration=configuration)
    configuration.refresh_api_key_hook = None  # else the kubeconfig's token comes back on every request
    configuration.api_key = {"BearerToken": f"Bearer {lab.apiserver.agent_token}"}
    api = client.CoreV1Api(client.ApiClient(configuration))
    debug = {"spec": {"ephemeralContainers": [{"name": "x", "image": "busybox"}]}}
    with pytest.raises(client.exceptions.ForbiddenException) as refused:
        api.patch_namespaced_pod_ephemeralcontainers(reviews.name, "bookinfo", debug)
    assert 'cannot patch resource "pods/ephemeralcontainers"' in json.loads(refused.value.body)["message"]


def _event_rows(state: Any, pod: str) -> list[str]:
    """The Events section of `kubectl describe pod` (the installed kubectl: it lists core/v1 Events by
    involvedObject.*), one string per row."""
    described = _kubectl(state, "describe", "pod", pod, "-n", "bookinfo")
    assert described.returncode == 0, described.stderr
    section = described.stdout.split("\nEvents:", 1)[1]
    return [" ".join(line.split()) for line in section.splitlines()[3:] if line.strip()]


def test_kubectl_describe_pod_shows_the_agents_events_after_a_fault_and_the_recovery(lab: Any) -> None:
    from podnat.lab.build import run

    pod = next(p for p in lab.pods if p.name.startswith("reviews-v1-"))
    rule = ["-p", "tcp", "--dport", "9080", "-j", "RETURN"]
    started = time.time()

    def recorded(reason: str) -> bool:
        return any(
            e["at"] >= started and e["event"]["reason"] == reason and e["event"]["regarding"]["name"] == pod.name
            for e in _events(lab)
        )

    run(["iptables-nft", "-t", "nat", "-I", "ISTIO_INBOUND", "2", *rule], netns=pod.netns)
    try:
        _wait(lambda: recorded("CaptureDrift"), 2 * INTERVAL + 5)
        rows = _event_rows(lab, pod.name)
        drift = [r for r in rows if r.startswith("Warning CaptureDrift ")]
        assert drift and "podnat.dev/agent podnat: traffic capture is drift (type 1 drift:" in drift[0], rows
    finally:
        run(["iptables-nft", "-t", "nat", "-D", "ISTIO_INBOUND", *rule], netns=pod.netns)
    _wait(lambda: recorded("CaptureRecovered"), 2 * INTERVAL + 5)
    rows = _event_rows(lab, pod.name)
    assert any(
        r.startswith("Normal CaptureRecovered ")
        and r.endswith("podnat.dev/agent podnat: traffic capture is as Istio meant again (was drift)")
        for r in rows
    ), rows


def test_a_table_iptables_cannot_print_is_an_error_in_the_metrics_v1_pods_and_the_cli(lab: Any) -> None:
    """Another tool's nft rule in one pod's iptables-nft nat table (iptables-nft-save exits 3): that pod
    is `error` everywhere the agent's reading shows (the CLI does not read on without it: exec would meet
    the same table, the istio-init log only the rules applied at start), the others stay ok."""
    from podnat.lab.build import run

    pod = next(p for p in lab.pods if p.name.startswith("reviews-v2-"))
    run(["nft", "add rule ip nat OUTPUT ip daddr { 192.0.2.1, 192.0.2.2 } meta mark set 0x1 counter"], netns=pod.netns)
    try:
        _wait(lambda: _status_metric(lab, pod.name) == "error", 2 * INTERVAL + 5)
        served = json.loads(_agent_get(lab, "/v1/pods?namespace=bookinfo"))
        statuses = {p["pod"]["name"]: p["status"] for p in served["pods"]}
        assert statuses.pop(pod.name) == "error" and set(statuses.values()) == {"ok"}, statuses
        for flags in (("--source", "node"), ()):  # asked by name, or as the first source of the default order
            verify = _cli(lab, "verify", "-n", "bookinfo", *flags, "-o", "json")
            report = {p["pod"]["name"]: p for p in json.loads(verify.stdout)["pods"]}
            failed = report.pop(pod.name)
            assert failed["status"] == "error" and failed["error"]["failure"] == "table-unreadable", failed
            assert "iptables-nft-save failed" in failed["error"]["message"], failed
            assert "(exit 3)" in failed["error"]["message"] and {p["status"] for p in report.values()} == {"ok"}
            assert verify.returncode == 3, (flags, verify.returncode, verify.stderr)
        table = _cli(lab, "verify", "-n", "bookinfo")
        assert re.search(rf"{pod.name}\s*│\s*error", table.stdout), table.stdout
    finally:
        handles = run(["nft", "-a", "list", "chain", "ip", "nat", "OUTPUT"], netns=pod.netns)
        found = re.search(r"meta mark set 0x00000001 counter .*# handle (\d+)", handles)
        assert found is not None, handles
        run(["nft", "delete", "rule", "ip", "nat", "OUTPUT", "handle", found.group(1)], netns=pod.netns)
    _wait(lambda: _status_metric(lab, pod.name) == "ok", 2 * INTERVAL + 5)


def test_the_watch_recovers_after_the_api_server_restarts(lab: Any) -> None:
    from podnat.lab.apiserver import start_apiserver, stop_apiserver
    from podnat.lab.state import LabState

    state = LabState.load(ROOT)
    port = state.apiserver.port
    stop_apiserver(state.apiserver)
    _wait(lambda: "podnat_agent_api_up 0.0" in _metrics_from_node(lab), 20)
    state.apiserver = start_apiserver(ROOT, state=state, port=port)
    _wait(lambda: "podnat_agent_api_up 1.0" in _metrics_from_node(lab), 30)
    result = _cli(lab, "verify", "-n", "bookinfo")
    assert result.returncode == 0 and "podnat agent" not in result.stderr, result.stdout + result.stderr


def _metrics_from_node(lab: Any) -> str:
    """The agent's /metrics asked from the lab's node (the API server may be down)."""
    from podnat.lab.build import AGENT_IP, AGENT_PORT, run

    return run(
        ["curl", "-s", "-m", "2", f"http://{AGENT_IP}:{AGENT_PORT}/metrics"],
        netns=f"{lab.netns_prefix}node",
        check=False,
    )


def test_promtool_check_metrics_on_what_the_agent_serves(lab: Any) -> None:
    require(shutil.which("promtool") is not None, "needs promtool (make install: apt prometheus)")
    text = _agent_get(lab, "/metrics")
    assert "podnat_pod_status{" in text and "podnat_agent_sweep_duration_seconds_bucket" in text
    done = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_real_prometheus_scrapes_the_agent_and_sees_the_flip(lab: Any, tmp_path: Path) -> None:
    """Debian's prometheus in the lab's node namespace scrapes the agent's pod IP every second."""
    require(shutil.which("prometheus") is not None, "needs prometheus (make install: apt prometheus)")
    from podnat.lab.build import AGENT_IP, AGENT_PORT, run

    node = f"{lab.netns_prefix}node"
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: podnat-agent
    static_configs: [{{targets: ["{AGENT_IP}:{AGENT_PORT}"]}}]
""")
    prometheus = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            node,
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path}/tsdb",
            "--web.listen-address=127.0.0.1:9090",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "log").open("wb"),
    )

    def query(expr: str) -> list[dict[str, Any]]:
        out = run(
            ["curl", "-s", "-m", "2", "--data-urlencode", f"query={expr}", "http://127.0.0.1:9090/api/v1/query"],
            netns=node,
            check=False,
        )
        try:
            return list(json.loads(out)["data"]["result"])
        except (ValueError, KeyError):
            return []

    pod = next(p for p in lab.pods if p.name.startswith("details-v1-"))
    try:
        _wait(lambda: query('up{job="podnat-agent"} == 1'), 60, 0.5)
        _wait(lambda: query(f'podnat_pod_status{{pod="{pod.name}",status="ok"}} == 1'), 30, 0.5)
        run(
            ["iptables-nft", "-t", "nat", "-I", "ISTIO_INBOUND", "2", "-p", "tcp", "--dport", "9080", "-j", "RETURN"],
            netns=pod.netns,
        )
        try:
            _wait(lambda: query(f'podnat_pod_status{{pod="{pod.name}",status="drift"}} == 1'), 2 * INTERVAL + 5, 0.5)
            assert query(f'podnat_pod_flow_status{{pod="{pod.name}",type="1",status="drift"}}')
        finally:
            run(
                ["iptables-nft", "-t", "nat", "-D", "ISTIO_INBOUND", "-p", "tcp", "--dport", "9080", "-j", "RETURN"],
                netns=pod.netns,
            )
        _wait(lambda: query(f'podnat_pod_status{{pod="{pod.name}",status="ok"}} == 1'), 2 * INTERVAL + 5, 0.5)
        # the drift series went stale when the agent stopped exporting it
        _wait(lambda: not query(f'podnat_pod_status{{pod="{pod.name}",status="drift"}}'), 10, 0.5)
    finally:
        prometheus.terminate()
        prometheus.wait(10)
