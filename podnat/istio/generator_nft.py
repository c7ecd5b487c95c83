"""The rules Istio's native nftables backend means to install (Istio 1.27+, `--native-nftables`).

Stable API:
  nft_script(config) -> str        the `nft -f` transaction istio-iptables --native-nftables (or istio-cni
                                   with nativeNftables) runs, spelled as Istio's nftables goldens spell it
  nft_listing(config) -> str       what `nft list ruleset` prints once that transaction has run: the live
                                   form podnat reads from a pod (counters at 0)
  expected_nft(config) -> dict[Family, Ruleset]
                                   the listing parsed per family (podnat.netfilter.nft); an inet table
                                   serves both families, so both are always there ({} for mode NONE)
  listing_rule(text) -> str        one rule of the script as the kernel lists it

Facts (tools/istio-nftables/pkg/capture/run.go, goldens/nftables/, kernel-save/nftables/):
- Three inet tables, `istio-proxy-nat`, `-mangle`, `-raw`, each written only when it has rules: `add
  table`, `flush table`, the chains that have rules (in a fixed order per table; base chains nat
  prerouting/output at -100, mangle prerouting `filter` and output `route` at -150, raw at -300),
  then the rules in the order istio-iptables builds them.
- Istio's builder asks for inserts at iptables-like positions (`index 0` = the head). An insert into
  a chain holding no more rules than the index becomes an `add rule` (the form since 1.29; 1.27 and
  1.28 failed to program TPROXY with `includeInboundPorts=""`, which podnat does not reproduce).
  nft inserts before rule N, so the IPv6 twin of an insert at 1 lands before the IPv4 one.
- Every rule carries `counter` from 1.28 on; 1.27 wrote the same rules without it.
- The kernel's listing differs from the script only in spelling (`listing_rule`): interface names
  quoted, full-length prefixes dropped and others masked, `meta` before `skuid`/`skgid`/`mark`, marks in
  hex, `ct state` flags in the kernel's order, and `meta l4proto tcp` left out where a `tcp` port test
  implies it. Base chains name their priority (`dstnat` only for nat prerouting, `mangle`, `raw`).
- Names are printed as given: a named group (`skgid java`) is resolved by nft when loading (and
  refused when the host lacks it); the listing then shows the number, which podnat cannot know.

The configuration is interpreted as in podnat.istio.generator (DNS capture only with a resolver or
capture-all, loopback in the include list drops the `oifname lo` returns, CIDRs split by family);
the rules and their spelling are the nftables backend's own. A CIDR given with host bits
(`10.0.0.1/8`) is written masked, where Istio writes it as given: nft masks it, so the listing is the
same. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from podnat.istio.config import InterceptionConfig, InterceptionMode, IstioRelease, Wildcard
from podnat.istio.generator import DNS_PROXY_PORT, OUTBOUND_MARK, split_ranges
from podnat.netfilter.addresses import ntop
from podnat.netfilter.model import Family, Ruleset
from podnat.netfilter.nft import parse_nft

NAT = "istio-proxy-nat"
MANGLE = "istio-proxy-mangle"
RAW = "istio-proxy-raw"
PREROUTING = "prerouting"
OUTPUT = "output"
INBOUND = "istio-inbound"
REDIRECT = "istio-redirect"
IN_REDIRECT = "istio-in-redirect"
ISTIO_OUTPUT = "istio-output"
OUTPUT_DNS = "istio-output-dns"
DIVERT = "istio-divert"
TPROXY = "istio-tproxy"
DROP = "istio-drop"
COUNTER = "counter"

Base = tuple[str, str, int]  # (type, hook, priority)

# Per table, the chains Istio may declare, in declaration order, and the base chains' hooks.
TABLES: tuple[tuple[str, tuple[tuple[str, Base | None], ...]], ...] = (
    (
        NAT,
        (
            (PREROUTING, ("nat", "prerouting", -100)),
            (OUTPUT, ("nat", "output", -100)),
            (INBOUND, None),
            (REDIRECT, None),
            (IN_REDIRECT, None),
            (ISTIO_OUTPUT, None),
            (OUTPUT_DNS, None),
        ),
    ),
    (
        MANGLE,
        (
            (PREROUTING, ("filter", "prerouting", -150)),
            (OUTPUT, ("route", "output", -150)),
            (DIVERT, None),
            (TPROXY, None),
            (INBOUND, None),
            (DROP, None),
        ),
    ),
    (
        RAW,
        (
            (PREROUTING, ("filter", "prerouting", -300)),
            (OUTPUT, ("filter", "output", -300)),
            (INBOUND, None),
            (OUTPUT_DNS, None),
        ),
    ),
)


@dataclass(frozen=True, slots=True)
class NftRule:
    """One rule as Istio's builder records it: where, its text, and the insert position it asked for."""

    table: str
    chain: str
    text: str
    index: int | None = None  # None: append


