"""Where an Istio rule comes from: which annotation or istio-iptables flag produces it, for drift causes.

Stable API:
  rule_origin(table, chain, rule) -> str | None   the annotation/flag behind a rule (None: Istio never writes it)

Tables of regexes over "TABLE CHAIN RULE", first match wins: iptables-save's spelling, and Istio's native
nftables rules (tables istio-proxy-*) as `nft list ruleset` prints them. Used by podnat/istio/reconcile.py
(ambient's own table is in podnat/istio/ambient.py). Pure: no I/O.
"""

from __future__ import annotations

import re

_ORIGINS: tuple[tuple[str, str], ...] = (
    # (regex over "TABLE CHAIN RULE", explanation); first match wins
    (
        r"^nat ISTIO_INBOUND .*--dport 15008 -j RETURN",
        "the HBONE tunnel port (-e / inbound tunnel port, always excluded)",
    ),
    (r"^nat ISTIO_INBOUND .*--dport 22 -j RETURN", "istio-iptables before 1.13 (ssh always excluded)"),
    (
        r"^\w+ ISTIO_INBOUND .*--dport (\d+) -j RETURN",
        "traffic.sidecar.istio.io/excludeInboundPorts (-d); only with includeInboundPorts '*'",
    ),
    (
        r"^\w+ ISTIO_INBOUND .*--dport (\d+) .*-j (ISTIO_IN_REDIRECT|ISTIO_TPROXY|ISTIO_DIVERT)",
        "traffic.sidecar.istio.io/includeInboundPorts (-b) with a port list",
    ),
    (
        r"^\w+ ISTIO_INBOUND -p tcp -j (ISTIO_IN_REDIRECT|ISTIO_TPROXY)",
        "traffic.sidecar.istio.io/includeInboundPorts '*' (-b '*')",
    ),
    (
        r"^\w+ PREROUTING -p tcp -j ISTIO_INBOUND",
        "traffic.sidecar.istio.io/includeInboundPorts (-b) not empty",
    ),
    (
        r"^\w+ PREROUTING -i \S+ -j RETURN",
        "traffic.sidecar.istio.io/excludeInterfaces (-c) or "
        "traffic.sidecar.istio.io/kubevirtInterfaces / istio.io/reroute-virtual-interfaces (-k)",
    ),
    (r"^\w+ OUTPUT -o \S+ -j RETURN", "traffic.sidecar.istio.io/excludeInterfaces (-c)"),
    (
        r"^nat PREROUTING -i \S+ .*-j ISTIO_REDIRECT",
        "traffic.sidecar.istio.io/kubevirtInterfaces / istio.io/reroute-virtual-interfaces (-k)",
    ),
    (
        r"^nat ISTIO_OUTPUT -p (tcp|udp) -m (tcp|udp) --dport \d+ -j RETURN",
        "traffic.sidecar.istio.io/excludeOutboundPorts (-o); istio-cni adds 15020 by default",
    ),
    (
        r"^nat ISTIO_OUTPUT -p tcp -m tcp --dport \d+ -j ISTIO_REDIRECT",
        "traffic.sidecar.istio.io/includeOutboundPorts (-q)",
    ),
    (
        r"^nat ISTIO_OUTPUT -d \S+ -j RETURN$",
        "traffic.sidecar.istio.io/excludeOutboundIPRanges (-x), or the loopback range "
        "(ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR)",
    ),
    (
        r"^nat ISTIO_OUTPUT -d \S+ -j ISTIO_REDIRECT",
        "traffic.sidecar.istio.io/includeOutboundIPRanges (-i) with a CIDR list",
    ),
    (r"^nat ISTIO_OUTPUT -j ISTIO_REDIRECT", "traffic.sidecar.istio.io/includeOutboundIPRanges '*' (-i '*')"),
    (
        r"^nat ISTIO_OUTPUT -m owner (! )?--gid-owner \S+ (-m owner .*)?-j RETURN",
        "the proxy gid (-g), or ISTIO_OUTBOUND_OWNER_GROUPS / ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
    ),
    (r"-m owner (! )?--uid-owner", "the proxy uid (-u; sidecar.istio.io/proxyUID or runAsUser)"),
    (r"-m owner (! )?--gid-owner", "the proxy gid (-g; defaults to the uid; runAsGroup)"),
    (
        r"ISTIO_OUTPUT_DNS|--dport 53|--sport 53|--to-ports 15053|CT --zone",
        "DNS capture (ISTIO_META_DNS_CAPTURE=true / --redirect-dns)",
    ),
    (r"^mangle .*(INVALID|ISTIO_DROP)", "INVALID_DROP=true (drop-invalid)"),
    (r"^mangle ", "sidecar.istio.io/interceptionMode: TPROXY (-m TPROXY)"),
    (r"^nat ISTIO_OUTPUT -s (127\.0\.0\.6|::6)/", "always: inbound passthrough from 127.0.0.6 / ::6"),
    (r"^nat ISTIO_(IN_)?REDIRECT .*REDIRECT --to-ports", "the proxy ports (-p outbound, -z inbound capture)"),
    (r"^nat OUTPUT .*-j ISTIO_OUTPUT", "always: outbound capture jump"),
)


