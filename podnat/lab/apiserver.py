"""The lab's Kubernetes API server: serves `<root>/state.json` to the official client and kubectl.

HTTPS on 127.0.0.1 with a CA of its own, three bearer tokens (full access; read-only: get/list/log
but no pods/exec, no pods/ephemeralcontainers; and the node agent's ServiceAccount, with exactly the
rules manifests/agent's RBAC binds to it, read from those files), v1 Status errors (403 as RBAC words
them). Pods list/get/watch (label and field selectors, the server-side Table kubectl asks for),
pods/log, pods/exec over WebSocket (v5.channel.k8s.io and v4.channel.k8s.io; SPDY is answered with a
Status), PATCH pods/ephemeralcontainers (which also adds the container to the state file, so exec in
it runs with the identity it asked for), pods/proxy, and Events in one store served as events.k8s.io/v1
(create, get, patch, list) and as core/v1 (get, list: what `kubectl describe` reads); the one node
(`list nodes`: this machine, Ready).
docs/kubernetes-api.md records what the clients send.

    python -m podnat.lab.apiserver --root DIR [--port 0] [--latency-ms N]

binds first, writes <root>/kubeconfig (and kubeconfig.readonly) with the real port and the CA, then,
once it answers, <root>/apiserver.json (a LabApiServer): what `start_apiserver` waits for.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import datetime
import hmac
import http.client
import json
import logging
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from podnat.lab import apiobjects as api
from podnat.lab import ephemeral, execution
from podnat.lab.apiobjects import ApiError
from podnat.lab.certs import make_tls
from podnat.lab.inject import NODE_IP, NODE_NAME
from podnat.lab.state import LabApiServer, LabContainer, LabPod, LabState
from podnat.selectors import EVENT_FIELDS, selects

log = logging.getLogger("podnat.lab.apiserver")

INFO_FILE = "apiserver.json"
LOG_FILE = "apiserver.log"
READ_VERBS = frozenset({"get", "list", "watch"})
PUBLIC_PATHS = frozenset({"/version", "/healthz", "/readyz", "/livez"})
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
CHUNK = 32 * 1024
EVENTS_GROUP = "events.k8s.io"
ADMIN, READONLY = "podnat-lab-admin", "podnat-readonly"
# The agent's manifests (the lab authorises the agent's token with the RBAC they grant its ServiceAccount).
AGENT_MANIFESTS = Path(
    os.environ.get("PODNAT_AGENT_MANIFESTS", Path(__file__).resolve().parents[2] / "manifests" / "agent")
)
# podnat's own RBAC (the lab's CLI user is bound as the README says: manifests/rbac + manifests/agent/cli-rbac.yaml).
RBAC_MANIFESTS = Path(
    os.environ.get("PODNAT_RBAC_MANIFESTS", Path(__file__).resolve().parents[2] / "manifests" / "rbac")
)
CLI_USER, CLI_GROUP = "podnat-user", "podnat-users"
CLI_BINDINGS = frozenset({("ClusterRoleBinding", "podnat"), ("RoleBinding", "podnat-agent-reader")})
_NAMESPACED = frozenset({"Role", "RoleBinding", "ServiceAccount", "DaemonSet", "Service", "Deployment"})
_STATUS_LISTS = (
    ("containerStatuses", "containers"),
    ("initContainerStatuses", "initContainers"),
    ("ephemeralContainerStatuses", "ephemeralContainers"),
)
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255


@dataclass(frozen=True, slots=True)
class User:
    """Who a bearer token is, and what RBAC lets it do (None: anything, the lab's admin)."""

    name: str
    rules: tuple[api.PolicyRule, ...] | None


READ_ANYTHING = (api.PolicyRule(frozenset({"*"}), frozenset({"*"}), READ_VERBS),)


def agent_identity(directory: Path = AGENT_MANIFESTS) -> User:
    """The agent's ServiceAccount (the DaemonSet's serviceAccountName) and the rules the manifests'
    bindings grant it: the files `kubectl apply -k manifests/agent` applies, namespaced as kustomize does."""
    documents = kustomized(directory)
    daemonset = next(d for d in documents if d.get("kind") == "DaemonSet")
    account = daemonset["spec"]["template"]["spec"].get("serviceAccountName") or "default"
    where = str(daemonset["metadata"]["namespace"])
    return User(f"system:serviceaccount:{where}:{account}", api.service_account_rules(documents, where, account))


def cli_identity(rbac: Path = RBAC_MANIFESTS, agent: Path = AGENT_MANIFESTS) -> User:
    """podnat's user, a member of the group manifests/rbac and manifests/agent/cli-rbac.yaml bind: the
    rules of the bindings the README tells users to apply for inspect and verify (the ClusterRole podnat
    cluster-wide, the agent's Role podnat-agent-reader in its namespace), read from those files; not
    podnat-debug-container (bound only where --debug-container is needed)."""
    import yaml

    documents = [
        d for f in sorted(rbac.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if isinstance(d, dict)
    ]
    documents += kustomized(agent)
    return User(CLI_USER, api.group_rules(documents, CLI_GROUP, CLI_BINDINGS))


def kustomized(directory: Path) -> list[dict[str, Any]]:
    """The documents `kubectl apply -k directory` applies (its plain files), namespaced as kustomize does."""
    import yaml

    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text()) or {}
    namespace = kustomization.get("namespace")
    documents: list[dict[str, Any]] = []
    for resource in kustomization.get("resources") or []:
        path = directory / str(resource)
        if not path.is_file():
            continue  # a base directory: not the agent's RBAC
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict):
                continue
            if namespace and doc.get("kind") in _NAMESPACED:
                doc.setdefault("metadata", {})["namespace"] = namespace
            documents.append(doc)
    return documents


