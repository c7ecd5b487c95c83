"""The Kubernetes API objects the lab's server answers with, built as the real API server builds them.

Pure: Status errors, a bad label or field selector as the 400 it is (the grammar: podnat.selectors),
the server-side Table kubectl asks for, discovery documents and the kubeconfig. No I/O; apiserver.py
does the serving.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from podnat import selectors
from podnat.selectors import FieldRequirement, LabelRequirement, SelectorError

SERVER_VERSION = {"major": "1", "minor": "32", "gitVersion": "v1.32.4-podnat-lab"}
CHANNEL_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")


# --- Status errors ----------------------------------------------------------------------------------


class ApiError(Exception):
    """A request the API refuses: answered as a v1 Status with this HTTP code."""

    def __init__(self, code: int, reason: str, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = dict(details) if details else None

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details:
            body["details"] = self.details
        body["code"] = self.code
        return body


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized")


def forbidden(
    user: str, verb: str, resource: str, namespace: str | None, name: str | None, group: str = ""
) -> ApiError:
    """The RBAC authorizer's refusal, naming the verb, the (sub)resource, its API group and the namespace."""
    kind = resource.split("/", maxsplit=1)[0]
    qualified = f"{kind}.{group}" if group else kind  # `events.events.k8s.io "x" is forbidden: ...`
    subject = f'{qualified} "{name}"' if name else qualified
    where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
    message = f'{subject} is forbidden: User "{user}" cannot {verb} resource "{resource}" in API group "{group}"{where}'
    # apimachinery's NewForbidden: details name the resource (as `kind`) and, outside the core group, its group
    details: dict[str, Any] = {**({"name": name} if name else {}), **({"group": group} if group else {}), "kind": kind}
    return ApiError(403, "Forbidden", message, details)


