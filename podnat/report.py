"""What `inspect` and `verify` found, as data: the use cases build it, the renderers read it. No I/O."""

from __future__ import annotations

from enum import Enum


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
