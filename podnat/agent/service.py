"""`podnat agent`: keep the node's pods, sweep them, keep the latest report of each.

- Pods: list + watch with `spec.nodeName=NODE` (all namespaces), relisted every `resync` seconds and
  after any error (the API server went away, a 410 Gone): `ready` once the first list and sweep are done.
- Sweeps: every `interval` seconds all pods; on a pod event the pods that changed (debounced); on
  request (`/v1/pods?fresh=1`) the pods asked for. One `/proc` scan maps the pods, then each pod is read
  and explained (`inspect_pod`, exactly as `podnat inspect` does) `concurrency` at a time; one pod's
  failure is that pod's report, never the sweep's. Each reading keeps how to tell later that it still
  holds (a `Check`: the mapped process and a podnat.agent.changes stamp taken just before the read).
- Requests (`states_for`): a pod checked longer ago than the request allows is checked now: where its
  stamp has not moved (nothing in its namespace changed, told without a process) its reading stands,
  checked now; otherwise, or where no stamp covers what its reading read (legacy tables, a failed
  read), it is read again.
- What each sweep found goes to the metrics (podnat/agent/metrics.py) and, on a change of status to or
  from drift/broken, to a Kubernetes Event (podnat/agent/events.py).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from podnat.agent import procmap
from podnat.agent.changes import Stamp, Target, stamps
from podnat.agent.node import NodePodSource, NodeScanner, PodNetns, release
from podnat.errors import PodnatError
from podnat.evidence import NatSource
from podnat.exitcodes import ExitCode
from podnat.facts import PodFacts, PodRef
from podnat.istio.explain import ShadowMemo
from podnat.istio.mesh import MeshMode
from podnat.istio.pod import PodSpecError, pod_info, with_namespace_labels
from podnat.report import Failed, PodReport, PodStatus, Skipped
from podnat.sources import AMBIENT_ROUTE_TABLE
from podnat.usecases import NamespaceLabels, ReportMemo, inspect_pod

log = logging.getLogger("podnat.agent")


@dataclass(frozen=True, slots=True)
class Check:
    """How to tell later, without reading the pod again, that a reading still holds."""

    mapped: procmap.Mapped  # the process its namespace was found through
    target: Target  # what the stamp covers (admin port, routing table, sockets); a new fd at each check
    stamp: Stamp  # taken just before the reading


@dataclass(frozen=True, slots=True)
class PodState:
    """The latest reading of one pod: its report, the facts it was explained from, when."""

    uid: str
    pod: Mapping[str, Any]
    report: PodReport
    facts: PodFacts | None
    observed_at: float  # when it was read
    mapping: str  # "mapped" | "unmapped" | "host-network" | "skipped"
    checked_at: float = 0.0  # when it was last read or found unchanged (0: observed_at)
    check: Check | None = None  # None: only reading it again tells whether it changed

    @property
    def checked(self) -> float:
        return self.checked_at or self.observed_at


@dataclass(slots=True)
class SweepStats:
    """What the last sweep saw, for the metrics."""

    seen: int = 0
    mapped: int = 0
    unmapped: int = 0
    failed: int = 0
    duration: float = 0.0
    finished_at: float = 0.0


@dataclass(slots=True)
class AgentConfig:
    """`podnat agent`'s settings."""

    node: str
    interval: float = 60.0
    concurrency: int = 4
    resync: float = 300.0
    read_timeout: float = 20.0
    debounce: float = 0.5


class _FactsRecorder:
    """Wraps the node source to keep the facts each pod was explained from (served with `facts=1`)."""

    def __init__(self, inner: NodePodSource) -> None:
        self.inner = inner
        self.facts: PodFacts | None = None

    def read_facts(self, pod: Mapping[str, Any], source: NatSource | None, debug_container: bool) -> PodFacts:
        self.facts = self.inner.read_facts(pod, source, debug_container)
        return self.facts

    def list_pods(self, namespace: str | None, selector: str | None = None) -> list[dict[str, Any]]:
        return self.inner.list_pods(namespace, selector)

    def get_pod(self, ref: PodRef) -> dict[str, Any]:
        return self.inner.get_pod(ref)


