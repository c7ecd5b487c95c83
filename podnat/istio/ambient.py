"""Ambient mode: the in-pod rules the istio-cni node agent writes for ztunnel, and what a pod asks for.

Stable API:
  AmbientConfig                      frozen: release, DNS capture (after the pod's override), ingress mode
                                     (bypass-inbound-capture), virtual interfaces, IPv6, probe SNAT addresses
  AmbientConfig.from_pod_annotations(annotations, release=..., ipv6=..., dns_global=None)
  ambient_restore(cfg) -> ExpectedRules       the in-pod restore input istio-cni writes (per family)
  ambient_expected(cfg) -> ExpectedRules      the live `iptables-save` text it leaves in the pod
  host_probe_restore(cfg) -> ExpectedRules    the node's SNAT rule for kubelet probes (ISTIO_POSTRT)
  ambient_nft_script(cfg) / host_probe_nft_script(cfg, kubelet_uid)
                                     the native nftables transactions (Istio 1.28+, `inet istio-ambient-*`)
  ambient_nft_listing(cfg)           what `nft list ruleset` prints in the pod after that transaction
  (podnat.istio.inputs.looks_ambient(ruleset) recognises a table holding these chains: a sidecar's
  table is read without loading this module)
  ZTUNNEL_PORTS, INPOD_MARK, CONN_MARK, MARK_MASK, ROUTE_TABLE, PROBE_SNAT_V4, PROBE_SNAT_V6

Facts (Istio cni/pkg/iptables/iptables.go, cni/pkg/nftables/nftables.go, cni/pkg/config/config.go,
cni/pkg/nodeagent/net.go, at the release tags; ztunnel src/inpod/):
- ztunnel opens its sockets inside the pod's network namespace and marks every one 0x539/0xfff (1337);
  mangle ISTIO_PRERT turns a marked packet's connection into connmark 0x111/0xfff, mangle ISTIO_OUTPUT
  restores it onto the app's replies, and `ip rule fwmark 0x111/0xfff lookup 100` with
  `local default dev lo table 100` (IPv6 too) brings them back to ztunnel's transparent socket.
- Ports: 15001 outbound, 15006 plaintext inbound, 15008 HBONE (never redirected from 1.24), 15053 DNS.
  Kubelet probes are SNAT'd on the node (ISTIO_POSTRT) to 169.254.7.127 (fd16:9254:7127:1337:ffff:ffff:
  ffff:ffff) and accepted in the pod without capture.
- 1.22-1.23: inbound by mangle TPROXY (15008 and 15006), UDP DNS only, no raw table.
  1.24: nat REDIRECT to 15006 (`! --dport 15008`), DNS over UDP and TCP skipping ztunnel's own mark,
  raw `CT --zone 1`; `ambient.istio.io/bypass-inbound-capture` (ingress mode) drops inbound capture.
  1.25: DNS capture on by default; per-pod `ambient.istio.io/dns-capture`; `istio.io/reroute-virtual-
  interfaces` (inbound from those interfaces to 15001). 1.25-1.28: ingress mode also drops the
  connmark rule; 1.29 keeps it. 1.28: native nftables (`inet istio-ambient-nat|mangle|raw`).
Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass

from podnat.istio import ports
from podnat.istio.config import NEWEST_SUPPORTED, IstioRelease, split_list, truthy
from podnat.istio.generator import ExpectedRules, RuleBuilder, restore_text
from podnat.istio.generator_nft import NftChain, NftTable, listing_of, listing_rule
from podnat.istio.normalise import normalise_restore

INPOD_MARK = 0x539
CONN_MARK = 0x111
MARK_MASK = 0xFFF
ROUTE_TABLE = 100
OUTBOUND_PORT = ports.OUTBOUND
INBOUND_PLAINTEXT_PORT = ports.INBOUND
HBONE_PORT = ports.HBONE
DNS_PORT = ports.DNS_PROXY
ZTUNNEL_PORTS: tuple[int, ...] = (OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, HBONE_PORT, DNS_PORT)
PROBE_SNAT_V4 = ipaddress.IPv4Address("169.254.7.127")
PROBE_SNAT_V6 = ipaddress.IPv6Address("fd16:9254:7127:1337:ffff:ffff:ffff:ffff")
PROBE_IPSET = "istio-inpod-probes"
OLDEST_AMBIENT = IstioRelease(1, 22)

ANN_DNS_CAPTURE = "ambient.istio.io/dns-capture"
ANN_BYPASS_INBOUND = "ambient.istio.io/bypass-inbound-capture"
ANN_REROUTE_VIRTUAL_INTERFACES = "istio.io/reroute-virtual-interfaces"

PRERT = "ISTIO_PRERT"
OUTPUT = "ISTIO_OUTPUT"
POSTRT = "ISTIO_POSTRT"
_MARK = f"0x{INPOD_MARK:x}/0x{MARK_MASK:x}"
_CONNMARK = f"0x{CONN_MARK:x}/0x{MARK_MASK:x}"


@dataclass(frozen=True, slots=True)
class AmbientConfig:
    """What istio-cni builds a pod's in-pod rules from: the agent's settings and the pod's overrides."""

    release: IstioRelease = NEWEST_SUPPORTED
    redirect_dns: bool = True  # after the pod's ambient.istio.io/dns-capture override
    ingress_mode: bool = False  # ambient.istio.io/bypass-inbound-capture: no inbound capture
    virtual_interfaces: tuple[str, ...] = ()
    enable_ipv6: bool = False
    probe_snat_v4: ipaddress.IPv4Address = PROBE_SNAT_V4
    probe_snat_v6: ipaddress.IPv6Address = PROBE_SNAT_V6
    native_nftables: bool = False

    @property
    def tproxy(self) -> bool:
        """1.22-1.23 capture inbound with mangle TPROXY, not nat REDIRECT."""
        return self.release < IstioRelease(1, 24)

    @classmethod
    def from_pod_annotations(
        cls,
        annotations: Mapping[str, str],
        *,
        release: IstioRelease = NEWEST_SUPPORTED,
        ipv6: bool = False,
        dns_global: bool | None = None,
        native_nftables: bool = False,
    ) -> AmbientConfig:
        """A pod's annotations over the agent's defaults (DNS capture on by default from 1.25)."""
        dns = dns_global if dns_global is not None else release >= IstioRelease(1, 25)
        overrides = release >= IstioRelease(1, 25)
        if overrides and ANN_DNS_CAPTURE in annotations:
            dns = truthy(annotations[ANN_DNS_CAPTURE])
        ingress = release >= IstioRelease(1, 24) and truthy(annotations.get(ANN_BYPASS_INBOUND, ""))
        virtual = split_list(annotations.get(ANN_REROUTE_VIRTUAL_INTERFACES, "")) if overrides else ()
        return cls(
            release=release,
            redirect_dns=dns,
            ingress_mode=ingress,
            virtual_interfaces=virtual,
            enable_ipv6=ipv6,
            native_nftables=native_nftables and release >= IstioRelease(1, 28),
        )


