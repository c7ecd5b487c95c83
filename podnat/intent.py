"""What Istio meant to install in a pod: its interception config and the expected rule sets. Pure.

From a live pod's spec (istio-init args and env, or istio-cni annotations and defaults, the proxy
image tag for the release) or from an istio-init command line given offline (`explain --args`).
podnat/istio/config.py and generator.py do the Istio work; this module adapts them for the use cases.
"""

from __future__ import annotations

import functools
import ipaddress
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from podnat.errors import BadInput, UsageError
from podnat.netfilter.model import Family, Ruleset
from podnat.netfilter.parse import ParseError, parse_ruleset

PROXY = "istio-proxy"


@dataclass(frozen=True, slots=True)
class PodIntent:
    """A pod's place in the mesh and, for a sidecar pod, the rules Istio meant to install."""

    mesh: str  # sidecar | no-sidecar | ambient | no-capture
    label: str  # where the intent came from, for the user
    version: str | None = None
    mode: str | None = None  # REDIRECT | TPROXY
    tproxy_mark: int = 1337  # TPROXY: the mark of captured inbound traffic and of Envoy's upstream sockets
    expected_rules: Mapping[Family, Ruleset] = field(default_factory=dict)
    app_ports: tuple[int, ...] = (9080,)
    proxy_uid: int = 1337
    proxy_gid: int = 1337
    outbound_port: int = 15001
    inbound_port: int = 15006

    def expected(self, family: Family) -> Ruleset | None:
        return self.expected_rules.get(family)

    @property
    def expected_v4(self) -> Ruleset | None:
        return self.expected(Family.IPV4)


def intent_for_pod(pod: Mapping[str, Any], nameservers: Sequence[str] = ()) -> PodIntent:
    """The intent of a live pod (a Pod as the API returns it)."""
    from podnat.istio.config import PodMode, from_pod

    found = from_pod(pod)
    label = found.reason + "".join(f"; {note}" for note in found.notes)
    if found.mode is not PodMode.SIDECAR or found.config is None:
        mesh = {PodMode.NO_SIDECAR: "no-sidecar", PodMode.AMBIENT: "ambient"}.get(found.mode, "no-capture")
        return PodIntent(mesh=mesh, label=label)
    config = found.config
    if nameservers and config.redirect_dns:
        config = replace(
            config,
            dns_servers_v4=tuple(ipaddress.IPv4Address(n) for n in nameservers if ":" not in n),
            dns_servers_v6=tuple(ipaddress.IPv6Address(n) for n in nameservers if ":" in n),
        )
    return _intent(config, pod, label)


def expected_ruleset(
    family: Family,
    args: str | None = None,
    version: str | None = None,
    pod: Mapping[str, Any] | None = None,
    nameservers: Sequence[str] = (),
) -> Ruleset:
    """For `podnat explain --args ... | --pod-spec ...`: the expected rules of one family."""
    intent = offline_intent(family, args, version, pod, nameservers)
    expected = intent.expected(family)
    if expected is None:
        raise UsageError(f"the configuration installs no {family.value} rules (is IPv6 enabled?)")
    return expected


def offline_intent(
    family: Family,
    args: str | None = None,
    version: str | None = None,
    pod: Mapping[str, Any] | None = None,
    nameservers: Sequence[str] = (),
) -> PodIntent:
    """For `podnat explain --args ... | --pod-spec ...`: the sidecar intent (expected rules, proxy identity)."""
    from podnat.istio.config import NEWEST_SUPPORTED, InterceptionConfig, IstioRelease

    if pod is not None:
        if str(pod.get("kind") or "Pod") not in ("Pod", "Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job"):
            raise BadInput(f"--pod-spec holds a {pod.get('kind')}, not a pod: pass `kubectl get pod NAME -o yaml`")
        intent = intent_for_pod(pod, nameservers)
    else:
        try:
            argv = shlex.split(args or "")
            release = IstioRelease.parse(version) if version else NEWEST_SUPPORTED
            config = InterceptionConfig.from_args(
                argv, {}, release, nameservers=tuple(nameservers), ipv6=family is Family.IPV6
            )
        except ValueError as exc:
            raise UsageError(f"--args/--istio-version: {exc}") from None
        intent = _intent(config, {}, "istio-init arguments given with --args")
    if intent.mesh != "sidecar":
        raise UsageError(f"no expected rules: {intent.label}")
    return intent


def release_variants(family: Family, args: str, nameservers: Sequence[str] = ()) -> dict[str, Ruleset]:
    """The rules this istio-init command line gives in every release podnat models."""
    from podnat.istio.config import NEWEST_SUPPORTED, OLDEST_SUPPORTED

    out: dict[str, Ruleset] = {}
    for minor in range(OLDEST_SUPPORTED.minor, NEWEST_SUPPORTED.minor + 1):
        version = f"{OLDEST_SUPPORTED.major}.{minor}"
        expected = offline_intent(family, args, version, None, nameservers).expected(family)
        if expected is not None:
            out[version] = expected
    return out


