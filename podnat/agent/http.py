"""The agent's HTTP server (on its pod IP): /metrics, /v1/pods, /healthz, /readyz.

`/v1/pods?namespace=NS&labelSelector=SEL&fresh=1&maxAge=S&facts=1`: `{"node", "agent", "pods": [...]}`, each pod
the object `podnat inspect -o json` prints (its `pod` with the `uid` and `resource_version` it was read
from), plus `observed_at` (RFC 3339: when it was read), `checked_at` (when it was last read or found
unchanged since: podnat.agent.changes), `mapping` (mapped, unmapped, host-network, skipped) and, with
`facts=1`, `facts` (the tables and listeners read; the CLI explains them itself; `facts=lean`: the
tables only of the pods whose report the CLI cannot take as it is, `withheld` for the others, which
verify asks for). `fresh=1` checks the
pods asked for now instead of serving the last sweep (each one whose namespace changed, or which no
check covers, is read again); `maxAge=S` checks now only those checked more than S seconds ago.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from podnat.agent.metrics import AgentMetrics
from podnat.agent.service import Agent, PodState, SweepStats
from podnat.wire import facts_data, may_relay

log = logging.getLogger("podnat.agent.http")


def state_data(state: PodState, with_facts: bool, lean: bool = False) -> dict[str, Any]:
    """A pod of `/v1/pods`: its reading (`reading_data`) and when it was read and checked."""
    return {**reading_data(state, with_facts, lean), **_when(state)}


def reading_data(state: PodState, with_facts: bool, lean: bool = False) -> dict[str, Any]:
    """What a pod's reading says (the same for the same report, facts and Pod objects). `lean`: the facts'
    tables only where the CLI cannot take the report as it is (podnat.wire.may_relay)."""
    from podnat.render.data import pod_report_data

    data = pod_report_data(state.report)
    data["pod"]["uid"] = state.uid
    data["pod"]["resource_version"] = (state.pod.get("metadata") or {}).get("resourceVersion")
    if with_facts and state.facts is not None:
        report = state.report
        tables = not lean or not may_relay(report.mesh, report.status.value)
        data["facts"] = facts_data(state.facts, tables=tables)
    return data


def _when(state: PodState) -> dict[str, str]:
    return {
        "observed_at": _rfc3339(state.observed_at),
        "checked_at": _rfc3339(state.checked),
        "mapping": state.mapping,
    }


class EncodedReadings:
    """Each pod's reading as JSON, kept while the reading is the same objects (frozen: the same report, facts
    and Pod encode alike; a pod read as before keeps its report, usecases.made_of), so that answering a
    request encodes only the readings that changed and the times of each."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: dict[tuple[str, bool, bool], tuple[object, object, object, bytes]] = {}

    def pod(self, state: PodState, with_facts: bool, lean: bool = False) -> bytes:
        return self._reading(state, with_facts, lean)[:-1] + b"," + _json(_when(state))[1:]

    def _reading(self, state: PodState, with_facts: bool, lean: bool) -> bytes:
        key = (state.uid, with_facts, lean)
        with self._lock:
            kept = self._kept.get(key)
        if kept is not None and kept[0] is state.report and kept[1] is state.facts and kept[2] is state.pod:
            return kept[3]
        encoded = _json(reading_data(state, with_facts, lean))
        with self._lock:
            self._kept[key] = (state.report, state.facts, state.pod, encoded)
        return encoded

    def warm(self, states: list[PodState]) -> None:
        """Each reading encoded as `verify` asks for them (facts=lean), before a request does."""
        for state in states:
            self._reading(state, with_facts=True, lean=True)

    def keep_only(self, uids: set[str]) -> None:
        """Forget the pods the agent no longer keeps."""
        with self._lock:
            for key in [k for k in self._kept if k[0] not in uids]:
                del self._kept[key]


