"""`verify` through the node agent takes the agent's reports as they are (podnat.wire.agent_report,
usecases.relayed_report) instead of explaining the facts again: every output verify has (JSON, YAML, the
table, JUnit) and the exit code must be what explaining the facts in the CLI gives.

The agent's side is the agent's own code (Agent.sweep, NodePodSource reading a recorded capture of a real
pod's namespace, tests/data/capture, and the HTTP server's state_data); the CLI's side is AgentReader.facts_for
and the source policy, as `verify` runs them, minus the two HTTP hops."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from podnat.agent import procmap
from podnat.agent.http import state_data
from podnat.agent.node import NodePodSource, PodNetns
from podnat.agent.service import Agent, AgentConfig
from podnat.facts import ExecResult, PodFacts
from podnat.kube.agentclient import AgentReader
from podnat.render import console
from podnat.render.data import verify_data
from podnat.render.junit import verify_junit
from podnat.report import Explained, PodReport, Relayed, VerifyReport
from podnat.sources import LiveSource
from podnat.usecases import verify_pods

CAPTURE = Path(__file__).resolve().parent.parent / "data" / "capture"
NODE = "node-1"
ARGS = "istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x '' -b '*' -d 15090,15021,15020"
LISTENERS = json.dumps(  # Istio's standard listeners, in the admin API's form
    {
        "listener_statuses": [
            {"name": name, "local_address": {"socket_address": {"address": "0.0.0.0", "port_value": port}}}
            for name, port in (("virtualOutbound", 15001), ("virtualInbound", 15006), ("prom", 15090), ("ready", 15021))
        ]
    }
)
JUMP = re.compile(r"^\[\d+:\d+\] -A PREROUTING -p tcp -j ISTIO_INBOUND\n", re.M)


def make_pod(name: str, ip: str, version: str = "41") -> dict[str, Any]:
    init = {"name": "istio-init", "image": "docker.io/istio/proxyv2:1.30.0", "args": shlex.split(ARGS)}
    return {
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "bookinfo", "uid": f"uid-{name}", "resourceVersion": version},
        "spec": {
            "nodeName": NODE,
            "initContainers": [init],
            "containers": [
                {"name": "reviews", "image": "reviews:1", "ports": [{"containerPort": 9080}]},
                {"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.30.0"},
            ],
        },
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }


class _Scanner:
    """Every pod mapped (to a namespace the recorded capture stands for)."""

    def map_pods(self, pods: list[Mapping[str, Any]]) -> dict[str, procmap.Mapping_]:
        return {
            p["metadata"]["uid"]: procmap.Mapped(p["metadata"]["uid"], 4026530000 + i, 100 + i)
            for i, p in enumerate(pods)
        }

    def hold(self, mapped: procmap.Mapped) -> PodNetns:
        return PodNetns(mapped.pod_uid, mapped.netns, mapped.pid, -1)


def agent_items(monkeypatch: pytest.MonkeyPatch, pods: list[dict[str, Any]], broken: set[str]) -> dict[str, Any]:
    """What the agent's /v1/pods?facts=1 sends for `pods` (by uid), each read from the recorded capture with
    Envoy's standard listeners (the PREROUTING jump deleted in the pods named in `broken`)."""
    return as_items(agent_states(monkeypatch, pods, broken))


def as_items(states: list[Any], lean: bool = False) -> dict[str, Any]:
    """The HTTP server's JSON of `states`, as the CLI decodes it (`lean`: /v1/pods?facts=lean)."""
    return {s.uid: json.loads(json.dumps(state_data(s, with_facts=True, lean=lean))) for s in states}


