"""The source policy: which source reads a pod's rules, in which order, and which failures allow the next.

The nat table, most live first, unless `--source NAME` demands one:
  1. node: podnat's agent on the pod's node (where one runs), over pods/proxy: live, no exec.
  2. exec: ONE exec in istio-proxy runs podnat.capture's script (both iptables backends, nft, Envoy's
     listeners, a TPROXY pod's policy routing), split by a random marker; an image without `sh` gets one
     exec per command. Works only where the proxy may read the table.
  3. debug (only with --debug-container): podnat's ephemeral container (the proxy's image, uid 0,
     NET_ADMIN/NET_RAW, targeting istio-proxy), added once and reused, runs the same exec. Once it runs in
     the pod it is tried before exec (the same live rules, without a first exec that would be refused).
  4. init-log: the istio-init log (istio-cni pods: the istio-cni-node log of the pod's node). These are
     the rules applied at start, not necessarily the live ones: the facts say so (`PodFacts.live`).

`--source NAME` is a demand: that source only, and its failure is the pod's error (exit 3, saying what
to grant); it is never replaced. `--debug-container` alone is a permission within the default order: the
debug container may fail (e.g. a token that may not patch pods/ephemeralcontainers) and the init log be
read instead, but never silently: the notes say why, and the facts say the rules are not live.

Everything here goes through the `Cluster` port (podnat/facts.py), so the policy is tested with a fake
cluster (tests/unit/test_sources.py). What a capture printed is read by podnat/capture.py; this module
says it in the facts' terms. "No sidecar" is not an error: the facts say `mesh` != SIDECAR, with a note.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from podnat import capture
from podnat.capture import (
    NatFailure,
    NatProblem,
    NftContent,
    Section,
    capture_script,
    listeners_argv,
    routing_commands,
)
from podnat.evidence import NatSource
from podnat.facts import (
    Cluster,
    ExecResult,
    Failure,
    ListenersReading,
    NatReading,
    PodFacts,
    PodRef,
    PolicyRouting,
    SocketsReading,
    SourceError,
)
from podnat.istio.initlog import InitLogError, InitLogRules, RulesKind, parse_cni_log, parse_initlog
from podnat.istio.mesh import MeshMode
from podnat.istio.pod import INIT_CONTAINER, PodInfo, pod_info
from podnat.istio.pod import PROXY_CONTAINER as PROXY

DEBUG_CONTAINER = "podnat-debug"
CNI_NAMESPACES = ("kube-system", "istio-system")
CNI_LABEL = "k8s-app=istio-cni-node"
CNI_CONTAINER = "install-cni"
INIT_LOG_LABEL = "istio-init log: applied at pod start, not necessarily live"

# --- the policy, as data ----------------------------------------------------------------------------------

ORDER: tuple[NatSource, ...] = (NatSource.NODE, NatSource.EXEC, NatSource.DEBUG, NatSource.INIT_LOG)

# The failures after which the next source may still work; anything else means the API itself failed.
ALLOWS_NEXT: frozenset[Failure] = frozenset(
    {
        Failure.NAT_PERMISSION,
        Failure.TOOL_MISSING,
        Failure.EMPTY_TABLE,
        Failure.FORBIDDEN,
        Failure.EXEC_DENIED,
        Failure.PROXY_NOT_READY,
        Failure.POD_SECURITY,
        Failure.DEBUG_CONTAINER,
    }
)
# The node agent is a shortcut, not a requirement: whatever went wrong asking it, the API's sources remain
# (it is a note). Asked for by name (--source node), its failure is the pod's error like any other's. But
# a table it read live and found unreadable is the pod's error: the next sources would read the same
# table (exec, debug container) or the rules applied at start (the log), which would hide it.
AGENT_ALLOWS_NEXT: frozenset[Failure] = frozenset(Failure) - {Failure.TABLE_UNREADABLE}


@dataclass(frozen=True, slots=True)
class Choice:
    """What the user asked for: `--source NAME` (a demand) and `--debug-container` (a permission)."""

    source: NatSource | None = None
    debug_container: bool = False
    debug_image: str | None = None  # --debug-image: the debug container's image for pods without istio-proxy

    def plan(self, debug_running: bool = False) -> tuple[NatSource, ...]:
        """The sources to try, in order: the demanded one alone, else the default order. Where the debug
        container is allowed and already runs in the pod, it goes before exec: it reads the same live rules,
        and an exec in istio-proxy (no NET_ADMIN in nearly every pod) would be a round trip that fails."""
        if self.source is not None:
            return (self.source,)
        plan = tuple(s for s in ORDER if s is not NatSource.DEBUG or self.debug_container)
        if self.debug_container and debug_running:
            before_exec = tuple(s for s in plan if s is not NatSource.DEBUG)
            at = before_exec.index(NatSource.EXEC)
            plan = (*before_exec[:at], NatSource.DEBUG, *before_exec[at:])
        return plan


@dataclass(slots=True)
class _Progress:
    """What the sources tried so far have read beside the table (an exec reads listeners and routing too)."""

    notes: list[str]
    failures: list[SourceError] = field(default_factory=list)
    listeners: ListenersReading | None = None
    listeners_tried: bool = False
    routing: PolicyRouting | None = None


def read_facts(
    cluster: Cluster, pod: Mapping[str, Any], choice: Choice, cni_namespaces: tuple[str, ...] = CNI_NAMESPACES
) -> PodFacts:
    """The pod's facts by the policy above. Raises SourceError when nothing could be read (or the demanded
    source failed)."""
    pod = pod_info(pod)  # the use case hands a PodInfo: read once
    ref = pod_ref(pod)
    mesh, why = pod.mesh, pod.mesh_note
    if mesh is MeshMode.AMBIENT:
        return _read_ambient(cluster, pod, ref, why, choice)
    if mesh is MeshMode.NO_SIDECAR:
        return PodFacts(ref=ref, pod=pod, mesh=mesh, notes=(why,))
    progress = _Progress(notes=[why] if why else [])
    phase = (pod.get("status") or {}).get("phase")
    if phase != "Running" and choice.source is not NatSource.INIT_LOG:
        raise SourceError(
            Failure.POD_NOT_RUNNING,
            f"pod {ref} is {phase or 'in an unknown phase'}, not Running: wait for it "
            "(`kubectl get pod`), or read the rules applied at start with --source init-log",
        )
    proxy_error = _proxy_not_running(pod, ref)
    if mesh is not MeshMode.NO_CAPTURE:
        found = _first_reading(cluster, pod, ref, choice, progress, proxy_error, cni_namespaces)
        if isinstance(found, PodFacts):  # the node agent's: complete as it is
            return dataclasses.replace(found, notes=(*progress.notes, *found.notes))
        nat: NatReading | None = found
    else:
        nat = None  # istio-proxy captures nothing: its listeners are all there is to read
    if progress.listeners is None and not progress.listeners_tried and proxy_error is None:
        progress.listeners, listeners_error = _listeners_only(cluster, pod, ref)
        if listeners_error:
            progress.notes.append(listeners_error)
    return PodFacts(
        ref=ref,
        pod=pod,
        nat=nat,
        listeners=progress.listeners,
        notes=tuple(progress.notes),
        mesh=mesh,
        routing=progress.routing,
    )


def _first_reading(
    cluster: Cluster,
    pod: PodInfo,
    ref: PodRef,
    choice: Choice,
    progress: _Progress,
    proxy_error: SourceError | None,
    cni_namespaces: tuple[str, ...],
) -> NatReading | PodFacts:
    """The first source of the plan that reads the table; each failure either allows the next source (a note)
    or is the pod's error."""
    plan = choice.plan(debug_running=debug_container_running(pod))
    demanded = choice.source is not None
    for position, kind in enumerate(plan):
        try:
            if kind is NatSource.NODE:
                from_node = _from_agent(cluster, pod, ref, demanded)
                if from_node is None:
                    continue  # no agent on the pod's node: nothing to say
                return from_node
            if kind is NatSource.EXEC:
                if proxy_error is not None:
                    raise proxy_error
                return _from_exec(cluster, pod, ref, progress)
            if kind is NatSource.DEBUG:
                return _from_debug_container(cluster, pod, ref, progress)
            reading, log_notes = _from_log(cluster, pod, ref, cni_namespaces)
            progress.notes.extend(log_notes)
            return reading
        except SourceError as err:
            _give_up_or_go_on(err, kind, demanded, last=position == len(plan) - 1, progress=progress)
    # Only reachable when the plan ends with an agent that is not there.
    raise progress.failures[-1] if progress.failures else SourceError(Failure.API_ERROR, f"nothing read from {ref}")


