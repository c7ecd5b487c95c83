"""The agent's HTTP server: /v1/pods filters, /readyz before and after the first list and sweep."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from podnat.agent.http import AgentServer
from podnat.agent.metrics import AgentMetrics
from podnat.agent.service import Agent, AgentConfig, PodState, SweepStats
from podnat.facts import PodRef
from podnat.report import Skipped


def _pod(namespace: str, name: str, app: str) -> dict[str, Any]:
    return {"metadata": {"namespace": namespace, "name": name, "uid": f"uid-{name}", "labels": {"app": app}}}


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_pods_filtered_by_namespace_and_label_selector_and_readiness() -> None:
    agent = Agent(AgentConfig(node="n1"), scanner=None)  # type: ignore[arg-type]
    server = AgentServer(agent, AgentMetrics(agent), "127.0.0.1", 0, "agent-1")
    server.start()
    try:
        assert _get(server.port, "/readyz")[0] == 503
        assert _get(server.port, "/v1/pods")[0] == 503
        pods = [
            _pod("bookinfo", "reviews-v1", "reviews"),
            _pod("bookinfo", "details-v1", "details"),
            _pod("other", "reviews-x", "reviews"),
        ]
        agent.replace_pods(pods)
        for pod in pods:
            meta = pod["metadata"]
            agent.states[meta["uid"]] = PodState(
                meta["uid"], pod, Skipped(ref=PodRef(meta["namespace"], meta["name"]), node="n1"), None, 0.0, "mapped"
            )
        agent.swept = True
        agent.stats.finished_at = time.time()  # a full sweep just finished
        assert _get(server.port, "/readyz") == (200, "ok\n")
        code, body = _get(server.port, "/v1/pods?namespace=bookinfo&labelSelector=app%20in%20(reviews,ratings)")
        data = json.loads(body)
        assert code == 200 and (data["node"], data["agent"]) == ("n1", "agent-1")
        assert [(p["pod"]["namespace"], p["pod"]["name"], p["pod"]["uid"], p["mapping"]) for p in data["pods"]] == [
            ("bookinfo", "reviews-v1", "uid-reviews-v1", "mapped")
        ]
        assert [p["pod"]["name"] for p in json.loads(_get(server.port, "/v1/pods")[1])["pods"]] == [
            "details-v1",
            "reviews-v1",
            "reviews-x",
        ]
        assert _get(server.port, "/v1/pods?labelSelector=app%20in%20(")[0] == 400
        assert _get(server.port, "/v1/pods?maxAge=soon")[0] == 400
        assert _get(server.port, "/nothing")[0] == 404
        assert _get(server.port, "/healthz")[0] == 200
        agent.stats.finished_at -= 3 * 60 + 61  # no full sweep for 3 intervals and a minute: not healthy
        assert _get(server.port, "/healthz")[0] == 503
    finally:
        server.stop()


def test_each_pod_is_encoded_once_while_its_reading_is_the_same_and_says_what_state_data_says(
    monkeypatch: Any,
) -> None:
    import dataclasses

    from podnat.agent import http

    agent = Agent(AgentConfig(node="n1"), scanner=None)  # type: ignore[arg-type]
    server = AgentServer(agent, AgentMetrics(agent), "127.0.0.1", 0, "agent-1")
    encoded: list[str] = []
    real = http.reading_data
    monkeypatch.setattr(http, "reading_data", lambda state, *how: encoded.append(state.uid) or real(state, *how))
    server.start()
    try:
        pods = [_pod("bookinfo", "reviews-v1", "reviews"), _pod("bookinfo", "details-v1", "details")]
        agent.replace_pods(pods)
        for pod in pods:
            meta = pod["metadata"]
            report = Skipped(ref=PodRef(meta["namespace"], meta["name"]), node="n1")
            agent.states[meta["uid"]] = PodState(meta["uid"], pod, report, None, 1.0, "skipped", 2.0)

        def served() -> list[dict[str, Any]]:
            code, body = _get(server.port, "/v1/pods")
            assert code == 200
            return json.loads(body)["pods"]

        first = served()
        assert sorted(encoded) == ["uid-details-v1", "uid-reviews-v1"]
        assert first == [http.state_data(agent.states[f"uid-{n}"], False) for n in ("details-v1", "reviews-v1")]
        encoded.clear()
        assert (first[0]["observed_at"], first[0]["checked_at"]) == (
            "1970-01-01T00:00:01.000000Z",
            "1970-01-01T00:00:02.000000Z",
        )
        # checked again (the same reading, a new check time): served anew, not encoded again
        state = agent.states["uid-reviews-v1"]
        agent.states[state.uid] = dataclasses.replace(state, checked_at=3.0)
        again = served()
        assert again[1]["checked_at"] == "1970-01-01T00:00:03.000000Z" and encoded == []
        # read again (a new report): encoded again; a pod gone is forgotten
        agent.states[state.uid] = dataclasses.replace(state, report=dataclasses.replace(state.report, notes=("x",)))
        assert served()[1]["notes"] == ["x"] and encoded == ["uid-reviews-v1"]
        agent.pod_event("DELETED", pods[1])
        assert [p["pod"]["name"] for p in served()] == ["reviews-v1"]
        assert {key[0] for key in server.encoded._kept} == {"uid-reviews-v1"}
        # a sweep's readings are encoded as verify asks for them (facts=lean) by the sweep, not the request,
        # and what the agent no longer keeps is forgotten without a request
        assert server.swept in agent.observers
        state = agent.states["uid-reviews-v1"]
        agent.states[state.uid] = dataclasses.replace(state, report=dataclasses.replace(state.report, notes=("y",)))
        server.encoded._kept["uid-gone", True, True] = (None, None, None, b"{}")
        encoded.clear()
        server.swept(list(agent.states.values()), [], SweepStats())
        assert encoded == ["uid-reviews-v1"] and {key[0] for key in server.encoded._kept} == {"uid-reviews-v1"}
        code, body = _get(server.port, "/v1/pods?facts=lean")
        assert code == 200 and json.loads(body)["pods"][0]["notes"] == ["y"] and encoded == ["uid-reviews-v1"]
    finally:
        server.stop()
