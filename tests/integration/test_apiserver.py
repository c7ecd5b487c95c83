"""The lab's API server against the official Python client and kubectl.

A tiny state in a tmp dir: two pods whose containers run as our own uid on the host (netns ""), so
everything but the `root`-marked tests runs unprivileged. The root tests build a real network
namespace and check the identities: istio-proxy (uid 1337, no capabilities) cannot read the nat table,
an ephemeral container with NET_ADMIN can.
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from conftest import pod_manifest, require
from kubernetes import client, config
from kubernetes.stream import stream

from podnat.kube.errors import parse_handshake
from podnat.lab.apiserver import start_apiserver, stop_apiserver
from podnat.lab.state import LabApiServer, LabContainer, LabPod, LabState

NS = "bookinfo"
REVIEWS = "reviews-v1-7d9c6b-x1"
DETAILS = "details-v1-5f8b4c-x2"
INIT_LOG = "2025-01-01T00:00:00.000000Z\tinfo\tIstio iptables environment:\nline 2\nline 3\n"


def build_state(root: Path) -> LabState:
    uid, gid = os.getuid(), os.getgid()
    (root / "istio-init.log").write_text(INIT_LOG)
    (root / "app.log").write_text("GET /health 200\n")
    state = LabState(root=str(root))
    pods = ((REVIEWS, {"app": "reviews", "version": "v1"}), (DETAILS, {"app": "details", "version": "v1"}))
    for name, labels in pods:
        state.pods.append(
            LabPod(
                NS,
                name,
                "10.89.0.2",
                "",
                pod_manifest(name, labels),
                {
                    "app": LabContainer("app", uid, gid, log_file=str(root / "app.log")),
                    "istio-proxy": LabContainer("istio-proxy", uid, gid),
                    "istio-init": LabContainer(
                        "istio-init", uid, gid, log_file=str(root / "istio-init.log"), init=True
                    ),
                },
            )
        )
    return state


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabApiServer]:
    root = tmp_path_factory.mktemp("lab")
    state = build_state(root)
    server = start_apiserver(root, state=state)
    try:
        yield server
    finally:
        stop_apiserver(server)


@pytest.fixture
def core(lab: LabApiServer) -> client.CoreV1Api:
    return client.CoreV1Api(api_client(lab.kubeconfig))


def api_client(kubeconfig: str, token: str | None = None) -> client.ApiClient:
    configuration = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    if token is not None:
        configuration.refresh_api_key_hook = None  # else the kubeconfig token comes back on every request
        configuration.api_key = {"BearerToken": f"Bearer {token}"}
    return client.ApiClient(configuration)


def exec_in(
    lab: LabApiServer, pod: str, container: str, command: list[str], token: str | None = None, stdin: str | None = None
) -> tuple[str, str, int | None]:
    api = client.CoreV1Api(api_client(lab.kubeconfig, token))  # stream() swaps call_api: its own client
    ws = stream(
        api.connect_get_namespaced_pod_exec,
        pod,
        NS,
        container=container,
        command=command,
        stdin=stdin is not None,
        stdout=True,
        stderr=True,
        tty=False,
        _preload_content=False,
    )
    if stdin is not None:
        ws.write_stdin(stdin)
    ws.run_forever(timeout=20)
    return ws.read_stdout(), ws.read_stderr(), ws.returncode


def raw(
    lab: LabApiServer,
    method: str,
    path: str,
    *,
    token: str | None = "",
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTPS request with TLS verification on; token "" = the admin token, None = no header."""
    context = ssl.create_default_context(cafile=lab.ca_file)
    connection = http.client.HTTPSConnection("127.0.0.1", lab.port, context=context, timeout=10)
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token or lab.token}"
    data = json.dumps(body).encode() if body is not None else None
    try:
        connection.request(method, path, body=data, headers=sent)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def status_of(body: bytes) -> dict[str, Any]:
    parsed = json.loads(body)
    assert parsed["kind"] == "Status" and parsed["apiVersion"] == "v1" and parsed["status"] == "Failure"
    return dict(parsed)


# --- the official Python client ---------------------------------------------------------------------


def test_list_pods_with_label_selector(core: client.CoreV1Api) -> None:
    selected = core.list_namespaced_pod(NS, label_selector="app in (reviews,x),version!=v2").items
    names = [p.metadata.name for p in selected]
    assert names == [REVIEWS]
    every = core.list_pod_for_all_namespaces(field_selector=f"metadata.name={DETAILS}").items
    assert [(p.metadata.namespace, p.metadata.name) for p in every] == [(NS, DETAILS)]
    assert core.list_namespaced_pod("kube-system").items == []


def test_read_pod(core: client.CoreV1Api) -> None:
    pod = core.read_namespaced_pod(REVIEWS, NS)
    assert pod.kind == "Pod" and pod.api_version == "v1"
    assert [c.name for c in pod.spec.containers] == ["app", "istio-proxy"]
    assert pod.status.phase == "Running" and pod.status.pod_ip == "10.89.0.2"


def test_read_pod_log(core: client.CoreV1Api) -> None:
    assert core.read_namespaced_pod_log(REVIEWS, NS, container="istio-init") == INIT_LOG
    assert core.read_namespaced_pod_log(REVIEWS, NS, container="istio-init", tail_lines=1) == "line 3\n"
    with pytest.raises(client.ApiException) as err:
        core.read_namespaced_pod_log(REVIEWS, NS)
    assert err.value.status == 400
    assert json.loads(err.value.body)["message"] == (
        f"a container name must be specified for pod {REVIEWS}, choose one of: [app istio-proxy] "
        "or one of the init containers: [istio-init]"
    )


