"""`podnat agent`: wire the parts together and run until SIGTERM."""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import threading
from pathlib import Path

from podnat.agent.events import EventRecorder, KubeEvents
from podnat.agent.http import AgentServer
from podnat.agent.metrics import AgentMetrics
from podnat.agent.namespaces import NamespaceLabels, kube_reader
from podnat.agent.node import NodeScanner
from podnat.agent.service import Agent, AgentConfig, PodWatch

log = logging.getLogger("podnat.agent")


def run_agent(config: AgentConfig, client: object, proc: Path, address: str, port: int, events: bool) -> int:
    """Serve until SIGTERM/SIGINT; 0 on a clean stop."""
    # The CLI's entry point leaves the cyclic collector off for one-shot commands; the agent runs for
    # weeks, so it turns it back on, with what start-up made frozen (never walked again).
    gc.freeze()
    gc.enable()
    scanner = NodeScanner(proc)
    agent = Agent(
        config, scanner, namespace_labels=NamespaceLabels(kube_reader(client, config.read_timeout), ttl=config.interval)
    )
    metrics = AgentMetrics(agent)
    agent.observers.append(metrics.observe)
    recorder = EventRecorder(KubeEvents(client), config.node) if events else None
    if recorder is not None:
        agent.observers.append(recorder.observe)
    name = os.environ.get("POD_NAME") or socket.gethostname()
    server = AgentServer(agent, metrics, address, port, name)
    watch = PodWatch(agent, client)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    threads = [
        threading.Thread(target=watch.run, name="podnat-watch", daemon=True),
        threading.Thread(target=agent.run, name="podnat-sweep", daemon=True),
    ]
    for thread in threads:
        thread.start()
    server.start()
    log.info(
        "podnat agent on node %s: http://%s:%d (/metrics, /v1/pods, /healthz, /readyz), /proc at %s, every %gs",
        config.node,
        address,
        server.port,
        proc,
        config.interval,
    )
    stop.wait()
    log.info("stopping")
    watch.stop()
    agent.stop()
    server.stop()
    if recorder is not None:
        recorder.stop()
    return 0
