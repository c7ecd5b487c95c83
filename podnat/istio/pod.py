"""What a pod *is* to Istio, read once: the raw pod JSON typed, and `read_pod(raw) -> PodInfo`. Pure.

Stable API:
  RawPod, RawContainer, ...       the Pod (or workload) JSON as the API server and `kubectl get -o json`
                                  print it, typed once (TypedDicts: a reader's map, not a validation)
  MeshMode                        sidecar / no-sidecar / ambient / no-capture: the one vocabulary
  read_pod(raw, namespace_labels=None) -> PodInfo
                                  a Pod, or a Deployment/ReplicaSet/StatefulSet/DaemonSet/Job (its pod
                                  template), -> its place in the mesh, its proxy and istio-init
                                  containers, app ports, proxy identity, release, interception config
  with_namespace_labels(pod, labels)  the same PodInfo as its namespace's labels enrol it (ambient)
  pod_info(pod) -> PodInfo        a PodInfo as it is, anything else read: adapters call it on what the
                                  use case hands them, so a pod is read once per inspect
  PodSpecError(InputError)        a value in the spec podnat cannot read (a port, a CIDR, a uid)

As kopf's bodies.py does for its resources, the raw JSON is typed once and every part of podnat reads
the pod through `PodInfo` (which is also a read-only Mapping over the raw JSON, for code that wants a
field PodInfo does not name). The mesh mode is decided here and nowhere else:

- an `istio-proxy` container, or a native sidecar (an init container named istio-proxy with
  `restartPolicy: Always`), makes a sidecar pod; with `sidecar.istio.io/interceptionMode: NONE` (or
  istio-init `-m NONE`) it captures nothing (NO_CAPTURE);
- without one, a pod is ambient when istio-cni annotated it `ambient.istio.io/redirection: enabled`, or
  when it is enrolled (the label `istio.io/dataplane-mode=ambient` on the pod or, when given, on its
  namespace) and not opted out (`istio.io/dataplane-mode=none` on the pod); enrolled but not annotated
  yet, it is still ambient, with a note: istio-cni has not set up its capture.

The interception config of a sidecar pod comes from istio-init's args and env, else (istio-cni) from the
annotations, istio-proxy's env and runAs ids and the CNI defaults (config.InterceptionConfig).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypedDict

from podnat.istio.config import (
    ANN_AMBIENT,
    ANN_INTERCEPTION_MODE,
    ANN_STATUS,
    ConfigSource,
    InterceptionConfig,
    InterceptionMode,
    IstioRelease,
    native_nftables_flag,
    nftables_notes,
    release_from_image,
)
from podnat.istio.flows import Identity
from podnat.istio.mesh import MeshMode
from podnat.netfilter.errors import InputError

PROXY_CONTAINER = "istio-proxy"
INIT_CONTAINER = "istio-init"
CNI_VALIDATION = "istio-validation"
DEFAULT_ADMIN_PORT = 15000
DEFAULT_APP_PORTS = (9080,)  # podnat assumes Bookinfo's port when the app declares none

ANN_PROXY_CONFIG = "proxy.istio.io/config"
LABEL_DATAPLANE_MODE = "istio.io/dataplane-mode"
WORKLOAD_KINDS = ("Pod", "Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job")


# --- the raw JSON, typed once --------------------------------------------------------------------------


class RawEnvVar(TypedDict, total=False):
    """One `env` entry (valueFrom cannot be resolved offline)."""

    name: str
    value: str
    valueFrom: dict[str, Any]


class RawContainerPort(TypedDict, total=False):
    """One `ports` entry of a container."""

    name: str
    containerPort: int
    protocol: str


class RawSecurityContext(TypedDict, total=False):
    """The fields of a (pod or container) securityContext podnat reads."""

    runAsUser: int
    runAsGroup: int
    runAsNonRoot: bool
    capabilities: dict[str, Any]


class RawContainer(TypedDict, total=False):
    """A container (or init container) of a pod spec."""

    name: str
    image: str
    command: list[str]
    args: list[str]
    env: list[RawEnvVar]
    ports: list[RawContainerPort]
    securityContext: RawSecurityContext
    restartPolicy: str  # init containers: "Always" makes a native sidecar


class RawObjectMeta(TypedDict, total=False):
    """metadata."""

    name: str
    namespace: str
    uid: str
    labels: dict[str, str]
    annotations: dict[str, str]
    deletionTimestamp: str
    ownerReferences: list[dict[str, Any]]


class RawPodSpec(TypedDict, total=False):
    """A pod's spec (or a workload's pod template spec)."""

    nodeName: str
    containers: list[RawContainer]
    initContainers: list[RawContainer]
    ephemeralContainers: list[dict[str, Any]]
    securityContext: RawSecurityContext


class RawPodTemplate(TypedDict, total=False):
    """A workload's `spec.template`."""

    metadata: RawObjectMeta
    spec: RawPodSpec


