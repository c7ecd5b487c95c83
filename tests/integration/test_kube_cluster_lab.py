"""podnat's cluster port (`KubeCluster`, podnat/kube/cluster.py) through the official Python client against the
lab's API server: REST calls read as raw JSON, the exec WebSocket (stdout, stderr, exit codes on the status
channel, handshake errors), logs, the ephemeral-containers PATCH and the wait for it to run, and each failure
as the one line the policy and the user see. The source policy itself is tests/unit/test_sources.py's.

Unprivileged: the lab pods here run as our own uid on the host (netns ""), as in test_apiserver.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import pod_manifest

from podnat.facts import Failure, PodRef, SourceError
from podnat.kube.client import KubeClient, KubeOptions
from podnat.kube.cluster import KubeCluster
from podnat.lab.apiserver import start_apiserver, stop_apiserver
from podnat.lab.state import LabApiServer, LabContainer, LabPod, LabState

pytestmark = pytest.mark.timeout(120)

NS = "bookinfo"
REVIEWS = "reviews-v1-7d9c6b-x1"
DETAILS = "details-v1-5f8b4c-x2"
INIT_LOG = "2025-01-01T00:00:00.000000Z\tinfo\tIstio iptables environment:\nline 2\n"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabApiServer]:
    root = tmp_path_factory.mktemp("lab")
    uid, gid = os.getuid(), os.getgid()
    (root / "istio-init.log").write_text(INIT_LOG)
    state = LabState(root=str(root))
    for name, labels in ((REVIEWS, {"app": "reviews"}), (DETAILS, {"app": "details"})):
        containers = {
            "app": LabContainer("app", uid, gid),
            "istio-proxy": LabContainer("istio-proxy", uid, gid),
            "istio-init": LabContainer("istio-init", uid, gid, log_file=str(root / "istio-init.log"), init=True),
        }
        state.pods.append(LabPod(NS, name, "10.89.0.2", "", pod_manifest(name, labels), containers))
    plain = pod_manifest("web-1", {"app": "web"})  # a pod outside the mesh, alone in its namespace
    plain["metadata"]["namespace"] = "plain"
    plain["spec"] = {"nodeName": "lab", "containers": [plain["spec"]["containers"][0]]}
    plain["status"]["containerStatuses"] = plain["status"]["containerStatuses"][:1]
    state.pods.append(LabPod("plain", "web-1", "10.89.0.3", "", plain, {"app": LabContainer("app", uid, gid)}))
    server = start_apiserver(root, state=state)
    try:
        yield server
    finally:
        stop_apiserver(server)


def cluster(lab: LabApiServer, token: str | None = None, timeout: float = 20.0) -> KubeCluster:
    client = KubeClient.connect(KubeOptions(kubeconfig=lab.kubeconfig, request_timeout=timeout))
    if token is not None:
        # load_kube_config re-applies the kubeconfig token on every request unless its hook is cleared.
        client.configuration.refresh_api_key_hook = None
        client.configuration.api_key = {"BearerToken": f"Bearer {token}"}
    return KubeCluster(client, debug_wait=10)


def expect(err: pytest.ExceptionInfo[SourceError], failure: Failure, text: str) -> None:
    assert err.value.failure is failure, err.value.message
    assert err.value.code == 3
    assert text in err.value.message, err.value.message
    assert "\n" not in err.value.message and "Traceback" not in err.value.message


# --- pods and namespaces, as raw JSON -------------------------------------------------------------------


def test_pods_are_read_as_json_dicts(lab: LabApiServer) -> None:
    kube = cluster(lab)
    pods = kube.list_pods(NS)
    assert [p["metadata"]["name"] for p in pods] == [DETAILS, REVIEWS]
    assert all(type(p) is dict for p in pods)  # no kubernetes.client.models object anywhere
    assert [p["metadata"]["name"] for p in kube.list_pods(None, "app=reviews")] == [REVIEWS]
    assert kube.list_pods(NS, node="elsewhere") == []
    assert len(kube.list_pods(NS, node="lab")) == 2
    pod = kube.get_pod(PodRef(NS, REVIEWS))
    assert type(pod) is dict and pod["status"]["podIP"] == "10.89.0.2"
    assert [c["name"] for c in pod["spec"]["containers"]] == ["app", "istio-proxy"]
    assert kube.get_pod(PodRef("default", f"{REVIEWS}.{NS}"))["metadata"]["name"] == REVIEWS
    # No apps/v1 here: deploy/NAME finds the pods a Deployment's ReplicaSet names NAME-HASH-XXXXX.
    assert kube.get_pod(PodRef(NS, "deploy/details-v1"))["metadata"]["name"] == DETAILS
    with pytest.raises(SourceError) as err:
        kube.get_pod(PodRef(NS, "deploy/ratings"))
    expect(err, Failure.NOT_FOUND, "deployment bookinfo/ratings has no pods")


def test_not_found_pod_and_namespace(lab: LabApiServer) -> None:
    kube = cluster(lab)
    with pytest.raises(SourceError) as err:
        kube.get_pod(PodRef(NS, "nope"))
    expect(err, Failure.NOT_FOUND, "pod nope not found in namespace bookinfo: check the name and -n/--namespace")
    assert kube.get_namespace(NS)["metadata"]["name"] == NS
    with pytest.raises(SourceError) as err:
        kube.get_namespace("nosuchns")
    expect(err, Failure.NOT_FOUND, "namespace nosuchns does not exist: check -n/--namespace")


def test_wrong_token_is_unauthorized(lab: LabApiServer) -> None:
    with pytest.raises(SourceError) as err:
        cluster(lab, token="wrong").list_pods(NS)
    expect(err, Failure.UNAUTHORIZED, "rejected the credentials (401 Unauthorized)")


# --- exec ---------------------------------------------------------------------------------------------


def test_exec_stdout_stderr_and_exit_codes(lab: LabApiServer) -> None:
    kube = cluster(lab)
    ref = PodRef(NS, REVIEWS)
    result = kube.exec(ref, "app", ["sh", "-c", "echo out; echo err >&2"])
    assert (result.stdout, result.stderr, result.returncode) == ("out\n", "err\n", 0)
    assert kube.exec(ref, "istio-proxy", ["sh", "-c", "echo x; exit 3"]).returncode == 3
    big = kube.exec(ref, "app", ["sh", "-c", "head -c 300000 /dev/zero | tr '\\0' a"])
    assert big.returncode == 0 and big.stdout == "a" * 300000


def test_exec_of_a_command_not_in_the_image_says_so_on_stderr(lab: LabApiServer) -> None:
    result = cluster(lab).exec(PodRef(NS, REVIEWS), "app", ["no-such-tool"])
    assert result.returncode is None  # a Failure status without an exit code: the runtime could not start it
    assert 'exec: "no-such-tool": executable file not found in $PATH' in result.stderr


def test_exec_handshake_errors(lab: LabApiServer) -> None:
    ref = PodRef(NS, REVIEWS)
    with pytest.raises(SourceError) as err:
        cluster(lab).exec(ref, "nope", ["true"])
    expect(err, Failure.PROXY_NOT_READY, f"pod {NS}/{REVIEWS} has no running container nope")
    with pytest.raises(SourceError) as err:
        cluster(lab, token=lab.readonly_token).exec(ref, "istio-proxy", ["true"])
    assert err.value.message == (
        "cannot create pods/exec in namespace bookinfo: grant it (manifests/rbac/) or use --source init-log"
    )
    assert err.value.failure is Failure.FORBIDDEN


def test_exec_that_does_not_finish_times_out(lab: LabApiServer) -> None:
    with pytest.raises(SourceError) as err:
        cluster(lab, timeout=1).exec(PodRef(NS, REVIEWS), "app", ["sleep", "10"])
    expect(err, Failure.TIMEOUT, "did not finish within 1s: rerun, or raise --request-timeout")


# --- logs and the debug container ---------------------------------------------------------------------


def test_read_log(lab: LabApiServer) -> None:
    assert cluster(lab, token=lab.readonly_token).read_log(PodRef(NS, REVIEWS), "istio-init") == INIT_LOG
    with pytest.raises(SourceError) as err:
        cluster(lab).read_log(PodRef(NS, "nope"), "istio-init")
    expect(err, Failure.NOT_FOUND, "pod nope not found in namespace bookinfo")


def test_debug_container_added_once_waited_for_then_reused(lab: LabApiServer) -> None:
    container = {
        "name": "podnat-debug",
        "image": "docker.io/istio/proxyv2:1.30.3",
        "command": ["sleep", "infinity"],
        "targetContainerName": "istio-proxy",
        "securityContext": {"runAsUser": os.getuid(), "capabilities": {"add": ["NET_ADMIN", "NET_RAW"]}},
    }
    ref = PodRef(NS, DETAILS)
    with pytest.raises(SourceError) as err:
        cluster(lab, token=lab.readonly_token).add_debug_container(cluster(lab).get_pod(ref), container)
    assert err.value.failure is Failure.FORBIDDEN
    assert err.value.message.startswith("cannot patch pods/ephemeralcontainers in namespace bookinfo: grant it")
    kube = cluster(lab)
    added = kube.add_debug_container(kube.get_pod(ref), container)
    assert (added.name, added.added) == ("podnat-debug", True)
    assert kube.exec(ref, "podnat-debug", ["sh", "-c", "echo $HOSTNAME"]).stdout == f"{DETAILS}\n"
    again = kube.add_debug_container(kube.get_pod(ref), container)
    assert (again.name, again.added) == ("podnat-debug", False)
    spec = kube.get_pod(ref)["spec"]
    assert [c["name"] for c in spec["ephemeralContainers"]].count("podnat-debug") == 1


# --- connections that fail before any API answer --------------------------------------------------------


def kubeconfig_for(path: Path, server: str) -> str:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [{"name": "c", "cluster": {"server": server, "insecure-skip-tls-verify": False}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )
    return str(path)


def test_connection_refused_and_tls_to_a_server_that_does_not_speak_it(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = f"https://127.0.0.1:{port}"
    client = KubeClient.connect(KubeOptions(kubeconfig=kubeconfig_for(tmp_path / "refused", server), request_timeout=3))
    with pytest.raises(SourceError) as err:
        KubeCluster(client).list_pods(NS)
    expect(err, Failure.UNREACHABLE, f"cannot reach the API server at {server} (connection refused)")

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    server = f"https://127.0.0.1:{listener.getsockname()[1]}"

    def answer_in_plain_http() -> None:
        while True:  # each attempt the client makes (it retries once)
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=answer_in_plain_http, daemon=True).start()
    client = KubeClient.connect(KubeOptions(kubeconfig=kubeconfig_for(tmp_path / "plain", server), request_timeout=3))
    try:
        with pytest.raises(SourceError) as err:
            KubeCluster(client).list_pods(NS)
    finally:
        listener.close()
    expect(err, Failure.UNREACHABLE, f"TLS to the API server at {server} failed")


# --- verify's namespace, through the CLI ----------------------------------------------------------------


def podnat(lab: LabApiServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"KUBECONFIG": lab.kubeconfig, "HOME": str(Path(lab.kubeconfig).parent), "PATH": os.environ["PATH"]}
    return subprocess.run(
        [sys.executable, "-m", "podnat", *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_verify_a_namespace_that_does_not_exist_exits_3(lab: LabApiServer) -> None:
    run = podnat(lab, "verify", "-n", "nosuchns")
    assert run.returncode == 3, run.stderr
    assert run.stderr.strip() == (
        "podnat: namespace nosuchns does not exist: check -n/--namespace (`kubectl get namespaces`)"
    )
    assert run.stdout == ""


def test_verify_an_existing_namespace_without_pods_warns_and_exits_0(lab: LabApiServer) -> None:
    run = podnat(lab, "verify", "-n", "kube-public", "-o", "json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["pods"] == []
    assert "podnat: warning: no pods to verify in kube-public" in run.stderr


def test_verify_of_a_namespace_without_a_pod_in_the_mesh_says_nothing_was_verified(lab: LabApiServer) -> None:
    run = podnat(lab, "verify", "-n", "plain", "-o", "json")
    assert run.returncode == 0, run.stderr
    assert [p["status"] for p in json.loads(run.stdout)["pods"]] == ["skipped"]
    assert "podnat: warning: nothing verified: none of the 1 pods in plain has sidecar or ambient rules" in run.stderr