def test_exec_exit_zero_and_nonzero(lab: LabApiServer) -> None:
    assert exec_in(lab, REVIEWS, "app", ["sh", "-c", "echo out; echo err >&2"]) == ("out\n", "err\n", 0)
    assert exec_in(lab, REVIEWS, "istio-proxy", ["sh", "-c", "echo x; exit 3"]) == ("x\n", "", 3)


def test_exec_large_output_arrives_whole(lab: LabApiServer) -> None:
    out, _, rc = exec_in(lab, REVIEWS, "app", ["sh", "-c", "head -c 300000 /dev/zero | tr '\\0' a"])
    assert rc == 0 and out == "a" * 300000


def test_exec_stdin(lab: LabApiServer) -> None:
    api = client.CoreV1Api(api_client(lab.kubeconfig))
    ws = stream(
        api.connect_get_namespaced_pod_exec,
        REVIEWS,
        NS,
        container="app",
        command=["head", "-n", "1"],
        stdin=True,
        stdout=True,
        stderr=True,
        tty=False,
        _preload_content=False,
    )
    ws.write_stdin("piped\n")
    ws.run_forever(timeout=20)
    assert ws.read_stdout() == "piped\n" and ws.returncode == 0


def test_exec_command_not_in_the_image(lab: LabApiServer) -> None:
    api = client.CoreV1Api(api_client(lab.kubeconfig))
    ws = stream(
        api.connect_get_namespaced_pod_exec,
        REVIEWS,
        NS,
        container="app",
        command=["no-such-tool"],
        stdin=False,
        stdout=True,
        stderr=True,
        tty=False,
        _preload_content=False,
    )
    ws.run_forever(timeout=20)
    error = json.loads(ws.read_channel(3))
    assert error["reason"] == "InternalError"
    assert 'exec: "no-such-tool": executable file not found in $PATH' in error["message"]


def test_exec_errors_before_the_upgrade(lab: LabApiServer) -> None:
    api = client.CoreV1Api(api_client(lab.kubeconfig))
    cases = {
        "istio-init": 'container not found ("istio-init")',
        "nope": f"container nope is not valid for pod {REVIEWS}",
    }
    for container, message in cases.items():
        with pytest.raises(client.ApiException) as err:
            stream(
                api.connect_get_namespaced_pod_exec,
                REVIEWS,
                NS,
                container=container,
                command=["true"],
                stdin=False,
                stdout=True,
                stderr=True,
                tty=False,
                _preload_content=False,
            )
        code, status = parse_handshake(str(err.value.reason))
        assert code == 400 and status is not None
        assert (status["reason"], status["message"]) == ("BadRequest", message)


def test_ephemeral_container_strategic_merge_then_exec(lab: LabApiServer, core: client.CoreV1Api) -> None:
    body = {
        "spec": {
            "ephemeralContainers": [
                {
                    "name": "debug-a",
                    "image": "docker.io/istio/proxyv2:1.30.3",
                    "command": ["sleep", "infinity"],
                    "targetContainerName": "istio-proxy",
                    "securityContext": {"runAsUser": os.getuid(), "capabilities": {"add": ["NET_ADMIN", "NET_RAW"]}},
                }
            ]
        }
    }
    pod = core.patch_namespaced_pod_ephemeralcontainers(DETAILS, NS, body)
    assert [c.name for c in pod.spec.ephemeral_containers] == ["debug-a"]
    (status,) = pod.status.ephemeral_container_statuses
    assert status.name == "debug-a" and status.state.running is not None
    again = core.patch_namespaced_pod_ephemeralcontainers(DETAILS, NS, body)  # the same again: no change
    assert [c.name for c in again.spec.ephemeral_containers] == ["debug-a"]
    assert exec_in(lab, DETAILS, "debug-a", ["sh", "-c", "echo $HOSTNAME"]) == (f"{DETAILS}\n", "", 0)
    state = LabState.load(Path(lab.kubeconfig).parent)
    added = state.find(NS, DETAILS).containers["debug-a"]  # type: ignore[union-attr]
    assert (added.uid, added.capabilities, added.ephemeral) == (os.getuid(), ["NET_ADMIN", "NET_RAW"], True)


def test_ephemeral_container_json_patch_and_kubectl_style_directives(core: client.CoreV1Api) -> None:
    pod = core.patch_namespaced_pod_ephemeralcontainers(
        REVIEWS,
        NS,
        [
            {"op": "add", "path": "/spec/ephemeralContainers", "value": []},
            {"op": "add", "path": "/spec/ephemeralContainers/-", "value": {"name": "debug-j", "image": "busybox:1.36"}},
        ],
    )
    assert [c.name for c in pod.spec.ephemeral_containers] == ["debug-j"]
    pod = core.patch_namespaced_pod_ephemeralcontainers(
        REVIEWS,
        NS,
        {
            "spec": {
                "$setElementOrder/ephemeralContainers": [{"name": "debug-j"}, {"name": "debug-s"}],
                "ephemeralContainers": [{"name": "debug-s", "image": "busybox:1.36", "stdin": True, "tty": True}],
            }
        },
    )
    assert [c.name for c in pod.spec.ephemeral_containers] == ["debug-j", "debug-s"]
    assert [s.name for s in pod.status.ephemeral_container_statuses] == ["debug-j", "debug-s"]