class RawWorkloadSpec(TypedDict, total=False):
    """A Deployment/ReplicaSet/StatefulSet/DaemonSet/Job's spec: the part podnat reads."""

    selector: dict[str, Any]
    template: RawPodTemplate


class RawPodIP(TypedDict):
    """One `status.podIPs` entry."""

    ip: str


class RawContainerStatus(TypedDict, total=False):
    """One entry of `status.containerStatuses` (and its init/ephemeral twins)."""

    name: str
    ready: bool
    state: dict[str, Any]


class RawPodStatus(TypedDict, total=False):
    """A pod's status: the fields podnat reads."""

    phase: str
    podIP: str
    podIPs: list[RawPodIP]
    containerStatuses: list[RawContainerStatus]
    initContainerStatuses: list[RawContainerStatus]
    ephemeralContainerStatuses: list[RawContainerStatus]


class RawPod(TypedDict, total=False):
    """A Pod as the API returns it (camelCase JSON)."""

    apiVersion: str
    kind: str
    metadata: RawObjectMeta
    spec: RawPodSpec
    status: RawPodStatus


class RawWorkload(TypedDict, total=False):
    """A workload whose pod template podnat reads (`kubectl get deploy NAME -o yaml`)."""

    apiVersion: str
    kind: str
    metadata: RawObjectMeta
    spec: RawWorkloadSpec


# --- what podnat reads from it ---------------------------------------------------------------------------


class PodSpecError(InputError):
    """A value in a pod spec that podnat cannot read (a ValueError, as every InputError); the message names
    the pod and says what could not be read."""


@dataclass(frozen=True, slots=True)
class Container:
    """One container of the pod spec, as podnat reads it."""

    name: str
    image: str = ""
    argv: tuple[str, ...] = ()  # command + args
    env: tuple[tuple[str, str], ...] = ()  # literal values only (valueFrom is not resolvable offline)
    tcp_ports: tuple[int, ...] = ()  # declared TCP containerPorts
    run_as_user: int | None = None  # the container's own securityContext
    run_as_group: int | None = None
    native_sidecar: bool = False  # an init container with restartPolicy Always

    @property
    def env_map(self) -> dict[str, str]:
        return dict(self.env)


