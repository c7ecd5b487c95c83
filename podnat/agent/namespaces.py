"""The labels of the Namespaces the node's pods are in, for the pods whose mesh mode their namespace decides.

A pod enrolled in ambient only by its namespace's `istio.io/dataplane-mode=ambient` label (no label or
istio-cni annotation of its own: istio-cni never annotated it, or the annotation went) looks like a pod
outside the mesh until its Namespace is read; `inspect_pod` asks for it only for such a pod
(`PodInfo.namespace_decides`), as the CLI does. The agent reads it with `get namespaces/NAME` (its
ClusterRole grants get on namespaces and nothing more: no list, no watch) and keeps the labels `ttl`
seconds, so a sweep costs at most one GET per namespace per interval and a label added to (or removed
from) a namespace is seen within one interval. A namespace that cannot be read is not known (None): its
pods are read as their own spec says, and the agent logs why once per namespace.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger("podnat.agent.namespaces")

ReadNamespace = Callable[[str], Mapping[str, Any]]  # `get namespaces/NAME`: the Namespace object; raises on failure


class NamespaceLabels:
    """A `usecases.NamespaceLabels` callable: name -> the Namespace's labels (None: could not be read), cached."""

    def __init__(self, read: ReadNamespace, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.read = read
        self.ttl = ttl
        self.clock = clock
        self.reads = 0  # GETs made, for the tests and the logs
        self._cache: dict[str, tuple[float, Mapping[str, str] | None]] = {}
        self._failed: set[str] = set()  # namespaces whose failure was logged (once each until they read again)
        self._lock = threading.Lock()

    def __call__(self, name: str) -> Mapping[str, str] | None:
        now = self.clock()
        with self._lock:
            cached = self._cache.get(name)
            if cached is not None and now - cached[0] < self.ttl:
                return cached[1]
        labels = self._get(name)
        with self._lock:
            self._cache[name] = (now, labels)
        return labels

    def _get(self, name: str) -> Mapping[str, str] | None:
        self.reads += 1
        try:
            found = self.read(name)
        except Exception as exc:  # 403 without the RBAC rule, 404 for a namespace being deleted, the API away
            if name not in self._failed:
                self._failed.add(name)
                status = getattr(exc, "status", None)
                log.warning(
                    "namespace %s not read (%s): a pod of it enrolled in ambient by its label alone is read as "
                    "outside the mesh; the agent needs `get namespaces` (manifests/agent/rbac.yaml)",
                    name,
                    f"HTTP {status}" if status else f"{type(exc).__name__}: {exc}",
                )
            return None
        self._failed.discard(name)
        labels = (found.get("metadata") or {}).get("labels") or {}
        return {str(k): str(v) for k, v in labels.items()}


def kube_reader(client: Any, timeout: float = 20.0) -> ReadNamespace:
    """`get namespaces/NAME` through the official client (podnat's KubeClient)."""

    def read(name: str) -> Mapping[str, Any]:
        resp = client.core.read_namespace(name, _preload_content=False, _request_timeout=timeout)
        return dict(json.loads(resp.data))

    return read
