"""podnat's command line: parse flags, call one use case, render, pick the exit code.

Offline commands (trace, explain) never import the Kubernetes client; live commands import it
lazily. Errors are one line on stderr with the documented exit code; a traceback only with --debug.
"""

from __future__ import annotations

import gc
import ipaddress
import os
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

# Before typer: what typer imports at start and podnat does not use is loaded on first use.
import podnat._deferred  # noqa: F401

# isort: split
import click
import typer
from typer.core import TyperGroup

from podnat import __version__
from podnat.errors import BadInput, PodnatError, UsageError
from podnat.evidence import NatSource
from podnat.exitcodes import ExitCode
from podnat.istio.actor import Actor
from podnat.render.output import OutputFormat

if TYPE_CHECKING:  # types only: each command imports what it uses when it runs (start-up stays small)
    import ipaddress as _ip

    from podnat.envoy.listeners import Listener
    from podnat.intent import PodIntent
    from podnat.istio.explain import Explanation, Finding
    from podnat.istio.flows import Endpoint, PodContext
    from podnat.istio.inputs import InputInfo
    from podnat.istio.routing import TproxyRouting
    from podnat.kube.cluster import KubeCluster
    from podnat.netfilter.model import Ruleset
    from podnat.sources import LiveSource


class _Commands(TyperGroup):
    """podnat's commands, with the one handler of their errors: one line on stderr saying what to do, and
    the documented exit code (ExitCode) for the error's kind; a traceback only with --debug."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PodnatError as exc:
            from podnat.render.console import error

            error(exc.message)
            raise typer.Exit(int(exc.code)) from None


app = typer.Typer(
    cls=_Commands,
    name="podnat",
    rich_markup_mode="rich",
    help="Which iptables rule did that? Explains an Istio sidecar's traffic capture, pod by pod.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_debug = False


class Proto(str, Enum):
    tcp = "tcp"
    udp = "udp"


class Mode(str, Enum):
    """Whose capture a saved table holds (default: recognised by its rules)."""

    auto = "auto"
    sidecar = "sidecar"
    ambient = "ambient"


def _output(*formats: OutputFormat, help: str) -> Any:
    """`-o`: one OutputFormat, of which each command accepts the forms it has (listed as its choices)."""
    return typer.Option("--output", "-o", click_type=click.Choice(formats), help=help)


_OFFLINE = (OutputFormat.table, OutputFormat.wide, OutputFormat.json, OutputFormat.yaml, OutputFormat.mermaid)
OutputOpt = Annotated[OutputFormat, _output(*_OFFLINE, help="table, wide, json or yaml.")]
VerifyOutputOpt = Annotated[
    OutputFormat, _output(*_OFFLINE[:4], OutputFormat.junit, help="table, wide, json, yaml or junit.")
]
ModeOpt = Annotated[
    Mode,
    typer.Option(
        "--mode",
        help="sidecar or ambient (default: recognised by the table's rules; ambient forces it, e.g. for a "
        "namespace whose rules are gone).",
    ),
]
RoutingOpt = Annotated[
    Path | None,
    typer.Option(
        "--routing",
        help="The pod's policy routing: a transcript of `ip rule show`, `ip route show table N` (and "
        "`ip -6 ...`), each output preceded by a line `$ COMMAND` (default: as Istio installs it).",
    ),
]
ProxyUid = Annotated[
    int | None,
    typer.Option(
        "--proxy-uid",
        help="uid Envoy's own connections carry (default: the uid the table's owner rules exempt, else "
        "1337; 0 for a TPROXY table, as Istio runs it).",
    ),
]
ProxyGid = Annotated[
    int | None,
    typer.Option(
        "--proxy-gid",
        help="gid Envoy's own connections carry (default: the gid the table's owner rules exempt, else 1337).",
    ),
]
DiagramOpt = Annotated[Path | None, typer.Option("--diagram", help="Also draw the pod's paths as an SVG file.")]
HtmlOpt = Annotated[
    Path | None, typer.Option("--html", help="Also write a self-contained HTML report (opens offline).")
]
ListenersOpt = Annotated[
    Path | None,
    typer.Option("--listeners", help="Envoy's listeners?format=json (default: Istio's standard sidecar set)."),
]


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", envvar="PODNAT_DEBUG", help="Show tracebacks.")] = False,
) -> None:
    global _debug
    _debug = debug


def read_text(path: Path | str, what: str = "file") -> str:
    """Read an input file (or stdin for "-") as text, with a one-line error when it cannot be read."""
    try:
        raw = sys.stdin.buffer.read() if str(path) == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if b"\x00" in raw:
        raise BadInput(f"{path} is binary data, not an iptables-save dump: pass the output of iptables-save")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path} is not UTF-8 text (byte {exc.start}): pass the output of iptables-save") from None


def load_ruleset(path: Path | str) -> Ruleset:
    """A saved table in any form podnat reads (podnat.istio.inputs), without what was said about it."""
    return load_input(path)[0]


def load_input(path: Path | str) -> tuple[Ruleset, InputInfo]:
    """The table in `path` and what podnat recognised it as (InputInfo: its form, notes, and for a log
    whether the rules were installed at all)."""
    from podnat.istio.inputs import read_input
    from podnat.netfilter.errors import InputError

    text = read_text(path)
    try:
        ruleset, info = read_input(text)
    except InputError as exc:
        raise BadInput(f"cannot read {path}: {exc}") from None
    if not ruleset.tables and info.failed is None:
        raise BadInput(f"{path} holds no table: pass the output of iptables-save or nft list ruleset")
    return ruleset, info


def input_data(info: InputInfo) -> dict[str, Any]:
    """The `input` object of `-o json`: which form podnat read, and what it skipped or assumed."""
    return {"format": info.format, "notes": list(info.notes)}


def never_installed(info: InputInfo) -> Finding:
    """The error finding for a log that shows the restore failed: no capture, every flow past Envoy."""
    from podnat.istio.explain import Finding, Severity

    return Finding(
        Severity.ERROR,
        f"capture was never installed: the {info.format} shows the rules were not loaded "
        f"({info.failed}), so the pod has no Istio rules and every flow goes straight past Envoy; fix "
        "what the log names (a missing kernel module, a missing capability, a bad rule) and restart the pod",
    )


def _best_match_words(matched: tuple[str, ...]) -> str:
    """How the release was picked when --istio-version was not given."""
    if len(matched) == 1:
        return "best match of the table's rules (no other release matches as well)"
    minors = [int(v.split(".")[1]) for v in matched]
    which = f"{matched[0]} to {matched[-1]}" if minors == list(range(minors[0], minors[-1] + 1)) else ", ".join(matched)
    return f"best match of the table's rules ({which} match equally well: the newest is assumed)"


def _input_notes(info: InputInfo, output: OutputFormat) -> None:
    """What podnat skipped or assumed to read the input, on stderr (the data carries it in `input`)."""
    if output in (OutputFormat.table, OutputFormat.wide) and (info.notes or info.format != "iptables-save"):
        from podnat.render.console import note

        note(f"read as {info.format}" + "".join(f"; {n}" for n in info.notes))


def load_for_mode(path: Path | str, mode: Mode) -> tuple[Ruleset, InputInfo, bool]:
    """The table, what it was read as, and whether it is an ambient pod's (`--mode`, else its rules). With
    `--mode ambient` a table without rules is accepted: that is what a pod whose rules are gone prints."""
    from podnat.istio.inputs import InputInfo, looks_ambient, read_input
    from podnat.netfilter.errors import InputError
    from podnat.netfilter.model import Family, Ruleset

    if mode is not Mode.ambient:
        ruleset, info = load_input(path)
        return ruleset, info, mode is Mode.auto and looks_ambient(ruleset)
    text = read_text(path)
    if not text.strip():
        return Ruleset(Family.IPV4), InputInfo("empty (no rules)"), True  # an ambient pod whose rules are gone
    try:
        ruleset, info = read_input(text)
    except InputError as exc:
        raise BadInput(f"cannot read {path}: {exc}") from None
    return ruleset, info, True


def load_routing(
    path: Path | None, ruleset: Ruleset, *, ambient: bool, table: int | None = None
) -> TproxyRouting | None:
    """The pod's policy routing from a `--routing` transcript, for the table's family: ambient's (mark 0x111,
    table 100) or a TPROXY table's (its mark; table 133 unless given). None without --routing, or for a table
    that needs none."""
    if path is None:
        return None
    from podnat.istio.ambient import CONN_MARK, ROUTE_TABLE
    from podnat.istio.paths import tproxy_mark
    from podnat.istio.routing import TranscriptError, parse_transcript, routing_from_transcript

    try:
        transcript = parse_transcript(read_text(path, "routing transcript"))
    except TranscriptError as exc:
        raise BadInput(f"cannot read {path}: {exc}") from None
    if ambient:
        mark, number = CONN_MARK, ROUTE_TABLE
    else:
        found = tproxy_mark(ruleset)
        if found is None:
            return None
        mark, number = found, table or 133
    return routing_from_transcript(
        transcript, family=ruleset.family, mark=mark, table=number, source=f"--routing {path}"
    )


def _ambient_context(ctx: PodContext, context: dict[str, Any]) -> tuple[PodContext, dict[str, Any]]:
    """An ambient pod's flows run through ztunnel, whose sockets carry mark 0x539 (no owner rule tests it)."""
    from podnat.istio.ambient_paths import ZTUNNEL

    context = {
        **context,
        "mode": "ambient",
        "proxy_uid": ZTUNNEL.uid,
        "proxy_gid": ZTUNNEL.gid,
        "proxy_identity_from": "ambient: ztunnel's sockets (mark 0x539)",
    }
    return ctx.replace(proxy=ZTUNNEL), context