def debug_container_running(pod: Mapping[str, Any]) -> bool:
    """Whether podnat's debug container already runs in the pod (as the pod's status says)."""
    statuses = (pod.get("status") or {}).get("ephemeralContainerStatuses") or []
    return any(s.get("name") == DEBUG_CONTAINER and "running" in (s.get("state") or {}) for s in statuses)


def _give_up_or_go_on(err: SourceError, kind: NatSource, demanded: bool, *, last: bool, progress: _Progress) -> None:
    """Raise the pod's error, or record why `kind` failed and let the next source try."""
    if demanded:
        raise err
    if last and progress.failures:
        # Say why the live sources failed, and then why the log did.
        first = progress.failures[0].message.split(": ")[0]
        raise SourceError(err.failure, f"{first}; the log fallback failed too: {err.message}") from err
    allowed = AGENT_ALLOWS_NEXT if kind is NatSource.NODE else ALLOWS_NEXT
    if last or err.failure not in allowed:
        raise err
    if kind is NatSource.NODE:
        progress.notes.append(f"{err.message}: read without it")
    else:
        progress.failures.append(err)
        progress.notes.append(err.message)


def _from_agent(cluster: Cluster, pod: Mapping[str, Any], ref: PodRef, demanded: bool) -> PodFacts | None:
    facts = cluster.agent_facts(pod)
    if facts is None and demanded:
        node = (pod.get("spec") or {}).get("nodeName")
        raise SourceError(
            Failure.NOT_FOUND,
            f"no podnat agent on node {node} of pod {ref} ({cluster.agent_absent(pod)}): install it "
            "(`kubectl apply -k manifests/agent`), or pick another source with --source exec|debug|init-log",
        )
    return facts


