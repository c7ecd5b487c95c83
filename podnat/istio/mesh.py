"""How a pod is (or is not) in the mesh: the one vocabulary podnat.istio.pod decides and the facts carry.

A module of its own so that the pod facts (podnat/facts.py) name it without loading the pod reader.
"""

from __future__ import annotations

from enum import Enum


class MeshMode(str, Enum):
    """How a pod is (or is not) in the mesh; only SIDECAR has sidecar rules to explain."""

    SIDECAR = "sidecar"  # istio-proxy (container or native sidecar) with traffic capture
    NO_SIDECAR = "no-sidecar"  # no istio-proxy container, not enrolled in ambient
    AMBIENT = "ambient"  # ambient mode: ztunnel captures, there is no sidecar
    NO_CAPTURE = "no-capture"  # istio-proxy without capture (interceptionMode NONE)