# --- iptables --------------------------------------------------------------------------------------


def _inpod(cfg: AmbientConfig) -> RuleBuilder:
    """Every in-pod rule istio-cni appends, in its order (cni/pkg/iptables AppendInpodRules)."""
    b = RuleBuilder(cfg.enable_ipv6)
    v4_probe, v6_probe = str(cfg.probe_snat_v4), str(cfg.probe_snat_v6)
    b.append("PREROUTING", "mangle", f"-j {PRERT}")
    b.append("OUTPUT", "mangle", f"-j {OUTPUT}")
    b.append("OUTPUT", "nat", f"-j {OUTPUT}")
    if cfg.tproxy:
        _inpod_tproxy(cfg, b, v4_probe, v6_probe)
        return b
    if cfg.redirect_dns:
        b.append("PREROUTING", "raw", f"-j {PRERT}")
        b.append("OUTPUT", "raw", f"-j {OUTPUT}")
    b.append("PREROUTING", "nat", f"-j {PRERT}")
    for iface in cfg.virtual_interfaces:
        b.append(PRERT, "nat", f"-i {iface} -p tcp -j REDIRECT --to-ports {OUTBOUND_PORT}")
        b.append(PRERT, "nat", f"-i {iface} -p tcp -j RETURN")
    if not cfg.ingress_mode or cfg.release >= IstioRelease(1, 29):
        b.append(PRERT, "mangle", f"-m mark --mark {_MARK} -j CONNMARK --set-xmark {_CONNMARK}")
    if not cfg.ingress_mode:
        b.versioned(v4_probe, v6_probe, PRERT, "nat", "-s {ip} -p tcp -m tcp -j ACCEPT")
    b.versioned(v4_probe, v6_probe, OUTPUT, "nat", "-d {ip} -p tcp -m tcp -j ACCEPT")
    if not cfg.ingress_mode:
        b.versioned(
            "127.0.0.1/32",
            "::1/128",
            PRERT,
            "nat",
            f"! -d {{ip}} -p tcp ! --dport {HBONE_PORT} -m mark ! --mark {_MARK}",
            f"-j REDIRECT --to-ports {INBOUND_PLAINTEXT_PORT}",
        )
    b.append(
        OUTPUT,
        "mangle",
        f"-m connmark --mark {_CONNMARK} -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff",
    )
    if cfg.redirect_dns:
        b.append(
            OUTPUT, "nat", f"! -o lo -p udp -m mark ! --mark {_MARK} -m udp --dport 53 -j REDIRECT --to-port {DNS_PORT}"
        )
        b.versioned(
            "127.0.0.1/32",
            "::1/128",
            OUTPUT,
            "nat",
            f"! -d {{ip}} -p tcp --dport 53 -m mark ! --mark {_MARK} -j REDIRECT --to-ports {DNS_PORT}",
        )
        b.append(OUTPUT, "raw", f"-p udp -m mark --mark {_MARK} -m udp --dport 53 -j CT --zone 1")
        b.append(PRERT, "raw", f"-p udp -m mark ! --mark {_MARK} -m udp --sport 53 -j CT --zone 1")
    _outbound_tail(b)
    return b