# --- error shapes -----------------------------------------------------------------------------------


def test_401_for_a_wrong_or_missing_token(lab: LabApiServer) -> None:
    api = client.CoreV1Api(api_client(lab.kubeconfig, token="wrong"))
    with pytest.raises(client.exceptions.UnauthorizedException):
        api.list_namespaced_pod(NS)
    code, _, body = raw(lab, "GET", f"/api/v1/namespaces/{NS}/pods", token=None)
    assert code == 401 and status_of(body)["reason"] == "Unauthorized"
    assert raw(lab, "GET", "/version", token=None)[0] == 200  # public, as on a real server


def test_403_readonly_token_may_read_but_not_exec_or_debug(lab: LabApiServer) -> None:
    api = client.CoreV1Api(api_client(lab.kubeconfig, token=lab.readonly_token))
    assert [p.metadata.name for p in api.list_namespaced_pod(NS).items] == [DETAILS, REVIEWS]
    assert api.read_namespaced_pod_log(REVIEWS, NS, container="app") == "GET /health 200\n"
    with pytest.raises(client.ApiException) as err:
        exec_in(lab, REVIEWS, "istio-proxy", ["true"], token=lab.readonly_token)
    code, handshake = parse_handshake(str(err.value.reason))
    assert err.value.status == 0 and code == 403 and handshake is not None
    assert handshake["message"] == (
        f'pods "{REVIEWS}" is forbidden: User "podnat-readonly" cannot create '
        f'resource "pods/exec" in API group "" in the namespace "{NS}"'
    )
    with pytest.raises(client.exceptions.ForbiddenException) as forbidden:
        api.patch_namespaced_pod_ephemeralcontainers(REVIEWS, NS, {"spec": {"ephemeralContainers": []}})
    status = json.loads(forbidden.value.body)
    assert status["reason"] == "Forbidden" and status["code"] == 403
    assert status["details"] == {"name": REVIEWS, "kind": "pods"}
    assert 'cannot patch resource "pods/ephemeralcontainers"' in status["message"]


AGENT_USER = "system:serviceaccount:podnat-system:podnat-agent"


def agent_kubeconfig(lab: LabApiServer, directory: Path) -> str:
    """What the agent's pod would be given: the server, its CA, the token of its ServiceAccount."""
    from podnat.lab import apiobjects
    from podnat.lab.apiserver import write_kubeconfig

    path = directory / "kubeconfig.agent"
    server = f"https://127.0.0.1:{lab.port}"
    ca = Path(lab.ca_file).read_bytes()
    write_kubeconfig(path, apiobjects.kubeconfig(server, ca, lab.agent_token, AGENT_USER, "podnat-system"))
    return str(path)


def test_the_agents_token_may_do_what_manifests_agent_grants_it_and_nothing_else(
    lab: LabApiServer, tmp_path: Path
) -> None:
    """The agent's own calls (its list + watch, its Events: created, then a repeat patching the series)
    with its ServiceAccount's token succeed; exec, a debug container, pods/proxy, logs, reading Events
    are 403s worded as RBAC words them."""
    from podnat.agent.events import EventRecorder, KubeEvents, Notice
    from podnat.agent.node import NodeScanner
    from podnat.agent.service import Agent, AgentConfig, PodWatch
    from podnat.kube.client import KubeClient, KubeOptions

    kube = KubeClient.connect(KubeOptions(kubeconfig=agent_kubeconfig(lab, tmp_path), request_timeout=10))
    agent = Agent(AgentConfig(node="lab"), NodeScanner())
    watch = PodWatch(agent, kube)
    version = watch.relist()
    assert sorted(p["metadata"]["name"] for p in agent.snapshot()) == [DETAILS, REVIEWS]
    watch.watch(version, time.monotonic() + 1)  # raises on a refusal
    recorder = EventRecorder(KubeEvents(kube), "lab")
    recorder.stop()
    pod = next(p for p in agent.snapshot() if p["metadata"]["name"] == REVIEWS)
    recorder.record(Notice(pod, "CaptureDrift", "Warning", "podnat: traffic capture is drift"))
    recorder.record(Notice(pod, "CaptureDrift", "Warning", "podnat: traffic capture is drift"))
    assert (recorder.created, recorder.patched) == (1, 1)

    with pytest.raises(client.ApiException) as err:
        exec_in(lab, REVIEWS, "istio-proxy", ["true"], token=lab.agent_token)
    code, handshake = parse_handshake(str(err.value.reason))
    assert code == 403 and handshake is not None
    assert handshake["message"] == (
        f'pods "{REVIEWS}" is forbidden: User "{AGENT_USER}" cannot create resource "pods/exec" in API group "" '
        f'in the namespace "{NS}"'
    )
    api = client.CoreV1Api(api_client(lab.kubeconfig, token=lab.agent_token))
    with pytest.raises(client.exceptions.ForbiddenException) as forbidden:
        api.patch_namespaced_pod_ephemeralcontainers(REVIEWS, NS, {"spec": {"ephemeralContainers": []}})
    assert json.loads(forbidden.value.body)["message"] == (
        f'pods "{REVIEWS}" is forbidden: User "{AGENT_USER}" cannot patch resource "pods/ephemeralcontainers" '
        f'in API group "" in the namespace "{NS}"'
    )
    refused = {
        f"/api/v1/namespaces/{NS}/pods/{REVIEWS}:9477/proxy/v1/pods": 'cannot get resource "pods/proxy"',
        f"/api/v1/namespaces/{NS}/pods/{REVIEWS}/log?container=app": 'cannot get resource "pods/log"',
        "/api/v1/namespaces": 'cannot list resource "namespaces" in API group "" at the cluster scope',
        f"/apis/events.k8s.io/v1/namespaces/{NS}/events": 'cannot list resource "events" in API group "events.k8s.io"',
        f"/api/v1/namespaces/{NS}/events": 'cannot list resource "events" in API group ""',
    }
    for path, words in refused.items():
        code, _, body = raw(lab, "GET", path, token=lab.agent_token)
        assert code == 403 and words in status_of(body)["message"], (path, body)
    code, _, body = raw(lab, "DELETE", f"/api/v1/namespaces/{NS}/pods/{REVIEWS}", token=lab.agent_token)
    assert code in (403, 405), body


