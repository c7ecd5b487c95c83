"""The rules Istio means to install for an interception configuration, as live `iptables-save` text.

Stable API:
  expected_rules(config) -> ExpectedRules   `.v4: str`, `.v6: str | None` (None unless IPv6 is on),
                                            each the text `iptables-save` prints once istio-iptables
                                            (or istio-cni) has run: tables mangle, raw, nat as used,
                                            `:CHAIN POLICY [0:0]` headers, canonical option order, COMMIT
  restore_input(config) -> ExpectedRules    the same rules as istio-iptables' restore input

The generator follows istio-iptables' order of operations (tools/istio-iptables/pkg/capture/run.go),
stage by stage (`_build`), one string per rule as Istio's builder lists its parameters, with the
release differences the per-release goldens show (goldens/history/<tag>/):
  <1.13   ISTIO_INBOUND also returns --dport 22 (with `-b '*'`); no INVALID_DROP
  1.13+   INVALID_DROP: mangle PREROUTING `--ctstate INVALID -j DROP` (1.24+: via chain ISTIO_DROP)
  1.14+   ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE]
  1.18+   rules 2 and 5 match `-p tcp ! --dport 15008` (DNS: `-m multiport ! --dports 53,15008` on rule 2)
  1.20+   raw PREROUTING DNS zone rule matches the resolver as source (-s), not destination
  1.21+   ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR
  <1.23   a CIDR include list ends ISTIO_OUTPUT with `-j RETURN`; UDP DNS rules live in nat/raw OUTPUT
  1.23-24 UDP DNS rules at the end of ISTIO_OUTPUT (nat and raw), reached by `OUTPUT -p udp` jumps
  <1.25   `OUTPUT -p tcp -j ISTIO_OUTPUT`; TCP DNS redirect in ISTIO_OUTPUT before the loopback return;
          excludeOutboundPorts returns tcp only
  1.25+   `OUTPUT -j ISTIO_OUTPUT`; DNS in ISTIO_OUTPUT_DNS (nat and raw) and raw ISTIO_INBOUND;
          excludeOutboundPorts returns tcp and udp
`RuleBuilder` and `restore_text` are shared with the ambient generator (istio/ambient.py).
Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from podnat.istio import ports
from podnat.istio.config import InterceptionConfig, InterceptionMode, IstioRelease, Wildcard
from podnat.istio.normalise import normalise_restore

_BUILTIN = frozenset({"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"})
_TABLE_SORT = ("filter", "mangle", "nat", "raw")  # istio-iptables writes tables in sorted order
OUTBOUND_MARK = "1338"
DNS_PROXY_PORT = str(ports.DNS_PROXY)
_V6_LOOPBACK = "::1/128"


@dataclass(frozen=True, slots=True)
class ExpectedRules:
    """What Istio meant to install, per IP family (v6 is None when the family is not in use)."""

    v4: str
    v6: str | None


@dataclass(slots=True)
class _Rule:
    """One rule as istio-iptables records it: table, chain, `-A`/`-I pos` and its parameters."""

    table: str
    chain: str
    params: tuple[str, ...]
    position: int | None = None  # -I position, None for -A


def _tokens(params: Iterable[str]) -> tuple[str, ...]:
    """Parameters given as words or as whole rules (`"-p tcp -j RETURN"`), as words."""
    return tuple(word for param in params for word in param.split())


@dataclass(slots=True)
class RuleBuilder:
    """Collects IPv4 and IPv6 rules in the order istio-iptables appends them.

    A rule's parameters are one string (split on spaces, as they contain no quoting) or single words;
    `{ip}` stands for the address that differs per family (`versioned`)."""

    ipv6: bool
    v4: list[_Rule] = field(default_factory=list)
    v6: list[_Rule] = field(default_factory=list)

    def append(self, chain: str, table: str, *params: str) -> None:
        """A rule for both families."""
        self.append_v4(chain, table, *params)
        self.append_v6(chain, table, *params)

    def append_v4(self, chain: str, table: str, *params: str) -> None:
        """An IPv4-only rule."""
        self.v4.append(_Rule(table, chain, _tokens(params)))

    def append_v6(self, chain: str, table: str, *params: str) -> None:
        """An IPv6-only rule (dropped when IPv6 is off)."""
        if self.ipv6:
            self.v6.append(_Rule(table, chain, _tokens(params)))

    def versioned(self, v4: str, v6: str, chain: str, table: str, *params: str) -> None:
        """A rule whose address differs per family: `{ip}` in params is replaced."""
        words = _tokens(params)
        self.append_v4(chain, table, *(v4 if w == "{ip}" else w for w in words))
        self.append_v6(chain, table, *(v6 if w == "{ip}" else w for w in words))

    def insert(self, chain: str, table: str, position: int, *params: str, v4: bool = True, v6: bool = True) -> None:
        """An `-I CHAIN position` rule."""
        if v4:
            self.v4.append(_Rule(table, chain, _tokens(params), position))
        if v6 and self.ipv6:
            self.v6.append(_Rule(table, chain, _tokens(params), position))


def restore_text(rules: list[_Rule]) -> str:
    """istio-iptables' restore input for one family: per table, `-N` for user chains, then the rules."""
    chains: dict[str, list[str]] = {}
    for rule in rules:
        declared = chains.setdefault(rule.table, [])
        if rule.chain not in _BUILTIN and rule.chain not in declared:
            declared.append(rule.chain)
    for rule in rules:
        target = rule.params[-1] if len(rule.params) >= 2 and rule.params[-2] == "-j" else ""
        if target.startswith("ISTIO_") and target not in chains.setdefault(rule.table, []):
            chains[rule.table].append(target)
    out: list[str] = []
    for table in sorted({r.table for r in rules}, key=_TABLE_SORT.index):
        out.append(f"* {table}")
        out.extend(f"-N {chain}" for chain in chains.get(table, []))
        for rule in (r for r in rules if r.table == table):
            op = f"-I {rule.chain} {rule.position}" if rule.position is not None else f"-A {rule.chain}"
            out.append(" ".join([op, *rule.params]))
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def restore_input(config: InterceptionConfig) -> ExpectedRules:
    """The restore input istio-iptables writes for a configuration (per family)."""
    builder = _build(config)
    return ExpectedRules(restore_text(builder.v4), restore_text(builder.v6) if config.enable_ipv6 else None)


