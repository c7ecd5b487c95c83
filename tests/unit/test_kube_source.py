"""KubePodSource against a small fake API server on 127.0.0.1 (aiohttp, plain HTTP), through the real
`kubernetes` client: REST calls, the exec WebSocket (v5/v4 channels, handshake errors), logs and the
ephemeral-containers PATCH. Containers are directories of stub executables: exec really runs the
command (podnat's capture script included) with PATH set to that directory.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import REFERENCE

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402

from podnat.facts import MeshMode, NatSource, PodRef  # noqa: E402
from podnat.kube.client import KubeClient, KubeOptions  # noqa: E402
from podnat.kube.errors import Action, Failure, KubeSourceError, parse_handshake, translate  # noqa: E402
from podnat.kube.source import ExecResult, KubePodSource, capture_script, split_sections  # noqa: E402

NS = "bookinfo"
POD = "reviews-v1-7f9c6b-x2k4p"
TOKEN = "podnat-test-token"
IMAGE = "docker.io/istio/proxyv2:1.24.2"
REPO = Path(__file__).resolve().parents[2]
LIVE = REFERENCE / "kernel-save" / "iptables" / "inbound-ports-wildcard.v4.iptables-save"
NFT_LIVE = REFERENCE / "kernel-save" / "nftables" / "inbound-ports-wildcard.nft-list-ruleset"
LISTENERS = (
    '{"listener_statuses":[{"name":"virtualOutbound","local_address":{"socket_address":'
    '{"address":"0.0.0.0","port_value":15001}}}]}'
)
NFT_DENIED = ("Could not fetch rule set generation id: Permission denied (you must be root)\n", 4)
LEGACY_DENIED = (
    "iptables-save v1.8.9 (legacy): Cannot initialize: Permission denied (you must be root)\n",
    1,
)


def status(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code,
    }


def rbac_denied(verb: str, resource: str, ns: str = NS) -> tuple[int, dict[str, Any]]:
    sub = resource.split("/")
    msg = (
        f'{sub[0]} "{POD}" is forbidden: User "system:serviceaccount:default:podnat" cannot {verb} '
        f'resource "{resource}" in API group "" in the namespace "{ns}"'
    )
    return 403, status(403, "Forbidden", msg, name=POD, kind=sub[0])


def make_pod(
    name: str = POD,
    ns: str = NS,
    *,
    proxy: bool = True,
    native: bool = False,
    init: str | None = "istio-init",
    phase: str = "Running",
    proxy_state: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    node: str = "node-1",
    owner: str | None = None,
) -> dict[str, Any]:
    containers: list[dict[str, Any]] = [{"name": "reviews", "image": "reviews:1"}]
    inits: list[dict[str, Any]] = []
    if init:
        inits.append({"name": init, "image": IMAGE, "args": ["istio-iptables", "-p", "15001"]})
    proxy_spec = {"name": "istio-proxy", "image": IMAGE}
    if proxy and native:
        inits.append({**proxy_spec, "restartPolicy": "Always"})
    elif proxy:
        containers.append(proxy_spec)
    state = proxy_state or {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
    statuses = [{"name": "reviews", "ready": True, "state": {"running": {}}}]
    init_statuses = []
    if proxy and native:
        init_statuses.append({"name": "istio-proxy", "ready": "running" in state, "state": state})
    elif proxy:
        statuses.append({"name": "istio-proxy", "ready": "running" in state, "state": state})
    meta: dict[str, Any] = {
        "name": name,
        "namespace": ns,
        "annotations": annotations or {},
        "labels": labels or {"app": "reviews"},
        "creationTimestamp": "2026-01-01T00:00:00Z",
    }
    if owner:
        meta["ownerReferences"] = [{"kind": "ReplicaSet", "name": owner, "apiVersion": "apps/v1"}]
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": meta,
        "spec": {"containers": containers, "initContainers": inits, "nodeName": node},
        "status": {
            "phase": phase,
            "containerStatuses": statuses,
            "initContainerStatuses": init_statuses,
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


@dataclass
class Hang:
    """An exec that never finishes (for the timeout case)."""

    seconds: float


@dataclass
class FakeApi:
    """The API server's state and the knobs a test turns."""

    root: Path
    pods: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    logs: dict[tuple[str, str, str], str] = field(default_factory=dict)
    containers: dict[tuple[str, str, str], Path] = field(default_factory=dict)
    deployments: dict[tuple[str, str], dict[str, Any]] | None = None  # None: apps/v1 is not served
    deny: list[tuple[str, str, int, dict[str, Any]]] = field(default_factory=list)  # method, path regex
    exec_override: Callable[[str, str, str, list[str]], Any] | None = None
    requests: list[tuple[str, str]] = field(default_factory=list)
    debug_pending_polls: int = 0  # how many pod GETs report the debug container as waiting
    port: int = 0

    def add_pod(self, pod: dict[str, Any]) -> dict[str, Any]:
        self.pods[(pod["metadata"]["namespace"], pod["metadata"]["name"])] = pod
        return pod

    def container(
        self, pod: str, name: str, tools: dict[str, tuple[str, str, int]], *, shell: bool = True, ns: str = NS
    ) -> Path:
        """A container: a directory of stubs; each tool prints (stdout, stderr) and exits rc."""
        d = self.root / f"{ns}.{pod}.{name}"
        d.mkdir(parents=True, exist_ok=True)
        if shell:
            (d / "sh").symlink_to(shutil.which("sh") or "/bin/sh")
        for tool, (out, err, rc) in tools.items():
            (d / f"{tool}.out").write_text(out)
            (d / f"{tool}.err").write_text(err)
            script = d / tool
            script.write_text(f"#!/bin/sh\n/bin/cat '{d}/{tool}.out'\n/bin/cat '{d}/{tool}.err' >&2\nexit {rc}\n")
            script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        self.containers[(ns, pod, name)] = d
        return d

    def count(self, method: str, pattern: str) -> int:
        return sum(1 for m, p in self.requests if m == method and re.search(pattern, p))


def _denied(api: FakeApi, request: web.Request) -> web.Response | None:
    for method, pattern, code, body in api.deny:
        if request.method == method and re.search(pattern, request.path):
            return web.json_response(body, status=code)
    return None