def test_the_cli_users_kubeconfig_may_do_what_manifests_rbac_grants_and_nothing_else(lab: LabApiServer) -> None:
    """kubeconfig.cli (podnat-user, group podnat-users): reading pods, their logs and exec as the ClusterRole
    podnat grants; pods/proxy only in podnat-system (cli-rbac.yaml); a debug container, listing
    namespaces, Events: 403s naming the user."""
    path = Path(lab.kubeconfig).with_name("kubeconfig.cli")
    api = client.CoreV1Api(api_client(str(path)))
    assert api.read_namespaced_pod(REVIEWS, NS).metadata.name == REVIEWS
    assert {p.metadata.name for p in api.list_pod_for_all_namespaces().items} >= {REVIEWS, DETAILS}
    assert api.read_namespace(NS).metadata.name == NS
    refused = {
        f"/api/v1/namespaces/{NS}/pods/{REVIEWS}:15000/proxy/stats": (
            f'cannot get resource "pods/proxy" in API group "" in the namespace "{NS}"'
        ),
        "/api/v1/namespaces": 'cannot list resource "namespaces" in API group "" at the cluster scope',
        f"/api/v1/namespaces/{NS}/events": 'cannot list resource "events" in API group ""',
    }
    for where, words in refused.items():
        code, _, body = raw(lab, "GET", where, token=lab.cli_token)
        assert code == 403 and f'User "podnat-user" {words}' in status_of(body)["message"], (where, body)
    with pytest.raises(client.exceptions.ForbiddenException) as forbidden:
        api.patch_namespaced_pod_ephemeralcontainers(REVIEWS, NS, {"spec": {"ephemeralContainers": []}})
    assert json.loads(forbidden.value.body)["message"] == (
        f'pods "{REVIEWS}" is forbidden: User "podnat-user" cannot patch resource "pods/ephemeralcontainers" '
        f'in API group "" in the namespace "{NS}"'
    )
    # the agent's namespace: its pods listed and read through pods/proxy (no agent here: past RBAC, a 404)
    assert raw(lab, "GET", "/api/v1/namespaces/podnat-system/pods", token=lab.cli_token)[0] == 200
    code, _, body = raw(
        lab, "GET", "/api/v1/namespaces/podnat-system/pods/podnat-agent-x:9477/proxy/v1/pods", token=lab.cli_token
    )
    assert code != 403, body


