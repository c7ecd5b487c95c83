"""Is the capture setup a nightly job claims (E2E_SETUP) the one its pods got? Pure: a pod object (the
API's JSON) and podnat's `inspect --debug-container -o json` of it in, a list of problems out (empty:
the setup holds). The e2e suite runs it on a live pod first thing (tests/e2e/test_e2e.py); the unit
tests (tests/e2e/test_capture_setup.py, in every `make test`) run it on recorded pods of each mode, so
a silently ignored install setting fails the job loudly instead of testing the wrong thing.

  redirect         istio-proxy in `containers`, istio-init (REDIRECT) in `initContainers`, iptables rules
  cni              istio-validation in `initContainers`, and no istio-init (istio-cni wrote the rules)
  nftables         the rules came from nft (native nftables) and table `inet istio-proxy-nat` exists
  tproxy           mangle ISTIO_TPROXY in the rules, and the policy route (fwmark rule, local route)
  native-sidecars  istio-proxy in `initContainers` with `restartPolicy: Always`, not in `containers`
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

SETUPS = ("redirect", "cni", "nftables", "tproxy", "native-sidecars")
PROXY = "istio-proxy"
INTERCEPTION = "sidecar.istio.io/interceptionMode"
_TPROXY_PATCH = Path(__file__).resolve().parents[2] / "manifests" / "istio" / "tproxy-bookinfo-patch.yaml"


def template_annotations(setup: str) -> dict[str, str]:
    """The pod-template annotations a job's Bookinfo gets (what `make e2e-up` patches in for tproxy), so
    a clone in a scratch namespace captures the way the job claims."""
    if setup != "tproxy":
        return {}
    patch = yaml.safe_load(_TPROXY_PATCH.read_text())
    return dict(patch["spec"]["template"]["metadata"]["annotations"])


def setup_problems(setup: str, pod: Mapping[str, Any], report: Mapping[str, Any]) -> list[str]:
    """What contradicts `setup` in this pod and podnat's report of it ([] when it holds)."""
    if setup not in SETUPS:
        return [f"E2E_SETUP={setup!r} is not a capture setup: one of {', '.join(SETUPS)}"]
    spec = pod.get("spec") or {}
    containers = {c.get("name"): c for c in spec.get("containers") or []}
    inits = {c.get("name"): c for c in spec.get("initContainers") or []}
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    nat = str((report.get("sources") or {}).get("nat", ""))
    legs = [leg for flow in report.get("flows") or [] for leg in flow.get("legs") or []]
    refs = {ref for leg in legs for ref in leg.get("rules") or []}
    problems: list[str] = []

    def want(condition: bool, message: str) -> None:
        if not condition:
            problems.append(message)

    native_sidecar = PROXY in inits and inits[PROXY].get("restartPolicy") == "Always"
    if setup == "native-sidecars":
        want(
            native_sidecar and PROXY not in containers,
            "istio-proxy is not a native sidecar (an initContainer with restartPolicy: Always)",
        )
    else:
        want(PROXY in containers and PROXY not in inits, "istio-proxy is not in `containers`")
    if setup == "cni":
        want("istio-validation" in inits, "no istio-validation init container (istio-cni's check)")
        want("istio-init" not in inits, "istio-init is there: the rules were not left to istio-cni")
    else:
        want("istio-init" in inits, "no istio-init init container")
        want("istio-validation" not in inits, "istio-validation is there: istio-cni is on")
    native_nft = "native nftables" in nat
    if setup == "nftables":
        want(
            native_nft and nat.split(": ", 1)[-1].startswith("nft "),
            f"the rules were not read from nft (native nftables): {nat or 'no nat source'}",
        )
        want(
            any(ref.startswith("istio-proxy-nat/") for ref in refs),
            "table inet istio-proxy-nat is not in the rules the flows went through",
        )
    else:
        want(not native_nft, f"the rules came from native nftables: {nat}")
        want(not any(ref.startswith("istio-proxy-") for ref in refs), "Istio's native nftables tables are in use")
    tproxy = annotations.get(INTERCEPTION) == "TPROXY"
    if setup == "tproxy":
        want(tproxy, f"the pod has no {INTERCEPTION}: TPROXY annotation")
        want(any(ref.startswith("mangle/ISTIO_TPROXY:") for ref in refs), "no flow goes through mangle ISTIO_TPROXY")
        routing = report.get("policy_routing") or {}
        want(
            routing.get("fwmark_rule") is True and routing.get("local_route") is True,
            f"the TPROXY policy route is not in place (ip rule fwmark / local route): {routing or 'not read'}",
        )
    else:
        want(
            not tproxy and not any(ref.startswith("mangle/ISTIO_TPROXY:") for ref in refs),
            "the pod captures with TPROXY",
        )
    return problems
