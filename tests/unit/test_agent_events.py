"""The agent's Events (which, deduplicated, rate-limited), its wire format and its metrics' text."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from typing import Any

from conftest import require

from podnat.agent.events import EventRecorder, notices
from podnat.agent.service import Agent, AgentConfig, PodState
from podnat.facts import (
    ListenersReading,
    MeshMode,
    NatReading,
    NatSource,
    PodFacts,
    PodRef,
    PolicyRouting,
    SocketsReading,
)
from podnat.report import Skipped
from podnat.wire import facts_data, facts_from_data

POD = {"metadata": {"namespace": "bookinfo", "name": "reviews-v1", "uid": "u-1", "resourceVersion": "7"}}


class _Fixed(Skipped):
    """A pod report whose status is given (the flows behind it do not matter here)."""

    __slots__ = ("fixed",)

    @property
    def status(self) -> str:
        return str(self.fixed)


def _state(status: str, uid: str = "u-1") -> PodState:
    report = object.__new__(_Fixed)
    base = Skipped(ref=PodRef("bookinfo", "reviews-v1"))
    for name in Skipped.__dataclass_fields__:
        object.__setattr__(report, name, getattr(base, name))
    object.__setattr__(report, "fixed", status)
    return PodState(uid, {**POD, "metadata": {**POD["metadata"], "uid": uid}}, report, None, 0.0, "mapped")


def test_notices_on_a_change_to_and_from_drift_or_broken_only() -> None:
    assert [n.reason for n in notices([_state("drift")], [_state("ok")])] == ["CaptureDrift"]
    assert [n.reason for n in notices([_state("broken")], [_state("drift")])] == ["CaptureBroken"]
    assert [(n.reason, n.type) for n in notices([_state("ok")], [_state("broken")])] == [("CaptureRecovered", "Normal")]
    assert notices([_state("drift")], [_state("drift")]) == []  # no change: no Event
    assert notices([_state("ok")], [_state("error")]) == []
    assert [n.reason for n in notices([_state("drift")], [])] == ["CaptureDrift"]  # first seen drifted


class _Api:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def create(self, namespace: str, body: Any) -> None:
        self.calls.append(("create", body))

    def patch(self, namespace: str, name: str, body: Any) -> None:
        self.calls.append(("patch", (name, body)))


def test_a_repeat_updates_the_series_and_the_rate_limits_hold() -> None:
    now = [1000.0]
    api = _Api()
    recorder = EventRecorder(api, "node-1", window=600, per_pod=3, rate=1.0, burst=2, clock=lambda: now[0])
    try:
        notice = notices([_state("drift")], [_state("ok")])[0]
        recorder.record(notice)
        now[0] += 0.1
        recorder.record(notice)
        kinds = [c[0] for c in api.calls]
        assert kinds == ["create", "patch"]
        created = api.calls[0][1]
        assert created["regarding"] == {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": "reviews-v1",
            "namespace": "bookinfo",
            "uid": "u-1",
            "resourceVersion": "7",
        }
        assert created["reportingController"] == "podnat.dev/agent" and created["type"] == "Warning"
        assert api.calls[1][1][0] == created["metadata"]["name"]
        assert api.calls[1][1][1]["series"]["count"] == 2
        recorder.record(notice)  # the bucket (burst 2, 1/s) is empty: dropped
        assert len(api.calls) == 2 and recorder.dropped == 1
        now[0] += 10
        recorder.record(notice)
        recorder.record(notices([_state("ok")], [_state("drift")])[0])  # the pod's budget (3/window) is spent
        assert len(api.calls) == 3 and recorder.dropped == 2
        now[0] += 601  # a new window: a new Event, not a series of the old one
        recorder.record(notice)
        assert [c[0] for c in api.calls] == ["create", "patch", "patch", "create"]
    finally:
        recorder.stop()


def test_facts_travel_unchanged() -> None:
    facts = PodFacts(
        ref=PodRef("bookinfo", "reviews-v1"),
        pod=POD,
        nat=NatReading(
            NatSource.NODE, "node agent on n: iptables-nft-save -c", "*nat\n", "*nat6\n", '{"nftables": []}', True
        ),
        listeners=ListenersReading("node agent on n: admin", '{"listener_statuses": []}'),
        routing=PolicyRouting("ip rule", 133, "0: from all lookup local", "", None, None, "no ip -6"),
        notes=("a note",),
        mesh=MeshMode.SIDECAR,
        sockets=SocketsReading("node agent on n: /proc/net/tcp", (15001, 15008)),
    )
    assert facts_from_data(facts_data(facts), POD) == facts
    bare = replace(facts, listeners=None, routing=None, notes=(), sockets=None)
    assert facts_from_data(facts_data(bare), POD) == bare


def test_metrics_pass_promtool_check_metrics() -> None:
    require(shutil.which("promtool") is not None, "needs promtool (make install: apt prometheus)")
    from prometheus_client import generate_latest

    from podnat.agent.metrics import AgentMetrics

    agent = Agent(AgentConfig(node="n"), scanner=None)  # type: ignore[arg-type]
    agent.states = {"u-1": _state("drift"), "u-2": _state("error", "u-2")}
    agent.listed = True
    metrics = AgentMetrics(agent)
    metrics.duration.observe(0.4)
    metrics.sweeps.inc()
    text = generate_latest(metrics.registry)
    assert b'podnat_pod_status{namespace="bookinfo",pod="reviews-v1",status="drift",uid="u-1"} 1.0' in text
    done = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=30, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
