"""`KubeCluster`: the cluster port (podnat.facts.Cluster) against a real API server, and nothing else.

Each method makes its calls through the official client (configuration, authentication, the API calls
themselves) and turns whatever they raise into one `SourceError` with kube/errors.py. Objects are read
as raw JSON (`_preload_content=False` and json.loads): podnat reads pods as dicts, so the client's
model classes are never built. Which source to try and what a capture printed are podnat/sources.py's.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from podnat.facts import DebugContainer, ExecResult, PodFacts, PodRef
from podnat.kube.agentclient import AGENT_SELECTOR, AgentReader
from podnat.kube.client import KubeClient
from podnat.kube.errors import Action, Failure, KubeSourceError, translate

_DEPLOY_PREFIXES = ("deploy/", "deployment/", "deployments/", "deployment.apps/", "deployments.apps/")
_CANNOT_START = (
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
)


class KubeCluster:
    """The Cluster port over one KubeClient; safe to share between threads (each exec has its own client)."""

    def __init__(
        self,
        client: KubeClient,
        *,
        debug_wait: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.timeout = client.options.timeout
        self.debug_wait = debug_wait
        self._sleep = sleep
        self.agents = AgentReader(client)

    @property
    def server(self) -> str:
        return self.client.server

    # --- pods and namespaces ----------------------------------------------------------------------

    def list_pods(
        self, namespace: str | None, selector: str | None = None, node: str | None = None
    ) -> list[dict[str, Any]]:
        action = Action("list", "pods", namespace)
        kwargs: dict[str, Any] = {"_preload_content": False, "_request_timeout": self.timeout}
        if selector:
            kwargs["label_selector"] = selector
        if node:
            kwargs["field_selector"] = f"spec.nodeName={node}"
        try:
            if namespace is None:
                resp = self.client.core.list_pod_for_all_namespaces(**kwargs)
            else:
                resp = self.client.core.list_namespaced_pod(namespace, **kwargs)
            items = json.loads(_body(resp)).get("items") or []
        except Exception as exc:
            raise translate(exc, action, self.client.server) from exc
        # A server may ignore the field selector: the node is checked here too.
        return [dict(item) for item in items if not node or (item.get("spec") or {}).get("nodeName") == node]

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

    def get_namespace(self, name: str) -> dict[str, Any]:
        try:
            resp = self.client.core.read_namespace(name, _preload_content=False, _request_timeout=self.timeout)
            return dict(json.loads(_body(resp)))
        except Exception as exc:
            raise translate(exc, Action("get", "namespaces", None, name), self.client.server) from exc

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

    # --- logs -------------------------------------------------------------------------------------

    def read_log(self, ref: PodRef, container: str) -> str:
        try:
            resp = self.client.core.read_namespaced_pod_log(
                ref.name, ref.namespace, container=container, _preload_content=False, _request_timeout=self.timeout
            )
            return _body(resp).decode("utf-8", "replace")
        except Exception as exc:
            action = Action("get", "pods/log", ref.namespace, ref.name, container)
            raise translate(exc, action, self.client.server) from exc

    # --- the debug container ----------------------------------------------------------------------

    def add_debug_container(self, pod: Mapping[str, Any], container: Mapping[str, Any]) -> DebugContainer:
        meta = pod.get("metadata") or {}
        ref = PodRef(str(meta.get("namespace") or "default"), str(meta.get("name") or "?"))
        name = str(container["name"])
        existing = any(c.get("name") == name for c in (pod.get("spec") or {}).get("ephemeralContainers") or [])
        if not existing:
            body = {"spec": {"ephemeralContainers": [dict(container)]}}
            try:
                self.client.core.patch_namespaced_pod_ephemeralcontainers(
                    ref.name, ref.namespace, body, _preload_content=False, _request_timeout=self.timeout
                )
            except Exception as exc:
                action = Action("patch", "pods/ephemeralcontainers", ref.namespace, ref.name)
                raise translate(exc, action, self.client.server) from exc
        if not (existing and _running(_ephemeral_status(pod, name))):  # the pod just read says it runs: no wait
            self._wait_running(ref, name)
        return DebugContainer(name, added=not existing)

    def _wait_running(self, ref: PodRef, name: str) -> None:
        deadline = time.monotonic() + self.debug_wait
        delay = 0.2
        while True:
            status = _ephemeral_status(self._read_pod(ref.namespace, ref.name), name)
            state = (status or {}).get("state") or {}
            if _running(status):
                return
            if "terminated" in state:
                why = state["terminated"].get("reason") or f"exit {state['terminated'].get('exitCode')}"
                raise KubeSourceError(
                    Failure.DEBUG_CONTAINER,
                    f"ephemeral container {name} in pod {ref} has exited ({why}) and cannot be restarted: "
                    "use --source init-log (or recreate the pod)",
                )
            waiting = state.get("waiting") or {}
            if waiting.get("reason") in _CANNOT_START:
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

    # --- the node agent ---------------------------------------------------------------------------

    def agent_facts(self, pod: Mapping[str, Any]) -> PodFacts | None:
        return self.agents.facts_for(pod)

    def agent_absent(self, pod: Mapping[str, Any]) -> str:
        del pod
        return self.agents._agents_error or (
            f"no running pod labelled {AGENT_SELECTOR} in namespace {self.agents.namespace}"
        )

    def prefetch(self, pods: list[dict[str, Any]], lean: bool = False) -> None:
        """Before reading many pods: ask each node's agent once for all of them (`lean`: AgentReader's)."""
        self.agents.prefetch(pods, lean)


# --- helpers of the calls above ---------------------------------------------------------------------


def _running(status: Mapping[str, Any] | None) -> bool:
    return "running" in ((status or {}).get("state") or {})


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
