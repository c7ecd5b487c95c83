"""What `inspect` and `verify` found, as data: the use cases (podnat/usecases.py) build it, the renderers
(podnat/render/) read it. No I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeAlias

from podnat.envoy.listeners import Listener
from podnat.exitcodes import ExitCode
from podnat.facts import PodRef
from podnat.istio.explain import Explanation, Finding, FlowStatus, Severity, flow_types
from podnat.istio.flows import FlowType
from podnat.istio.mesh import MeshMode
from podnat.netfilter.model import Family, Ruleset

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


@dataclass(frozen=True, slots=True, kw_only=True)
class PodHeader:
    """What every pod's report says, whatever came of it: the pod, where it runs, what was read and noted."""

    ref: PodRef
    mesh: str = MeshMode.SIDECAR.value  # a MeshMode value; "host-network" for the agent's host-network pods
    node: str | None = None
    pod_ip: str | None = None
    pod_ips: tuple[str, ...] = ()  # status.podIPs: two on a dual-stack pod
    istio_version: str | None = None
    capture_mode: str | None = None
    sources: Mapping[str, str] = field(default_factory=dict)  # fact -> where it was read
    notes: tuple[str, ...] = ()
    context: Mapping[str, Any] | None = None  # `-o json`'s `context`: pod IP, proxy identity, mode, release
    live: bool | None = None  # the rules read are live (node agent, exec, debug container), or applied at start


@dataclass(frozen=True, slots=True, kw_only=True)
class FamilyReport:
    """One IP family of an explained pod: its table as read and every flow through it."""

    family: Family
    explanation: Explanation
    ruleset: Ruleset


@dataclass(frozen=True, slots=True, kw_only=True)
class Explained(PodHeader):
    """A pod whose rules were read and explained: per IP family (the pod's first address first)."""

    families: tuple[FamilyReport, ...]
    listeners: tuple[Listener, ...] | None = None  # Envoy's, as read (None: Istio's standard set assumed)
    probe: tuple[ProbeObservation, ...] | None = None  # with --probe

    @property
    def explanation(self) -> Explanation:
        """The first family's flows and findings (the pod's findings are there)."""
        return self.families[0].explanation

    @property
    def ruleset(self) -> Ruleset:
        return self.families[0].ruleset

    @property
    def findings(self) -> tuple[Finding, ...]:
        return self.explanation.findings

    @property
    def flow_statuses(self) -> dict[FlowType, FlowStatus]:
        """The worst status per flow type of the first family (verify's table and JUnit)."""
        return flow_types(self.explanation.flows)

    @property
    def status(self) -> PodStatus:
        """The worst of its flows' statuses (every family); drift for an error finding."""
        flows = [flow for family in self.families for flow in family.explanation.flows]
        worst = max((f.status for f in flows), key=lambda status: status.rank, default=FlowStatus.OK)
        if worst is not FlowStatus.OK:
            return PodStatus(worst.value)
        if any(f.severity is Severity.ERROR for f in self.explanation.findings):
            return PodStatus.DRIFT
        return PodStatus.OK


@dataclass(frozen=True, slots=True, kw_only=True)
class Skipped(PodHeader):
    """A pod with nothing to check (no sidecar, no capture, host network, terminating): `notes` say why."""

    @property
    def status(self) -> PodStatus:
        return PodStatus.SKIPPED


@dataclass(frozen=True, slots=True, kw_only=True)
class Failed(PodHeader):
    """A pod that could not be read or explained: one line saying what to do, and the exit code it calls for."""

    error: str
    error_code: int
    failure: str | None = None  # the source's kind of failure (a podnat.facts.Failure value), where one said

    @property
    def status(self) -> PodStatus:
        return PodStatus.ERROR


@dataclass(frozen=True, slots=True, kw_only=True)
class Relayed(PodHeader):
    """A pod the node agent explained, its report taken as the agent sent it (`verify` through the agent).

    The header is the CLI's own (its view of the pod, the agent's label as `--source node` says it); `body`
    is the rest of the agent's `inspect -o json` object (listeners, flows, shadowed, findings, diff, evidence,
    second_family), which the agent made with the same code from the same facts. Only JSON, YAML, the verify
    table and JUnit render it; a renderer that needs the traces themselves (HTML, diagrams) gets an Explained
    (the CLI explains the facts itself then)."""

    verdict: PodStatus
    body: Mapping[str, Any]

    @property
    def status(self) -> PodStatus:
        return self.verdict

    @property
    def findings(self) -> tuple[Finding, ...]:
        """The first family's findings (where the pod's are), as Explained.explanation.findings."""
        return tuple(
            Finding(
                Severity(f["severity"]),
                str(f["message"]),
                tuple(f.get("rules") or ()),
                tuple(f.get("flow_types") or ()),
            )
            for f in self.body.get("findings") or ()
        )

    @property
    def flow_statuses(self) -> dict[FlowType, FlowStatus]:
        """The worst status per flow type of the first family, as `flow_types(explanation.flows)`."""
        worst: dict[FlowType, FlowStatus] = {}
        for flow in self.body.get("flows") or ():
            kind, status = FlowType(flow["type"]), FlowStatus(flow.get("status") or "ok")
            if kind not in worst or status.rank > worst[kind].rank:
                worst[kind] = status
        return worst


PodReport: TypeAlias = Explained | Skipped | Failed | Relayed


def skipped(header: PodHeader, **changes: Any) -> Skipped:
    """`header` as a pod with nothing to check."""
    return Skipped(**{**_header_fields(header), **changes})


def failed(header: PodHeader, error: str, error_code: int, **changes: Any) -> Failed:
    """`header` as a pod that could not be read or explained."""
    return Failed(**{**_header_fields(header), **changes}, error=error, error_code=error_code)


def explained(header: PodHeader, families: tuple[FamilyReport, ...], **changes: Any) -> Explained:
    """`header` as an explained pod (`changes`: header fields, `listeners`, `probe`)."""
    return Explained(**{**_header_fields(header), **changes}, families=families)


def relayed(header: PodHeader, verdict: PodStatus, body: Mapping[str, Any], **changes: Any) -> Relayed:
    """`header` as a pod the node agent explained (`body`: its report after the header's fields)."""
    return Relayed(**{**_header_fields(header), **changes}, verdict=verdict, body=body)


def _header_fields(header: PodHeader) -> dict[str, Any]:
    return {f.name: getattr(header, f.name) for f in fields(PodHeader)}


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
