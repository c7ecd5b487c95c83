"""Where the agents were at the last run (podnat/kube/agentcache.py) and verify's early requests to them
(AgentReader.ask_ahead): an early answer stands only where the same agent pod still runs on that node."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from podnat.kube.agentcache import SCOPES_KEPT, AgentAt, AgentCache, cache_dir
from podnat.kube.agentclient import AgentReader
from podnat.kube.errors import Failure, KubeSourceError

SERVER = "https://203.0.113.7:6443"


def test_the_cache_directory_follows_podnat_cache_dir_then_xdg_then_home() -> None:
    assert cache_dir({"PODNAT_CACHE_DIR": "/srv/c", "XDG_CACHE_HOME": "/x"}) == Path("/srv/c")
    assert cache_dir({"PODNAT_CACHE_DIR": ""}) is None  # set empty: no cache
    assert cache_dir({"XDG_CACHE_HOME": "/x"}) == Path("/x/podnat")
    assert cache_dir({}) == Path("~/.cache/podnat").expanduser()


def test_one_file_per_server_and_agent_namespace_named_as_kubectl_names_its_discovery_cache(tmp_path: Path) -> None:
    cache = AgentCache.for_server(SERVER, "podnat-system", tmp_path)
    assert cache.path == tmp_path / "agents" / "203.0.113.7_6443_podnat-system.json"
    assert AgentCache.for_server(SERVER, "podnat-system", None).path is None


def test_it_remembers_the_agents_and_the_nodes_of_each_scope(tmp_path: Path) -> None:
    agents = {"n1": AgentAt("podnat-agent-a", 9477), "n2": AgentAt("podnat-agent-b", 9477)}
    AgentCache.for_server(SERVER, "podnat-system", tmp_path).remember(agents, "bookinfo", None, ["n1"])
    AgentCache.for_server(SERVER, "podnat-system", tmp_path).remember(agents, None, "app=x", ["n1", "n2"])
    again = AgentCache.for_server(SERVER, "podnat-system", tmp_path)
    assert again.agents_for("bookinfo", None) == {"n1": AgentAt("podnat-agent-a", 9477)}
    assert again.agents_for(None, "app=x") == agents
    assert again.agents_for("bookinfo", "app=x") == {}  # another scope: not known
    assert again.agents_for("other", None) == {}
    assert (again.path is not None) and again.path.stat().st_mode & 0o077 == 0  # the user's alone


def test_it_keeps_the_most_recently_used_scopes(tmp_path: Path) -> None:
    agents = {"n1": AgentAt("podnat-agent-a", 9477)}
    for i in range(SCOPES_KEPT + 5):
        AgentCache.for_server(SERVER, "podnat-system", tmp_path).remember(agents, f"ns{i}", None, ["n1"])
    cache = AgentCache.for_server(SERVER, "podnat-system", tmp_path)
    assert cache.path is not None
    assert len(json.loads(cache.path.read_text())["scopes"]) == SCOPES_KEPT
    assert cache.agents_for("ns0", None) == {} and cache.agents_for(f"ns{SCOPES_KEPT + 4}", None) == agents


@pytest.mark.parametrize(
    "content",
    [
        "",
        "{not json",
        "[]",
        '{"version": 2}',
        '{"version": 1, "scopes": {"bookinfo": {"nodes": ["n1"]}}, "agents": 7}',
        '{"version": 1, "scopes": {"bookinfo": 5, "other": {"used": "x"}}, "agents": {}}',
    ],
)
def test_a_file_it_cannot_read_is_no_cache(tmp_path: Path, content: str) -> None:
    cache = AgentCache.for_server(SERVER, "podnat-system", tmp_path)
    assert cache.path is not None
    cache.path.parent.mkdir(parents=True)
    cache.path.write_text(content)
    assert cache.agents_for("bookinfo", None) == {}
    cache.remember({"n1": AgentAt("a", 1)}, "bookinfo", None, ["n1"])  # and it is written anew
    assert AgentCache.for_server(SERVER, "podnat-system", tmp_path).agents_for("bookinfo", None) == {
        "n1": AgentAt("a", 1)
    }


def test_a_cache_it_cannot_write_never_fails_the_run(tmp_path: Path) -> None:
    (tmp_path / "agents").write_text("a file where the directory should be")
    cache = AgentCache.for_server(SERVER, "podnat-system", tmp_path)
    cache.remember({"n1": AgentAt("a", 1)}, "bookinfo", None, ["n1"])
    assert cache.agents_for("bookinfo", None) == {}


# --- AgentReader: the early round --------------------------------------------------------------------


def _agent(name: str, node: str, port: int = 9477) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"nodeName": node, "containers": [{"ports": [{"name": "http", "containerPort": port}]}]},
        "status": {"phase": "Running", "podIP": "10.0.0.9"},
    }


def _pod(name: str, node: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "bookinfo", "name": name, "uid": f"uid-{name}"}, "spec": {"nodeName": node}}


class _Client:
    server = SERVER

    class options:
        timeout = 10.0


class Reader(AgentReader):
    """An AgentReader whose two calls to the API server are scripted: the agent list (`running`, returned
    once `lists_answer` is set: the lists come back after the early round has left) and the agents' answers,
    each request recorded as (agent pod, node)."""

    def __init__(self, directory: Path, running: Mapping[str, dict[str, Any]]) -> None:
        super().__init__(_Client())  # type: ignore[arg-type]
        self.cache = AgentCache.for_server(SERVER, self.namespace, directory)
        self.running: dict[str, Mapping[str, Any]] = dict(running)
        self.asked: list[tuple[str, str]] = []
        self.lists_answer = threading.Event()
        self.failing: set[str] = set()

    def agents(self) -> dict[str, Mapping[str, Any]]:
        self.lists_answer.wait(5)
        self._agents = self.running
        return self.running

    def _ask_at(
        self, agent: AgentAt, node: str, namespace: str | None, lean: bool
    ) -> dict[str, Mapping[str, Any]] | KubeSourceError:
        self.asked.append((agent.name, node))
        if agent.name in self.failing:
            return KubeSourceError(Failure.FORBIDDEN, "cannot get pods/proxy")
        return {f"uid-{node}": {"pod": {"uid": f"uid-{node}"}, "answered_by": agent.name}}


def _run(reader: Reader, pods: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """verify's order: the early round, then (the lists answered) prefetch; what was asked before the lists."""
    reader.ask_ahead("bookinfo", None, lean=True)
    for _ in range(100):  # the early requests are in flight before the lists come back
        if len(reader.asked) >= len(reader.cache.agents_for("bookinfo", None)):  # type: ignore[union-attr]
            break
        threading.Event().wait(0.01)
    before_lists = list(reader.asked)
    reader.lists_answer.set()
    reader.prefetch(pods, lean=True)
    return before_lists


