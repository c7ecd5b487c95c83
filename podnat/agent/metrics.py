"""The agent's `/metrics`, with prometheus_client, built from the latest states at each scrape.

Per pod (bounded labels; ~1 + one per flow series per pod):
  podnat_pod_status{namespace,pod,uid,status} 1       status: ok|drift|broken|unknown|error|skipped
  podnat_pod_flow_status{namespace,pod,type,status} 1 one per flow type (1-7, and 4 own-pod-ip as "4b")
Per agent:
  podnat_agent_pods{state}                            seen|mapped|unmapped|failed (last sweep)
  podnat_agent_sweep_duration_seconds                 histogram of full sweeps
  podnat_agent_last_sweep_timestamp_seconds
  podnat_agent_sweeps_total, podnat_agent_api_up
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from podnat.agent.service import Agent, PodState, SweepStats
from podnat.istio.explain import FlowStatus
from podnat.report import Explained, PodStatus

STATUSES = ("ok", "drift", "broken", "unknown", "error", "skipped")


class _StateCollector(Collector):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Any]:
        agent = self.agent
        with agent._pods_lock:
            states = list(agent.states.values())
        status = GaugeMetricFamily(
            "podnat_pod_status",
            "1 for the pod's capture status as of its last reading (ok, drift, broken, unknown, error, skipped)",
            labels=["namespace", "pod", "uid", "status"],
        )
        flows = GaugeMetricFamily(
            "podnat_pod_flow_status",
            "1 for each flow type's status in the pod",
            labels=["namespace", "pod", "type", "status"],
        )
        for state in states:
            ref = state.report.ref
            status.add_metric([ref.namespace, ref.name, state.uid, PodStatus(state.report.status).value], 1)
            for flow_type, flow_status in flow_statuses(state):
                flows.add_metric([ref.namespace, ref.name, flow_type, flow_status], 1)
        yield status
        yield flows
        stats = agent.stats
        pods = GaugeMetricFamily(
            "podnat_agent_pods",
            "Pods of this node in the last sweep, by state (seen, mapped to a namespace, unmapped, failed to read)",
            labels=["state"],
        )
        for name in ("seen", "mapped", "unmapped", "failed"):
            pods.add_metric([name], getattr(stats, name))
        yield pods
        yield GaugeMetricFamily(
            "podnat_agent_last_sweep_timestamp_seconds",
            "Unix time the last full sweep finished (0: none yet)",
            value=stats.finished_at,
        )
        yield GaugeMetricFamily(
            "podnat_agent_api_up",
            "1 when the pods watch is connected to the API server",
            value=0 if agent.api_error or not agent.listed else 1,
        )


def flow_statuses(state: PodState) -> list[tuple[str, str]]:
    """(type, status) per flow; a dual-stack pod's second family is merged in (the worse status wins)."""
    report = state.report
    explanations = [family.explanation for family in report.families] if isinstance(report, Explained) else []
    merged: dict[str, FlowStatus] = {}
    for explanation in explanations:
        for flow in explanation.flows:
            key = str(int(flow.spec.type)) + ("b" if flow.spec.variant else "")
            if flow.status.rank >= merged.get(key, FlowStatus.OK).rank:
                merged[key] = flow.status
    return sorted((key, status.value) for key, status in merged.items())


class AgentMetrics:
    """The registry `/metrics` serves; `observe` is the agent's sweep observer."""

    def __init__(self, agent: Agent) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StateCollector(agent))
        self.duration = Histogram(
            "podnat_agent_sweep_duration_seconds",
            "Wall time of a full sweep of the node",
            buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.sweeps = Counter("podnat_agent_sweeps", "Sweeps done (full and on pod events)", registry=self.registry)

    def observe(self, states: list[PodState], previous: list[PodState], stats: SweepStats) -> None:
        del states, previous
        self.sweeps.inc()
        if stats.duration:
            self.duration.observe(stats.duration)
