"""Ambient in-pod rules: annotations and releases, beyond what Istio's goldens (test_conformance) cover."""

from __future__ import annotations

from podnat.istio.ambient import (
    AmbientConfig,
    ambient_expected,
    ambient_nft_listing,
    ambient_restore,
)
from podnat.istio.config import InterceptionConfig, IstioRelease
from podnat.istio.generator import expected_rules
from podnat.istio.inputs import looks_ambient
from podnat.netfilter.model import Family
from podnat.netfilter.nft import parse_nft
from podnat.netfilter.parse import parse_ruleset


def test_annotations_override_the_agent() -> None:
    cfg = AmbientConfig.from_pod_annotations(
        {
            "ambient.istio.io/dns-capture": "false",
            "ambient.istio.io/bypass-inbound-capture": "true",
            "istio.io/reroute-virtual-interfaces": "eth1, ,eth2",
        }
    )
    assert (cfg.redirect_dns, cfg.ingress_mode, cfg.virtual_interfaces) == (False, True, ("eth1", "eth2"))
    assert AmbientConfig.from_pod_annotations({}).redirect_dns is True
    # before 1.25 DNS capture was off by default and there were no per-pod DNS / interface overrides
    old = AmbientConfig.from_pod_annotations(
        {"ambient.istio.io/dns-capture": "true", "istio.io/reroute-virtual-interfaces": "eth1"},
        release=IstioRelease(1, 24),
    )
    assert (old.redirect_dns, old.virtual_interfaces) == (False, ())


def test_release_differences() -> None:
    tproxy = ambient_restore(AmbientConfig(release=IstioRelease(1, 23))).v4
    assert (
        "-A ISTIO_PRERT -p tcp -m tcp --dport 15008 -m mark ! --mark 0x539/0xfff -j TPROXY --on-port 15008 "
        "--tproxy-mark 0x111/0xfff" in tproxy
    )
    assert "* raw" not in tproxy and "-p tcp --dport 53" not in tproxy
    # ingress mode drops the connmark rule in 1.25-1.28, keeps it from 1.29
    connmark = "-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff"
    assert connmark not in ambient_restore(AmbientConfig(release=IstioRelease(1, 28), ingress_mode=True)).v4
    assert connmark in ambient_restore(AmbientConfig(release=IstioRelease(1, 29), ingress_mode=True)).v4


def test_live_form_and_recognition() -> None:
    live = ambient_expected(AmbientConfig(enable_ipv6=True))
    assert live.v6 is not None and "-A ISTIO_PRERT -s fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128" in live.v6
    assert looks_ambient(parse_ruleset(live.v4))
    assert not looks_ambient(parse_ruleset(expected_rules(InterceptionConfig()).v4))
    assert looks_ambient(parse_nft(ambient_nft_listing(AmbientConfig()), Family.IPV4))
