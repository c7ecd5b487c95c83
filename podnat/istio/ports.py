"""Istio's fixed ports, named once (sidecar and ambient). Pure.

The ports istio-iptables and istio-cni redirect to, and the ones a pod's proxy listens on that its
rules leave alone. Configurable ones (`-p`, `-z`, `-e`) default to these.
"""

from __future__ import annotations

ADMIN = 15000  # Envoy's admin API, on localhost
OUTBOUND = 15001  # Envoy's virtualOutbound (-p); ztunnel's outbound capture in ambient
INBOUND = 15006  # Envoy's virtualInbound (-z); ztunnel's plaintext inbound in ambient
HBONE = 15008  # the HBONE tunnel (-e): never captured
AGENT = 15020  # pilot-agent's merged metrics and status
HEALTH = 15021  # the health check (pilot-agent, through Envoy)
DNS_PROXY = 15053  # pilot-agent's DNS proxy (ztunnel's in ambient), on localhost
PROMETHEUS = 15090  # Envoy's Prometheus stats
