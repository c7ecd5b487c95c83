"""Kubernetes Events on a pod whose capture became drift or broken, and when it recovers.

events.k8s.io/v1, `regarding` the pod, so `kubectl describe pod` shows them. Deduplicated: the same
(pod, reason) within `window` seconds updates the first Event's `series` (count, lastObservedTime)
instead of creating another. Rate-limited: at most `per_pod` Events per pod per window, and a token
bucket (`rate`/s, `burst`) over the node. Sent from a thread of its own: a slow API never slows a sweep.
"""

from __future__ import annotations

import datetime
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from podnat.agent.service import PodState, SweepStats
from podnat.istio.explain import FlowStatus
from podnat.report import Explained, PodStatus

log = logging.getLogger("podnat.agent.events")
CONTROLLER = "podnat.dev/agent"


@dataclass(frozen=True, slots=True)
class Notice:
    """An Event to record: on which pod, why, and what to say."""

    pod: Mapping[str, Any]
    reason: str  # CaptureDrift | CaptureBroken | CaptureRecovered
    type: str  # Warning | Normal
    note: str


def notices(states: list[PodState], previous: list[PodState]) -> list[Notice]:
    """The Events a sweep calls for: a status that became drift/broken, or left it for ok. Pure."""
    before = {p.uid: PodStatus(p.report.status) for p in previous}
    out: list[Notice] = []
    for state in states:
        status, old = PodStatus(state.report.status), before.get(state.uid)
        if status.failing and status != old:
            families = state.report.families if isinstance(state.report, Explained) else ()
            flows = [
                f
                for family in families
                for f in family.explanation.flows
                if f.status in (FlowStatus.DRIFT, FlowStatus.BROKEN)
            ]
            what = "; ".join(f"type {int(f.spec.type)} {f.status.value}: {f.live.reason}" for f in flows[:3])
            source = state.report.sources.get("nat", "")
            out.append(
                Notice(
                    state.pod,
                    "CaptureBroken" if status is PodStatus.BROKEN else "CaptureDrift",
                    "Warning",
                    f"podnat: traffic capture is {status.value} ({what or 'see podnat inspect'}); read {source}",
                )
            )
        elif old is not None and old.failing and status is PodStatus.OK:
            out.append(
                Notice(
                    state.pod,
                    "CaptureRecovered",
                    "Normal",
                    f"podnat: traffic capture is as Istio meant again (was {old.value})",
                )
            )
    return out


class EventRecorder:
    """Queues Notices and records them as Events, deduplicated and rate-limited."""

    def __init__(
        self,
        client: Any,
        node: str,
        *,
        window: float = 600.0,
        per_pod: int = 6,
        rate: float = 1.0,
        burst: int = 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.node = node
        self.window = window
        self.per_pod = per_pod
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = float(burst)
        self.refilled = clock()
        self.sent: dict[tuple[str, str], tuple[float, str, int]] = {}  # (uid, reason) -> (first, name, count)
        self.per_pod_times: dict[str, list[float]] = {}
        self.created = 0
        self.patched = 0
        self.dropped = 0
        self._queue: queue.Queue[Notice | None] = queue.Queue(maxsize=1000)
        self._thread = threading.Thread(target=self._run, name="podnat-events", daemon=True)
        self._thread.start()

    def observe(self, states: list[PodState], previous: list[PodState], stats: SweepStats) -> None:
        del stats
        for notice in notices(states, previous):
            try:
                self._queue.put_nowait(notice)
            except queue.Full:
                self.dropped += 1

    def stop(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        while (notice := self._queue.get()) is not None:
            try:
                self.record(notice)
            except Exception as exc:
                log.warning("event %s for %s not recorded: %s", notice.reason, _name(notice.pod), exc)

    def allowed(self, uid: str) -> bool:
        """The rate limits: the node's bucket and the pod's budget per window."""
        now = self.clock()
        self.tokens = min(float(self.burst), self.tokens + (now - self.refilled) * self.rate)
        self.refilled = now
        recent = [t for t in self.per_pod_times.get(uid, []) if now - t < self.window]
        if self.tokens < 1 or len(recent) >= self.per_pod:
            self.per_pod_times[uid] = recent
            return False
        self.tokens -= 1
        self.per_pod_times[uid] = [*recent, now]
        return True

    def record(self, notice: Notice) -> None:
        meta = notice.pod.get("metadata") or {}
        uid, namespace = str(meta.get("uid")), str(meta.get("namespace"))
        if not self.allowed(uid):
            self.dropped += 1
            return
        now = self.clock()
        key = (uid, notice.reason)
        stamp = _micro_time()
        known = self.sent.get(key)
        if known is not None and now - known[0] < self.window:
            first, name, count = known
            body = {"series": {"count": count + 1, "lastObservedTime": stamp}, "note": notice.note[:1024]}
            self.client.patch(namespace, name, body)
            self.sent[key] = (first, name, count + 1)
            self.patched += 1
            return
        name = f"{meta.get('name')}.{secrets.token_hex(8)}"
        body = {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "regarding": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta.get("name"),
                "namespace": namespace,
                "uid": uid,
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reportingController": CONTROLLER,
            "reportingInstance": f"{CONTROLLER}-{self.node}"[:128],
            "action": "Verify",
            "reason": notice.reason,
            "type": notice.type,
            "note": notice.note[:1024],
            "eventTime": stamp,
        }
        self.client.create(namespace, body)
        self.sent[key] = (now, name, 1)
        self.created += 1


class KubeEvents:
    """The two calls the recorder makes, through the official client."""

    def __init__(self, client: Any) -> None:
        from kubernetes.client import EventsV1Api
        from kubernetes.client.models.events_v1_event import EventsV1Event

        self.api = EventsV1Api(client.full_api_client())
        self.event_model = EventsV1Event
        self.timeout = client.options.timeout

    def create(self, namespace: str, body: Mapping[str, Any]) -> None:
        # The model the client's own argument validation would build from the dict: the same request.
        event = self.event_model.model_validate(body)
        self.api.create_namespaced_event(namespace, event, _preload_content=False, _request_timeout=self.timeout)

    def patch(self, namespace: str, name: str, body: Mapping[str, Any]) -> None:
        self.api.patch_namespaced_event(
            name, namespace, dict(body), _preload_content=False, _request_timeout=self.timeout
        )


def _micro_time() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _name(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"