def test_the_agents_rights_are_read_from_the_manifest_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop the events rule from a copy of manifests/agent: the same token may no longer record Events."""
    import yaml

    from podnat.lab.apiserver import AGENT_MANIFESTS

    manifests = tmp_path / "agent"
    shutil.copytree(AGENT_MANIFESTS, manifests)
    role, binding = yaml.safe_load_all((manifests / "rbac.yaml").read_text())
    role["rules"] = [r for r in role["rules"] if r["resources"] != ["events"]]
    (manifests / "rbac.yaml").write_text(yaml.safe_dump_all([role, binding]))
    monkeypatch.setenv("PODNAT_AGENT_MANIFESTS", str(manifests))
    root = tmp_path / "lab"
    root.mkdir()
    server = start_apiserver(root, state=build_state(root))
    try:
        event = {"metadata": {"name": "x.1"}, "reason": "CaptureDrift", "eventTime": "2026-01-01T00:00:00.000000Z"}
        code, _, body = raw(
            server, "POST", f"/apis/events.k8s.io/v1/namespaces/{NS}/events", token=server.agent_token, body=event
        )
        assert (
            code == 403 and 'cannot create resource "events" in API group "events.k8s.io"' in status_of(body)["message"]
        )
        assert raw(server, "GET", "/api/v1/pods?fieldSelector=spec.nodeName%3Dlab", token=server.agent_token)[0] == 200
    finally:
        stop_apiserver(server)


def test_404_shapes(core: client.CoreV1Api, lab: LabApiServer) -> None:
    with pytest.raises(client.exceptions.NotFoundException) as err:
        core.read_namespaced_pod("nope", NS)
    assert json.loads(err.value.body) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'pods "nope" not found',
        "reason": "NotFound",
        "details": {"name": "nope", "kind": "pods"},
        "code": 404,
    }
    code, _, body = raw(lab, "GET", "/api/v1/namespaces/nowhere")
    assert code == 404 and status_of(body)["message"] == 'namespaces "nowhere" not found'
    code, _, body = raw(lab, "GET", "/apis/apps/v1/namespaces/x/deployments/y")
    assert code == 404 and status_of(body)["reason"] == "NotFound"


def test_409_on_a_stale_resource_version(lab: LabApiServer) -> None:
    code, _, body = raw(
        lab,
        "PATCH",
        f"/api/v1/namespaces/{NS}/pods/{REVIEWS}/ephemeralcontainers",
        body={"metadata": {"resourceVersion": "999999"}, "spec": {}},
        headers={"Content-Type": "application/strategic-merge-patch+json"},
    )
    status = status_of(body)
    assert code == 409 and status["reason"] == "Conflict" and status["details"] == {"name": REVIEWS, "kind": "pods"}


def test_422_merge_patch_may_not_remove_and_415_unknown_patch_type(lab: LabApiServer, core: client.CoreV1Api) -> None:
    pod = core.patch_namespaced_pod_ephemeralcontainers(
        REVIEWS, NS, {"spec": {"ephemeralContainers": [{"name": "debug-m", "image": "busybox:1.36"}]}}
    )
    serialize = core.api_client.sanitize_for_serialization
    kept = [serialize(c) for c in pod.spec.ephemeral_containers if c.name != "debug-m"]
    path = f"/api/v1/namespaces/{NS}/pods/{REVIEWS}/ephemeralcontainers"
    code, _, body = raw(
        lab,
        "PATCH",
        path,
        body={"spec": {"ephemeralContainers": kept}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    status = status_of(body)
    assert code == 422 and status["reason"] == "Invalid"
    assert status["message"] == (
        f'Pod "{REVIEWS}" is invalid: spec.ephemeralContainers: Forbidden: '
        'existing ephemeral containers "debug-m" may not be removed'
    )
    assert status["details"]["causes"] == [
        {
            "reason": "FieldValueForbidden",
            "field": "spec.ephemeralContainers",
            "message": 'Forbidden: existing ephemeral containers "debug-m" may not be removed',
        }
    ]
    code, _, body = raw(lab, "PATCH", path, body={}, headers={"Content-Type": "text/plain"})
    assert code == 415 and status_of(body)["reason"] == "UnsupportedMediaType"


def test_websocket_negotiation_and_spdy(lab: LabApiServer) -> None:
    path = f"/api/v1/namespaces/{NS}/pods/{REVIEWS}/exec?command=true&container=app&stdout=true"
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    code, _, body = raw(lab, "GET", path, headers={**upgrade, "Sec-WebSocket-Protocol": "channel.k8s.io"})
    assert code == 400 and "subprotocol" in status_of(body)["message"]
    code, headers, _ = raw(
        lab, "GET", path, headers={**upgrade, "Sec-WebSocket-Protocol": "v3.channel.k8s.io, v4.channel.k8s.io"}
    )
    assert code == 101 and headers["Sec-WebSocket-Protocol"] == "v4.channel.k8s.io"
    code, _, body = raw(lab, "POST", path, headers={"Connection": "Upgrade", "Upgrade": "SPDY/3.1"})
    assert code == 400 and "not SPDY" in status_of(body)["message"]


def test_server_side_table(lab: LabApiServer) -> None:
    accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
    code, _, body = raw(lab, "GET", f"/api/v1/namespaces/{NS}/pods?limit=1", headers={"Accept": accept})
    table = json.loads(body)
    assert code == 200 and table["kind"] == "Table"
    assert [c["name"] for c in table["columnDefinitions"]][:5] == ["Name", "Ready", "Status", "Restarts", "Age"]
    assert [r["cells"][:4] for r in table["rows"]] == [[DETAILS, "2/2", "Running", "0"]]
    assert table["metadata"]["remainingItemCount"] == 1 and table["metadata"]["continue"]


def test_watch_streams_events_until_the_timeout(lab: LabApiServer) -> None:
    pods = f"/api/v1/namespaces/{NS}/pods"
    code, _, body = raw(lab, "GET", f"{pods}?watch=true&timeoutSeconds=1&labelSelector=app%3Dreviews")
    events = [json.loads(line) for line in body.splitlines()]
    assert code == 200 and [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", REVIEWS)]
    _, _, listed = raw(lab, "GET", pods)
    version = json.loads(listed)["metadata"]["resourceVersion"]
    code, _, body = raw(lab, "GET", f"{pods}?watch=1&timeoutSeconds=1&resourceVersion={version}")
    assert code == 200 and body == b""  # nothing changed since the list


def test_client_disconnect_kills_the_process_group(lab: LabApiServer, tmp_path: Path) -> None:
    import websocket

    pidfile = tmp_path / "pid"
    command = ["sh", "-c", f"sleep 300 & echo $! > {pidfile}; wait"]
    query = urlencode([*(("command", c) for c in command), ("container", "app"), ("stdout", "true")])
    ws = websocket.create_connection(
        f"wss://127.0.0.1:{lab.port}/api/v1/namespaces/{NS}/pods/{REVIEWS}/exec?{query}",
        header=[f"Authorization: Bearer {lab.token}"],
        subprotocols=["v5.channel.k8s.io"],
        sslopt={"ca_certs": lab.ca_file},
        timeout=10,
    )
    deadline = time.monotonic() + 10
    while not (pidfile.is_file() and pidfile.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    sleeper = int(pidfile.read_text())
    ws.close()
    deadline = time.monotonic() + 10
    while _alive(sleeper) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(sleeper), "the exec's background child outlived the client"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text() if Path(f"/proc/{pid}/stat").exists() else ""
    return ") Z " not in stat


def test_latency_is_added_to_every_request(tmp_path: Path) -> None:
    server = start_apiserver(tmp_path, latency_ms=300, state=build_state(tmp_path))
    try:
        started = time.perf_counter()
        assert raw(server, "GET", "/version")[0] == 200
        assert time.perf_counter() - started >= 0.3
    finally:
        stop_apiserver(server)
    assert not Path(f"/proc/{server.pid}").exists() or "podnat" not in Path(f"/proc/{server.pid}/cmdline").read_text()


# --- kubectl ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kubectl(lab: LabApiServer, tmp_path_factory: pytest.TempPathFactory) -> Any:
    binary = shutil.which("kubectl")
    require(binary is not None, "needs kubectl")
    home = tmp_path_factory.mktemp("kubectl-home")

    def run(*args: str, kubeconfig: str | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = [str(binary), "--kubeconfig", kubeconfig or lab.kubeconfig, "--cache-dir", str(home / "cache"), *args]
        return subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "HOME": str(home)},
            check=False,
        )

    return run


def test_kubectl_get_pods(kubectl: Any) -> None:
    result = kubectl("get", "pods", "-n", NS)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert [line.split()[:4] for line in lines[1:]] == [
        [DETAILS, "2/2", "Running", "0"],
        [REVIEWS, "2/2", "Running", "0"],
    ]
    selected = kubectl("get", "pods", "-n", NS, "-l", "app=reviews", "-o", "name")
    assert selected.stdout.split() == [f"pod/{REVIEWS}"]
    missing = kubectl("get", "pod", "nope", "-n", NS)
    assert missing.returncode == 1 and 'Error from server (NotFound): pods "nope" not found' in missing.stderr


def test_kubectl_get_nodes_lists_the_one_ready_node(kubectl: Any) -> None:
    result = kubectl("get", "nodes", "-o", "name")
    assert (result.returncode, result.stdout.split()) == (0, ["node/podnat-lab"]), result.stderr
    ready = '{range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}{end}'
    assert kubectl("get", "nodes", "-o", f"jsonpath={ready}").stdout == "podnat-lab=True"


def test_kubectl_logs(kubectl: Any) -> None:
    result = kubectl("logs", REVIEWS, "-n", NS, "-c", "istio-init")
    assert result.returncode == 0 and result.stdout == INIT_LOG


def test_kubectl_exec_and_exit_code(kubectl: Any) -> None:
    result = kubectl("exec", REVIEWS, "-n", NS, "-c", "app", "--", "sh", "-c", "echo hi; echo oops >&2; exit 3")
    assert result.returncode == 3 and result.stdout == "hi\n"
    assert "oops" in result.stderr and "command terminated with exit code 3" in result.stderr
    assert kubectl("exec", REVIEWS, "-n", NS, "-c", "app", "--", "true").returncode == 0


def test_kubectl_exec_stdin(kubectl: Any) -> None:
    result = kubectl("exec", "-i", REVIEWS, "-n", NS, "-c", "app", "--", "cat", stdin="x\n")
    assert result.returncode == 0 and result.stdout == "x\n"


def test_kubectl_errors(kubectl: Any, lab: LabApiServer) -> None:
    readonly = str(Path(lab.kubeconfig).with_name("kubeconfig.readonly"))
    denied = kubectl("exec", REVIEWS, "-n", NS, "-c", "app", "--", "true", kubeconfig=readonly)
    assert denied.returncode == 1
    assert (
        f'pods "{REVIEWS}" is forbidden: User "podnat-readonly" cannot create resource "pods/exec" in API '
        f'group "" in the namespace "{NS}"'
    ) in denied.stderr
    assert kubectl("get", "pods", "-n", NS, kubeconfig=readonly).returncode == 0
    wrong = kubectl("--token", "wrong", "get", "pods", "-n", NS)
    assert wrong.returncode == 1 and "You must be logged in to the server (Unauthorized)" in wrong.stderr
    init = kubectl("exec", REVIEWS, "-n", NS, "-c", "istio-init", "--", "true")
    assert init.returncode == 1 and 'container not found ("istio-init")' in init.stderr


def test_kubectl_describe_pod_shows_an_events_k8s_io_event_through_core_v1(kubectl: Any, lab: LabApiServer) -> None:
    """One store, two views: an events.k8s.io/v1 Event (the agent's kind) regarding a pod is listed by
    core/v1 with kubectl describe's involvedObject.* field selector, and shown with its series."""
    events = f"/apis/events.k8s.io/v1/namespaces/{NS}/events"
    for pod, name, reason in ((REVIEWS, "r.describe", "CaptureDrift"), (DETAILS, "d.describe", "CaptureBroken")):
        event = {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"name": name},
            "regarding": {"apiVersion": "v1", "kind": "Pod", "name": pod, "namespace": NS, "uid": f"lab-{NS}-{pod}"},
            "reportingController": "podnat.dev/agent",
            "reportingInstance": "podnat.dev/agent-lab",
            "action": "Verify",
            "reason": reason,
            "type": "Warning",
            "note": f"podnat: traffic capture of {pod} is not as Istio meant",
            "eventTime": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
        assert raw(lab, "POST", events, body=event)[0] == 201
    selector = urlencode(
        {"fieldSelector": f"involvedObject.name={REVIEWS},involvedObject.namespace={NS}", "limit": 500}
    )
    code, _, body = raw(lab, "GET", f"/api/v1/namespaces/{NS}/events?{selector}")
    listed = json.loads(body)
    assert code == 200 and (listed["kind"], listed["apiVersion"]) == ("EventList", "v1")
    mine = {e["metadata"]["name"]: e for e in listed["items"]}
    assert {e["involvedObject"]["name"] for e in listed["items"]} == {REVIEWS} and "d.describe" not in mine
    assert mine["r.describe"]["message"] == f"podnat: traffic capture of {REVIEWS} is not as Istio meant"
    code, _, body = raw(lab, "GET", f"/api/v1/namespaces/{NS}/events?fieldSelector=regarding.name%3D{REVIEWS}")
    assert code == 400 and status_of(body)["message"] == "field label not supported: regarding.name"

    def described() -> list[list[str]]:
        result = kubectl("describe", "pod", REVIEWS, "-n", NS)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.split("\nEvents:\n", 1)[1].splitlines()
        assert lines[0].split() == ["Type", "Reason", "Age", "From", "Message"]
        return [line.split(None, 3) for line in lines[2:] if "is not as Istio meant" in line]

    (row,) = described()
    assert row[:2] == ["Warning", "CaptureDrift"]
    assert row[3].split(None, 1) == ["podnat.dev/agent", f"podnat: traffic capture of {REVIEWS} is not as Istio meant"]
    series = {"series": {"count": 2, "lastObservedTime": event["eventTime"]}}
    assert (
        raw(
            lab, "PATCH", f"{events}/r.describe", body=series, headers={"Content-Type": "application/merge-patch+json"}
        )[0]
        == 200
    )
    (row,) = described()
    assert "(x2 over" in " ".join(row), row


# --- root: real network namespaces and identities ---------------------------------------------------


@pytest.fixture
def netns_lab(tmp_path: Path) -> Iterator[tuple[LabApiServer, str]]:
    netns = f"podnat-t-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        state = LabState(root=str(tmp_path))
        manifest = pod_manifest("productpage-v1-1", {"app": "productpage"})
        state.pods.append(
            LabPod(
                NS,
                "productpage-v1-1",
                "10.89.0.9",
                netns,
                manifest,
                {
                    "app": LabContainer("app", 1000, 1000),
                    "istio-proxy": LabContainer("istio-proxy", 1337, 1337),
                },
            )
        )
        server = start_apiserver(tmp_path, state=state)
        try:
            yield server, netns
        finally:
            stop_apiserver(server)
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)