def load_listeners(path: Path | None) -> tuple[Listener, ...] | None:
    if path is None:
        return None
    from podnat.envoy.listeners import ListenersError, parse_listeners

    try:
        return parse_listeners(read_text(path, "listeners file"))
    except ListenersError as exc:
        raise BadInput(f"cannot read {path}: {exc}") from None


def _endpoint(text: str, flag: str, default_port: int | None = None) -> Endpoint:
    from podnat.istio.flows import Endpoint

    try:
        return Endpoint.parse(text, default_port)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def _offline_context(
    ruleset: Ruleset,
    pod: _ip.IPv4Address | _ip.IPv6Address | None,
    ports: tuple[int, ...],
    proxy_uid: int | None,
    proxy_gid: int | None,
    intent: PodIntent | None = None,
    intent_from: str = "args",
) -> tuple[PodContext, dict[str, Any]]:
    """The flows' context for a saved table, and the `context` object saying where each part came from.

    The proxy identity: --proxy-uid/--proxy-gid, else the intent (--args, --pod-spec), else the uid/gid
    the table's own owner rules exempt (podnat.istio.identity), else 1337. A table that captures inbound
    with TPROXY is a TPROXY pod's: its Envoy's inbound listener is transparent, marks its sockets with
    the TPROXY mark, and runs as uid 0 with the exempted gid (docs/istio-capture.md)."""
    from podnat.istio.flows import Identity, context_for
    from podnat.istio.identity import DEFAULT_PROXY_ID, proxy_identity_in_table
    from podnat.istio.paths import tproxy_mark

    mark = tproxy_mark(ruleset)
    tproxy = mark is not None
    if intent is not None:
        uid, gid, where = intent.proxy_uid, intent.proxy_gid, intent_from
    elif (found := proxy_identity_in_table(ruleset)) is not None:
        either = found.uid if found.uid is not None else found.gid
        assert either is not None  # a table's identity names a uid, a gid or both
        gid = found.gid if found.gid is not None else either
        uid = 0 if tproxy else either
        where = f"table {found.ref}"
    else:
        uid, gid, where = (0 if tproxy else DEFAULT_PROXY_ID), DEFAULT_PROXY_ID, "default"
    if proxy_uid is not None or proxy_gid is not None:
        uid = proxy_uid if proxy_uid is not None else uid
        gid = proxy_gid if proxy_gid is not None else gid
        where = "flag"
    ctx = context_for(pod, family=ruleset.family.value, app_ports=ports, proxy=Identity(uid, gid))
    from podnat.istio.explain import captured_nameserver

    # pilot-agent's DNS proxy listens on 15053 whenever the table redirects DNS to it (trace and explain agree)
    nameserver = captured_nameserver(ruleset)
    if nameserver is not None:
        ctx = ctx.replace(nameserver=nameserver)
    if tproxy:
        ctx = ctx.replace(transparent_inbound=True, tproxy_mark=mark)
    release = intent.version if intent is not None else None
    context = {
        "pod_ip": str(ctx.pod_ip),
        "proxy_uid": uid,
        "proxy_gid": gid,
        "proxy_identity_from": where,
        "mode": "sidecar",
        "release": release,
        "release_from": intent_from if release else None,
    }
    return ctx, context