def _from_exec(cluster: Cluster, pod: Mapping[str, Any], ref: PodRef, progress: _Progress) -> NatReading:
    try:
        cap = _capture(cluster, pod, ref, PROXY, NatSource.EXEC)
    except SourceError as err:
        progress.listeners_tried = err.failure is not Failure.TOOL_MISSING
        raise
    progress.listeners_tried = True
    progress.listeners = cap.listeners
    progress.routing = cap.routing
    if cap.listeners_error:
        progress.notes.append(cap.listeners_error)
    if cap.nat is None:
        assert cap.nat_error is not None
        raise cap.nat_error
    return cap.nat


def _from_debug_container(cluster: Cluster, pod: Mapping[str, Any], ref: PodRef, progress: _Progress) -> NatReading:
    debug = cluster.add_debug_container(pod, debug_container_spec(pod))
    progress.notes.append(_debug_note(debug.name, debug.added, ref))
    cap = _capture(cluster, pod, ref, debug.name, NatSource.DEBUG, debug_added=debug.added)
    if cap.routing is not None and (progress.routing is None or not progress.routing.complete):
        progress.routing = cap.routing
    if cap.listeners is not None:
        progress.listeners = cap.listeners
    elif cap.listeners_error and progress.listeners is None:
        progress.notes.append(cap.listeners_error)
    progress.listeners_tried = True
    if cap.nat is None:
        assert cap.nat_error is not None
        raise cap.nat_error
    return cap.nat


def _debug_note(name: str, added: bool, ref: PodRef, image: str | None = None) -> str:
    if not added:
        return f"reused ephemeral container {name}"
    what = f"{name} ({image})" if image else name
    return (
        f"added ephemeral container {what} to pod {ref} (ephemeral containers cannot be removed; later runs reuse it)"
    )


# --- ambient pods ---------------------------------------------------------------------------------------------

