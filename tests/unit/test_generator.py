"""The expected-rules generator: docs/istio-capture.md's injected default, release differences, pods."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from podnat.istio.config import (
    InterceptionConfig,
    InterceptionMode,
    IstioRelease,
    Wildcard,
    release_from_image,
)
from podnat.istio.generator import expected_rules
from podnat.istio.mesh import MeshMode
from podnat.istio.origins import rule_origin
from podnat.istio.pod import read_pod

DEFAULT_ARGS = "istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x \"\" -b '*' -d 15090,15021,15020"

# docs/istio-capture.md, "The injected default (REDIRECT mode), live iptables-save -t nat form", release 1.30
DEFAULT_NAT_1_30 = """\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:ISTIO_INBOUND - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
:ISTIO_REDIRECT - [0:0]
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN
-A ISTIO_INBOUND -p tcp -m tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp -m tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp -m tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
COMMIT
"""


def _rules(text: str, chain: str) -> tuple[str, ...]:
    return tuple(line for line in text.splitlines() if line.startswith(f"-A {chain} "))


def test_injected_default_is_facts_table() -> None:
    config = InterceptionConfig.from_args(DEFAULT_ARGS, {}, "1.30")
    rules = expected_rules(config)
    assert rules.v4 == DEFAULT_NAT_1_30
    assert rules.v6 is None


def test_from_args_reads_flags_and_defaults() -> None:
    config = InterceptionConfig.from_args(DEFAULT_ARGS, {}, "1.24.3")
    assert config.release == IstioRelease(1, 24)
    assert config.mode is InterceptionMode.REDIRECT
    assert (config.proxy_port, config.inbound_capture_port) == (15001, 15006)
    assert config.proxy_uids == ("1337",)
    assert config.proxy_gids == ("1337",)  # -g never passed: gid = uid
    assert config.inbound_ports_include is Wildcard.ALL
    assert config.inbound_ports_exclude == (15090, 15021, 15020)
    assert config.outbound_ip_ranges_include is Wildcard.ALL
    assert config.outbound_ip_ranges_exclude == ()


def test_long_flags_and_env() -> None:
    config = InterceptionConfig.from_args(
        [
            "--envoy-port=15001",
            "--proxy-uid",
            "3,4",
            "--proxy-gid",
            "1,2",
            "--istio-inbound-ports",
            "*",
            "--istio-local-outbound-ports-exclude",
            "5555",
            "--redirect-dns",
        ],
        {"INVALID_DROP": "true", "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "888"},
        "1.30",
        nameservers=["10.96.0.10"],
    )
    assert config.proxy_uids == ("3", "4")
    assert config.proxy_gids == ("1", "2")
    assert config.outbound_ports_exclude == (5555,)
    assert config.redirect_dns and config.dns_active and config.drop_invalid
    assert config.owner_groups_exclude == ("888",)


def test_output_jump_and_port_22_by_release() -> None:
    config = InterceptionConfig.from_args(DEFAULT_ARGS, {}, "1.30")
    assert _rules(expected_rules(config.with_release("1.24")).v4, "OUTPUT") == ("-A OUTPUT -p tcp -j ISTIO_OUTPUT",)
    assert _rules(expected_rules(config.with_release("1.25")).v4, "OUTPUT") == ("-A OUTPUT -j ISTIO_OUTPUT",)
    assert _rules(expected_rules(config.with_release("1.12")).v4, "ISTIO_INBOUND")[:2] == (
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 22 -j RETURN",
    )
    assert "--dport 22" not in expected_rules(config.with_release("1.13")).v4
    old = _rules(expected_rules(config.with_release("1.17")).v4, "ISTIO_OUTPUT")[1]
    assert old == "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT"


def test_cni_exclude_outbound_port_15020_tcp_and_udp_from_1_25() -> None:
    config = InterceptionConfig.from_cni({}, {}, release=IstioRelease(1, 25))
    assert _rules(expected_rules(config).v4, "ISTIO_OUTPUT")[:2] == (
        "-A ISTIO_OUTPUT -p tcp -m tcp --dport 15020 -j RETURN",
        "-A ISTIO_OUTPUT -p udp -m udp --dport 15020 -j RETURN",
    )
    older = expected_rules(InterceptionConfig.from_cni({}, {}, release=IstioRelease(1, 24))).v4
    assert "-p udp -m udp --dport 15020" not in older
    assert config.inbound_ports_exclude == (15020, 15021, 15090)


def test_tproxy_dual_stack_has_mangle_and_v6() -> None:
    config = InterceptionConfig.from_args(
        ["-p", "15001", "-z", "15006", "-m", "TPROXY", "-b", "*", "-i", "*"],
        {"ISTIO_DUAL_STACK": "true"},
        "1.30",
    )
    rules = expected_rules(config)
    assert rules.v6 is not None
    assert _rules(rules.v4, "ISTIO_TPROXY") == (
        "-A ISTIO_TPROXY ! -d 127.0.0.1/32 -p tcp -j TPROXY --on-port 15006 --on-ip 0.0.0.0 "
        "--tproxy-mark 0x539/0xffffffff",
    )
    assert _rules(rules.v6, "ISTIO_TPROXY") == (
        "-A ISTIO_TPROXY ! -d ::1/128 -p tcp -j TPROXY --on-port 15006 --on-ip :: --tproxy-mark 0x539/0xffffffff",
    )
    assert "-A ISTIO_INBOUND -s ::6/128 -i lo -p tcp -j RETURN" in rules.v6
    assert "-A PREROUTING -p tcp -j ISTIO_INBOUND" not in rules.v4.split("*nat")[1]


def test_dns_without_nameserver_switches_off() -> None:
    config = InterceptionConfig.from_args(DEFAULT_ARGS, {"ISTIO_META_DNS_CAPTURE": "true"}, "1.30")
    assert config.redirect_dns and not config.dns_active
    assert "15053" not in expected_rules(config).v4
    with_ns = InterceptionConfig.from_args(
        DEFAULT_ARGS, {"ISTIO_META_DNS_CAPTURE": "true"}, "1.30", nameservers=["10.96.0.10"]
    )
    assert _rules(expected_rules(with_ns).v4.split("*nat")[1], "ISTIO_OUTPUT_DNS") == (
        "-A ISTIO_OUTPUT_DNS -d 10.96.0.10/32 -p tcp -m tcp --dport 53 -j REDIRECT --to-ports 15053",
        "-A ISTIO_OUTPUT_DNS -d 10.96.0.10/32 -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053",
    )


def test_interception_none_generates_nothing() -> None:
    config = InterceptionConfig.from_args(["-m", "NONE"], {}, "1.30")
    assert expected_rules(config).v4 == ""


def _hello(reference: Path) -> dict[str, object]:
    docs = list(yaml.safe_load_all((reference / "pod-specs" / "hello.yaml.injected").read_text()))
    return next(d for d in docs if d)


def test_hello_pod_spec_gives_the_default(reference: Path) -> None:
    result = read_pod(_hello(reference))
    assert result.mesh is MeshMode.SIDECAR
    assert result.reason == "istio-init args"
    assert result.config is not None
    assert result.config.release == IstioRelease(1, 30)  # image tag `latest`
    assert any("native sidecar" in note for note in result.notes)
    assert expected_rules(result.config).v4 == DEFAULT_NAT_1_30


def test_pod_without_sidecar_ambient_and_none() -> None:
    bare = {"kind": "Pod", "metadata": {}, "spec": {"containers": [{"name": "app", "image": "app:1"}]}}
    assert read_pod(bare).mesh is MeshMode.NO_SIDECAR
    ambient = {
        "kind": "Pod",
        "metadata": {"annotations": {"ambient.istio.io/redirection": "enabled"}},
        "spec": {"containers": [{"name": "app"}]},
    }
    assert read_pod(ambient).mesh is MeshMode.AMBIENT
    none = {
        "kind": "Pod",
        "metadata": {"annotations": {"sidecar.istio.io/interceptionMode": "NONE"}},
        "spec": {"containers": [{"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.24.3"}]},
    }
    assert read_pod(none).mesh is MeshMode.NO_CAPTURE


def test_cni_pod_reads_annotations_env_and_run_as() -> None:
    pod = {
        "kind": "Pod",
        "metadata": {"annotations": {"traffic.sidecar.istio.io/excludeInboundPorts": "9080"}},
        "spec": {
            "initContainers": [{"name": "istio-validation", "args": ["istio-iptables", "--run-validation"]}],
            "containers": [
                {
                    "name": "istio-proxy",
                    "image": "docker.io/istio/proxyv2:1.24.3",
                    "env": [{"name": "ISTIO_META_DNS_CAPTURE", "value": "true"}],
                    "securityContext": {"runAsUser": 1000670000, "runAsGroup": 1000670001},
                }
            ],
        },
    }
    result = read_pod(pod)
    assert result.config is not None
    assert result.config.release == IstioRelease(1, 24)
    assert result.config.proxy_uids == ("1000670000",)
    assert result.config.proxy_gids == ("1000670001",)
    assert result.config.inbound_ports_exclude == (9080, 15020, 15021, 15090)
    assert result.config.capture_all_dns


@pytest.mark.parametrize(
    ("image", "release"),
    [
        ("docker.io/istio/proxyv2:1.24.3", IstioRelease(1, 24)),
        ("gcr.io/istio-release/proxyv2:1.12.0-distroless", IstioRelease(1, 12)),
        ("istio/proxyv2:latest", IstioRelease(1, 30)),
        ("istio/proxyv2", IstioRelease(1, 30)),
    ],
)
def test_release_from_image(image: str, release: IstioRelease) -> None:
    assert release_from_image(image)[0] == release


def test_rule_origin_names_the_annotation() -> None:
    origin = rule_origin("nat", "ISTIO_INBOUND", "-p tcp -m tcp --dport 9080 -j RETURN")
    assert origin is not None and "excludeInboundPorts (-d)" in origin
    assert rule_origin("nat", "OUTPUT", "-p tcp -j ACCEPT") is None