def not_found(kind: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{kind} "{name}" not found', {"name": name, "kind": kind})


def no_such_path() -> ApiError:
    return ApiError(
        404,
        "NotFound",
        "the server could not find the requested resource",
        {"causes": [{"reason": "UnexpectedServerResponse", "message": "404 page not found"}]},
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def method_not_allowed() -> ApiError:
    return ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")


def conflict(kind: str, name: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {kind} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
        {"name": name, "kind": kind},
    )


@dataclass(frozen=True, slots=True)
class Cause:
    """One field error of a 422: `field: Reason-phrase: detail`."""

    field: str
    reason: str  # FieldValueRequired, FieldValueDuplicate, FieldValueForbidden, FieldValueNotFound, ...
    detail: str

    @property
    def message(self) -> str:
        return f"{_PHRASES.get(self.reason, self.reason)}{': ' + self.detail if self.detail else ''}"


_PHRASES = {
    "FieldValueRequired": "Required value",
    "FieldValueDuplicate": "Duplicate value",
    "FieldValueForbidden": "Forbidden",
    "FieldValueNotFound": "Not found",
    "FieldValueInvalid": "Invalid value",
}


def invalid(kind: str, name: str, causes: list[Cause]) -> ApiError:
    """422 as the API server's validation reports it: `Pod "x" is invalid: field: Reason: detail`."""
    parts = [f"{c.field}: {c.message}" for c in causes]
    summary = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    return ApiError(
        422,
        "Invalid",
        f'{kind} "{name}" is invalid: {summary}',
        {
            "name": name,
            "kind": kind,
            "causes": [{"reason": c.reason, "message": c.message, "field": c.field} for c in causes],
        },
    )


def exec_status(returncode: int, command: list[str]) -> dict[str, Any]:
    """Channel 3 after the command ended, in the kubelet's shape (no kind/apiVersion)."""
    if returncode == 0:
        return {"metadata": {}, "status": "Success"}
    return {
        "metadata": {},
        "status": "Failure",
        "message": "command terminated with non-zero exit code: error executing command "
        f"[{' '.join(command)}], exit code {returncode}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(returncode)}]},
    }


def exec_internal_error(message: str) -> dict[str, Any]:
    """Channel 3 when the runtime could not start the command (containerd's words)."""
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"Internal error occurred: {message}",
        "reason": "InternalError",
        "details": {"causes": [{"message": message}]},
        "code": 500,
    }


# --- RBAC: the rules of Roles and ClusterRoles, bound to a subject -----------------------------------


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """One rule of a (Cluster)Role, granted cluster-wide (`namespace` None: a ClusterRoleBinding) or in
    one namespace (a RoleBinding). `*` matches anything, as in Kubernetes."""

    api_groups: frozenset[str]
    resources: frozenset[str]  # "pods", "pods/exec", "*"
    verbs: frozenset[str]
    resource_names: frozenset[str] = frozenset()  # empty: any name
    namespace: str | None = None

    def allows(self, verb: str, group: str, resource: str, namespace: str | None, name: str | None) -> bool:
        if self.namespace is not None and namespace != self.namespace:
            return False
        sub = resource.partition("/")[2]
        return (
            bool({"*", verb} & self.verbs)
            and bool({"*", group} & self.api_groups)
            and bool({"*", resource, *([f"*/{sub}"] if sub else [])} & self.resources)
            and (not self.resource_names or name in self.resource_names)
        )


def allowed(
    rules: Sequence[PolicyRule], verb: str, group: str, resource: str, namespace: str | None, name: str | None
) -> bool:
    return any(rule.allows(verb, group, resource, namespace, name) for rule in rules)


def service_account_rules(documents: Sequence[Mapping[str, Any]], namespace: str, name: str) -> tuple[PolicyRule, ...]:
    """The rules RBAC grants the ServiceAccount `namespace/name`, from manifests (Roles, ClusterRoles and
    the bindings naming it): what the API server would authorise its token for, and nothing else."""
    return bound_rules(
        documents,
        lambda s, where: (
            s.get("kind") == "ServiceAccount" and s.get("name") == name and s.get("namespace", where) == namespace
        ),
    )


def group_rules(
    documents: Sequence[Mapping[str, Any]], group: str, bindings: Collection[tuple[str, str]] | None = None
) -> tuple[PolicyRule, ...]:
    """The rules RBAC grants a member of `group`, from the bindings naming that Group (only the
    (kind, name) pairs in `bindings` when given: the ones a user was told to apply)."""
    return bound_rules(
        documents,
        lambda s, where: s.get("kind") == "Group" and s.get("name") == group,
        bindings,
    )


def bound_rules(
    documents: Sequence[Mapping[str, Any]],
    names_subject: Callable[[Mapping[str, Any], str | None], bool],
    bindings: Collection[tuple[str, str]] | None = None,
) -> tuple[PolicyRule, ...]:
    """The rules of the (Cluster)Roles that the (Cluster)RoleBindings among `documents` grant to a subject
    `names_subject(subject, binding's namespace)` accepts; a RoleBinding's grant stays in its namespace."""
    by_ref = {
        (str(d.get("kind")), (d.get("metadata") or {}).get("namespace"), (d.get("metadata") or {}).get("name")): d
        for d in documents
        if d.get("kind") in ("Role", "ClusterRole")
    }
    out: list[PolicyRule] = []
    for binding in documents:
        kind = binding.get("kind")
        if kind not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if bindings is not None and (str(kind), (binding.get("metadata") or {}).get("name")) not in bindings:
            continue
        where = (binding.get("metadata") or {}).get("namespace") if kind == "RoleBinding" else None
        if not any(names_subject(s, where) for s in binding.get("subjects") or []):
            continue
        ref = binding.get("roleRef") or {}
        role = by_ref.get((str(ref.get("kind")), where if ref.get("kind") == "Role" else None, ref.get("name")))
        for rule in (role or {}).get("rules") or []:
            out.append(
                PolicyRule(
                    frozenset(rule.get("apiGroups") or ()),
                    frozenset(rule.get("resources") or ()),
                    frozenset(rule.get("verbs") or ()),
                    frozenset(rule.get("resourceNames") or ()),
                    where,
                )
            )
    return tuple(out)


# --- selectors (the grammar is podnat.selectors, shared with the node agent) ----------------------


def parse_label_selector(text: str | None) -> list[LabelRequirement]:
    """kubectl's -l grammar; a bad selector is the API server's 400."""
    try:
        return selectors.parse_label_selector(text)
    except SelectorError as err:
        raise bad_request(str(err)) from None


def parse_field_selector(
    text: str | None, fields: Mapping[str, Callable[[Mapping[str, Any]], str]] = selectors.POD_FIELDS
) -> list[FieldRequirement]:
    """`metadata.name=x,status.phase!=Failed`; a field the kind does not index is a 400, as in Kubernetes."""
    try:
        return selectors.parse_field_selector(text, fields)
    except SelectorError as err:
        raise bad_request(str(err)) from None


# --- the Table kubectl prints -----------------------------------------------------------------------

POD_COLUMNS = (
    ("Name", "string", "name", 0, "Name must be unique within a namespace."),
    ("Ready", "string", "", 0, "The aggregate readiness state of this pod for accepting traffic."),
    ("Status", "string", "", 0, "The aggregate status of the containers in this pod."),
    ("Restarts", "string", "", 0, "The number of times the containers in this pod have been restarted."),
    (
        "Age",
        "string",
        "",
        0,
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    ),
    ("IP", "string", "", 1, "IP address allocated to the pod. Routable at least within the cluster."),
    ("Node", "string", "", 1, "NodeName is a request to schedule this pod onto a specific node."),
    ("Nominated Node", "string", "", 1, "nominatedNodeName is set when this pod preempts other pods."),
    ("Readiness Gates", "string", "", 1, "If specified, all readiness gates will be evaluated."),
)


def wants_table(accept: str) -> bool:
    return any("as=Table" in part for part in accept.split(","))


def human_duration(seconds: float) -> str:
    """apimachinery's HumanDuration: `45s`, `5m3s`, `12m`, `3h5m`, `20h`, `3d4h`, `40d`, `2y30d`."""
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m" if s % 60 == 0 else f"{minutes}m{s % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def _age(pod: Mapping[str, Any], now: datetime.datetime) -> str:
    created = (pod.get("metadata") or {}).get("creationTimestamp")
    if not created:
        return "<unknown>"
    try:
        when = datetime.datetime.fromisoformat(str(created).replace("Z", "+00:00"))
    except ValueError:
        return "<unknown>"
    return human_duration((now - when).total_seconds())


def pod_row_cells(pod: Mapping[str, Any], now: datetime.datetime) -> list[Any]:
    """NAME READY STATUS RESTARTS AGE IP NODE NOMINATED-NODE READINESS-GATES, as kubectl shows a pod."""
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    total = len(spec.get("containers") or [])
    ready = sum(1 for s in statuses if s.get("ready"))
    restarts = sum(int(s.get("restartCount") or 0) for s in statuses)
    reason = status.get("reason") or status.get("phase") or "Unknown"
    for s in statuses:
        state = s.get("state") or {}
        detail = state.get("waiting") or state.get("terminated")
        if detail and detail.get("reason"):
            reason = detail["reason"]
    if meta.get("deletionTimestamp"):
        reason = "Terminating"
    gates = spec.get("readinessGates") or []
    return [
        meta.get("name"),
        f"{ready}/{total}",
        reason,
        str(restarts),
        _age(pod, now),
        status.get("podIP") or "<none>",
        spec.get("nodeName") or "<none>",
        status.get("nominatedNodeName") or "<none>",
        f"0/{len(gates)}" if gates else "<none>",
    ]


def pod_table(
    pods: Sequence[Mapping[str, Any]], resource_version: str, include_object: str, now: datetime.datetime
) -> dict[str, Any]:
    """A meta.k8s.io/v1 Table of pods; rows carry PartialObjectMetadata unless includeObject=Object."""
    rows = []
    for pod in pods:
        if include_object == "Object":
            obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", **pod}
        elif include_object == "None":
            obj = {}
        else:
            obj = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": pod.get("metadata") or {},
            }
        row: dict[str, Any] = {"cells": pod_row_cells(pod, now)}
        if obj:
            row["object"] = obj
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": [
            {"name": n, "type": t, "format": f, "description": d, "priority": p} for n, t, f, p, d in POD_COLUMNS
        ],
        "rows": rows,
    }


