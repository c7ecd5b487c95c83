"""What podnat learns about a live pod, each fact labelled with where it came from.

The use cases (podnat/usecases.py) only see `PodSource`; podnat/kube/ implements it against a real
API server, and tests swap in fakes. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from podnat.errors import PodnatError
from podnat.exitcodes import ExitCode
from podnat.istio.pod import MeshMode  # the one vocabulary (podnat/istio/pod.py), for PodFacts.mesh


class NatSource(str, Enum):
    """Where a pod's nat table was read from, most live first."""

    NODE = "node"  # the podnat agent on the pod's node, read inside the pod's namespace (podnat/agent/)
    EXEC = "exec"  # iptables-save -c in istio-proxy (works only where the proxy is privileged)
    DEBUG = "debug"  # an ephemeral debug container with NET_ADMIN (opt-in: --debug-container)
    INIT_LOG = "init-log"  # the istio-init log: applied at pod start, not necessarily live


@dataclass(frozen=True, slots=True)
class PodRef:
    """A pod by namespace and name."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class NatReading:
    """A pod's rule tables as read, with the label of the source and what it means."""

    source: NatSource
    label: str  # e.g. "exec istio-proxy: iptables-save -c" or "istio-init log (applied at pod start, ...)"
    v4: str  # iptables-save text ("" when the source printed nothing, e.g. native nftables mode)
    v6: str | None = None
    nft: str | None = None  # `nft list ruleset` / `nft -j list ruleset` text where read
    counters: bool = False  # the text carries [packets:bytes] counters
    debug_container: str | None = None  # name of podnat's ephemeral container, when one was used
    debug_container_added: bool = False  # True when this run added it (ephemeral containers stay)
    listeners_json: str | None = None  # the debug container reads listeners in the same exec


@dataclass(frozen=True, slots=True)
class ListenersReading:
    """Envoy's `listeners?format=json`, and where it came from."""

    label: str
    json_text: str


@dataclass(frozen=True, slots=True)
class PolicyRouting:
    """`ip rule show` and `ip route show table TABLE` (and the `ip -6` twins) as read in the pod.

    Read for TPROXY pods only. A text is "" when the command printed nothing (iproute2 says "FIB table
    does not exist" for an empty table), None when it could not be read: `error` says why."""

    label: str  # e.g. "exec istio-proxy: ip rule show; ip route show table 133 (and ip -6)"
    table: int
    rules_v4: str | None
    routes_v4: str | None
    rules_v6: str | None = None
    routes_v6: str | None = None
    error: str | None = None  # e.g. "`ip` is not in the image of istio-proxy"

    @property
    def complete(self) -> bool:
        return None not in (self.rules_v4, self.routes_v4, self.rules_v6, self.routes_v6)


@dataclass(frozen=True, slots=True)
class SocketsReading:
    """The TCP ports something listens on in the pod's network namespace (/proc/net/tcp, tcp6)."""

    label: str
    ports: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PodFacts:
    """Everything read from one pod; `errors` says what could not be read, and why."""

    ref: PodRef
    pod: Mapping[str, Any]  # the Pod as the API returned it (camelCase JSON form)
    nat: NatReading | None = None
    listeners: ListenersReading | None = None
    notes: Sequence[str] = field(default_factory=tuple)  # e.g. "added ephemeral container podnat-debug"
    mesh: MeshMode = MeshMode.SIDECAR  # not SIDECAR: nat/listeners are None and `notes` says why
    routing: PolicyRouting | None = None  # TPROXY pods: policy routing, read by the same exec as the table
    sockets: SocketsReading | None = None  # ambient pods: ztunnel's in-pod listeners, read by the same exec


class SourceError(PodnatError):
    """A fact could not be read. `message` is one line that says what to do; `code` an ExitCode."""

    def __init__(self, message: str, code: int = ExitCode.CLUSTER) -> None:
        super().__init__(message, code)


class PodSource(Protocol):
    """Reads pods and their facts. podnat/kube/ implements it; tests use fakes."""

    def list_pods(self, namespace: str | None, selector: str | None = None) -> list[dict[str, Any]]:
        """Pods in a namespace (None: all namespaces), as API JSON dicts."""
        ...

    def get_pod(self, ref: PodRef) -> dict[str, Any]:
        """One pod; raises SourceError (not found, forbidden, unreachable)."""
        ...

    def read_facts(self, pod: Mapping[str, Any], source: NatSource | None, debug_container: bool) -> PodFacts:
        """The nat table (fallback order exec -> debug (if allowed) -> init-log unless `source` picks
        one) and Envoy's listeners. Raises SourceError when nothing could be read."""
        ...
