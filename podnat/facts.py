"""What podnat learns about a live pod, each fact labelled with where it came from, and the port to the
cluster it learns it through.

`Cluster` is the thin port: list and get pods, get a namespace, exec, read a log, add the debug container,
ask the node agent. podnat/kube/cluster.py implements it against a real API server (each method turns the
client's errors into one `SourceError`); podnat/sources.py holds the policy (which source to try, which
failure allows the next) on top of it; tests swap in a fake cluster. The use cases see a `PodSource`
(something that reads a pod's facts). Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from podnat.errors import PodnatError
from podnat.evidence import Evidence, NatSource
from podnat.exitcodes import ExitCode
from podnat.istio.mesh import MeshMode  # the one vocabulary (podnat.istio.pod decides it), for PodFacts.mesh


class Failure(str, Enum):
    """What went wrong, for the caller that wants to branch (the source policy, verify's summary)."""

    NO_KUBECONFIG = "no-kubeconfig"
    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not-found"
    POD_NOT_RUNNING = "pod-not-running"
    PROXY_NOT_READY = "proxy-not-ready"
    EXEC_DENIED = "exec-denied"  # an admission policy refused pods/exec
    POD_SECURITY = "pod-security"  # Pod Security admission refused the debug container
    NAT_PERMISSION = "nat-permission"  # iptables-save ran but may not read the table
    TOOL_MISSING = "tool-missing"  # iptables-save (or sh, pilot-agent) not in the image
    EMPTY_TABLE = "empty-table"
    DEBUG_CONTAINER = "debug-container"
    LOG = "log"  # the istio-init / istio-cni-node log could not be read or parsed
    TABLE_UNREADABLE = "table-unreadable"  # iptables-save ran and failed: a table its own writer cannot print
    API_ERROR = "api-error"


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

    @property
    def live(self) -> bool:
        """True when these are the rules the kernel runs now; False for rules applied at start (a log)."""
        return self.source.evidence is Evidence.LIVE


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
    relayed: Mapping[str, Any] | None = None  # the node agent's report of these facts (podnat.wire.agent_report)
    # The node agent sent its report and withheld the tables it was made from (verify's lean answer): how to
    # ask for them, where the report cannot be taken as it is and they must be explained here.
    complete: Callable[[], PodFacts] | None = None

    @property
    def live(self) -> bool | None:
        """Whether the rules are live (None: no rules were read, e.g. a pod without a sidecar)."""
        return self.nat.live if self.nat is not None else None


class SourceError(PodnatError):
    """A fact could not be read: one line that says what to do, and the kind of failure. Exit code 3."""

    def __init__(self, failure: Failure, message: str, code: int = ExitCode.CLUSTER) -> None:
        super().__init__(message, int(code))
        self.failure = failure


@dataclass(frozen=True, slots=True)
class ExecResult:
    """What one exec printed and how it ended (None: the server sent no exit status)."""

    stdout: str
    stderr: str
    returncode: int | None


@dataclass(frozen=True, slots=True)
class DebugContainer:
    """podnat's ephemeral container in a pod, running; `added` when this call added it (they stay)."""

    name: str
    added: bool


class Cluster(Protocol):
    """The thin port to a cluster. Every method raises `SourceError` (one line, the kind of failure)."""

    def list_pods(
        self, namespace: str | None, selector: str | None = None, node: str | None = None
    ) -> list[dict[str, Any]]:
        """Pods in a namespace (None: all namespaces), optionally by label selector and node, as API JSON."""
        ...

    def get_pod(self, ref: PodRef) -> dict[str, Any]:
        """One pod by name, `deploy/NAME` or `POD.NAMESPACE`, as API JSON."""
        ...

    def get_namespace(self, name: str) -> dict[str, Any]:
        """One namespace, as API JSON (NOT_FOUND when it does not exist, FORBIDDEN without `get namespaces`)."""
        ...

    def exec(self, ref: PodRef, container: str, argv: list[str]) -> ExecResult:
        """Run argv in a container of a pod, until it ends (bounded by the request timeout)."""
        ...

    def read_log(self, ref: PodRef, container: str) -> str:
        """A container's log."""
        ...

    def add_debug_container(self, pod: Mapping[str, Any], container: Mapping[str, Any]) -> DebugContainer:
        """Add the ephemeral `container` unless the pod has one of that name; return once it runs."""
        ...

    def agent_facts(self, pod: Mapping[str, Any]) -> PodFacts | None:
        """The pod's facts from podnat's agent on its node; None when no agent runs there."""
        ...

    def agent_absent(self, pod: Mapping[str, Any]) -> str:
        """Why no agent answers for the pod's node (e.g. "no running pod labelled ... in podnat-system")."""
        ...


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