AMBIENT_NOT_READ = (
    "the in-pod rules of this ambient pod could not be read live: it has no istio-proxy to exec into and no "
    "istio-init log. Run podnat's node agent on its node (`podnat agent`, manifests/agent/), or rerun with "
    "--debug-container --debug-image IMAGE (an image with sh, iptables-save, nft and ip, e.g. Istio's proxyv2 "
    "of your release)"
)
AMBIENT_ROUTE_TABLE = 100  # istio-cni's `ip rule fwmark 0x111/0xfff lookup 100` (podnat.istio.ambient)


def _read_ambient(cluster: Cluster, pod: Mapping[str, Any], ref: PodRef, why: str, choice: Choice) -> PodFacts:
    """An ambient pod has no istio-proxy to exec into and no istio-init log: its node's agent reads it, or a
    debug container with an image the user names (--debug-container --debug-image)."""
    notes: list[str] = [why]
    source = choice.source
    if source in (NatSource.EXEC, NatSource.INIT_LOG):
        what = "istio-proxy to exec into" if source is NatSource.EXEC else "istio-init log"
        raise SourceError(
            Failure.NOT_FOUND,
            f"pod {ref} is in ambient mode: it has no {what}; read it with --source node (podnat's agent on "
            "its node) or --source debug --debug-image IMAGE",
        )
    use_debug = source is NatSource.DEBUG or (source is None and choice.debug_container and choice.debug_image)
    if use_debug and not choice.debug_image:
        raise SourceError(
            Failure.DEBUG_CONTAINER,
            f"pod {ref} is in ambient mode: it has no istio-proxy whose image the debug container could use; "
            "pass --debug-image IMAGE (an image with sh, iptables-save, nft and ip, e.g. Istio's proxyv2)",
        )
    if not use_debug:
        try:  # the node agent: it reads the pod's namespace from the node
            from_node = _from_agent(cluster, pod, ref, demanded=source is NatSource.NODE)
        except SourceError as err:
            if source is NatSource.NODE:
                raise
            notes.append(f"{err.message}: read without it")
            from_node = None
        if from_node is not None:
            return dataclasses.replace(from_node, mesh=MeshMode.AMBIENT, notes=(*notes, *from_node.notes))
        return PodFacts(ref=ref, pod=pod, mesh=MeshMode.AMBIENT, notes=(*notes, AMBIENT_NOT_READ))
    debug = cluster.add_debug_container(pod, debug_container_spec(pod, choice.debug_image))
    marker = f"podnat-{secrets.token_hex(8)}"
    result = cluster.exec(ref, debug.name, ["sh", "-c", ambient_script(marker)])
    sections = split_sections(result, marker)
    if sections is None:
        raise SourceError(
            Failure.TOOL_MISSING,
            f"the debug image {choice.debug_image} has no `sh` (pod {ref}): "
            "pass --debug-image with a shell, iptables-save and nft (e.g. Istio's proxyv2)",
        )
    note = _debug_note(debug.name, debug.added, ref, choice.debug_image)
    return ambient_facts(pod, ref, sections, f"debug container {debug.name}", NatSource.DEBUG, (why, note))


def ambient_script(marker: str, skip_known: bool = False) -> str:
    """The capture for an ambient pod: both iptables backends, nft, the policy routing of table 100 and the
    listening sockets (ztunnel's in-pod listeners); no Envoy to ask. `skip_known`: capture_script's."""
    return capture_script(
        marker, routing_table=AMBIENT_ROUTE_TABLE, listeners=False, sockets=True, skip_known=skip_known
    )


