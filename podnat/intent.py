"""What Istio meant to install in a pod: its interception config and the expected rule sets. Pure.

From a live pod, read once (podnat/istio/pod.py: `read_pod(raw) -> PodInfo`: the istio-init args and
env, or the istio-cni annotations and defaults, the proxy image tag for the release) or from an
istio-init command line given offline (`explain --args`). podnat/istio/config.py, pod.py and
generator.py do the Istio work; this module adds the expected rule sets for the use cases.
"""

from __future__ import annotations

import functools
import ipaddress
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from podnat.errors import BadInput, UsageError
from podnat.istio.config import NEWEST_SUPPORTED, OLDEST_SUPPORTED, InterceptionConfig, InterceptionMode, IstioRelease
from podnat.istio.flows import Identity
from podnat.istio.mesh import MeshMode
from podnat.istio.pod import WORKLOAD_KINDS, PodInfo, PodSpecError, pod_info
from podnat.netfilter.model import Family, Ruleset
from podnat.netfilter.parse import ParseError, parse_ruleset

DEFAULT_PROXY_ID = 1337


@dataclass(frozen=True, slots=True)
class PodIntent:
    """A pod as read (PodInfo; None for `explain --args`) and, for a sidecar pod, the rules Istio meant."""

    mesh: MeshMode
    label: str  # where the intent came from, for the user
    pod: PodInfo | None = None
    config: InterceptionConfig | None = None  # sidecar pods (and --args) only
    expected_rules: Mapping[Family, Ruleset] = field(default_factory=dict)

    def expected(self, family: Family) -> Ruleset | None:
        return self.expected_rules.get(family)

    @property
    def expected_v4(self) -> Ruleset | None:
        return self.expected(Family.IPV4)

    @property
    def version(self) -> str | None:
        return str(self.config.release) if self.config is not None else None

    @property
    def mode(self) -> InterceptionMode | None:
        """REDIRECT | TPROXY (a str enum: compares equal to its value)."""
        return self.config.mode if self.config is not None else None

    @property
    def tproxy(self) -> bool:
        return self.mode is InterceptionMode.TPROXY

    @property
    def tproxy_mark(self) -> int:
        """TPROXY: the mark of captured inbound traffic and of Envoy's upstream sockets."""
        return self.config.tproxy_mark if self.config is not None else 1337

    @property
    def app_ports(self) -> tuple[int, ...]:
        return self.pod.app_ports if self.pod is not None else (9080,)

    @property
    def proxy_identity(self) -> Identity:
        """The uid/gid Envoy's sockets carry: the pod's (PodInfo), else what the rules were written for."""
        if self.pod is not None and self.pod.proxy_identity is not None:
            return self.pod.proxy_identity
        if self.config is None:
            return Identity(DEFAULT_PROXY_ID, DEFAULT_PROXY_ID)
        first_uid = self.config.proxy_uids[0]
        uid = 0 if self.tproxy else int(first_uid) if first_uid.isdigit() else DEFAULT_PROXY_ID
        first_gid = self.config.proxy_gids[0] if self.config.proxy_gids else str(uid)
        return Identity(uid, int(first_gid) if first_gid.isdigit() else uid)

    @property
    def proxy_uid(self) -> int:
        return self.proxy_identity.uid

    @property
    def proxy_gid(self) -> int:
        return self.proxy_identity.gid

    @property
    def outbound_port(self) -> int:
        return self.config.proxy_port if self.config is not None else 15001

    @property
    def inbound_port(self) -> int:
        return self.config.inbound_capture_port if self.config is not None else 15006


def intent_for_pod(pod: Mapping[str, Any], nameservers: Sequence[str] = ()) -> PodIntent:
    """The intent of a live pod: a PodInfo (or a Pod as the API returns it, read here).

    `nameservers`: the resolvers istio-init found (the live table shows them), for a pod that asked for DNS
    capture. Raises PodSpecError for a spec podnat cannot read."""
    info = pod_info(pod)
    if info.mesh is not MeshMode.SIDECAR or info.config is None:
        return PodIntent(mesh=info.mesh, label=info.label, pod=info)
    config = info.config
    if nameservers and config.redirect_dns:
        config = replace(
            config,
            dns_servers_v4=tuple(ipaddress.IPv4Address(n) for n in nameservers if ":" not in n),
            dns_servers_v6=tuple(ipaddress.IPv6Address(n) for n in nameservers if ":" in n),
        )
    return _intent(config, info.label, info)


def offline_pod(pod: Mapping[str, Any]) -> PodInfo:
    """`explain --pod-spec FILE`: the pod (or workload) read, or a one-line BadInput saying what to pass."""
    if str(pod.get("kind") or "Pod") not in WORKLOAD_KINDS:
        raise BadInput(f"--pod-spec holds a {pod.get('kind')}, not a pod: pass `kubectl get pod NAME -o yaml`")
    try:
        return pod_info(pod)
    except PodSpecError as exc:
        raise BadInput(f"--pod-spec: {exc}") from None


def dns_capture_requested(args: str | None, pod: PodInfo | None = None) -> bool:
    """Was istio-init asked to capture DNS (--redirect-dns / ISTIO_META_DNS_CAPTURE=true), whether or not
    it found a nameserver? From the pod (PodInfo), else from its command line."""
    if pod is not None:
        return pod.dns_capture_requested
    try:
        return InterceptionConfig.from_args(args or "").redirect_dns
    except ValueError:
        return False  # the caller's own reading of the same arguments reports what is wrong


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
    if pod is not None:
        intent = intent_for_pod(offline_pod(pod), nameservers)
    else:
        try:
            argv = shlex.split(args or "")
            release = IstioRelease.parse(version) if version else NEWEST_SUPPORTED
            config = InterceptionConfig.from_args(
                argv, {}, release, nameservers=tuple(nameservers), ipv6=family is Family.IPV6
            )
        except ValueError as exc:
            raise UsageError(f"--args/--istio-version: {exc}") from None
        intent = _intent(config, "istio-init arguments given with --args")
    if intent.mesh is not MeshMode.SIDECAR:
        raise UsageError(f"no expected rules: {intent.label}")
    return intent


def release_variants(family: Family, args: str, nameservers: Sequence[str] = ()) -> dict[str, Ruleset]:
    """The rules this istio-init command line gives in every release podnat models."""
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
def _expected_rulesets(config: InterceptionConfig) -> Mapping[Family, Ruleset]:
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


def _intent(config: InterceptionConfig, label: str, pod: PodInfo | None = None) -> PodIntent:
    return PodIntent(
        mesh=MeshMode.SIDECAR, label=label, pod=pod, config=config, expected_rules=_expected_rulesets(config)
    )