def _mark(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise UsageError(f"--mark: {text!r} is not a number (e.g. 0x539 or 1337)") from None
    if not 0 <= value <= 0xFFFFFFFF:
        raise UsageError(f"--mark: {text} is out of range (0 to 0xffffffff)")
    return value


def _address(text: str, flag: str) -> _ip.IPv4Address | _ip.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise UsageError(f"{flag}: {text!r} is not an IP address") from None


@app.command()
def trace(
    nat_file: Annotated[
        Path | None, typer.Option("--nat-file", help="iptables-save output ('-': stdin). Required.")
    ] = None,
    pod_ip: Annotated[str | None, typer.Option("--pod-ip", help="The pod's IP. Required.")] = None,
    from_: Annotated[
        Actor | None, typer.Option("--from", help="Who opens the connection: app, proxy or remote. Required.")
    ] = None,
    to: Annotated[str | None, typer.Option("--to", help="Destination IP:PORT. Required.")] = None,
    src: Annotated[str | None, typer.Option("--src", help="Source IP (default: routing's choice).")] = None,
    uid: Annotated[int | None, typer.Option("--uid", help="Client uid (app default 1000; proxy: --proxy-uid).")] = None,
    gid: Annotated[int | None, typer.Option("--gid", help="Client primary gid (default: the uid's).")] = None,
    proto: Annotated[Proto, typer.Option("--proto", help="tcp or udp.")] = Proto.tcp,
    endpoint: Annotated[
        str | None, typer.Option("--endpoint", help="Endpoint Envoy picks for a Service VIP (default: the VIP).")
    ] = None,
    app_port: Annotated[
        list[int] | None, typer.Option("--app-port", help="Ports the app listens on (default: --to's port).")
    ] = None,
    proxy_uid: ProxyUid = None,
    proxy_gid: ProxyGid = None,
    listeners: ListenersOpt = None,
    mark: Annotated[
        str | None,
        typer.Option("--mark", help="The first packet's mark (default: 0x539 for ztunnel in an ambient pod, else 0)."),
    ] = None,
    mode: ModeOpt = Mode.auto,
    routing: RoutingOpt = None,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Follow one connection through a saved table and the pod's proxy (Envoy, or ztunnel in ambient mode)."""
    missing = [
        flag
        for flag, value in (("--nat-file", nat_file), ("--pod-ip", pod_ip), ("--from", from_), ("--to", to))
        if value is None
    ]
    if missing:
        raise UsageError(f"missing {', '.join(missing)}: see podnat trace --help")
    assert nat_file is not None and pod_ip is not None and from_ is not None and to is not None
    from podnat.istio.flows import FlowSpec, FlowType, Identity
    from podnat.istio.paths import Outcome, trace_flow

    ruleset, info, ambient = load_for_mode(nat_file, mode)
    pod = _address(pod_ip, "--pod-ip")
    destination = _endpoint(to, "--to")
    ports = tuple(app_port or (destination.port,))
    ctx, context = _offline_context(ruleset, pod, ports, proxy_uid, proxy_gid)
    if ambient:
        ctx, context = _ambient_context(ctx, context)
    first_mark = _mark(mark) if mark is not None else None
    policy_routing = load_routing(routing, ruleset, ambient=ambient)
    _input_notes(info, output)
    if endpoint:
        ctx = ctx.with_endpoint(destination, _endpoint(endpoint, "--endpoint", destination.port))
    actor = from_
    identity = None
    if actor is Actor.APP:
        identity = Identity(1000 if uid is None else uid, gid if gid is not None else (uid or 1000))
    elif actor is Actor.PROXY:
        identity = Identity(ctx.proxy.uid if uid is None else uid, ctx.proxy.gid if gid is None else gid)
    source = _address(src, "--src") if src else (ctx.remote.address if actor is Actor.REMOTE else None)
    spec = FlowSpec(FlowType.LOCAL_TO_REMOTE, "trace", actor, destination, source, identity, proto.value)
    if ambient:
        from podnat.istio.ambient_paths import needs_policy_routing, trace_ambient, without_policy_routing

        result = trace_ambient(ruleset, spec, ctx, routing=policy_routing, mark=first_mark)
        if policy_routing is not None and policy_routing.broken and needs_policy_routing(result, ctx):
            result = without_policy_routing(result, policy_routing, ctx)
    else:
        result = trace_flow(ruleset, spec, ctx, load_listeners(listeners), mark=first_mark or 0)
        if policy_routing is not None and policy_routing.broken:
            from podnat.istio.explain import _without_policy_routing, replies_need_policy_routing

            if replies_need_policy_routing(result, ctx):
                result = _without_policy_routing(result, policy_routing, ctx)
    from podnat.render.data import finding_data
    from podnat.render.emit import TableTrace, emit

    failed = never_installed(info) if info.failed is not None else None
    beside = {
        **({"findings": [finding_data(failed)]} if failed is not None else {}),
        "input": input_data(info),
        "context": context,
    }
    emit(TableTrace(result, ruleset, beside, failed.message if failed is not None else None), output)
    broken = result.outcome in (Outcome.REFUSED, Outcome.LOOP, Outcome.DROPPED) or info.failed is not None
    raise typer.Exit(int(ExitCode.DRIFT if broken else ExitCode.OK))


@app.command()
def explain(
    file: Annotated[Path, typer.Argument(help="iptables-save output of the pod ('-': stdin).")],
    pod_ip: Annotated[str | None, typer.Option("--pod-ip", help="The pod's IP (default 10.99.0.2).")] = None,
    app_port: Annotated[int, typer.Option("--app-port", help="The app's port.")] = 9080,
    remote: Annotated[
        str | None, typer.Option("--remote", help="A remote pod IP[:PORT] (default 10.99.0.1, app port).")
    ] = None,
    service_vip: Annotated[
        str | None, typer.Option("--service-vip", help="This pod's Service VIP[:PORT] (default 10.96.12.3).")
    ] = None,
    istiod: Annotated[str | None, typer.Option("--istiod", help="istiod IP:PORT (default 10.96.0.10:15012).")] = None,
    proxy_uid: ProxyUid = None,
    proxy_gid: ProxyGid = None,
    listeners: ListenersOpt = None,
    args: Annotated[
        str | None, typer.Option("--args", help='istio-init command line, e.g. "istio-iptables -p 15001 ...".')
    ] = None,
    istio_version: Annotated[
        str | None, typer.Option("--istio-version", help="Istio release the --args are from (default: newest).")
    ] = None,
    pod_spec: Annotated[
        Path | None, typer.Option("--pod-spec", help="The pod as `kubectl get pod -o yaml` prints it.")
    ] = None,
    diagram: DiagramOpt = None,
    html: HtmlOpt = None,
    nameserver: Annotated[
        list[str] | None,
        typer.Option("--nameserver", help="The pod's resolver(s), for DNS capture (from its /etc/resolv.conf)."),
    ] = None,
    mode: ModeOpt = Mode.auto,
    routing: RoutingOpt = None,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Explain every flow of a saved table; with --args or --pod-spec, reconcile it with Istio's intent."""
    from podnat.istio.explain import explain as run_explain

    ruleset, info, ambient = load_for_mode(file, mode)
    _input_notes(info, output)
    if ambient:
        _explain_ambient(
            file,
            ruleset,
            info,
            pod_ip,
            app_port,
            remote,
            service_vip,
            pod_spec,
            istio_version,
            args,
            routing,
            diagram,
            html,
            output,
        )
    pod = _address(pod_ip, "--pod-ip") if pod_ip else None
    expected = None
    dns_requested = False
    intent: PodIntent | None = None
    if args is not None or pod_spec is not None:
        from podnat.intent import dns_capture_requested, offline_intent, offline_pod
        from podnat.istio.explain import captured_nameservers

        for address in nameserver or ():
            _address(address, "--nameserver")
        pod_object = offline_pod(_load_pod(pod_spec)) if pod_spec else None
        dns_requested = dns_capture_requested(args, pod_object)
        # Without --nameserver: the resolvers the table redirects are the ones istio-init found.
        nameservers = tuple(nameserver or ()) or (captured_nameservers(ruleset) if dns_requested else ())
        matched: tuple[str, ...] = ()
        if args is not None and pod_object is None and istio_version is None:
            from podnat.intent import best_release_intent

            intent, matched = best_release_intent(ruleset, args, nameservers)
        else:
            intent = offline_intent(
                ruleset.family, args=args, version=istio_version, pod=pod_object, nameservers=nameservers
            )
        expected = intent.expected(ruleset.family)
        if expected is None:
            raise UsageError(f"the configuration installs no {ruleset.family.value} rules (is IPv6 enabled?)")
    where = "pod spec" if pod_spec is not None else "args"
    ctx, context = _offline_context(ruleset, pod, (app_port,), proxy_uid, proxy_gid, intent, where)
    if intent is not None:
        context["release_from"] = (
            "pod spec (proxy image)"
            if pod_spec is not None
            else "flag (--istio-version)"
            if istio_version
            else _best_match_words(matched)
            if matched
            else "default (newest release)"
        )
        if matched and output in (OutputFormat.table, OutputFormat.wide):
            from podnat.render.console import note

            note(f"Istio release: {intent.version}, {_best_match_words(matched)} (give --istio-version to pick)")
    if remote:
        ctx = ctx.replace(remote=_endpoint(remote, "--remote", app_port))
    if service_vip:
        ctx = ctx.replace(service=_endpoint(service_vip, "--service-vip", app_port))
    if istiod:
        ctx = ctx.replace(istiod=_endpoint(istiod, "--istiod", 15012))
    policy_routing = load_routing(routing, ruleset, ambient=False)
    releases = None
    if args is not None and pod_spec is None:
        from podnat.intent import release_variants

        releases = {
            v: rs
            for v, rs in release_variants(ruleset.family, args, nameservers).items()
            if v != (intent.version if intent is not None else None)
        }
    result = run_explain(
        ruleset,
        ctx,
        load_listeners(listeners),
        expected=expected,
        dns_requested=dns_requested,
        policy_routing=policy_routing,
        releases=releases,
    )
    if info.failed is not None:
        from dataclasses import replace

        result = replace(result, findings=(never_installed(info), *result.findings))
    if context["proxy_identity_from"].startswith("table") and ctx.transparent_inbound:
        from dataclasses import replace

        from podnat.istio.explain import Finding, Severity
        from podnat.istio.identity import proxy_identity_in_table

        found = proxy_identity_in_table(ruleset)
        if found is not None and found.uid not in (None, 0):
            result = replace(
                result,
                findings=(
                    *result.findings,
                    Finding(
                        Severity.INFO,
                        f"the table exempts uid {found.uid} and gid {found.gid} ({found.ref}); it captures "
                        f"inbound with TPROXY, and Istio then runs Envoy as uid 0 with gid {context['proxy_gid']}: "
                        "podnat traces Envoy's connections so",
                        (found.ref,),
                    ),
                ),
            )
    _show_explanation(file, result, ruleset, info, context, str(ctx.pod_ip), diagram, html, output)


def _show_explanation(
    file: Path,
    result: Explanation,
    ruleset: Ruleset,
    info: InputInfo,
    context: dict[str, Any],
    pod_ip: str,
    diagram: Path | None,
    html: Path | None,
    output: OutputFormat,
) -> NoReturn:
    """Write the pictures asked for, print the explanation in the chosen form, exit 1 on a failed flow."""
    if diagram is not None:
        from podnat.render.svg import diagram_svg

        write_file(diagram, diagram_svg(result, f"podnat explain {file.name}"))
    if html is not None:
        from podnat.facts import PodRef
        from podnat.render.html import pod_html
        from podnat.report import Explained, FamilyReport

        offline = Explained(
            ref=PodRef("file", file.name),
            pod_ip=pod_ip,
            families=(FamilyReport(family=ruleset.family, explanation=result, ruleset=ruleset),),
            sources={"nat": f"file {file}"},
        )
        write_file(html, pod_html(offline, f"podnat explain {file.name}"))
    from podnat.render.emit import TableExplanation, emit

    emit(TableExplanation(result, ruleset, {"input": input_data(info), "context": context}), output)
    raise typer.Exit(int(ExitCode.DRIFT if result.failed or info.failed is not None else ExitCode.OK))


def _explain_ambient(
    file: Path,
    ruleset: Ruleset,
    info: InputInfo,
    pod_ip: str | None,
    app_port: int,
    remote: str | None,
    service_vip: str | None,
    pod_spec: Path | None,
    istio_version: str | None,
    args: str | None,
    routing: Path | None,
    diagram: Path | None,
    html: Path | None,
    output: OutputFormat,
) -> NoReturn:
    """`podnat explain` of an ambient pod's table: ztunnel's flows; with --pod-spec, istio-cni's intent from
    the pod's annotations (release: --istio-version, else the newest)."""
    from podnat.istio.ambient_paths import explain_ambient

    if args is not None:
        raise UsageError(
            "--args is istio-init's command line, which an ambient pod does not have: pass --pod-spec "
            "(the pod's annotations decide its in-pod rules) and --istio-version"
        )
    pod = _address(pod_ip, "--pod-ip") if pod_ip else None
    ctx, context = _offline_context(ruleset, pod, (app_port,), None, None)
    ctx, context = _ambient_context(ctx, context)
    if remote:
        ctx = ctx.replace(remote=_endpoint(remote, "--remote", app_port))
    if service_vip:
        ctx = ctx.replace(service=_endpoint(service_vip, "--service-vip", app_port))
    expected = None
    if pod_spec is not None:
        expected, release = _ambient_intent(ruleset, _load_pod(pod_spec), istio_version)
        context.update(
            release=release, release_from="flag (--istio-version)" if istio_version else "default (newest release)"
        )
    result = explain_ambient(ruleset, ctx, expected, policy_routing=load_routing(routing, ruleset, ambient=True))
    if info.failed is not None:
        from dataclasses import replace

        result = replace(result, findings=(never_installed(info), *result.findings))
    _show_explanation(file, result, ruleset, info, context, str(ctx.pod_ip), diagram, html, output)


def _ambient_intent(ruleset: Ruleset, pod: dict[str, Any], version: str | None) -> tuple[Ruleset, str]:
    """istio-cni's in-pod rules for a pod's annotations, in the form of the live table (iptables or nft)."""
    from podnat.istio.ambient import AmbientConfig, ambient_expected, ambient_nft_listing
    from podnat.istio.config import NEWEST_SUPPORTED, IstioRelease
    from podnat.netfilter.model import Family
    from podnat.netfilter.nft import parse_nft
    from podnat.netfilter.parse import parse_ruleset

    try:
        release = IstioRelease.parse(version) if version else NEWEST_SUPPORTED
    except ValueError as exc:
        raise UsageError(f"--istio-version: {exc}") from None
    from podnat.intent import offline_pod

    annotations = offline_pod(pod).annotations or {}  # a workload's: its pod template's
    v6 = ruleset.family is Family.IPV6
    nft = any(name.startswith("istio-ambient-") for name in ruleset.tables)
    cfg = AmbientConfig.from_pod_annotations(annotations, release=release, ipv6=v6, native_nftables=nft)
    if nft:
        return parse_nft(ambient_nft_listing(cfg), ruleset.family), str(release)
    rules = ambient_expected(cfg)
    return parse_ruleset((rules.v6 or "") if v6 else rules.v4, ruleset.family), str(release)


def write_file(path: Path, text: str) -> None:
    """Write an output file (SVG, HTML), with a one-line error when it cannot be written."""
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None


def _load_pod(path: Path) -> dict[str, Any]:
    import yaml

    try:
        docs = [d for d in yaml.safe_load_all(read_text(path, "pod spec")) if d]
    except yaml.YAMLError as exc:
        raise BadInput(f"cannot read {path}: not YAML ({str(exc).splitlines()[0]})") from None
    if not docs or not isinstance(docs[0], dict):
        raise BadInput(f"{path} holds no pod: pass `kubectl get pod NAME -o yaml` output")
    return docs[0]


Namespace = Annotated[str | None, typer.Option("--namespace", "-n", help="Namespace (default: the context's).")]
Kubeconfig = Annotated[str | None, typer.Option("--kubeconfig", help="Path to the kubeconfig file.")]
Context = Annotated[str | None, typer.Option("--context", help="The kubeconfig context to use.")]
RequestTimeout = Annotated[
    str | None, typer.Option("--request-timeout", help="Per-request timeout, e.g. 10s, 1m (default 30s).")
]
SourceOpt = Annotated[
    NatSource | None,
    typer.Option(
        "--source",
        help="Read the nat table from: node (podnat's agent on the pod's node, via pods/proxy), "
        "exec (istio-proxy), debug (ephemeral container), init-log (istio-init log: applied at start, "
        "not necessarily live). Default: node, exec, debug (with --debug-container), init-log. A source "
        "named here is the only one read: denied or unavailable, the pod is an error (exit 3) saying what to grant.",
    ),
]
DebugContainer = Annotated[
    bool,
    typer.Option(
        "--debug-container",
        help="Allow an ephemeral debug container (NET_ADMIN) to read the live "
        "table and listeners; it cannot be removed, podnat reuses it. If it cannot be used, the next "
        "source is read and the report says whether the rules are live.",
    ),
]


MaxAge = Annotated[
    float,
    typer.Option(
        "--max-age",
        min=0,
        help="Through the node agent: accept its reading of a pod when checked at most "
        "this many seconds ago (default 0: it checks the pod now, and reads it again if "
        "its namespace changed).",
    ),
]


def _timeout(text: str | None) -> float | None:
    if text is None:
        return None
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit) and text[: -len(unit)].replace(".", "", 1).isdigit():
            return float(text[: -len(unit)]) * units[unit]
    if text.replace(".", "", 1).isdigit():
        return float(text)
    raise UsageError(f"--request-timeout: {text!r} is not a duration (e.g. 10s, 1m)")


DebugImage = Annotated[
    str | None,
    typer.Option(
        "--debug-image",
        help="The debug container's image for pods without istio-proxy (ambient pods): "
        "one with sh, iptables-save, nft and ip, e.g. Istio's proxyv2 (with --debug-container).",
    ),
]


def _connect(
    kubeconfig: str | None, context: str | None, request_timeout: str | None, debug_image: str | None = None
) -> tuple[KubeCluster, LiveSource, str]:
    """The cluster (the Kubernetes API behind the port), the use cases' source over it, the default namespace."""
    cluster, default_ns = _cluster(kubeconfig, context, request_timeout)
    from podnat.sources import LiveSource

    return cluster, LiveSource(cluster, debug_image=debug_image), default_ns


def _cluster(kubeconfig: str | None, context: str | None, request_timeout: str | None) -> tuple[KubeCluster, str]:
    """The cluster and the default namespace, without the source policy (verify loads it once its first
    requests are on the wire)."""
    from podnat.kube.client import KubeClient, KubeOptions, context_namespace
    from podnat.kube.cluster import KubeCluster

    options = KubeOptions(kubeconfig=kubeconfig, context=context, request_timeout=_timeout(request_timeout))
    return KubeCluster(KubeClient.connect(options)), context_namespace(options)


@app.command()
def inspect(
    pod: Annotated[str, typer.Argument(help="POD, deploy/NAME or POD.NAMESPACE.")],
    namespace: Namespace = None,
    source: SourceOpt = None,
    debug_container: DebugContainer = False,
    debug_image: DebugImage = None,
    max_age: MaxAge = 0.0,
    diagram: DiagramOpt = None,
    html: HtmlOpt = None,
    probe: Annotated[
        bool,
        typer.Option(
            "--probe",
            help="Also make one real connection per flow podnat can start inside the pod "
            "and show the counted path beside the predicted one (uses --debug-container).",
        ),
    ] = False,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
    request_timeout: RequestTimeout = None,
    output: OutputOpt = OutputFormat.table,
) -> None:
    """Explain one live pod: each flow's path through its rules and Envoy, what Istio meant, what differs."""
    from podnat.facts import PodRef
    from podnat.report import Failed
    from podnat.usecases import inspect_pod

    cluster, pod_source, default_ns = _connect(kubeconfig, context, request_timeout, debug_image)
    cluster.agents.max_age = max_age
    nat_source = source
    if nat_source is NatSource.DEBUG:
        debug_container = True
    from podnat.istio.pod import PodSpecError, read_pod

    try:  # read once: inspect and --probe share the PodInfo
        manifest = read_pod(pod_source.get_pod(PodRef(namespace or default_ns, pod)))
    except PodSpecError as exc:
        raise BadInput(str(exc)) from None
    from podnat.namespaces import NamespaceLabels

    report = inspect_pod(pod_source, manifest, nat_source, debug_container or probe, NamespaceLabels(cluster))
    if probe:
        from podnat.usecases import probe_report

        report = probe_report(cluster, manifest, report)
    from podnat.render.emit import emit, explanation_to_draw

    if diagram is not None:
        from podnat.render.svg import diagram_svg

        explanation = explanation_to_draw(report, f"not a sidecar pod ({report.mesh})")
        write_file(diagram, diagram_svg(explanation, str(report.ref)))
    if html is not None:
        from podnat.render.html import pod_html

        write_file(html, pod_html(report))
    emit(report, output)
    if isinstance(report, Failed):
        if output in (OutputFormat.table, OutputFormat.wide):
            from podnat.render.console import error as print_error

            print_error(report.error)
        raise typer.Exit(int(report.error_code or ExitCode.CLUSTER))
    raise typer.Exit(int(ExitCode.DRIFT if report.status.failing else ExitCode.OK))


@app.command()
def verify(
    namespace: Namespace = None,
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A", help="Every namespace.")] = False,
    selector: Annotated[str | None, typer.Option("--selector", "-l", help="Label selector, e.g. app=reviews.")] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, max=64, help="Pods read at once.")] = 16,
    source: SourceOpt = None,
    debug_container: DebugContainer = False,
    debug_image: DebugImage = None,
    max_age: MaxAge = 0.0,
    html: HtmlOpt = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
    request_timeout: RequestTimeout = None,
    output: VerifyOutputOpt = OutputFormat.table,
) -> None:
    """Check every sidecar and ambient pod: exit 0 all ok, 1 drift or broken, 3 some pods could not be read."""
    if all_namespaces and namespace:
        raise UsageError("give --namespace or --all-namespaces, not both")
    cluster, default_ns = _cluster(kubeconfig, context, request_timeout)
    where = None if all_namespaces else (namespace or default_ns)
    from podnat.namespaces import NamespaceLabels

    namespaces = NamespaceLabels(cluster)
    nat_source = source
    cluster.agents.max_age = max_age
    if nat_source in (None, NatSource.NODE):
        # the agents where this scope's pods were at the last run, asked now, beside the lists (agentcache.py)
        cluster.agents.ask_ahead(where, selector, lean=html is None)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=3) as pool:  # three reads that need nothing of each other, at once
        if nat_source in (None, NatSource.NODE):
            pool.submit(cluster.agents.agents)  # the podnat agents (kept; never raises)
        # A namespace that does not exist: exit 3. The same read gives its labels to the pods that need them.
        checked = pool.submit(namespaces.check, where) if where is not None else None
        listed = pool.submit(cluster.list_pods, where, selector)
        # loaded while the requests are on the wire
        from podnat.render.emit import verify_progress
        from podnat.sources import LiveSource
        from podnat.usecases import read_pods, verify_pods

        pod_source = LiveSource(cluster, debug_image=debug_image)

        unchecked = checked.result() if checked is not None else None
        listed_pods = listed.result()
        # one request per node with a podnat agent (unless asked early and answered by the agent still there);
        # the tables only of the pods whose report verify cannot take as it is, unless the page draws each
        # flow's trace (--html)
        asked = (
            pool.submit(cluster.prefetch, listed_pods, html is None) if nat_source in (None, NatSource.NODE) else None
        )
        pods = read_pods(listed_pods)  # each pod's spec read while the agents answer
        if asked is not None:
            asked.result()
    with verify_progress(len(pods)) as progress:
        report = verify_pods(
            lambda: pod_source,
            pods,
            concurrency,
            nat_source,
            debug_container or nat_source is NatSource.DEBUG,
            progress.advance,
            namespaces,
            relay=html is None,  # the agent's reports as they are; the page draws each flow's trace
            at_hand=cluster.agents.at_hand if nat_source in (None, NatSource.NODE) else None,
        )
    if html is not None:
        from podnat.render.html import verify_html

        write_file(html, verify_html(report))
    from podnat.render.emit import emit

    emit(report, output)
    from podnat.report import PodStatus

    nothing_checked = all(p.status is PodStatus.SKIPPED for p in report.pods)
    if unchecked is not None or nothing_checked:
        from podnat.render.console import warning

        scope = (where or "any namespace") + (f" matching {selector}" if selector else "")
        if unchecked is not None:
            warning(f"{unchecked}: a mistyped namespace shows as one without pods")
        if not pods:
            warning(f"no pods to verify in {scope}")
        elif nothing_checked:
            warning(f"nothing verified: none of the {len(pods)} pods in {scope} has sidecar or ambient rules to check")
    raise typer.Exit(int(report.exit_code))