# --- Events: one store, two views -------------------------------------------------------------------


def core_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """The core/v1 view of an events.k8s.io/v1 Event, converted as the API server converts it (both
    APIs serve the same objects): `regarding` -> `involvedObject`, `note` -> `message`,
    `reportingController` -> `reportingComponent`, the deprecated* fields to their old names. What
    `kubectl describe` lists (by involvedObject.*) and prints (type, reason, age from eventTime or the
    series, from, message)."""
    out: dict[str, Any] = {
        "kind": "Event",
        "apiVersion": "v1",
        "metadata": dict(event.get("metadata") or {}),
        "involvedObject": dict(event.get("regarding") or {}),
        "reason": event.get("reason", ""),
        "message": event.get("note", ""),
        "source": dict(event.get("deprecatedSource") or {}),
        "firstTimestamp": event.get("deprecatedFirstTimestamp"),
        "lastTimestamp": event.get("deprecatedLastTimestamp"),
        "type": event.get("type", ""),
        "eventTime": event.get("eventTime"),
        "reportingComponent": event.get("reportingController", ""),
        "reportingInstance": event.get("reportingInstance", ""),
    }
    if event.get("deprecatedCount"):
        out["count"] = event["deprecatedCount"]
    for key in ("series", "action", "related"):
        if event.get(key) is not None:
            out[key] = event[key]
    return out


