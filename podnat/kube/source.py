"""`KubePodSource`: pods and their facts through the Kubernetes API (PodSource for the use cases).

The nat table, most live first (unless `source` picks one):
  1. exec in istio-proxy: ONE exec runs podnat.capture's script (both iptables backends explicitly,
     nft -j list ruleset and `pilot-agent request GET listeners?format=json`), split by a random
     marker (an image without `sh` gets one exec per command instead); podnat.capture.nat_tables picks
     the backend holding Istio's rules. Works only where the proxy may read the table; the
     permission errors of both iptables backends are recognised and lead to the next source.
  2. with debug_container=True: the ephemeral container `podnat-debug` (the proxy's image, uid 0,
     NET_ADMIN/NET_RAW, targeting istio-proxy), added once and reused, runs the same single exec.
  3. the istio-init log (or, for istio-cni pods, the istio-cni-node log of the pod's node).
So a pod costs one exec, plus one log read when the proxy is unprivileged: two requests.

For a TPROXY pod the same exec also prints `ip rule show` and `ip route show table T` (and the `ip -6`
twins): Istio's policy routing, which needs no privilege to read, so istio-proxy's exec reads it even
when the nat table comes from elsewhere.

"No sidecar" is not an error: read_facts returns PodFacts with `mesh` != SIDECAR and a note.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from podnat import capture
from podnat.capture import MISSING as _MISSING
from podnat.capture import PERMISSION as _PERMISSION
from podnat.capture import (
    NatFailure,
    NatProblem,
    NftContent,
    capture_script,
    listeners_argv,
    routing_commands,
)
from podnat.capture import Section as _Section
from podnat.facts import (
    ListenersReading,
    NatReading,
    NatSource,
    PodFacts,
    PodRef,
    PolicyRouting,
    SocketsReading,
)
from podnat.istio.initlog import InitLogError, InitLogRules, RulesKind, parse_cni_log, parse_initlog
from podnat.istio.pod import INIT_CONTAINER, MeshMode, pod_info
from podnat.istio.pod import PROXY_CONTAINER as PROXY
from podnat.kube.agentclient import AGENT_SELECTOR
from podnat.kube.client import KubeClient
from podnat.kube.errors import Action, Failure, KubeSourceError, translate

DEBUG_CONTAINER = "podnat-debug"
CNI_NAMESPACES = ("kube-system", "istio-system")
CNI_LABEL = "k8s-app=istio-cni-node"
CNI_CONTAINER = "install-cni"
INIT_LOG_LABEL = "istio-init log: applied at pod start, not necessarily live"

_REFUSED = re.compile(r"connection refused|Errno 111", re.IGNORECASE)
_DEPLOY_PREFIXES = ("deploy/", "deployment/", "deployments/", "deployment.apps/", "deployments.apps/")
# Errors after which the next source may still work (anything else: the API itself failed).
_FALLBACK = frozenset(
    {
        Failure.NAT_PERMISSION,
        Failure.TOOL_MISSING,
        Failure.EMPTY_TABLE,
        Failure.FORBIDDEN,
        Failure.EXEC_DENIED,
        Failure.PROXY_NOT_READY,
        Failure.POD_SECURITY,
        Failure.DEBUG_CONTAINER,
    }
)


@dataclass(frozen=True, slots=True)
class ExecResult:
    """What one exec printed and how it ended (None: the server sent no exit status)."""

    stdout: str
    stderr: str
    returncode: int | None


@dataclass(frozen=True, slots=True)
class _Capture:
    """One container's reading: the nat table or why not, the listeners or why not."""

    nat: NatReading | None
    nat_error: KubeSourceError | None
    listeners: ListenersReading | None
    listeners_error: str | None
    routing: PolicyRouting | None = None