@dataclass(frozen=True, slots=True, eq=False)
class PodInfo(Mapping[str, Any]):
    """One pod, read once: its place in the mesh and what Istio meant for it (a Mapping over the raw JSON)."""

    raw: Mapping[str, Any]
    namespace: str  # "" when the object has none (a manifest file)
    name: str
    kind: str
    mesh: MeshMode
    reason: str  # how the mode and config were read, for the user
    notes: tuple[str, ...] = ()
    proxy: Container | None = None  # istio-proxy (container or native sidecar)
    init: Container | None = None  # istio-init
    validation: Container | None = None  # istio-validation (istio-cni pods)
    app: Container | None = None  # the first container that is not istio-proxy
    app_ports: tuple[int, ...] = DEFAULT_APP_PORTS
    proxy_identity: Identity | None = None  # sidecar pods: the uid/gid Envoy's sockets carry
    release: IstioRelease | None = None  # from the proxy image; None without a proxy
    config: InterceptionConfig | None = None  # sidecar pods only
    admin_port: int = DEFAULT_ADMIN_PORT  # `proxyAdminPort` of proxy.istio.io/config
    uses_istio_cni: bool = False  # the rules were written by istio-cni, not istio-init
    annotations: Mapping[str, str] | None = None
    labels: Mapping[str, str] | None = None
    node: str | None = None
    pod_ip: str | None = None
    pod_ips: tuple[str, ...] = ()  # status.podIPs (two on a dual-stack pod), else podIP
    deletion_timestamp: str | None = None

    # A read-only Mapping over the raw JSON: code that wants a field PodInfo does not name reads it there.
    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)

    @property
    def ref(self) -> str:
        return f"{self.namespace or 'default'}/{self.name or '?'}"

    @property
    def label(self) -> str:
        """Where the intent came from, with the notes: e.g. "istio-init args; istio-proxy is a native sidecar"."""
        return self.reason + "".join(f"; {note}" for note in self.notes)

    @property
    def mesh_note(self) -> str:
        """What a reader of this pod's facts should know first ("" for a sidecar pod with capture)."""
        if self.mesh is MeshMode.AMBIENT:
            return f"pod {self.ref} is in ambient mode (ztunnel captures): no sidecar rules"
        if self.mesh is MeshMode.NO_SIDECAR:
            return f"pod {self.ref} has no istio-proxy sidecar: nothing to explain"
        if self.mesh is MeshMode.NO_CAPTURE:
            return f"pod {self.ref} has interceptionMode NONE: istio-proxy captures no traffic"
        return ""

    @property
    def tproxy_route_table(self) -> int | None:
        """The table of a TPROXY pod's `ip rule fwmark ... lookup TABLE` (-r); None if not TPROXY."""
        config = self.config
        return config.tproxy_route_table if config is not None and config.mode is InterceptionMode.TPROXY else None

    @property
    def tproxy(self) -> bool:
        return self.config is not None and self.config.mode is InterceptionMode.TPROXY

    @property
    def dns_capture_requested(self) -> bool:
        """Was istio-init (or istio-cni) asked to capture DNS, whether or not it knew a nameserver?"""
        return self.config is not None and self.config.redirect_dns

    @property
    def ambient_redirected(self) -> bool:
        """istio-cni annotated the pod: its in-pod capture is set up."""
        return (self.annotations or {}).get(ANN_AMBIENT) == "enabled"

    @property
    def namespace_decides(self) -> bool:
        """Only its namespace's labels can tell whether this pod is in ambient mode: no sidecar, no
        annotation from istio-cni and no istio.io/dataplane-mode label of its own."""
        return self.proxy is None and not self.ambient_redirected and LABEL_DATAPLANE_MODE not in (self.labels or {})

    @property
    def terminating(self) -> str:
        """ "pod NS/NAME is terminating (deletionTimestamp T)" for a pod being deleted, else ""."""
        if not self.deletion_timestamp:
            return ""
        pod = f"{self.namespace or '?'}/{self.name or '?'}"
        return f"pod {pod} is terminating (deletionTimestamp {self.deletion_timestamp})"

    def with_config(self, config: InterceptionConfig) -> PodInfo:
        """The same pod with another interception config (e.g. the nameservers the live table shows)."""
        return replace(self, config=config)


def pod_info(pod: Mapping[str, Any]) -> PodInfo:
    """`pod` itself when it is already read, else read_pod(pod): adapters call this on what they are handed."""
    return pod if isinstance(pod, PodInfo) else read_pod(pod)


def with_namespace_labels(pod: PodInfo, namespace_labels: Mapping[str, str]) -> PodInfo:
    """The pod as its namespace's labels enrol it (or not), without reading the raw JSON again: what
    read_pod(raw, namespace_labels) gives, for a pod read before its namespace was."""
    if not pod.namespace_decides:
        return pod
    return _without_proxy(pod, pod.labels or {}, namespace_labels)


def read_pod(raw: Mapping[str, Any], namespace_labels: Mapping[str, str] | None = None) -> PodInfo:
    """A Pod or workload (API JSON, or `kubectl get -o yaml` parsed) -> PodInfo. Raises PodSpecError.

    `namespace_labels`: the labels of the pod's Namespace, when known; a namespace labelled
    istio.io/dataplane-mode=ambient enrols its pods in ambient mode."""
    try:
        return _read(raw, namespace_labels or {})
    except (ValueError, TypeError, KeyError, AttributeError) as exc:  # PodSpecError is a ValueError
        meta = _mapping(raw.get("metadata"))
        name = f"{meta.get('namespace') or 'default'}/{meta.get('name') or '?'}"
        raise PodSpecError(None, None, f"pod {name}: cannot read its spec ({exc})") from None