def _json(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _rfc3339(when: float) -> str:
    return datetime.datetime.fromtimestamp(when, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class AgentServer:
    """A threading HTTP server over one Agent; `serve_forever` in a thread of its own."""

    def __init__(
        self, agent: Agent, metrics: AgentMetrics, address: str, port: int, name: str, stale_after: float | None = None
    ) -> None:
        self.agent = agent
        self.metrics = metrics
        self.name = name
        self.stale_after = stale_after or (3 * agent.config.interval + 60)
        self.encoded = EncodedReadings()
        agent.observers.append(self.swept)
        handler = type("Handler", (_Handler,), {"server_ref": self})
        self.httpd = ThreadingHTTPServer((address, port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="podnat-http", daemon=True)

    def swept(self, states: list[PodState], previous: list[PodState], stats: SweepStats) -> None:
        """An Agent observer: a sweep's readings encoded in the sweep's thread, not in the next request's (each
        sweep reads every pod anew: 110 pods, ~0.1 s), and the pods the agent no longer keeps forgotten (with
        no request to do it, a node's churn would pile up)."""
        del previous, stats
        self.encoded.warm(states)
        self.encoded.keep_only(self.agent.kept())

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def healthy(self) -> tuple[bool, str]:
        """Alive: a full sweep finished within `stale_after` (or none is due yet)."""
        stats = self.agent.stats
        if not self.agent.swept:
            return True, "starting"
        age = time.time() - stats.finished_at
        return (age <= self.stale_after, f"last sweep {age:.0f}s ago")

    def ready(self) -> tuple[bool, str]:
        if not self.agent.listed:
            return False, f"pods not listed yet{': ' + self.agent.api_error if self.agent.api_error else ''}"
        if not self.agent.swept:
            return False, "first sweep not finished"
        return True, "ok" if not self.agent.api_error else f"ok (serving the last sweep; API: {self.agent.api_error})"


class _Handler(BaseHTTPRequestHandler):
    server_ref: AgentServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        server = self.server_ref
        try:
            if url.path == "/metrics":
                self._send(200, generate_latest(server.metrics.registry), CONTENT_TYPE_LATEST)
            elif url.path == "/healthz":
                ok, why = server.healthy()
                self._send(200 if ok else 503, (why + "\n").encode(), "text/plain")
            elif url.path == "/readyz":
                ok, why = server.ready()
                self._send(200 if ok else 503, (why + "\n").encode(), "text/plain")
            elif url.path == "/v1/pods":
                self._pods(query)
            else:
                self._send(404, b'{"error": "not found: /v1/pods, /metrics, /healthz, /readyz"}\n', "application/json")
        except (BrokenPipeError, ConnectionResetError):
            return

    def _pods(self, query: dict[str, str]) -> None:
        server = self.server_ref
        selector = None
        if query.get("labelSelector"):
            from podnat.selectors import SelectorError, parse_label_selector, selects

            try:
                requirements = parse_label_selector(query["labelSelector"])
            except SelectorError as err:
                self._send(400, json.dumps({"error": str(err)}).encode(), "application/json")
                return

            def selector(pod: Any) -> bool:
                return selects(pod, requirements, [])

        max_age: float | None = 0.0 if query.get("fresh", "").lower() in ("1", "true") else None
        if query.get("maxAge"):
            try:
                max_age = max(0.0, float(query["maxAge"]))
            except ValueError:
                self._send(400, json.dumps({"error": "maxAge: seconds, e.g. 30"}).encode(), "application/json")
                return
        with_facts = query.get("facts", "").lower() in ("1", "true", "lean")
        lean = query.get("facts", "").lower() == "lean"
        if not server.agent.listed:
            self._send(503, json.dumps({"error": "the agent has not listed its pods yet"}).encode(), "application/json")
            return
        states = server.agent.states_for(query.get("namespace") or None, selector, max_age)
        head = _json({"node": server.agent.config.node, "agent": server.name})
        pods = b",".join(server.encoded.pod(s, with_facts, lean) for s in states)
        server.encoded.keep_only(server.agent.kept())
        self._send(200, head[:-1] + b',"pods":[' + pods + b"]}", "application/json")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