def agent_states(monkeypatch: pytest.MonkeyPatch, pods: list[dict[str, Any]], broken: set[str]) -> list[Any]:
    """The agent's sweep of `pods` (agent_items')."""
    recorded = (CAPTURE / "nft-rules.stdout").read_text(), (CAPTURE / "nft-rules.stderr").read_text()
    by_pid = {100 + i: p["metadata"]["name"] for i, p in enumerate(pods)}

    def run_in(self: NodePodSource, held: PodNetns, argv: list[str]) -> ExecResult:
        marker = re.search(r"podnat-[0-9a-f]{16}", argv[-1])
        assert marker is not None
        stdout, stderr = (text.replace("podnat-recorded", marker.group(0)) for text in recorded)
        stdout = stdout.replace('{"listener_statuses":[]}', LISTENERS)  # the recorded pod ran no Envoy
        if by_pid[held.pid] in broken:
            stdout, deleted = JUMP.subn("", stdout)
            assert deleted >= 1
        return ExecResult(stdout, stderr, 0)

    monkeypatch.setattr(NodePodSource, "run_in", run_in)
    agent = Agent(AgentConfig(node=NODE), scanner=_Scanner())  # type: ignore[arg-type]
    agent.replace_pods(pods)
    return agent.sweep()


ASKED: list[tuple[str, bool]] = []


class _Client:
    class options:
        timeout = 10.0


class _Cluster:
    """The Cluster port as `verify` uses it with an agent on the node: only the agent is asked."""

    def __init__(self, reader: AgentReader) -> None:
        self.reader = reader

    def agent_facts(self, pod: Mapping[str, Any]) -> PodFacts | None:
        return self.reader.facts_for(pod)

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"verify through the agent called cluster.{name}")


def verify(
    items: dict[str, Any], pods: list[dict[str, Any]], relay: bool, lean: dict[str, Any] | None = None
) -> VerifyReport:
    """verify_pods through an agent that answered `items` (facts=1), or `lean` first (facts=lean: `items` is then
    its answer to the request for the withheld tables, each such request recorded in ASKED)."""
    reader = AgentReader(_Client())  # type: ignore[arg-type]
    reader._agents = {NODE: {"metadata": {"name": "podnat-agent-x"}, "spec": {"nodeName": NODE}}}
    if lean is None:
        reader._nodes[NODE, False] = items
    else:
        reader._nodes[NODE, True] = lean
        reader._ask = lambda node, namespace, lean: ASKED.append((node, lean)) or items  # type: ignore[method-assign]
    source = LiveSource(_Cluster(reader))  # type: ignore[arg-type]
    return verify_pods(lambda: source, pods, 4, relay=relay)


def outputs(report: VerifyReport) -> dict[str, str]:
    with console.out.capture() as table:
        console.print_verify(report)
    data = verify_data(report)
    return {
        "json": json.dumps(data),
        "yaml": yaml.safe_dump(data, sort_keys=False, default_flow_style=False),
        "table": table.get(),
        "junit": verify_junit(report),
        "exit": str(int(report.exit_code)),
    }


def kinds(report: VerifyReport) -> list[type[PodReport]]:
    return [type(p) for p in report.pods]