# Istio's native nftables rules (tables istio-proxy-nat/-mangle/-raw), as `nft list ruleset` prints
# them (counters dropped): the same settings as above, in nft's words.
_NFT = r"^istio-proxy-\S+ "
_NFT_ORIGINS: tuple[tuple[str, str], ...] = (
    (r"^istio-proxy-raw ", "DNS capture (ISTIO_META_DNS_CAPTURE=true / --redirect-dns): conntrack zones"),
    (_NFT + r"istio-inbound .*tcp dport 15008 .*return$", "the HBONE tunnel port (always excluded)"),
    (
        _NFT + r"istio-inbound .*tcp dport \S+ .*return$",
        "traffic.sidecar.istio.io/excludeInboundPorts (-d); only with includeInboundPorts '*'",
    ),
    (
        _NFT + r"istio-inbound .*tcp dport \S+ .*(jump|goto) istio-(in-redirect|tproxy|divert)$",
        "traffic.sidecar.istio.io/includeInboundPorts (-b) with a port list",
    ),
    (
        _NFT + r"istio-inbound (meta l4proto tcp )?(counter )?(jump|goto) istio-(in-redirect|tproxy)$",
        "traffic.sidecar.istio.io/includeInboundPorts '*' (-b '*')",
    ),
    (
        _NFT + r"prerouting (meta l4proto tcp )?(counter )?jump istio-inbound$",
        "traffic.sidecar.istio.io/includeInboundPorts (-b) not empty",
    ),
    (
        _NFT + r"prerouting iifname \"(?!lo\")[^\"]+\" (counter )?return$",
        "traffic.sidecar.istio.io/excludeInterfaces (-c) or "
        "traffic.sidecar.istio.io/kubevirtInterfaces / istio.io/reroute-virtual-interfaces (-k)",
    ),
    (_NFT + r"output oifname \"(?!lo\")[^\"]+\" (counter )?return$", "traffic.sidecar.istio.io/excludeInterfaces (-c)"),
    (
        _NFT + r"prerouting iifname \S+ .*jump istio-redirect$",
        "traffic.sidecar.istio.io/kubevirtInterfaces / istio.io/reroute-virtual-interfaces (-k)",
    ),
    (
        _NFT + r"istio-output (meta l4proto (tcp|udp) )?(tcp|udp) dport \S+ (counter )?return$",
        "traffic.sidecar.istio.io/excludeOutboundPorts (-o); istio-cni adds 15020 by default",
    ),
    (
        _NFT + r"istio-output (meta l4proto tcp )?tcp dport \S+ (counter )?jump istio-redirect$",
        "traffic.sidecar.istio.io/includeOutboundPorts (-q)",
    ),
    (
        _NFT + r"istio-output ip6? daddr (127\.0\.0\.1|::1)(/\d+)? (counter )?return$",
        "always: the proxy's own loopback traffic returns",
    ),
    (
        _NFT + r"istio-output ip6? daddr \S+ (counter )?return$",
        "traffic.sidecar.istio.io/excludeOutboundIPRanges (-x), or the loopback range "
        "(ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR)",
    ),
    (
        _NFT + r"istio-output ip6? daddr \S+ (counter )?jump istio-redirect$",
        "traffic.sidecar.istio.io/includeOutboundIPRanges (-i) with a CIDR list",
    ),
    (
        _NFT + r"istio-output (counter )?jump istio-redirect$",
        "traffic.sidecar.istio.io/includeOutboundIPRanges '*' (-i '*')",
    ),
    (_NFT + r"istio-output .*saddr (127\.0\.0\.6|::6)", "always: inbound passthrough from 127.0.0.6 / ::6"),
    (_NFT + r"istio-output .*skuid", "the proxy uid (-u; sidecar.istio.io/proxyUID or runAsUser)"),
    (
        _NFT + r"istio-output .*skgid",
        "the proxy gid (-g; defaults to the uid; runAsGroup), or ISTIO_OUTBOUND_OWNER_GROUPS(_EXCLUDE)",
    ),
    (
        r"istio-output-dns|dport 53|sport 53|to :15053|ct zone",
        "DNS capture (ISTIO_META_DNS_CAPTURE=true / --redirect-dns)",
    ),
    (r"^istio-proxy-mangle .*(invalid|drop)", "INVALID_DROP=true (drop-invalid)"),
    (r"^istio-proxy-mangle ", "sidecar.istio.io/interceptionMode: TPROXY (-m TPROXY)"),
    (_NFT + r"istio-(in-)?redirect .*redirect to :", "the proxy ports (-p outbound, -z inbound capture)"),
    (_NFT + r"output .*jump istio-output$", "always: outbound capture jump"),
)


def rule_origin(table: str, chain: str, rule: str) -> str | None:
    """Which Istio annotation / istio-iptables flag produces a rule, or None if Istio never writes it.

    `rule` is the save form after `-A CHAIN`, e.g. rule_origin("nat", "ISTIO_INBOUND",
    "-p tcp -m tcp --dport 9080 -j RETURN") -> "traffic.sidecar.istio.io/excludeInboundPorts (-d) ...";
    for native nftables, the rule as `nft list ruleset` prints it in an istio-proxy-* table.
    """
    text = f"{table} {chain} {rule}"
    for pattern, origin in _NFT_ORIGINS if table.startswith("istio-proxy-") else _ORIGINS:
        if re.search(pattern, text):
            return origin
    return None
