"""The six traffic types of an Istio sidecar pod (podnat's vocabulary), built from a pod context.

Each flow is where a first connection starts: who sends it (the app, the proxy, a remote peer), from
where, to where. podnat/istio/paths.py then decides which way it goes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from enum import IntEnum

from podnat.istio import ports
from podnat.istio.actor import Actor
from podnat.netfilter.addresses import split_host_port
from podnat.netfilter.model import IPAddress


class FlowType(IntEnum):
    """The six textbook traffic types (numbered as users know them)."""

    REMOTE_TO_LOCAL = 1
    LOCAL_TO_REMOTE = 2
    PROMETHEUS_TO_LOCAL = 3
    LOCAL_TO_LOCAL = 4
    ENVOY_LOCALHOST = 5
    SIDECAR_TO_ISTIOD = 6
    DNS = 7  # only with DNS capture: app -> cluster DNS, answered by pilot-agent on 15053
    KUBELET_PROBE = 8  # ambient: kubelet's probe, SNAT'd on the node to 169.254.7.127, accepted uncaptured

    @property
    def title(self) -> str:
        return FLOW_TITLES[self]


FLOW_TITLES = {
    FlowType.REMOTE_TO_LOCAL: "remote pod -> local pod",
    FlowType.LOCAL_TO_REMOTE: "local pod -> remote pod",
    FlowType.PROMETHEUS_TO_LOCAL: "Prometheus -> local pod (15090)",
    FlowType.LOCAL_TO_LOCAL: "local pod -> local pod (via its own Service)",
    FlowType.ENVOY_LOCALHOST: "Envoy-internal localhost",
    FlowType.SIDECAR_TO_ISTIOD: "sidecar -> istiod",
    FlowType.DNS: "app -> cluster DNS (captured to pilot-agent 15053)",
    FlowType.KUBELET_PROBE: "kubelet probe -> local pod (ambient: SNAT 169.254.7.127, not captured)",
}
DNS_PROXY_PORT = ports.DNS_PROXY


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An address and port."""

    address: IPAddress
    port: int

    def __str__(self) -> str:
        if self.address.version == 6:
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"

    @classmethod
    def parse(cls, text: str, default_port: int | None = None) -> Endpoint:
        """`10.0.0.1:80`, `[fd00::1]:80`, or an address alone when a default port is given."""
        text = text.strip()
        host, port = split_host_port(text)
        if port is None and default_port is None:
            raise ValueError(f"{text!r}: expected IP:PORT")
        try:
            address = ipaddress.ip_address(host)
            number = int(port) if port is not None else default_port
        except ValueError:
            raise ValueError(f"{text!r}: expected IP:PORT") from None
        if number is None or not 0 < number < 65536:
            raise ValueError(f"{text!r}: bad port")
        return cls(address, number)


@dataclass(frozen=True, slots=True)
class Identity:
    """The uid and primary gid a local socket carries (what owner matches see)."""

    uid: int
    gid: int
    groups: frozenset[int] = field(default_factory=frozenset)


DEFAULT_POD_IP = ipaddress.IPv4Address("10.99.0.2")
INBOUND_SOURCE_V4 = ipaddress.IPv4Address("127.0.0.6")  # where Envoy's inbound legs come from


@dataclass(frozen=True, slots=True)
class PodContext:
    """What podnat needs to know about a pod to build and follow its flows. Defaults are documented."""

    pod_ip: IPAddress = DEFAULT_POD_IP
    app_ports: tuple[int, ...] = (9080,)
    remote: Endpoint = Endpoint(ipaddress.IPv4Address("10.99.0.1"), 9080)
    service: Endpoint = Endpoint(ipaddress.IPv4Address("10.96.12.3"), 9080)
    istiod: Endpoint = Endpoint(ipaddress.IPv4Address("10.96.0.10"), 15012)
    app: Identity = Identity(1000, 1000)
    proxy: Identity = Identity(1337, 1337)
    admin: Endpoint = Endpoint(ipaddress.IPv4Address("127.0.0.1"), ports.ADMIN)
    agent_ports: tuple[int, ...] = (ports.AGENT,)  # pilot-agent: status (and 15053 DNS when captured)
    iface: str = "eth0"
    inbound_source: IPAddress = INBOUND_SOURCE_V4  # ::6 on IPv6
    endpoints: tuple[tuple[Endpoint, Endpoint], ...] = ()  # Service VIP -> endpoint Envoy picks
    transparent_inbound: bool = False  # TPROXY: Envoy keeps the client's address on its inbound leg
    tproxy_mark: int = 1337  # TPROXY: the mark Envoy's inbound upstream sockets carry (istio-init -t)
    nameserver: Endpoint | None = None  # set when DNS capture is on: the pod's resolver (flow type 7)

    def replace(self, **changes: object) -> PodContext:
        return replace(self, **changes)  # type: ignore[arg-type]

    def with_endpoint(self, vip: Endpoint, endpoint: Endpoint) -> PodContext:
        """The context where Envoy sends connections for `vip` to `endpoint`."""
        return replace(self, endpoints=((vip, endpoint), *self.endpoints))

    @property
    def app_port(self) -> int:
        return self.app_ports[0]

    def endpoint_for(self, destination: Endpoint) -> Endpoint:
        """The endpoint Envoy's outbound listener picks for an original destination."""
        for vip, endpoint in self.endpoints:
            if vip == destination:
                return endpoint
        return destination

    @property
    def loopback(self) -> IPAddress:
        return ipaddress.ip_address("::1" if self.pod_ip.version == 6 else "127.0.0.1")

    def is_local(self, address: IPAddress) -> bool:
        return address.is_loopback or address in (self.pod_ip, self.inbound_source)