def best_release_intent(
    live: Ruleset,
    args: str,
    nameservers: Sequence[str] = (),
) -> tuple[PodIntent, tuple[str, ...]]:
    """For `explain --args` without `--istio-version`: the intent of the release whose rules match the
    live table best (fewest differences that change a packet's path; the newest of equals), and every
    release that matches as well."""
    from podnat.istio.config import NEWEST_SUPPORTED, OLDEST_SUPPORTED
    from podnat.istio.reconcile import DiffKind, diff_rules

    scored: list[tuple[int, str, PodIntent]] = []
    for minor in range(OLDEST_SUPPORTED.minor, NEWEST_SUPPORTED.minor + 1):
        version = f"{OLDEST_SUPPORTED.major}.{minor}"
        intent = offline_intent(live.family, args, version, None, nameservers)
        expected = intent.expected(live.family)
        if expected is None:
            continue
        differences = sum(1 for d in diff_rules(live, expected) if d.kind is not DiffKind.COSMETIC)
        scored.append((differences, version, intent))
    if not scored:
        return offline_intent(live.family, args, None, None, nameservers), ()
    fewest = min(score for score, _, _ in scored)
    best = [(version, intent) for score, version, intent in scored if score == fewest]
    return best[-1][1], tuple(version for version, _ in best)


@functools.lru_cache(maxsize=64)
def _expected_rulesets(config: Any) -> Mapping[Family, Ruleset]:
    """The generator's tables, parsed; once per distinct configuration (many pods share one).

    A pod in native nftables mode gets them in the form `nft list ruleset` prints (inet tables, both
    families), so that reconcile compares like with like."""
    if config.native_nftables:
        from podnat.istio.generator_nft import expected_nft

        try:
            return expected_nft(config)
        except ParseError as exc:  # a generator bug, not the user's input
            raise RuntimeError(f"podnat generated an unreadable nftables listing: {exc}") from exc
    from podnat.istio.generator import expected_rules

    rules = expected_rules(config)
    parsed: dict[Family, Ruleset] = {}
    for family, text in ((Family.IPV4, rules.v4), (Family.IPV6, rules.v6)):
        if not text:
            continue
        try:
            parsed[family] = parse_ruleset(text, family)
        except ParseError as exc:  # a generator bug, not the user's input
            raise RuntimeError(f"podnat generated an unreadable {family.value} table: {exc}") from exc
    return parsed


def _intent(config: Any, pod: Mapping[str, Any], label: str) -> PodIntent:
    parsed = _expected_rulesets(config)
    uid, gid = _proxy_identity(config, pod)
    return PodIntent(
        mesh="sidecar",
        label=label,
        version=str(config.release),
        mode=config.mode.value,
        tproxy_mark=config.tproxy_mark,
        expected_rules=parsed,
        app_ports=_app_ports(pod),
        proxy_uid=uid,
        proxy_gid=gid,
        outbound_port=config.proxy_port,
        inbound_port=config.inbound_capture_port,
    )


def _proxy_identity(config: Any, pod: Mapping[str, Any]) -> tuple[int, int]:
    """The uid/gid Envoy's sockets carry: istio-proxy's securityContext, else Istio's defaults."""
    proxy = _proxy_container(pod)
    security = (proxy or {}).get("securityContext") or {}
    spec_security = (pod.get("spec") or {}).get("securityContext") or {}
    tproxy = config.mode.value == "TPROXY"
    uid = security.get("runAsUser", spec_security.get("runAsUser"))
    gid = security.get("runAsGroup", spec_security.get("runAsGroup"))
    # Without a securityContext, Envoy runs as the uid/gid the rules were written for.
    default_uid = 0 if tproxy else int(config.proxy_uids[0]) if config.proxy_uids[0].isdigit() else 1337
    uid = int(uid) if uid is not None else default_uid
    default_gid = config.proxy_gids[0] if config.proxy_gids else str(uid)
    gid = int(gid) if gid is not None else (int(default_gid) if default_gid.isdigit() else uid)
    return uid, gid


def _proxy_container(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    spec = pod.get("spec") or {}
    template = (spec.get("template") or {}).get("spec") if "template" in spec else None
    spec = template or spec
    for container in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
        if container.get("name") == PROXY:
            return dict(container)
    return None


def _app_ports(pod: Mapping[str, Any]) -> tuple[int, ...]:
    """The ports the app containers declare (podnat assumes 9080 when none are declared)."""
    spec = pod.get("spec") or {}
    template = (spec.get("template") or {}).get("spec") if "template" in spec else None
    spec = template or spec
    ports = [
        int(port["containerPort"])
        for container in spec.get("containers") or []
        if container.get("name") != PROXY
        for port in container.get("ports") or []
        if str(port.get("protocol", "TCP")).upper() == "TCP" and port.get("containerPort")
    ]
    return tuple(dict.fromkeys(ports)) or (9080,)