def _read(raw: Mapping[str, Any], namespace_labels: Mapping[str, str]) -> PodInfo:
    outer = _mapping(raw.get("metadata"))
    meta, spec = _pod_spec(raw)
    status = _mapping(raw.get("status"))
    annotations = {str(k): str(v) for k, v in _mapping(meta.get("annotations")).items()}
    labels = {str(k): str(v) for k, v in _mapping(meta.get("labels")).items()}
    inits = [_mapping(c) for c in spec.get("initContainers") or []]
    containers = [_mapping(c) for c in spec.get("containers") or []]
    raw_proxy = next((c for c in containers if c.get("name") == PROXY_CONTAINER), None) or next(
        (c for c in inits if c.get("name") == PROXY_CONTAINER and c.get("restartPolicy") == "Always"), None
    )
    raw_init = next((c for c in inits if c.get("name") == INIT_CONTAINER), None)
    raw_validation = next((c for c in inits if c.get("name") == CNI_VALIDATION), None)
    app = next((_container(c) for c in containers if c.get("name") != PROXY_CONTAINER), None)
    pod_ip = status.get("podIP")
    ips = tuple(str(e.get("ip")) for e in status.get("podIPs") or [] if _mapping(e).get("ip"))
    init_names = {c.get("name") for c in inits}
    base = PodInfo(
        raw=raw,
        namespace=str(outer.get("namespace") or ""),
        name=str(outer.get("name") or ""),
        kind=str(raw.get("kind") or "Pod"),
        mesh=MeshMode.NO_SIDECAR,
        reason="no istio-proxy container: not in the mesh as a sidecar",
        proxy=_container(raw_proxy) if raw_proxy is not None else None,
        init=_container(raw_init) if raw_init is not None else None,
        validation=_container(raw_validation) if raw_validation is not None else None,
        app=app,
        app_ports=_app_ports(containers),
        admin_port=_admin_port(annotations),
        uses_istio_cni=CNI_VALIDATION in init_names
        or (INIT_CONTAINER not in init_names and CNI_VALIDATION in annotations.get(ANN_STATUS, "")),
        annotations=annotations,
        labels=labels,
        node=str(spec["nodeName"]) if spec.get("nodeName") else None,
        pod_ip=str(pod_ip) if pod_ip else None,
        pod_ips=ips or ((str(pod_ip),) if pod_ip else ()),
        deletion_timestamp=str(outer["deletionTimestamp"]) if outer.get("deletionTimestamp") else None,
    )
    if base.proxy is None:
        return _without_proxy(base, labels, namespace_labels)
    return _with_proxy(base, raw_proxy or {}, spec)


def _without_proxy(base: PodInfo, labels: Mapping[str, str], namespace_labels: Mapping[str, str]) -> PodInfo:
    """No sidecar: ambient (annotated by istio-cni, or enrolled by label) or outside the mesh."""
    if base.ambient_redirected:
        return replace(base, mesh=MeshMode.AMBIENT, reason="captured by ztunnel (ambient), not a sidecar")
    pod_mode = labels.get(LABEL_DATAPLANE_MODE)
    enrolled_by = (
        "the pod's label"
        if pod_mode == "ambient"
        else "its namespace's label"
        if pod_mode is None and namespace_labels.get(LABEL_DATAPLANE_MODE) == "ambient"
        else None
    )
    if enrolled_by is None:
        return base
    note = (
        f"enrolled in ambient mode by {enrolled_by} {LABEL_DATAPLANE_MODE}=ambient, but istio-cni has not annotated "
        f"it {ANN_AMBIENT}: enabled yet: its traffic capture is not in place (is istio-cni running on its node?)"
    )
    return replace(base, mesh=MeshMode.AMBIENT, reason="captured by ztunnel (ambient), not a sidecar", notes=(note,))