def expected_rules(config: InterceptionConfig) -> ExpectedRules:
    """The live `iptables-save` text Istio means to leave behind for a configuration (per family)."""
    if config.mode is InterceptionMode.NONE:
        return ExpectedRules("", "" if config.enable_ipv6 else None)
    builder = _build(config)
    v4 = normalise_restore(restore_text(builder.v4), ipv6=False) if builder.v4 else ""
    v6 = normalise_restore(restore_text(builder.v6), ipv6=True) if builder.v6 else ""
    return ExpectedRules(v4, v6 if config.enable_ipv6 else None)


def _at_least(config: InterceptionConfig, minor: int) -> bool:
    """Whether the configuration's release is 1.<minor> or newer."""
    return config.release >= IstioRelease(1, minor)


def split_ranges(
    ranges: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
) -> tuple[list[str], list[str]]:
    """CIDRs -> (IPv4, IPv6) as text."""
    v4 = [str(r) for r in ranges if isinstance(r, ipaddress.IPv4Network)]
    v6 = [str(r) for r in ranges if isinstance(r, ipaddress.IPv6Network)]
    return v4, v6


def _owners(cfg: InterceptionConfig) -> tuple[tuple[str, str], ...]:
    """The proxy's owners as istio-iptables loops over them: every uid, then every gid."""
    return (*(("--uid-owner", uid) for uid in cfg.proxy_uids), *(("--gid-owner", gid) for gid in cfg.proxy_gids))


def _loopback(cfg: InterceptionConfig) -> str:
    """The IPv4 loopback CIDR the owner rules exempt (configurable from 1.21)."""
    return cfg.ipv4_loopback_cidr if _at_least(cfg, 21) else "127.0.0.1/32"


def _resolvers(b: RuleBuilder, cfg: InterceptionConfig) -> tuple[tuple[Callable[..., None], list[str]], ...]:
    """Per family: how to append a rule of that family only, and the resolvers as CIDRs."""
    return (
        (b.append_v4, [f"{server}/32" for server in cfg.dns_servers_v4]),
        (b.append_v6, [f"{server}/128" for server in cfg.dns_servers_v6]),
    )


