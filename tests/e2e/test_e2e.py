"""podnat against a real cluster: the one the current kubeconfig names (kind + Istio nightly, the lab in CI).

Opt-in with --e2e. Without a kubeconfig or a reachable API server with Bookinfo running, the suite
skips locally and fails under CI=true. Tests that change things work in a namespace of their own and
delete it; where the API has no apps/v1 (the lab) they work on namespace bookinfo and put back what
they changed.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from capture_setup import setup_problems, template_annotations
from conftest import require
from e2e_support import (
    BOOKINFO,
    BREAK_PREROUTING_JUMP,
    CALL_REVIEWS,
    ENVOY_PORTS,
    FLOW_TYPES,
    OUT,
    Cluster,
    diff_text,
    flows_by_type,
    listener_ports,
    pod_name,
    pod_reports,
    podnat_kubeconfig,
    predicted_rules,
    proxy_image,
    report_for,
    restore_command,
    rule_counters,
    run_podnat,
    source_kinds,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

WORKLOADS = ("productpage-v1", "details-v1", "ratings-v1", "reviews-v1", "reviews-v2", "reviews-v3")
EXCLUDE_OUTBOUND_PORTS = "traffic.sidecar.istio.io/excludeOutboundPorts"
BREAKER = "podnat-e2e-break"


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    paths = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    require(
        any(Path(p).is_file() for p in paths.split(os.pathsep) if p),
        "no kubeconfig: run `make e2e-up` (kind) or `export KUBECONFIG=$(podnat lab kubeconfig)`",
    )
    try:
        found = Cluster()
    except Exception as err:
        require(False, f"the kubeconfig cannot be loaded: {err}")
        raise
    unreachable = found.reachable()
    require(unreachable is None, f"the API server in the kubeconfig does not answer: {unreachable}")
    require(
        bool(found.running_pods(BOOKINFO)),
        "no running pods in namespace bookinfo: run `make e2e-up` or `podnat lab up`",
    )
    return found


@contextmanager
def workspace(cluster: Cluster, purpose: str, deployments: set[str]) -> Iterator[str]:
    """A namespace of its own with a copy of some Bookinfo workloads; the lab (no Deployments): bookinfo."""
    if not cluster.has_apps:
        yield BOOKINFO
        return
    with cluster.scratch_namespace(purpose) as namespace:
        # the job's capture setting (tproxy: the TPROXY annotation make e2e-up patches into bookinfo)
        cluster.clone_bookinfo(namespace, deployments, template_annotations(job_setup()))
        yield namespace


def job_setup() -> str:
    """The capture setup this run claims (mk/e2e.mk passes E2E_SETUP to the suite)."""
    setup = os.environ.get("E2E_SETUP", "")
    require(bool(setup), "E2E_SETUP is not set: run the suite with `make e2e` or `make e2e-lab`")
    return setup


def statuses(report: dict[str, Any]) -> dict[int, str]:
    # podnat leaves `status` out of a flow that is ok when it had no intent to compare with
    return {t: str(f.get("status", "ok")) for t, f in flows_by_type(report).items() if t in FLOW_TYPES}


def test_the_jobs_capture_setup_is_what_it_claims(cluster: Cluster) -> None:
    """First: every bookinfo pod captures the way E2E_SETUP says (capture_setup.py), so an install
    setting that was silently ignored fails the job instead of testing another setup."""
    setup = job_setup()
    run = run_podnat("verify", "--namespace", BOOKINFO, "--debug-container", "-o", "json", record="setup-verify")
    assert run.returncode == 0, run.describe()
    pods = {p.metadata.name: cluster.pod_json(p) for p in cluster.running_pods(BOOKINFO)}
    problems = {
        pod_name(r): setup_problems(setup, pods[pod_name(r)], r) for r in pod_reports(run.json()) if pod_name(r) in pods
    }
    assert set(problems) == set(pods), f"verify did not report every running pod: {sorted(problems)}"
    assert not any(problems.values()), f"E2E_SETUP={setup}, but: {problems}"


SERVICE_ACCOUNT = "system:serviceaccount:podnat-e2e-identity:podnat"  # manifests/e2e/podnat-serviceaccount.yaml


def test_podnat_runs_as_the_serviceaccount_bound_to_manifests_rbac(cluster: Cluster) -> None:
    """The nightly's podnat is the ServiceAccount of manifests/e2e/, bound to exactly manifests/rbac's
    roles: what every other test's podnat could do, and not more."""
    kubeconfig = podnat_kubeconfig()
    if kubeconfig is None and not cluster.has_apps:
        lab_user_has_exactly_manifests_rbac(cluster)
        return
    require(
        kubeconfig is not None,
        "PODNAT_E2E_KUBECONFIG is not set: the nightly runs podnat as a ServiceAccount (make e2e-sa-kubeconfig)",
    )
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=kubeconfig)
    review = client.AuthenticationV1Api(api).create_self_subject_review(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    )
    assert review.status.user_info.username == SERVICE_ACCOUNT

    def allowed(verb: str, resource: str, subresource: str = "") -> bool:
        attributes = {"namespace": BOOKINFO, "verb": verb, "resource": resource, "subresource": subresource}
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attributes},
        }
        return bool(client.AuthorizationV1Api(api).create_self_subject_access_review(body).status.allowed)

    granted = [
        ("get", "pods", ""),
        ("list", "pods", ""),
        ("get", "pods", "log"),
        ("create", "pods", "exec"),
        ("get", "pods", "exec"),
        ("patch", "pods", "ephemeralcontainers"),
    ]
    refused = [
        ("delete", "pods", ""),
        ("create", "pods", ""),
        ("patch", "pods", ""),
        ("get", "secrets", ""),
        ("list", "deployments", ""),
    ]
    assert [g for g in granted if not allowed(*g)] == []
    assert [r for r in refused if allowed(*r)] == []


