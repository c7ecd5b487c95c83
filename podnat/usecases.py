"""The live use cases: inspect one pod, verify many. They see a PodSource, never the cluster itself.

Each pod's facts (nat table, listeners, spec) are read through the source, its intent is derived
from its spec (podnat/intent.py), and podnat/istio/explain.py does the rest. One pod's failure
never stops the others: it becomes that pod's report.

Two facts of the pod beyond its table: a TPROXY pod's policy routing (`ip rule`, `ip route`, read by
the same exec) decides whether its inbound connections complete; and a pod that asked for DNS capture
expects the table to redirect its nameservers, which only the live table (istio-init read them from
/etc/resolv.conf at start) can tell.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import replace
from typing import Any, TypeVar

from podnat.envoy.listeners import Listener, ListenersError, istio_default_listeners, parse_listeners
from podnat.errors import PodnatError
from podnat.evidence import NatSource
from podnat.exitcodes import ExitCode
from podnat.facts import Cluster, PodFacts, PodRef, PodSource, SourceError
from podnat.intent import PodIntent, intent_for_pod
from podnat.istio.config import InterceptionConfig, IstioRelease
from podnat.istio.explain import Explanation, Finding, Severity, ShadowMemo, captured_nameservers, explain
from podnat.istio.flows import Endpoint, PodContext, context_for
from podnat.istio.mesh import MeshMode
from podnat.istio.pod import PodInfo, PodSpecError, pod_info, with_namespace_labels
from podnat.istio.routing import TproxyRouting, tproxy_routing
from podnat.netfilter.errors import InputError
from podnat.netfilter.model import Family, Ruleset
from podnat.report import (
    Explained,
    Failed,
    FamilyReport,
    PodHeader,
    PodReport,
    PodStatus,
    Relayed,
    VerifyReport,
    explained,
    failed,
    relayed,
    skipped,
)

REQUIRED_LISTENERS = (15001, 15006, 15090, 15021)
_Header = TypeVar("_Header", bound=PodHeader)


NamespaceLabels = Callable[[str], Mapping[str, str] | None]  # a namespace's labels; None: could not be read


def inspect_pod(
    source: PodSource,
    pod: Mapping[str, Any],
    nat_source: NatSource | None = None,
    debug_container: bool = False,
    namespace_labels: NamespaceLabels | None = None,
    shadows: ShadowMemo | None = None,
    relay: bool = False,
    reports: ReportMemo | None = None,
) -> PodReport:
    """Read one pod's facts and explain them against its intent.

    The pod is read once (`pod_info`: a PodInfo as given, a raw pod read here) and the PodInfo is what the
    source, the intent and the explanation see. `namespace_labels` is asked only for a pod whose mesh mode
    its namespace decides (no sidecar, no ambient label or annotation of its own). `shadows`: the memo of
    shadow analyses of a caller that explains many pods (verify_pods, the agent's sweep). `relay`: take the
    node agent's report of the facts as it is where it may (`relayed_report`), instead of explaining them
    again (verify's renderers other than HTML). `reports`: the memo of a caller that reads the same pods
    again (the agent's sweeps): a sidecar pod read as before (`made_of`) gets its last report, not explained
    again."""
    ref = PodRef(pod["metadata"]["namespace"], pod["metadata"]["name"])
    try:
        info = pod_info(pod)
    except PodSpecError as exc:
        return Failed(ref=ref, error=str(exc), error_code=int(ExitCode.BAD_INPUT))
    if namespace_labels is not None and info.namespace_decides:
        labels = namespace_labels(info.namespace or ref.namespace)
        info = with_namespace_labels(info, labels) if labels is not None else info
    base = _pod_header(info, ref)
    try:
        intent = intent_for_pod(info)
    except PodnatError as exc:
        return failed(base, exc.message, int(exc.code))
    base = _with(
        base,
        mesh=intent.mesh.value,
        istio_version=intent.version,
        capture_mode=intent.mode.value if intent.mode is not None else None,
        sources={"intent": intent.label},
        context=pod_context_data(base.pod_ip, intent),
    )
    if intent.mesh is MeshMode.AMBIENT:
        return inspect_ambient(source, info, base, nat_source, debug_container, shadows)
    if intent.mesh is not MeshMode.SIDECAR:
        return skipped(base, notes=(intent.label,))
    try:
        facts = source.read_facts(info, nat_source, debug_container)
    except PodnatError as exc:
        return _unread(base, exc)
    uid = str((info.get("metadata") or {}).get("uid") or "")
    made = made_of(info, facts) if reports is not None and uid else ""
    if reports is not None and uid and (before := reports.get(uid)) is not None and before[0] == made:
        return before[1]
    taken = relayed_report(base, facts) if relay else None
    if taken is None and facts.complete is not None:
        try:
            facts = facts.complete()  # the agent withheld the tables its report was made of: explained here
        except PodnatError as exc:
            return _unread(base, exc)
    report = taken if taken is not None else _with(explain_facts(base, facts, intent, shadows), live=facts.live)
    terminating = info.terminating
    if terminating:
        report = _with(report, notes=(*report.notes, terminating + ": its rules go with it"))
    if reports is not None and uid:
        reports[uid] = (made, report)
    return report


ReportMemo = MutableMapping[str, tuple[str, PodReport]]  # pod UID -> (made_of, the report made of it)
_TIME_COMMENT = re.compile(r"^# (?:Generated by|Completed on) .*$", re.M)


def made_of(info: PodInfo, facts: PodFacts) -> str:
    """A digest of everything a sidecar pod's report is made of: the pod as read (its JSON, and the mesh mode
    its namespace gave it) and every fact as read, packet counters included (the report shows them), the
    time iptables-save writes in its comments aside (the parser skips comments). Equal digests, equal
    reports."""
    nat, listeners, routing, sockets = facts.nat, facts.listeners, facts.routing, facts.sockets
    parts = (
        json.dumps(info.raw, sort_keys=True, default=str),
        repr((info.mesh, info.reason, info.notes, facts.mesh, tuple(facts.notes))),
        repr(
            None
            if nat is None
            else (
                nat.source,
                nat.label,
                _TIME_COMMENT.sub("", nat.v4),
                _TIME_COMMENT.sub("", nat.v6 or ""),
                nat.v6 is None,
            )
        ),
        repr(None if nat is None else (nat.nft, nat.counters, nat.debug_container, nat.listeners_json)),
        repr(listeners),
        repr(routing),
        repr(sockets),
    )
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _unread(base: PodHeader, exc: PodnatError) -> Failed:
    """A pod whose facts could not be read, with the source's kind of failure where it said one (the CLI
    tells the agent's unreadable table from its other failures by it)."""
    failure = exc.failure.value if isinstance(exc, SourceError) else None
    return failed(base, exc.message, int(exc.code), failure=failure)


# --- ambient pods ---------------------------------------------------------------------------------------

_RELEASES: dict[str, tuple[str | None, str]] = {}  # node -> (release, where it came from), per process
ZTUNNEL_SELECTORS = ("app=ztunnel", "k8s-app=istio-cni-node")


def ambient_release(source: PodSource, node: str | None) -> tuple[str | None, str]:
    """An ambient pod's Istio release: the tag of the ztunnel (else istio-cni-node) image on its node."""
    if node is None:
        return None, "not known (the pod has no node)"
    if node in _RELEASES:
        return _RELEASES[node]
    from podnat.istio.config import release_from_image

    found: tuple[str | None, str] = (None, f"not known: no ztunnel or istio-cni-node pod found on node {node}")
    for selector in ZTUNNEL_SELECTORS:
        try:
            pods = source.list_pods(None, selector)
        except (PodnatError, NotImplementedError):  # the node agent's source lists no pods
            continue
        for agent in pods:
            if (agent.get("spec") or {}).get("nodeName") != node:
                continue
            image = next(
                (c.get("image") for c in (agent.get("spec") or {}).get("containers") or [] if c.get("image")), None
            )
            if image:
                release, _ = release_from_image(image)
                meta = agent.get("metadata") or {}
                found = (
                    str(release),
                    f"{selector.split('=')[1]} image on node {node} "
                    f"({meta.get('namespace')}/{meta.get('name')}: {image})",
                )
                break
        if found[0] is not None:
            break
    _RELEASES[node] = found
    return found


def inspect_ambient(
    source: PodSource,
    pod: PodInfo,
    base: PodHeader,
    nat_source: NatSource | None,
    debug_container: bool,
    shadows: ShadowMemo | None = None,
) -> PodReport:
    """An ambient pod, first-class: its in-pod rules, ztunnel's listeners and the policy routing, read in its
    namespace (node agent, or a debug container with --debug-image), against what istio-cni writes for it.
    A pod enrolled but not yet annotated by istio-cni carries that note (PodInfo.notes) in its report."""
    base = _with(base, notes=(*base.notes, *pod.notes))
    try:
        facts = source.read_facts(pod, nat_source, debug_container)
        if facts.complete is not None:  # the agent saw a sidecar pod and withheld its tables: none is relayed here
            facts = facts.complete()
    except PodnatError as exc:
        return _unread(base, exc)
    release, release_from = ambient_release(source, base.node)
    context = {
        **(base.context or {}),
        "mode": "ambient",
        "proxy_uid": 0,
        "proxy_gid": 0,
        "proxy_identity_from": "ambient: ztunnel's sockets (mark 0x539)",
        "release": release,
        "release_from": release_from,
    }
    base = _with(base, istio_version=release, capture_mode="ambient", context=context)
    if facts.nat is None:
        message = next(
            (n for n in facts.notes if "could not be read live" in n),
            "the in-pod rules of this ambient pod could not be read live",
        )
        return failed(base, message, int(ExitCode.CLUSTER), notes=(*base.notes, *facts.notes))
    return _with(explain_ambient_facts(base, facts, release, shadows), live=facts.live)


def explain_ambient_facts(
    base: PodHeader, facts: PodFacts, release: str | None, shadows: ShadowMemo | None = None
) -> PodReport:
    """The pure half of inspect for an ambient pod: each IP family the pod has (a dual-stack pod's IPv6
    table, `ip -6` routing and address too, as for a sidecar's), against what istio-cni writes for it."""
    from podnat.istio.config import NEWEST_SUPPORTED

    assert facts.nat is not None
    sources = {**base.sources, "nat": facts.nat.label}
    notes = [*base.notes, *facts.notes]
    families = _pod_families(base)
    native = facts.nat.nft if facts.nat.nft and "istio-ambient-" in facts.nat.nft else ""
    primary_text = facts.nat.v4 if families[0] is Family.IPV4 else (facts.nat.v6 or "")
    if native and not _has_rules(primary_text, families[0]):
        notes.append("native nftables mode: the rules were read from `nft list ruleset`")
    else:
        native = ""
    if facts.sockets is not None:
        sources["sockets"] = facts.sockets.label
    if facts.routing is not None:
        sources["routing"] = facts.routing.label
    rel = IstioRelease.parse(release) if release else NEWEST_SUPPORTED
    annotations = pod_info(facts.pod).annotations or {}  # the PodInfo inspect_pod read
    dual = len(families) > 1
    reports: list[FamilyReport] = []
    for index, family in enumerate(families):
        text = native or (facts.nat.v4 if family is Family.IPV4 else (facts.nat.v6 or ""))
        try:
            live = _read_table(text, family) if text.strip() else Ruleset(family)
        except InputError as exc:
            if index:  # the first family was explained: say why the other was not
                notes.append(f"the {family.value} table could not be read: {exc}")
                continue
            return failed(
                base, f"cannot read the pod's table ({sources['nat']}): {exc}", int(ExitCode.BAD_INPUT), sources=sources
            )
        address = base.pod_ips[index] if len(base.pod_ips) > index else base.pod_ip
        report = _explain_ambient_family(facts, family, live, address, annotations, rel, bool(native), dual, shadows)
        reports.append(FamilyReport(family=family, explanation=report, ruleset=live))
    if release is None:
        notes.append(
            f"the Istio release is not known ({(base.context or {}).get('release_from')}): "
            f"reconciled with {rel}'s rules"
        )
    return explained(base, tuple(reports), sources=sources, notes=tuple(notes))


def _explain_ambient_family(
    facts: PodFacts,
    family: Family,
    live: Ruleset,
    address: str | None,
    annotations: Mapping[str, str],
    release: IstioRelease,
    native: bool,
    dual: bool,
    shadows: ShadowMemo | None,
) -> Explanation:
    """One IP family of an ambient pod: its live table against istio-cni's rules for that family (a dual-stack
    pod's agent writes both, `ipv6` on), ztunnel's listeners, that family's `ip rule` and table 100."""
    from podnat.istio.ambient import ZTUNNEL_PORTS, AmbientConfig, ambient_expected, ambient_nft_listing
    from podnat.istio.ambient_paths import ZTUNNEL, ambient_routing, explain_ambient

    v6 = family is Family.IPV6
    config = AmbientConfig.from_pod_annotations(annotations, release=release, ipv6=v6 or dual, native_nftables=native)
    if config.native_nftables:
        expected = _read_table(ambient_nft_listing(config), family)
    else:
        rules = ambient_expected(config)
        expected = _read_table((rules.v6 or "") if v6 else rules.v4, family)
    listening = ZTUNNEL_PORTS
    if facts.sockets is not None:
        listening = tuple(p for p in ZTUNNEL_PORTS if p in facts.sockets.ports)
    routing = None
    if facts.routing is not None:
        routing = ambient_routing(
            family,
            facts.routing.rules_v6 if v6 else facts.routing.rules_v4,
            facts.routing.routes_v6 if v6 else facts.routing.routes_v4,
            facts.routing.label,
        )
    ctx = context_for(ipaddress.ip_address(address) if address else None, family=family.value).replace(proxy=ZTUNNEL)
    return explain_ambient(live, ctx, expected, listening=listening, policy_routing=routing, shadows=shadows)


def explain_facts(base: PodHeader, facts: PodFacts, intent: PodIntent, shadows: ShadowMemo | None = None) -> PodReport:
    """The pure half of inspect: facts + intent -> explanation, for each IP family the pod has."""
    sources = dict(base.sources)
    notes = list(facts.notes)
    if facts.nat is None:
        return failed(base, "no nat table could be read", int(ExitCode.CLUSTER))
    sources["nat"] = facts.nat.label
    families = _pod_families(base)
    primary = families[0]
    text = facts.nat.v4 if primary is Family.IPV4 else (facts.nat.v6 or "")
    native = _istio_nft(facts.nat.nft)
    both = bool(native) and _has_rules(text, primary)
    if native and not both:
        # Native nftables mode (Istio 1.27+): iptables-save prints nothing, `nft list ruleset` has it all.
        text = native
        notes.append("native nftables mode: the rules were read from `nft list ruleset`")
    if both:
        notes.append("both iptables and Istio's native nftables rules are loaded: the kernel runs both")
    if not text.strip():
        message = (
            "the nat table is empty: no Istio rules in iptables-save"
            + ("" if facts.nat.nft is not None else " and nft could not be read (native nftables mode?)")
            + ": read the rules applied at start with --source init-log"
        )
        return failed(base, message, int(ExitCode.CLUSTER), sources=sources)
    try:
        live = _read_table(text, primary)
    except InputError as exc:
        return failed(
            base, f"cannot read the pod's table ({sources['nat']}): {exc}", int(ExitCode.BAD_INPUT), sources=sources
        )
    listeners, listener_findings, listener_note = _listeners(facts, sources)
    if listener_note:
        notes.append(listener_note)
    config = intent.config
    dns_requested = config is not None and config.redirect_dns
    if config is not None and dns_requested and not config.dns_active and captured_nameservers(live):
        # istio-init read the nameservers from /etc/resolv.conf at start: the live table shows which.
        intent = intent_for_pod(intent.pod or facts.pod, captured_nameservers(live))
    tproxy = intent.tproxy
    if tproxy and facts.routing is not None:
        sources["routing"] = facts.routing.label
    expected_listeners = istio_default_listeners(intent.outbound_port, intent.inbound_port)
    # A dual-stack pod's other family: read first, as each family's flows may cross into the other's
    # table (Envoy's admin port is on 127.0.0.1 for both: see pod_context).
    other = families[1] if len(families) > 1 else None
    second_live: Ruleset | None = None
    missing: Finding | None = None
    if other is not None:
        other_text = facts.nat.v6 if other is Family.IPV6 else facts.nat.v4
        if not _has_rules(native or other_text or "", other):
            missing = Finding(
                Severity.ERROR,
                f"the pod has {other.value} address {base.pod_ips[1]} but no {other.value} "
                f"rules: its {other.value} traffic bypasses the sidecar (Istio adds them when the "
                "pod is dual-stack; was istio-init run with IPv6 on?)",
            )
        else:
            try:
                second_live = _read_table(native or other_text or "", other)
            except InputError as exc:
                notes.append(f"the {other.value} table could not be read: {exc}")
    dual = other is not None

    def explain_family(
        family: Family,
        ruleset: Ruleset,
        address: str | None,
        crossing: Family | None,
        crossing_table: Ruleset | None,
        **extra: Any,
    ) -> Explanation:
        return explain(
            ruleset,
            pod_context(address, intent, dual_stack=dual),
            listeners,
            expected=intent.expected(family),
            expected_listeners=expected_listeners,
            policy_routing=_policy_routing(facts, config, family) if tproxy else None,
            other=crossing_table,
            other_expected=intent.expected(crossing) if crossing else None,
            shadows=shadows,
            **extra,
        )

    address = base.pod_ips[0] if base.pod_ips else base.pod_ip
    report = explain_family(primary, live, address, other, second_live, dns_requested=dns_requested)
    both_loaded = (
        (
            Finding(
                Severity.ERROR,
                "both iptables rules and Istio's native nftables tables (istio-proxy-*) are loaded: the kernel "
                "runs both at each hook, so a connection can be captured twice; podnat traced the iptables rules. One "
                "set is left over (a change of capture mode, or istio-init run twice): restart the pod",
            ),
        )
        if both
        else ()
    )
    findings = (*listener_findings, *both_loaded, *report.findings, *((missing,) if missing else ()))
    report = replace(report, findings=tuple(findings))
    families_read = [FamilyReport(family=primary, explanation=report, ruleset=live)]
    if other is not None and second_live is not None:
        second = explain_family(other, second_live, base.pod_ips[1], primary, live)
        families_read.append(FamilyReport(family=other, explanation=second, ruleset=second_live))
    return explained(base, tuple(families_read), sources=sources, listeners=listeners, notes=tuple(notes))


def relayed_report(base: PodHeader, facts: PodFacts) -> Relayed | None:
    """The node agent's report of `facts` (a sidecar pod's), as explain_facts would make it here; None when it
    may differ: no report sent (an older agent, a pod not explained there, another resourceVersion:
    podnat.wire.agent_report), or the agent saw the pod otherwise (node, IPs, mesh mode, release, capture
    mode, proxy identity, the intent's source). The agent explained the same facts with explain_facts: only
    the label of the table (the CLI's names the agent and when it read) and the notes of the source policy
    before the facts' own are the CLI's."""
    sent = facts.relayed
    if sent is None or facts.nat is None:
        return None
    pod = sent.get("pod") or {}
    header = (base.ref.namespace, base.ref.name, base.node, base.pod_ip, base.istio_version, base.capture_mode)
    theirs = tuple(pod.get(k) for k in ("namespace", "name", "node", "ip", "istio_version", "capture_mode"))
    same = (
        header == theirs
        and base.mesh == pod.get("mesh") == MeshMode.SIDECAR.value
        and sent.get("context") == base.context
        and (sent.get("sources") or {}).get("intent") == base.sources.get("intent")
    )
    if not same:
        return None
    return relayed(
        base,
        PodStatus(sent["status"]),
        sent["body"],
        sources={**sent["sources"], "nat": facts.nat.label},
        notes=(*facts.notes, *sent["notes"]),
        live=facts.live,
    )


def _policy_routing(facts: PodFacts, config: InterceptionConfig | None, family: Family) -> TproxyRouting:
    """One family's TPROXY policy routing, from what the capture read (or why it is not known)."""
    mark = config.tproxy_mark if config is not None else 1337
    table = config.tproxy_route_table if config is not None else 133
    reading = facts.routing
    if reading is None:
        return TproxyRouting(
            family,
            mark,
            table,
            "not read",
            None,
            None,
            unknown="`ip rule` and `ip route` were not read (podnat reads them in the exec "
            "of istio-proxy or of its debug container, which did not run)",
        )
    v6 = family is Family.IPV6
    return tproxy_routing(
        reading.rules_v6 if v6 else reading.rules_v4,
        reading.routes_v6 if v6 else reading.routes_v4,
        family=family,
        mark=mark,
        table=reading.table,
        source=reading.label,
        unreadable=reading.error,
    )


def _has_rules(text: str, family: Family) -> bool:
    if not text.strip():
        return False
    try:
        return not _read_table(text, family).empty
    except InputError:
        return True  # let the caller report the parse error


def _read_table(text: str, family: Family) -> Ruleset:
    from podnat.netfilter.nft import detect_and_parse

    return detect_and_parse(text, family)


def _istio_nft(text: str | None) -> str:
    """`nft list ruleset` output when it holds Istio's native tables (istio-proxy-*), else ""."""
    return text if text and "istio-proxy-" in text else ""


def _pod_families(report: PodHeader) -> list[Family]:
    ips = report.pod_ips or ((report.pod_ip,) if report.pod_ip else ())
    families = [Family.IPV6 if ":" in ip else Family.IPV4 for ip in ips]
    return list(dict.fromkeys(families)) or [Family.IPV4]


def _listeners(facts: PodFacts, sources: dict[str, str]) -> tuple[tuple[Listener, ...] | None, list[Finding], str]:
    listeners_text = facts.listeners.json_text if facts.listeners else (facts.nat.listeners_json if facts.nat else None)
    if not listeners_text:
        return None, [], "Envoy's listeners could not be read; assuming Istio's standard set"
    sources["listeners"] = facts.listeners.label if facts.listeners else sources["nat"]
    try:
        listeners = parse_listeners(listeners_text)
    except ListenersError as exc:
        return None, [], f"Envoy's listeners could not be read ({exc}); assuming Istio's standard set"
    bound = {listener.port for listener in listeners if listener.binds}
    findings = [
        Finding(
            Severity.ERROR,
            f"Envoy has no listener on {port}: traffic redirected there is refused "
            "(is istio-proxy running and configured?)",
        )
        for port in REQUIRED_LISTENERS
        if port not in bound
    ]
    return listeners, findings, ""


def probe_report(cluster: Cluster, pod: Mapping[str, Any], report: PodReport) -> PodReport:
    """`--probe`: real connections from inside the pod (execs through the cluster port), the counted path
    beside the predicted one."""
    if not isinstance(report, Explained):
        return report
    from podnat.probe import probe_pod

    pod = pod_info(pod)
    intent = intent_for_pod(pod)
    ctx = pod_context(report.pod_ips[0] if report.pod_ips else report.pod_ip, intent)
    # Count with the binary the table was read with (the proxy image's `iptables-save` is the legacy one).
    read_with = re.search(r"\b(iptables(?:-nft|-legacy)?-save) -c", report.sources.get("nat", ""))
    save = read_with.group(1) if read_with else "iptables-save"
    return replace(report, probe=probe_pod(cluster, pod, ctx, report.listeners, save=save))


def pod_context(pod_ip: str | None, intent: PodIntent, dual_stack: bool = False) -> PodContext:
    """The flows' context for a live pod: its IP, app ports and proxy identity; peers are stand-ins.

    A dual-stack pod's Envoy has its admin port on 127.0.0.1 (Istio's bootstrap uses [::1] only for
    IPv6-only pods), so from its IPv6 address the flows reach admin over IPv4."""
    address = ipaddress.ip_address(pod_ip) if pod_ip else None
    ctx = context_for(address, app_ports=intent.app_ports, proxy=intent.proxy_identity)
    if dual_stack:
        ctx = ctx.replace(admin=Endpoint(ipaddress.IPv4Address("127.0.0.1"), ctx.admin.port))
    if address is not None and address.version == 4:
        # A remote peer in the pod's own subnet (never contacted: podnat only computes paths).
        peer = address + 1 if int(address) & 0xFF != 254 else address - 1
        ctx = ctx.replace(remote=Endpoint(peer, ctx.app_port))
    if intent.tproxy:
        ctx = ctx.replace(transparent_inbound=True, tproxy_mark=intent.tproxy_mark)
    return ctx


def _pod_header(pod: PodInfo, ref: PodRef) -> PodHeader:
    return PodHeader(ref=ref, node=pod.node, pod_ip=pod.pod_ip, pod_ips=pod.pod_ips)


def pod_context_data(pod_ip: str | None, intent: PodIntent) -> dict[str, Any]:
    """The `context` object of a live pod: the proxy identity and release come from its spec."""
    sidecar = intent.mesh is MeshMode.SIDECAR
    return {
        "pod_ip": pod_ip,
        "proxy_uid": intent.proxy_uid if sidecar else None,
        "proxy_gid": intent.proxy_gid if sidecar else None,
        "proxy_identity_from": "pod spec" if sidecar else None,
        "mode": intent.mesh.value,
        "release": intent.version,
        "release_from": "pod spec (proxy image)" if intent.version else None,
    }


def _with(report: _Header, **changes: Any) -> _Header:
    """`report` (any variant, or a header being built) with other header fields."""
    return replace(report, **changes)


def read_pods(pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Each pod's spec read once (`pod_info`), for verify_pods: verify does it while the agents answer. A pod
    whose spec cannot be read stays as it is, for verify_pods to report."""
    read: list[Mapping[str, Any]] = []
    for pod in pods:
        try:
            read.append(pod_info(pod))
        except PodSpecError:
            read.append(pod)
    return read


def verify_pods(
    source_factory: Callable[[], PodSource],
    pods: Sequence[Mapping[str, Any]],
    concurrency: int,
    nat_source: NatSource | None = None,
    debug_container: bool = False,
    progress: Callable[[PodReport], None] | None = None,
    namespace_labels: NamespaceLabels | None = None,
    relay: bool = False,
    at_hand: Callable[[Mapping[str, Any]], bool] | None = None,
) -> VerifyReport:
    """Inspect every pod, `concurrency` at a time; each worker uses its own source (own API clients).
    `relay`: take the node agent's reports as they are where they may be (inspect_pod). `at_hand`: the pods
    whose facts are read already (the node agent's answer): they are explained in this thread while the
    workers read the others (no I/O to wait on, which threads would only slow down).

    Pods with one table (a Deployment's replicas, the injected default) share its shadow analysis: the
    run keeps one memo, gone with it."""
    reports: list[PodReport] = []
    shadows: ShadowMemo = {}

    def one(pod: Mapping[str, Any]) -> PodReport:
        meta = pod.get("metadata") or {}
        ref = PodRef(str(meta.get("namespace", "?")), str(meta.get("name", "?")))
        try:
            info = pod_info(pod)
        except PodSpecError as exc:
            return Failed(ref=ref, error=str(exc), error_code=int(ExitCode.BAD_INPUT))
        if info.terminating:
            # Its rules go with it, and an exec may land in a container that is stopping: not checked.
            return skipped(_pod_header(info, ref), notes=(info.terminating + ": not checked",))
        try:
            return inspect_pod(source_factory(), info, nat_source, debug_container, namespace_labels, shadows, relay)
        except PodnatError as exc:
            meta = pod.get("metadata") or {}
            return Failed(
                ref=PodRef(meta.get("namespace", "?"), meta.get("name", "?")),
                error=exc.message,
                error_code=int(exc.code),
            )

    def done(report: PodReport) -> None:
        reports.append(report)
        if progress is not None:
            progress(report)

    here = [p for p in pods if at_hand(p)] if at_hand is not None else []
    ids = {id(p) for p in here}
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = [pool.submit(one, pod) for pod in pods if id(pod) not in ids]
        for pod in here:
            done(one(pod))
        for future in as_completed(futures):
            done(future.result())
    reports.sort(key=lambda r: (r.ref.namespace, r.ref.name))
    return VerifyReport(tuple(reports))