def _build(cfg: InterceptionConfig) -> RuleBuilder:
    """Every rule istio-iptables appends or inserts, in its order: run.go's stages."""
    b = RuleBuilder(cfg.enable_ipv6)
    dns, modern_dns = cfg.dns_active, _at_least(cfg, 25)
    _interfaces(cfg, b)
    _redirect_chains(cfg, b)
    _inbound(cfg, b)
    _outbound_entry(cfg, b)
    owner_groups = _owner_group_matches(cfg)
    _outbound_owners(cfg, b, owner_groups)
    if dns and modern_dns:
        _dns_modern(cfg, b)
    elif dns:
        _dns_tcp_legacy(cfg, b)
    _outbound_destinations(cfg, b)
    if dns and not modern_dns:
        _dns_udp_legacy(cfg, b, owner_groups)
    if cfg.mode is InterceptionMode.TPROXY:
        _tproxy_tail(cfg, b)
    return b


def _interfaces(cfg: InterceptionConfig, b: RuleBuilder) -> None:
    """Excluded interfaces, then kube-virt interfaces short-circuit PREROUTING; INVALID_DROP (1.13+)."""
    for iface in cfg.exclude_interfaces:
        b.append("PREROUTING", "nat", f"-i {iface} -j RETURN")
        b.append("OUTPUT", "nat", f"-o {iface} -j RETURN")
    if cfg.mode is InterceptionMode.TPROXY:
        for iface in cfg.exclude_interfaces:
            b.append("PREROUTING", "mangle", f"-i {iface} -j RETURN")
            b.append("OUTPUT", "mangle", f"-o {iface} -j RETURN")
    for iface in cfg.reroute_virtual_interfaces:
        b.insert("PREROUTING", "nat", 1, f"-i {iface} -j RETURN")
    if cfg.drop_invalid and _at_least(cfg, 24):
        b.append("PREROUTING", "mangle", "-m conntrack --ctstate INVALID -j ISTIO_DROP")
        b.append("ISTIO_DROP", "mangle", "-j DROP")
    elif cfg.drop_invalid and _at_least(cfg, 13):
        b.append("PREROUTING", "mangle", "-m conntrack --ctstate INVALID -j DROP")


def _redirect_chains(cfg: InterceptionConfig, b: RuleBuilder) -> None:
    """The tunnel port's return and the two REDIRECT chains."""
    b.append("ISTIO_INBOUND", "nat", f"-p tcp --dport {cfg.inbound_tunnel_port} -j RETURN")
    b.append("ISTIO_REDIRECT", "nat", f"-p tcp -j REDIRECT --to-ports {cfg.proxy_port}")
    b.append("ISTIO_IN_REDIRECT", "nat", f"-p tcp -j REDIRECT --to-ports {cfg.inbound_capture_port}")


def _inbound(cfg: InterceptionConfig, b: RuleBuilder) -> None:
    """Inbound capture: PREROUTING -> ISTIO_INBOUND, in nat (REDIRECT) or mangle (TPROXY)."""
    include = cfg.inbound_ports_include
    if not isinstance(include, Wildcard) and not include:
        return
    tproxy = cfg.mode is InterceptionMode.TPROXY
    table = "mangle" if tproxy else "nat"
    if tproxy:
        mark = cfg.tproxy_mark
        b.append("ISTIO_DIVERT", "mangle", f"-j MARK --set-mark {mark}")
        b.append("ISTIO_DIVERT", "mangle", "-j ACCEPT")
        b.versioned(
            _loopback(cfg),
            _V6_LOOPBACK,
            "ISTIO_TPROXY",
            "mangle",
            f"! -d {{ip}} -p tcp -j TPROXY --tproxy-mark {mark}/0xffffffff --on-port {cfg.inbound_capture_port}",
        )
    b.append("PREROUTING", table, "-p tcp -j ISTIO_INBOUND")
    if isinstance(include, Wildcard):
        if not _at_least(cfg, 13):
            b.append("ISTIO_INBOUND", table, "-p tcp --dport 22 -j RETURN")
        for port in cfg.inbound_ports_exclude:
            b.append("ISTIO_INBOUND", table, f"-p tcp --dport {port} -j RETURN")
        captured = [""]  # every port
    else:
        captured = [f"--dport {port}" for port in include]
    for dport in captured:
        if tproxy:
            b.append(
                "ISTIO_INBOUND", "mangle", f"-p tcp {dport} -m conntrack --ctstate RELATED,ESTABLISHED -j ISTIO_DIVERT"
            )
            b.append("ISTIO_INBOUND", "mangle", f"-p tcp {dport} -j ISTIO_TPROXY")
        else:
            b.append("ISTIO_INBOUND", "nat", f"-p tcp {dport} -j ISTIO_IN_REDIRECT")


