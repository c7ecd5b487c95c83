"""`podnat inspect POD --probe`: make one real connection per flow podnat can start inside the pod,
and report the path the kernel counted beside the path podnat predicted.

Opt-in, and only with the debug container (it reads the counters). What is sent: from the app
container (as its own user) to its own pod IP and to another Service of the mesh (a VIP one of the
pod's own Envoy listeners names), from istio-proxy (uid 1337) to Envoy's admin port (via pilot-agent)
and to istiod. Every connection is bounded (3 s) and goes only to the pod itself, its Services or
istiod. Types 1 and 3 start outside the pod and are not probed.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from podnat.envoy.listeners import Listener, ListenerKind
from podnat.facts import Cluster, PodRef
from podnat.istio.actor import Actor
from podnat.istio.flows import Endpoint, FlowSpec, FlowType, Identity, PodContext
from podnat.istio.paths import trace_flow
from podnat.istio.pod import PROXY_CONTAINER as PROXY
from podnat.istio.pod import pod_info
from podnat.netfilter.nft import detect_and_parse

DEBUG_CONTAINER = "podnat-debug"
TIMEOUT = 3


@dataclass(frozen=True, slots=True)
class ProbeObservation:
    """One real connection: what was sent, the rules the kernel counted, the rules podnat predicted."""

    flow: int
    variant: str | None
    sent: str
    observed: tuple[str, ...]
    predicted: tuple[str, ...]
    error: str | None = None

    @property
    def matches(self) -> bool:
        return self.error is None and Counter(self.observed) == Counter(self.predicted)


def _rules(trace: Any) -> tuple[str, ...]:
    return tuple(ref for leg in trace.legs for ref in leg.rules)


def _connect_script(address: str, port: int) -> list[str]:
    url = f"http://{address}:{port}/" if ":" not in address else f"http://[{address}]:{port}/"
    python = f"import socket; socket.create_connection(({address!r}, {port}), {TIMEOUT}).close()"
    # Exactly one connection: curl when the image has it, else python3 (never both: a retry would count twice).
    return [
        "sh",
        "-c",
        f"if command -v curl >/dev/null; then curl -s -o /dev/null -m {TIMEOUT} {url}; "
        f'else python3 -c "{python}"; fi; true',
    ]


def _counters(cluster: Cluster, ref: PodRef, save: str) -> tuple[str, Counter[str]]:
    result = cluster.exec(ref, DEBUG_CONTAINER, [save, "-c"])
    ruleset = detect_and_parse(result.stdout)
    counts = Counter(
        {
            rule.ref: rule.counters.packets
            for table in ruleset.tables.values()
            for rule in table.rules()
            if rule.counters is not None
        }
    )
    return result.stdout, counts


def probe_pod(
    cluster: Cluster,
    pod: Mapping[str, Any],
    ctx: PodContext,
    listeners: tuple[Listener, ...] | None,
    legacy: bool = False,
    save: str | None = None,
) -> tuple[ProbeObservation, ...]:
    """Send each probe and compare the counted rules with the predicted ones; `save` is the
    iptables-save the table was read with (default: the legacy or the unqualified one)."""
    ref = PodRef(pod["metadata"]["namespace"], pod["metadata"]["name"])
    app = pod_info(pod).app
    if app is None:  # nothing but istio-proxy: no app to probe from
        return ()
    app_uid = app.run_as_user or ctx.app.uid
    app_identity = Identity(app_uid, app_uid)
    own = Endpoint(ctx.pod_ip, ctx.app_port)
    probes: list[tuple[FlowType, str | None, str, list[str], FlowSpec, PodContext]] = [
        (
            FlowType.LOCAL_TO_LOCAL,
            "own-pod-ip",
            app.name,
            _connect_script(str(own.address), own.port),
            FlowSpec(FlowType.LOCAL_TO_LOCAL, "", Actor.APP, own, identity=app_identity),
            ctx,
        ),
        (
            FlowType.ENVOY_LOCALHOST,
            None,
            PROXY,
            ["pilot-agent", "request", "GET", "ready"],
            FlowSpec(FlowType.ENVOY_LOCALHOST, "", Actor.PROXY, ctx.admin, identity=ctx.proxy),
            ctx,
        ),
    ]
    service = next(
        (
            listener
            for listener in listeners or ()
            if listener.kind is ListenerKind.SERVICE and listener.address not in ("0.0.0.0", "::")
        ),
        None,
    )
    if service is not None:
        vip = Endpoint(ipaddress.ip_address(service.address), service.port)
        peer = ctx.with_endpoint(vip, Endpoint(ctx.remote.address, service.port))
        probes.append(
            (
                FlowType.LOCAL_TO_REMOTE,
                None,
                app.name,
                _connect_script(service.address, service.port),
                FlowSpec(FlowType.LOCAL_TO_REMOTE, "", Actor.APP, vip, identity=app_identity),
                peer,
            )
        )
    probes.append(
        (
            FlowType.SIDECAR_TO_ISTIOD,
            None,
            PROXY,
            ["sh", "-c", f"curl -sk -o /dev/null -m {TIMEOUT} https://istiod.istio-system.svc:15012/ || true"],
            FlowSpec(FlowType.SIDECAR_TO_ISTIOD, "", Actor.PROXY, ctx.istiod, identity=ctx.proxy),
            ctx,
        )
    )
    save = save or ("iptables-legacy-save" if legacy else "iptables-save")
    observations = []
    for probed_flow, variant, container, argv, spec, context in probes:
        flow = probed_flow
        sent = f"{container} -> {spec.destination if flow is not FlowType.SIDECAR_TO_ISTIOD else 'istiod:15012'}"
        try:
            text, before = _counters(cluster, ref, save)
            cluster.exec(ref, container, argv)
            _, after = _counters(cluster, ref, save)
        except Exception as exc:  # one probe's failure is reported, never fatal
            observations.append(ProbeObservation(int(flow), variant, sent, (), (), f"{type(exc).__name__}: {exc}"))
            continue
        observed = tuple(ref_ for ref_ in after for _ in range(after[ref_] - before.get(ref_, 0)))
        table = detect_and_parse(text)
        predicted = _rules(trace_flow(table, spec, context, listeners))
        if flow is FlowType.LOCAL_TO_REMOTE and Counter(observed) != Counter(predicted):
            # The Service may be the pod's own (its endpoint is this pod): that is flow type 4.
            own_service = _rules(trace_flow(table, spec, ctx.with_endpoint(spec.destination, own), listeners))
            if Counter(observed) == Counter(own_service):
                flow, predicted, sent = FlowType.LOCAL_TO_LOCAL, own_service, sent + " (its own Service)"
        order = {ref_: index for index, ref_ in reversed(list(enumerate(predicted)))}
        observed = tuple(sorted(observed, key=lambda r: order.get(r, len(predicted))))
        observations.append(ProbeObservation(int(flow), variant, sent, observed, predicted))
    return tuple(observations)