@pytest.mark.root
def test_proxy_cannot_read_the_nat_table_but_a_debug_container_can(netns_lab: tuple[LabApiServer, str]) -> None:
    lab, _ = netns_lab
    pod = "productpage-v1-1"
    out, err, rc = exec_in(lab, pod, "istio-proxy", ["sh", "-c", "id -u; id -g; iptables-save -t nat"])
    assert out.splitlines()[:2] == ["1337", "1337"]
    assert rc not in (0, None) and "Permission denied (you must be root)" in err
    core = client.CoreV1Api(api_client(lab.kubeconfig))
    core.patch_namespaced_pod_ephemeralcontainers(
        pod,
        NS,
        {
            "spec": {
                "ephemeralContainers": [
                    {
                        "name": "podnat-debug",
                        "image": "docker.io/istio/proxyv2:1.30.3",
                        "targetContainerName": "istio-proxy",
                        "securityContext": {"runAsUser": 0, "capabilities": {"add": ["NET_ADMIN", "NET_RAW"]}},
                    }
                ]
            }
        },
    )
    script = "grep CapEff /proc/self/status; iptables-save -t nat"
    out, err, rc = exec_in(lab, pod, "podnat-debug", ["sh", "-c", script])
    assert rc == 0, err
    assert out.splitlines()[0].split() == ["CapEff:", "0000000000003000"]  # NET_ADMIN | NET_RAW, nothing else