@dataclass(frozen=True, slots=True)
class NftChain:
    """A chain Istio declares, with its rules in the order the kernel holds them after the script."""

    name: str
    base: Base | None
    rules: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NftTable:
    """One of Istio's tables: its `nft -f` commands and the chains they leave behind."""

    name: str
    commands: tuple[str, ...]
    chains: tuple[NftChain, ...]


@dataclass(slots=True)
class _NftBuilder:
    """Collects rules in the order istio-iptables builds them; IPv6-only rules only with IPv6 on."""

    ipv6: bool
    counters: bool
    rules: list[NftRule] = field(default_factory=list)

    def append(self, table: str, chain: str, *words: str) -> None:
        """A rule at the end of the chain."""
        self.rules.append(NftRule(table, chain, self._text(words)))

    def append_v6(self, table: str, chain: str, *words: str) -> None:
        """An `ip6` rule (dropped when IPv6 is off)."""
        if self.ipv6:
            self.append(table, chain, *words)

    def insert(self, table: str, chain: str, index: int, *words: str) -> None:
        """A rule Istio inserts at `index` (0: the head)."""
        self.rules.append(NftRule(table, chain, self._text(words), index))

    def insert_v6(self, table: str, chain: str, index: int, *words: str) -> None:
        """An `ip6` insert (dropped when IPv6 is off)."""
        if self.ipv6:
            self.insert(table, chain, index, *words)

    def _text(self, words: tuple[str, ...]) -> str:
        return " ".join(w for w in words if self.counters or w != COUNTER)


# --- the script ---------------------------------------------------------------------------------


def nft_script(config: InterceptionConfig) -> str:
    """The `nft -f` transaction Istio runs for a configuration ("" when it installs nothing)."""
    commands = [line for table in program(config) for line in table.commands]
    return "\n".join(commands) + "\n" if commands else ""


def nft_listing(config: InterceptionConfig) -> str:
    """What `nft list ruleset` prints in the pod once Istio's transaction has run."""
    return listing_of(program(config), listing_rule)


def listing_of(tables: Iterable[NftTable], listed: Callable[[str], str]) -> str:
    """`nft list ruleset`'s text for inet tables, each rule as `listed` spells it (counters at 0)."""
    out: list[str] = []
    for table in tables:
        out.append(f"table inet {table.name} {{")
        blocks = []
        for chain in table.chains:
            lines = [f"\tchain {chain.name} {{"]
            if chain.base is not None:
                kind, hook, priority = chain.base
                lines.append(f"\t\ttype {kind} hook {hook} priority {_priority_name(hook, priority)}; policy accept;")
            lines += [f"\t\t{listed(rule)}" for rule in chain.rules]
            lines.append("\t}")
            blocks.append("\n".join(lines))
        out += ["\n\n".join(blocks), "}"]
    return "\n".join(out) + "\n" if out else ""


def expected_nft(config: InterceptionConfig) -> dict[Family, Ruleset]:
    """The live rules per family, as podnat reads them from `nft list ruleset` ({} when none)."""
    listing = nft_listing(config)
    if not listing:
        return {}
    return {family: parse_nft(listing, family) for family in Family}


