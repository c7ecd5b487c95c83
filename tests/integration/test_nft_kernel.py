"""The nftables expected model on a real kernel: each generated `nft -f` script is loaded into a fresh
network namespace, and what `nft list ruleset` prints there must be the kernel dump in tests/data/istio
and podnat's `nft_listing`, byte for byte. Configurations the corpus lacks are loaded too, so the
listing's spelling rules are checked on forms no golden shows."""

from __future__ import annotations

import subprocess
from dataclasses import replace

import pytest
from conftest import REFERENCE, require

from podnat.istio.config import InterceptionConfig, InterceptionMode
from podnat.istio.generator_nft import nft_listing, nft_script
from podnat.istio.goldens import GOLDEN_CASES, KERNEL_SAVE_FAILED, CaseKind, GoldenCase, case_config

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

KERNEL_SAVE = REFERENCE / "kernel-save" / "nftables"
NFT_CASES = [case for case in GOLDEN_CASES if case.kind is CaseKind.ISTIO_NFTABLES]
DEFAULT_ARGS = "istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x '' -b '*' -d 15090,15021,15020"


def load(netns: str, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "-f", "-"],
        input=script,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def listing(netns: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "list", "ruleset"], capture_output=True, text=True, check=True, timeout=30
    ).stdout


def config_of(case: GoldenCase) -> InterceptionConfig:
    config = case_config(case)
    assert config is not None
    return config


@pytest.mark.parametrize("case", NFT_CASES, ids=lambda c: c.path)
def test_generated_golden_script_lists_as_the_kernel_save(netns: str, case: GoldenCase) -> None:
    config = config_of(case)
    loaded = load(netns, nft_script(config))
    if case.kernel_save in KERNEL_SAVE_FAILED:
        # the group names java/ftp: nft resolves them while loading (kernel-save/nftables/*.FAILED.txt)
        require(loaded.returncode != 0, "this host has a java or ftp group")
        assert "Group does not exist" in loaded.stderr
        return
    assert loaded.returncode == 0, loaded.stderr
    live = listing(netns)
    assert live == (KERNEL_SAVE / f"{case.kernel_save}.nft-list-ruleset").read_text()
    assert live == nft_listing(config)


def _default(**changes: object) -> InterceptionConfig:
    return replace(InterceptionConfig.from_args(DEFAULT_ARGS, {}, "1.30"), native_nftables=True, **changes)


EXTRA = {
    "injected-default": _default(),
    "release-1.27-no-counters": _default().with_release("1.27"),
    "cni-capture-all-dns-excluded-ports": replace(
        InterceptionConfig.from_cni(
            {"traffic.sidecar.istio.io/excludeOutboundPorts": "5555,6666"},
            {"ISTIO_META_DNS_CAPTURE": "true"},
            ipv6=True,
        ),
        native_nftables=True,
    ),
    "tproxy-dual-stack-dns-drop-invalid": _default(
        mode=InterceptionMode.TPROXY,
        enable_ipv6=True,
        drop_invalid=True,
        redirect_dns=True,
        dns_servers_v4=(InterceptionConfig.from_args("", nameservers=["10.96.0.10"]).dns_servers_v4),
        dns_servers_v6=(
            InterceptionConfig.from_args("", nameservers=["fd00:10:96::a", "::ffff:10.96.0.11"]).dns_servers_v6
        ),
    ),
    "include-ranges-loopback-cidr-owner-groups": replace(
        InterceptionConfig.from_args(
            "-p 15001 -z 15006 -u 1337 -m REDIRECT -i 10.0.0.1/8,fd00::/64 -x 192.168.0.0/16,fd01::/48 "
            "-b 9080,9090 -q 8443 -o 5555 -k eth1 -c eth9",
            {"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "127.0.0.1/8", "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "0,1"},
            "1.30",
            ipv6=True,
        ),
        native_nftables=True,
    ),
}


@pytest.mark.parametrize("name", list(EXTRA))
def test_configurations_beyond_the_corpus_list_as_podnat_expects(netns: str, name: str) -> None:
    config = EXTRA[name]
    loaded = load(netns, nft_script(config))
    assert loaded.returncode == 0, loaded.stderr
    assert listing(netns) == nft_listing(config)