@dataclass(frozen=True, slots=True)
class FlowSpec:
    """Where a flow starts: its type, who opens the first connection, from where, to where."""

    type: FlowType
    name: str
    actor: Actor
    destination: Endpoint
    source: IPAddress | None = None  # None: decided by routing (pod IP, or loopback for loopback)
    identity: Identity | None = None  # for app/proxy actors
    proto: str = "tcp"
    variant: str | None = None


def six_flows(ctx: PodContext) -> tuple[FlowSpec, ...]:
    """The six flow types for this pod, plus the 'own pod IP' variant of type 4."""
    pod = Endpoint(ctx.pod_ip, ctx.app_port)
    return (
        FlowSpec(
            FlowType.REMOTE_TO_LOCAL,
            FLOW_TITLES[FlowType.REMOTE_TO_LOCAL],
            Actor.REMOTE,
            pod,
            source=ctx.remote.address,
        ),
        FlowSpec(
            FlowType.LOCAL_TO_REMOTE, FLOW_TITLES[FlowType.LOCAL_TO_REMOTE], Actor.APP, ctx.remote, identity=ctx.app
        ),
        FlowSpec(
            FlowType.PROMETHEUS_TO_LOCAL,
            FLOW_TITLES[FlowType.PROMETHEUS_TO_LOCAL],
            Actor.REMOTE,
            Endpoint(ctx.pod_ip, ports.PROMETHEUS),
            source=ctx.remote.address,
        ),
        FlowSpec(
            FlowType.LOCAL_TO_LOCAL, FLOW_TITLES[FlowType.LOCAL_TO_LOCAL], Actor.APP, ctx.service, identity=ctx.app
        ),
        FlowSpec(
            FlowType.LOCAL_TO_LOCAL,
            "local pod -> its own pod IP (no Service)",
            Actor.APP,
            pod,
            identity=ctx.app,
            variant="own-pod-ip",
        ),
        FlowSpec(
            FlowType.ENVOY_LOCALHOST, FLOW_TITLES[FlowType.ENVOY_LOCALHOST], Actor.PROXY, ctx.admin, identity=ctx.proxy
        ),
        FlowSpec(
            FlowType.SIDECAR_TO_ISTIOD,
            FLOW_TITLES[FlowType.SIDECAR_TO_ISTIOD],
            Actor.PROXY,
            ctx.istiod,
            identity=ctx.proxy,
        ),
        *dns_flows(ctx),
    )


def dns_flows(ctx: PodContext) -> tuple[FlowSpec, ...]:
    """Flow type 7, over UDP and TCP, when the pod captures DNS."""
    if ctx.nameserver is None:
        return ()
    return tuple(
        FlowSpec(
            FlowType.DNS,
            f"app -> cluster DNS ({proto})",
            Actor.APP,
            ctx.nameserver,
            identity=ctx.app,
            proto=proto,
            variant=proto,
        )
        for proto in ("udp", "tcp")
    )


def service_context(ctx: PodContext) -> PodContext:
    """The context with the Service VIP resolving to this pod (what type 4 means), unless already mapped."""
    if any(vip == ctx.service for vip, _ in ctx.endpoints):
        return ctx
    own = Endpoint(ctx.pod_ip, ctx.app_port)
    return replace(ctx, endpoints=((ctx.service, own), *ctx.endpoints))


_V6_DEFAULTS = {
    "pod_ip": "fd00:10:99::2",
    "remote": "fd00:10:99::1",
    "service": "fd00:10:96::3",
    "istiod": "fd00:10:96::a",
}


def context_for(
    pod_ip: IPAddress | None = None,
    family: str | None = None,
    app_ports: tuple[int, ...] = (9080,),
    proxy: Identity = Identity(1337, 1337),
) -> PodContext:
    """A PodContext with podnat's documented defaults for the pod's IP family."""
    v6 = (pod_ip.version == 6) if pod_ip is not None else family == "ipv6"
    port = app_ports[0]
    if not v6:
        ctx = PodContext(
            app_ports=app_ports,
            proxy=proxy,
            remote=Endpoint(ipaddress.IPv4Address("10.99.0.1"), port),
            service=Endpoint(ipaddress.IPv4Address("10.96.12.3"), port),
        )
        return replace(ctx, pod_ip=pod_ip) if pod_ip is not None else ctx
    return PodContext(
        pod_ip=pod_ip or ipaddress.IPv6Address(_V6_DEFAULTS["pod_ip"]),
        app_ports=app_ports,
        remote=Endpoint(ipaddress.IPv6Address(_V6_DEFAULTS["remote"]), port),
        service=Endpoint(ipaddress.IPv6Address(_V6_DEFAULTS["service"]), port),
        istiod=Endpoint(ipaddress.IPv6Address(_V6_DEFAULTS["istiod"]), 15012),
        proxy=proxy,
        admin=Endpoint(ipaddress.IPv6Address("::1"), ports.ADMIN),
        inbound_source=ipaddress.IPv6Address("::6"),
    )
