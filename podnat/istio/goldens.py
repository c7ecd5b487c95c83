"""Istio's own goldens (iptables and native nftables): the file format, and each golden's configuration.

Stable API:
  split_golden(text) -> Golden         a golden's text -> IPv4 and IPv6 restore input, probes dropped
                                       (`load_golden(path)`, which reads the file, is in
                                       tools/conformance.py: this module does no I/O)
  GOLDEN_CASES: tuple[GoldenCase, ...] every golden in tests/data/istio with its configuration
  case_for(relpath) -> GoldenCase | None
  case_config(case) -> InterceptionConfig | None

Golden format (Istio's test stub records every command istio-iptables ran):
  1.24+  `iptables-save` / `ip6tables-save` probe lines, the IPv4 restore input, the IPv6 restore
         input when IPv6 is on, then the final `iptables-save` (and `ip6tables-save`) probes.
         Each family's tables are in sorted order, so a table name that does not sort after the
         previous one starts the IPv6 block.
  ..1.23 one `iptables -t T ...` / `ip6tables -t T ...` command per line.
  CNI    (cni/pkg/plugin/testdata) the IPv4 restore input only, tables in sorted order.
  nft    (goldens/nftables/) the `nft -f` transaction, compared as text (podnat.istio.generator_nft).

The configurations are data (the tables below), read out of Istio's test sources
(tools/istio-iptables/pkg/capture/run_test.go, cni/pkg/plugin/plugin_dryrun_test.go); the history
goldens (goldens/history/<tag>/) use the same test cases at every release, and the nftables goldens
(tools/istio-nftables/pkg/capture/run_test.go) the same cases plus `inbound-ports-empty-tproxy`, with
`native_nftables` on. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from podnat.istio.ambient import PROBE_SNAT_V6, AmbientConfig
from podnat.istio.config import (
    NEWEST_SUPPORTED,
    ConfigSource,
    InterceptionConfig,
    InterceptionMode,
    IstioRelease,
    groups_or_all,
    port_list,
    ports_or_all,
    range_list,
    ranges_or_all,
    split_list,
    split_servers,
)

_PROBES = frozenset({"iptables-save", "ip6tables-save"})


@dataclass(frozen=True, slots=True)
class Golden:
    """A golden's restore input per family (v6 None when the golden has no IPv6 part)."""

    v4: str
    v6: str | None
    ipv6_probed: bool  # the final probe lines include ip6tables-save: istio-iptables ran with IPv6 on


def split_golden(text: str) -> Golden:
    """Golden text -> the IPv4 and IPv6 restore input (or command lines), probe lines dropped."""
    lines = text.splitlines()
    body = [line for line in lines if line.strip() not in _PROBES]
    trailing = [line.strip() for line in lines[len(lines) - 2 :] if line.strip() in _PROBES]
    ipv6_probed = "ip6tables-save" in trailing
    if any(line.startswith(("iptables ", "ip6tables ")) for line in body):
        v4 = [line for line in body if line.startswith("iptables ")]
        v6 = [line for line in body if line.startswith("ip6tables ")]
        return Golden("\n".join(v4) + "\n", "\n".join(v6) + "\n" if v6 else None, ipv6_probed)
    blocks: list[list[str]] = [[]]
    previous = ""
    for line in body:
        if line.startswith("*"):
            name = line[1:].strip()
            if previous and name <= previous:
                blocks.append([])
            previous = name
        blocks[-1].append(line)
    v4_text = "\n".join(blocks[0]) + "\n"
    v6_text = "\n".join(blocks[1]) + "\n" if len(blocks) > 1 else None
    return Golden(v4_text, v6_text, ipv6_probed)


class CaseKind(str, Enum):
    """Where a golden comes from, which decides how its configuration is read."""

    ISTIO_IPTABLES = "istio-iptables"  # run_test.go: a config.Config built in the test
    CNI_SIDECAR = "cni-sidecar"  # plugin_dryrun_test.go: pod annotations + istio-proxy env/securityContext
    ISTIO_NFTABLES = "istio-nftables"  # istio-nftables run_test.go: the same config.Config, native nftables
    AMBIENT = "ambient"  # istio-cni's in-pod rules for ztunnel (podnat.istio.ambient)


