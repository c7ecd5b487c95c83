"""Predictions equal what the kernel does: real connections through real pods of the lab.

For every pod and each flow type: read the nat counters through the Kubernetes API (from podnat's
debug container), send one real connection from the right identity, read them again, and check that
the rules that counted are exactly the rules podnat predicts (as many times as its legs cross them),
and that Envoy's listener totals moved for exactly the predicted Envoy ports. Then the same for each
`lab break` fault: podnat's verdict must match what the connection really did. Both iptables backends.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Lab, running_lab

from podnat.facts import PodRef
from podnat.istio.flows import Actor, Endpoint, FlowSpec, FlowType, Identity, context_for
from podnat.istio.paths import FlowTrace, Outcome, trace_flow
from podnat.netfilter.nft import detect_and_parse

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.timeout(600)]

REMOTE_PORT = 9080


@pytest.fixture(scope="module", params=["nft", "legacy"])
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    with running_lab(Path("/run/podnat-lab-test"), request.param) as lab:
        yield lab


def _vip_of(lab: Lab, pod) -> str:
    labels = pod.manifest["metadata"]["labels"]
    name = labels["app"] if labels["app"] != "reviews" else f"reviews-{labels['version']}"
    return lab.state.services[name]


def _flows(lab: Lab, pod) -> list[tuple[str, FlowSpec, str, str | None, int | None, Endpoint | None]]:
    """(id, spec, url, netns to send from, uid to send as, the endpoint Envoy picks)."""
    ip = ipaddress.ip_address(pod.ip)
    node = ipaddress.ip_address(lab.state.peers["node"])
    other = next(p for p in lab.state.pods if p.name != pod.name)
    vip = _vip_of(lab, pod)
    app, proxy = Identity(1000, 1000), Identity(1337, 1337)
    return [
        (
            "1-remote-to-local",
            FlowSpec(FlowType.REMOTE_TO_LOCAL, "", Actor.REMOTE, Endpoint(ip, 9080), node),
            f"http://{ip}:9080/health",
            f"{lab.state.netns_prefix}node",
            None,
            None,
        ),
        (
            "2-local-to-remote",
            FlowSpec(
                FlowType.LOCAL_TO_REMOTE,
                "",
                Actor.APP,
                Endpoint(ipaddress.ip_address(other.ip), REMOTE_PORT),
                identity=app,
            ),
            f"http://{other.ip}:{REMOTE_PORT}/health",
            pod.netns,
            1000,
            None,
        ),
        (
            "3-prometheus",
            FlowSpec(FlowType.PROMETHEUS_TO_LOCAL, "", Actor.REMOTE, Endpoint(ip, 15090), node),
            f"http://{ip}:15090/stats/prometheus",
            f"{lab.state.netns_prefix}node",
            None,
            None,
        ),
        (
            "4-own-service",
            FlowSpec(FlowType.LOCAL_TO_LOCAL, "", Actor.APP, Endpoint(ipaddress.ip_address(vip), 9080), identity=app),
            f"http://{vip}:9080/health",
            pod.netns,
            1000,
            Endpoint(ip, 9080),
        ),
        (
            "4-own-pod-ip",
            FlowSpec(FlowType.LOCAL_TO_LOCAL, "", Actor.APP, Endpoint(ip, 9080), identity=app),
            f"http://{ip}:9080/health",
            pod.netns,
            1000,
            None,
        ),
        (
            "5-envoy-localhost",
            FlowSpec(
                FlowType.ENVOY_LOCALHOST,
                "",
                Actor.PROXY,
                Endpoint(ipaddress.ip_address("127.0.0.1"), 15000),
                identity=proxy,
            ),
            "http://127.0.0.1:15000/ready",
            pod.netns,
            1337,
            None,
        ),
        (
            "6-istiod",
            FlowSpec(
                FlowType.SIDECAR_TO_ISTIOD,
                "",
                Actor.PROXY,
                Endpoint(ipaddress.ip_address(lab.state.peers["istiod"]), 15012),
                identity=proxy,
            ),
            f"tcp://{lab.state.peers['istiod']}:15012",
            pod.netns,
            1337,
            None,
        ),
    ]


def observe(lab: Lab, pod, spec: FlowSpec, url: str, netns: str, uid: int | None, endpoint: Endpoint | None):
    from podnat.lab.probe import connect, envoy_ports_moved, listener_connections, nat_counters

    ref = PodRef(pod.namespace, pod.name)
    stats_before = listener_connections(pod.netns)
    save = f"iptables-{lab.state.backend}-save"
    text, before = nat_counters(lab.source.cluster, ref, save=save)
    result = connect(netns, url, uid)
    _, after = nat_counters(lab.source.cluster, ref, save=save)
    stats_after = listener_connections(pod.netns)
    counted = Counter({ref_: after[ref_] - before.get(ref_, 0) for ref_ in after if after[ref_] > before.get(ref_, 0)})
    ctx = context_for(ipaddress.ip_address(pod.ip), app_ports=(9080,))
    if endpoint is not None:
        ctx = ctx.with_endpoint(spec.destination, endpoint)
    predicted = trace_flow(detect_and_parse(text), spec, ctx)
    return result, counted, envoy_ports_moved(stats_before, stats_after), predicted


def _predicted_rules(trace: FlowTrace) -> Counter[str]:
    return Counter(ref for leg in trace.legs for ref in leg.rules)


def test_every_flow_of_every_pod_counts_exactly_the_predicted_rules(lab: Lab) -> None:
    failures = []
    checked = 0
    for pod in lab.state.pods:
        for flow_id, spec, url, netns, uid, endpoint in _flows(lab, pod):
            result, counted, ports, predicted = observe(lab, pod, spec, url, netns, uid, endpoint)
            checked += 1
            where = f"{pod.name} {flow_id}"
            if not result.answered:
                failures.append(f"{where}: the connection failed (curl {result.returncode})")
            if predicted.outcome is not Outcome.DELIVERED:
                failures.append(f"{where}: podnat predicted {predicted.outcome.value}: {predicted.reason}")
            if counted != _predicted_rules(predicted):
                failures.append(
                    f"{where}: counted {dict(counted)} but podnat predicted {dict(_predicted_rules(predicted))}"
                )
            if ports != Counter(predicted.envoy_ports):
                failures.append(f"{where}: Envoy listeners moved {dict(ports)}, predicted {predicted.envoy_ports}")
    assert checked == 7 * len(lab.state.pods)
    assert not failures, "\n".join(failures)


def test_inbound_really_crosses_the_sidecar(lab: Lab) -> None:
    from podnat.lab.probe import connect

    pod = lab.state.pods[0]
    body = connect(f"{lab.state.netns_prefix}node", f"http://{pod.ip}:9080/health").json()
    assert body["client"] == "127.0.0.6"  # Envoy's inbound leg, not the node's 10.99.0.1
    page = connect(
        next(p for p in lab.state.pods if p.name.startswith("productpage")).netns,
        "http://127.0.0.1:9080/",
        1000,
        timeout=8,
    ).json()
    assert set(page["calls"]) == {"http://details:9080/details/0", "http://reviews:9080/reviews/0"}
    assert all(call.get("client") == "127.0.0.6" for call in page["calls"].values()), page


def test_probe_observes_the_predicted_paths_and_a_fault_changes_them(lab: Lab) -> None:
    pod = _pod(lab, "ratings")
    healthy = json.loads(podnat(lab, "inspect", pod.name, "-n", "bookinfo", "--probe", "-o", "json").stdout)
    assert sorted((p["type"], p["variant"]) for p in healthy["probe"]) == [
        (2, None),
        (4, "own-pod-ip"),
        (5, None),
        (6, None),
    ] or sorted((p["type"], p["variant"]) for p in healthy["probe"]) == [
        (4, None),
        (4, "own-pod-ip"),
        (5, None),
        (6, None),
    ]
    assert all(p["matches"] for p in healthy["probe"]), healthy["probe"]
    before = {(p["type"], p["variant"]): p["observed"] for p in healthy["probe"]}
    from podnat.lab.build import lab_break

    lab_break(pod.name, "foreign-accept", lab.root)
    broken = json.loads(podnat(lab, "inspect", pod.name, "-n", "bookinfo", "--probe", "-o", "json").stdout)
    after = {(p["type"], p["variant"]): p for p in broken["probe"]}
    # Everything the pod sends now stops at the foreign ACCEPT (OUTPUT:1): the observed paths change
    # exactly there, and podnat's live prediction still equals what the kernel counted.
    assert after[(5, None)]["observed"] == ["OUTPUT:1"] != before[(5, None)]
    assert after[(4, "own-pod-ip")]["observed"] == ["OUTPUT:1"] != before[(4, "own-pod-ip")]
    assert all(p["matches"] for p in broken["probe"]), broken["probe"]


def podnat(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "KUBECONFIG": lab.state.apiserver.kubeconfig,
        "HOME": str(lab.root),
        "PATH": "/usr/sbin:/usr/bin:/bin",
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "podnat", *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def inspect(lab: Lab, pod) -> dict:
    return json.loads(podnat(lab, "inspect", pod.name, "-n", "bookinfo", "--debug-container", "-o", "json").stdout)


def _pod(lab: Lab, prefix: str):
    return next(p for p in lab.state.pods if p.name.startswith(prefix))


def _flow(report: dict, flow_type: int, variant: str | None = None) -> dict:
    return next(f for f in report["flows"] if f["type"] == flow_type and f.get("variant") == variant)


def test_faults_podnat_verdict_matches_what_the_connection_did(lab: Lab) -> None:
    from podnat.lab.build import lab_break
    from podnat.lab.probe import connect, envoy_ports_moved, listener_connections

    node = lab.state.peers["node"]
    # Inbound bypass: the app sees the node's address, not Envoy's 127.0.0.6; podnat: type 1 drift, no Envoy.
    for prefix, fault in (("reviews-v1", "no-prerouting-jump"), ("reviews-v2", "exclude-port")):
        pod = _pod(lab, prefix)
        lab_break(pod.name, fault, lab.root)
        assert connect(f"{lab.state.netns_prefix}node", f"http://{pod.ip}:9080/health").json()["client"] == node
        result = podnat(lab, "inspect", pod.name, "-n", "bookinfo", "--debug-container", "-o", "json")
        assert result.returncode == 1, result.stderr
        flow1 = _flow(json.loads(result.stdout), 1)
        assert flow1["status"] == "drift" and flow1["envoy_ports"] == [] and flow1["expected"]["envoy_ports"] == [15006]
    # Outbound bypass by a foreign ACCEPT: Envoy's virtualOutbound never sees the connection.
    pod = _pod(lab, "reviews-v3")
    lab_break(pod.name, "foreign-accept", lab.root)
    before = listener_connections(pod.netns)
    assert connect(pod.netns, f"http://{_pod(lab, 'details').ip}:9080/health", 1000).answered
    assert envoy_ports_moved(before, listener_connections(pod.netns))[15001] == 0
    report = inspect(lab, pod)
    assert _flow(report, 2)["status"] == "drift" and _flow(report, 2)["legs"][0]["rules"] == ["OUTPUT:1"]
    assert any(d["foreign"] for d in report["diff"])
    # A redirect to a dead port: refused for real, and podnat says refused.
    pod = _pod(lab, "details")
    lab_break(pod.name, "dead-port", lab.root)
    assert connect(pod.netns, f"http://{_pod(lab, 'ratings').ip}:9080/health", 1000).refused
    report = inspect(lab, pod)
    assert _flow(report, 2)["status"] == "broken" and _flow(report, 2)["outcome"] == "refused"
    # Envoy stopped: refused for real; podnat reads that the admin port refused and says refused.
    pod = _pod(lab, "productpage")
    if lab.state.backend == "nft":
        lab_break(pod.name, "legacy-copy", lab.root)
        report = inspect(lab, pod)
        assert any("both iptables-legacy and iptables-nft" in f["message"] for f in report["findings"])
        assert connect(pod.netns, f"http://{_pod(lab, 'ratings').ip}:9080/health", 1000).answered
    lab_break(pod.name, "stop-envoy", lab.root)
    assert connect(pod.netns, f"http://{_pod(lab, 'ratings').ip}:9080/health", 1000).refused
    report = inspect(lab, pod)
    assert _flow(report, 2)["outcome"] == "refused" and _flow(report, 1)["outcome"] == "refused"
    # Envoy's own traffic re-captured: it loops for real (the connection never reaches the peer).
    pod = _pod(lab, "reviews-v1")
    lab_break(pod.name, "owner-uid", lab.root)
    assert not connect(pod.netns, f"http://{_pod(lab, 'details').ip}:9080/health", 1000, timeout=2).answered
    report = inspect(lab, pod)
    assert _flow(report, 2)["outcome"] == "loop" and _flow(report, 2)["status"] == "broken"
    # verify names every broken pod and exits 1.
    result = podnat(lab, "verify", "-n", "bookinfo", "--debug-container", "-o", "json")
    assert result.returncode == 1
    statuses = {p["pod"]["name"]: p["status"] for p in json.loads(result.stdout)["pods"]}
    assert all(statuses[p.name] in ("drift", "broken") for p in lab.state.pods), statuses
    assert {p["live"] for p in json.loads(result.stdout)["pods"]} == {True}  # the debug container reads live
    # The rules applied at start (istio-init's logs) do not show the faults made in the live rules: each
    # pod says its evidence is not live, in the JSON and in the table's LIVE column, so an "ok" read from
    # a log is not taken for proof.
    at_start = podnat(lab, "verify", "-n", "bookinfo", "--source", "init-log", "-o", "json")
    pods = json.loads(at_start.stdout)["pods"]
    assert {p["live"] for p in pods} == {False}, at_start.stderr
    missed = [p["pod"]["name"] for p in pods if p["status"] == "ok"]  # broken live, "ok" from the log
    assert missed and all(statuses[name] in ("drift", "broken") for name in missed), (missed, statuses)
    table = podnat(lab, "verify", "-n", "bookinfo", "--source", "init-log").stdout
    rows = [line for line in table.splitlines() if any(p.name in line for p in lab.state.pods)]
    assert len(rows) == len(lab.state.pods) and all("no (at start)" in row for row in rows), table
