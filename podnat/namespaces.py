"""Namespaces as the use cases need them: each one's labels, read once per run, and verify's check that
the namespace it was given exists.

Over the Cluster port (podnat/facts.py) alone, so that `verify` sends this read with its first requests
before it loads the source policy (podnat/sources.py) and the use cases.
"""

from __future__ import annotations

from collections.abc import Mapping

from podnat.facts import Cluster, Failure, SourceError


class NamespaceLabels:
    """Each namespace's labels, read once per run (a namespace labelled istio.io/dataplane-mode=ambient
    enrols its pods: podnat.istio.pod). None for a namespace that could not be read (no right to `get
    namespaces`): its pods are then read from their own labels and annotations only."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._read: dict[str, Mapping[str, str] | None] = {}

    def __call__(self, namespace: str) -> Mapping[str, str] | None:
        if namespace not in self._read:  # two threads may both read it: the same answer
            try:
                self._get(namespace)
            except SourceError:
                self._read[namespace] = None
        return self._read[namespace]

    def check(self, namespace: str) -> str | None:
        """`verify -n NS`: raises SourceError (NOT_FOUND, exit 3) when NS does not exist; returns a warning
        when it could not be checked (no right to `get namespaces`), else None. Its labels are kept."""
        try:
            self._get(namespace)
        except SourceError as err:
            self._read[namespace] = None
            if err.failure is not Failure.FORBIDDEN:
                raise
            return f"namespace {namespace} could not be checked ({err.message})"
        return None

    def _get(self, namespace: str) -> None:
        found = self.cluster.get_namespace(namespace)
        labels = (found.get("metadata") or {}).get("labels") or {}
        self._read[namespace] = {str(k): str(v) for k, v in labels.items()}


def check_namespace(cluster: Cluster, namespace: str) -> str | None:
    """NamespaceLabels(cluster).check(namespace), for a caller that needs no labels."""
    return NamespaceLabels(cluster).check(namespace)