def ambient_facts(
    pod: Mapping[str, Any],
    ref: PodRef,
    sections: Mapping[str, Section],
    where: str,
    kind: NatSource,
    notes: tuple[str, ...],
) -> PodFacts:
    """An ambient pod's facts from its capture. No Istio rules at all is a fact (the pod's traffic bypasses
    ztunnel), not a failure to read."""
    nat, nat_error = interpret_nat(sections, ref, where, kind)
    if nat is None:
        assert nat_error is not None
        if nat_error.failure is not Failure.EMPTY_TABLE:
            raise nat_error
        nat = NatReading(
            source=kind,
            label=f"{where} (uid 0, NET_ADMIN): iptables-save -c, nft list ruleset: no Istio rules",
            v4="",
            v6=None,
            nft=None,
            counters=True,
        )
    routing = interpret_routing(sections, where, AMBIENT_ROUTE_TABLE)
    section = sections.get("sockets")
    sockets = None
    extra = list(notes)
    if section is not None and section.returncode == 0:
        sockets = SocketsReading(f"{where}: {capture.SOCKETS_COMMAND}", capture.listening_ports(section.stdout))
    else:
        extra.append(f"the pod's listening sockets were not read in {where}: ztunnel's in-pod listeners assumed")
    return PodFacts(
        ref=ref,
        pod=pod,
        nat=nat,
        notes=tuple(n for n in extra if n),
        mesh=MeshMode.AMBIENT,
        routing=routing,
        sockets=sockets,
    )


# --- one container's capture ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Capture:
    """One container's reading: the nat table or why not, the listeners or why not."""

    nat: NatReading | None
    nat_error: SourceError | None
    listeners: ListenersReading | None
    listeners_error: str | None
    routing: PolicyRouting | None = None


def _capture(
    cluster: Cluster,
    pod: Mapping[str, Any],
    ref: PodRef,
    container: str,
    kind: NatSource,
    *,
    debug_added: bool = False,
) -> _Capture:
    info = pod_info(pod)
    port, table = info.admin_port, info.tproxy_route_table
    marker = f"podnat-{secrets.token_hex(8)}"
    result = cluster.exec(ref, container, ["sh", "-c", capture_script(marker, port, table)])
    sections = split_sections(result, marker)
    if sections is None:
        if looks_missing(result):  # no shell in the image (distroless): one exec per command
            sections = _capture_without_shell(cluster, ref, container, port, table)
        else:
            detail = " ".join((result.stderr or result.stdout).split())[:200]
            raise SourceError(
                Failure.API_ERROR,
                f"exec in {container} of pod {ref} ended (exit {result.returncode}) without output: {detail}",
            )
    where = "istio-proxy" if kind is NatSource.EXEC else f"ephemeral container {container}"
    nat, nat_error = interpret_nat(sections, ref, where, kind)
    if nat is not None and kind is NatSource.DEBUG:
        nat = dataclasses.replace(
            nat, debug_container=container, debug_container_added=debug_added, listeners_json=_listeners_text(sections)
        )
    listeners, listeners_error = interpret_listeners(sections.get("listeners"), where)
    routing = interpret_routing(sections, where, table) if table is not None else None
    return _Capture(nat, nat_error, listeners, listeners_error, routing)


def _capture_without_shell(
    cluster: Cluster, ref: PodRef, container: str, port: int, table: int | None
) -> dict[str, Section]:
    """The capture's sections with one exec per command (an image without `sh`): each backend's
    binary where it exists, the unqualified one only where neither does."""
    sections: dict[str, Section] = {}

    def run(name: str, argv: list[str]) -> Section:
        r = cluster.exec(ref, container, argv)
        rc = r.returncode if r.returncode is not None else 1
        sections[name] = Section(r.stdout, r.stderr, 127 if rc and looks_missing(r) else rc)
        return sections[name]

    denied = False
    for tool in ("iptables", "ip6tables"):
        family = "v4" if tool == "iptables" else "v6"
        found = False
        for backend in ("nft", "legacy"):
            if denied:
                break
            section = run(f"{family}_{backend}", [f"{tool}-{backend}-save", "-c"])
            found = found or section.returncode != 127
            denied = bool(capture.PERMISSION.search(section.stderr + section.stdout))
        if not found and not denied:
            section = run(family, [f"{tool}-save", "-c"])
            denied = bool(capture.PERMISSION.search(section.stderr + section.stdout))
        if denied:
            break  # same verdict for the rest: spare the execs
    if not denied:
        run("nft", ["nft", "-j", "list", "ruleset"])  # native nftables mode keeps the rules there
    run("listeners", listeners_argv(port))
    for name, command in routing_commands(table).items():
        if run(name, command.split()).returncode == 127:
            break  # no `ip` in the image: the other commands would say the same
    return sections