LAB_USER = "podnat-user"  # the lab's kubeconfig.cli: group podnat-users, bound as manifests/rbac/ says


def lab_user_has_exactly_manifests_rbac(cluster: Cluster) -> None:
    """On the lab: podnat as the user of kubeconfig.cli, whose rules the lab's API server reads from
    manifests/rbac (ClusterRoleBinding podnat) and manifests/agent/cli-rbac.yaml (pods list, pods/proxy
    get in podnat-system): verify and inspect pass; what those roles do not grant is a 403 in RBAC's words."""
    lab_kubeconfig = Path(os.environ["KUBECONFIG"].split(os.pathsep)[0])
    kubeconfig = str(lab_kubeconfig.with_name("kubeconfig.cli"))
    require(Path(kubeconfig).is_file(), f"the lab wrote no {kubeconfig}: restart it (`podnat lab up`)")

    run = run_podnat("verify", "--namespace", BOOKINFO, "-o", "json", record="rbac-verify", kubeconfig=kubeconfig)
    assert run.returncode == 0, run.describe()
    reports = pod_reports(run.json())
    assert {pod_name(r) for r in reports} == {p.metadata.name for p in cluster.running_pods(BOOKINFO)}
    for report in reports:
        assert statuses(report) == dict.fromkeys(FLOW_TYPES, "ok"), pod_name(report)
    pod = cluster.pod_per_workload(BOOKINFO)["reviews-v1"].metadata.name
    run = run_podnat(
        "inspect", pod, "--namespace", BOOKINFO, "-o", "json", record="rbac-inspect", kubeconfig=kubeconfig
    )
    assert run.returncode == 0, run.describe()
    assert listener_ports(run.json()) >= ENVOY_PORTS

    from kubernetes import client, config

    core = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
    assert core.read_namespaced_pod(pod, BOOKINFO).metadata.name == pod  # granted: the token works
    refused = {
        'cannot list resource "namespaces" in API group "" at the cluster scope': core.list_namespace,
        f'cannot get resource "pods/proxy" in API group "" in the namespace "{BOOKINFO}"': lambda: (
            core.connect_get_namespaced_pod_proxy_with_path(f"{pod}:15000", BOOKINFO, "stats")
        ),
        f'cannot patch resource "pods/ephemeralcontainers" in API group "" in the namespace "{BOOKINFO}"': lambda: (
            core.patch_namespaced_pod_ephemeralcontainers(pod, BOOKINFO, {"spec": {"ephemeralContainers": []}})
        ),
        f'cannot list resource "events" in API group "" in the namespace "{BOOKINFO}"': lambda: (
            core.list_namespaced_event(BOOKINFO)
        ),
    }
    for words, call in refused.items():
        with pytest.raises(client.ApiException) as err:
            call()
        assert err.value.status == 403, (words, err.value.status, err.value.body)
        message = json.loads(err.value.body)["message"]
        assert f'User "{LAB_USER}" {words}' in message, message


