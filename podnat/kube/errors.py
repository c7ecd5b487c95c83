"""Every failure of the Kubernetes API, exec or a pod's state, as ONE line that says what to do.

No `kubernetes` import here: client exceptions are recognised by shape (`status`, `reason`, `body`)
and class name, so this module stays importable by the offline commands and by the tests.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Any

from podnat.facts import Failure, SourceError

# The port's error and its kinds live with the port (podnat/facts.py); the adapter's name for them stays.
KubeSourceError = SourceError

__all__ = ["Action", "Failure", "KubeSourceError", "SourceError", "translate"]


@dataclass(frozen=True, slots=True)
class Action:
    """What podnat was doing when a call failed, in RBAC terms."""

    verb: str  # get, list, create, patch
    resource: str  # pods, pods/exec, pods/log, pods/ephemeralcontainers, deployments
    namespace: str | None = None
    name: str | None = None
    container: str | None = None

    @property
    def where(self) -> str:
        return f"in namespace {self.namespace}" if self.namespace else "cluster-wide"

    @property
    def target(self) -> str:
        kind = self.resource.split("/")[0].rstrip("s")
        return f"{kind} {self.namespace}/{self.name}" if self.name else f"{self.resource} {self.where}"


def _remedy(resource: str) -> str:
    if resource == "pods/exec":
        return "grant it (manifests/rbac/) or use --source init-log"
    if resource == "pods/ephemeralcontainers":
        return "grant it (ClusterRole podnat-debug-container, manifests/rbac/) or read without a debug container"
    return "grant it (manifests/rbac/)"


def no_kubeconfig(detail: str) -> KubeSourceError:
    return KubeSourceError(
        Failure.NO_KUBECONFIG,
        f"no kubeconfig: {detail}; pass --kubeconfig FILE or set KUBECONFIG",
    )


def bad_kubeconfig(detail: str, context: str | None) -> KubeSourceError:
    detail = " ".join(detail.split())
    if context and context in detail:
        return KubeSourceError(
            Failure.NO_KUBECONFIG,
            f"kubeconfig has no context {context!r}: list them with `kubectl config get-contexts`",
        )
    return KubeSourceError(Failure.NO_KUBECONFIG, f"cannot use the kubeconfig: {detail[:200]}")


# --- API exceptions -------------------------------------------------------------------------------

_HANDSHAKE = re.compile(r"Handshake status (\d{3})")
_RBAC = re.compile(r'cannot (\w+) resource "([^"]+)" in API group "([^"]*)"(?: in the namespace "([^"]+)")?')


def parse_handshake(reason: str) -> tuple[int, dict[str, Any] | None]:
    """(HTTP status, Status JSON) from an exec handshake failure's `ApiException(status=0).reason`.

    websocket-client formats it as `Handshake status 403 Forbidden -+-+- {headers} -+-+- b'{...}'`."""
    m = _HANDSHAKE.search(reason)
    if not m:
        return 0, None
    body_text = reason.rsplit(" -+-+- ", 1)[-1].strip() if " -+-+- " in reason else ""
    if body_text.startswith(("b'", 'b"')):
        try:
            raw = ast.literal_eval(body_text)
            body_text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        except (ValueError, SyntaxError):
            body_text = body_text[2:-1]
    return int(m.group(1)), _status_json(body_text)


def _status_json(body: Any) -> dict[str, Any] | None:
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str) or not body.strip().startswith("{"):
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _class_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception, what caused it, and urllib3's `.reason` inside MaxRetryError."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        cur = todo.pop(0)
        if cur is None or any(cur is s for s in seen):
            continue
        seen.append(cur)
        reason = getattr(cur, "reason", None)
        todo.extend([cur.__cause__, cur.__context__, reason if isinstance(reason, BaseException) else None])
    return seen


def translate(exc: BaseException, action: Action, server: str) -> KubeSourceError:
    """The one-line error for anything a client call raised."""
    if isinstance(exc, KubeSourceError):
        return exc
    names = _class_names(exc)
    if "ApiException" in names:
        status = int(getattr(exc, "status", 0) or 0)
        reason = str(getattr(exc, "reason", "") or "")
        body = _status_json(getattr(exc, "body", None))
        if status == 0:
            status, body = parse_handshake(reason)
            if status == 0:  # the WebSocket never got an HTTP answer: a connection problem
                return _connection(exc, server, reason)
        return from_status(status, body, action, server)
    return _connection(exc, server, str(exc))


def from_status(status: int, body: dict[str, Any] | None, action: Action, server: str) -> KubeSourceError:
    """Map an HTTP status and its Status JSON to the one-line error."""
    message = str((body or {}).get("message") or "").strip()
    short = " ".join(message.split())[:300]
    if "violates PodSecurity" in message:
        level = re.search(r'violates PodSecurity "([^"]+)"', message)
        return KubeSourceError(
            Failure.POD_SECURITY,
            f"Pod Security admission ({level.group(1) if level else 'the namespace level'}) rejected "
            f"podnat's debug container in {action.namespace} (it needs uid 0, NET_ADMIN and NET_RAW): "
            "use --source init-log, or relabel the namespace pod-security.kubernetes.io/enforce=privileged",
        )
    if status == 401:
        return KubeSourceError(
            Failure.UNAUTHORIZED,
            f"the API server at {server} rejected the credentials (401 Unauthorized): "
            "log in again or check the user of your kubeconfig context",
        )
    if status == 403:
        if "admission webhook" in message or "denied the request" in message:
            return KubeSourceError(
                Failure.EXEC_DENIED,
                f"a policy denied {action.verb} {action.resource} on {action.target}: {short}; "
                "ask for an exception or use --source init-log",
            )
        m = _RBAC.search(message)
        verb, resource = (m.group(1), m.group(2)) if m else (action.verb, action.resource)
        where = f"in namespace {m.group(4)}" if m and m.group(4) else action.where
        if m and not m.group(4) and action.namespace is None:
            where = "cluster-wide"
        return KubeSourceError(Failure.FORBIDDEN, f"cannot {verb} {resource} {where}: {_remedy(resource)}")
    if status == 404:
        kind = action.resource.split("/")[0]
        if kind == "pods" and action.name:
            return KubeSourceError(
                Failure.NOT_FOUND,
                f"pod {action.name} not found in namespace {action.namespace}: "
                "check the name and -n/--namespace (`kubectl get pods -n NS`)",
            )
        if kind == "namespaces" and action.name:
            return KubeSourceError(
                Failure.NOT_FOUND,
                f"namespace {action.name} does not exist: check -n/--namespace (`kubectl get namespaces`)",
            )
        if action.name:
            return KubeSourceError(Failure.NOT_FOUND, f"{kind.rstrip('s')} {action.namespace}/{action.name} not found")
        return KubeSourceError(Failure.NOT_FOUND, f"namespace {action.namespace} not found")
    if status == 400 and action.resource in ("pods/exec", "pods/log"):
        if "is not valid for pod" in message or "container not found" in message:
            return KubeSourceError(
                Failure.PROXY_NOT_READY,
                f"{action.target} has no running container {action.container}: {short}",
            )
        if "ContainerCreating" in message or "PodInitializing" in message or "waiting to start" in message:
            return KubeSourceError(
                Failure.POD_NOT_RUNNING,
                f"{action.target} is still starting ({short}): wait for it, then rerun",
            )
    if status in (408, 504):
        return KubeSourceError(
            Failure.TIMEOUT,
            f"the API server at {server} timed out on {action.verb} {action.resource} ({short or status}): "
            "rerun, or raise --request-timeout",
        )
    if status == 429:
        return KubeSourceError(
            Failure.API_ERROR,
            f"the API server at {server} is throttling podnat (429): lower --concurrency and rerun",
        )
    return KubeSourceError(
        Failure.API_ERROR,
        f"{action.verb} {action.resource} on {action.target} failed ({status}): {short or 'no message'}",
    )


def _connection(exc: BaseException, server: str, text: str) -> KubeSourceError:
    chain = _chain(exc)
    names = set().union(*(_class_names(e) for e in chain))
    blob = " ".join(str(e) for e in chain) + " " + text
    # Checked first: urllib3's NewConnectionError is (oddly) a ConnectTimeoutError.
    if "ConnectionRefusedError" in names or "Connection refused" in blob:
        return KubeSourceError(
            Failure.UNREACHABLE,
            f"cannot reach the API server at {server} (connection refused): is the cluster up? "
            "check --context/--kubeconfig",
        )
    if "NameResolutionError" in names or re.search(
        r"Name or service not known|nodename nor servname|Temporary failure in name resolution|getaddrinfo",
        blob,
    ):
        return KubeSourceError(
            Failure.UNREACHABLE,
            f"cannot resolve the API server host of {server}: check the server in your kubeconfig",
        )
    if names & {"SSLError", "SSLCertVerificationError", "SSLZeroReturnError"} or re.search(
        r"CERTIFICATE_VERIFY_FAILED|WRONG_VERSION_NUMBER|SSL|certificate", blob
    ):
        detail = re.search(r"\[SSL: ([A-Z_]+)\]|certificate verify failed: ([^()\]]+)", blob)
        why = next((g for g in detail.groups() if g), "").strip() if detail else "handshake failed"
        return KubeSourceError(
            Failure.UNREACHABLE,
            f"TLS to the API server at {server} failed ({why}): check certificate-authority and the "
            "server URL in your kubeconfig",
        )
    timeouts = {"TimeoutError", "ReadTimeoutError", "ConnectTimeoutError", "WebSocketTimeoutException"}
    if names & timeouts or "timed out" in blob:
        return KubeSourceError(
            Failure.TIMEOUT,
            f"the API server at {server} did not answer in time: rerun, or raise --request-timeout",
        )
    return KubeSourceError(
        Failure.UNREACHABLE,
        f"cannot reach the API server at {server} ({' '.join(text.split())[:160]}): "
        "check --context/--kubeconfig and the network",
    )