def _outbound_entry(cfg: InterceptionConfig, b: RuleBuilder) -> None:
    """OUTPUT -> ISTIO_OUTPUT, the excluded ports' returns and the inbound passthrough's (127.0.0.6)."""
    modern_dns = _at_least(cfg, 25)
    b.append("OUTPUT", "nat", "-j ISTIO_OUTPUT" if modern_dns else "-p tcp -j ISTIO_OUTPUT")
    if cfg.dns_active and IstioRelease(1, 23) <= cfg.release < IstioRelease(1, 25):
        b.append("OUTPUT", "nat", "-p udp -j ISTIO_OUTPUT")
        b.append("OUTPUT", "raw", "-p udp -j ISTIO_OUTPUT")
    for port in cfg.outbound_ports_exclude:
        b.append("ISTIO_OUTPUT", "nat", f"-p tcp --dport {port} -j RETURN")
        if modern_dns:
            b.append("ISTIO_OUTPUT", "nat", f"-p udp --dport {port} -j RETURN")
    b.versioned("127.0.0.6/32", "::6/128", "ISTIO_OUTPUT", "nat", "-o lo -s {ip} -j RETURN")


def _outbound_owners(cfg: InterceptionConfig, b: RuleBuilder, owner_groups: list[str]) -> None:
    """The proxy's own traffic: to itself over lo redirected inbound, otherwise returned; owner groups."""
    dns, tunnel = cfg.dns_active, cfg.inbound_tunnel_port
    include = cfg.outbound_ip_ranges_include
    loopback_included = not isinstance(include, Wildcard) and any(r.is_loopback for r in include)
    # with DNS capture, the app's TCP to a resolver on lo must still reach the DNS rules
    dns_port = "-p tcp ! --dport 53" if dns else ""
    if _at_least(cfg, 18):
        uid_match = f"-p tcp -m multiport ! --dports 53,{tunnel}" if dns else f"-p tcp ! --dport {tunnel}"
        gid_match = f"-p tcp ! --dport {tunnel}"
    else:
        uid_match, gid_match = dns_port, ""
    for flag, owner in _owners(cfg):
        match = uid_match if flag == "--uid-owner" else gid_match
        b.versioned(
            _loopback(cfg),
            _V6_LOOPBACK,
            "ISTIO_OUTPUT",
            "nat",
            f"-o lo ! -d {{ip}} {match} -m owner {flag} {owner} -j ISTIO_IN_REDIRECT",
        )
        if not loopback_included:
            b.append("ISTIO_OUTPUT", "nat", f"-o lo {dns_port} -m owner ! {flag} {owner} -j RETURN")
        b.append("ISTIO_OUTPUT", "nat", f"-m owner {flag} {owner} -j RETURN")
    for matches in owner_groups:
        b.append("ISTIO_OUTPUT", "nat", f"{matches} -j RETURN")


def _owner_group_matches(cfg: InterceptionConfig) -> list[str]:
    """ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE] -> the matches of the RETURN rules (1.14+)."""
    if not _at_least(cfg, 14):
        return []
    if isinstance(cfg.owner_groups_include, Wildcard):
        return [f"-m owner --gid-owner {group}" for group in cfg.owner_groups_exclude]
    if not cfg.owner_groups_include:
        return []
    return [" ".join(f"-m owner ! --gid-owner {group}" for group in cfg.owner_groups_include)]