class KubePodSource:
    """PodSource against a real API server; safe to share between threads (exec has its own client)."""

    def __init__(
        self,
        client: KubeClient,
        *,
        debug_wait: float = 60.0,
        cni_namespaces: tuple[str, ...] = CNI_NAMESPACES,
        sleep: Callable[[float], None] = time.sleep,
        debug_image: str | None = None,
    ) -> None:
        self.client = client
        self.debug_image = debug_image  # --debug-image: the debug container's image for pods without istio-proxy
        self.timeout = client.options.timeout
        self.debug_wait = debug_wait
        self.cni_namespaces = cni_namespaces
        self._sleep = sleep
        from podnat.kube.agentclient import AgentReader

        self.agents = AgentReader(client)

    def prefetch(self, pods: list[dict[str, Any]], source: NatSource | None) -> None:
        """Before reading many pods: ask each node's agent once for all of them (source node, or default)."""
        if source in (None, NatSource.NODE):
            self.agents.prefetch(pods)

    # --- pods -------------------------------------------------------------------------------------

    def list_pods(self, namespace: str | None, selector: str | None = None) -> list[dict[str, Any]]:
        action = Action("list", "pods", namespace)
        kwargs: dict[str, Any] = {"_preload_content": False, "_request_timeout": self.timeout}
        if selector:
            kwargs["label_selector"] = selector
        try:
            if namespace is None:
                resp = self.client.core.list_pod_for_all_namespaces(**kwargs)
            else:
                resp = self.client.core.list_namespaced_pod(namespace, **kwargs)
            items = json.loads(_body(resp)).get("items") or []
        except Exception as exc:
            raise translate(exc, action, self.client.server) from exc
        return [dict(item) for item in items]

    def get_pod(self, ref: PodRef) -> dict[str, Any]:
        """One pod by name, `deploy/NAME` (a pod of the Deployment) or `POD.NAMESPACE` (as istioctl)."""
        name = ref.name
        for prefix in _DEPLOY_PREFIXES:
            if name.startswith(prefix):
                return self._pod_of_deployment(ref.namespace, name[len(prefix) :])
        if "." in name:
            pod, _, namespace = name.rpartition(".")
            if pod and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", namespace):
                try:
                    return self._read_pod(namespace, pod)
                except KubeSourceError as err:
                    if err.failure is not Failure.NOT_FOUND:
                        raise
                    # A pod name may itself contain dots: try it whole in the given namespace.
        return self._read_pod(ref.namespace, name)

    def _read_pod(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            resp = self.client.core.read_namespaced_pod(
                name, namespace, _preload_content=False, _request_timeout=self.timeout
            )
            return dict(json.loads(_body(resp)))
        except Exception as exc:
            raise translate(exc, Action("get", "pods", namespace, name), self.client.server) from exc

    def _pod_of_deployment(self, namespace: str, deployment: str) -> dict[str, Any]:
        selector: str | None = None
        try:
            resp = self.client.apps.read_namespaced_deployment(
                deployment, namespace, _preload_content=False, _request_timeout=self.timeout
            )
            selector = _selector_string(json.loads(_body(resp)).get("spec", {}).get("selector") or {})
        except Exception as exc:
            status = int(getattr(exc, "status", 0) or 0)
            body = _json_or_none(getattr(exc, "body", None))
            details = (body or {}).get("details") or {}
            if status == 404 and details.get("name") == deployment:
                raise KubeSourceError(
                    Failure.NOT_FOUND,
                    f"deployment {deployment} not found in namespace {namespace}: check the name and -n/--namespace",
                ) from exc
            if status not in (403, 404):  # 403: podnat's role need not read deployments
                raise translate(exc, Action("get", "deployments", namespace, deployment), self.client.server) from exc
        if selector:
            pods = self.list_pods(namespace, selector)
        else:
            # No apps/v1 (or no right to read it): the pods a Deployment's ReplicaSet names NAME-HASH-XXXXX.
            pods = [p for p in self.list_pods(namespace) if _owned_by_deployment(p, deployment)]
        if not pods:
            raise KubeSourceError(
                Failure.NOT_FOUND,
                f"deployment {namespace}/{deployment} has no pods: check `kubectl get deploy -n {namespace}`",
            )
        return min(pods, key=_pod_preference)

    # --- facts ------------------------------------------------------------------------------------

    def read_facts(self, pod: Mapping[str, Any], source: NatSource | None, debug_container: bool) -> PodFacts:
        pod = pod_info(pod)  # the use case hands a PodInfo: read once
        ref = _ref(pod)
        mesh, why = pod.mesh, pod.mesh_note
        if mesh is MeshMode.AMBIENT:
            return self._read_ambient(pod, ref, why, debug_container)
        if mesh is MeshMode.NO_SIDECAR:
            return PodFacts(ref=ref, pod=pod, mesh=mesh, notes=(why,))
        notes: list[str] = [why] if why else []
        phase = (pod.get("status") or {}).get("phase")
        if phase != "Running" and source is not NatSource.INIT_LOG:
            raise KubeSourceError(
                Failure.POD_NOT_RUNNING,
                f"pod {ref} is {phase or 'in an unknown phase'}, not Running: wait for it "
                "(`kubectl get pod`), or read the rules applied at start with --source init-log",
            )

        proxy_error = _proxy_not_running(pod, ref)
        if mesh is MeshMode.NO_CAPTURE:
            listeners = None
            if proxy_error is None:
                listeners, listeners_error = self._listeners_only(pod, ref)
                if listeners_error:
                    notes.append(listeners_error)
            return PodFacts(ref=ref, pod=pod, listeners=listeners, notes=tuple(notes), mesh=mesh)

        if source in (None, NatSource.NODE):
            # The node agent first: live, no exec, no ephemeral container.
            try:
                from_node = self.agents.facts_for(pod)
            except KubeSourceError as err:
                if source is NatSource.NODE:
                    raise
                notes.append(f"{err.message}: read without it")
                from_node = None
            if from_node is not None:
                return dataclasses.replace(from_node, notes=(*notes, *from_node.notes))
            if source is NatSource.NODE:
                node = (pod.get("spec") or {}).get("nodeName")
                why = self.agents._agents_error or (
                    f"no running pod labelled {AGENT_SELECTOR} in namespace {self.agents.namespace}"
                )
                raise KubeSourceError(
                    Failure.NOT_FOUND,
                    f"no podnat agent on node {node} of pod {ref} ({why}): install it (`kubectl apply -k "
                    "manifests/agent`), or pick another source with --source exec|debug|init-log",
                )

        nat: NatReading | None = None
        listeners_reading: ListenersReading | None = None
        routing: PolicyRouting | None = None
        listeners_tried = False
        failures: list[KubeSourceError] = []

        def give_up(err: KubeSourceError) -> None:
            if source is not None or err.failure not in _FALLBACK:
                raise err
            failures.append(err)
            notes.append(err.message)

        if source in (None, NatSource.EXEC):
            if proxy_error is not None:
                give_up(proxy_error)
            else:
                try:
                    cap = self._capture(pod, ref, PROXY, NatSource.EXEC)
                    listeners_tried = True
                    listeners_reading = cap.listeners
                    routing = cap.routing
                    if cap.listeners_error:
                        notes.append(cap.listeners_error)
                    if cap.nat is not None:
                        nat = cap.nat
                    elif cap.nat_error is not None:
                        give_up(cap.nat_error)
                except KubeSourceError as err:
                    listeners_tried = err.failure not in (Failure.TOOL_MISSING,)
                    give_up(err)

        if nat is None and (source is NatSource.DEBUG or (source is None and debug_container)):
            try:
                name, added = self._ensure_debug_container(pod, ref)
                notes.append(
                    f"added ephemeral container {name} to pod {ref} (ephemeral containers cannot be "
                    "removed; later runs reuse it)"
                    if added
                    else f"reused ephemeral container {name}"
                )
                cap = self._capture(pod, ref, name, NatSource.DEBUG, debug_added=added)
                if cap.routing is not None and (routing is None or not routing.complete):
                    routing = cap.routing
                if cap.listeners is not None:
                    listeners_reading = cap.listeners
                elif cap.listeners_error and listeners_reading is None:
                    notes.append(cap.listeners_error)
                listeners_tried = True
                if cap.nat is not None:
                    nat = cap.nat
                elif cap.nat_error is not None:
                    give_up(cap.nat_error)
            except KubeSourceError as err:
                give_up(err)

        if nat is None and source in (None, NatSource.INIT_LOG):
            try:
                nat, log_notes = self._read_from_log(pod, ref)
                notes.extend(log_notes)
            except KubeSourceError as err:
                if source is not None or not failures:
                    raise
                first = failures[0].message.split(": ")[0]
                message = f"{first}; the log fallback failed too: {err.message}"
                raise KubeSourceError(err.failure, message) from err

        if nat is None:  # only reachable when every fallback recorded a failure
            raise failures[-1] if failures else KubeSourceError(Failure.API_ERROR, f"nothing read from {ref}")

        if listeners_reading is None and not listeners_tried and proxy_error is None:
            listeners_reading, listeners_error = self._listeners_only(pod, ref)
            if listeners_error:
                notes.append(listeners_error)
        return PodFacts(
            ref=ref, pod=pod, nat=nat, listeners=listeners_reading, notes=tuple(notes), mesh=mesh, routing=routing
        )

    def _read_ambient(self, pod: Mapping[str, Any], ref: PodRef, why: str, debug_container: bool) -> PodFacts:
        """An ambient pod has no istio-proxy to exec into and no istio-init log: only a debug container with an
        image the user names (--debug-container --debug-image) reads its namespace through the API."""
        notes: list[str] = [why]
        if not (debug_container and self.debug_image):
            try:  # the node agent first: it reads the pod's namespace from the node
                from_node = self.agents.facts_for(pod)
            except KubeSourceError as err:
                notes.append(f"{err.message}: read without it")
                from_node = None
            if from_node is not None:
                return dataclasses.replace(from_node, mesh=MeshMode.AMBIENT, notes=(*notes, *from_node.notes))
            return PodFacts(ref=ref, pod=pod, mesh=MeshMode.AMBIENT, notes=(*notes, AMBIENT_NOT_READ))
        name, added = self._ensure_debug_container(pod, ref, image=self.debug_image)
        marker = f"podnat-{secrets.token_hex(8)}"
        result = self.exec(ref, name, ["sh", "-c", ambient_script(marker)])
        sections = split_sections(result, marker)
        if sections is None:
            raise KubeSourceError(
                Failure.TOOL_MISSING,
                f"the debug image {self.debug_image} has no `sh` (pod {ref}): "
                "pass --debug-image with a shell, iptables-save and nft (e.g. Istio's proxyv2)",
            )
        note = (
            f"added ephemeral container {name} ({self.debug_image}) to pod {ref} (ephemeral containers cannot "
            "be removed; later runs reuse it)"
            if added
            else f"reused ephemeral container {name}"
        )
        return ambient_facts(pod, ref, sections, f"debug container {name}", NatSource.DEBUG, (why, note))

    # --- exec -------------------------------------------------------------------------------------

    def exec(self, ref: PodRef, container: str, argv: list[str]) -> ExecResult:
        """Run argv in a container, read stdout/stderr until the server closes, bounded by the timeout."""
        action = Action("create", "pods/exec", ref.namespace, ref.name, container)
        api = self.client.exec_core()
        ws: Any = None
        try:
            try:
                ws = self.client.stream_exec(
                    api,
                    name=ref.name,
                    namespace=ref.namespace,
                    container=container,
                    command=argv,
                    stderr=True,
                    stdin=False,
                    stdout=True,
                    tty=False,
                    _request_timeout=self.timeout,
                )
            except Exception as exc:
                raise translate(exc, action, self.client.server) from exc
            out: list[str] = []
            err: list[str] = []
            deadline = time.monotonic() + self.timeout
            try:
                while ws.is_open():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise KubeSourceError(
                            Failure.TIMEOUT,
                            f"exec in {container} of pod {ref} did not finish within {self.timeout:g}s: "
                            "rerun, or raise --request-timeout",
                        )
                    ws.update(timeout=min(remaining, 1.0))
                    out.append(ws.read_stdout(timeout=0))
                    err.append(ws.read_stderr(timeout=0))
                out.append(ws.read_stdout(timeout=0))
                err.append(ws.read_stderr(timeout=0))
                status = _status_message(ws)
                returncode = _returncode(ws)
                if returncode is None and status:
                    err.append(status)  # e.g. containerd's "executable file not found" comes only on channel 3
            except KubeSourceError:
                raise
            except Exception as exc:
                raise translate(exc, action, self.client.server) from exc
            return ExecResult("".join(out), "".join(err), returncode)
        finally:
            if ws is not None:
                with contextlib.suppress(Exception):
                    ws.close()
            self.client.close_exec_core(api)

    def _capture(
        self,
        pod: Mapping[str, Any],
        ref: PodRef,
        container: str,
        kind: NatSource,
        *,
        debug_added: bool = False,
    ) -> _Capture:
        info = pod_info(pod)
        port, table = info.admin_port, info.tproxy_route_table
        marker = f"podnat-{secrets.token_hex(8)}"
        result = self.exec(ref, container, ["sh", "-c", capture_script(marker, port, table)])
        sections = split_sections(result, marker)
        if sections is None:
            if _looks_missing(result):  # no shell in the image (distroless): one exec per command
                sections = self._capture_without_shell(ref, container, port, table)
            else:
                detail = " ".join((result.stderr or result.stdout).split())[:200]
                raise KubeSourceError(
                    Failure.API_ERROR,
                    f"exec in {container} of pod {ref} ended (exit {result.returncode}) without output: {detail}",
                )
        where = "istio-proxy" if kind is NatSource.EXEC else f"ephemeral container {container}"
        nat, nat_error = interpret_nat(sections, ref, where, kind)
        if nat is not None and kind is NatSource.DEBUG:
            nat = NatReading(
                source=nat.source,
                label=nat.label,
                v4=nat.v4,
                v6=nat.v6,
                nft=nat.nft,
                counters=nat.counters,
                debug_container=container,
                debug_container_added=debug_added,
                listeners_json=_listeners_text(sections),
            )
        listeners, listeners_error = interpret_listeners(sections.get("listeners"), where)
        routing = interpret_routing(sections, where, table) if table is not None else None
        return _Capture(nat, nat_error, listeners, listeners_error, routing)

    def _capture_without_shell(self, ref: PodRef, container: str, port: int, table: int | None) -> dict[str, _Section]:
        """The capture's sections with one exec per command (an image without `sh`): each backend's
        binary where it exists, the unqualified one only where neither does."""
        sections: dict[str, _Section] = {}

        def run(name: str, argv: list[str]) -> _Section:
            r = self.exec(ref, container, argv)
            rc = r.returncode if r.returncode is not None else 1
            sections[name] = _Section(r.stdout, r.stderr, 127 if rc and _looks_missing(r) else rc)
            return sections[name]

        denied = False
        for tool in ("iptables", "ip6tables"):
            family = "v4" if tool == "iptables" else "v6"
            found = False
            for backend in ("nft", "legacy"):
                if denied:
                    break
                section = run(f"{family}_{backend}", [f"{tool}-{backend}-save", "-c"])
                found = found or section.returncode != 127
                denied = bool(_PERMISSION.search(section.stderr + section.stdout))
            if not found and not denied:
                section = run(family, [f"{tool}-save", "-c"])
                denied = bool(_PERMISSION.search(section.stderr + section.stdout))
            if denied:
                break  # same verdict for the rest: spare the execs
        if not denied:
            run("nft", ["nft", "-j", "list", "ruleset"])  # native nftables mode keeps the rules there
        run("listeners", listeners_argv(port))
        for name, command in routing_commands(table).items():
            if run(name, command.split()).returncode == 127:
                break  # no `ip` in the image: the other commands would say the same
        return sections

    def _listeners_only(self, pod: Mapping[str, Any], ref: PodRef) -> tuple[ListenersReading | None, str | None]:
        try:
            r = self.exec(ref, PROXY, listeners_argv(pod_info(pod).admin_port))
        except KubeSourceError as err:
            return None, f"Envoy listeners not read: {err.message}"
        rc = r.returncode if r.returncode is not None else 1
        return interpret_listeners(_Section(r.stdout, r.stderr, rc), "istio-proxy")

    # --- debug container --------------------------------------------------------------------------

    def _ensure_debug_container(
        self, pod: Mapping[str, Any], ref: PodRef, image: str | None = None
    ) -> tuple[str, bool]:
        spec = pod.get("spec") or {}
        existing = any(c.get("name") == DEBUG_CONTAINER for c in spec.get("ephemeralContainers") or [])
        added = False
        if not existing:
            body = {"spec": {"ephemeralContainers": [debug_container_spec(pod, image)]}}
            try:
                self.client.core.patch_namespaced_pod_ephemeralcontainers(
                    ref.name, ref.namespace, body, _preload_content=False, _request_timeout=self.timeout
                )
            except Exception as exc:
                action = Action("patch", "pods/ephemeralcontainers", ref.namespace, ref.name)
                raise translate(exc, action, self.client.server) from exc
            added = True
        self._wait_running(ref, DEBUG_CONTAINER)
        return DEBUG_CONTAINER, added

    def _wait_running(self, ref: PodRef, name: str) -> None:
        deadline = time.monotonic() + self.debug_wait
        delay = 0.2
        while True:
            status = _ephemeral_status(self._read_pod(ref.namespace, ref.name), name)
            state = (status or {}).get("state") or {}
            if "running" in state:
                return
            if "terminated" in state:
                why = state["terminated"].get("reason") or f"exit {state['terminated'].get('exitCode')}"
                raise KubeSourceError(
                    Failure.DEBUG_CONTAINER,
                    f"ephemeral container {name} in pod {ref} has exited ({why}) and cannot be restarted: "
                    "use --source init-log (or recreate the pod)",
                )
            waiting = state.get("waiting") or {}
            if waiting.get("reason") in (
                "ErrImagePull",
                "ImagePullBackOff",
                "InvalidImageName",
                "CreateContainerConfigError",
                "CreateContainerError",
            ):
                raise KubeSourceError(
                    Failure.DEBUG_CONTAINER,
                    f"ephemeral container {name} in pod {ref} cannot start ({waiting.get('reason')}: "
                    f"{' '.join(str(waiting.get('message', '')).split())[:120]}): use --source init-log",
                )
            if time.monotonic() >= deadline:
                raise KubeSourceError(
                    Failure.TIMEOUT,
                    f"ephemeral container {name} in pod {ref} was not running after {self.debug_wait:g}s "
                    f"({waiting.get('reason') or 'no status yet'}): rerun later, or use --source init-log",
                )
            self._sleep(delay)
            delay = min(delay * 2, 2.0)

    # --- logs -------------------------------------------------------------------------------------

    def read_log(self, namespace: str, name: str, container: str) -> str:
        try:
            resp = self.client.core.read_namespaced_pod_log(
                name, namespace, container=container, _preload_content=False, _request_timeout=self.timeout
            )
            return _body(resp).decode("utf-8", "replace")
        except Exception as exc:
            raise translate(exc, Action("get", "pods/log", namespace, name, container), self.client.server) from exc

    def _read_from_log(self, pod: Mapping[str, Any], ref: PodRef) -> tuple[NatReading, list[str]]:
        info = pod_info(pod)
        if info.init is not None:
            text = self.read_log(ref.namespace, ref.name, INIT_CONTAINER)
            try:
                rules = parse_initlog(text)
            except InitLogError as err:
                raise KubeSourceError(
                    Failure.LOG, f"the istio-init log of pod {ref} has no rules podnat recognises ({err})"
                ) from err
            return _reading_from_rules(rules, INIT_LOG_LABEL), [_log_note(rules, "istio-init")]
        if info.uses_istio_cni:
            return self._read_from_cni_log(pod, ref)
        raise KubeSourceError(
            Failure.LOG,
            f"pod {ref} has no istio-init container and no sign of istio-cni: there is no log of its rules; "
            "read the live table with --debug-container",
        )

    def _read_from_cni_log(self, pod: Mapping[str, Any], ref: PodRef) -> tuple[NatReading, list[str]]:
        node = (pod.get("spec") or {}).get("nodeName")
        lead = f"pod {ref} uses istio-cni: its rules are in the istio-cni-node log on node {node}"
        cni_pod: Mapping[str, Any] | None = None
        for namespace in self.cni_namespaces:
            try:
                resp = self.client.core.list_namespaced_pod(
                    namespace,
                    label_selector=CNI_LABEL,
                    field_selector=f"spec.nodeName={node}" if node else None,
                    _preload_content=False,
                    _request_timeout=self.timeout,
                )
                items = json.loads(_body(resp)).get("items") or []
            except Exception as exc:
                err = translate(exc, Action("list", "pods", namespace), self.client.server)
                if err.failure is Failure.NOT_FOUND:
                    continue
                message = f"{lead}, which podnat cannot list: {err.message}"
                raise KubeSourceError(err.failure, message) from exc
            # The server may ignore the field selector: check the node here too.
            on_node = [p for p in items if not node or (p.get("spec") or {}).get("nodeName") == node]
            cni_pod = on_node[0] if on_node else None
            if cni_pod is not None:
                break
        if cni_pod is None:
            raise KubeSourceError(
                Failure.LOG,
                f"{lead}, and no istio-cni-node pod ({CNI_LABEL}) runs there in "
                f"{' or '.join(self.cni_namespaces)}: read the live table with --debug-container",
            )
        cni_ref = _ref(cni_pod)
        containers = [c.get("name") for c in (cni_pod.get("spec") or {}).get("containers") or []]
        container = CNI_CONTAINER if CNI_CONTAINER in containers or not containers else str(containers[0])
        text = self.read_log(cni_ref.namespace, cni_ref.name, container)
        try:
            rules = parse_cni_log(text, ref.name)
        except InitLogError as err:
            raise KubeSourceError(Failure.LOG, f"{lead} ({cni_ref}), but: {err}") from err
        label = f"istio-cni-node log ({cni_ref}): applied at pod start, not necessarily live"
        return _reading_from_rules(rules, label), [_log_note(rules, f"istio-cni-node {cni_ref}")]


# --- pure helpers (tested directly) -------------------------------------------------------------


AMBIENT_NOT_READ = (
    "the in-pod rules of this ambient pod could not be read live: it has no istio-proxy to exec into and no "
    "istio-init log. Run podnat's node agent on its node (`podnat agent`, manifests/agent/), or rerun with "
    "--debug-container --debug-image IMAGE (an image with sh, iptables-save, nft and ip, e.g. Istio's proxyv2 "
    "of your release)"
)
AMBIENT_ROUTE_TABLE = 100  # istio-cni's `ip rule fwmark 0x111/0xfff lookup 100` (podnat.istio.ambient)


def ambient_script(marker: str) -> str:
    """The capture for an ambient pod: both iptables backends, nft, the policy routing of table 100 and the
    listening sockets (ztunnel's in-pod listeners); no Envoy to ask."""
    return capture_script(marker, routing_table=AMBIENT_ROUTE_TABLE, listeners=False, sockets=True)


def ambient_facts(
    pod: Mapping[str, Any],
    ref: PodRef,
    sections: Mapping[str, _Section],
    where: str,
    kind: NatSource,
    notes: tuple[str, ...],
) -> PodFacts:
    """An ambient pod's facts from its capture. No Istio rules at all is a fact (the pod's traffic bypasses
    ztunnel), not a failure to read."""
    nat, nat_error = interpret_nat(sections, ref, where, kind)
    if nat is None:
        assert nat_error is not None
        if nat_error.failure is not Failure.EMPTY_TABLE:
            raise nat_error
        nat = NatReading(
            source=kind,
            label=f"{where} (uid 0, NET_ADMIN): iptables-save -c, nft list ruleset: no Istio rules",
            v4="",
            v6=None,
            nft=None,
            counters=True,
        )
    routing = interpret_routing(sections, where, AMBIENT_ROUTE_TABLE)
    section = sections.get("sockets")
    sockets = None
    extra = list(notes)
    if section is not None and section.returncode == 0:
        sockets = SocketsReading(f"{where}: {capture.SOCKETS_COMMAND}", capture.listening_ports(section.stdout))
    else:
        extra.append(f"the pod's listening sockets were not read in {where}: ztunnel's in-pod listeners assumed")
    return PodFacts(
        ref=ref,
        pod=pod,
        nat=nat,
        notes=tuple(n for n in extra if n),
        mesh=MeshMode.AMBIENT,
        routing=routing,
        sockets=sockets,
    )


def split_sections(result: ExecResult, marker: str) -> dict[str, _Section] | None:
    """The sections of a capture_script run, or None when the script never started (no shell)."""
    return capture.split_sections(result.stdout, result.stderr, marker)


def interpret_nat(
    sections: Mapping[str, _Section], ref: PodRef, where: str, kind: NatSource
) -> tuple[NatReading | None, KubeSourceError | None]:
    """The nat reading out of the capture's iptables (both backends) and nft sections, or the one-line
    reason there is none (podnat.capture.nat_tables decides; this says it in kube terms)."""
    found = capture.nat_tables(capture.read_sections(sections))
    hint = (
        "rerun with --debug-container or use --source init-log" if kind is NatSource.EXEC else "use --source init-log"
    )
    if isinstance(found, NatFailure):
        return None, _nat_error(found, ref, where, kind, hint)
    command = found.command
    if found.also:
        command += f" ({', '.join(found.also)} holds Istio's rules too: the kernel runs both)"
    label = f"exec istio-proxy: {command}" if kind is NatSource.EXEC else f"{where} (uid 0, NET_ADMIN): {command}"
    return NatReading(source=kind, label=label, v4=found.v4, v6=found.v6, nft=found.nft, counters=True), None


def _nat_error(found: NatFailure, ref: PodRef, where: str, kind: NatSource, hint: str) -> KubeSourceError:
    problem = found.problem
    if problem is NatProblem.PERMISSION:
        how = (
            "rerun with --debug-container, or read the rules applied at start with --source init-log"
            if kind is NatSource.EXEC
            else "use --source init-log"
        )
        return KubeSourceError(
            Failure.NAT_PERMISSION, f"{where} cannot read the nat table without NET_ADMIN (pod {ref}): {how}"
        )
    if problem is NatProblem.MISSING:
        return KubeSourceError(
            Failure.TOOL_MISSING, f"iptables-save is not in the image of {where} (pod {ref}): {hint}"
        )
    if problem is NatProblem.NO_OUTPUT:
        return KubeSourceError(Failure.API_ERROR, f"no iptables-save output from {where} of pod {ref}")
    if problem is NatProblem.FAILED:
        return KubeSourceError(
            Failure.API_ERROR,
            f"{found.command.split()[0]} failed in {where} of pod {ref} (exit {found.returncode}): {found.detail}",
        )
    legacy = (
        " (iptables-save warns that iptables-legacy tables are present: the rules may be there)"
        if (found.legacy_warning)
        else ""
    )
    nft_hint = "nft is not available there" if found.nft is NftContent.UNREAD else "nft shows no istio tables"
    return KubeSourceError(
        Failure.EMPTY_TABLE,
        f"the nat table read in {where} of pod {ref} is empty{legacy}: native nftables mode (Istio 1.27+) keeps "
        f"the rules in `nft list ruleset`, and {nft_hint} (no rule from {', '.join(found.read)}): {hint}",
    )


_NO_TABLE = re.compile(r"FIB table does not exist|table .* does not exist", re.IGNORECASE)


def interpret_routing(sections: Mapping[str, _Section], where: str, table: int) -> PolicyRouting:
    """The policy-routing sections of a capture: each text, "" for an empty table, None when unread."""
    who = "exec istio-proxy" if where == PROXY else where
    problems: list[str] = []

    def text(name: str, command: str) -> str | None:
        section = sections.get(name)
        if section is None:
            return None
        if section.returncode == 0:
            return section.stdout
        both = section.stderr + section.stdout
        if _NO_TABLE.search(both):
            return ""  # iproute2 on a table with no route in it
        if section.returncode in (126, 127) or _MISSING.search(both):
            problem = f"`ip` is not in the image of {where}"
        else:
            problem = f"`{command}` failed in {where} (exit {section.returncode}): {' '.join(both.split())[:120]}"
        if problem not in problems:
            problems.append(problem)
        return None

    commands = routing_commands(table)
    texts = {name: text(name, command) for name, command in commands.items()}
    return PolicyRouting(
        label=f"{who}: ip rule show; ip route show table {table} (and ip -6)",
        table=table,
        rules_v4=texts["rule"],
        routes_v4=texts["route"],
        rules_v6=texts["rule6"],
        routes_v6=texts["route6"],
        error="; ".join(problems) or None,
    )


def interpret_listeners(section: _Section | None, where: str) -> tuple[ListenersReading | None, str | None]:
    who = "exec istio-proxy" if where == PROXY else where
    label = f"{who}: pilot-agent request GET listeners?format=json"
    if section is None:
        return None, None
    text = section.stdout.strip()
    if section.returncode == 0 and text.startswith("{"):
        return ListenersReading(label=label, json_text=text), None
    if _REFUSED.search(section.stderr + section.stdout):
        # The exec ran and Envoy's admin port refused: Envoy is not running, so nothing listens.
        return ListenersReading(
            label=f"{who}: Envoy's admin port refused the connection (Envoy is not running)",
            json_text='{"listener_statuses": []}',
        ), None
    detail = " ".join((section.stderr or section.stdout).split())[:160]
    return None, f"Envoy listeners not read in {where} (exit {section.returncode}): {detail or 'no output'}"


def _listeners_text(sections: Mapping[str, _Section]) -> str | None:
    reading, _ = interpret_listeners(sections.get("listeners"), "")
    return reading.json_text if reading else None


def debug_container_spec(pod: Mapping[str, Any], image: str | None = None) -> dict[str, Any]:
    """podnat's ephemeral container: the proxy's own image (or `image`: an ambient pod has no proxy), uid 0
    with NET_ADMIN/NET_RAW, idle."""
    info = pod_info(pod)
    proxy = info.proxy
    target = PROXY if proxy is not None else info.app.name if info.app is not None else None
    return {
        "name": DEBUG_CONTAINER,
        "image": image or (proxy.image if proxy is not None else None),
        "imagePullPolicy": "IfNotPresent",
        "command": ["sleep", "infinity"],
        "targetContainerName": target,
        "stdin": False,
        "tty": False,
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": False,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"]},
        },
    }