def html_page(record: str) -> Path:
    """Where a run's --html page goes: beside its recorded output (a CI artifact)."""
    (OUT / "podnat").mkdir(parents=True, exist_ok=True)
    return OUT / "podnat" / f"{record}.html"


def check_html_report(page: Path, reports: list[dict[str, Any]], namespace: str) -> None:
    """The --html page of a run holds a folded section per pod and a row and a panel per flow, by anchor."""
    text = page.read_text()
    for report in reports:
        anchor = "pod-" + re.sub(r"[^A-Za-z0-9_-]", "-", f"{namespace}-{pod_name(report)}")
        assert f'<details class="pod" id="{anchor}"' in text, f"{page}: no section for {pod_name(report)}"
        for flow in report["flows"]:
            flow_id = f"{flow['type']}-{flow['variant']}" if flow.get("variant") else str(flow["type"])
            assert f'id="{anchor}-flow-{flow_id}"' in text and f'id="{anchor}-view-{flow_id}"' in text, flow_id
            assert f'data-flow="{flow_id}"' in text


def test_verify_bookinfo_reports_six_ok_flows_for_every_pod(cluster: Cluster) -> None:
    page = html_page("verify-bookinfo")
    run = run_podnat("verify", "--namespace", BOOKINFO, "-o", "json", "--html", str(page), record="verify-bookinfo")
    assert run.returncode == 0, run.describe()
    reports = pod_reports(run.json())
    assert {pod_name(r) for r in reports} == {p.metadata.name for p in cluster.running_pods(BOOKINFO)}
    for report in reports:
        assert statuses(report) == dict.fromkeys(FLOW_TYPES, "ok"), pod_name(report)
    check_html_report(page, reports, BOOKINFO)


@pytest.mark.parametrize("workload", WORKLOADS)
def test_inspect_shows_envoy_listeners_and_where_each_fact_came_from(cluster: Cluster, workload: str) -> None:
    pods = cluster.pod_per_workload(BOOKINFO)
    assert workload in pods, f"no running pod for {workload}: {sorted(pods)}"
    pod = pods[workload].metadata.name

    run = run_podnat("inspect", pod, "--namespace", BOOKINFO, "-o", "json", record=f"inspect-{workload}")
    assert run.returncode == 0, run.describe()
    report = run.json()
    assert pod_name(report) == pod
    assert listener_ports(report) >= ENVOY_PORTS
    sources = source_kinds(report)
    assert sources.get("nat"), f"inspect does not say where the nat table came from: {sources}"
    assert sources.get("listeners"), f"inspect does not say where the listeners came from: {sources}"
    assert set(flows_by_type(report)) >= FLOW_TYPES

    page = html_page(f"inspect-{workload}")
    table = run_podnat("inspect", pod, "--namespace", BOOKINFO, "--html", str(page), record=f"inspect-{workload}-table")
    assert table.returncode == 0, table.describe()
    for port in sorted(ENVOY_PORTS):
        assert str(port) in table.stdout, f"the human report of {pod} does not show {port}"
    check_html_report(page, [report], BOOKINFO)


def counters_of(pod: str, namespace: str, record: str) -> tuple[dict[str, Any], dict[str, int]]:
    run = run_podnat("inspect", pod, "--namespace", namespace, "--debug-container", "-o", "json", record=record)
    assert run.returncode == 0, run.describe()
    report = run.json()
    return report, rule_counters(report)


