"""What `inspect` and `verify` found, as data: the use cases (podnat/usecases.py) build it, the renderers
(podnat/render/) read it. No I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from podnat.envoy.listeners import Listener
from podnat.exitcodes import ExitCode
from podnat.facts import PodRef
from podnat.istio.explain import Explanation, FlowStatus, Severity
from podnat.istio.pod import MeshMode
from podnat.netfilter.model import Ruleset

if TYPE_CHECKING:  # `--probe` only
    from podnat.probe import ProbeObservation


class PodStatus(str, Enum):
    """One pod's verdict, declared from the worst to the best (the order summaries list them in)."""

    BROKEN = "broken"  # a flow is refused, loops or is dropped
    DRIFT = "drift"  # a flow takes another path than Istio meant, or an error finding
    ERROR = "error"  # the pod could not be read or explained
    UNKNOWN = "unknown"  # a rule podnat cannot evaluate decides a flow
    OK = "ok"
    SKIPPED = "skipped"  # nothing to check (no sidecar, no capture, terminating)

    def __str__(self) -> str:
        return self.value

    @property
    def failing(self) -> bool:
        """Drift or broken: `inspect` and `verify` exit 1."""
        return self in (PodStatus.DRIFT, PodStatus.BROKEN)


@dataclass(frozen=True, slots=True)
class PodReport:
    """What podnat found in one pod (or why it could not look)."""

    ref: PodRef
    mesh: str = MeshMode.SIDECAR.value  # a MeshMode value; "host-network" for the agent's host-network pods
    node: str | None = None
    pod_ip: str | None = None
    istio_version: str | None = None
    capture_mode: str | None = None
    sources: Mapping[str, str] = field(default_factory=dict)
    explanation: Explanation | None = None
    ruleset: Ruleset | None = None
    listeners: tuple[Listener, ...] | None = None
    pod_ips: tuple[str, ...] = ()  # status.podIPs: two on a dual-stack pod
    second: Explanation | None = None  # the other IP family's flows, on a dual-stack pod
    second_ruleset: Ruleset | None = None
    probe: tuple[ProbeObservation, ...] | None = None  # with --probe
    notes: tuple[str, ...] = ()
    error: str | None = None
    error_code: int | None = None
    context: Mapping[str, Any] | None = None  # `-o json`'s `context`: pod IP, proxy identity, mode, release
    live: bool | None = None  # the rules read are live (node agent, exec, debug container), or applied at start

    @property
    def status(self) -> PodStatus:
        """The worst of its flows' statuses; drift for an error finding; error, or skipped (nothing to check)."""
        if self.error is not None:
            return PodStatus.ERROR
        if self.explanation is None:
            return PodStatus.SKIPPED
        flows = [*self.explanation.flows, *(self.second.flows if self.second is not None else ())]
        worst = max((f.status for f in flows), key=lambda status: status.rank, default=FlowStatus.OK)
        if worst is not FlowStatus.OK:
            return PodStatus(worst.value)
        if any(f.severity is Severity.ERROR for f in self.explanation.findings):
            return PodStatus.DRIFT
        return PodStatus.OK


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """Every pod `verify` looked at."""

    pods: tuple[PodReport, ...]

    @property
    def exit_code(self) -> ExitCode:
        statuses = {p.status for p in self.pods}
        if any(status.failing for status in statuses):
            return ExitCode.DRIFT
        if PodStatus.ERROR in statuses:
            return ExitCode.CLUSTER
        return ExitCode.OK