@dataclass(frozen=True, slots=True)
class GoldenCase:
    """One golden: its path under goldens/, the release it belongs to and its configuration."""

    path: str  # relative to goldens/, e.g. "iptables/tproxy.golden", "history/1.12.0/empty.golden"
    kind: CaseKind
    release: str  # "1.30" etc.
    settings: dict[str, Any]  # istio-iptables config fields, or {"annotations","env","uid","gid"} for CNI
    note: str = ""  # why a golden is special (orphan file, bad input, ...)
    kernel_save: str | None = None  # stem under kernel-save/iptables/ (nftables/ for nft goldens), when loaded


# Istio's test configurations, as data. Keys are Istio's config.Config field names; the values are
# what the test sets on top of the test base config (run_test.go constructTestConfig: ports 15001/15006/
# 15008, uid = gid = 1337, TPROXY mark 1337, owner groups "*", loopback 127.0.0.1/32, no inbound ports,
# no outbound ranges, IPv6 off).
ISTIO_IPTABLES_CASES: dict[str, dict[str, Any]] = {
    "ipv6-empty-inbound-ports": {"InboundPortsInclude": "", "EnableIPv6": True},
    "ip-range": {
        "OutboundIPRangesExclude": "1.1.0.0/16",
        "OutboundIPRangesInclude": "9.9.0.0/16",
        "RedirectDNS": True,
        "ProxyGID": "1,2",
        "ProxyUID": "3,4",
        "DNSServersV4": ["127.0.0.53"],
    },
    "tproxy": {
        "InboundInterceptionMode": "TPROXY",
        "InboundPortsInclude": "*",
        "OutboundIPRangesExclude": "1.1.0.0/16",
        "OutboundIPRangesInclude": "9.9.0.0/16",
        "RedirectDNS": True,
        "DNSServersV4": ["127.0.0.53"],
        "ProxyGID": "1337",
        "ProxyUID": "1337",
        "ExcludeInterfaces": "not-istio-nic",
        "EnableIPv6": True,
    },
    "ipv6-inbound-ports": {"InboundPortsInclude": "4000,5000", "EnableIPv6": True},
    "ipv6-virt-interfaces": {
        "InboundPortsInclude": "4000,5000",
        "RerouteVirtualInterfaces": "eth0,eth1",
        "EnableIPv6": True,
    },
    "ipv6-ipnets": {
        "InboundPortsInclude": "4000,5000",
        "InboundPortsExclude": "6000,7000,",
        "RerouteVirtualInterfaces": "eth0,eth1",
        "OutboundIPRangesExclude": "2001:db8::/32",
        "OutboundIPRangesInclude": "2001:db8::/32",
        "EnableIPv6": True,
    },
    "ipv6-uid-gid": {
        "InboundPortsInclude": "4000,5000",
        "InboundPortsExclude": "6000,7000",
        "RerouteVirtualInterfaces": "eth0,eth1",
        "ProxyGID": "1,2",
        "ProxyUID": "3,4",
        "EnableIPv6": True,
        "OutboundIPRangesExclude": "2001:db8::/32",
        "OutboundIPRangesInclude": "2001:db8::/32",
    },
    "ipv6-outbound-ports": {
        "InboundPortsInclude": "",
        "OutboundPortsInclude": "32000,31000",
        "EnableIPv6": True,
    },
    "empty": {},
    "kube-virt-interfaces": {"RerouteVirtualInterfaces": "eth1,eth2", "OutboundIPRangesInclude": "*"},
    "ipnets": {"OutboundIPRangesInclude": "10.0.0.0/8"},
    "ipnets-with-kube-virt-interfaces": {
        "RerouteVirtualInterfaces": "eth1,eth2",
        "OutboundIPRangesInclude": "10.0.0.0/8",
    },
    "inbound-ports-include": {"InboundPortsInclude": "32000,31000"},
    "inbound-ports-wildcard": {"InboundPortsInclude": "*"},
    "inbound-ports-tproxy": {"InboundPortsInclude": "32000,31000", "InboundInterceptionMode": "TPROXY"},
    "inbound-ports-wildcard-tproxy": {"InboundPortsInclude": "*", "InboundInterceptionMode": "TPROXY"},
    "dns-uid-gid": {
        "RedirectDNS": True,
        "DNSServersV4": ["127.0.0.53"],
        "DNSServersV6": ["::127.0.0.53"],
        "ProxyGID": "1,2",
        "ProxyUID": "3,4",
        "EnableIPv6": True,
    },
    "ipv6-dns-uid-gid": {"EnableIPv6": True, "RedirectDNS": True, "ProxyGID": "1,2", "ProxyUID": "3,4"},
    "outbound-owner-groups": {"OwnerGroupsInclude": "java,202"},
    "outbound-owner-groups-exclude": {"OwnerGroupsExclude": "888,ftp"},
    "ipv6-dns-outbound-owner-groups": {
        "EnableIPv6": True,
        "RedirectDNS": True,
        "OwnerGroupsInclude": "java,202",
    },
    "ipv6-dns-outbound-owner-groups-exclude": {
        "EnableIPv6": True,
        "RedirectDNS": True,
        "OwnerGroupsExclude": "888,ftp",
    },
    "outbound-ports-include": {"OutboundPortsInclude": "32000,31000"},
    "loopback-outbound-iprange": {
        "OutboundIPRangesInclude": "127.1.2.3/32",
        "RedirectDNS": True,
        "DNSServersV4": ["127.0.0.53"],
        "ProxyGID": "1,2",
        "ProxyUID": "3,4",
    },
    "basic-exclude-nic": {"ExcludeInterfaces": "not-istio-nic"},
    "drop-invalid": {"DropInvalid": True},
    "host-ipv4-loopback-cidr": {"HostIPv4LoopbackCidr": "127.0.0.1/8"},
}
# tools/istio-nftables/pkg/capture/run_test.go has every case above and one more (TPROXY with
# includeInboundPorts "", the case Istio 1.29 fixed).
ISTIO_NFTABLES_CASES: dict[str, dict[str, Any]] = {
    **ISTIO_IPTABLES_CASES,
    "inbound-ports-empty-tproxy": {"InboundPortsInclude": "", "InboundInterceptionMode": "TPROXY"},
}