def _outbound_destinations(cfg: InterceptionConfig, b: RuleBuilder) -> None:
    """Outbound by destination: loopback and excluded CIDRs return, included ports and CIDRs redirect."""
    b.versioned(_loopback(cfg), _V6_LOOPBACK, "ISTIO_OUTPUT", "nat", "-d {ip} -j RETURN")
    exclude_v4, exclude_v6 = split_ranges(cfg.outbound_ip_ranges_exclude)
    for append, excluded in ((b.append_v4, exclude_v4), (b.append_v6, exclude_v6)):
        for cidr in excluded:
            append("ISTIO_OUTPUT", "nat", f"-d {cidr} -j RETURN")
    for port in cfg.outbound_ports_include:
        b.append("ISTIO_OUTPUT", "nat", f"-p tcp --dport {port} -j ISTIO_REDIRECT")
    include = cfg.outbound_ip_ranges_include
    include_v4, include_v6 = split_ranges(include) if not isinstance(include, Wildcard) else ([], [])
    for family, cidrs in (("v4", include_v4), ("v6", include_v6)):
        _outbound_include(cfg, b, family, cidrs)


def _outbound_include(cfg: InterceptionConfig, b: RuleBuilder, family: str, cidrs: list[str]) -> None:
    """Outbound capture by destination: `*` catch-all, or one rule per CIDR (per family)."""
    append = b.append_v4 if family == "v4" else b.append_v6
    v4, v6 = family == "v4", family == "v6"
    if isinstance(cfg.outbound_ip_ranges_include, Wildcard):
        append("ISTIO_OUTPUT", "nat", "-j ISTIO_REDIRECT")
        for iface in cfg.reroute_virtual_interfaces:
            b.insert("PREROUTING", "nat", 1, f"-i {iface} -j ISTIO_REDIRECT", v4=v4, v6=v6)
        return
    if not cidrs:
        return
    for cidr in cidrs:
        for iface in cfg.reroute_virtual_interfaces:
            b.insert("PREROUTING", "nat", 1, f"-i {iface} -d {cidr} -j ISTIO_REDIRECT", v4=v4, v6=v6)
        append("ISTIO_OUTPUT", "nat", f"-d {cidr} -j ISTIO_REDIRECT")
    if not _at_least(cfg, 23):
        append("ISTIO_OUTPUT", "nat", "-j RETURN")


def _dns_tcp_legacy(cfg: InterceptionConfig, b: RuleBuilder) -> None:
    """Before 1.25: TCP DNS redirected from ISTIO_OUTPUT, before the loopback return."""
    if cfg.capture_all_dns:
        b.append("ISTIO_OUTPUT", "nat", f"-p tcp --dport 53 -j REDIRECT --to-ports {DNS_PROXY_PORT}")
        return
    _redirect_resolvers(cfg, b, "ISTIO_OUTPUT", "tcp", "--to-ports")


def _redirect_resolvers(cfg: InterceptionConfig, b: RuleBuilder, chain: str, proto: str, to_flag: str) -> None:
    """DNS (`proto` port 53) to each resolver of each family, redirected to pilot-agent's DNS proxy.

    `to_flag` is kept as istio-iptables wrote it (`--to-ports` or `--to-port`, releases differ)."""
    for append, resolvers in _resolvers(b, cfg):
        for cidr in resolvers:
            append(chain, "nat", f"-p {proto} --dport 53 -d {cidr} -j REDIRECT {to_flag} {DNS_PROXY_PORT}")


def _dns_udp_legacy(cfg: InterceptionConfig, b: RuleBuilder, owner_groups: list[str]) -> None:
    """Before 1.25: UDP DNS in nat/raw OUTPUT (up to 1.22) or at the end of ISTIO_OUTPUT (1.23, 1.24)."""
    chain = "ISTIO_OUTPUT" if _at_least(cfg, 23) else "OUTPUT"
    for flag, owner in _owners(cfg):
        b.append(chain, "nat", f"-p udp --dport 53 -m owner {flag} {owner} -j RETURN")
    for matches in owner_groups:
        b.append(chain, "nat", f"-p udp --dport 53 {matches} -j RETURN")
    if cfg.capture_all_dns:
        b.append(chain, "nat", f"-p udp --dport 53 -j REDIRECT --to-port {DNS_PROXY_PORT}")
    else:
        _redirect_resolvers(cfg, b, chain, "udp", "--to-port")
    _conntrack_zones(cfg, b, chain, "PREROUTING", legacy=True)