# --- discovery and kubeconfig -----------------------------------------------------------------------


def api_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


EVENTS_VERSION = {"groupVersion": "events.k8s.io/v1", "version": "v1"}


def api_group_list() -> dict[str, Any]:
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [events_group()]}


def events_group() -> dict[str, Any]:
    return {"name": "events.k8s.io", "versions": [EVENTS_VERSION], "preferredVersion": EVENTS_VERSION}


def events_v1_resources() -> dict[str, Any]:
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "events.k8s.io/v1",
        "resources": [
            {
                "name": "events",
                "singularName": "event",
                "namespaced": True,
                "kind": "Event",
                "verbs": ["create", "get", "list", "patch"],
                "shortNames": ["ev"],
            }
        ],
    }


def core_v1_resources() -> dict[str, Any]:
    def resource(name: str, kind: str, verbs: list[str], namespaced: bool = True, **extra: Any) -> dict[str, Any]:
        singular = extra.pop("singularName", "")
        return {"name": name, "singularName": singular, "namespaced": namespaced, "kind": kind, "verbs": verbs, **extra}

    return {
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            resource(
                "namespaces",
                "Namespace",
                ["get", "list"],
                namespaced=False,
                singularName="namespace",
                shortNames=["ns"],
            ),
            resource("nodes", "Node", ["get", "list"], namespaced=False, singularName="node", shortNames=["no"]),
            resource("pods", "Pod", ["get", "list"], singularName="pod", shortNames=["po"], categories=["all"]),
            resource("events", "Event", ["get", "list"], singularName="event", shortNames=["ev"]),
            resource("pods/ephemeralcontainers", "Pod", ["get", "patch"]),
            resource("pods/exec", "PodExecOptions", ["create", "get"]),
            resource("pods/log", "Pod", ["get"]),
        ],
    }


def node(name: str, address: str) -> dict[str, Any]:
    """The lab's one node (this machine), Ready, as `kubectl get nodes` lists it."""
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": "00000000-0000-0000-0000-00000000de0e",
            "resourceVersion": "1",
            "creationTimestamp": "2025-04-22T00:00:00Z",
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
        },
        "spec": {},
        "status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
            "addresses": [{"type": "InternalIP", "address": address}, {"type": "Hostname", "address": name}],
        },
    }


def version_info() -> dict[str, Any]:
    return {
        **SERVER_VERSION,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-04-22T00:00:00Z",
        "goVersion": "go1.23.8",
        "compiler": "gc",
        "platform": "linux/amd64",
    }


def kubeconfig(server: str, ca_pem: bytes, token: str, user: str, namespace: str) -> dict[str, Any]:
    import base64

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [
            {
                "name": "podnat-lab",
                "cluster": {"server": server, "certificate-authority-data": base64.b64encode(ca_pem).decode()},
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [
            {"name": "podnat-lab", "context": {"cluster": "podnat-lab", "user": user, "namespace": namespace}}
        ],
        "current-context": "podnat-lab",
    }