# cni/pkg/plugin/plugin_dryrun_test.go: pod annotations (sidecar.istio.io/status is always set),
# istio-proxy env and securityContext runAsUser/runAsGroup.
CNI_CASES: dict[str, dict[str, Any]] = {
    "basic": {"annotations": {}},
    "include-exclude-ip": {
        "annotations": {
            "traffic.sidecar.istio.io/includeOutboundIPRanges": "127.0.0.0/8",
            "traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.0.0.0/8",
        }
    },
    "include-exclude-ports": {
        "annotations": {
            "traffic.sidecar.istio.io/includeInboundPorts": "1111,2222",
            "traffic.sidecar.istio.io/excludeInboundPorts": "3333,4444",
            "traffic.sidecar.istio.io/excludeOutboundPorts": "5555,6666",
        }
    },
    "tproxy": {"annotations": {"sidecar.istio.io/interceptionMode": "TPROXY"}},
    "dns": {"annotations": {}, "env": {"ISTIO_META_DNS_CAPTURE": "true"}},
    "invalid-drop": {"annotations": {}, "env": {"INVALID_DROP": "true"}},
    "custom-uid": {"annotations": {}, "uid": 1000670000, "gid": 1000670001},
    "custom-uid-tproxy": {
        "annotations": {"sidecar.istio.io/interceptionMode": "TPROXY"},
        "uid": 1000670000,
        "gid": 1000670001,
    },
    # No test case writes this file: it is left over in cni/pkg/plugin/testdata from the first dry-run
    # test (2021, Istio 1.11/1.12): port 22 excluded, no 15008 match, so it is the basic pod at 1.12.
    "status-ports": {
        "annotations": {},
        "release": "1.12",
        "note": "orphan golden (no test case writes it); the basic pod at Istio 1.12",
    },
}