def test_a_first_run_asks_after_the_lists_and_the_next_asks_the_same_agent_before_them(tmp_path: Path) -> None:
    running = {"n1": _agent("podnat-agent-a", "n1")}
    first = Reader(tmp_path, running)
    assert _run(first, [_pod("reviews", "n1")]) == []  # nothing known yet: asked after the lists
    assert first.asked == [("podnat-agent-a", "n1")]
    second = Reader(tmp_path, running)
    assert _run(second, [_pod("reviews", "n1")]) == [("podnat-agent-a", "n1")]  # before the lists
    assert second.asked == [("podnat-agent-a", "n1")]  # and not again after them
    assert second._nodes["n1", True]["uid-n1"]["answered_by"] == "podnat-agent-a"  # type: ignore[index]


def test_an_early_answer_from_an_agent_that_no_longer_runs_there_is_dropped_and_the_node_asked_again(
    tmp_path: Path,
) -> None:
    _run(Reader(tmp_path, {"n1": _agent("podnat-agent-a", "n1")}), [_pod("reviews", "n1")])
    rolled = Reader(tmp_path, {"n1": _agent("podnat-agent-z", "n1")})  # the DaemonSet rolled: another pod
    rolled.ask_ahead("bookinfo", None, lean=True)
    rolled.lists_answer.set()
    rolled.prefetch([_pod("reviews", "n1")], lean=True)
    assert sorted(rolled.asked) == [("podnat-agent-a", "n1"), ("podnat-agent-z", "n1")]
    assert rolled._nodes["n1", True]["uid-n1"]["answered_by"] == "podnat-agent-z"  # type: ignore[index]
    # and the next run asks the new one early
    assert _run(Reader(tmp_path, {"n1": _agent("podnat-agent-z", "n1")}), [_pod("reviews", "n1")]) == [
        ("podnat-agent-z", "n1")
    ]


def test_a_node_the_early_round_missed_is_asked_after_the_lists_and_remembered(tmp_path: Path) -> None:
    running = {"n1": _agent("podnat-agent-a", "n1"), "n2": _agent("podnat-agent-b", "n2")}
    _run(Reader(tmp_path, running), [_pod("reviews", "n1")])
    spread = Reader(tmp_path, running)  # a pod of the namespace now runs on n2 as well
    assert _run(spread, [_pod("reviews", "n1"), _pod("ratings", "n2")]) == [("podnat-agent-a", "n1")]
    assert spread.asked == [("podnat-agent-a", "n1"), ("podnat-agent-b", "n2")]
    assert sorted(spread.cache.agents_for("bookinfo", None)) == ["n1", "n2"]  # type: ignore[union-attr]


def test_an_agent_that_could_not_be_asked_is_not_asked_early_next_time(tmp_path: Path) -> None:
    running = {"n1": _agent("podnat-agent-a", "n1")}
    denied = Reader(tmp_path, running)
    denied.failing = {"podnat-agent-a"}
    _run(denied, [_pod("reviews", "n1")])
    assert isinstance(denied._nodes["n1", True], KubeSourceError)
    assert _run(Reader(tmp_path, running), [_pod("reviews", "n1")]) == []


def test_no_cache_no_early_round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODNAT_CACHE_DIR", "")
    running = {"n1": _agent("podnat-agent-a", "n1")}
    for _ in range(2):
        reader = Reader(tmp_path, running)
        reader.cache = None  # as the CLI makes it: from the environment
        assert _run_without_cache(reader) == []
    assert not list(tmp_path.iterdir())


def _run_without_cache(reader: Reader) -> list[tuple[str, str]]:
    reader.ask_ahead("bookinfo", None, lean=True)
    before = list(reader.asked)
    reader.lists_answer.set()
    reader.prefetch([_pod("reviews", "n1")], lean=True)
    assert reader.asked == [("podnat-agent-a", "n1")]
    return before