def _listeners_only(
    cluster: Cluster, pod: Mapping[str, Any], ref: PodRef
) -> tuple[ListenersReading | None, str | None]:
    try:
        r = cluster.exec(ref, PROXY, listeners_argv(pod_info(pod).admin_port))
    except SourceError as err:
        return None, f"Envoy listeners not read: {err.message}"
    rc = r.returncode if r.returncode is not None else 1
    return interpret_listeners(Section(r.stdout, r.stderr, rc), "istio-proxy")


# --- the logs: rules applied at start -----------------------------------------------------------------------------


def _from_log(
    cluster: Cluster, pod: Mapping[str, Any], ref: PodRef, cni_namespaces: tuple[str, ...]
) -> tuple[NatReading, list[str]]:
    info = pod_info(pod)
    if info.init is not None:
        text = cluster.read_log(ref, INIT_CONTAINER)
        try:
            rules = parse_initlog(text)
        except InitLogError as err:
            raise SourceError(
                Failure.LOG, f"the istio-init log of pod {ref} has no rules podnat recognises ({err})"
            ) from err
        return _reading_from_rules(rules, INIT_LOG_LABEL), [_log_note(rules, "istio-init")]
    if info.uses_istio_cni:
        return _from_cni_log(cluster, pod, ref, cni_namespaces)
    raise SourceError(
        Failure.LOG,
        f"pod {ref} has no istio-init container and no sign of istio-cni: there is no log of its rules; "
        "read the live table with --debug-container",
    )


def _from_cni_log(
    cluster: Cluster, pod: Mapping[str, Any], ref: PodRef, cni_namespaces: tuple[str, ...]
) -> tuple[NatReading, list[str]]:
    node = (pod.get("spec") or {}).get("nodeName")
    lead = f"pod {ref} uses istio-cni: its rules are in the istio-cni-node log on node {node}"
    cni_pod: Mapping[str, Any] | None = None
    for namespace in cni_namespaces:
        try:
            found = cluster.list_pods(namespace, CNI_LABEL, node=node)
        except SourceError as err:
            if err.failure is Failure.NOT_FOUND:
                continue
            raise SourceError(err.failure, f"{lead}, which podnat cannot list: {err.message}") from err
        cni_pod = found[0] if found else None
        if cni_pod is not None:
            break
    if cni_pod is None:
        raise SourceError(
            Failure.LOG,
            f"{lead}, and no istio-cni-node pod ({CNI_LABEL}) runs there in "
            f"{' or '.join(cni_namespaces)}: read the live table with --debug-container",
        )
    cni_ref = pod_ref(cni_pod)
    containers = [c.get("name") for c in (cni_pod.get("spec") or {}).get("containers") or []]
    container = CNI_CONTAINER if CNI_CONTAINER in containers or not containers else str(containers[0])
    text = cluster.read_log(cni_ref, container)
    try:
        rules = parse_cni_log(text, ref.name)
    except InitLogError as err:
        raise SourceError(Failure.LOG, f"{lead} ({cni_ref}), but: {err}") from err
    label = f"istio-cni-node log ({cni_ref}): applied at pod start, not necessarily live"
    return _reading_from_rules(rules, label), [_log_note(rules, f"istio-cni-node {cni_ref}")]


def _reading_from_rules(rules: InitLogRules, label: str) -> NatReading:
    return NatReading(source=NatSource.INIT_LOG, label=label, v4=rules.v4, v6=rules.v6, nft=rules.nft, counters=False)


def _log_note(rules: InitLogRules, where: str) -> str:
    what = (
        "restore input (no iptables-save dump was logged)"
        if rules.kind is RulesKind.RESTORE_INPUT
        else (rules.kind.value)
    )
    return f"{where} log, Istio {rules.log_format.value} format: {what}, from line {rules.line}"


# --- the debug container and the proxy's state ----------------------------------------------------------------


def debug_container_spec(pod: Mapping[str, Any], image: str | None = None) -> dict[str, Any]:
    """podnat's ephemeral container: the proxy's own image (or `image`: an ambient pod has no proxy), uid 0
    with NET_ADMIN/NET_RAW, idle."""
    info = pod_info(pod)
    proxy = info.proxy
    target = PROXY if proxy is not None else info.app.name if info.app is not None else None
    return {
        "name": DEBUG_CONTAINER,
        "image": image or (proxy.image if proxy is not None else None),
        "imagePullPolicy": "IfNotPresent",
        "command": ["sleep", "infinity"],
        "targetContainerName": target,
        "stdin": False,
        "tty": False,
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": False,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"]},
        },
    }