@app.command()
def agent(
    node: Annotated[
        str | None, typer.Option("--node", envvar="NODE_NAME", help="This node's name (DaemonSet: spec.nodeName).")
    ] = None,
    proc: Annotated[Path, typer.Option("--proc", help="The node's /proc (mounted read-only).")] = Path("/host/proc"),
    interval: Annotated[float, typer.Option("--interval", min=0.1, help="Seconds between full sweeps.")] = 60.0,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, max=64, help="Pods read at once.")] = 4,
    address: Annotated[
        str, typer.Option("--address", envvar="POD_IP", help="Address to serve on (default: the pod IP, $POD_IP).")
    ] = "0.0.0.0",
    port: Annotated[int, typer.Option("--port", help="HTTP port (/metrics, /v1/pods, /healthz, /readyz).")] = 9477,
    events: Annotated[bool, typer.Option("--events/--no-events", help="Record Events on drift/broken pods.")] = True,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
    request_timeout: RequestTimeout = None,
) -> None:
    """Run the node agent: read every pod of this node from /proc, continuously, and export it."""
    import logging

    if not node:
        raise UsageError("--node (or $NODE_NAME) is required: the agent keeps the pods of one node")
    if not (proc / "1" / "ns").is_dir():
        raise UsageError(f"--proc {proc} is not a /proc with processes (mount the node's /proc there)")
    logging.basicConfig(
        level=logging.DEBUG if _debug else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    from podnat.agent.main import run_agent
    from podnat.agent.service import AgentConfig
    from podnat.kube.client import KubeClient, KubeOptions

    client = KubeClient.connect(
        KubeOptions(kubeconfig=kubeconfig, context=context, request_timeout=_timeout(request_timeout))
    )
    config = AgentConfig(node=node, interval=interval, concurrency=concurrency)
    raise typer.Exit(run_agent(config, client, proc, address, port, events))


@app.command()
def version() -> None:
    """Print podnat's version."""
    typer.echo(f"podnat {__version__}")


def _mount_subcommands() -> None:
    try:
        from podnat.lab.commands import app as lab_app
    except ImportError:
        return
    app.add_typer(
        lab_app, name="lab", help="A local lab: real pods (netns, Istio's rules, a real Envoy) behind a Kubernetes API."
    )


_mount_subcommands()


def _for_argv(argv: list[str]) -> typer.Typer:
    """The app as typer should build it for this command line: when it names a command, that command
    alone (typer reads each command's signature into click parameters when the app runs, ~2 ms a
    command); else every command, for the help that lists them. Usage, help and errors of the named
    command are the same either way."""
    import copy

    from typer.main import get_command_name

    name = argv[1] if len(argv) > 1 else None
    commands = [
        c
        for c in app.registered_commands
        if (c.name or (get_command_name(c.callback.__name__) if c.callback is not None else None)) == name
    ]
    groups = [g for g in app.registered_groups if g.name == name]
    if not commands and not groups:
        return app
    only = copy.copy(app)
    only.registered_commands, only.registered_groups = commands, groups
    return only


def main() -> None:
    """Entry point for `podnat` and `kubectl-podnat`."""
    # One command, then exit: the cyclic collector stays off. Tables of 100,000 rules are built without
    # reference cycles, and the collector's passes over them were 40% of a parse; reference counting
    # frees what is dropped. The node agent, which runs for weeks, turns it back on (agent/main.py).
    gc.disable()
    try:
        _for_argv(sys.argv)()
    except PodnatError as exc:  # raised outside a command (the commands' own are _Commands')
        from podnat.render.console import error

        error(exc.message)
        sys.exit(int(exc.code))
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if _debug or os.environ.get("PODNAT_DEBUG"):
            raise
        from podnat.render.console import error

        error(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug and report it)")
        sys.exit(int(ExitCode.INTERNAL))
    finally:
        gc.freeze()  # what the command built: the interpreter's last collection at exit need not walk it