def _conntrack_zones(cfg: InterceptionConfig, b: RuleBuilder, out_chain: str, in_chain: str, *, legacy: bool) -> None:
    """raw-table CT zones splitting the proxy's DNS (zone 1) from the app's (zone 2)."""
    for flag, owner in _owners(cfg):
        b.append(out_chain, "raw", f"-p udp --dport 53 -m owner {flag} {owner} -j CT --zone 1")
        b.append(out_chain, "raw", f"-p udp --sport {DNS_PROXY_PORT} -m owner {flag} {owner} -j CT --zone 2")
    if cfg.capture_all_dns:
        if not legacy:
            b.append("PREROUTING", "raw", "-j ISTIO_INBOUND")
        b.append(out_chain, "raw", "-p udp --dport 53 -j CT --zone 2")
        b.append(in_chain, "raw", "-p udp --sport 53 -j CT --zone 1")
        return
    source_match = "-s" if _at_least(cfg, 20) else "-d"
    for append, resolvers in _resolvers(b, cfg):
        if not legacy and resolvers:
            append("PREROUTING", "raw", "-j ISTIO_INBOUND")
        for cidr in resolvers:
            append(out_chain, "raw", f"-p udp --dport 53 -d {cidr} -j CT --zone 2")
            append(in_chain, "raw", f"-p udp --sport 53 {source_match} {cidr} -j CT --zone 1")


def _dns_modern(cfg: InterceptionConfig, b: RuleBuilder) -> None:
    """1.25+: DNS through ISTIO_OUTPUT_DNS (nat and raw) and raw ISTIO_INBOUND."""
    b.append("OUTPUT", "raw", "-j ISTIO_OUTPUT_DNS")
    for append, resolvers in _resolvers(b, cfg):
        if cfg.capture_all_dns or resolvers:
            append("ISTIO_OUTPUT", "nat", "-j ISTIO_OUTPUT_DNS")
    if cfg.capture_all_dns:
        b.append("ISTIO_OUTPUT_DNS", "nat", f"-p tcp --dport 53 -j REDIRECT --to-ports {DNS_PROXY_PORT}")
        b.append("ISTIO_OUTPUT_DNS", "nat", f"-p udp --dport 53 -j REDIRECT --to-port {DNS_PROXY_PORT}")
    else:
        _redirect_resolvers(cfg, b, "ISTIO_OUTPUT_DNS", "tcp", "--to-ports")
        _redirect_resolvers(cfg, b, "ISTIO_OUTPUT_DNS", "udp", "--to-port")
    _conntrack_zones(cfg, b, "ISTIO_OUTPUT_DNS", "ISTIO_INBOUND", legacy=False)


def _tproxy_tail(cfg: InterceptionConfig, b: RuleBuilder) -> None:
    """TPROXY: connection marks, Envoy's hairpin mark 1338, and the ISTIO_INBOUND guards on top."""
    mark = cfg.tproxy_mark
    b.append("PREROUTING", "mangle", f"-p tcp -m mark --mark {mark} -j CONNMARK --save-mark")
    b.append("OUTPUT", "mangle", f"-p tcp -o lo -m mark --mark {mark} -j RETURN")
    for flag, owner in _owners(cfg):
        b.versioned(
            _loopback(cfg),
            _V6_LOOPBACK,
            "OUTPUT",
            "mangle",
            f"! -d {{ip}} -p tcp -o lo -m owner {flag} {owner} -j MARK --set-mark {OUTBOUND_MARK}",
        )
    b.append("OUTPUT", "mangle", f"-p tcp -m connmark --mark {mark} -j CONNMARK --restore-mark")
    b.insert("ISTIO_INBOUND", "mangle", 1, f"-p tcp -m mark --mark {mark} -j RETURN")
    b.insert("ISTIO_INBOUND", "mangle", 2, "-p tcp -s 127.0.0.6/32 -i lo -j RETURN", v6=False)
    b.insert("ISTIO_INBOUND", "mangle", 2, "-p tcp -s ::6/128 -i lo -j RETURN", v4=False)
    b.insert("ISTIO_INBOUND", "mangle", 3, f"-p tcp -i lo -m mark ! --mark {OUTBOUND_MARK} -j RETURN")