def program(config: InterceptionConfig) -> tuple[NftTable, ...]:
    """Istio's tables for a configuration: the commands of each and the chains they leave."""
    if config.mode is InterceptionMode.NONE:
        return ()
    rules = _build(config).rules
    return tuple(table for table in (_table(name, chains, rules) for name, chains in TABLES) if table)


def _table(name: str, declared: tuple[tuple[str, Base | None], ...], rules: list[NftRule]) -> NftTable | None:
    """One table's commands: the table, a flush, the chains with rules, then the rules."""
    own = [rule for rule in rules if rule.table == name]
    used = {rule.chain for rule in own}
    chains = [(chain, base) for chain, base in declared if chain in used]
    if not chains:
        return None
    commands = [f"add table inet {name}", f"flush table inet {name}"]
    for chain, base in chains:
        spec = f" {{ type {base[0]} hook {base[1]} priority {base[2]} ; }}" if base else ""
        commands.append(f"add chain inet {name} {chain}{spec}")
    held: dict[str, list[str]] = {chain: [] for chain, _ in chains}
    counts: Counter[str] = Counter()
    for rule in own:
        # An insert into a chain with no rule at that index is an append (Istio's builder, 1.29+).
        index = rule.index if rule.index is not None and rule.index < counts[rule.chain] else None
        if index is None:
            commands.append(f"add rule inet {name} {rule.chain} {rule.text}")
            held[rule.chain].append(rule.text)
        else:
            commands.append(f"insert rule inet {name} {rule.chain} index {index} {rule.text}")
            held[rule.chain].insert(index, rule.text)
        counts[rule.chain] += 1
    return NftTable(name, tuple(commands), tuple(NftChain(c, b, tuple(held[c])) for c, b in chains))


def _priority_name(hook: str, priority: int) -> str:
    """A base chain's priority as nft lists it in an inet table."""
    if (hook, priority) in (("prerouting", -100), ("postrouting", 100)):
        return "dstnat" if priority == -100 else "srcnat"
    return {-300: "raw", -150: "mangle", 0: "filter", 50: "security"}.get(priority, str(priority))


# --- the kernel's spelling -------------------------------------------------------------------------

_CT_STATES = ("invalid", "established", "related", "new", "untracked")  # the kernel's bit order


def listing_rule(text: str, *, counter_values: bool = True) -> str:
    """One rule as the script spells it -> as `nft list ruleset` prints it (counters at 0).

    Without `counter_values` a counter stays a bare `counter`: the rule text podnat keeps (Rule.spec)."""
    words = text.split()
    out: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        following = words[i + 1] if i + 1 < len(words) else ""
        if word == "meta" and following == "l4proto" and i + 2 < len(words):
            proto = words[i + 2]
            later = range(i + 3, len(words) - 1)
            implied = any(words[j] == proto and words[j + 1] in ("dport", "sport") for j in later)
            if not implied:
                out += words[i : i + 3]
            i += 3
        elif word in ("iifname", "oifname") and following:
            out.append(word)
            i += 1
            if words[i] == "!=":
                out.append("!=")
                i += 1
            out.append(words[i] if words[i].startswith('"') else f'"{words[i]}"')
            i += 1
        elif word in ("ip", "ip6") and following in ("saddr", "daddr") and i + 2 < len(words):
            out += [word, following]
            i += 2
            if words[i] == "!=":
                out.append("!=")
                i += 1
            out.append(_listed_address(words[i]) if i < len(words) else "")
            i += 1
        elif word in ("skuid", "skgid") and (not out or out[-1] != "meta"):
            out += ["meta", word]
            i += 1
        elif word == "mark":
            i = _listed_mark(words, i, out)
        elif word == "ct" and following == "state" and i + 2 < len(words):
            states = words[i + 2].split(",")
            known = [s for s in _CT_STATES if s in states]
            out += ["ct", "state", ",".join(known + [s for s in states if s not in known])]
            i += 3
        elif word == COUNTER and following != "packets" and counter_values:
            out += [COUNTER, "packets", "0", "bytes", "0"]
            i += 1
        else:
            out.append(word)
            i += 1
    return " ".join(out)