class Agent:
    """The pods of one node and their latest states; sweeps them and tells the observers."""

    def __init__(
        self,
        config: AgentConfig,
        scanner: NodeScanner,
        observers: Iterable[Callable[[list[PodState], list[PodState], SweepStats], None]] = (),
        namespace_labels: NamespaceLabels | None = None,
    ) -> None:
        self.config = config
        self.scanner = scanner
        self.observers = list(observers)
        # A pod enrolled in ambient by its namespace's label alone is ambient only once its Namespace is read.
        self.namespace_labels = namespace_labels
        self.pods: dict[str, dict[str, Any]] = {}  # uid -> Pod (from the watch)
        self.states: dict[str, PodState] = {}
        self.stats = SweepStats()
        self.listed = False
        self.swept = False
        self.api_error: str | None = None
        self._pods_lock = threading.Lock()
        self._sweep_lock = threading.Lock()
        self._changed: set[str] = set()
        # Shadow analyses of the tables the last full sweep met (pods share tables; a full sweep starts afresh,
        # so a table no pod has any more is forgotten); partial sweeps reuse them.
        self._shadows: ShadowMemo = {}
        # Each pod's last report and what it was made of: a pod read as before (its rules, counters, listeners and
        # spec unchanged) is not explained again (usecases.made_of); kept for the pods the agent keeps.
        self._reports: ReportMemo = {}
        self._wake = threading.Event()
        self._stop = threading.Event()

    # --- pods ---------------------------------------------------------------------------------------

    def replace_pods(self, pods: Iterable[Mapping[str, Any]]) -> None:
        """A fresh list: every pod of the node, replacing what was known."""
        fresh = {str(p["metadata"]["uid"]): dict(p) for p in pods if (p.get("metadata") or {}).get("uid")}
        with self._pods_lock:
            changed = {u for u, p in fresh.items() if _version(self.pods.get(u)) != _version(p)}
            gone = set(self.pods) - set(fresh)
            self.pods = fresh
            for uid in gone:
                self.states.pop(uid, None)
            self._changed |= changed
            self.listed = True
        if changed or gone:
            self._wake.set()

    def pod_event(self, kind: str, pod: Mapping[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        with self._pods_lock:
            if not uid:  # a DELETED without the object's uid: find it by name
                uid = next(
                    (
                        u
                        for u, p in self.pods.items()
                        if p["metadata"].get("namespace") == meta.get("namespace")
                        and p["metadata"].get("name") == meta.get("name")
                    ),
                    "",
                )
            if not uid:
                return
            if kind == "DELETED":
                self.pods.pop(uid, None)
                self.states.pop(uid, None)
                self._changed.discard(uid)
            else:
                self.pods[uid] = dict(pod)
                self._changed.add(uid)
        self._wake.set()

    def kept(self) -> set[str]:
        """The UIDs of the pods it has a reading of."""
        with self._pods_lock:
            return set(self.states)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._pods_lock:
            return list(self.pods.values())

    # --- sweeps -------------------------------------------------------------------------------------

    def run(self) -> None:
        """Sweep every `interval`, and soon after pod events, until stopped."""
        next_full = time.monotonic()
        while not self._stop.is_set():
            timeout = max(0.0, next_full - time.monotonic())
            self._wake.wait(timeout)
            if self._stop.is_set():
                return
            if not self.listed:
                self._wake.clear()
                self._stop.wait(0.2)
                continue
            if time.monotonic() >= next_full:
                self._wake.clear()
                self.sweep()
                next_full = time.monotonic() + self.config.interval
            else:
                self._stop.wait(self.config.debounce)  # let a burst of events settle
                self._wake.clear()
                with self._pods_lock:
                    changed, self._changed = self._changed, set()
                if changed:
                    self.sweep(changed)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def sweep(self, only: Iterable[str] | None = None) -> list[PodState]:
        """Read the node's pods (or those with UIDs in `only`); returns their new states."""
        with self._sweep_lock:
            return self._sweep(set(only) if only is not None else None)

    def _sweep(self, only: set[str] | None) -> list[PodState]:  # noqa: C901  one sweep's bookkeeping, in order
        started = time.monotonic()
        pods = [p for p in self.snapshot() if only is None or str(p["metadata"]["uid"]) in only]
        if only is None:
            with self._pods_lock:
                self._changed.clear()
            self._shadows = {}
            kept = {str(p["metadata"]["uid"]) for p in pods}
            self._reports = {uid: made for uid, made in self._reports.items() if uid in kept}
        shadows, reports = self._shadows, self._reports
        mapping = self.scanner.map_pods(pods) if pods else {}
        held: dict[str, PodNetns] = {}
        problems: dict[str, str] = {}
        for uid, found in mapping.items():
            if isinstance(found, procmap.Mapped):
                try:
                    held[uid] = self.scanner.hold(found)
                except PodnatError as exc:
                    problems[uid] = exc.message

        def netns_of(uid: str) -> PodNetns:
            if uid in held:
                return held[uid]
            found = mapping.get(uid)
            reason = problems.get(uid) or (found.reason if isinstance(found, procmap.Unmapped) else "not mapped")
            raise _Unmapped(f"pod not mapped to a network namespace on node {self.config.node}: {reason}")

        node_source = NodePodSource(self.config.node, netns_of, self.config.read_timeout, self.snapshot)
        targets = {uid: t for p in pods if (uid := str(p["metadata"]["uid"])) in held and (t := self._target(uid, p))}
        before = stamps(replace(t, fd=held[uid].fd) for uid, t in targets.items())

        def one(pod: dict[str, Any]) -> PodState:
            uid = str(pod["metadata"]["uid"])
            found = mapping.get(uid)
            kind = "host-network" if isinstance(found, procmap.HostNetwork) else "mapped" if uid in held else "unmapped"
            recorder = _FactsRecorder(node_source)
            try:
                if isinstance(found, procmap.HostNetwork):
                    report: PodReport = Skipped(
                        ref=_ref(pod),
                        node=self.config.node,
                        mesh="host-network",
                        notes=("hostNetwork pod: it shares the node's rules; not read",),
                    )
                else:
                    report = inspect_pod(
                        recorder,
                        pod,
                        NatSource.NODE,
                        namespace_labels=self.namespace_labels,
                        shadows=shadows,
                        reports=reports,
                    )
            except Exception as exc:  # one pod's failure is that pod's report
                log.exception("pod %s: %s", _ref(pod), exc)
                report = Failed(
                    ref=_ref(pod),
                    node=self.config.node,
                    error=f"internal error reading the pod: {type(exc).__name__}: {exc}",
                    error_code=int(ExitCode.INTERNAL),
                )
            if kind == "unmapped" and not isinstance(report, Failed):
                kind = "skipped"  # not a sidecar pod (or nothing to read): nothing to map
            facts, stamp, mapped = recorder.facts, before.get(uid), mapping.get(uid)
            check = None
            if (
                stamp is not None
                and isinstance(mapped, procmap.Mapped)
                and report.status is not PodStatus.ERROR
                and facts is not None
                and _covers(stamp, facts)
            ):
                check = Check(mapped, targets[uid], stamp)
            now = time.time()
            return PodState(uid, pod, report, facts, now, kind, now, check)

        try:
            with ThreadPoolExecutor(max_workers=max(1, self.config.concurrency)) as pool:
                states = list(pool.map(one, pods))
        finally:
            release(held.values())
        previous: list[PodState] = []
        with self._pods_lock:
            for state in states:
                if state.uid not in self.pods:
                    continue  # deleted while it was read
                old = self.states.get(state.uid)
                if old is not None:
                    previous.append(old)
                self.states[state.uid] = state
            current = list(self.states.values())
        stats = SweepStats(
            seen=len(current),
            mapped=sum(1 for s in current if s.mapping == "mapped"),
            unmapped=sum(1 for s in current if s.mapping == "unmapped"),
            failed=sum(1 for s in current if s.report.status is PodStatus.ERROR),
            duration=time.monotonic() - started,
            finished_at=time.time(),
        )
        if only is None or not self.swept:
            self.stats = stats
        else:  # a partial sweep: keep the full sweep's duration, refresh the counts
            self.stats = SweepStats(
                stats.seen, stats.mapped, stats.unmapped, stats.failed, self.stats.duration, self.stats.finished_at
            )
        self.swept = self.swept or only is None
        for observer in self.observers:
            try:
                observer(states, previous, self.stats)
            except Exception:
                log.exception("observer failed")
        return states

    def states_for(
        self, namespace: str | None, selector: Callable[[Mapping[str, Any]], bool] | None, max_age: float | None
    ) -> list[PodState]:
        """The pods asked for, sorted by namespace and name; those read more than `max_age` seconds ago
        (or never) are read now (None: serve the last sweep as it is)."""
        wanted = [
            p
            for p in self.snapshot()
            if (namespace is None or p["metadata"].get("namespace") == namespace) and (selector is None or selector(p))
        ]
        uids = {str(p["metadata"]["uid"]) for p in wanted}
        if max_age is not None and uids:
            now = time.time()
            with self._pods_lock:
                stale = {u for u in uids if u not in self.states or now - self.states[u].checked > max_age}
                known = [self.states[u] for u in stale if u in self.states]
            again = stale - self._confirm(known)
            if again:
                self.sweep(again)
        with self._pods_lock:
            found = [self.states[u] for u in uids if u in self.states]
        return sorted(found, key=lambda s: (s.report.ref.namespace, s.report.ref.name))

    def _confirm(self, known: Iterable[PodState]) -> set[str]:
        """The UIDs of the readings in `known` that still hold (now marked checked now): the pod's spec is the
        one read, and its namespace's stamp has not moved (or nothing was read from a namespace)."""
        held: dict[str, tuple[PodState, PodNetns]] = {}
        spec_only: list[PodState] = []
        with self._pods_lock:
            current = {s.uid: _version(self.pods.get(s.uid)) for s in known}
        for state in known:
            if state.report.status is PodStatus.ERROR or current[state.uid] != _version(state.pod):
                continue
            if state.mapping in ("host-network", "skipped"):
                if not _namespace_decides(state.pod):
                    spec_only.append(state)  # its report is its spec's: no namespace was read
            elif state.check is not None:
                try:
                    held[state.uid] = (state, self.scanner.hold(state.check.mapped))
                except PodnatError:
                    continue  # the process is gone: read (and map) it again
        try:
            now_stamps = stamps(replace(s.check.target, fd=h.fd) for s, h in held.values() if s.check)
        finally:
            release(h for _, h in held.values())
        still = spec_only + [s for uid, (s, _) in held.items() if s.check and now_stamps.get(uid) == s.check.stamp]
        now = time.time()
        with self._pods_lock:
            for state in still:
                if self.states.get(state.uid) is state:
                    self.states[state.uid] = replace(state, checked_at=now)
        return {s.uid for s in still}

    def _target(self, uid: str, pod: Mapping[str, Any]) -> Target | None:
        """What a stamp of the pod covers, as its spec (and its namespace's labels, where they decide) says:
        Envoy's admin port; for a TPROXY or ambient pod the policy routing its reading prints; for an ambient
        one the listening sockets too. None: a spec podnat cannot read (its reading gets no check)."""
        try:
            info = pod_info(pod)
        except PodSpecError:
            return None
        if info.namespace_decides and self.namespace_labels is not None:
            labels = self.namespace_labels(info.namespace or "")
            info = with_namespace_labels(info, labels) if labels is not None else info
        if info.mesh is MeshMode.AMBIENT:
            return Target(uid, -1, info.admin_port, AMBIENT_ROUTE_TABLE, sockets=True)
        return Target(uid, -1, info.admin_port, info.tproxy_route_table)


class _Unmapped(PodnatError):
    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.CLUSTER)


def _ref(pod: Mapping[str, Any]) -> PodRef:
    meta = pod.get("metadata") or {}
    return PodRef(str(meta.get("namespace") or "default"), str(meta.get("name") or "?"))


def _covers(stamp: Stamp, facts: PodFacts) -> bool:
    """Whether the stamp covers all the reading read: the same routing table (or none), sockets where read."""
    table = facts.routing.table if facts.routing is not None else None
    return stamp.routing_table == table and (stamp.ports is not None) == (facts.sockets is not None)


def _namespace_decides(pod: Mapping[str, Any]) -> bool:
    """Whether the pod's Namespace's labels may make it ambient (the agent keeps them a while: read it again)."""
    try:
        return pod_info(pod).namespace_decides
    except PodSpecError:
        return True


def _version(pod: Mapping[str, Any] | None) -> str | None:
    return None if pod is None else str((pod.get("metadata") or {}).get("resourceVersion"))


# --- list + watch ---------------------------------------------------------------------------------


class PodWatch:
    """Keeps `agent.pods` in step with the API server: list, then watch from the list's version;
    relist after `resync`, after a 410, and (with backoff) after the server goes away."""

    def __init__(self, agent: Agent, client: Any, timeout: float = 30.0) -> None:
        self.agent = agent
        self.client = client
        self.timeout = timeout
        self.selector = f"spec.nodeName={agent.config.node}"
        self.relists = 0
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                version = self.relist()
                self.agent.api_error = None
                backoff = 0.5
                self.watch(version, time.monotonic() + self.agent.config.resync)
            except Exception as exc:
                self.agent.api_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                log.warning("pods list/watch failed (%s); retrying in %.1fs", self.agent.api_error, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def relist(self) -> str:
        resp = self.client.core.list_pod_for_all_namespaces(
            field_selector=self.selector, _preload_content=False, _request_timeout=self.timeout
        )
        body = json.loads(resp.data)
        self.agent.replace_pods(body.get("items") or [])
        self.relists += 1
        return str((body.get("metadata") or {}).get("resourceVersion") or "")

    def watch(self, version: str, until: float) -> None:
        while not self._stop.is_set() and time.monotonic() < until:
            seconds = max(1, min(60, int(until - time.monotonic())))
            resp = self.client.core.list_pod_for_all_namespaces(
                field_selector=self.selector,
                watch=True,
                resource_version=version or None,
                timeout_seconds=seconds,
                allow_watch_bookmarks=True,
                _preload_content=False,
                _request_timeout=(self.timeout, seconds + self.timeout),
            )
            try:
                for line in _lines(resp):
                    if self._stop.is_set():
                        return
                    event = json.loads(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            return  # too old: relist
                        raise RuntimeError(f"watch error: {obj.get('message')}")
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                    if kind in ("ADDED", "MODIFIED", "DELETED"):
                        self.agent.pod_event(kind, obj)
            finally:
                resp.release_conn()


def _lines(resp: Any) -> Iterable[bytes]:
    pending = b""
    for chunk in resp.stream(amt=64 * 1024, decode_content=False):
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            if line.strip():
                yield line
    if pending.strip():
        yield pending