# --- the state file, re-read when it changes -------------------------------------------------------


class StateStore:
    """`<root>/state.json`, re-read when its mtime changes; an absent file is a lab with no pods."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "state.json"
        self._stamp: tuple[int, int] | None = None
        self._state = LabState(root=str(root))

    def current(self) -> LabState:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return self._state
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                self._state = LabState.load(self.root)
                self._stamp = stamp
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("keeping the previous state: %s unreadable (%s)", self.path, exc)
        return self._state

    @property
    def version(self) -> tuple[int, int] | None:
        """The state file's (mtime, size) as last read or written: another one, another state."""
        return self._stamp

    def save(self, state: LabState) -> None:
        state.save()
        st = self.path.stat()
        self._stamp = (st.st_mtime_ns, st.st_size)
        self._state = state


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def served_pod(pod: LabPod) -> dict[str, Any]:
    """The Pod the API serves: the manifest, with what a real server always fills in."""
    manifest = copy.deepcopy(pod.manifest)
    meta = manifest.setdefault("metadata", {})
    meta["name"], meta["namespace"] = pod.name, pod.namespace
    meta.setdefault("uid", f"lab-{pod.namespace}-{pod.name}")
    meta.setdefault("resourceVersion", "1")
    meta.setdefault("creationTimestamp", "2025-01-01T00:00:00Z")
    status = manifest.setdefault("status", {})
    status.setdefault("phase", "Running")
    if pod.ip:
        status.setdefault("podIP", pod.ip)
        status.setdefault("podIPs", [{"ip": ip} for ip in (pod.ip, pod.ip6) if ip])
    spec = manifest.get("spec") or {}
    for statuses, containers in _STATUS_LISTS:
        images = {c.get("name"): c.get("image") for c in spec.get(containers) or []}
        for entry in status.get(statuses) or []:
            # Fields every real status has, and that client 37's models require.
            entry.setdefault("image", images.get(entry.get("name")) or "")
            entry.setdefault("imageID", "")
            entry.setdefault("ready", False)
            entry.setdefault("restartCount", 0)
    return {"kind": "Pod", "apiVersion": "v1", **_without_type(manifest)}


def _names(spec: Mapping[str, Any], key: str) -> list[str]:
    return [str(c.get("name")) for c in spec.get(key) or []]


def pick_container(manifest: Mapping[str, Any], requested: str | None, pod_name: str) -> str:
    """The API server's choice of container: the one asked for, or the only one; else a 400."""
    spec = manifest.get("spec") or {}
    containers, inits, ephemerals = (
        _names(spec, "containers"),
        _names(spec, "initContainers"),
        _names(spec, "ephemeralContainers"),
    )
    if not requested:
        if len(containers) == 1:
            return containers[0]
        message = f"a container name must be specified for pod {pod_name}, choose one of: [{' '.join(containers)}]"
        if inits:
            message += f" or one of the init containers: [{' '.join(inits)}]"
        if ephemerals:
            message += f" or one of the ephemeral containers: [{' '.join(ephemerals)}]"
        raise api.bad_request(message)
    if requested not in (*containers, *inits, *ephemerals):
        raise api.bad_request(f"container {requested} is not valid for pod {pod_name}")
    return requested


def running_container(pod: LabPod, name: str) -> LabContainer:
    """The lab container an exec runs in; an init container (done) or one without a process is a 400."""
    container = pod.containers.get(name)
    if container is None or container.init:
        raise api.bad_request(f'container not found ("{name}")')
    return container


# --- the application --------------------------------------------------------------------------------


