"""The lab's Envoy: a bootstrap with the listeners and clusters istiod gives a sidecar. Pure.

virtualOutbound 15001 (use_original_dst: hands a connection to the per-service listener of its
original destination, else passes it through), per-service `<vip>_<port>` listeners that bind no
port and send to the Service's endpoints, virtualInbound 15006 (to the original destination, from
127.0.0.6), 0.0.0.0_15090 (Prometheus, from the admin port) and 0.0.0.0_15021 (health, from
pilot-agent's 15020), admin on 127.0.0.1:15000.

As istiod configures the other capture setups: TPROXY makes 15001 and 15006 `transparent` and gives
15006 the `original_src` listener filter (mark 1337) instead of the bind to 127.0.0.6 (docs/istio-capture.md:
without `transparent` the diverted packets are dropped, without `original_src` the app sees
127.0.0.6); dual-stack adds `[::]` to every bound listener and `::6` as the inbound source for IPv6.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ADMIN_PORT = 15000
AGENT_PORT = 15020
INBOUND_SOURCE = "127.0.0.6"
INBOUND_SOURCE_V6 = "::6"
TPROXY_MARK = 1337


@dataclass(frozen=True, slots=True)
class ServiceRoute:
    """A Service VIP:port and the pod IPs behind it."""

    name: str  # e.g. reviews.bookinfo.svc.cluster.local
    vip: str
    port: int
    endpoints: tuple[str, ...]


def _tcp_proxy(cluster: str, stat_prefix: str) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": stat_prefix,
            "cluster": cluster,
        },
    }


def _http(route_prefix: str, cluster: str, stat_prefix: str) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
            ".HttpConnectionManager",
            "stat_prefix": stat_prefix,
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": "local",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": route_prefix}, "route": {"cluster": cluster}}],
                    }
                ]
            },
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                }
            ],
        },
    }


def _address(address: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": address, "port_value": port}}


def _static(name: str, endpoints: Sequence[tuple[str, int]]) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _address(host, port)}} for host, port in endpoints]}
            ],
        },
    }


ORIGINAL_DST_FILTER = {
    "name": "envoy.filters.listener.original_dst",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"},
}
# TPROXY: Envoy's leg to the app keeps the client's address and marks its socket, so the app's reply
# is routed back to Envoy (ip rule fwmark 1337 lookup 133).
ORIGINAL_SRC_FILTER = {
    "name": "envoy.filters.listener.original_src",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_src.v3.OriginalSrc",
        "mark": TPROXY_MARK,
    },
}


# A fresh upstream connection per request, so that every scrape's leg to the admin port is a new
# connection the nat table sees (Istio pools it; docs/istio-capture.md: then ISTIO_OUTPUT #4 counts only once).
ONE_REQUEST_PER_CONNECTION = {
    "typed_extension_protocol_options": {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "common_http_protocol_options": {"max_requests_per_connection": 1},
            "explicit_http_config": {"http_protocol_options": {}},
        }
    }
}


def envoy_bootstrap(
    node_id: str,
    services: Sequence[ServiceRoute],
    outbound_port: int = 15001,
    inbound_port: int = 15006,
    *,
    tproxy: bool = False,
    ipv6: bool = False,
) -> Mapping[str, Any]:
    """The bootstrap for one pod's Envoy (TPROXY: transparent capture listeners; ipv6: dual-stack)."""
    inbound_bind: dict[str, Any] = {"source_address": {"address": INBOUND_SOURCE, "port_value": 0}}
    if ipv6:
        inbound_bind["extra_source_addresses"] = [{"address": _address(INBOUND_SOURCE_V6, 0)["socket_address"]}]
    listeners: list[dict[str, Any]] = [
        {
            "name": "virtualOutbound",
            "address": _address("0.0.0.0", outbound_port),
            "use_original_dst": True,
            "listener_filters": [ORIGINAL_DST_FILTER],
            "filter_chains": [{"filters": [_tcp_proxy("PassthroughCluster", "PassthroughCluster")]}],
        },
        *(
            {
                "name": f"{service.vip}_{service.port}",
                "address": _address(service.vip, service.port),
                "bind_to_port": False,
                "filter_chains": [{"filters": [_tcp_proxy(_cluster_name(service), _cluster_name(service))]}],
            }
            for service in services
        ),
        {
            "name": "virtualInbound",
            "address": _address("0.0.0.0", inbound_port),
            "listener_filters": [ORIGINAL_DST_FILTER, ORIGINAL_SRC_FILTER] if tproxy else [ORIGINAL_DST_FILTER],
            "filter_chains": [{"filters": [_tcp_proxy("InboundPassthroughCluster", "InboundPassthroughCluster")]}],
        },
        {
            "name": "0.0.0.0_15090",
            "address": _address("0.0.0.0", 15090),
            "filter_chains": [{"filters": [_http("/stats/prometheus", "prometheus_stats", "stats")]}],
        },
        {
            "name": "0.0.0.0_15021",
            "address": _address("0.0.0.0", 15021),
            "filter_chains": [{"filters": [_http("/healthz/ready", "agent", "agent")]}],
        },
    ]
    clusters: list[dict[str, Any]] = [
        {
            "name": "PassthroughCluster",
            "type": "ORIGINAL_DST",
            "lb_policy": "CLUSTER_PROVIDED",
            "connect_timeout": "2s",
        },
        {
            "name": "InboundPassthroughCluster",
            "type": "ORIGINAL_DST",
            "lb_policy": "CLUSTER_PROVIDED",
            "connect_timeout": "2s",
            # TPROXY: original_src picks the source, so no bind to 127.0.0.6 (as istiod leaves it out).
            **({} if tproxy else {"upstream_bind_config": inbound_bind}),
        },
        {**_static("prometheus_stats", [("127.0.0.1", ADMIN_PORT)]), **ONE_REQUEST_PER_CONNECTION},
        {**_static("agent", [("127.0.0.1", AGENT_PORT)]), **ONE_REQUEST_PER_CONNECTION},
        *(_static(_cluster_name(service), [(ip, service.port) for ip in service.endpoints]) for service in services),
    ]
    for listener in listeners:
        if tproxy and listener["name"] in ("virtualOutbound", "virtualInbound"):
            listener["transparent"] = True
        if ipv6 and listener.get("bind_to_port", True):
            port = listener["address"]["socket_address"]["port_value"]
            listener["additional_addresses"] = [{"address": _address("::", port)}]
    return {
        "node": {"id": node_id, "cluster": node_id.split("~")[2] if node_id.count("~") >= 2 else "lab"},
        "admin": {"address": _address("127.0.0.1", ADMIN_PORT)},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


def _cluster_name(service: ServiceRoute) -> str:
    family = "|ipv6" if ":" in service.vip else ""  # a dual-stack Service's IPv6 VIP: its own endpoints
    return f"outbound|{service.port}||{service.name}{family}"
