"""The nightly's per-job capture-setup check (capture_setup.py) on recorded pods of each mode: runs in
every `make test` (not marked e2e), so the logic the kind jobs rely on is tested here too.

Inputs: the pods and podnat's `inspect --debug-container -o json` recorded from the lab in redirect,
tproxy and nftables modes (tests/data/e2e/record.sh), and pods of all five setups made from Istio's
injected Deployment (tests/data/istio/pod-specs/hello.yaml.injected: a native-sidecar injection) the
way injection differs per setup (below). Every pod must pass its own setup and fail every other one.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml
from capture_setup import SETUPS, setup_problems, template_annotations
from conftest import REPO

DATA = REPO / "tests" / "data"
RECORDED = DATA / "e2e"


def recorded(mode: str) -> tuple[dict[str, Any], dict[str, Any]]:
    return (
        json.loads((RECORDED / f"lab-{mode}.pod.json").read_text()),
        json.loads((RECORDED / f"lab-{mode}.inspect.json").read_text()),
    )


def injected(setup: str) -> dict[str, Any]:
    """A pod of Istio's injected `hello` Deployment as each setup's injection makes it."""
    (deployment,) = [
        d for d in yaml.safe_load_all((DATA / "istio" / "pod-specs" / "hello.yaml.injected").read_text()) if d
    ]
    template = copy.deepcopy(deployment["spec"]["template"])
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**template["metadata"], "name": "hello-1", "namespace": "default"},
        "spec": template["spec"],
    }
    spec, annotations = pod["spec"], pod["metadata"]["annotations"]
    if setup == "native-sidecars":
        return pod  # the golden is a native-sidecar injection
    proxy = next(c for c in spec["initContainers"] if c["name"] == "istio-proxy")
    spec["initContainers"].remove(proxy)
    proxy.pop("restartPolicy")
    spec["containers"].append(proxy)  # ENABLE_NATIVE_SIDECARS=false: a regular container
    init = spec["initContainers"][0]
    if setup == "cni":  # istio-cni: the init container only validates that the rules work
        init["name"] = "istio-validation"
        init["args"] = [*init["args"], "--run-validation", "--skip-rule-apply"]
    elif setup == "tproxy":
        annotations["sidecar.istio.io/interceptionMode"] = "TPROXY"
        init["args"][init["args"].index("REDIRECT")] = "TPROXY"
    elif setup == "nftables":
        init["args"] = [*init["args"], "--native-nftables"]
    return pod


# podnat's report of each setup's pod: the recorded lab reports (cni and native sidecars program the
# same REDIRECT iptables rules as redirect does).
REPORT_OF = {
    "redirect": "redirect",
    "cni": "redirect",
    "native-sidecars": "redirect",
    "tproxy": "tproxy",
    "nftables": "nftables",
}


def cases() -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    out = []
    for mode in ("redirect", "tproxy", "nftables"):
        pod, report = recorded(mode)
        out.append((f"lab-{mode}", mode, pod, report))
    for setup in SETUPS:
        out.append((f"injected-{setup}", setup, injected(setup), recorded(REPORT_OF[setup])[1]))
    return out


@pytest.mark.parametrize(("name", "setup", "pod", "report"), cases(), ids=[c[0] for c in cases()])
def test_each_pod_passes_its_own_setup_and_fails_every_other(
    name: str, setup: str, pod: dict[str, Any], report: dict[str, Any]
) -> None:
    assert setup_problems(setup, pod, report) == [], name
    for other in SETUPS:
        if other != setup:
            assert setup_problems(other, pod, report), f"{name} passes as {other}"


def test_what_each_wrong_setup_is_told() -> None:
    pod, report = recorded("redirect")
    assert setup_problems("tproxy", pod, report) == [
        "the pod has no sidecar.istio.io/interceptionMode: TPROXY annotation",
        "no flow goes through mangle ISTIO_TPROXY",
        "the TPROXY policy route is not in place (ip rule fwmark / local route): not read",
    ]
    assert setup_problems("cni", pod, report) == [
        "no istio-validation init container (istio-cni's check)",
        "istio-init is there: the rules were not left to istio-cni",
    ]
    assert setup_problems("nftables", pod, report) == [
        "the rules were not read from nft (native nftables): ephemeral container podnat-debug (uid 0, NET_ADMIN): "
        "iptables-nft-save -c",
        "table inet istio-proxy-nat is not in the rules the flows went through",
    ]
    assert setup_problems("native-sidecars", pod, report) == [
        "istio-proxy is not a native sidecar (an initContainer with restartPolicy: Always)"
    ]
    assert setup_problems("ambient", pod, report) == [
        "E2E_SETUP='ambient' is not a capture setup: one of redirect, cni, nftables, tproxy, native-sidecars"
    ]


def test_a_tproxy_pod_whose_policy_route_is_missing_fails() -> None:
    pod, report = recorded("tproxy")
    broken = {**report, "policy_routing": {**report["policy_routing"], "local_route": False}}
    assert setup_problems("tproxy", pod, broken) == [
        f"the TPROXY policy route is not in place (ip rule fwmark / local route): {broken['policy_routing']}"
    ]


def test_scratch_clones_get_the_jobs_capture_setting() -> None:
    assert template_annotations("tproxy") == {"sidecar.istio.io/interceptionMode": "TPROXY"}
    assert all(template_annotations(s) == {} for s in SETUPS if s != "tproxy")