def _listed_mark(words: list[str], i: int, out: list[str]) -> int:
    """`mark` at words[i]: a bare one is the packet's (`meta mark`); numbers after it in hex."""
    before = out[-1] if out else ""
    if before not in ("meta", "ct"):
        out.append("meta")
    out.append("mark")
    i += 1
    if before == "set":  # the value of `ct mark set mark`
        return i
    if i < len(words) and words[i] in ("!=", "set"):
        out.append(words[i])
        i += 1
    if i < len(words) and words[i].isdigit():
        out.append(f"0x{int(words[i]):08x}")
        i += 1
    return i


def _listed_address(text: str) -> str:
    """`127.0.0.1/32` -> `127.0.0.1`, `127.0.0.1/8` -> `127.0.0.0/8`, `::127.0.0.53/128` -> `::127.0.0.53`."""
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return text
    host = ntop(network.network_address)
    return host if network.prefixlen == network.max_prefixlen else f"{host}/{network.prefixlen}"


# --- the rules, in istio-iptables' order -------------------------------------------------------------


def _build(cfg: InterceptionConfig) -> _NftBuilder:
    """Every rule the nftables backend appends or inserts, in its order: run.go's stages."""
    b = _NftBuilder(cfg.enable_ipv6, counters=cfg.release >= IstioRelease(1, 28))
    loopback = cfg.ipv4_loopback_cidr
    _interfaces(cfg, b)
    _redirect_chains(cfg, b)
    _inbound(cfg, b, loopback)
    _outbound_entry(cfg, b)
    _outbound_owners(cfg, b, loopback)
    if cfg.dns_active:
        _dns(cfg, b)
    _outbound_destinations(cfg, b, loopback)
    if cfg.mode is InterceptionMode.TPROXY:
        _tproxy_tail(cfg, b, loopback)
    return b


def _interfaces(cfg: InterceptionConfig, b: _NftBuilder) -> None:
    """Excluded interfaces, then kube-virt interfaces short-circuit PREROUTING; INVALID_DROP."""
    for iface in cfg.exclude_interfaces:
        b.append(NAT, PREROUTING, "iifname", iface, COUNTER, "return")
        b.append(NAT, OUTPUT, "oifname", iface, COUNTER, "return")
    if cfg.mode is InterceptionMode.TPROXY:
        for iface in cfg.exclude_interfaces:
            b.append(MANGLE, PREROUTING, "iifname", iface, COUNTER, "return")
            b.append(MANGLE, OUTPUT, "oifname", iface, COUNTER, "return")
    for iface in cfg.reroute_virtual_interfaces:
        b.insert(NAT, PREROUTING, 0, "iifname", iface, COUNTER, "return")
    if cfg.drop_invalid:
        b.append(MANGLE, PREROUTING, "meta l4proto tcp", "ct state", "invalid", COUNTER, "jump", DROP)
        b.append(MANGLE, DROP, COUNTER, "drop")


def _redirect_chains(cfg: InterceptionConfig, b: _NftBuilder) -> None:
    """The tunnel port's return and the two redirect chains."""
    b.append(NAT, INBOUND, "meta l4proto tcp", "tcp dport", str(cfg.inbound_tunnel_port), COUNTER, "return")
    b.append(NAT, REDIRECT, "meta l4proto tcp", COUNTER, "redirect to", f":{cfg.proxy_port}")
    b.append(NAT, IN_REDIRECT, "meta l4proto tcp", COUNTER, "redirect to", f":{cfg.inbound_capture_port}")


def _outbound_entry(cfg: InterceptionConfig, b: _NftBuilder) -> None:
    """OUTPUT -> ISTIO_OUTPUT, the excluded ports' returns and the inbound passthrough's (127.0.0.6)."""
    b.append(NAT, OUTPUT, COUNTER, "jump", ISTIO_OUTPUT)
    for port in cfg.outbound_ports_exclude:
        b.append(NAT, ISTIO_OUTPUT, "tcp dport", str(port), COUNTER, "return")
        b.append(NAT, ISTIO_OUTPUT, "udp dport", str(port), COUNTER, "return")
    b.append(NAT, ISTIO_OUTPUT, "oifname", "lo", "ip saddr", "127.0.0.6/32", COUNTER, "return")
    b.append_v6(NAT, ISTIO_OUTPUT, "oifname", "lo", "ip6 saddr", "::6/128", COUNTER, "return")