AMBIENT_GOLDENS: tuple[str, ...] = (
    "default",
    "default_ipv6",
    "dns_pod_disabled_and_on_globally",
    "dns_pod_disabled_and_on_globally_ipv6",
    "dns_pod_enabled_and_off_globally",
    "dns_pod_enabled_and_off_globally_ipv6",
    "hostprobe",
    "hostprobe_ipv6",
    "ingress",
    "ingress_and_virtual_interfaces",
    "ingress_and_virtual_interfaces_ipv6",
    "ingress_ipv6",
    "virtual_interfaces",
    "virtual_interfaces_ipv6",
)
# cni/pkg/iptables/common_test.go (and cni/pkg/nftables/): the agent's config (RedirectDNS) and the pod's
# overrides (IngressMode, VirtualInterfaces, DNSProxy); `host` for the node's probe rule
# (CreateHostRulesForHealthChecks). The tests' IPv6 probe address is e9ac:..., except the iptables host
# test, which sets Istio's real one; the nftables host test's kubelet uid is 1000.
AMBIENT_CASES: dict[str, dict[str, Any]] = {
    "default": {"RedirectDNS": True},
    "ingress": {"IngressMode": True},
    "virtual_interfaces": {"VirtualInterfaces": ["fake1s0f0", "fake1s0f1"]},
    "ingress_and_virtual_interfaces": {"IngressMode": True, "VirtualInterfaces": ["fake1s0f0", "fake1s0f1"]},
    "dns_pod_enabled_and_off_globally": {"RedirectDNS": False, "DNSProxy": "enabled"},
    "dns_pod_disabled_and_on_globally": {"RedirectDNS": True, "DNSProxy": "disabled"},
    "hostprobe": {"RedirectDNS": True, "host": True, "KubeletUID": 1000},
}
AMBIENT_TEST_PROBE_V6 = "e9ac:1e77:90ca:399f:4d6d:ece2:2f9b:3164"
HISTORY_TAGS: tuple[str, ...] = tuple(f"1.{minor}.0" for minor in range(12, 31))
HISTORY_ISTIO_IPTABLES: tuple[str, ...] = (
    "dns-uid-gid",
    "empty",
    "inbound-ports-wildcard",
    "ip-range",
    "kube-virt-interfaces",
    "tproxy",
)
HISTORY_CNI: tuple[str, ...] = ("basic", "dns")
# groups that do not exist on a host: iptables-restore rejects the rule (kernel-save/*.FAILED.txt)
UNKNOWN_GROUP_NOTE = "names a group (java, ftp) that does not exist on the loading host: iptables-restore fails"
UNKNOWN_GROUP_NOTE_NFT = "names a group (java, ftp) that does not exist on the loading host: nft -f fails"
KERNEL_SAVE_FAILED: frozenset[str] = frozenset(
    {
        "outbound-owner-groups",
        "outbound-owner-groups-exclude",
        "ipv6-dns-outbound-owner-groups",
        "ipv6-dns-outbound-owner-groups-exclude",
    }
)


def _load_table() -> tuple[GoldenCase, ...]:
    """Every golden in tests/data/istio with its case."""
    cases: list[GoldenCase] = []
    latest = str(NEWEST_SUPPORTED)
    for name, settings in ISTIO_IPTABLES_CASES.items():
        note = UNKNOWN_GROUP_NOTE if name in KERNEL_SAVE_FAILED else ""
        cases.append(GoldenCase(f"iptables/{name}.golden", CaseKind.ISTIO_IPTABLES, latest, settings, note, name))
    for name, pod in CNI_CASES.items():
        cases.append(
            GoldenCase(
                f"iptables/cni-sidecar-plugin/{name}.txt.golden",
                CaseKind.CNI_SIDECAR,
                str(pod.get("release", latest)),
                pod,
                str(pod.get("note", "")),
            )
        )
    for name, settings in ISTIO_NFTABLES_CASES.items():
        note = UNKNOWN_GROUP_NOTE_NFT if name in KERNEL_SAVE_FAILED else ""
        cases.append(GoldenCase(f"nftables/{name}.golden", CaseKind.ISTIO_NFTABLES, latest, settings, note, name))
    for folder in ("iptables/cni-ambient-iptables", "nftables/cni-ambient-nftables"):
        for name in AMBIENT_GOLDENS:
            stem = name.removesuffix("_ipv6")
            settings = {**AMBIENT_CASES[stem], "EnableIPv6": name.endswith("_ipv6")}
            note = "the node's kubelet-probe SNAT rule, not in-pod" if settings.get("host") else ""
            cases.append(GoldenCase(f"{folder}/{name}.golden", CaseKind.AMBIENT, latest, settings, note))
    for tag in HISTORY_TAGS:
        release = ".".join(tag.split(".")[:2])
        for name in HISTORY_ISTIO_IPTABLES:
            cases.append(
                GoldenCase(
                    f"history/{tag}/{name}.golden",
                    CaseKind.ISTIO_IPTABLES,
                    release,
                    ISTIO_IPTABLES_CASES[name],
                )
            )
        for name in HISTORY_CNI:
            cases.append(
                GoldenCase(f"history/{tag}/cni-{name}.txt.golden", CaseKind.CNI_SIDECAR, release, CNI_CASES[name])
            )
    return tuple(cases)