def build_app(api: FakeApi) -> web.Application:
    @web.middleware
    async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
        api.requests.append((request.method, request.path))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response(status(401, "Unauthorized", "Unauthorized"), status=401)
        denied = _denied(api, request)
        if denied is not None:
            return denied
        return await handler(request)

    def not_found(ns: str, name: str, kind: str = "pods") -> web.Response:
        return web.json_response(
            status(404, "NotFound", f'{kind} "{name}" not found', name=name, kind=kind), status=404
        )

    def matches(pod: dict[str, Any], selector: str | None, fields: str | None) -> bool:
        labels = pod["metadata"].get("labels") or {}
        for term in filter(None, (selector or "").split(",")):
            key, _, value = term.partition("=")
            if labels.get(key) != value:
                return False
        for term in filter(None, (fields or "").split(",")):
            key, _, value = term.partition("=")
            if key == "spec.nodeName" and pod["spec"].get("nodeName") != value:
                return False
        return True

    async def list_pods(request: web.Request) -> web.Response:
        ns = request.match_info.get("ns")
        q = request.query
        items = [
            p
            for (pns, _), p in api.pods.items()
            if (ns is None or pns == ns) and matches(p, q.get("labelSelector"), q.get("fieldSelector"))
        ]
        return web.json_response({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})

    async def get_pod(request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        pod = api.pods.get((ns, name))
        if pod is None:
            return not_found(ns, name)
        for s in pod["status"].get("ephemeralContainerStatuses") or []:
            if api.debug_pending_polls > 0:
                api.debug_pending_polls -= 1
                s["state"] = {"waiting": {"reason": "PodInitializing"}}
            else:
                s["state"] = {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
        return web.json_response(pod)

    async def get_log(request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        container = request.query.get("container")
        if (ns, name) not in api.pods:
            return not_found(ns, name)
        if container is None:
            return web.json_response(status(400, "BadRequest", "a container name must be specified"), status=400)
        text = api.logs.get((ns, name, container))
        if text is None:
            msg = f'container "{container}" in pod "{name}" is not valid'
            return web.json_response(status(400, "BadRequest", msg), status=400)
        return web.Response(text=text, content_type="text/plain")

    async def patch_ephemeral(request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        pod = api.pods.get((ns, name))
        if pod is None:
            return not_found(ns, name)
        assert request.content_type == "application/strategic-merge-patch+json", request.content_type
        body = await request.json()
        current = pod["spec"].setdefault("ephemeralContainers", [])
        for c in body["spec"]["ephemeralContainers"]:
            current[:] = [x for x in current if x["name"] != c["name"]] + [c]
            statuses = pod["status"].setdefault("ephemeralContainerStatuses", [])
            statuses.append({"name": c["name"], "state": {"waiting": {"reason": "ContainerCreating"}}})
        return web.json_response(pod)

    async def get_deployment(request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        if api.deployments is None:
            return web.Response(status=404, text="404 page not found\n")
        dep = api.deployments.get((ns, name))
        if dep is None:
            return not_found(ns, name, "deployments")
        return web.json_response(dep)

    async def exec_ws(request: web.Request) -> web.StreamResponse:
        ns, name = request.match_info["ns"], request.match_info["name"]
        container = request.query.get("container", "")
        argv = request.query.getall("command", [])
        if (ns, name) not in api.pods:
            return not_found(ns, name)
        outcome: Any = None
        if api.exec_override is not None:
            outcome = api.exec_override(ns, name, container, argv)
        if isinstance(outcome, tuple) and isinstance(outcome[0], int):  # (status, Status JSON): handshake
            return web.json_response(outcome[1], status=outcome[0])
        directory = api.containers.get((ns, name, container))
        if directory is None and not isinstance(outcome, Hang):
            msg = f"container {container} is not valid for pod {name}"
            return web.json_response(status(400, "BadRequest", msg), status=400)
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        protocol = next(p for p in offered if p in ("v5.channel.k8s.io", "v4.channel.k8s.io"))
        ws = web.WebSocketResponse(protocols=(protocol,))
        await ws.prepare(request)
        if isinstance(outcome, Hang):
            await asyncio.sleep(outcome.seconds)
            await ws.close()
            return ws
        assert directory is not None
        out, err, rc = await asyncio.to_thread(run_in_container, directory, argv)
        if out:
            await ws.send_bytes(b"\x01" + out)
        if err:
            await ws.send_bytes(b"\x02" + err)
        if rc == 0:
            final = {"metadata": {}, "status": "Success"}
        else:
            final = {
                "metadata": {},
                "status": "Failure",
                "reason": "NonZeroExitCode",
                "message": f"command terminated with non-zero exit code: exit status {rc}",
                "details": {"causes": [{"reason": "ExitCode", "message": str(rc)}]},
            }
        await ws.send_bytes(b"\x03" + json.dumps(final).encode())
        await ws.close()
        return ws

    app = web.Application(middlewares=[auth])
    app.router.add_get("/api/v1/pods", list_pods)
    app.router.add_get("/api/v1/namespaces/{ns}/pods", list_pods)
    app.router.add_get("/api/v1/namespaces/{ns}/pods/{name}", get_pod)
    app.router.add_get("/api/v1/namespaces/{ns}/pods/{name}/log", get_log)
    app.router.add_get("/api/v1/namespaces/{ns}/pods/{name}/exec", exec_ws)
    app.router.add_patch("/api/v1/namespaces/{ns}/pods/{name}/ephemeralcontainers", patch_ephemeral)
    app.router.add_get("/apis/apps/v1/namespaces/{ns}/deployments/{name}", get_deployment)
    return app


def run_in_container(directory: Path, argv: list[str]) -> tuple[bytes, bytes, int]:
    """Run argv "in" a container: PATH is the container's stub directory, nothing else."""
    if not argv or not (directory / argv[0]).exists():
        msg = (
            f'OCI runtime exec failed: exec failed: unable to start container process: exec: "{argv[0]}": '
            "executable file not found in $PATH: unknown\r\n"
        )
        return b"", msg.encode(), 126
    proc = subprocess.run(
        argv, env={"PATH": str(directory)}, capture_output=True, timeout=20, check=False, cwd=directory
    )
    return proc.stdout, proc.stderr, proc.returncode


class Server:
    """The fake API server in a background thread with its own event loop."""

    def __init__(self, api: FakeApi) -> None:
        self.api = api
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.runner: web.AppRunner | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.runner = web.AppRunner(build_app(self.api))
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.api.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.ready.set()
        self.loop.run_forever()

    def start(self) -> None:
        self.thread.start()
        assert self.ready.wait(10)

    def stop(self) -> None:
        async def shutdown() -> None:
            assert self.runner is not None
            await self.runner.cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def write_kubeconfig(path: Path, server: str, token: str = TOKEN) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "fake",
                "clusters": [{"name": "fake", "cluster": {"server": server}}],
                "users": [{"name": "fake", "user": {"token": token}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            }
        )
    )
    return path


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeApi]:
    api = FakeApi(root=tmp_path / "containers")
    server = Server(api)
    server.start()
    try:
        yield api
    finally:
        server.stop()


def source_for(
    fake: FakeApi, tmp_path: Path, *, token: str = TOKEN, timeout: float = 10.0, server: str | None = None
) -> KubePodSource:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server or f"http://127.0.0.1:{fake.port}", token)
    client = KubeClient.connect(KubeOptions(kubeconfig=str(kubeconfig), request_timeout=timeout))
    return KubePodSource(client, debug_wait=5.0, sleep=lambda _s: None)


def init_log() -> str:
    dump = LIVE.read_text()
    return (
        "2026-01-01T00:00:00.000000Z\tinfo\tRunning iptables restore with: iptables-nft-restore and the "
        "following input:\n* nat\n-A OUTPUT -j ISTIO_OUTPUT\nCOMMIT\n"
        f"2026-01-01T00:00:00.100000Z\tinfo\tFinal iptables state (IPv4):\n{dump}"
    )


def unprivileged_proxy(fake: FakeApi, denial: tuple[str, int] = NFT_DENIED) -> None:
    fake.container(
        POD,
        "istio-proxy",
        {
            "iptables-save": ("", denial[0], denial[1]),
            "ip6tables-save": ("", denial[0], denial[1]),
            "pilot-agent": (LISTENERS, "", 0),
        },
    )


def expect(err: pytest.ExceptionInfo[KubeSourceError], failure: Failure, text: str) -> None:
    assert err.value.failure is failure, err.value.message
    assert err.value.code == 3
    assert text in err.value.message, err.value.message
    assert "\n" not in err.value.message
    assert "Traceback" not in err.value.message


# --- reading a healthy pod ----------------------------------------------------------------------


def test_privileged_proxy_one_exec_reads_table_and_listeners(fake: FakeApi, tmp_path: Path) -> None:
    fake.add_pod(make_pod())
    live = LIVE.read_text()
    fake.container(
        POD,
        "istio-proxy",
        {"iptables-save": (live, "", 0), "ip6tables-save": ("", "", 0), "pilot-agent": (LISTENERS, "", 0)},
    )
    src = source_for(fake, tmp_path)
    pod = src.get_pod(PodRef(NS, POD))
    facts = src.read_facts(pod, None, False)
    assert facts.nat is not None and facts.nat.source is NatSource.EXEC
    assert facts.nat.v4 == live and facts.nat.counters
    assert facts.nat.label == "exec istio-proxy: iptables-save -c"
    assert facts.listeners is not None and json.loads(facts.listeners.json_text)["listener_statuses"]
    assert fake.count("GET", r"/exec$") == 1  # one exec for the table, v6, nft and listeners


def test_permission_denied_falls_back_to_init_log_nft_backend(fake: FakeApi, tmp_path: Path) -> None:
    fake.add_pod(make_pod())
    unprivileged_proxy(fake, NFT_DENIED)
    fake.logs[(NS, POD, "istio-init")] = init_log()
    src = source_for(fake, tmp_path)
    before = len(fake.requests)
    facts = src.read_facts(fake.pods[(NS, POD)], None, False)
    assert facts.nat is not None and facts.nat.source is NatSource.INIT_LOG
    assert facts.nat.label == "istio-init log: applied at pod start, not necessarily live"
    assert LIVE.read_text() in facts.nat.v4
    assert facts.listeners is not None  # read by the same exec that met the permission error
    assert any("cannot read the nat table without NET_ADMIN" in n for n in facts.notes)
    assert not any("Could not fetch" in n for n in facts.notes)  # never shown raw
    # one exec + one log read (and, once per run, the list that finds no podnat agent)
    assert [r for r in fake.requests[before:] if "/podnat-system/" not in r[1]] == [
        ("GET", f"/api/v1/namespaces/{NS}/pods/{POD}/exec"),
        ("GET", f"/api/v1/namespaces/{NS}/pods/{POD}/log"),
    ]


def test_permission_denied_legacy_backend_with_source_exec(fake: FakeApi, tmp_path: Path) -> None:
    fake.add_pod(make_pod())
    unprivileged_proxy(fake, LEGACY_DENIED)
    with pytest.raises(KubeSourceError) as err:
        source_for(fake, tmp_path).read_facts(fake.pods[(NS, POD)], NatSource.EXEC, False)
    expect(
        err,
        Failure.NAT_PERMISSION,
        "istio-proxy cannot read the nat table without NET_ADMIN (pod bookinfo/reviews-v1-7f9c6b-x2k4p): "
        "rerun with --debug-container, or read the rules applied at start with --source init-log",
    )


def test_debug_container_added_then_reused(fake: FakeApi, tmp_path: Path) -> None:
    fake.add_pod(make_pod())
    unprivileged_proxy(fake)
    live = LIVE.read_text()
    nft = NFT_LIVE.read_text()
    fake.container(
        POD,
        "podnat-debug",
        {
            "iptables-save": (live, "", 0),
            "ip6tables-save": ("", "", 0),
            "nft": (nft, "", 0),
            "pilot-agent": (LISTENERS, "", 0),
        },
    )
    fake.debug_pending_polls = 2
    src = source_for(fake, tmp_path)
    facts = src.read_facts(src.get_pod(PodRef(NS, POD)), None, True)
    assert facts.nat is not None and facts.nat.source is NatSource.DEBUG
    assert (facts.nat.debug_container, facts.nat.debug_container_added) == ("podnat-debug", True)
    assert facts.nat.v4 == live and facts.nat.nft == nft and facts.nat.listeners_json == LISTENERS
    assert any(n.startswith("added ephemeral container podnat-debug") for n in facts.notes)
    spec = fake.pods[(NS, POD)]["spec"]["ephemeralContainers"][0]
    assert spec["image"] == IMAGE and spec["targetContainerName"] == "istio-proxy"
    assert spec["securityContext"]["runAsUser"] == 0
    assert spec["securityContext"]["capabilities"]["add"] == ["NET_ADMIN", "NET_RAW"]

    again = src.read_facts(src.get_pod(PodRef(NS, POD)), None, True)
    assert again.nat is not None and again.nat.debug_container_added is False
    assert "reused ephemeral container podnat-debug" in again.notes
    assert fake.count("PATCH", "ephemeralcontainers") == 1


def test_debug_container_rejected_by_pod_security(fake: FakeApi, tmp_path: Path) -> None:
    fake.add_pod(make_pod())
    unprivileged_proxy(fake)
    msg = (
        f'pods "{POD}" is forbidden: violates PodSecurity "baseline:latest": non-default capabilities '
        '(container "podnat-debug" must not include "NET_ADMIN", "NET_RAW" in '
        "securityContext.capabilities.add)"
    )
    fake.deny.append(("PATCH", "ephemeralcontainers", 403, status(403, "Forbidden", msg)))
    with pytest.raises(KubeSourceError) as err:
        source_for(fake, tmp_path).read_facts(fake.pods[(NS, POD)], NatSource.DEBUG, True)
    expect(
        err,
        Failure.POD_SECURITY,
        "Pod Security admission (baseline:latest) rejected podnat's debug container",
    )
    assert "use --source init-log" in err.value.message


def test_debug_container_forbidden_by_rbac_in_auto_mode_falls_back(fake: FakeApi, tmp_path: Path) -> None:
    fake.add_pod(make_pod())
    unprivileged_proxy(fake)
    fake.logs[(NS, POD, "istio-init")] = init_log()
    code, body = rbac_denied("patch", "pods/ephemeralcontainers")
    fake.deny.append(("PATCH", "ephemeralcontainers", code, body))
    facts = source_for(fake, tmp_path).read_facts(fake.pods[(NS, POD)], None, True)
    assert facts.nat is not None and facts.nat.source is NatSource.INIT_LOG
    assert (
        "cannot patch pods/ephemeralcontainers in namespace bookinfo: grant it (manifests/rbac/) "
        "or drop --debug-container"
    ) in facts.notes


# --- errors a user meets --------------------------------------------------------------------------


def test_no_kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(KubeSourceError) as err:
        KubeClient.connect(KubeOptions(kubeconfig=str(tmp_path / "missing")))
    expect(err, Failure.NO_KUBECONFIG, f"no kubeconfig: --kubeconfig {tmp_path / 'missing'} does not exist")
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(KubeSourceError) as err:
        KubeClient.connect(KubeOptions())
    expect(err, Failure.NO_KUBECONFIG, "pass --kubeconfig FILE or set KUBECONFIG")


def test_unknown_context(fake: FakeApi, tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kc", f"http://127.0.0.1:{fake.port}")
    with pytest.raises(KubeSourceError) as err:
        KubeClient.connect(KubeOptions(kubeconfig=str(kubeconfig), context="prod"))
    expect(err, Failure.NO_KUBECONFIG, "kubeconfig has no context 'prod'")


def test_connection_refused(tmp_path: Path, fake: FakeApi) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = source_for(fake, tmp_path, server=f"http://127.0.0.1:{port}", timeout=3)
    with pytest.raises(KubeSourceError) as err:
        src.list_pods(NS)
    expect(
        err,
        Failure.UNREACHABLE,
        f"cannot reach the API server at http://127.0.0.1:{port} (connection refused)",
    )


def test_tls_to_a_plain_http_server(fake: FakeApi, tmp_path: Path) -> None:
    src = source_for(fake, tmp_path, server=f"https://127.0.0.1:{fake.port}", timeout=3)
    with pytest.raises(KubeSourceError) as err:
        src.list_pods(NS)
    expect(err, Failure.UNREACHABLE, f"TLS to the API server at https://127.0.0.1:{fake.port} failed")


def test_dns_failure_is_named() -> None:
    # Built by hand: resolving a name would leave this machine.
    import urllib3

    inner = urllib3.exceptions.NameResolutionError("api.example.invalid", None, OSError("Name or service not known"))
    exc = urllib3.exceptions.MaxRetryError(None, "/api/v1/pods", inner)
    err = translate(exc, Action("list", "pods"), "https://api.example.invalid:6443")
    assert err.failure is Failure.UNREACHABLE
    assert err.message.startswith("cannot resolve the API server host of https://api.example.invalid:6443")


def test_unauthorized(fake: FakeApi, tmp_path: Path) -> None:
    with pytest.raises(KubeSourceError) as err:
        source_for(fake, tmp_path, token="wrong").list_pods(NS)
    expect(err, Failure.UNAUTHORIZED, "rejected the credentials (401 Unauthorized)")


def test_forbidden_list_names_verb_and_resource(fake: FakeApi, tmp_path: Path) -> None:
    msg = 'pods is forbidden: User "u" cannot list resource "pods" in API group "" in the namespace "bookinfo"'
    fake.deny.append(("GET", r"/namespaces/bookinfo/pods$", 403, status(403, "Forbidden", msg)))
    with pytest.raises(KubeSourceError) as err:
        source_for(fake, tmp_path).list_pods(NS)
    expect(err, Failure.FORBIDDEN, "cannot list pods in namespace bookinfo: grant it (manifests/rbac/)")


def test_forbidden_exec_handshake(fake: FakeApi, tmp_path: Path) -> None:
    fake.add_pod(make_pod())
    fake.exec_override = lambda *_: rbac_denied("create", "pods/exec")
    with pytest.raises(KubeSourceError) as err:
        source_for(fake, tmp_path).read_facts(fake.pods[(NS, POD)], NatSource.EXEC, False)
    assert err.value.message == (
        "cannot create pods/exec in namespace bookinfo: grant it (manifests/rbac/) or use --source init-log"
    )
    assert err.value.code == 3


def test_forbidden_exec_auto_mode_uses_init_log(fake: FakeApi, tmp_path: Path) -> None:
    fake.add_pod(make_pod())
    fake.logs[(NS, POD, "istio-init")] = init_log()
    fake.exec_override = lambda *_: rbac_denied("create", "pods/exec")
    facts = source_for(fake, tmp_path).read_facts(fake.pods[(NS, POD)], None, False)
    assert facts.nat is not None and facts.nat.source is NatSource.INIT_LOG
    assert facts.listeners is None
    assert any(n.startswith("cannot create pods/exec in namespace bookinfo") for n in facts.notes)


def test_exec_denied_by_policy(fake: FakeApi, tmp_path: Path) -> None:
    fake.add_pod(make_pod())
    msg = 'admission webhook "validation.gatekeeper.sh" denied the request: [deny-exec] exec is not allowed'
    fake.exec_override = lambda *_: (403, status(403, "Forbidden", msg))
    with pytest.raises(KubeSourceError) as err:
        source_for(fake, tmp_path).read_facts(fake.pods[(NS, POD)], NatSource.EXEC, False)
    expect(err, Failure.EXEC_DENIED, "a policy denied create pods/exec on pod bookinfo/reviews-v1-7f9c6b-x2k4p")
    assert "use --source init-log" in err.value.message


def test_pod_not_found(fake: FakeApi, tmp_path: Path) -> None:
    with pytest.raises(KubeSourceError) as err:
        source_for(fake, tmp_path).get_pod(PodRef(NS, "nope"))
    expect(err, Failure.NOT_FOUND, "pod nope not found in namespace bookinfo: check the name and -n/--namespace")


def test_pod_not_running(fake: FakeApi, tmp_path: Path) -> None:
    pod = fake.add_pod(make_pod(phase="Pending"))
    with pytest.raises(KubeSourceError) as err:
        source_for(fake, tmp_path).read_facts(pod, None, False)
    expect(err, Failure.POD_NOT_RUNNING, "pod bookinfo/reviews-v1-7f9c6b-x2k4p is Pending, not Running")


def test_no_sidecar_and_ambient_are_facts_not_errors(fake: FakeApi, tmp_path: Path) -> None:
    src = source_for(fake, tmp_path)
    plain = src.read_facts(make_pod(proxy=False, init=None), None, False)
    assert (plain.mesh, plain.nat, plain.listeners) == (MeshMode.NO_SIDECAR, None, None)
    assert "has no istio-proxy sidecar" in plain.notes[0]
    assert fake.requests == []  # no API call for a pod outside the mesh
    ambient = src.read_facts(
        make_pod(proxy=False, init=None, annotations={"ambient.istio.io/redirection": "enabled"}), None, False
    )
    assert ambient.mesh is MeshMode.AMBIENT and ambient.nat is None
    # an ambient pod is read by its node's podnat agent when there is one: the only API call looks for it
    assert fake.count("GET", "/pods") == len(fake.requests) == 1


def test_interception_none(fake: FakeApi, tmp_path: Path) -> None:
    pod = fake.add_pod(make_pod(annotations={"sidecar.istio.io/interceptionMode": "NONE"}))
    fake.container(POD, "istio-proxy", {"pilot-agent": (LISTENERS, "", 0)})
    facts = source_for(fake, tmp_path).read_facts(pod, None, False)
    assert facts.mesh is MeshMode.NO_CAPTURE and facts.nat is None and facts.listeners is not None


def test_proxy_not_ready(fake: FakeApi, tmp_path: Path) -> None:
    waiting = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s"}}
    pod = fake.add_pod(make_pod(proxy_state=waiting))
    with pytest.raises(KubeSourceError) as err:
        source_for(fake, tmp_path).read_facts(pod, NatSource.EXEC, False)
    expect(
        err,
        Failure.PROXY_NOT_READY,
        f"istio-proxy in pod {NS}/{POD} is not ready: not running (waiting: CrashLoopBackOff)",
    )


def test_iptables_save_missing(fake: FakeApi, tmp_path: Path) -> None:
    pod = fake.add_pod(make_pod())
    fake.container(POD, "istio-proxy", {"pilot-agent": (LISTENERS, "", 0)})  # sh, but no iptables-save
    with pytest.raises(KubeSourceError) as err:
        source_for(fake, tmp_path).read_facts(pod, NatSource.EXEC, False)
    expect(err, Failure.TOOL_MISSING, "iptables-save is not in the image of istio-proxy")


def test_no_shell_runs_one_exec_per_command(fake: FakeApi, tmp_path: Path) -> None:
    pod = fake.add_pod(make_pod())
    live = LIVE.read_text()
    fake.container(
        POD,
        "istio-proxy",
        {"iptables-save": (live, "", 0), "ip6tables-save": ("", "", 0), "pilot-agent": (LISTENERS, "", 0)},
        shell=False,
    )
    facts = source_for(fake, tmp_path).read_facts(pod, NatSource.EXEC, False)
    assert facts.nat is not None and facts.nat.v4 == live and facts.listeners is not None
    # the failed `sh`; per family the -nft and -legacy binaries (missing here), then the unqualified one;
    # nft; pilot-agent
    assert fake.count("GET", r"/exec$") == 9


def test_empty_table_says_native_nftables(fake: FakeApi, tmp_path: Path) -> None:
    pod = fake.add_pod(make_pod())
    fake.container(
        POD,
        "istio-proxy",
        {"iptables-save": ("", "", 0), "ip6tables-save": ("", "", 0), "pilot-agent": (LISTENERS, "", 0)},
    )
    with pytest.raises(KubeSourceError) as err:
        source_for(fake, tmp_path).read_facts(pod, NatSource.EXEC, False)
    expect(
        err,
        Failure.EMPTY_TABLE,
        "is empty: native nftables mode (Istio 1.27+) keeps the rules in `nft list ruleset`",
    )


def test_empty_table_with_nft_reads_nft(fake: FakeApi, tmp_path: Path) -> None:
    pod = fake.add_pod(make_pod())
    nft = NFT_LIVE.read_text()
    fake.container(
        POD,
        "istio-proxy",
        {
            "iptables-save": ("", "", 0),
            "ip6tables-save": ("", "", 0),
            "nft": (nft, "", 0),
            "pilot-agent": (LISTENERS, "", 0),
        },
    )
    facts = source_for(fake, tmp_path).read_facts(pod, NatSource.EXEC, False)
    assert facts.nat is not None and facts.nat.v4 == "" and facts.nat.nft == nft
    assert "nft list ruleset" in facts.nat.label


def test_exec_timeout(fake: FakeApi, tmp_path: Path) -> None:
    pod = fake.add_pod(make_pod())
    fake.exec_override = lambda *_: Hang(5)
    with pytest.raises(KubeSourceError) as err:
        source_for(fake, tmp_path, timeout=1).read_facts(pod, NatSource.EXEC, False)
    expect(err, Failure.TIMEOUT, "did not finish within 1s: rerun, or raise --request-timeout")


def test_init_log_unrecognisable(fake: FakeApi, tmp_path: Path) -> None:
    pod = fake.add_pod(make_pod())
    fake.logs[(NS, POD, "istio-init")] = "starting\nsomething else\n"
    with pytest.raises(KubeSourceError) as err:
        source_for(fake, tmp_path).read_facts(pod, NatSource.INIT_LOG, False)
    expect(
        err,
        Failure.LOG,
        "the istio-init log of pod bookinfo/reviews-v1-7f9c6b-x2k4p has no rules podnat recognises (line 2: ",
    )


def test_forbidden_log(fake: FakeApi, tmp_path: Path) -> None:
    pod = fake.add_pod(make_pod())
    code, body = rbac_denied("get", "pods/log")
    fake.deny.append(("GET", r"/log$", code, body))
    with pytest.raises(KubeSourceError) as err:
        source_for(fake, tmp_path).read_facts(pod, NatSource.INIT_LOG, False)
    expect(err, Failure.FORBIDDEN, "cannot get pods/log in namespace bookinfo: grant it (manifests/rbac/)")


# --- finding pods ---------------------------------------------------------------------------------


def test_deploy_name_without_apps_v1_uses_pod_names(fake: FakeApi, tmp_path: Path) -> None:
    fake.add_pod(make_pod("reviews-v1-7f9c6b-x2k4p"))
    fake.add_pod(make_pod("reviews-7f9c6b-abcde"))
    src = source_for(fake, tmp_path)
    assert src.get_pod(PodRef(NS, "deploy/reviews"))["metadata"]["name"] == "reviews-7f9c6b-abcde"
    assert src.get_pod(PodRef(NS, "deploy/reviews-v1"))["metadata"]["name"] == "reviews-v1-7f9c6b-x2k4p"
    with pytest.raises(KubeSourceError) as err:
        src.get_pod(PodRef(NS, "deploy/ratings"))
    expect(err, Failure.NOT_FOUND, "deployment bookinfo/ratings has no pods")


def test_deploy_name_with_apps_v1_uses_selector(fake: FakeApi, tmp_path: Path) -> None:
    fake.add_pod(make_pod("reviews-v1-7f9c6b-x2k4p", labels={"app": "reviews", "version": "v1"}))
    fake.add_pod(make_pod("reviews-v2-1111-aaaaa", labels={"app": "reviews", "version": "v2"}))
    fake.deployments = {
        (NS, "reviews-v1"): {
            "kind": "Deployment",
            "metadata": {"name": "reviews-v1", "namespace": NS},
            "spec": {"selector": {"matchLabels": {"app": "reviews", "version": "v1"}}},
        }
    }
    src = source_for(fake, tmp_path)
    assert src.get_pod(PodRef(NS, "deployment/reviews-v1"))["metadata"]["name"] == "reviews-v1-7f9c6b-x2k4p"
    with pytest.raises(KubeSourceError) as err:
        src.get_pod(PodRef(NS, "deploy/nope"))
    expect(err, Failure.NOT_FOUND, "deployment nope not found in namespace bookinfo")


def test_pod_dot_namespace(fake: FakeApi, tmp_path: Path) -> None:
    fake.add_pod(make_pod())
    fake.add_pod(make_pod("web.v1", ns="default"))
    src = source_for(fake, tmp_path)
    assert src.get_pod(PodRef("default", f"{POD}.{NS}"))["metadata"]["namespace"] == NS
    assert src.get_pod(PodRef("default", "web.v1"))["metadata"]["name"] == "web.v1"


def test_list_pods_all_namespaces_with_selector(fake: FakeApi, tmp_path: Path) -> None:
    fake.add_pod(make_pod())
    fake.add_pod(make_pod("other-1-a", ns="default", labels={"app": "other"}))
    src = source_for(fake, tmp_path)
    assert [p["metadata"]["name"] for p in src.list_pods(None, "app=reviews")] == [POD]
    assert len(src.list_pods(None)) == 2


# --- istio-cni and native sidecars ----------------------------------------------------------------


def test_istio_cni_pod_reads_the_cni_node_log(fake: FakeApi, tmp_path: Path) -> None:
    pod = fake.add_pod(make_pod(init="istio-validation", native=True))
    unprivileged_proxy(fake)
    cni = make_pod("istio-cni-node-x7", ns="kube-system", proxy=False, init=None, labels={"k8s-app": "istio-cni-node"})
    cni["spec"]["containers"] = [{"name": "install-cni", "image": "install-cni:1.24"}]
    fake.add_pod(cni)
    fake.add_pod(
        make_pod(
            "istio-cni-node-y8",
            ns="kube-system",
            proxy=False,
            init=None,
            node="node-2",
            labels={"k8s-app": "istio-cni-node"},
        )
    )
    fake.logs[("kube-system", "istio-cni-node-x7", "install-cni")] = (
        "2026-01-01T00:00:00.000000Z\tinfo\tcni-plugin\t============= Start iptables configuration for "
        f"{POD} =============\n{init_log()}"
        f"2026-01-01T00:00:01.000000Z\tinfo\tcni-plugin\t============= End iptables configuration for {POD} "
        "=============\n"
    )
    facts = source_for(fake, tmp_path).read_facts(pod, None, False)
    assert facts.nat is not None and facts.nat.source is NatSource.INIT_LOG
    assert facts.nat.label == (
        "istio-cni-node log (kube-system/istio-cni-node-x7): applied at pod start, not necessarily live"
    )
    assert LIVE.read_text() in facts.nat.v4
    assert facts.listeners is not None  # native sidecar: istio-proxy found in initContainers


def test_istio_cni_without_node_pod(fake: FakeApi, tmp_path: Path) -> None:
    pod = fake.add_pod(make_pod(init="istio-validation"))
    with pytest.raises(KubeSourceError) as err:
        source_for(fake, tmp_path).read_facts(pod, NatSource.INIT_LOG, False)
    expect(
        err,
        Failure.LOG,
        "uses istio-cni: its rules are in the istio-cni-node log on node node-1, and no istio-cni-node pod",
    )


# --- pure pieces ----------------------------------------------------------------------------------


def test_handshake_reason_is_parsed() -> None:
    body = json.dumps(status(403, "Forbidden", "nope")).encode()
    reason = f"Handshake status 403 Forbidden -+-+- {{'content-type': 'application/json'}} -+-+- {body!r}"
    code, parsed = parse_handshake(reason)
    assert code == 403 and parsed is not None and parsed["message"] == "nope"


def test_capture_script_sections(tmp_path: Path) -> None:
    d = tmp_path / "c"
    d.mkdir()
    (d / "sh").symlink_to(shutil.which("sh") or "/bin/sh")
    script = capture_script("M1", 15000)
    out, err, rc = run_in_container(d, ["sh", "-c", script])
    sections = split_sections(ExecResult(out.decode(), err.decode(), rc), "M1")
    assert sections is not None and set(sections) == {
        "v4_nft",
        "v6_nft",
        "v4_legacy",
        "v6_legacy",
        "v4",
        "v6",
        "nft",
        "listeners",
    }
    assert sections["v4"].returncode == 127 and "iptables-save" in sections["v4"].stderr


# --- TPROXY: policy routing, read by the same exec --------------------------------------------------

ROUTING = REPO / "tests" / "data" / "routing"


def tproxy_pod(*extra: str) -> dict[str, Any]:
    pod = make_pod(annotations={"sidecar.istio.io/interceptionMode": "TPROXY"})
    pod["spec"]["initContainers"][0]["args"] = ["istio-iptables", "-p", "15001", "-m", "TPROXY", *extra]
    return pod


def ip_stub(directory: Path, answers: dict[str, tuple[str, str, int]]) -> None:
    """An `ip` that answers by its arguments ("rule show", "-6 route show table 133", ...)."""
    cases = []
    for index, (args, (out, err, rc)) in enumerate(answers.items()):
        (directory / f"ip.{index}.out").write_text(out)
        (directory / f"ip.{index}.err").write_text(err)
        cases.append(
            f"  '{args}') /bin/cat '{directory}/ip.{index}.out'; /bin/cat '{directory}/ip.{index}.err' >&2; exit {rc};;"
        )
    script = directory / "ip"
    script.write_text('#!/bin/sh\ncase "$*" in\n' + "\n".join(cases) + "\n  *) exit 99;;\nesac\n")
    script.chmod(0o755)


def recorded_ip(table: int = 133) -> dict[str, tuple[str, str, int]]:
    """The rule is there, table 133 is not (v4), both are there (v6): as iproute2 6.1 printed them."""
    return {
        "rule show": ((ROUTING / "rule-present.txt").read_text(), "", 0),
        f"route show table {table}": ("", (ROUTING / "route-missing.stderr").read_text(), 2),
        "-6 rule show": ((ROUTING / "rule6-present.txt").read_text(), "", 0),
        f"-6 route show table {table}": ((ROUTING / "route6-present.txt").read_text(), "", 0),
    }


def test_tproxy_pod_reads_policy_routing_in_the_same_exec(fake: FakeApi, tmp_path: Path) -> None:
    pod = fake.add_pod(tproxy_pod())
    d = fake.container(
        POD,
        "istio-proxy",
        {"iptables-save": (LIVE.read_text(), "", 0), "ip6tables-save": ("", "", 0), "pilot-agent": (LISTENERS, "", 0)},
    )
    ip_stub(d, recorded_ip())
    facts = source_for(fake, tmp_path).read_facts(pod, None, False)
    routing = facts.routing
    assert routing is not None
    assert routing.label == "exec istio-proxy: ip rule show; ip route show table 133 (and ip -6)"
    assert routing.table == 133 and routing.error is None and routing.complete
    assert routing.rules_v4 == (ROUTING / "rule-present.txt").read_text()
    assert routing.routes_v4 == ""  # "FIB table does not exist": an empty table, not an unreadable one
    assert routing.routes_v6 == (ROUTING / "route6-present.txt").read_text()
    assert fake.count("GET", r"/exec$") == 1


def test_tproxy_custom_table_and_unprivileged_proxy(fake: FakeApi, tmp_path: Path) -> None:
    # istio-proxy cannot read the nat table, but `ip rule` needs no privilege: routing comes from its exec.
    pod = fake.add_pod(tproxy_pod("-t", "4242", "-r", "200"))
    unprivileged_proxy(fake)
    ip_stub(fake.containers[(NS, POD, "istio-proxy")], recorded_ip(200))
    fake.logs[(NS, POD, "istio-init")] = init_log()
    facts = source_for(fake, tmp_path).read_facts(pod, None, False)
    assert facts.nat is not None and facts.nat.source is NatSource.INIT_LOG
    assert facts.routing is not None and facts.routing.table == 200
    assert facts.routing.label == "exec istio-proxy: ip rule show; ip route show table 200 (and ip -6)"
    assert facts.routing.rules_v4 and facts.routing.error is None


def test_tproxy_without_ip_is_unknown(fake: FakeApi, tmp_path: Path) -> None:
    pod = fake.add_pod(tproxy_pod())
    fake.container(
        POD,
        "istio-proxy",
        {"iptables-save": (LIVE.read_text(), "", 0), "ip6tables-save": ("", "", 0), "pilot-agent": (LISTENERS, "", 0)},
    )
    facts = source_for(fake, tmp_path).read_facts(pod, None, False)
    assert facts.routing is not None
    assert (facts.routing.rules_v4, facts.routing.routes_v4, facts.routing.rules_v6) == (None, None, None)
    assert facts.routing.error == "`ip` is not in the image of istio-proxy"
    assert facts.nat is not None  # the table itself is unaffected


def test_tproxy_debug_container_reads_routing(fake: FakeApi, tmp_path: Path) -> None:
    pod = fake.add_pod(tproxy_pod())
    unprivileged_proxy(fake)  # and no `ip` in istio-proxy
    d = fake.container(
        POD,
        "podnat-debug",
        {"iptables-save": (LIVE.read_text(), "", 0), "ip6tables-save": ("", "", 0), "pilot-agent": (LISTENERS, "", 0)},
    )
    ip_stub(d, recorded_ip())
    facts = source_for(fake, tmp_path).read_facts(pod, None, True)
    assert facts.nat is not None and facts.nat.source is NatSource.DEBUG
    assert facts.routing is not None and facts.routing.error is None
    assert facts.routing.label == "ephemeral container podnat-debug: ip rule show; ip route show table 133 (and ip -6)"


def test_tproxy_without_shell_one_exec_per_command(fake: FakeApi, tmp_path: Path) -> None:
    pod = fake.add_pod(tproxy_pod())
    d = fake.container(
        POD,
        "istio-proxy",
        {"iptables-save": (LIVE.read_text(), "", 0), "ip6tables-save": ("", "", 0), "pilot-agent": (LISTENERS, "", 0)},
        shell=False,
    )
    facts = source_for(fake, tmp_path).read_facts(pod, NatSource.EXEC, False)
    assert facts.routing is not None and facts.routing.error == "`ip` is not in the image of istio-proxy"
    assert fake.count("GET", r"/exec$") == 10  # sh, 3 per family (-nft, -legacy, unqualified), nft, pilot-agent, ip
    ip_stub(d, recorded_ip())
    again = source_for(fake, tmp_path).read_facts(pod, NatSource.EXEC, False)
    assert again.routing is not None and again.routing.complete and again.routing.routes_v4 == ""
    assert fake.count("GET", r"/exec$") == 10 + 13  # ... and the four `ip` commands


def test_redirect_pod_reads_no_routing(fake: FakeApi, tmp_path: Path) -> None:
    pod = fake.add_pod(make_pod())
    d = fake.container(
        POD,
        "istio-proxy",
        {"iptables-save": (LIVE.read_text(), "", 0), "ip6tables-save": ("", "", 0), "pilot-agent": (LISTENERS, "", 0)},
    )
    ip_stub(d, recorded_ip())
    assert source_for(fake, tmp_path).read_facts(pod, None, False).routing is None


def test_capture_script_routing_sections(tmp_path: Path) -> None:
    d = tmp_path / "c"
    d.mkdir()
    (d / "sh").symlink_to(shutil.which("sh") or "/bin/sh")
    out, err, rc = run_in_container(d, ["sh", "-c", capture_script("M2", 15000, 200)])
    sections = split_sections(ExecResult(out.decode(), err.decode(), rc), "M2")
    assert sections is not None
    assert set(sections) == {
        "v4_nft",
        "v6_nft",
        "v4_legacy",
        "v6_legacy",
        "v4",
        "v6",
        "nft",
        "listeners",
        "rule",
        "route",
        "rule6",
        "route6",
    }
    assert sections["rule"].returncode == 127 and "ip" in sections["rule"].stderr
    assert "ip -6 route show table 200" in capture_script("M2", 15000, 200)


# --- Istio's proxyv2 toolset: `iptables-save` is the legacy one, the rules are in nf_tables ------------

CAPTURED = REPO / "tests" / "data" / "capture"


def recorded_tool_outputs(scenario: str) -> dict[str, tuple[str, str, int]]:
    """Each binary's (stdout, stderr, rc) as the capture script recorded it in a real netns."""
    from podnat.capture import IPTABLES_SECTIONS

    result = ExecResult((CAPTURED / f"{scenario}.stdout").read_text(), (CAPTURED / f"{scenario}.stderr").read_text(), 0)
    out = split_sections(result, "podnat-recorded")
    assert out is not None
    tools = {
        IPTABLES_SECTIONS[name][2].split()[0]: (s.stdout, s.stderr, s.returncode)
        for name, s in out.items()
        if name in IPTABLES_SECTIONS
    }
    tools["nft"] = (out["nft"].stdout, out["nft"].stderr, out["nft"].returncode)
    old = (CAPTURED / f"{scenario}.unqualified-iptables-save").read_text()
    tools["iptables-save"] = (old, "", 0)  # the image's alternative: the legacy view
    tools["pilot-agent"] = (LISTENERS, "", 0)
    return tools


def test_proxy_image_toolset_reads_the_nft_backend(fake: FakeApi, tmp_path: Path) -> None:
    pod = fake.add_pod(make_pod())
    fake.container(POD, "istio-proxy", recorded_tool_outputs("nft-rules"))
    facts = source_for(fake, tmp_path).read_facts(pod, NatSource.EXEC, False)
    assert facts.nat is not None
    assert facts.nat.label == "exec istio-proxy: iptables-nft-save -c"
    assert "[3:180] -A OUTPUT -j ISTIO_OUTPUT" in facts.nat.v4 and facts.nat.counters
    assert fake.count("GET", r"/exec$") == 1


def test_proxy_image_toolset_both_backends_named_in_the_label(fake: FakeApi, tmp_path: Path) -> None:
    pod = fake.add_pod(make_pod())
    fake.container(POD, "istio-proxy", recorded_tool_outputs("both-backends"))
    facts = source_for(fake, tmp_path).read_facts(pod, NatSource.EXEC, False)
    assert facts.nat is not None
    assert facts.nat.label == (
        "exec istio-proxy: iptables-nft-save -c (iptables-legacy-save -c holds Istio's rules too: the kernel runs both)"
    )
    assert facts.nat.v4.startswith("# Warning: iptables-legacy tables present")


def test_proxy_image_toolset_unprivileged_falls_back(fake: FakeApi, tmp_path: Path) -> None:
    pod = fake.add_pod(make_pod())
    fake.container(POD, "istio-proxy", recorded_tool_outputs("unprivileged"))
    with pytest.raises(KubeSourceError) as err:
        source_for(fake, tmp_path).read_facts(pod, NatSource.EXEC, False)
    expect(err, Failure.NAT_PERMISSION, "istio-proxy cannot read the nat table without NET_ADMIN")


def test_no_shell_native_nftables_reads_nft(fake: FakeApi, tmp_path: Path) -> None:
    # A distroless proxy image (no sh) in native nftables mode: the iptables backends are empty, nft has it.
    pod = fake.add_pod(make_pod())
    nft = NFT_LIVE.read_text()
    fake.container(
        POD,
        "istio-proxy",
        {
            "iptables-nft-save": ("", "", 0),
            "ip6tables-nft-save": ("", "", 0),
            "iptables-legacy-save": ("", "", 0),
            "ip6tables-legacy-save": ("", "", 0),
            "nft": (nft, "", 0),
            "pilot-agent": (LISTENERS, "", 0),
        },
        shell=False,
    )
    facts = source_for(fake, tmp_path).read_facts(pod, NatSource.EXEC, False)
    assert facts.nat is not None and facts.nat.nft == nft
    assert facts.nat.label == "exec istio-proxy: nft list ruleset (native nftables)"


# --- ambient pods ------------------------------------------------------------------------------------------

AMBIENT_DATA = REPO / "tests" / "data" / "ambient"


def ambient_pod() -> dict[str, Any]:
    return make_pod(proxy=False, init=None, labels={"istio.io/dataplane-mode": "ambient"})


def test_ambient_pod_without_debug_image_says_how_to_read_it(fake: FakeApi, tmp_path: Path) -> None:
    facts = source_for(fake, tmp_path).read_facts(ambient_pod(), None, True)
    assert facts.mesh is MeshMode.AMBIENT and facts.nat is None
    assert any("could not be read live" in n and "--debug-image" in n and "podnat agent" in n for n in facts.notes)
    assert fake.count("PATCH", "ephemeralcontainers") == 0


def test_ambient_pod_read_by_a_debug_container_of_the_named_image(fake: FakeApi, tmp_path: Path) -> None:
    fake.add_pod(ambient_pod())
    transcript = (AMBIENT_DATA / "routing.txt").read_text().split("$ ip route show table 100\n")
    d = fake.container(
        POD,
        "podnat-debug",
        {
            "iptables-save": ((AMBIENT_DATA / "default.v4.iptables-save").read_text(), "", 0),
            "ip6tables-save": ("", "", 0),
            "nft": ("", "", 0),
            "cat": ((AMBIENT_DATA / "proc-net-tcp.txt").read_text(), "", 0),
        },
    )
    ip_stub(
        d,
        {
            "rule show": (transcript[0].removeprefix("$ ip rule show\n"), "", 0),
            "route show table 100": (transcript[1], "", 0),
            "-6 rule show": ("", "", 0),
            "-6 route show table 100": ("", "", 0),
        },
    )
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{fake.port}", TOKEN)
    client = KubeClient.connect(KubeOptions(kubeconfig=str(kubeconfig), request_timeout=10.0))
    src = KubePodSource(client, debug_wait=5.0, sleep=lambda _s: None, debug_image="istio/proxyv2:1.27.1")
    facts = src.read_facts(src.get_pod(PodRef(NS, POD)), None, True)
    assert facts.mesh is MeshMode.AMBIENT and facts.nat is not None and "ISTIO_PRERT" in facts.nat.v4
    assert facts.sockets is not None and facts.sockets.ports == (9080, 15001, 15006, 15008, 15053)
    assert (
        facts.routing is not None
        and facts.routing.table == 100
        and "fwmark 0x111/0xfff" in (facts.routing.rules_v4 or "")
    )
    spec = fake.pods[(NS, POD)]["spec"]["ephemeralContainers"][0]
    assert spec["image"] == "istio/proxyv2:1.27.1" and spec["targetContainerName"] == "reviews"
    assert fake.count("GET", r"/exec$") == 1


def _agent_pod(node: str = "node-1") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "podnat-agent-x1",
            "namespace": "podnat-system",
            "uid": "agent-uid",
            "labels": {"app.kubernetes.io/name": "podnat-agent"},
        },
        "spec": {
            "nodeName": node,
            "containers": [
                {"name": "agent", "image": "podnat-agent:1", "ports": [{"name": "http", "containerPort": 9477}]}
            ],
        },
        "status": {"phase": "Running", "podIP": "10.0.0.9"},
    }


def test_source_node_without_an_agent_says_how_to_install_one(fake: FakeApi, tmp_path: Path) -> None:
    fake.add_pod(make_pod())
    src = source_for(fake, tmp_path)
    with pytest.raises(KubeSourceError) as caught:
        src.read_facts(fake.pods[(NS, POD)], NatSource.NODE, False)
    assert caught.value.failure is Failure.NOT_FOUND
    assert "no podnat agent on node node-1" in caught.value.message
    assert "kubectl apply -k manifests/agent" in caught.value.message
    assert not [r for r in fake.requests if "/exec" in r[1]]  # --source node never falls back


def test_an_agent_podnat_may_not_ask_is_a_note_and_exec_reads_instead(fake: FakeApi, tmp_path: Path) -> None:
    fake.add_pod(make_pod())
    fake.add_pod(_agent_pod())
    fake.container(
        POD,
        "istio-proxy",
        {"iptables-save": (LIVE.read_text(), "", 0), "ip6tables-save": ("", "", 0), "pilot-agent": (LISTENERS, "", 0)},
    )
    msg = 'pods "podnat-agent-x1" is forbidden: User "u" cannot get resource "pods/proxy" in API group ""'
    fake.deny.append(("GET", r"/pods/podnat-agent-x1:9477/proxy/", 403, status(403, "Forbidden", msg)))
    src = source_for(fake, tmp_path)
    facts = src.read_facts(fake.pods[(NS, POD)], None, False)
    assert facts.nat is not None and facts.nat.source is NatSource.EXEC
    assert any(
        "the podnat agent podnat-agent-x1 on node node-1 could not be asked" in n and "pods/proxy" in n
        for n in facts.notes
    ), facts.notes
    with pytest.raises(KubeSourceError) as caught:
        src.read_facts(fake.pods[(NS, POD)], NatSource.NODE, False)
    assert caught.value.failure is Failure.FORBIDDEN