def _outbound_owners(cfg: InterceptionConfig, b: _NftBuilder, loopback: str) -> None:
    """The proxy's own traffic: to itself over lo redirected inbound, otherwise returned; owner groups."""
    tunnel, dns = str(cfg.inbound_tunnel_port), cfg.dns_active
    include = cfg.outbound_ip_ranges_include
    loopback_included = not isinstance(include, Wildcard) and any(r.is_loopback for r in include)
    for key, owners in (("skuid", cfg.proxy_uids), ("skgid", cfg.proxy_gids)):
        # with DNS capture, the app's TCP to a resolver on lo must still reach the DNS rules
        ports = f"{{ 53, {tunnel} }}" if dns and key == "skuid" else tunnel
        for owner in owners:
            for ip, local in (("ip", loopback), ("ip6", "::1/128")):
                add = b.append if ip == "ip" else b.append_v6
                add(
                    NAT,
                    ISTIO_OUTPUT,
                    "oifname",
                    "lo",
                    "meta l4proto tcp",
                    f"{ip} daddr",
                    "!=",
                    local,
                    "tcp dport",
                    "!=",
                    ports,
                    key,
                    owner,
                    COUNTER,
                    "jump",
                    IN_REDIRECT,
                )
            if not loopback_included:
                port53 = ("meta l4proto tcp", "tcp dport", "!=", "53") if dns else ()
                b.append(NAT, ISTIO_OUTPUT, "oifname", "lo", *port53, key, "!=", owner, COUNTER, "return")
            b.append(NAT, ISTIO_OUTPUT, key, owner, COUNTER, "return")

    if isinstance(cfg.owner_groups_include, Wildcard):
        for group in cfg.owner_groups_exclude:
            b.append(NAT, ISTIO_OUTPUT, "skgid", group, COUNTER, "return")
    elif cfg.owner_groups_include:
        none_of = [word for group in cfg.owner_groups_include for word in ("skgid", "!=", group)]
        b.append(NAT, ISTIO_OUTPUT, *none_of, COUNTER, "return")


def _outbound_destinations(cfg: InterceptionConfig, b: _NftBuilder, loopback: str) -> None:
    """Outbound by destination: loopback and excluded CIDRs return, included ports and CIDRs redirect."""
    b.append(NAT, ISTIO_OUTPUT, "ip daddr", loopback, COUNTER, "return")
    b.append_v6(NAT, ISTIO_OUTPUT, "ip6 daddr", "::1/128", COUNTER, "return")
    exclude_v4, exclude_v6 = split_ranges(cfg.outbound_ip_ranges_exclude)
    for cidr in exclude_v4:
        b.append(NAT, ISTIO_OUTPUT, "ip daddr", cidr, COUNTER, "return")
    for cidr in exclude_v6:
        b.append_v6(NAT, ISTIO_OUTPUT, "ip6 daddr", cidr, COUNTER, "return")

    for port in cfg.outbound_ports_include:
        b.append(NAT, ISTIO_OUTPUT, "tcp dport", str(port), COUNTER, "jump", REDIRECT)

    include = cfg.outbound_ip_ranges_include
    if isinstance(include, Wildcard):
        b.append(NAT, ISTIO_OUTPUT, COUNTER, "jump", REDIRECT)
        for iface in cfg.reroute_virtual_interfaces:
            b.insert(NAT, PREROUTING, 0, "iifname", iface, COUNTER, "jump", REDIRECT)
        return
    include_v4, include_v6 = split_ranges(include)
    for cidr in include_v4:
        for iface in cfg.reroute_virtual_interfaces:
            b.insert(NAT, PREROUTING, 0, "iifname", iface, "ip daddr", cidr, COUNTER, "jump", REDIRECT)
        b.append(NAT, ISTIO_OUTPUT, "ip daddr", cidr, COUNTER, "jump", REDIRECT)
    for cidr in include_v6:
        for iface in cfg.reroute_virtual_interfaces:
            b.insert_v6(NAT, PREROUTING, 0, "iifname", iface, "ip6 daddr", cidr, COUNTER, "jump", REDIRECT)
        b.append_v6(NAT, ISTIO_OUTPUT, "ip6 daddr", cidr, COUNTER, "jump", REDIRECT)