def case_config(case: GoldenCase) -> InterceptionConfig | None:
    """The InterceptionConfig a golden was generated from (None for ambient goldens: ambient_case_config)."""
    release = IstioRelease.parse(case.release)
    if case.kind is CaseKind.AMBIENT:
        return None
    if case.kind is CaseKind.CNI_SIDECAR:
        pod = case.settings
        return replace(
            InterceptionConfig.from_cni(
                pod.get("annotations", {}),
                pod.get("env", {}),
                uid=pod.get("uid"),
                gid=pod.get("gid"),
                release=release,
            ),
            source=ConfigSource.GOLDEN,
        )
    s = case.settings

    def text(key: str, default: str = "") -> str:
        return str(s.get(key, default))

    uids = split_list(text("ProxyUID", "1337"))
    servers = [*s.get("DNSServersV4", []), *s.get("DNSServersV6", [])]
    v4_dns, v6_dns = split_servers(servers)
    return InterceptionConfig(
        release=release,
        mode=InterceptionMode(text("InboundInterceptionMode", "REDIRECT") or "REDIRECT"),
        proxy_uids=uids,
        proxy_gids=split_list(text("ProxyGID")) or uids,
        inbound_ports_include=ports_or_all(text("InboundPortsInclude")),
        inbound_ports_exclude=port_list(text("InboundPortsExclude")),
        outbound_ports_include=port_list(text("OutboundPortsInclude")),
        outbound_ports_exclude=port_list(text("OutboundPortsExclude")),
        outbound_ip_ranges_include=ranges_or_all(text("OutboundIPRangesInclude")),
        outbound_ip_ranges_exclude=range_list(text("OutboundIPRangesExclude")),
        reroute_virtual_interfaces=split_list(text("RerouteVirtualInterfaces")),
        exclude_interfaces=split_list(text("ExcludeInterfaces")),
        redirect_dns=bool(s.get("RedirectDNS", False)),
        capture_all_dns=bool(s.get("CaptureAllDNS", False)),
        dns_servers_v4=v4_dns,
        dns_servers_v6=v6_dns,
        drop_invalid=bool(s.get("DropInvalid", False)),
        owner_groups_include=groups_or_all(text("OwnerGroupsInclude", "*")),
        owner_groups_exclude=split_list(text("OwnerGroupsExclude")),
        ipv4_loopback_cidr=text("HostIPv4LoopbackCidr", "127.0.0.1/32"),
        enable_ipv6=bool(s.get("EnableIPv6", False)),
        native_nftables=case.kind is CaseKind.ISTIO_NFTABLES,
        source=ConfigSource.GOLDEN,
    )


def ambient_case_config(case: GoldenCase) -> AmbientConfig:
    """The ambient configuration an ambient golden was generated from."""
    s = case.settings
    dns = {"enabled": True, "disabled": False}.get(str(s.get("DNSProxy", "")), bool(s.get("RedirectDNS", False)))
    nft = case.path.startswith("nftables/")
    probe_v6 = PROBE_SNAT_V6 if s.get("host") and not nft else ipaddress.IPv6Address(AMBIENT_TEST_PROBE_V6)
    return AmbientConfig(
        release=IstioRelease.parse(case.release),
        redirect_dns=dns,
        ingress_mode=bool(s.get("IngressMode", False)),
        virtual_interfaces=tuple(s.get("VirtualInterfaces", ())),
        enable_ipv6=bool(s.get("EnableIPv6", False)),
        probe_snat_v6=probe_v6,
        native_nftables=nft,
    )


GOLDEN_CASES: tuple[GoldenCase, ...] = _load_table()


def case_for(path: str) -> GoldenCase | None:
    """The table entry for a golden path relative to goldens/ (None for a golden podnat does not know)."""
    return next((case for case in GOLDEN_CASES if case.path == path), None)