class LabApi:
    """The routes, the tokens, the state and the running exec commands of one server."""

    def __init__(
        self,
        root: Path,
        token: str,
        readonly_token: str,
        latency_ms: int = 0,
        agent_token: str | None = None,
        cli_token: str | None = None,
    ) -> None:
        self.store = StateStore(root)
        self._served: tuple[object, list[dict[str, Any]]] = (None, [])  # served_pods' (state version, pods)
        self.tokens = {token: User(ADMIN, None), readonly_token: User(READONLY, READ_ANYTHING)}
        if agent_token:
            self.tokens[agent_token] = agent_identity()
        if cli_token:
            self.tokens[cli_token] = cli_identity()
        self.latency = latency_ms / 1000.0
        self.address = "127.0.0.1:0"
        self.live: set[int] = set()  # process groups of running exec commands
        self.events: dict[tuple[str, str], dict[str, Any]] = {}  # events.k8s.io/v1 Events, by (namespace, name)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.middleware])
        pod = "/api/v1/namespaces/{namespace}/pods/{name}"
        app.router.add_get("/version", self.version)
        for probe in ("/healthz", "/readyz", "/livez"):
            app.router.add_get(probe, self.healthy)
        app.router.add_get("/api", self.api_versions)
        app.router.add_get("/apis", self.api_groups)
        app.router.add_get("/api/v1", self.core_resources)
        app.router.add_get("/api/v1/namespaces", self.list_namespaces)
        app.router.add_get("/api/v1/nodes", self.list_nodes)
        app.router.add_get("/api/v1/namespaces/{namespace}", self.get_namespace)
        app.router.add_get("/api/v1/pods", self.list_pods)
        app.router.add_get("/api/v1/namespaces/{namespace}/pods", self.list_pods)
        app.router.add_get(pod, self.get_pod)
        app.router.add_get(f"{pod}/log", self.pod_log)
        app.router.add_get(f"{pod}/exec", self.pod_exec)
        app.router.add_post(f"{pod}/exec", self.pod_exec)
        app.router.add_get(f"{pod}/ephemeralcontainers", self.get_pod)
        app.router.add_patch(f"{pod}/ephemeralcontainers", self.patch_ephemeral)
        app.router.add_get(f"{pod}/proxy", self.pod_proxy)
        app.router.add_get(f"{pod}/proxy/{{path:.*}}", self.pod_proxy)
        app.router.add_get("/apis/events.k8s.io", self.events_api_group)
        app.router.add_get("/apis/events.k8s.io/v1", self.events_api_resources)
        events = "/apis/events.k8s.io/v1/namespaces/{namespace}/events"
        app.router.add_post(events, self.create_event)
        app.router.add_get(events, self.list_events)
        app.router.add_get("/apis/events.k8s.io/v1/events", self.list_events)
        app.router.add_get(f"{events}/{{name}}", self.get_event)
        app.router.add_patch(f"{events}/{{name}}", self.patch_event)
        # The same Events as core/v1 (what `kubectl describe` reads), as the real API server serves them.
        core_events = "/api/v1/namespaces/{namespace}/events"
        app.router.add_get(core_events, self.list_events)
        app.router.add_get("/api/v1/events", self.list_events)
        app.router.add_get(f"{core_events}/{{name}}", self.get_event)
        return app

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self.latency:
            await asyncio.sleep(self.latency)
        try:
            request["user"] = self.authenticate(request)
            return await handler(request)
        except ApiError as err:
            return _status_response(err)
        except web.HTTPNotFound:
            return _status_response(api.no_such_path())
        except web.HTTPMethodNotAllowed:
            return _status_response(api.method_not_allowed())

    def authenticate(self, request: web.Request) -> User:
        header = request.headers.get("Authorization", "")
        if not header:
            if request.path in PUBLIC_PATHS:
                return User("system:anonymous", ())
            raise api.unauthorized()
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer":
            for known, user in self.tokens.items():
                if hmac.compare_digest(known.encode(), token.strip().encode()):
                    return user
        raise api.unauthorized()

    @staticmethod
    def authorize(
        request: web.Request,
        verb: str,
        resource: str,
        namespace: str | None,
        name: str | None = None,
        group: str = "",
    ) -> None:
        """RBAC: the user's rules allow this verb on this (sub)resource of this group there, or a 403."""
        user: User = request["user"]
        if user.rules is not None and not api.allowed(user.rules, verb, group, resource, namespace, name):
            raise api.forbidden(user.name, verb, resource, namespace, name, group)

    def find_pod(self, namespace: str, name: str) -> tuple[LabState, LabPod]:
        state = self.store.current()
        pod = state.find(namespace, name)
        if pod is None:
            raise api.not_found("pods", name)
        return state, pod

    # --- discovery -----------------------------------------------------------------------------------

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response(api.version_info())

    async def healthy(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def api_versions(self, request: web.Request) -> web.Response:
        return web.json_response(api.api_versions(self.address))

    async def api_groups(self, request: web.Request) -> web.Response:
        return web.json_response(api.api_group_list())

    async def core_resources(self, request: web.Request) -> web.Response:
        return web.json_response(api.core_v1_resources())

    async def events_api_group(self, request: web.Request) -> web.Response:
        return web.json_response({"kind": "APIGroup", "apiVersion": "v1", **api.events_group()})

    async def events_api_resources(self, request: web.Request) -> web.Response:
        return web.json_response(api.events_v1_resources())

    # --- namespaces ---------------------------------------------------------------------------------

    def namespaces(self) -> dict[str, dict[str, Any]]:
        state = self.store.current()
        names = dict.fromkeys([*SYSTEM_NAMESPACES, *sorted({p.namespace for p in state.all_pods})])
        meshed = {p.namespace for p in state.pods if "istio-proxy" in p.containers}
        # ambient modes: the namespace enrols its pods (`kubectl label ns bookinfo istio.io/dataplane-mode=ambient`)
        ambient = {p.namespace for p in state.pods} if state.mode.startswith("ambient") else set()
        out = {}
        for name in names:
            labels = {"kubernetes.io/metadata.name": name}
            if name in meshed:
                labels["istio-injection"] = "enabled"
            if name in ambient:
                labels["istio.io/dataplane-mode"] = "ambient"
            out[name] = {
                "kind": "Namespace",
                "apiVersion": "v1",
                "metadata": {
                    "name": name,
                    "uid": f"lab-ns-{name}",
                    "resourceVersion": "1",
                    "creationTimestamp": "2025-01-01T00:00:00Z",
                    "labels": labels,
                },
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"},
            }
        return out

    async def list_namespaces(self, request: web.Request) -> web.Response:
        self.authorize(request, "list", "namespaces", None)
        items = [_without_type(ns) for ns in self.namespaces().values()]
        return web.json_response(
            {"kind": "NamespaceList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}
        )

    async def get_namespace(self, request: web.Request) -> web.Response:
        name = request.match_info["namespace"]
        self.authorize(request, "get", "namespaces", None, name)
        found = self.namespaces().get(name)
        if found is None:
            raise api.not_found("namespaces", name)
        return web.json_response(found)

    async def list_nodes(self, request: web.Request) -> web.Response:
        """The one node every lab pod runs on (this machine)."""
        self.authorize(request, "list", "nodes", None)
        return web.json_response(
            {
                "kind": "NodeList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": "1"},
                "items": [api.node(NODE_NAME, NODE_IP)],
            }
        )

    # --- pods ---------------------------------------------------------------------------------------

    def served_pods(self) -> list[dict[str, Any]]:
        """Every pod as the API serves it, by namespace and name: made once per version of the lab's state,
        as a real API server serves lists from its cache (a list of 110 pods made each time cost ~17 ms of
        the server's one thread). Shared: read, never changed."""
        state = self.store.current()
        key = (id(state), self.store.version)
        if self._served[0] != key:
            pods = sorted(
                (served_pod(p) for p in state.all_pods),
                key=lambda p: (p["metadata"]["namespace"], p["metadata"]["name"]),
            )
            self._served = (key, pods)
        return self._served[1]

    async def list_pods(self, request: web.Request) -> web.StreamResponse:
        namespace = request.match_info.get("namespace")
        q = request.query
        watching = q.get("watch", "").lower() in ("true", "1")
        self.authorize(request, "watch" if watching else "list", "pods", namespace)
        labels = api.parse_label_selector(q.get("labelSelector"))
        fields = api.parse_field_selector(q.get("fieldSelector"))

        def matching() -> list[dict[str, Any]]:
            return [
                p
                for p in self.served_pods()
                if (namespace is None or p["metadata"]["namespace"] == namespace) and selects(p, labels, fields)
            ]

        if watching:
            return await self.watch_pods(request, matching)
        pods = matching()
        version = _list_version(pods)
        start = _continue_offset(q.get("continue"))
        meta: dict[str, Any] = {"resourceVersion": version}
        limit = int(q["limit"]) if q.get("limit", "").isdigit() and int(q["limit"]) > 0 else 0
        page = pods[start : start + limit] if limit else pods[start:]
        if limit and start + limit < len(pods):
            meta["continue"] = base64.urlsafe_b64encode(str(start + limit).encode()).decode()
            meta["remainingItemCount"] = len(pods) - start - limit
        if api.wants_table(request.headers.get("Accept", "")):
            table = api.pod_table(page, version, q.get("includeObject", "Metadata"), _now())
            table["metadata"].update({k: v for k, v in meta.items() if k != "resourceVersion"})
            return _table_response(table)
        items = [_without_type(p) for p in page]
        return web.json_response({"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": items})

    async def watch_pods(
        self, request: web.Request, matching: Callable[[], list[dict[str, Any]]]
    ) -> web.StreamResponse:
        """Newline-delimited watch events: ADDED for what exists (after `resourceVersion`, if given),
        then MODIFIED/DELETED as the state changes, until timeoutSeconds (default 30 min) or the
        client leaves. Objects are Tables when the client asks for them (`kubectl get -w`)."""
        asked = request.query.get("timeoutSeconds", "")
        timeout = float(asked) if asked.isdigit() else 1800.0
        since = request.query.get("resourceVersion", "")
        table = api.wants_table(request.headers.get("Accept", ""))
        include = request.query.get("includeObject", "Metadata")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        seen: dict[tuple[str, str], str] = {}
        if since.isdigit() and since != "0":  # what the client listed already is no news
            seen = {
                (p["metadata"]["namespace"], p["metadata"]["name"]): str(p["metadata"]["resourceVersion"])
                for p in matching()
                if _version(p) <= int(since)
            }
        deadline = time.monotonic() + timeout
        while True:
            current = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in matching()}
            events: list[tuple[str, dict[str, Any]]] = []
            for key, pod in current.items():
                if key not in seen:
                    events.append(("ADDED", pod))
                elif seen[key] != str(pod["metadata"]["resourceVersion"]):
                    events.append(("MODIFIED", pod))
            events += [
                (
                    "DELETED",
                    {
                        "kind": "Pod",
                        "apiVersion": "v1",
                        "metadata": {"namespace": k[0], "name": k[1], "resourceVersion": v},
                    },
                )
                for k, v in seen.items()
                if k not in current
            ]
            seen = {k: str(p["metadata"]["resourceVersion"]) for k, p in current.items()}
            try:
                for kind, pod in events:
                    obj = api.pod_table([pod], str(_version(pod)), include, _now()) if table else pod
                    await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
            except (ConnectionError, RuntimeError):
                return response
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.25)
        await response.write_eof()
        return response

    async def get_pod(self, request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        self.authorize(request, "get", "pods", namespace, name)
        _, pod = self.find_pod(namespace, name)
        served = served_pod(pod)
        if api.wants_table(request.headers.get("Accept", "")):
            version = str(served["metadata"]["resourceVersion"])
            return _table_response(
                api.pod_table([served], version, request.query.get("includeObject", "Metadata"), _now())
            )
        return web.json_response(served)

    async def pod_log(self, request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        self.authorize(request, "get", "pods/log", namespace, name)
        _, pod = self.find_pod(namespace, name)
        q = request.query
        container_name = pick_container(pod.manifest, q.get("container"), name)
        if q.get("previous", "").lower() in ("true", "1"):
            raise api.bad_request(f'previous terminated container "{container_name}" in pod "{name}" not found')
        container = pod.containers.get(container_name)
        if container is None:
            raise api.bad_request(
                f'container "{container_name}" in pod "{name}" is waiting to start: ContainerCreating'
            )
        text = ""
        if container.log_file:
            with contextlib.suppress(FileNotFoundError):
                text = Path(container.log_file).read_bytes().decode("utf-8", "replace")
        if q.get("tailLines", "").isdigit():
            lines = text.splitlines(keepends=True)
            tail = int(q["tailLines"])
            text = "".join(lines[-tail:]) if tail else ""
        body = text.encode()
        if q.get("limitBytes", "").isdigit():
            body = body[: int(q["limitBytes"])]
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    # --- ephemeral containers ------------------------------------------------------------------------

    async def patch_ephemeral(self, request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        self.authorize(request, "patch", "pods/ephemeralcontainers", namespace, name)
        raw = await request.read()
        state, pod = self.find_pod(namespace, name)
        try:
            body = json.loads(raw or b"null")
        except ValueError as exc:
            raise api.bad_request(f"error decoding patch: {exc}") from exc
        served = served_pod(pod)
        new = ephemeral.patched_ephemeral_containers(served, request.headers.get("Content-Type", ""), body)
        before = {c.get("name") for c in (served.get("spec") or {}).get("ephemeralContainers") or []}
        added = [c for c in new if c.get("name") not in before]
        if added:
            self._add_ephemeral(state, pod, new, added)
        return web.json_response(served_pod(pod))

    def _add_ephemeral(
        self, state: LabState, pod: LabPod, new: list[dict[str, Any]], added: list[dict[str, Any]]
    ) -> None:
        manifest = pod.manifest
        manifest.setdefault("spec", {})["ephemeralContainers"] = new
        statuses = manifest.setdefault("status", {}).setdefault("ephemeralContainerStatuses", [])
        now = _now()
        for container in added:
            target = pod.containers.get(str(container.get("targetContainerName") or ""))
            pod.containers[str(container["name"])] = ephemeral.lab_container(
                manifest, container, target.path if target else []
            )
            statuses.append(ephemeral.running_status(container, now))
        meta = manifest.setdefault("metadata", {})
        meta["resourceVersion"] = str(max((_version(p.manifest) for p in state.pods), default=1) + 1)
        self.store.save(state)
        log.info(
            "pod %s/%s: added ephemeral containers %s",
            pod.namespace,
            pod.name,
            ", ".join(str(c["name"]) for c in added),
        )

    # --- exec ---------------------------------------------------------------------------------------

    async def pod_exec(self, request: web.Request) -> web.StreamResponse:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        self.authorize(request, "create", "pods/exec", namespace, name)
        _, pod = self.find_pod(namespace, name)
        q = request.query
        container_name = pick_container(pod.manifest, q.get("container"), name)
        command = q.getall("command", [])
        flag = {k: q.get(k, "").lower() in ("true", "1") for k in ("stdin", "stdout", "stderr", "tty")}
        if not command:
            raise api.bad_request("you must specify at least 1 command")
        if not (flag["stdin"] or flag["stdout"] or flag["stderr"]):
            raise api.bad_request("you must specify at least 1 of stdin, stdout, stderr")
        phase = (pod.manifest.get("status") or {}).get("phase", "Running")
        if phase in ("Succeeded", "Failed"):
            raise api.bad_request(f"cannot exec into a container in a completed pod; current phase is {phase}")
        container = running_container(pod, container_name)
        if request.headers.get("Upgrade", "").lower() != "websocket":
            # kubectl falls back to SPDY when the WebSocket upgrade fails: it gets the same answer.
            raise api.bad_request(
                "Upgrade request required: this server speaks exec over WebSocket only "
                f"({', '.join(api.CHANNEL_PROTOCOLS)}), not SPDY"
            )
        header = request.headers.get("Sec-WebSocket-Protocol", "")
        offered = [p.strip() for p in header.split(",") if p.strip()]
        chosen = next((p for p in offered if p in api.CHANNEL_PROTOCOLS), None)
        if chosen is None:
            raise api.bad_request(
                f"unable to upgrade connection: the client offered subprotocols [{' '.join(offered)}], "
                f"this server supports [{' '.join(api.CHANNEL_PROTOCOLS)}]"
            )
        run = execution.invocation(command, pod.netns, container, hostname=pod.name)
        ws = web.WebSocketResponse(protocols=(chosen,), autoping=True, max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        session = ExecSession(ws, run, container, v5=chosen.startswith("v5."), live=self.live, **flag)
        await session.run()
        return ws

    # --- pods/proxy: the API server dials the pod (from the lab's node namespace) -----------------------

    async def pod_proxy(self, request: web.Request) -> web.Response:
        """GET .../pods/[scheme:]NAME[:PORT]/proxy/PATH?QUERY, answered with what the pod answered."""
        namespace, target = request.match_info["namespace"], request.match_info["name"]
        parts = target.split(":")
        name, port_text = (parts[1], parts[2]) if len(parts) == 3 else (parts[0], parts[1] if len(parts) == 2 else "")
        self.authorize(request, "get", "pods/proxy", namespace, name)
        state, pod = self.find_pod(namespace, name)
        if not port_text:
            ports = [
                p.get("containerPort")
                for c in (pod.manifest.get("spec") or {}).get("containers") or []
                for p in c.get("ports") or []
            ]
            port_text = str(ports[0]) if ports else "80"
        if not port_text.isdigit() or not pod.ip:
            raise api.ApiError(503, "ServiceUnavailable", f"error trying to reach service: no address for {target}")
        path = "/" + request.match_info.get("path", "")
        if request.query_string:
            path += "?" + request.query_string
        node_ns: str | None = f"{state.netns_prefix}node"
        if not Path(f"/run/netns/{node_ns}").exists():
            node_ns = None  # a lab without a node namespace (the benchmark's): dial from here
        loop = asyncio.get_running_loop()
        try:
            status, content_type, body = await loop.run_in_executor(
                None, _dial, node_ns, pod.ip, int(port_text), path, request.headers.get("Accept", "*/*")
            )
        except OSError as exc:
            raise api.ApiError(
                503,
                "ServiceUnavailable",
                f"error trying to reach service: dial tcp {pod.ip}:{port_text}: {exc.strerror or exc}",
            ) from exc
        return web.Response(body=body, status=status, headers={"Content-Type": content_type})

    # --- events.k8s.io/v1 --------------------------------------------------------------------------------

    async def create_event(self, request: web.Request) -> web.Response:
        namespace = request.match_info["namespace"]
        self.authorize(request, "create", "events", namespace, group=EVENTS_GROUP)
        event = await request.json()
        meta = event.setdefault("metadata", {})
        meta.setdefault("name", f"event.{secrets.token_hex(8)}")
        meta["namespace"] = namespace
        meta.update(
            uid=secrets.token_hex(16), resourceVersion="1", creationTimestamp=_now().strftime("%Y-%m-%dT%H:%M:%SZ")
        )
        if (namespace, meta["name"]) in self.events:
            raise api.ApiError(409, "AlreadyExists", f'events.events.k8s.io "{meta["name"]}" already exists')
        event.update(kind="Event", apiVersion="events.k8s.io/v1")
        self.events[(namespace, meta["name"])] = event
        self._log_event("create", event)
        return web.json_response(event, status=201)

    async def patch_event(self, request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        self.authorize(request, "patch", "events", namespace, name, EVENTS_GROUP)
        event = self.events.get((namespace, name))
        if event is None:
            raise api.not_found("events.events.k8s.io", name)
        _merge(event, await request.json())
        self._log_event("patch", event)
        return web.json_response(event)

    async def list_events(self, request: web.Request) -> web.Response:
        """Either view of the one store: events.k8s.io/v1, or core/v1 under /api/v1. Field selectors
        are the core fields in both (as in Kubernetes: `involvedObject.name=`, `reason=`, ...)."""
        namespace = request.match_info.get("namespace")
        core = request.path.startswith("/api/")
        self.authorize(request, "list", "events", namespace, group="" if core else EVENTS_GROUP)
        q = request.query
        labels = api.parse_label_selector(q.get("labelSelector"))
        fields = api.parse_field_selector(q.get("fieldSelector"), EVENT_FIELDS)
        found = [
            (event, api.core_event(event))
            for (ns, _), event in sorted(self.events.items())
            if namespace is None or ns == namespace
        ]
        items = [
            _without_type(view if core else event)
            for event, view in found
            if selects(view, labels, fields, EVENT_FIELDS)
        ]
        start = _continue_offset(q.get("continue"))
        limit = int(q["limit"]) if q.get("limit", "").isdigit() and int(q["limit"]) > 0 else 0
        meta: dict[str, Any] = {"resourceVersion": "1"}
        if limit and start + limit < len(items):
            meta["continue"] = base64.urlsafe_b64encode(str(start + limit).encode()).decode()
            meta["remainingItemCount"] = len(items) - start - limit
        page = items[start : start + limit] if limit else items[start:]
        version = "v1" if core else "events.k8s.io/v1"
        return web.json_response({"kind": "EventList", "apiVersion": version, "metadata": meta, "items": page})

    async def get_event(self, request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        core = request.path.startswith("/api/")
        self.authorize(request, "get", "events", namespace, name, "" if core else EVENTS_GROUP)
        event = self.events.get((namespace, name))
        if event is None:
            raise api.not_found("events" if core else "events.events.k8s.io", name)
        return web.json_response(api.core_event(event) if core else event)

    def _log_event(self, verb: str, event: Mapping[str, Any]) -> None:
        """Events also go to <root>/events.jsonl (a test reads when each was recorded)."""
        with (self.store.root / "events.jsonl").open("a") as out:
            out.write(json.dumps({"verb": verb, "at": time.time(), "event": event}) + "\n")


def _dial(netns: str | None, ip: str, port: int, path: str, accept: str) -> tuple[int, str, bytes]:
    """One GET to ip:port from inside `netns` (None: this process's own) (blocking: run in a thread)."""
    from podnat.lab.netns import socket_in

    sock = socket_in(netns) if netns else socket.socket()
    sock.settimeout(120)
    try:
        sock.connect((ip, port))
        connection = http.client.HTTPConnection(ip, port, timeout=120)
        connection.sock = sock
        connection.request("GET", path, headers={"Accept": accept})
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", "application/octet-stream"), response.read()
    finally:
        sock.close()


def _merge(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        elif value is None:
            target.pop(key, None)
        else:
            target[key] = value


class ExecSession:
    """One exec over a WebSocket: stdin in, stdout/stderr out, the exit status on channel 3."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        run: execution.Invocation,
        container: LabContainer,
        *,
        v5: bool,
        live: set[int],
        stdin: bool,
        stdout: bool,
        stderr: bool,
        tty: bool,
    ) -> None:
        self.ws, self.run_spec, self.container, self.v5, self.live = ws, run, container, v5, live
        self.stdin, self.stdout, self.stderr, self.tty = stdin, stdout, stderr, tty
        self.process: asyncio.subprocess.Process | None = None

    async def run(self) -> None:
        missing = execution.runtime_not_found(self.run_spec.command, self.container)
        if missing is not None:
            await self._finish(api.exec_internal_error(missing))
            return
        process = await execution.spawn(
            self.run_spec, stdin=self.stdin, stdout=self.stdout, stderr=self.stderr, merge_stderr=self.tty
        )
        self.process = process
        self.live.add(process.pid)
        reader = asyncio.create_task(self._from_client())
        done = asyncio.create_task(self._outputs_and_exit(process))
        try:
            await asyncio.wait([reader, done], return_when=asyncio.FIRST_COMPLETED)
            if not done.done():  # the client left before the command ended
                execution.kill_group(process.pid)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(done, 5)
                return
            code = execution.exit_code(process.returncode if process.returncode is not None else 0)
            await self._finish(api.exec_status(code, list(self.run_spec.command)))
        finally:
            self.live.discard(process.pid)
            if process.returncode is None:
                execution.kill_group(process.pid)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            if not done.done():
                done.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await done

    async def _outputs_and_exit(self, process: asyncio.subprocess.Process) -> None:
        """Both pipes at EOF and the process reaped: only then may channel 3 go out."""
        await asyncio.gather(self._pump(process.stdout, STDOUT), self._pump(process.stderr, STDERR), process.wait())

    async def _finish(self, status: Mapping[str, Any]) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_bytes(bytes([ERROR]) + json.dumps(status).encode())
        with contextlib.suppress(ConnectionError, RuntimeError, asyncio.TimeoutError):
            await asyncio.wait_for(self.ws.close(), 5)

    async def _pump(self, stream: asyncio.StreamReader | None, channel: int) -> None:
        if stream is None:
            return
        while chunk := await stream.read(CHUNK):
            try:
                await self.ws.send_bytes(bytes([channel]) + chunk)
            except (ConnectionError, RuntimeError):
                # The client is gone: keep draining so the process never blocks on a full pipe.
                continue

    async def _from_client(self) -> None:
        async for msg in self.ws:
            if msg.type == WSMsgType.BINARY:
                data = bytes(msg.data)
            elif msg.type == WSMsgType.TEXT:
                data = str(msg.data).encode("latin-1", "replace")
            else:
                continue
            if not data:
                continue
            channel, payload = data[0], data[1:]
            if channel == STDIN:
                await self._write_stdin(payload)
            elif channel == CLOSE and self.v5 and payload[:1] == bytes([STDIN]):
                self._close_stdin()
            # RESIZE: there is no terminal to resize.

    async def _write_stdin(self, payload: bytes) -> None:
        process = self.process
        if process is None or process.stdin is None or process.stdin.is_closing():
            return
        try:
            process.stdin.write(payload)
            await process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            self._close_stdin()

    def _close_stdin(self) -> None:
        process = self.process
        if process is not None and process.stdin is not None and not process.stdin.is_closing():
            process.stdin.close()


def _without_type(obj: Mapping[str, Any]) -> dict[str, Any]:
    """An object as a list item: lists carry kind/apiVersion once, not per item."""
    return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}


def _status_response(err: ApiError) -> web.Response:
    return web.json_response(err.status(), status=err.code)


def _table_response(table: Mapping[str, Any]) -> web.Response:
    return web.Response(
        text=json.dumps(table), headers={"Content-Type": "application/json;as=Table;v=v1;g=meta.k8s.io"}
    )


def _version(pod: Mapping[str, Any]) -> int:
    version = str((pod.get("metadata") or {}).get("resourceVersion", "1"))
    return int(version) if version.isdigit() else 1


def _list_version(pods: list[dict[str, Any]]) -> str:
    return str(max((_version(p) for p in pods), default=1))


def _continue_offset(token: str | None) -> int:
    if not token:
        return 0
    try:
        return max(0, int(base64.urlsafe_b64decode(token.encode()).decode()))
    except ValueError as exc:
        raise api.ApiError(
            410, "Expired", "the provided continue parameter is too old to display a consistent list result"
        ) from exc


# --- the process: bind, TLS, kubeconfig, serve ------------------------------------------------------


def _tokens(root: Path) -> tuple[str, str, str, str]:
    """The tokens (admin, read-only, the agent's, podnat-user's) the state already names (a restarted
    server keeps them), else new ones."""
    try:
        state = LabState.load(root)
        known = state.apiserver
        if known and known.token and known.readonly_token and known.agent_token and known.cli_token:
            return known.token, known.readonly_token, known.agent_token, known.cli_token
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(32)


def _lab_node(root: Path) -> tuple[str | None, str | None]:
    """The lab's node namespace and IP, when the lab has one (a bare API server in a test has not)."""
    try:
        state = LabState.load(root)
    except (OSError, ValueError, KeyError, TypeError):
        return None, None
    netns = f"{state.netns_prefix}node"
    node_ip = state.peers.get("node")
    return (netns, node_ip) if node_ip and Path(f"/run/netns/{netns}").exists() else (None, None)


def _default_namespace(root: Path) -> str:
    try:
        pods = LabState.load(root).pods
    except (OSError, ValueError, KeyError, TypeError):
        return "default"
    return pods[0].namespace if pods else "default"


def write_kubeconfig(path: Path, config: Mapping[str, Any]) -> None:
    import yaml

    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        yaml.safe_dump(dict(config), out, sort_keys=False)
    tmp.replace(path)


async def serve(root: Path, port: int, latency_ms: int) -> None:
    token, readonly_token, agent_token, cli_token = _tokens(root)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    port = sock.getsockname()[1]
    server = f"https://127.0.0.1:{port}"
    node_netns, node_ip = _lab_node(root)
    tls = make_tls(root / "tls", extra_ips=(node_ip,) if node_ip else (), reuse=True)
    namespace = _default_namespace(root)
    write_kubeconfig(root / "kubeconfig", api.kubeconfig(server, tls.ca_pem, token, ADMIN, namespace))
    write_kubeconfig(
        root / "kubeconfig.readonly", api.kubeconfig(server, tls.ca_pem, readonly_token, READONLY, namespace)
    )
    # podnat as a user bound to exactly manifests/rbac's ClusterRole and the agent's reader Role.
    write_kubeconfig(root / "kubeconfig.cli", api.kubeconfig(server, tls.ca_pem, cli_token, CLI_USER, namespace))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert_file, tls.key_file)

    lab = LabApi(root, token, readonly_token, latency_ms, agent_token, cli_token)
    lab.address = f"127.0.0.1:{port}"
    # aiohttp's access log line, and the request's time to answer (%Tf): with the line's own time (when it
    # was answered) that says when each request arrived, which the tests of requests sent at once read
    access = '%a %t "%r" %s %b "%{Referer}i" "%{User-Agent}i" %Tf'
    runner = web.AppRunner(
        lab.app(), access_log=logging.getLogger("aiohttp.access"), access_log_format=access, handle_signals=False
    )
    await runner.setup()
    site = web.SockSite(runner, sock, ssl_context=context)
    await site.start()
    if node_netns and node_ip:
        # The same server on the lab node's IP, same port: what the agent pod dials (as a pod dials
        # kubernetes.default); its kubeconfig is kubeconfig.agent, with the token of its ServiceAccount.
        from podnat.lab.netns import socket_in

        node_sock = socket_in(node_netns)
        node_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        node_sock.bind((node_ip, port))
        node_sock.listen(128)
        await web.SockSite(runner, node_sock, ssl_context=context).start()
        write_kubeconfig(
            root / "kubeconfig.agent",
            api.kubeconfig(
                f"https://{node_ip}:{port}", tls.ca_pem, agent_token, lab.tokens[agent_token].name, "podnat-system"
            ),
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    info = LabApiServer(
        port=port,
        pid=os.getpid(),
        token=token,
        readonly_token=readonly_token,
        agent_token=agent_token,
        cli_token=cli_token,
        kubeconfig=str(root / "kubeconfig"),
        ca_file=str(tls.ca_file),
    )
    tmp = root / f"{INFO_FILE}.tmp"
    tmp.write_text(json.dumps(asdict(info), indent=2))
    tmp.chmod(0o600)
    tmp.replace(root / INFO_FILE)
    log.info("serving %s (pid %d, latency %d ms, state %s)", server, os.getpid(), latency_ms, root / "state.json")
    await stop.wait()
    log.info("stopping: killing %d running exec commands", len(lab.live))
    for pid in list(lab.live):
        execution.kill_group(pid)
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m podnat.lab.apiserver", description="The lab's Kubernetes API server."
    )
    parser.add_argument("--root", type=Path, required=True, help="the lab directory (state.json lives there)")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--latency-ms", type=int, default=0, help="delay added to every request")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.root.mkdir(parents=True, exist_ok=True)
    asyncio.run(serve(args.root.resolve(), args.port, args.latency_ms))
    return 0


# --- start and stop it from Python (the lab, the tests, the benchmark) -----------------------------

_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def start_apiserver(
    root: Path, latency_ms: int = 0, *, state: LabState | None = None, port: int = 0, timeout: float = 20.0
) -> LabApiServer:
    """Start the server as a detached process (own session, log in <root>/apiserver.log) and wait until
    it answers. With `state`, that state is saved first and then records the server."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if state is not None:
        state.save()
    info_file = root / INFO_FILE
    info_file.unlink(missing_ok=True)
    package_parent = str(Path(__file__).resolve().parents[2])
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH")) if p),
    }
    argv = [
        sys.executable,
        "-m",
        "podnat.lab.apiserver",
        "--root",
        str(root),
        "--port",
        str(port),
        "--latency-ms",
        str(latency_ms),
    ]
    with (root / LOG_FILE).open("ab") as out:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=str(root),
        )
    _CHILDREN[process.pid] = process
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _CHILDREN.pop(process.pid, None)
            tail = (root / LOG_FILE).read_text(errors="replace").splitlines()[-15:]
            raise RuntimeError(f"the lab API server exited ({process.returncode}):\n" + "\n".join(tail))
        info = _read_info(info_file)
        if info is not None and info.pid == process.pid and _answers(info):
            if state is not None:
                state.apiserver = info
                state.save()
            return info
        time.sleep(0.05)
    stop_apiserver(process.pid)
    raise RuntimeError(f"the lab API server did not answer within {timeout:g}s: see {root / LOG_FILE}")


def _read_info(path: Path) -> LabApiServer | None:
    try:
        return LabApiServer(**json.loads(path.read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def _answers(info: LabApiServer) -> bool:
    context = ssl.create_default_context(cafile=info.ca_file)
    connection = http.client.HTTPSConnection("127.0.0.1", info.port, context=context, timeout=2)
    try:
        connection.request("GET", "/readyz")
        return connection.getresponse().status == 200
    except (OSError, ssl.SSLError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def _is_apiserver(pid: int) -> bool:
    try:
        return b"podnat.lab.apiserver" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def stop_apiserver(server: LabApiServer | int | None, timeout: float = 20.0) -> None:
    """Stop the server by pid (SIGTERM, then SIGKILL); a pid that is no longer our server is left alone.

    The wait is long because SIGKILL skips the server's own clean-up (killing its running execs): on a
    loaded machine its shutdown can take seconds, and an exec that outlives it holds the pod's netns."""
    pid = server.pid if isinstance(server, LabApiServer) else server
    if not pid:
        return
    child = _CHILDREN.pop(pid, None)
    if child is not None:  # ours: signal it while it runs, and reap it
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        return
    if not _is_apiserver(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _is_apiserver(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _is_apiserver(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