def _with_proxy(base: PodInfo, raw_proxy: Mapping[str, Any], spec: Mapping[str, Any]) -> PodInfo:
    """A sidecar pod: its release, identity and interception config (istio-init's, else istio-cni's)."""
    proxy = base.proxy
    assert proxy is not None
    annotations = base.annotations or {}
    release, note = release_from_image(proxy.image)
    notes: tuple[str, ...] = (note,) if note else ()
    if proxy.native_sidecar:
        notes = (*notes, "istio-proxy is a native sidecar (initContainers, restartPolicy Always)")
    pod = replace(base, release=release, notes=notes)
    if annotations.get(ANN_INTERCEPTION_MODE, "").upper() == "NONE":
        return replace(pod, mesh=MeshMode.NO_CAPTURE, reason=f"{ANN_INTERCEPTION_MODE}: NONE: no capture rules")
    if pod.init is not None:
        config = replace(
            InterceptionConfig.from_args(list(pod.init.argv), pod.init.env_map, release),
            source=ConfigSource.ISTIO_INIT,
        )
        if config.mode is InterceptionMode.NONE:
            return replace(pod, mesh=MeshMode.NO_CAPTURE, reason="istio-init -m NONE: no capture rules")
        notes = (*notes, *nftables_notes(config))
        if config.redirect_dns and not config.dns_active:
            notes = (
                *notes,
                "DNS capture is on, but nameservers come from the pod's /etc/resolv.conf: "
                "pass them to see the DNS rules",
            )
        reason = "istio-init args"
    else:
        config = InterceptionConfig.from_cni(
            annotations, proxy.env_map, uid=proxy.run_as_user, gid=proxy.run_as_group, release=release
        )
        if pod.validation is not None and native_nftables_flag(pod.validation.argv):
            config = replace(config, native_nftables=True)
        notes = (*notes, *nftables_notes(config))
        reason = "istio-cni: annotations, istio-proxy env and CNI defaults"
    return replace(
        pod,
        mesh=MeshMode.SIDECAR,
        reason=reason,
        notes=notes,
        config=config,
        proxy_identity=_proxy_identity(config, proxy, _mapping(spec.get("securityContext"))),
    )


def _proxy_identity(config: InterceptionConfig, proxy: Container, pod_security: Mapping[str, Any]) -> Identity:
    """The uid/gid Envoy's sockets carry: istio-proxy's securityContext (else the pod's), else what the
    rules were written for (a TPROXY Envoy runs as root)."""
    uid_value = proxy.run_as_user if proxy.run_as_user is not None else pod_security.get("runAsUser")
    gid_value = proxy.run_as_group if proxy.run_as_group is not None else pod_security.get("runAsGroup")
    first_uid = config.proxy_uids[0]
    default_uid = 0 if config.mode is InterceptionMode.TPROXY else int(first_uid) if first_uid.isdigit() else 1337
    uid = int(uid_value) if uid_value is not None else default_uid
    default_gid = config.proxy_gids[0] if config.proxy_gids else str(uid)
    gid = int(gid_value) if gid_value is not None else (int(default_gid) if default_gid.isdigit() else uid)
    return Identity(uid, gid)


def _pod_spec(obj: Mapping[str, Any]) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """(metadata, spec) of a Pod, or of a workload's pod template."""
    spec = _mapping(obj.get("spec"))
    template = spec.get("template")
    if isinstance(template, Mapping):
        return _mapping(template.get("metadata")), _mapping(template.get("spec"))
    return _mapping(obj.get("metadata")), spec


def _container(raw: Mapping[str, Any]) -> Container:
    security = _mapping(raw.get("securityContext"))
    uid, gid = security.get("runAsUser"), security.get("runAsGroup")
    return Container(
        name=str(raw.get("name") or ""),
        image=str(raw.get("image") or ""),
        argv=tuple(str(a) for a in [*(raw.get("command") or []), *(raw.get("args") or [])]),
        env=tuple((str(e["name"]), str(e.get("value", ""))) for e in raw.get("env") or [] if "name" in _mapping(e)),
        tcp_ports=tuple(
            int(port["containerPort"])
            for port in raw.get("ports") or []
            if str(_mapping(port).get("protocol", "TCP")).upper() == "TCP" and port.get("containerPort")
        ),
        run_as_user=int(uid) if uid is not None else None,
        run_as_group=int(gid) if gid is not None else None,
        native_sidecar=raw.get("restartPolicy") == "Always",
    )


def _app_ports(containers: list[Mapping[str, Any]]) -> tuple[int, ...]:
    """The TCP ports the app containers declare (podnat assumes 9080 when none are declared)."""
    ports = [port for raw in containers if raw.get("name") != PROXY_CONTAINER for port in _container(raw).tcp_ports]
    return tuple(dict.fromkeys(ports)) or DEFAULT_APP_PORTS


def _admin_port(annotations: Mapping[str, str]) -> int:
    """Envoy's admin port: `proxyAdminPort` in the proxy.istio.io/config annotation, else 15000."""
    m = re.search(r"proxyAdminPort\"?\s*:\s*\"?(\d+)", annotations.get(ANN_PROXY_CONFIG, ""))
    return int(m.group(1)) if m else DEFAULT_ADMIN_PORT


def _mapping(value: object) -> Mapping[str, Any]:
    """A JSON object, or {} for null/absent; anything else is not a pod spec podnat can read."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise PodSpecError(None, str(value)[:60], f"expected an object, found {type(value).__name__}")
    return value