def test_the_agents_reports_taken_as_they_are_render_as_the_facts_explained_in_the_cli(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pods = [make_pod("reviews-v1-a", "10.99.0.2"), make_pod("ratings-v1-b", "10.99.0.3")]
    items = agent_items(monkeypatch, pods, broken={"ratings-v1-b"})
    relayed, explained = verify(items, pods, relay=True), verify(items, pods, relay=False)
    assert kinds(relayed) == [Relayed, Relayed] and kinds(explained) == [Explained, Explained]
    assert [p.status.value for p in explained.pods] == ["drift", "ok"]  # a fault the outputs must show
    assert outputs(relayed) == outputs(explained)
    # the label is the CLI's (which agent, when it read), not the agent's own
    assert relayed.pods[1].sources["nat"].startswith("podnat agent podnat-agent-x on node node-1, live at ")


def test_an_older_agent_or_another_version_of_the_pod_is_explained_in_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    pods = [make_pod("reviews-v1-a", "10.99.0.2"), make_pod("ratings-v1-b", "10.99.0.3")]
    items = agent_items(monkeypatch, pods, broken=set())
    items["uid-reviews-v1-a"]["pod"].pop("resource_version")  # an agent from before it sent it
    listed = [make_pod("reviews-v1-a", "10.99.0.2"), make_pod("ratings-v1-b", "10.99.0.3", version="42")]
    report = verify(items, listed, relay=True)
    assert kinds(report) == [Explained, Explained]
    assert outputs(report) == outputs(verify(items, listed, relay=False))


def test_a_report_the_agent_made_of_the_pod_seen_otherwise_is_explained_in_the_cli(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pods = [make_pod("reviews-v1-a", "10.99.0.2")]
    items = agent_items(monkeypatch, pods, broken=set())
    item = items["uid-reviews-v1-a"]
    item["context"]["proxy_uid"] = 1000  # what would come of another view of the pod (e.g. another spec)
    assert kinds(verify(items, pods, relay=True)) == [Explained]
    item["context"]["proxy_uid"] = 1337
    assert kinds(verify(items, pods, relay=True)) == [Relayed]
    item["facts"]["notes"].append("a note of the facts the report does not lead with")
    assert kinds(verify(items, pods, relay=True)) == [Explained]


# --- the agent's memo of reports: a pod read as before is not explained again -------------------------------


def test_a_pod_read_as_before_keeps_its_report_and_any_change_is_explained_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import podnat.usecases

    recorded = (CAPTURE / "nft-rules.stdout").read_text().replace('{"listener_statuses":[]}', LISTENERS)
    stderr = (CAPTURE / "nft-rules.stderr").read_text()
    now = {"stdout": recorded}

    def run_in(self: NodePodSource, held: PodNetns, argv: list[str]) -> ExecResult:
        marker = re.search(r"podnat-[0-9a-f]{16}", argv[-1])
        assert marker is not None
        return ExecResult(now["stdout"].replace("podnat-recorded", marker.group(0)), stderr, 0)

    explained: list[str] = []
    explain_facts = podnat.usecases.explain_facts

    def counting(base: Any, facts: PodFacts, *args: Any, **kwargs: Any) -> PodReport:
        explained.append(facts.ref.name)
        return explain_facts(base, facts, *args, **kwargs)

    monkeypatch.setattr(NodePodSource, "run_in", run_in)
    monkeypatch.setattr(podnat.usecases, "explain_facts", counting)
    pods = [make_pod("reviews-v1-a", "10.99.0.2"), make_pod("ratings-v1-b", "10.99.0.3")]
    agent = Agent(AgentConfig(node=NODE), scanner=_Scanner())  # type: ignore[arg-type]
    agent.replace_pods(pods)

    def sweep(only: set[str] | None = None) -> dict[str, PodReport]:
        explained.clear()
        return {s.pod["metadata"]["name"]: s.report for s in agent.sweep(only)}

    first = sweep()
    assert sorted(explained) == ["ratings-v1-b", "reviews-v1-a"] and first["reviews-v1-a"].status.value == "ok"
    # iptables-save's time comments change with every read: not what the report is made of
    now["stdout"] = recorded.replace("on Sat Dec  5 10:17:48 2026", "on Sat Dec  5 10:18:48 2026")
    assert now["stdout"] != recorded
    again = sweep()
    assert explained == [] and all(again[name] is first[name] for name in first)
    # a packet counted: the report shows counters, so it is explained again (and says the new count)
    now["stdout"] = recorded.replace(
        "[0:0] -A PREROUTING -p tcp -j ISTIO_INBOUND", "[7:420] -A PREROUTING -p tcp -j ISTIO_INBOUND"
    )
    counted = sweep()
    assert sorted(explained) == ["ratings-v1-b", "reviews-v1-a"]
    assert '"packets": {' in json.dumps(verify_data(VerifyReport((counted["reviews-v1-a"],))))
    assert counted["reviews-v1-a"] != first["reviews-v1-a"]
    # a fault made from outside: seen on the next read (a partial sweep, as `verify` asks for, too)
    now["stdout"] = JUMP.sub("", recorded)
    faulted = sweep({"uid-reviews-v1-a"})
    assert explained == ["reviews-v1-a"] and faulted["reviews-v1-a"].status.value == "drift"
    # the pod changed (another resourceVersion, e.g. an annotation): explained again, the tables as they were
    changed = make_pod("ratings-v1-b", "10.99.0.3", version="42")
    changed["metadata"]["annotations"] = {"note": "x"}
    agent.pod_event("MODIFIED", changed)
    sweep({"uid-ratings-v1-b"})
    assert explained == ["ratings-v1-b"]
    # a pod gone is forgotten at the next full sweep
    agent.pod_event("DELETED", pods[0])
    sweep()
    assert set(agent._reports) == {"uid-ratings-v1-b"}


def test_pods_at_hand_are_explained_in_the_calling_thread_and_the_rest_by_the_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """verify's `at_hand`: the pods the agent answered for are done without the pool (nothing to wait on);
    a pod it did not answer for goes to the workers; the report is the same either way."""
    import threading

    pods = [make_pod("reviews-v1-a", "10.99.0.2"), make_pod("ratings-v1-b", "10.99.0.3")]
    items = agent_items(monkeypatch, pods, broken={"ratings-v1-b"})
    reader = AgentReader(_Client())  # type: ignore[arg-type]
    reader._agents = {NODE: {"metadata": {"name": "podnat-agent-x"}, "spec": {"nodeName": NODE}}}
    reader._nodes[NODE, False] = {uid: item for uid, item in items.items() if item["pod"]["name"] == "reviews-v1-a"}
    assert [reader.at_hand(p) for p in pods] == [True, False]
    threads: dict[str, str] = {}

    class Seen(_Cluster):
        def agent_facts(self, pod: Mapping[str, Any]) -> PodFacts | None:
            threads[pod["metadata"]["name"]] = threading.current_thread().name
            if not self.reader.at_hand(pod):
                self.reader._nodes[NODE, False] = items  # the worker's read: the agent answers for it now
            return self.reader.facts_for(pod)

    source = LiveSource(Seen(reader))  # type: ignore[arg-type]
    report = verify_pods(lambda: source, pods, 4, relay=True, at_hand=reader.at_hand)
    assert threads["reviews-v1-a"] == threading.current_thread().name
    assert threads["ratings-v1-b"] != threading.current_thread().name
    assert outputs(report) == outputs(verify(items, pods, relay=True))


def test_verifys_lean_answer_withholds_the_tables_it_may_take_and_asks_for_them_where_it_may_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """facts=lean: a pod whose report verify takes as it is comes without its tables (the outputs are the
    same); one it cannot take (another version of it listed) gets them with one more request, as does a
    run that explains every pod (--html)."""
    pods = [make_pod("reviews-v1-a", "10.99.0.2"), make_pod("ratings-v1-b", "10.99.0.3")]
    states = agent_states(monkeypatch, pods, broken={"ratings-v1-b"})
    full, lean = as_items(states), as_items(states, lean=True)
    assert all(item["facts"]["withheld"] and "v4" not in item["facts"]["nat"] for item in lean.values())
    assert len(json.dumps(lean)) < len(json.dumps(full)) / 1.5
    # a report verify cannot take as it is (here: a pod it skipped) comes with its tables
    import dataclasses

    from podnat.report import Skipped

    skipped = dataclasses.replace(states[0], report=Skipped(ref=states[0].report.ref, node=NODE))
    assert "v4" in state_data(skipped, with_facts=True, lean=True)["facts"]["nat"]
    ASKED.clear()
    assert outputs(verify(full, pods, relay=True, lean=lean)) == outputs(verify(full, pods, relay=True))
    assert ASKED == []
    listed = [make_pod("reviews-v1-a", "10.99.0.2"), make_pod("ratings-v1-b", "10.99.0.3", version="42")]
    report = verify(full, listed, relay=True, lean=lean)
    assert kinds(report) == [Explained, Relayed] and ASKED == [(NODE, False)]  # ratings-v1-b, reviews-v1-a
    assert outputs(report) == outputs(verify(full, listed, relay=True))
    ASKED.clear()
    assert outputs(verify(full, pods, relay=False, lean=lean)) == outputs(verify(full, pods, relay=False))
    assert ASKED == [(NODE, False)]  # once for the node, not once per pod
    ASKED.clear()