def test_real_traffic_counts_the_rules_podnat_predicted(cluster: Cluster) -> None:
    with workspace(cluster, "traffic", {"productpage-v1", "reviews-v1"}) as namespace:
        pods = cluster.pod_per_workload(namespace)
        productpage, reviews = pods["productpage-v1"], pods["reviews-v1"]
        client, server = productpage.metadata.name, reviews.metadata.name
        _, client_before = counters_of(client, namespace, "traffic-productpage-before")
        _, server_before = counters_of(server, namespace, "traffic-reviews-before")

        # nat counts a connection's first packet only: repeat a burst until every predicted rule moved
        for attempt in range(3):
            code, out, err = cluster.exec(
                namespace,
                client,
                "productpage",
                ["python3", "-c", CALL_REVIEWS, f"http://{reviews.status.pod_ip}:9080"],
            )
            assert code == 0, f"calling reviews from {client} failed: {err}"
            answers = json.loads(out.strip().splitlines()[-1])
            assert any(isinstance(a, int) and a < 500 for a in answers), f"reviews never answered: {answers}"

            client_report, client_after = counters_of(client, namespace, f"traffic-productpage-{attempt}")
            server_report, server_after = counters_of(server, namespace, f"traffic-reviews-{attempt}")
            expected = {
                client: (predicted_rules(flows_by_type(client_report)[2]), client_before, client_after),
                server: (predicted_rules(flows_by_type(server_report)[1]), server_before, server_after),
            }
            silent = {
                pod: [rule for rule in rules if after.get(rule, 0) - before.get(rule, 0) < 1]
                for pod, (rules, before, after) in expected.items()
            }
            if not any(silent.values()):
                break

        for pod, (rules, _, _) in expected.items():
            assert rules, f"podnat predicted no rules for {pod}"
        assert not any(silent.values()), (
            f"predicted rules that did not count (type 2 in {client}, type 1 in {server}): {silent}"
        )


def test_declared_bypass_is_expected_not_drift(cluster: Cluster) -> None:
    if not cluster.has_apps:
        pytest.skip("a declared bypass needs a Deployment rollout (apps/v1); this API server (the lab) has none")
    with workspace(cluster, "bypass", {"details-v1"}) as namespace:
        before = cluster.pod_per_workload(namespace)["details-v1"].metadata.name
        run = run_podnat("inspect", before, "--namespace", namespace, "-o", "json", record="bypass-before")
        assert run.returncode == 0, run.describe()
        outbound = flows_by_type(run.json())[2]
        port = outbound["legs"][0]["dst"].rsplit(":", 1)[1]
        assert 15001 in outbound["envoy_ports"], "before the annotation, type 2 goes through Envoy"

        cluster.annotate_template(namespace, "details-v1", {EXCLUDE_OUTBOUND_PORTS: port})
        after = cluster.pod_per_workload(namespace)["details-v1"]
        assert after.metadata.name != before
        assert (after.metadata.annotations or {}).get(EXCLUDE_OUTBOUND_PORTS) == port

        run = run_podnat("verify", "--namespace", namespace, "--debug-container", "-o", "json", record="bypass-verify")
        assert run.returncode == 0, run.describe()
        report = report_for(run.json(), after.metadata.name)
        assert statuses(report) == dict.fromkeys(FLOW_TYPES, "ok")
        assert 15001 not in flows_by_type(report)[2]["envoy_ports"], f"port {port} should bypass Envoy now"


def test_deleted_prerouting_jump_is_drift_of_flow_type_1_in_that_pod(cluster: Cluster) -> None:
    with workspace(cluster, "drift", {"details-v1", "ratings-v1"}) as namespace:
        victim = cluster.pod_per_workload(namespace)["details-v1"]
        name = victim.metadata.name
        image = proxy_image(victim)
        cluster.add_ephemeral_container(namespace, victim, BREAKER, image, ["NET_ADMIN", "NET_RAW"])
        code, removed, err = cluster.exec(namespace, name, BREAKER, ["sh", "-c", BREAK_PREROUTING_JUMP])
        assert code == 0, f"could not delete the PREROUTING jump in {name}: {err}"
        try:
            run = run_podnat(
                "verify", "--namespace", namespace, "--debug-container", "-o", "json", record="drift-verify"
            )
            assert run.returncode == 1, run.describe()
            verify = run.json()
            report = report_for(verify, name)
            assert statuses(report)[1] in ("drift", "broken"), statuses(report)
            named = diff_text(report).lower()
            assert "prerouting" in named and ("istio_inbound" in named or "istio-inbound" in named), named
            assert "missing" in named, f"the diff does not call the rule missing: {named[:500]}"
            for other in pod_reports(verify):
                if pod_name(other) != name:
                    assert statuses(other) == dict.fromkeys(FLOW_TYPES, "ok"), pod_name(other)

            table = run_podnat("verify", "--namespace", namespace, "--debug-container", record="drift-table")
            assert table.returncode == 1, table.describe()
            assert name in table.stdout, "the summary names the drifted pod"
        finally:
            restore = restore_command(removed)
            if namespace == BOOKINFO and restore:
                cluster.exec(namespace, name, BREAKER, restore)