@pytest.mark.root
def test_exec_runs_in_the_pod_network_namespace(netns_lab: tuple[LabApiServer, str]) -> None:
    lab, netns = netns_lab
    out, _, rc = exec_in(lab, "productpage-v1-1", "app", ["sh", "-c", "id -u; readlink /proc/self/ns/net"])
    expected = Path(f"/run/netns/{netns}").stat().st_ino
    uid, link = out.split()
    assert rc == 0 and uid == "1000" and link == f"net:[{expected}]"


def test_stop_kills_running_execs(tmp_path: Path) -> None:
    server = start_apiserver(tmp_path, state=build_state(tmp_path))
    pidfile = tmp_path / "pid"
    api = client.CoreV1Api(api_client(server.kubeconfig))
    ws = stream(
        api.connect_get_namespaced_pod_exec,
        REVIEWS,
        NS,
        container="app",
        command=["sh", "-c", f"echo $$ > {pidfile}; exec sleep 300"],
        stdin=False,
        stdout=True,
        stderr=True,
        tty=False,
        _preload_content=False,
    )
    deadline = time.monotonic() + 10
    while not (pidfile.is_file() and pidfile.read_text().strip()) and time.monotonic() < deadline:
        ws.update(timeout=0.1)
    sleeper = int(pidfile.read_text())
    stop_apiserver(server)
    deadline = time.monotonic() + 10
    while _alive(sleeper) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = _alive(sleeper)
    if alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(sleeper, signal.SIGKILL)
    assert not alive, "the exec outlived the server"