def _inpod_tproxy(cfg: AmbientConfig, b: RuleBuilder, v4_probe: str, v6_probe: str) -> None:
    """1.22-1.23: inbound by mangle TPROXY to 15008 and 15006; UDP DNS only."""
    b.append(PRERT, "mangle", f"-m mark --mark {_MARK} -j CONNMARK --set-xmark {_CONNMARK}")
    b.versioned(v4_probe, v6_probe, PRERT, "mangle", "-s {ip} -p tcp -m tcp -j ACCEPT")
    b.versioned(v4_probe, v6_probe, OUTPUT, "nat", "-d {ip} -p tcp -m tcp -j ACCEPT")
    b.versioned("127.0.0.1/32", "::1/128", PRERT, "mangle", "! -d {ip} -p tcp -i lo -j ACCEPT")
    b.append(
        PRERT,
        "mangle",
        f"-p tcp -m tcp --dport {HBONE_PORT} -m mark ! --mark {_MARK}",
        f"-j TPROXY --on-port {HBONE_PORT} --tproxy-mark {_CONNMARK}",
    )
    b.append(PRERT, "mangle", "-p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
    b.versioned(
        "127.0.0.1/32",
        "::1/128",
        PRERT,
        "mangle",
        f"! -d {{ip}} -p tcp -m mark ! --mark {_MARK}",
        f"-j TPROXY --on-port {INBOUND_PLAINTEXT_PORT} --tproxy-mark {_CONNMARK}",
    )
    b.append(
        OUTPUT,
        "mangle",
        f"-m connmark --mark {_CONNMARK} -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff",
    )
    if cfg.redirect_dns:
        b.append(OUTPUT, "nat", f"! -o lo -p udp -m udp --dport 53 -j REDIRECT --to-port {DNS_PORT}")
    _outbound_tail(b)


def _outbound_tail(b: RuleBuilder) -> None:
    """ztunnel's connmarked legs pass, the app's own-pod traffic over lo passes, the rest goes to 15001."""
    b.append(OUTPUT, "nat", f"-p tcp -m mark --mark {_CONNMARK} -j ACCEPT")
    b.versioned("127.0.0.1/32", "::1/128", OUTPUT, "nat", "! -d {ip} -o lo -j ACCEPT")
    b.versioned(
        "127.0.0.1/32",
        "::1/128",
        OUTPUT,
        "nat",
        f"! -d {{ip}} -p tcp -m mark ! --mark {_MARK} -j REDIRECT --to-ports {OUTBOUND_PORT}",
    )


def _host(cfg: AmbientConfig) -> RuleBuilder:
    """The node's rule: a kubelet probe (a host socket to a pod in the probe ipset) SNAT'd to the probe IP."""
    b = RuleBuilder(cfg.enable_ipv6)
    b.insert("POSTROUTING", "nat", 1, f"-j {POSTRT}")
    for family, address in (("v4", cfg.probe_snat_v4), ("v6", cfg.probe_snat_v6)):
        add = b.append_v4 if family == "v4" else b.append_v6
        add(
            POSTRT,
            "nat",
            "-m",
            "owner",
            "--socket-exists",
            "-p",
            "tcp",
            "-m",
            "set",
            "--match-set",
            f"{PROBE_IPSET}-{family}",
            "dst",
            "-j",
            "SNAT",
            "--to-source",
            str(address),
        )
    return b


def ambient_restore(cfg: AmbientConfig) -> ExpectedRules:
    """The in-pod restore input istio-cni writes (what Istio's cni-ambient goldens hold)."""
    b = _inpod(cfg)
    return ExpectedRules(restore_text(b.v4), restore_text(b.v6) if cfg.enable_ipv6 else None)


def ambient_expected(cfg: AmbientConfig) -> ExpectedRules:
    """The live `iptables-save` text the in-pod rules leave (per family)."""
    restore = ambient_restore(cfg)
    v6 = normalise_restore(restore.v6, ipv6=True) if restore.v6 is not None else None
    return ExpectedRules(normalise_restore(restore.v4, ipv6=False), v6)


def host_probe_restore(cfg: AmbientConfig) -> ExpectedRules:
    """The node's probe SNAT rule as restore input (the `hostprobe` goldens)."""
    b = _host(cfg)
    return ExpectedRules(restore_text(b.v4), restore_text(b.v6) if cfg.enable_ipv6 else None)


# --- native nftables ---------------------------------------------------------------------------------

NFT_NAT = "istio-ambient-nat"
NFT_MANGLE = "istio-ambient-mangle"
NFT_RAW = "istio-ambient-raw"
_NFT_TABLES: tuple[tuple[str, tuple[tuple[str, tuple[str, str, int] | None], ...]], ...] = (
    (
        NFT_NAT,
        (
            ("prerouting", ("nat", "prerouting", -100)),
            ("output", ("nat", "output", -100)),
            ("postrouting", ("nat", "postrouting", 100)),
            ("istio-prerouting", None),
            ("istio-output", None),
        ),
    ),
    (
        NFT_MANGLE,
        (
            ("prerouting", ("filter", "prerouting", -150)),
            ("output", ("route", "output", -150)),
            ("istio-prerouting", None),
            ("istio-output", None),
        ),
    ),
    (
        NFT_RAW,
        (
            ("prerouting", ("filter", "prerouting", -300)),
            ("output", ("filter", "output", -300)),
            ("istio-prerouting", None),
            ("istio-output", None),
        ),
    ),
)
_NFT_MARK = f"mark and 0x{MARK_MASK:x}"


def _nft_inpod(cfg: AmbientConfig) -> list[tuple[str, str, str]]:
    """(table, chain, rule text) in the order the nftables configurator adds them."""
    rules: list[tuple[str, str, str]] = []
    six = cfg.enable_ipv6

    def add(table: str, chain: str, text: str, *, v6: bool = False) -> None:
        if six or not v6:
            rules.append((table, chain, text))

    add(NFT_MANGLE, "prerouting", "jump istio-prerouting")
    add(NFT_MANGLE, "output", "jump istio-output")
    add(NFT_NAT, "output", "jump istio-output")
    if cfg.redirect_dns:
        add(NFT_RAW, "prerouting", "jump istio-prerouting")
        add(NFT_RAW, "output", "jump istio-output")
    add(NFT_NAT, "prerouting", "jump istio-prerouting")
    for iface in cfg.virtual_interfaces:
        add(NFT_NAT, "istio-prerouting", f"iifname {iface} meta l4proto tcp counter redirect to :{OUTBOUND_PORT}")
        add(NFT_NAT, "istio-prerouting", f"iifname {iface} meta l4proto tcp counter return")
    if not cfg.ingress_mode or cfg.release >= IstioRelease(1, 29):
        add(
            NFT_MANGLE,
            "istio-prerouting",
            f"meta mark & 0x{MARK_MASK:x} == 0x{INPOD_MARK:x} counter ct mark set ct mark & 0xfffff000 |  "
            f"0x{CONN_MARK:x}",
        )
    if not cfg.ingress_mode:
        add(NFT_NAT, "istio-prerouting", f"meta l4proto tcp ip saddr {cfg.probe_snat_v4} counter accept")
        add(NFT_NAT, "istio-prerouting", f"meta l4proto tcp ip6 saddr {cfg.probe_snat_v6} counter accept", v6=True)
    add(NFT_NAT, "istio-output", f"meta l4proto tcp ip daddr {cfg.probe_snat_v4} counter accept")
    add(NFT_NAT, "istio-output", f"meta l4proto tcp ip6 daddr {cfg.probe_snat_v6} counter accept", v6=True)
    if not cfg.ingress_mode:
        # Istio's IPv4 rule has two spaces before `!=` (its text is joined from parts); kept as written
        add(
            NFT_NAT,
            "istio-prerouting",
            f"ip daddr != 127.0.0.1/32 tcp dport != {HBONE_PORT} {_NFT_MARK}  "
            f"!= 0x{INPOD_MARK:x} counter redirect to :{INBOUND_PLAINTEXT_PORT}",
        )
        add(
            NFT_NAT,
            "istio-prerouting",
            f"ip6 daddr != ::1/128 tcp dport != {HBONE_PORT} {_NFT_MARK} "
            f"!= 0x{INPOD_MARK:x} counter redirect to :{INBOUND_PLAINTEXT_PORT}",
            v6=True,
        )
    add(NFT_MANGLE, "istio-output", f"ct mark and 0x{MARK_MASK:x} == 0x{CONN_MARK:x} counter meta mark set ct mark")
    if cfg.redirect_dns:
        add(
            NFT_NAT,
            "istio-output",
            f"oifname != lo {_NFT_MARK} != 0x{INPOD_MARK:x} udp dport 53 counter redirect to :{DNS_PORT}",
        )
        for family, loop in (("ip", "127.0.0.1/32"), ("ip6", "::1/128")):
            add(
                NFT_NAT,
                "istio-output",
                f"{family} daddr != {loop} tcp dport 53 {_NFT_MARK} != 0x{INPOD_MARK:x} "
                f"counter redirect to :{DNS_PORT}",
                v6=family == "ip6",
            )
        add(NFT_RAW, "istio-output", f"udp dport 53 meta {_NFT_MARK} == 0x{INPOD_MARK:x} counter ct zone set 1")
        add(NFT_RAW, "istio-prerouting", f"udp sport 53 meta {_NFT_MARK} != 0x{INPOD_MARK:x} counter ct zone set 1")
    add(NFT_NAT, "istio-output", f"meta l4proto tcp {_NFT_MARK} == 0x{CONN_MARK:x} counter accept")
    for family, loop in (("ip", "127.0.0.1/32"), ("ip6", "::1/128")):
        add(NFT_NAT, "istio-output", f"oifname lo {family} daddr != {loop} counter accept", v6=family == "ip6")
    for family, loop in (("ip", "127.0.0.1/32"), ("ip6", "::1/128")):
        add(
            NFT_NAT,
            "istio-output",
            f"meta l4proto tcp {family} daddr != {loop} {_NFT_MARK} != "
            f"0x{INPOD_MARK:x} counter redirect to :{OUTBOUND_PORT}",
            v6=family == "ip6",
        )
    return rules


def _nft_tables(rules: list[tuple[str, str, str]]) -> tuple[NftTable, ...]:
    """Each table with rules: add, flush, its chains (those with rules or jumped to), then the rules."""
    out: list[NftTable] = []
    for name, declared in _NFT_TABLES:
        own = [(chain, text) for table, chain, text in rules if table == name]
        if not own:
            continue
        used = {chain for chain, _ in own} | {text.split()[1] for _, text in own if text.startswith("jump ")}
        chains = [(chain, base) for chain, base in declared if chain in used]
        commands = [f"add table inet {name}", f"flush table inet {name}"]
        for chain, base in chains:
            spec = f" {{ type {base[0]} hook {base[1]} priority {base[2]} ; }}" if base else ""
            commands.append(f"add chain inet {name} {chain}{spec}")
        commands += [f"add rule inet {name} {chain} {text}" for chain, text in own]
        held = tuple(NftChain(c, b, tuple(t for ch, t in own if ch == c)) for c, b in chains)
        out.append(NftTable(name, tuple(commands), held))
    return tuple(out)


def ambient_nft_script(cfg: AmbientConfig) -> str:
    """The `nft -f` transaction the istio-cni agent runs in the pod (native nftables)."""
    return "\n".join(line for table in _nft_tables(_nft_inpod(cfg)) for line in table.commands) + "\n"


def host_probe_nft_script(cfg: AmbientConfig, kubelet_uid: int) -> str:
    """The node's probe SNAT rule with native nftables: kubelet's uid instead of `--socket-exists`."""
    rules = [
        (
            NFT_NAT,
            "postrouting",
            f"meta l4proto tcp skuid {kubelet_uid} ip daddr @{PROBE_IPSET}-v4 counter snat to {cfg.probe_snat_v4}",
        )
    ]
    if cfg.enable_ipv6:
        rules.append(
            (
                NFT_NAT,
                "postrouting",
                f"meta l4proto tcp skuid {kubelet_uid} ip6 daddr @{PROBE_IPSET}-v6 counter snat to {cfg.probe_snat_v6}",
            )
        )
    return "\n".join(line for table in _nft_tables(rules) for line in table.commands) + "\n"


def ambient_nft_listing(cfg: AmbientConfig) -> str:
    """What `nft list ruleset` prints in the pod once the agent's transaction has run (counters at 0)."""
    return listing_of(_nft_tables(_nft_inpod(cfg)), _listed)


_MASKED = re.compile(r"mark (?:and|&) 0x([0-9a-f]+) (==|!=) 0x([0-9a-f]+)")
_CT_SET = re.compile(r"ct mark set ct mark & 0x([0-9a-f]+) \| 0x([0-9a-f]+)")


def _listed(rule: str) -> str:
    """One in-pod rule as the kernel lists it (seen on nft 1.0.6): masks and marks as 8-digit hex, and the
    connmark update's mask with the bits it then sets folded in (`& 0xfffff111 | 0x00000111`)."""
    text = listing_rule(" ".join(rule.split()))
    text = _MASKED.sub(lambda m: f"mark & 0x{int(m[1], 16):08x} {m[2]} 0x{int(m[3], 16):08x}", text)
    return _CT_SET.sub(
        lambda m: f"ct mark set ct mark & 0x{int(m[1], 16) | int(m[2], 16):08x} | 0x{int(m[2], 16):08x}", text
    )


# --- causes in Istio's terms ---------------------------------------------------------------------------

_DNS_ON = f"DNS capture is on (the agent's default from 1.25, or {ANN_DNS_CAPTURE}=true)"
_NOT_INGRESS = f"the pod is not in ingress mode ({ANN_BYPASS_INBOUND}=true)"
_ALWAYS = "every enrolled pod"
# (pattern over "TABLE CHAIN RULE", what the rule is for, when istio-cni writes it (None: always))
_ORIGINS: tuple[tuple[str, str, str | None], ...] = (
    (r"^(raw|istio-ambient-raw) ", "ztunnel's DNS queries in their own conntrack zone", _DNS_ON),
    (r"(PREROUTING|prerouting) .*(ISTIO_PRERT|istio-prerouting)", "the jump into ztunnel's inbound chain", None),
    (r"(OUTPUT|output) .*(-j ISTIO_OUTPUT|jump istio-output)", "the jump into ztunnel's outbound chain", None),
    (
        r"(-i|iifname) \S+ ",
        "inbound from a virtual interface to ztunnel's outbound port",
        f"the pod sets {ANN_REROUTE_VIRTUAL_INTERFACES}",
    ),
    (r"\b(53|15053)\b", "the app's DNS to ztunnel's DNS proxy (15053)", _DNS_ON),
    (
        r"(-s|saddr) (169\.254\.7\.127|fd16:9254:7127:1337)",
        "kubelet probes (SNAT'd on the node) pass uncaptured",
        _NOT_INGRESS,
    ),
    (r"(-d|daddr) (169\.254\.7\.127|fd16:9254:7127:1337)", "replies to kubelet probes pass uncaptured", None),
    (r"(15006|TPROXY --on-port 15008)", "inbound capture to ztunnel", _NOT_INGRESS),
    (
        r"(set-xmark 0x111|ct mark set)",
        "ztunnel's inbound return path (connmark 0x111)",
        f"{_NOT_INGRESS}, or the release is 1.29 or newer",
    ),
    (r"(restore-mark|meta mark set ct mark|0x111)", "ztunnel's inbound return path (connmark 0x111)", None),
    (r"(-o lo|oifname lo)", "the app's own traffic over lo (to its pod IP) bypasses ztunnel", None),
    (r"15001", "outbound capture to ztunnel", None),
)


def ambient_rule_origin(table: str, chain: str, rule: str) -> tuple[str, str | None] | None:
    """What an in-pod rule is for and when istio-cni leaves it out (None: always written), or None when
    istio-cni never writes it. `rule`: iptables save form or nft listing."""
    text = f"{table} {chain} {rule}"
    for pattern, what, omitted in _ORIGINS:
        if re.search(pattern, text):
            return what, omitted
    return None


def ambient_cause(kind: str, table: str, chain: str, rule: str | None) -> str:
    """A rule difference of an ambient pod, in Istio's terms: what istio-cni would have done and why."""
    gone = (
        "it is gone: deleted after the agent wrote the pod's rules, or never rewritten after a node reboot or "
        "re-enrolment; restart the pod so istio-cni writes them again"
    )
    other = "not something istio-cni writes in an ambient pod: another owner (a CNI, a firewall, an operator)"
    origin = ambient_rule_origin(table, chain, rule or "")
    if rule is None:  # a whole chain
        if kind == "missing-chain":
            return f"istio-cni creates this chain for {_ALWAYS}; {gone}"
        if origin is not None and origin[1] is not None:
            return f"{origin[0]}: istio-cni writes this only when {origin[1]}, which is not so for this pod"
        return other
    if origin is None:
        return other if kind == "extra" else "not what istio-cni writes for this pod's settings"
    what, needs = origin
    if kind == "missing":
        return f"{what}: istio-cni writes this for {_ALWAYS if needs is None else 'a pod where ' + needs}; {gone}"
    if kind == "extra":
        if needs is None:
            return f"{what}: a second copy (istio-cni writes it once)"
        return f"{what}: istio-cni writes this only when {needs}, which is not so for this pod"
    if kind == "reordered":
        return f"{what}: moved, which istio-cni never does; rules were re-inserted by hand or by another tool"
    return f"{what}: not as istio-cni writes it for this pod's settings"