def _inbound(cfg: InterceptionConfig, b: _NftBuilder, loopback: str) -> None:
    """Inbound capture: nat prerouting -> istio-inbound (REDIRECT), or mangle with TPROXY."""
    include = cfg.inbound_ports_include
    if not isinstance(include, Wildcard) and not include:
        return
    tproxy = cfg.mode is InterceptionMode.TPROXY
    table = MANGLE if tproxy else NAT
    if tproxy:
        mark = str(cfg.tproxy_mark)
        capture = f":{cfg.inbound_capture_port}"
        b.append(MANGLE, DIVERT, COUNTER, "meta mark set", mark)
        b.append(MANGLE, DIVERT, COUNTER, "accept")
        b.append(
            MANGLE,
            TPROXY,
            "meta l4proto tcp",
            "ip daddr",
            "!=",
            loopback,
            "tproxy ip to",
            capture,
            "meta mark set",
            mark,
            COUNTER,
            "accept",
        )
        b.append_v6(
            MANGLE,
            TPROXY,
            "meta l4proto tcp",
            "ip6 daddr",
            "!=",
            "::1/128",
            "tproxy ip6 to",
            capture,
            "meta mark set",
            mark,
            COUNTER,
            "accept",
        )
    b.append(table, PREROUTING, "meta l4proto tcp", COUNTER, "jump", INBOUND)
    if isinstance(include, Wildcard):
        for port in cfg.inbound_ports_exclude:
            b.append(table, INBOUND, "meta l4proto tcp", "tcp dport", str(port), COUNTER, "return")
        if tproxy:
            b.append(MANGLE, INBOUND, "meta l4proto tcp", "ct state", "related,established", COUNTER, "jump", DIVERT)
            b.append(MANGLE, INBOUND, "meta l4proto tcp", COUNTER, "jump", TPROXY)
        else:
            b.append(NAT, INBOUND, "meta l4proto tcp", COUNTER, "jump", IN_REDIRECT)
        return
    for port in include:
        if tproxy:
            b.append(
                MANGLE,
                INBOUND,
                "meta l4proto tcp",
                "ct state",
                "related,established",
                "tcp dport",
                str(port),
                COUNTER,
                "jump",
                DIVERT,
            )
            b.append(MANGLE, INBOUND, "meta l4proto tcp", "tcp dport", str(port), COUNTER, "jump", TPROXY)
        else:
            b.append(NAT, INBOUND, "meta l4proto tcp", "tcp dport", str(port), COUNTER, "jump", IN_REDIRECT)