# --- root: the source policy over KubeCluster against a pod built as the lab builds one ---------------------

DEFAULT_TABLE = Path(__file__).resolve().parent.parent / "data" / "default.v4.iptables-save"
LISTENERS = '{"listener_statuses": [{"name": "virtualOutbound"}, {"name": "virtualInbound"}]}'


@pytest.fixture
def sidecar_lab(tmp_path: Path) -> Iterator[LabApiServer]:
    """One pod: a netns with Istio's default nat table, istio-proxy as uid 1337 without capabilities
    (with a pilot-agent stand-in), and the istio-init log in Istio 1.25+ format."""
    netns = f"podnat-t-{uuid.uuid4().hex[:8]}"
    bin_dir = tmp_path / "bin"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        table = DEFAULT_TABLE.read_text()
        subprocess.run(["ip", "netns", "exec", netns, "iptables-restore"], input=table, text=True, check=True)
        # Outside pytest's 0700 tmp tree: uid 1337 runs the pilot-agent stand-in.
        bin_dir = Path(tempfile.mkdtemp(prefix="podnat-t-bin-"))
        bin_dir.chmod(0o755)
        agent = bin_dir / "pilot-agent"
        agent.write_text(f"#!/bin/sh\necho '{LISTENERS}'\n")
        agent.chmod(0o755)
        init_log = tmp_path / "istio-init.log"
        stamp = "2026-01-01T00:00:00.000000Z\tinfo\t"
        init_log.write_text(
            f"{stamp}Running iptables restore with: iptables-nft-restore and the following input:\n{table}"
            f"{stamp}Final iptables state (IPv4):\n# Generated by iptables-save v1.8.9\n{table}# Completed\n"
        )
        manifest = pod_manifest("ratings-v1-1", {"app": "ratings"})
        manifest["metadata"]["annotations"] = {
            "sidecar.istio.io/status": json.dumps({"initContainers": ["istio-init"], "containers": ["istio-proxy"]})
        }
        state = LabState(root=str(tmp_path))
        state.pods.append(
            LabPod(
                NS,
                "ratings-v1-1",
                "10.89.0.7",
                netns,
                manifest,
                {
                    "app": LabContainer("app", 1000, 1000),
                    "istio-proxy": LabContainer("istio-proxy", 1337, 1337, path=[str(bin_dir)]),
                    "istio-init": LabContainer(
                        "istio-init", 0, 0, ["NET_ADMIN", "NET_RAW"], log_file=str(init_log), init=True
                    ),
                },
            )
        )
        server = start_apiserver(tmp_path, state=state)
        try:
            yield server
        finally:
            stop_apiserver(server)
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
        shutil.rmtree(bin_dir, ignore_errors=True)


@pytest.mark.root
def test_kube_pod_source_reads_the_lab_as_a_cluster(sidecar_lab: LabApiServer) -> None:
    from podnat.facts import NatSource, PodRef
    from podnat.kube.client import KubeClient, KubeOptions
    from podnat.kube.cluster import KubeCluster
    from podnat.kube.errors import Failure, KubeSourceError
    from podnat.sources import LiveSource

    def source(token: str | None = None) -> LiveSource:
        kube = KubeClient.connect(KubeOptions(kubeconfig=sidecar_lab.kubeconfig, request_timeout=20))
        if token is not None:
            kube.configuration.refresh_api_key_hook = None
            kube.configuration.api_key = {"BearerToken": f"Bearer {token}"}
        return LiveSource(KubeCluster(kube, debug_wait=10))

    ref = PodRef(NS, "ratings-v1-1")
    src = source()
    facts = src.read_facts(src.get_pod(ref), None, False)
    assert facts.nat is not None and facts.nat.source is NatSource.INIT_LOG, facts.notes
    assert facts.live is False  # the rules applied at start, and the facts say so
    assert any("cannot read the nat table without NET_ADMIN" in n for n in facts.notes)
    assert facts.listeners is not None and "virtualOutbound" in facts.listeners.json_text, facts.notes
    live = src.read_facts(src.get_pod(ref), None, True)
    assert live.nat is not None and live.nat.source is NatSource.DEBUG, live.notes
    assert live.nat.counters and "ISTIO_OUTPUT" in live.nat.v4
    again = src.read_facts(src.get_pod(ref), None, True)
    assert again.nat is not None and again.nat.debug_container_added is False
    readonly = source(sidecar_lab.readonly_token)
    with pytest.raises(KubeSourceError) as err:
        readonly.read_facts(readonly.get_pod(ref), NatSource.EXEC, False)
    assert err.value.failure is Failure.FORBIDDEN
    assert err.value.message.startswith(f"cannot create pods/exec in namespace {NS}")