def _reading_from_rules(rules: InitLogRules, label: str) -> NatReading:
    return NatReading(source=NatSource.INIT_LOG, label=label, v4=rules.v4, v6=rules.v6, nft=rules.nft, counters=False)


def _log_note(rules: InitLogRules, where: str) -> str:
    what = (
        "restore input (no iptables-save dump was logged)"
        if rules.kind is RulesKind.RESTORE_INPUT
        else (rules.kind.value)
    )
    return f"{where} log, Istio {rules.log_format.value} format: {what}, from line {rules.line}"


def _proxy_not_running(pod: Mapping[str, Any], ref: PodRef) -> KubeSourceError | None:
    status = pod.get("status") or {}
    statuses = [*(status.get("containerStatuses") or []), *(status.get("initContainerStatuses") or [])]
    proxy = next((s for s in statuses if s.get("name") == PROXY), None)
    if proxy is None:
        return None  # no status reported (yet): let the exec say what is wrong
    state = proxy.get("state") or {}
    if "running" in state:
        return None
    phase, detail = next(iter(state.items()), ("unknown", None))
    reason = (detail or {}).get("reason") or phase
    return KubeSourceError(
        Failure.PROXY_NOT_READY,
        f"istio-proxy in pod {ref} is not ready: not running ({phase}: {reason}): see `kubectl describe pod "
        f"{ref.name} -n {ref.namespace}`, or read the rules applied at start with --source init-log",
    )


