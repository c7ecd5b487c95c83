"""Where the podnat agents were at the last run: one small file per API server, so that `verify` can ask
them in its first round of requests.

Without it `verify` makes two rounds: the namespace, the pods and the agents at once, then one
`pods/proxy` request per node whose pods it lists. With what the last run saw (which agent pod runs on
which node; on which nodes the pods of this namespace and selector were), it asks those agents in the
first round, beside the lists. The lists then decide, as before: an early answer stands where the same
agent pod still runs on that node, and a node the early round missed is asked after them. A stale,
missing or unreadable file costs that second round, never a wrong answer. kubectl keeps its discovery
cache the same way (`~/.kube/cache`).

The file holds agent pod names, nodes and scopes (a namespace and a selector); no rules, pods or
credentials. Its directory is `$PODNAT_CACHE_DIR`, else `$XDG_CACHE_HOME/podnat`, else
`~/.cache/podnat`; `PODNAT_CACHE_DIR=` (empty) turns it off. Reading or writing it never fails a run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCOPES_KEPT = 64  # the most recently used scopes (namespace, selector) a file remembers


@dataclass(frozen=True, slots=True)
class AgentAt:
    """The agent pod on one node, as the last run's agent list named it."""

    name: str
    port: int


def cache_dir(environ: Mapping[str, str] = os.environ) -> Path | None:
    """The cache's directory; None when PODNAT_CACHE_DIR is set empty (no cache)."""
    if "PODNAT_CACHE_DIR" in environ:
        return Path(environ["PODNAT_CACHE_DIR"]).expanduser() if environ["PODNAT_CACHE_DIR"] else None
    base = environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(base) / "podnat"


def scope_key(namespace: str | None, selector: str | None) -> str:
    return f"{namespace or '*'} {selector or ''}".rstrip()


class AgentCache:
    """The file for one API server and agent namespace: read once, written once per run."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._data: dict[str, Any] | None = None

    @classmethod
    def for_server(cls, server: str, agent_namespace: str, directory: Path | None) -> AgentCache:
        if directory is None:
            return cls(None)
        # as kubectl names its discovery cache: the server's host and port, made safe for a file name
        where = re.sub(r"[^A-Za-z0-9.-]", "_", re.sub(r"^[a-z]+://", "", server.rstrip("/")))
        return cls(directory / "agents" / f"{where}_{agent_namespace}.json")

    def _read(self) -> dict[str, Any]:
        if self._data is None:
            self._data = {}
            if self.path is not None:
                with contextlib.suppress(OSError, ValueError):
                    data = json.loads(self.path.read_text())
                    if isinstance(data, dict) and data.get("version") == 1:
                        self._data = data
        return self._data

    def agents_for(self, namespace: str | None, selector: str | None) -> dict[str, AgentAt]:
        """node -> its agent, for the nodes where this scope's pods were at the last run."""
        data = self._read()
        try:
            nodes = data.get("scopes", {}).get(scope_key(namespace, selector), {}).get("nodes", [])
            agents = data.get("agents", {})
            return {
                str(node): AgentAt(str(agents[node]["name"]), int(agents[node]["port"]))
                for node in nodes
                if node in agents
            }
        except (AttributeError, KeyError, TypeError, ValueError):  # a file some other version wrote
            return {}

    def remember(
        self, agents: Mapping[str, AgentAt], namespace: str | None, selector: str | None, nodes: list[str]
    ) -> None:
        """Keep this run's agents and the nodes its scope's pods are on (best effort: a failure is ignored)."""
        if self.path is None:
            return
        old = self._read()
        found = old.get("scopes")
        scopes = {k: v for k, v in found.items() if isinstance(v, dict)} if isinstance(found, dict) else {}
        scopes[scope_key(namespace, selector)] = {"nodes": sorted(nodes), "used": time.time()}
        kept = sorted(scopes.items(), key=lambda kv: -_when_used(kv[1]))[:SCOPES_KEPT]
        data = {
            "version": 1,
            "agents": {node: {"name": a.name, "port": a.port} for node, a in sorted(agents.items())},
            "scopes": dict(kept),
        }
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            import tempfile

            handle, temp = tempfile.mkstemp(dir=self.path.parent, prefix=".agents-", suffix=".json")
            try:
                with os.fdopen(handle, "w") as out:
                    json.dump(data, out)
                Path(temp).replace(self.path)  # whole or not at all, should two runs write at once
            except OSError:
                Path(temp).unlink(missing_ok=True)
                raise
            self._data = data


def _when_used(scope: dict[str, Any]) -> float:
    used = scope.get("used")
    return float(used) if isinstance(used, (int, float)) else 0.0