def _proxy_not_running(pod: Mapping[str, Any], ref: PodRef) -> SourceError | None:
    status = pod.get("status") or {}
    statuses = [*(status.get("containerStatuses") or []), *(status.get("initContainerStatuses") or [])]
    proxy = next((s for s in statuses if s.get("name") == PROXY), None)
    if proxy is None:
        return None  # no status reported (yet): let the exec say what is wrong
    state = proxy.get("state") or {}
    if "running" in state:
        return None
    phase, detail = next(iter(state.items()), ("unknown", None))
    reason = (detail or {}).get("reason") or phase
    return SourceError(
        Failure.PROXY_NOT_READY,
        f"istio-proxy in pod {ref} is not ready: not running ({phase}: {reason}): see `kubectl describe pod "
        f"{ref.name} -n {ref.namespace}`, or read the rules applied at start with --source init-log",
    )


def pod_ref(pod: Mapping[str, Any]) -> PodRef:
    meta = pod.get("metadata") or {}
    return PodRef(str(meta.get("namespace") or "default"), str(meta.get("name") or "?"))


# --- what a capture printed, in the facts' terms (podnat/capture.py reads the text) -----------------------------


def split_sections(result: ExecResult, marker: str) -> dict[str, Section] | None:
    """The sections of a capture_script run, or None when the script never started (no shell)."""
    return capture.split_sections(result.stdout, result.stderr, marker)


def looks_missing(result: ExecResult) -> bool:
    """The exec's command is not in the image (the runtime's or the shell's message)."""
    text = result.stderr + result.stdout
    if "executable file not found" in text:
        return True
    return result.returncode in (126, 127, 128) and bool(capture.MISSING.search(text))


def interpret_nat(
    sections: Mapping[str, Section], ref: PodRef, where: str, kind: NatSource
) -> tuple[NatReading | None, SourceError | None]:
    """The nat reading out of the capture's iptables (both backends) and nft sections, or the one-line
    reason there is none (podnat.capture.nat_tables decides; this says it in the facts' terms)."""
    found = capture.nat_tables(capture.read_sections(sections))
    hint = (
        "rerun with --debug-container or use --source init-log" if kind is NatSource.EXEC else "use --source init-log"
    )
    if isinstance(found, NatFailure):
        return None, _nat_error(found, ref, where, kind, hint)
    command = found.command
    if found.also:
        command += f" ({', '.join(found.also)} holds Istio's rules too: the kernel runs both)"
    label = f"exec istio-proxy: {command}" if kind is NatSource.EXEC else f"{where} (uid 0, NET_ADMIN): {command}"
    return NatReading(source=kind, label=label, v4=found.v4, v6=found.v6, nft=found.nft, counters=True), None


def _nat_error(found: NatFailure, ref: PodRef, where: str, kind: NatSource, hint: str) -> SourceError:
    problem = found.problem
    if problem is NatProblem.PERMISSION:
        how = (
            "rerun with --debug-container, or read the rules applied at start with --source init-log"
            if kind is NatSource.EXEC
            else "use --source init-log"
        )
        return SourceError(
            Failure.NAT_PERMISSION, f"{where} cannot read the nat table without NET_ADMIN (pod {ref}): {how}"
        )
    if problem is NatProblem.MISSING:
        return SourceError(Failure.TOOL_MISSING, f"iptables-save is not in the image of {where} (pod {ref}): {hint}")
    if problem is NatProblem.NO_OUTPUT:
        return SourceError(Failure.API_ERROR, f"no iptables-save output from {where} of pod {ref}")
    if problem is NatProblem.FAILED:
        return SourceError(
            Failure.TABLE_UNREADABLE,
            f"{found.command.split()[0]} failed in {where} of pod {ref} (exit {found.returncode}): {found.detail}",
        )
    legacy = (
        " (iptables-save warns that iptables-legacy tables are present: the rules may be there)"
        if (found.legacy_warning)
        else ""
    )
    nft_hint = "nft is not available there" if found.nft is NftContent.UNREAD else "nft shows no istio tables"
    return SourceError(
        Failure.EMPTY_TABLE,
        f"the nat table read in {where} of pod {ref} is empty{legacy}: native nftables mode (Istio 1.27+) keeps "
        f"the rules in `nft list ruleset`, and {nft_hint} (no rule from {', '.join(found.read)}): {hint}",
    )