def _ephemeral_status(pod: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    for s in (pod.get("status") or {}).get("ephemeralContainerStatuses") or []:
        if s.get("name") == name:
            return dict(s)
    return None


def _status_message(ws: Any) -> str:
    """The message of a Failure status on the exec error channel (3), if the server sent one."""
    try:
        raw = ws.peek_channel(3, timeout=0) if hasattr(ws, "peek_channel") else ""  # peek: returncode reads it
    except Exception:
        return ""
    if not raw:
        return ""
    try:
        status = json.loads(raw)
    except ValueError:
        return ""
    return str(status.get("message", "")) if status.get("status") == "Failure" else ""


def _returncode(ws: Any) -> int | None:
    try:
        rc = ws.returncode
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None  # a Failure without a numeric cause, or no status frame at all
    return int(rc) if rc is not None else None


def _looks_missing(result: ExecResult) -> bool:
    text = result.stderr + result.stdout
    if "executable file not found" in text:
        return True
    return result.returncode in (126, 127, 128) and bool(_MISSING.search(text))


def _has_rules(text: str) -> bool:
    return bool(re.search(r"^(?:\[\d+:\d+\] )?-A ", text, re.M))


def _ref(pod: Mapping[str, Any]) -> PodRef:
    meta = pod.get("metadata") or {}
    return PodRef(str(meta.get("namespace") or "default"), str(meta.get("name") or "?"))


def _body(resp: Any) -> bytes:
    """The raw body of a `_preload_content=False` answer (a urllib3 response)."""
    data = resp.data
    return data if isinstance(data, bytes) else str(data).encode()


def _json_or_none(body: Any) -> dict[str, Any] | None:
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        parsed = json.loads(body) if isinstance(body, str) else None
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _selector_string(selector: Mapping[str, Any]) -> str | None:
    parts = [f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items()]
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            parts.append(str(key))
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts) or None


def _owned_by_deployment(pod: Mapping[str, Any], deployment: str) -> bool:
    meta = pod.get("metadata") or {}
    owners = [o for o in meta.get("ownerReferences") or [] if o.get("kind") == "ReplicaSet"]
    if owners:
        rs = str(owners[0].get("name", ""))
        return rs.startswith(f"{deployment}-") and "-" not in rs[len(deployment) + 1 :]
    name = str(meta.get("name", ""))
    rest = name[len(deployment) + 1 :] if name.startswith(f"{deployment}-") else ""
    return bool(re.fullmatch(r"[a-z0-9]+-[a-z0-9]+", rest))


def _pod_preference(pod: Mapping[str, Any]) -> tuple[int, int, str]:
    """kubectl's choice for `deploy/NAME`: running and ready first, then the newest."""
    status = pod.get("status") or {}
    running = status.get("phase") == "Running"
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    created = str((pod.get("metadata") or {}).get("creationTimestamp") or "")
    # Newest first: complementing each character makes a later RFC 3339 timestamp sort lower.
    return (0 if running else 1, 0 if ready else 1, "".join(chr(0x10FFFF - ord(ch)) for ch in created))
