"""The interception configuration: everything istio-iptables (or istio-cni) builds its rules from.

Stable API:
  IstioRelease                    a comparable `major.minor` (IstioRelease.parse("1.24.3") -> 1.24)
  InterceptionMode                REDIRECT / TPROXY / NONE
  InterceptionConfig              frozen; `from_args(argv, env, release)`, `from_cni(...)`
  release_from_image(image)       the release a proxy image tag names (and a note when it is a guess)
  (a pod's config is read by podnat/istio/pod.py: read_pod(raw).config)
  (which annotation/flag produces a rule, for drift: podnat/istio/origins.py, rule_origin)

Facts (docs/istio-capture.md; Istio's tools/istio-iptables/pkg/cmd/root.go, tools/common/config/config.go,
cni/pkg/plugin/sidecar_redirect.go): flags -p -z -e -u -g -m -b -d -c -i -x -q -o -k -t -r and their
long forms; env ISTIO_META_DNS_CAPTURE / REDIRECT_DNS, INVALID_DROP / DROP_INVALID,
ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE], ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR, ISTIO_DUAL_STACK. gid
defaults to uid. IPv6 rules are written when the pod's own IP is IPv6 or dual-stack is on.
`--native-nftables` (env NATIVE_NFTABLES; Istio 1.27+, `values.global.nativeNftables`) is kept as
`native_nftables`: the injection template passes it to istio-init, and to istio-validation in
istio-cni pods (whose other args were not applied; the same `global.nativeNftables` value switches
the istio-cni node agent to nftables, so the flag is read there too).
Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum

from podnat.istio import ports
from podnat.netfilter.model import IPNetwork


@dataclass(frozen=True, slots=True, order=True)
class IstioRelease:
    """An Istio minor release, comparable: IstioRelease(1, 24) < IstioRelease(1, 25)."""

    major: int
    minor: int

    @classmethod
    def parse(cls, text: str) -> IstioRelease:
        """`1.24`, `1.24.3`, `1.24.3-distroless`, `v1.24` -> 1.24; ValueError for anything else."""
        m = re.match(r"^v?(\d+)\.(\d+)", text.strip())
        if not m:
            raise ValueError(f"not an Istio release: {text!r}")
        return cls(int(m.group(1)), int(m.group(2)))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


OLDEST_SUPPORTED = IstioRelease(1, 12)
NEWEST_SUPPORTED = IstioRelease(1, 30)


class InterceptionMode(str, Enum):
    """istio-iptables `-m`: how inbound traffic is captured."""

    REDIRECT = "REDIRECT"
    TPROXY = "TPROXY"
    NONE = "NONE"


class Wildcard(str, Enum):
    """The `*` of a port or range list: everything."""

    ALL = "*"


class ConfigSource(str, Enum):
    """Where a configuration was read from."""

    ARGS = "istio-init args"
    ISTIO_INIT = "istio-init container"
    ISTIO_CNI = "istio-cni (annotations + istio-proxy)"
    GOLDEN = "golden test case"


Ports = tuple[int, ...]


@dataclass(frozen=True, slots=True)
class InterceptionConfig:
    """What istio-iptables is told: ports, owners, mode, include/exclude lists, DNS, IPv6, release."""

    release: IstioRelease = NEWEST_SUPPORTED
    mode: InterceptionMode = InterceptionMode.REDIRECT
    proxy_port: int = ports.OUTBOUND
    inbound_capture_port: int = ports.INBOUND
    inbound_tunnel_port: int = ports.HBONE
    proxy_uids: tuple[str, ...] = ("1337",)
    proxy_gids: tuple[str, ...] = ("1337",)
    inbound_ports_include: Ports | Wildcard = ()
    inbound_ports_exclude: Ports = ()
    outbound_ports_include: Ports = ()
    outbound_ports_exclude: Ports = ()
    outbound_ip_ranges_include: tuple[IPNetwork, ...] | Wildcard = ()
    outbound_ip_ranges_exclude: tuple[IPNetwork, ...] = ()
    reroute_virtual_interfaces: tuple[str, ...] = ()
    exclude_interfaces: tuple[str, ...] = ()
    redirect_dns: bool = False
    capture_all_dns: bool = False
    dns_servers_v4: tuple[ipaddress.IPv4Address, ...] = ()
    dns_servers_v6: tuple[ipaddress.IPv6Address, ...] = ()
    drop_invalid: bool = False
    owner_groups_include: tuple[str, ...] | Wildcard = Wildcard.ALL
    owner_groups_exclude: tuple[str, ...] = ()
    ipv4_loopback_cidr: str = "127.0.0.1/32"
    enable_ipv6: bool = False
    tproxy_mark: int = 1337
    tproxy_route_table: int = 133
    native_nftables: bool = False  # Istio 1.27+ `--native-nftables`: inet istio-proxy-* tables, not iptables
    source: ConfigSource = ConfigSource.ARGS

    @property
    def dns_active(self) -> bool:
        """DNS capture as istio-iptables applies it: asked for, and a nameserver known (or capture-all)."""
        return self.redirect_dns and (self.capture_all_dns or bool(self.dns_servers_v4 or self.dns_servers_v6))

    @classmethod
    def from_args(
        cls,
        argv: Sequence[str] | str,
        env: Mapping[str, str] | None = None,
        release: IstioRelease | str = NEWEST_SUPPORTED,
        *,
        nameservers: Sequence[str] = (),
        ipv6: bool = False,
    ) -> InterceptionConfig:
        """istio-init command + args (a leading `istio-iptables` is skipped) and its env -> config."""
        words = shlex.split(argv) if isinstance(argv, str) else list(argv)
        # `istio-iptables`, `/usr/local/bin/istio-iptables`, `pilot-agent istio-iptables`: program words
        while words and not words[0].startswith("-"):
            words = words[1:]
        values = _parse_flags(words)
        env = dict(env or {})
        for flag, var in _FLAG_ENV.items():
            if flag not in values and var in env:
                values[flag] = env[var]
        rel = IstioRelease.parse(release) if isinstance(release, str) else release
        uids = split_list(values.get("u", "1337")) or ("1337",)
        gids = split_list(values.get("g", "")) or uids
        dns = truthy(values.get("redirect-dns", env.get("ISTIO_META_DNS_CAPTURE", env.get("REDIRECT_DNS", ""))))
        capture_all = truthy(values.get("capture-all-dns", env.get("CAPTURE_ALL_DNS", "")))
        drop = truthy(values.get("drop-invalid", env.get("INVALID_DROP", env.get("DROP_INVALID", ""))))
        dual = truthy(values.get("dual-stack", env.get("ISTIO_DUAL_STACK", env.get("DUAL_STACK", ""))))
        nftables = truthy(values.get("native-nftables", env.get("NATIVE_NFTABLES", "")))
        v4_dns, v6_dns = split_servers(nameservers)
        return cls(
            release=rel,
            mode=InterceptionMode(values.get("m", "REDIRECT").upper() or "REDIRECT"),
            proxy_port=int(values.get("p", ports.OUTBOUND)),
            inbound_capture_port=int(values.get("z", ports.INBOUND)),
            inbound_tunnel_port=int(values.get("e", ports.HBONE)),
            proxy_uids=uids,
            proxy_gids=gids,
            inbound_ports_include=ports_or_all(values.get("b", "")),
            inbound_ports_exclude=port_list(values.get("d", "")),
            outbound_ports_include=port_list(values.get("q", "")),
            outbound_ports_exclude=port_list(values.get("o", "")),
            outbound_ip_ranges_include=ranges_or_all(values.get("i", "")),
            outbound_ip_ranges_exclude=range_list(values.get("x", "")),
            reroute_virtual_interfaces=split_list(values.get("k", "")),
            exclude_interfaces=split_list(values.get("c", "")),
            redirect_dns=dns,
            capture_all_dns=capture_all,
            dns_servers_v4=v4_dns,
            dns_servers_v6=v6_dns,
            drop_invalid=drop,
            owner_groups_include=groups_or_all(env.get("ISTIO_OUTBOUND_OWNER_GROUPS", "*")),
            owner_groups_exclude=split_list(env.get("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "")),
            ipv4_loopback_cidr=env.get("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "127.0.0.1/32") or "127.0.0.1/32",
            enable_ipv6=ipv6 or dual,
            tproxy_mark=int(values.get("t", "1337") or "1337", 0),
            tproxy_route_table=int(values.get("r", "133") or "133"),
            native_nftables=nftables,
            source=ConfigSource.ARGS,
        )

    @classmethod
    def from_cni(
        cls,
        annotations: Mapping[str, str],
        proxy_env: Mapping[str, str] | None = None,
        *,
        uid: int | None = None,
        gid: int | None = None,
        release: IstioRelease = NEWEST_SUPPORTED,
        ipv6: bool = False,
    ) -> InterceptionConfig:
        """What the istio-cni plugin programs for a pod: its annotations, istio-proxy's env and runAs ids."""
        env = dict(proxy_env or {})
        ann = dict(annotations)

        def get(key: str, default: str) -> str:
            return ann.get(key, default)

        exclude_in = get(ANN_EXCLUDE_INBOUND_PORTS, "15020").strip()
        if exclude_in and not exclude_in.endswith(","):
            exclude_in += ","
        exclude_in += "15020,15021,15090"
        reroute = ann.get(ANN_REROUTE_VIRTUAL_INTERFACES, ann.get(ANN_KUBEVIRT_INTERFACES, ""))
        dns = truthy(env.get("ISTIO_META_DNS_CAPTURE", ""))
        uid_text = str(uid) if uid else "1337"
        gid_text = str(gid) if gid else "1337"
        return cls(
            release=release,
            mode=InterceptionMode(get(ANN_INTERCEPTION_MODE, "REDIRECT").upper()),
            proxy_uids=(uid_text,),
            proxy_gids=(gid_text,),
            inbound_ports_include=ports_or_all(get(ANN_INCLUDE_INBOUND_PORTS, "*")),
            inbound_ports_exclude=_dedup(port_list(exclude_in)),
            outbound_ports_include=port_list(get(ANN_INCLUDE_OUTBOUND_PORTS, "")),
            outbound_ports_exclude=port_list(get(ANN_EXCLUDE_OUTBOUND_PORTS, "15020")),
            outbound_ip_ranges_include=ranges_or_all(get(ANN_INCLUDE_OUTBOUND_IP_RANGES, "*")),
            outbound_ip_ranges_exclude=range_list(get(ANN_EXCLUDE_OUTBOUND_IP_RANGES, "")),
            reroute_virtual_interfaces=split_list(reroute),
            exclude_interfaces=split_list(get(ANN_EXCLUDE_INTERFACES, "")),
            redirect_dns=dns,
            capture_all_dns=dns,
            drop_invalid=truthy(env.get("INVALID_DROP", "")),
            owner_groups_include=groups_or_all(env.get("ISTIO_OUTBOUND_OWNER_GROUPS", "*")),
            owner_groups_exclude=split_list(env.get("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "")),
            enable_ipv6=ipv6 or truthy(env.get("ISTIO_DUAL_STACK", "")),
            source=ConfigSource.ISTIO_CNI,
        )

    def with_release(self, release: IstioRelease | str) -> InterceptionConfig:
        """The same configuration at another release."""
        return replace(self, release=IstioRelease.parse(release) if isinstance(release, str) else release)


# --- flags -------------------------------------------------------------------------------------

_LONG_FLAGS = {
    "envoy-port": "p",
    "inbound-capture-port": "z",
    "inbound-tunnel-port": "e",
    "proxy-uid": "u",
    "proxy-gid": "g",
    "istio-inbound-interception-mode": "m",
    "istio-inbound-ports": "b",
    "istio-local-exclude-ports": "d",
    "istio-exclude-interfaces": "c",
    "istio-service-cidr": "i",
    "istio-service-exclude-cidr": "x",
    "istio-outbound-ports": "q",
    "istio-local-outbound-ports-exclude": "o",
    "kube-virt-interfaces": "k",
    "istio-inbound-tproxy-mark": "t",
    "istio-inbound-tproxy-route-table": "r",
}
_BOOL_FLAGS = frozenset(
    {
        "redirect-dns",
        "capture-all-dns",
        "drop-invalid",
        "dual-stack",
        "dry-run",
        "n",
        "skip-rule-apply",
        "run-validation",
        "cni-mode",
        "reconcile",
        "cleanup-only",
        "force-apply",
        "native-nftables",
        "iptables-trace-logging",
    }
)
_FLAG_ENV = {
    "p": "ENVOY_PORT",
    "z": "INBOUND_CAPTURE_PORT",
    "m": "ISTIO_INBOUND_INTERCEPTION_MODE",
    "b": "ISTIO_INBOUND_PORTS",
    "d": "ISTIO_LOCAL_EXCLUDE_PORTS",
    "c": "ISTIO_EXCLUDE_INTERFACES",
    "i": "ISTIO_SERVICE_CIDR",
    "x": "ISTIO_SERVICE_EXCLUDE_CIDR",
    "q": "ISTIO_OUTBOUND_PORTS",
    "o": "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE",
    "k": "ISTIO_KUBE_VIRT_INTERFACES",
    "t": "ISTIO_INBOUND_TPROXY_MARK",
    "r": "ISTIO_INBOUND_TPROXY_ROUTE_TABLE",
}


def _parse_flags(words: Sequence[str]) -> dict[str, str]:
    """`-p 15001`, `-p=15001`, `--envoy-port 15001`, `--redirect-dns` -> {short or long name: value}."""
    out: dict[str, str] = {}
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if not word.startswith("-") or word == "-":
            continue
        name, eq, value = word.lstrip("-").partition("=")
        name = _LONG_FLAGS.get(name, name)
        if name in _BOOL_FLAGS:
            out[name] = value if eq else "true"
            continue
        if not eq:
            if i < len(words):
                value = words[i]
                i += 1
            else:
                value = ""
        out[name] = value
    return out


def truthy(text: str) -> bool:
    """Go's strconv.ParseBool, lenient: anything unparseable is false."""
    return text.strip().lower() in ("1", "t", "true", "yes", "y", "on")


def split_list(text: str) -> tuple[str, ...]:
    """Istio's config.Split: comma-separated, blanks dropped."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def port_list(text: str) -> Ports:
    """A comma list of ports."""
    return tuple(int(p) for p in split_list(text))


def _dedup(ports: Ports) -> Ports:
    """Ports in first-seen order, each once."""
    return tuple(dict.fromkeys(ports))


def ports_or_all(text: str) -> Ports | Wildcard:
    """A port list, or `*`."""
    return Wildcard.ALL if text.strip() == "*" else port_list(text)


def range_list(text: str) -> tuple[IPNetwork, ...]:
    """A comma list of CIDRs (host bits kept as istio-iptables keeps them, masked in the save form)."""
    return tuple(ipaddress.ip_network(r, strict=False) for r in split_list(text) if r != "*")


def ranges_or_all(text: str) -> tuple[IPNetwork, ...] | Wildcard:
    """A CIDR list, or `*` (anywhere in the list, as istio-iptables reads it)."""
    return Wildcard.ALL if "*" in split_list(text) else range_list(text)


def groups_or_all(text: str) -> tuple[str, ...] | Wildcard:
    """ISTIO_OUTBOUND_OWNER_GROUPS: `*` or a list of group names/ids."""
    return Wildcard.ALL if text.strip() in ("", "*") else split_list(text)


def split_servers(
    servers: Sequence[str],
) -> tuple[tuple[ipaddress.IPv4Address, ...], tuple[ipaddress.IPv6Address, ...]]:
    """resolv.conf nameservers -> (IPv4, IPv6)."""
    v4: list[ipaddress.IPv4Address] = []
    v6: list[ipaddress.IPv6Address] = []
    for text in servers:
        addr = ipaddress.ip_address(text)
        (v4 if isinstance(addr, ipaddress.IPv4Address) else v6).append(addr)  # type: ignore[arg-type]
    return tuple(v4), tuple(v6)


# --- pods --------------------------------------------------------------------------------------

ANN_INTERCEPTION_MODE = "sidecar.istio.io/interceptionMode"
ANN_INCLUDE_OUTBOUND_IP_RANGES = "traffic.sidecar.istio.io/includeOutboundIPRanges"
ANN_EXCLUDE_OUTBOUND_IP_RANGES = "traffic.sidecar.istio.io/excludeOutboundIPRanges"
ANN_INCLUDE_INBOUND_PORTS = "traffic.sidecar.istio.io/includeInboundPorts"
ANN_EXCLUDE_INBOUND_PORTS = "traffic.sidecar.istio.io/excludeInboundPorts"
ANN_INCLUDE_OUTBOUND_PORTS = "traffic.sidecar.istio.io/includeOutboundPorts"
ANN_EXCLUDE_OUTBOUND_PORTS = "traffic.sidecar.istio.io/excludeOutboundPorts"
ANN_KUBEVIRT_INTERFACES = "traffic.sidecar.istio.io/kubevirtInterfaces"
ANN_REROUTE_VIRTUAL_INTERFACES = "istio.io/reroute-virtual-interfaces"
ANN_EXCLUDE_INTERFACES = "traffic.sidecar.istio.io/excludeInterfaces"
ANN_STATUS = "sidecar.istio.io/status"
ANN_AMBIENT = "ambient.istio.io/redirection"


def release_from_image(image: str) -> tuple[IstioRelease, str | None]:
    """`docker.io/istio/proxyv2:1.24.3` -> 1.24; `latest`, digests, unknown tags -> the newest supported."""
    tag = image.rsplit("/", 1)[-1].split("@", 1)[0]
    tag = tag.split(":", 1)[1] if ":" in tag else ""
    try:
        release = IstioRelease.parse(tag)
    except ValueError:
        return (
            NEWEST_SUPPORTED,
            f"proxy image tag {tag or '(none)'!r} names no release: assuming {NEWEST_SUPPORTED}",
        )
    if release > NEWEST_SUPPORTED:
        return NEWEST_SUPPORTED, f"release {release} is newer than podnat knows: using {NEWEST_SUPPORTED}"
    if release < OLDEST_SUPPORTED:
        return release, f"release {release} is older than {OLDEST_SUPPORTED}: rules are a best guess"
    return release, None


def native_nftables_flag(argv: Sequence[str]) -> bool:
    """`--native-nftables` among istio-iptables words (istio-validation's, in istio-cni pods)."""
    return truthy(_parse_flags(list(argv)).get("native-nftables", ""))


def nftables_notes(config: InterceptionConfig) -> tuple[str, ...]:
    """What a user should know about a pod in native nftables mode (none for iptables pods)."""
    if not config.native_nftables:
        return ()
    note = "native nftables (--native-nftables): the rules are the inet istio-proxy-* tables of `nft list ruleset`"
    if config.release < IstioRelease(1, 27):
        note += f"; but Istio {config.release} predates the flag (added in 1.27)"
    return (note,)
