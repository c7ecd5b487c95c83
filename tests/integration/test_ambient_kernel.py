"""Ambient's in-pod rules on a real kernel: the generated iptables restore input and nft transaction are
loaded into a fresh network namespace, and what `iptables-save` / `nft list ruleset` print there must be
podnat's live form (`ambient_expected`, `ambient_nft_listing`): what a live ambient pod is reconciled with."""

from __future__ import annotations

import subprocess

import pytest

from podnat.istio.ambient import (
    AmbientConfig,
    ambient_expected,
    ambient_nft_listing,
    ambient_nft_script,
    ambient_restore,
)
from podnat.istio.config import IstioRelease
from tools.conformance import chains, compare

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

CONFIGS = {
    "default": AmbientConfig(),
    "ipv6": AmbientConfig(enable_ipv6=True),
    "no-dns-ingress-virtual": AmbientConfig(
        redirect_dns=False, ingress_mode=True, virtual_interfaces=("eth1",), enable_ipv6=True
    ),
    "release-1.23-tproxy": AmbientConfig(release=IstioRelease(1, 23), enable_ipv6=True),
}


def run(netns: str, *cmd: str, stdin: str | None = None) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", netns, *cmd], input=stdin, capture_output=True, text=True, check=True, timeout=30
    ).stdout


@pytest.mark.parametrize("name", CONFIGS)
def test_iptables_save_is_the_live_form(netns: str, name: str) -> None:
    cfg = CONFIGS[name]
    restore, live = ambient_restore(cfg), ambient_expected(cfg)
    run(netns, "iptables-nft-restore", stdin=restore.v4)
    assert compare(chains(run(netns, "iptables-nft-save"), "v4"), chains(live.v4, "v4"), "kernel") == ""
    if restore.v6 is not None and live.v6 is not None:
        run(netns, "ip6tables-nft-restore", stdin=restore.v6)
        assert compare(chains(run(netns, "ip6tables-nft-save"), "v6"), chains(live.v6, "v6"), "kernel") == ""


@pytest.mark.parametrize("name", [n for n in CONFIGS if not n.startswith("release-1.23")])
def test_nft_listing_is_the_kernels(netns: str, name: str) -> None:
    cfg = CONFIGS[name]
    run(netns, "nft", "-f", "-", stdin=ambient_nft_script(cfg))
    assert run(netns, "nft", "list", "ruleset") == ambient_nft_listing(cfg)
