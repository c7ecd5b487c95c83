"""The agent reads a pod's Namespace when its namespace decides its mesh mode: a pod enrolled in ambient only by
its namespace's istio.io/dataplane-mode=ambient label, whose in-pod rules are gone, is broken (as `podnat
inspect` says), not skipped as a pod outside the mesh. The labels are read with `get namespaces/NAME`, once per
namespace per interval, and a namespace that cannot be read leaves the pod as its own spec says."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pytest

from podnat.agent import procmap
from podnat.agent.namespaces import NamespaceLabels
from podnat.agent.service import Agent, AgentConfig
from podnat.facts import MeshMode, NatReading, NatSource, PodFacts, PodRef
from podnat.usecases import _RELEASES, inspect_pod

AMBIENT_NS = {"metadata": {"name": "bookinfo", "labels": {"istio.io/dataplane-mode": "ambient"}}}
PLAIN_NS = {"metadata": {"name": "bookinfo", "labels": {"kubernetes.io/metadata.name": "bookinfo"}}}


def enrolled_by_namespace(uid: str = "u-1") -> dict[str, Any]:
    """A pod with no sidecar, no istio.io/dataplane-mode label and no istio-cni annotation of its own."""
    return {
        "metadata": {"name": "ratings-v1-x", "namespace": "bookinfo", "uid": uid, "resourceVersion": "1"},
        "spec": {"nodeName": "n1", "containers": [{"name": "ratings", "image": "ratings:1"}]},
        "status": {"phase": "Running", "podIP": "10.99.0.2", "podIPs": [{"ip": "10.99.0.2"}]},
    }


class Reads:
    """`get namespaces/NAME` answered from a dict (a missing name: the API's 404), counted."""

    def __init__(self, namespaces: Mapping[str, Mapping[str, Any]]) -> None:
        self.namespaces = dict(namespaces)
        self.asked: list[str] = []

    def __call__(self, name: str) -> Mapping[str, Any]:
        self.asked.append(name)
        if name not in self.namespaces:
            raise LookupError(f'namespaces "{name}" not found')
        return self.namespaces[name]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def setup_function() -> None:
    _RELEASES.clear()


def test_labels_are_read_once_per_interval() -> None:
    reads, clock = Reads({"bookinfo": AMBIENT_NS}), Clock()
    labels = NamespaceLabels(reads, ttl=60.0, clock=clock)
    assert labels("bookinfo") == {"istio.io/dataplane-mode": "ambient"}
    clock.now += 59
    assert labels("bookinfo") == {"istio.io/dataplane-mode": "ambient"} and reads.asked == ["bookinfo"]
    reads.namespaces["bookinfo"] = PLAIN_NS  # the label removed: seen after the interval
    clock.now += 2
    assert labels("bookinfo") == {"kubernetes.io/metadata.name": "bookinfo"} and reads.asked == ["bookinfo"] * 2


def test_a_namespace_not_read_is_not_known_and_said_once(caplog: pytest.LogCaptureFixture) -> None:
    reads, clock = Reads({}), Clock()
    labels = NamespaceLabels(reads, ttl=1.0, clock=clock)
    with caplog.at_level(logging.WARNING, "podnat.agent.namespaces"):
        assert labels("gone") is None
        clock.now += 5
        assert labels("gone") is None
    assert reads.asked == ["gone", "gone"]
    (record,) = caplog.records
    assert "namespace gone not read" in record.getMessage() and "get namespaces" in record.getMessage()


class NodeFacts:
    """The node agent's source as inspect_pod sees it: the pod's namespace read, its tables as given."""

    def __init__(self, v4: str) -> None:
        self.v4 = v4

    def list_pods(self, namespace: str | None, selector: str | None = None) -> list[dict[str, Any]]:
        return []

    def get_pod(self, ref: PodRef) -> dict[str, Any]:
        raise NotImplementedError

    def read_facts(self, pod: Mapping[str, Any], source: NatSource | None, debug_container: bool) -> PodFacts:
        nat = NatReading(NatSource.NODE, "node agent on n1 (uid 0, NET_ADMIN): iptables-nft-save -c", v4=self.v4)
        return PodFacts(ref=PodRef("bookinfo", "ratings-v1-x"), pod=pod, mesh=MeshMode.AMBIENT, nat=nat)


def test_enrolled_by_its_namespace_with_its_rules_gone_is_broken() -> None:
    source = NodeFacts(v4="")  # a node reboot: no in-pod rules
    alone = inspect_pod(source, enrolled_by_namespace(), NatSource.NODE)
    assert (alone.status, alone.mesh) == ("skipped", "no-sidecar")  # what the agent said before it read namespaces
    labels = NamespaceLabels(Reads({"bookinfo": AMBIENT_NS}), ttl=60.0)
    report = inspect_pod(source, enrolled_by_namespace(), NatSource.NODE, namespace_labels=labels)
    assert (report.status, report.mesh) == ("broken", "ambient")
    assert any("enrolled in ambient mode by its namespace's label" in note for note in report.notes)
    plain = NamespaceLabels(Reads({"bookinfo": PLAIN_NS}), ttl=60.0)
    assert inspect_pod(source, enrolled_by_namespace(), NatSource.NODE, namespace_labels=plain).status == "skipped"


class Unmapping:
    """A NodeScanner that maps no pod (the sweep's reads then fail for the pods it reads)."""

    def map_pods(self, pods: list[Mapping[str, Any]]) -> dict[str, procmap.Mapping_]:
        return {str(p["metadata"]["uid"]): procmap.Unmapped(str(p["metadata"]["uid"]), "no process") for p in pods}


def test_the_agents_sweep_asks_for_the_namespace_of_such_a_pod_only() -> None:
    reads = Reads({"bookinfo": AMBIENT_NS})
    sidecar = enrolled_by_namespace("u-2")
    sidecar["metadata"]["name"] = "reviews-v1-y"
    sidecar["spec"]["containers"].append({"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.30.3"})
    agent = Agent(AgentConfig(node="n1"), Unmapping(), namespace_labels=NamespaceLabels(reads, ttl=60.0))  # type: ignore[arg-type]
    agent.replace_pods([enrolled_by_namespace(), sidecar])
    states = {s.uid: s for s in agent.sweep()}
    # read as ambient (so read, and here not mapped: an error), no longer skipped as outside the mesh
    assert states["u-1"].report.mesh == "ambient" and states["u-1"].mapping == "unmapped"
    assert reads.asked == ["bookinfo"]  # once, for the pod its namespace decides; the sidecar pod needs none
    without = Agent(AgentConfig(node="n1"), Unmapping())  # type: ignore[arg-type]
    without.replace_pods([enrolled_by_namespace()])
    (state,) = without.sweep()
    assert state.report.status == "skipped" and state.mapping == "skipped"