def _dns(cfg: InterceptionConfig, b: _NftBuilder) -> None:
    """DNS to pilot-agent's proxy (nat istio-output-dns) and the raw table's conntrack zones."""
    to_proxy = ("redirect", "to", f":{DNS_PROXY_PORT}")
    b.append(RAW, OUTPUT, COUNTER, "jump", OUTPUT_DNS)
    b.append(NAT, ISTIO_OUTPUT, COUNTER, "jump", OUTPUT_DNS)
    v4 = [f"{ntop(server)}/32" for server in cfg.dns_servers_v4]
    v6 = [f"{ntop(server)}/128" for server in cfg.dns_servers_v6]
    for proto in ("tcp", "udp"):
        if cfg.capture_all_dns:
            l4proto = ("meta l4proto tcp",) if proto == "tcp" else ()
            b.append(NAT, OUTPUT_DNS, *l4proto, f"{proto} dport", "53", COUNTER, *to_proxy)
            continue
        for server in v4:
            b.append(NAT, OUTPUT_DNS, "ip daddr", server, f"{proto} dport", "53", COUNTER, *to_proxy)
        for server in v6:
            b.append_v6(NAT, OUTPUT_DNS, "ip6 daddr", server, f"{proto} dport", "53", COUNTER, *to_proxy)

    # the proxy's own queries upstream in zone 1, its answers to the app in zone 2
    for key, owners in (("skuid", cfg.proxy_uids), ("skgid", cfg.proxy_gids)):
        for owner in owners:
            b.append(RAW, OUTPUT_DNS, "udp dport", "53", "meta", key, owner, COUNTER, "ct zone set 1")
            b.append(RAW, OUTPUT_DNS, "udp sport", DNS_PROXY_PORT, "meta", key, owner, COUNTER, "ct zone set 2")
    if cfg.capture_all_dns:
        b.append(RAW, PREROUTING, COUNTER, "jump", INBOUND)
        b.append(RAW, OUTPUT_DNS, "udp dport", "53", COUNTER, "ct zone set 2")
        b.append(RAW, INBOUND, "udp sport", "53", COUNTER, "ct zone set 1")
        return
    if v4 or v6:
        b.append(RAW, PREROUTING, COUNTER, "jump", INBOUND)
    for server in v4:
        b.append(RAW, OUTPUT_DNS, "udp dport", "53", "ip daddr", server, COUNTER, "ct zone set 2")
        b.append(RAW, INBOUND, "udp sport", "53", "ip saddr", server, COUNTER, "ct zone set 1")
    for server in v6:
        b.append_v6(RAW, OUTPUT_DNS, "udp dport", "53", "ip6 daddr", server, COUNTER, "ct zone set 2")
        b.append_v6(RAW, INBOUND, "udp sport", "53", "ip6 saddr", server, COUNTER, "ct zone set 1")


def _tproxy_tail(cfg: InterceptionConfig, b: _NftBuilder, loopback: str) -> None:
    """TPROXY: connection marks, Envoy's hairpin mark 1338, and mangle istio-inbound's guards on top."""
    mark = str(cfg.tproxy_mark)
    b.append(MANGLE, PREROUTING, "meta l4proto tcp", "mark", mark, COUNTER, "ct mark set mark")
    b.append(MANGLE, OUTPUT, "oifname", "lo", "meta l4proto tcp", "mark", mark, COUNTER, "return")
    for key, owners in (("skuid", cfg.proxy_uids), ("skgid", cfg.proxy_gids)):
        for owner in owners:
            b.append(
                MANGLE,
                OUTPUT,
                "oifname",
                "lo",
                "meta l4proto tcp",
                "ip daddr",
                "!=",
                loopback,
                key,
                owner,
                COUNTER,
                "meta mark set",
                OUTBOUND_MARK,
            )
            b.append_v6(
                MANGLE,
                OUTPUT,
                "oifname",
                "lo",
                "meta l4proto tcp",
                "ip6 daddr",
                "!=",
                "::1/128",
                key,
                owner,
                COUNTER,
                "meta mark set",
                OUTBOUND_MARK,
            )
    b.append(MANGLE, OUTPUT, "meta l4proto tcp", "ct", "mark", mark, COUNTER, "meta mark set", "ct", "mark")
    b.insert(MANGLE, INBOUND, 0, "meta l4proto tcp", "mark", mark, COUNTER, "return")
    b.insert(MANGLE, INBOUND, 1, "iifname", "lo", "meta l4proto tcp", "ip saddr", "127.0.0.6/32", COUNTER, "return")
    b.insert_v6(MANGLE, INBOUND, 1, "iifname", "lo", "meta l4proto tcp", "ip6 saddr", "::6/128", COUNTER, "return")
    b.insert(MANGLE, INBOUND, 2, "iifname", "lo", "meta l4proto tcp", "mark", "!=", OUTBOUND_MARK, COUNTER, "return")
