"""Reading pods through podnat's node agent, over the API server's `pods/proxy` subresource.

The agent of a pod's node is found by label in its namespace (one list, cached); its `/v1/pods` answers
for every pod of that node at once, so `verify` asks each node once (`prefetch`), and `inspect` once
for its pod. The agent checks now (`maxAge=0`, or what `--max-age` allows: a pod whose namespace did
not change since its last reading keeps it, the others are read again) and sends the facts
(`facts=1`): the tables and
listeners it read in the pod's namespace, beside its report of them, which `verify` takes as it is where
it may (podnat.wire.agent_report) and podnat explains here otherwise, as for any other source.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlencode

from podnat.facts import PodFacts
from podnat.kube.agentcache import AgentAt, AgentCache, cache_dir
from podnat.kube.client import KubeClient
from podnat.kube.errors import Action, Failure, KubeSourceError, translate

if TYPE_CHECKING:
    from urllib3 import HTTPResponse

AGENT_NAMESPACE = os.environ.get("PODNAT_AGENT_NAMESPACE", "podnat-system")
AGENT_SELECTOR = "app.kubernetes.io/name=podnat-agent"
AGENT_PORT = 9477


class AgentReader:
    """Finds the agents and asks them; thread-safe (verify's workers share it)."""

    def __init__(self, client: KubeClient, namespace: str = AGENT_NAMESPACE) -> None:
        self.client = client
        self.namespace = namespace
        self.timeout = max(client.options.timeout, 60.0)
        self.requests = 0  # pods/proxy requests made (the benchmark counts them)
        self.max_age = 0.0  # accept the agent's reading when at most this old (0: it reads now)
        self._agents: dict[str, Mapping[str, Any]] | None = None
        self._agents_error: str | None = None
        # (node, lean) -> the agent's answer: uid -> its item (lean: verify's, the tables withheld where the
        # report may be taken as it is)
        self._nodes: dict[tuple[str, bool], dict[str, Mapping[str, Any]] | KubeSourceError] = {}
        self._lock = threading.Lock()
        self._node_locks: dict[str, threading.Lock] = {}
        self.cache: AgentCache | None = None  # where the agents were at the last run (ask_ahead's)
        self._scope: tuple[str | None, str | None] | None = None
        self._ahead: dict[str, tuple[AgentAt, bool, _Early]] = {}  # node -> the agent asked early, lean, its answer

    def agents(self) -> dict[str, Mapping[str, Any]]:
        """node -> the running agent pod there; {} when there is none (or podnat may not list them)."""
        with self._lock:
            if self._agents is not None:
                return self._agents
            found: dict[str, Mapping[str, Any]] = {}
            try:
                # _preload_content=False: the raw urllib3 response, not the V1PodList the stubs name
                resp = cast(
                    "HTTPResponse",
                    self.client.core.list_namespaced_pod(
                        self.namespace,
                        label_selector=AGENT_SELECTOR,
                        _preload_content=False,
                        _request_timeout=self.client.options.timeout,
                    ),
                )
                items = json.loads(resp.data).get("items") or []
            except Exception as exc:
                err = translate(exc, Action("list", "pods", self.namespace), self.client.server)
                self._agents_error = err.message
                items = []
            for item in items:
                node = (item.get("spec") or {}).get("nodeName")
                status = item.get("status") or {}
                if node and status.get("phase") == "Running" and status.get("podIP"):
                    found[str(node)] = item
            self._agents = found
            return found

    def ask_ahead(self, namespace: str | None, selector: str | None, lean: bool = False) -> None:
        """verify, before its lists come back: ask now the agents of the nodes where this scope's pods were at
        the last run (podnat/kube/agentcache.py), each in a thread of its own. `prefetch` keeps an answer
        where the same agent pod still runs on that node, asks the nodes this missed, and remembers both."""
        if self.cache is None:
            self.cache = AgentCache.for_server(self.client.server, self.namespace, cache_dir())
        self._scope = (namespace, selector)
        for node, agent in self.cache.agents_for(namespace, selector).items():
            early = _Early(lambda node=node, agent=agent: self._ask_at(agent, node, namespace, lean))  # type: ignore[misc]
            self._ahead[node] = (agent, lean, early)

    def prefetch(self, pods: Iterable[Mapping[str, Any]], lean: bool = False) -> None:
        """One request per node with an agent, for all `pods` (namespace-filtered when they share one).

        `lean` (verify's, which takes the agent's reports as they are where it may): the agent withholds the
        tables of the pods whose report the CLI may take; a pod whose report it cannot take after all (the
        CLI listed another version of it, or sees it otherwise) gets them with one more request
        (PodFacts.complete)."""
        pods = list(pods)
        agents = self.agents()
        namespaces = {(p.get("metadata") or {}).get("namespace") for p in pods}
        namespace = next(iter(namespaces)) if len(namespaces) == 1 else None
        nodes = sorted({str(n) for p in pods if (n := (p.get("spec") or {}).get("nodeName")) in agents})
        for node in nodes:  # an early answer stands where the agent it came from still runs there
            if node in self._ahead and self._ahead[node][0] == _agent_at(agents[node]):
                _, early_lean, early = self._ahead[node]
                answered = early.result()
                if answered is not None:
                    self._nodes.setdefault((node, early_lean), answered)
        if missed := [node for node in nodes if (node, lean) not in self._nodes]:
            with ThreadPoolExecutor(max_workers=min(16, len(missed))) as pool:
                list(pool.map(lambda node: self._node(node, namespace, lean), missed))
        if self.cache is not None and self._scope is not None and self._agents_error is None:
            answered_nodes = [n for n in nodes if not isinstance(self._nodes.get((n, lean)), KubeSourceError)]
            self.cache.remember({n: _agent_at(a) for n, a in agents.items()}, *self._scope, answered_nodes)

    def at_hand(self, pod: Mapping[str, Any]) -> bool:
        """Whether the pod's node's agent has answered already with facts of it (facts_for asks nothing)."""
        node = str((pod.get("spec") or {}).get("nodeName") or "")
        answered = self._nodes.get((node, True)) or self._nodes.get((node, False))
        if answered is None or isinstance(answered, KubeSourceError):
            return False
        item = answered.get(str((pod.get("metadata") or {}).get("uid") or ""))
        return item is not None and bool((item.get("facts") or {}).get("nat"))

    def facts_for(self, pod: Mapping[str, Any]) -> PodFacts | None:
        """The pod's facts as its node's agent read them; None when no agent runs on its node.

        Raises KubeSourceError when the agent could not be asked or could not read the pod."""
        node = str((pod.get("spec") or {}).get("nodeName") or "")
        agent = self.agents().get(node)
        if agent is None:
            return None
        return self._facts_of(pod, node, agent, lean=(node, True) in self._nodes)

    def _facts_of(self, pod: Mapping[str, Any], node: str, agent: Mapping[str, Any], lean: bool) -> PodFacts:
        meta = pod.get("metadata") or {}
        answered = self._node(node, str(meta.get("namespace") or ""), lean)
        if isinstance(answered, KubeSourceError):
            raise answered
        item = answered.get(str(meta.get("uid") or ""))
        agent_name = agent["metadata"]["name"]
        if item is None:
            raise KubeSourceError(
                Failure.NOT_FOUND,
                f"the podnat agent {agent_name} on node {node} does not know pod "
                f"{meta.get('namespace')}/{meta.get('name')} yet (it was just created?)",
            )
        facts = item.get("facts")
        if facts is None or not facts.get("nat"):
            error = (item.get("error") or {}).get("message") or f"status {item.get('status')}"
            said = (item.get("error") or {}).get("failure")
            failure = Failure.TABLE_UNREADABLE if said == Failure.TABLE_UNREADABLE.value else Failure.API_ERROR
            raise KubeSourceError(
                failure, f"the podnat agent {agent_name} on node {node} could not read the pod: {error}"
            )
        from podnat.wire import agent_report, facts_from_data

        found = facts_from_data(facts, pod)
        assert found.nat is not None
        read, checked = item.get("observed_at"), item.get("checked_at") or item.get("observed_at")
        since = f" (read at {read}, unchanged since)" if checked != read else ""
        label = (
            f"podnat agent {agent_name} on node {node}, live at {checked}{since}: "
            + (found.nat.label.split(": ", 1)[-1])
        )
        found = replace(found, nat=replace(found.nat, label=label), relayed=agent_report(item, pod))
        if facts.get("withheld"):  # what the report was made of, should it not be taken as it is
            return replace(found, complete=lambda: self._facts_of(pod, node, agent, lean=False))
        return found

    def _node(self, node: str, namespace: str | None, lean: bool) -> dict[str, Mapping[str, Any]] | KubeSourceError:
        with self._lock:
            lock = self._node_locks.setdefault(node, threading.Lock())
        with lock:
            if (node, lean) not in self._nodes:
                self._nodes[node, lean] = self._ask(node, namespace, lean)
            return self._nodes[node, lean]

    def _ask(self, node: str, namespace: str | None, lean: bool) -> dict[str, Mapping[str, Any]] | KubeSourceError:
        return self._ask_at(_agent_at(self.agents()[node]), node, namespace, lean)

    def _ask_at(
        self, agent: AgentAt, node: str, namespace: str | None, lean: bool
    ) -> dict[str, Mapping[str, Any]] | KubeSourceError:
        name = agent.name
        query = {
            "facts": "lean" if lean else "1",
            "maxAge": f"{self.max_age:g}",
            **({"namespace": namespace} if namespace else {}),
        }
        path = f"/api/v1/namespaces/{self.namespace}/pods/{name}:{agent.port}/proxy/v1/pods?{urlencode(query)}"
        api = self.client.api_client
        self.requests += 1
        try:
            request = api.param_serialize(
                "GET", path, header_params={"Accept": "application/json"}, auth_settings=["BearerToken"]
            )
            resp = api.call_api(*request, _request_timeout=self.timeout)
            data = resp.read()
            if not 200 <= resp.status <= 299:
                from kubernetes.client.exceptions import ApiException

                raise ApiException.from_response(http_resp=resp, body=None, data=None)
            body = json.loads(data)
        except Exception as exc:
            err = translate(exc, Action("get", "pods/proxy", self.namespace, name), self.client.server)
            return KubeSourceError(
                err.failure, f"the podnat agent {name} on node {node} could not be asked: {err.message}"
            )
        return {str(item["pod"].get("uid")): item for item in body.get("pods") or []}


class _Early:
    """A request sent ahead, in a daemon thread: a run that stops before it needs the answer does not wait."""

    def __init__(self, call: Callable[[], dict[str, Mapping[str, Any]] | KubeSourceError]) -> None:
        self._done = threading.Event()
        self._answer: dict[str, Mapping[str, Any]] | KubeSourceError | None = None

        def run() -> None:
            try:
                self._answer = call()
            finally:
                self._done.set()

        threading.Thread(target=run, name="podnat-agent-ahead", daemon=True).start()

    def result(self) -> dict[str, Mapping[str, Any]] | KubeSourceError | None:
        """The answer (None: the call raised, which _ask_at does not)."""
        self._done.wait()
        return self._answer


def _agent_at(agent: Mapping[str, Any]) -> AgentAt:
    return AgentAt(str(agent["metadata"]["name"]), _port(agent))


def _port(agent: Mapping[str, Any]) -> int:
    """The agent's HTTP port: its container port named `http` (the DaemonSet's), else 9477."""
    for container in (agent.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == "http" and port.get("containerPort"):
                return int(port["containerPort"])
    return AGENT_PORT
