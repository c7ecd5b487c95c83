"""The lab's capture modes, without root: what each mode writes into the pod spec is what podnat's
intent reads back, and Envoy's bootstrap carries what that setup needs (pure parts of podnat/lab)."""

from __future__ import annotations

import pytest

from podnat.intent import intent_for_pod
from podnat.istio.config import InterceptionMode
from podnat.istio.mesh import MeshMode
from podnat.istio.pod import read_pod
from podnat.lab.build import MODES, load_manifests
from podnat.lab.inject import injected_pod
from podnat.lab.sidecar import ServiceRoute, envoy_bootstrap


def _pod(mode: str, ip6: str | None = None) -> dict:
    deployments, _ = load_manifests()
    return injected_pod(deployments[0], "details-v1-abc-xyz", "10.99.0.10", "abc", mode, ip6)


def test_every_mode_is_a_sidecar_pod_podnat_reads_as_that_mode() -> None:
    expected = {
        "redirect": ("REDIRECT", False, False, False),
        "tproxy": ("TPROXY", False, False, False),
        "nftables": ("REDIRECT", False, False, True),
        "dual-stack": ("REDIRECT", False, True, False),
        "dns": ("REDIRECT", True, False, False),
    }
    assert set(MODES) == set(expected) | {"ambient", "ambient-nftables", "ambient-dual-stack"}
    for mode, (interception, dns, ipv6, nft) in expected.items():
        config = read_pod(_pod(mode, "fd00:99::10" if mode == "dual-stack" else None)).config
        assert config is not None
        assert (config.mode.value, config.redirect_dns, config.enable_ipv6, config.native_nftables) == (
            interception,
            dns,
            ipv6,
            nft,
        ), mode


def test_tproxy_pods_run_the_proxy_as_root_with_gid_1337_and_net_admin() -> None:
    pod = _pod("tproxy")
    proxy = next(c for c in pod["spec"]["containers"] if c["name"] == "istio-proxy")
    assert pod["metadata"]["annotations"]["sidecar.istio.io/interceptionMode"] == "TPROXY"
    assert (proxy["securityContext"]["runAsUser"], proxy["securityContext"]["runAsGroup"]) == (0, 1337)
    assert proxy["securityContext"]["capabilities"]["add"] == ["NET_ADMIN"]
    intent = intent_for_pod(pod)
    assert (intent.mode, intent.proxy_uid, intent.proxy_gid) == (InterceptionMode.TPROXY.value, 0, 1337)


def test_dual_stack_pods_list_both_addresses() -> None:
    assert _pod("dual-stack", "fd00:99::10")["status"]["podIPs"] == [{"ip": "10.99.0.10"}, {"ip": "fd00:99::10"}]
    assert _pod("redirect")["status"]["podIPs"] == [{"ip": "10.99.0.10"}]


ROUTES = [
    ServiceRoute("details.bookinfo.svc.cluster.local", "10.96.0.10", 9080, ("10.99.0.10",)),
    ServiceRoute("details.bookinfo.svc.cluster.local", "fd00:96::10", 9080, ("fd00:99::10",)),
]


def _listener(bootstrap, name: str) -> dict:
    return next(x for x in bootstrap["static_resources"]["listeners"] if x["name"] == name)


def _cluster(bootstrap, name: str) -> dict:
    return next(x for x in bootstrap["static_resources"]["clusters"] if x["name"] == name)


def test_tproxy_envoy_has_transparent_capture_listeners_and_keeps_the_client_address() -> None:
    bootstrap = envoy_bootstrap("sidecar~10.99.0.10~x.bookinfo~bookinfo.svc.cluster.local", ROUTES[:1], tproxy=True)
    inbound = _listener(bootstrap, "virtualInbound")
    assert inbound["transparent"] and _listener(bootstrap, "virtualOutbound")["transparent"]
    original_src = next(f for f in inbound["listener_filters"] if f["name"] == "envoy.filters.listener.original_src")
    assert original_src["typed_config"]["mark"] == 1337
    assert "upstream_bind_config" not in _cluster(bootstrap, "InboundPassthroughCluster")
    assert "transparent" not in _listener(bootstrap, "0.0.0.0_15090")


@pytest.mark.parametrize("ipv6", [False, True])
def test_redirect_envoy_binds_127_0_0_6_and_dual_stack_adds_ipv6(ipv6: bool) -> None:
    bootstrap = envoy_bootstrap("sidecar~10.99.0.10~x.bookinfo~bookinfo.svc.cluster.local", ROUTES, ipv6=ipv6)
    bind = _cluster(bootstrap, "InboundPassthroughCluster")["upstream_bind_config"]
    assert bind["source_address"]["address"] == "127.0.0.6"
    bound = [x for x in bootstrap["static_resources"]["listeners"] if x.get("bind_to_port", True)]
    if ipv6:
        assert bind["extra_source_addresses"] == [{"address": {"address": "::6", "port_value": 0}}]
        assert all(x["additional_addresses"][0]["address"]["socket_address"]["address"] == "::" for x in bound)
        assert _listener(bootstrap, "fd00:96::10_9080")["bind_to_port"] is False
    else:
        assert "extra_source_addresses" not in bind and not any("additional_addresses" in x for x in bound)
    assert not any(x.get("transparent") for x in bootstrap["static_resources"]["listeners"])


def test_lab_break_names_one_pod_or_says_which_it_could_mean(tmp_path) -> None:
    import pytest

    from podnat.lab.build import LabError, lab_break
    from podnat.lab.state import LabPod, LabState

    state = LabState(root=str(tmp_path))
    for name in ("reviews-v1-aaa-1", "reviews-v2-bbb-2", "ratings-v1-ccc-3"):
        state.pods.append(LabPod("bookinfo", name, "10.99.0.9", "pnl-none", {}))
    state.save()
    with pytest.raises(LabError, match=r"'reviews' names 2 lab pods \(reviews-v1-aaa-1, reviews-v2-bbb-2\)"):
        lab_break("reviews", "foreign-accept", tmp_path)
    with pytest.raises(LabError, match="no lab pod 'details'"):
        lab_break("details", "foreign-accept", tmp_path)
    with pytest.raises(LabError, match="unknown fault"):
        lab_break("reviews-v1", "no-such-fault", tmp_path)


def test_ambient_pods_have_no_sidecar_and_are_enrolled() -> None:
    from podnat.lab.inject import ambient_pod

    deployments, _ = load_manifests()
    pod = ambient_pod(deployments[0], "details-v1-abc-xyz", "10.99.0.10", "abc")
    assert [c["name"] for c in pod["spec"]["containers"]] == ["details"] and pod["spec"]["initContainers"] == []
    assert "istio.io/dataplane-mode" not in pod["metadata"]["labels"]  # its Namespace's label enrols it
    assert read_pod(pod).mesh is MeshMode.AMBIENT and read_pod(pod).notes == ()  # annotated by istio-cni
    assert intent_for_pod(pod).mesh == "ambient"
    dual = ambient_pod(deployments[0], "details-v1-abc-xyz", "10.99.0.10", "abc", ip6="fd00:99::10")
    assert read_pod(dual).pod_ips == ("10.99.0.10", "fd00:99::10") and read_pod(dual).mesh is MeshMode.AMBIENT