_NO_TABLE = re.compile(r"FIB table does not exist|table .* does not exist", re.IGNORECASE)
_REFUSED = re.compile(r"connection refused|Errno 111", re.IGNORECASE)


def interpret_routing(sections: Mapping[str, Section], where: str, table: int) -> PolicyRouting:
    """The policy-routing sections of a capture: each text, "" for an empty table, None when unread."""
    who = "exec istio-proxy" if where == PROXY else where
    problems: list[str] = []

    def text(name: str, command: str) -> str | None:
        section = sections.get(name)
        if section is None:
            return None
        if section.returncode == 0:
            return section.stdout
        both = section.stderr + section.stdout
        if _NO_TABLE.search(both):
            return ""  # iproute2 on a table with no route in it
        if section.returncode in (126, 127) or capture.MISSING.search(both):
            problem = f"`ip` is not in the image of {where}"
        else:
            problem = f"`{command}` failed in {where} (exit {section.returncode}): {' '.join(both.split())[:120]}"
        if problem not in problems:
            problems.append(problem)
        return None

    commands = routing_commands(table)
    texts = {name: text(name, command) for name, command in commands.items()}
    return PolicyRouting(
        label=f"{who}: ip rule show; ip route show table {table} (and ip -6)",
        table=table,
        rules_v4=texts["rule"],
        routes_v4=texts["route"],
        rules_v6=texts["rule6"],
        routes_v6=texts["route6"],
        error="; ".join(problems) or None,
    )


def interpret_listeners(section: Section | None, where: str) -> tuple[ListenersReading | None, str | None]:
    who = "exec istio-proxy" if where == PROXY else where
    label = f"{who}: pilot-agent request GET listeners?format=json"
    if section is None:
        return None, None
    text = section.stdout.strip()
    if section.returncode == 0 and text.startswith("{"):
        return ListenersReading(label=label, json_text=text), None
    if _REFUSED.search(section.stderr + section.stdout):
        # The exec ran and Envoy's admin port refused: Envoy is not running, so nothing listens.
        return ListenersReading(
            label=f"{who}: Envoy's admin port refused the connection (Envoy is not running)",
            json_text='{"listener_statuses": []}',
        ), None
    detail = " ".join((section.stderr or section.stdout).split())[:160]
    return None, f"Envoy listeners not read in {where} (exit {section.returncode}): {detail or 'no output'}"


def _listeners_text(sections: Mapping[str, Section]) -> str | None:
    reading, _ = interpret_listeners(sections.get("listeners"), "")
    return reading.json_text if reading else None


# --- the use cases' PodSource over a cluster, and the namespace check -------------------------------------------


class LiveSource:
    """A PodSource over a Cluster: pods as the cluster lists them, each pod's facts by the policy above."""

    def __init__(
        self, cluster: Cluster, debug_image: str | None = None, cni_namespaces: tuple[str, ...] = CNI_NAMESPACES
    ) -> None:
        self.cluster = cluster
        self.debug_image = debug_image
        self.cni_namespaces = cni_namespaces

    def list_pods(self, namespace: str | None, selector: str | None = None) -> list[dict[str, Any]]:
        return self.cluster.list_pods(namespace, selector)

    def get_pod(self, ref: PodRef) -> dict[str, Any]:
        return self.cluster.get_pod(ref)

    def read_facts(self, pod: Mapping[str, Any], source: NatSource | None, debug_container: bool) -> PodFacts:
        choice = Choice(source, debug_container or source is NatSource.DEBUG, self.debug_image)
        return read_facts(self.cluster, pod, choice, self.cni_namespaces)
