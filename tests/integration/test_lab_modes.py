"""Predictions equal what the kernel does in every capture setup the lab can start (`--mode`).

For each mode, a small lab (details and ratings) and, per pod, IP family and flow type, one real
connection from the right identity. What podnat predicts comes from the path it really uses: the
pod as the lab's API serves it (so the intent says TPROXY, DNS capture or dual-stack), the live
table read through the API from podnat's debug container, the context `podnat inspect` builds
(`pod_context`, e.g. Envoy as uid 0 / gid 1337 in TPROXY mode), traced by `trace_flow`.
What the kernel did is read three ways:

- nftables' packet trace of each connection's first packet (`first_packets`): the rules it matched,
  in every table, in order, and in which IP family; it must equal podnat's legs, rule for rule;
- the rule counters, read through the API before and after: nat counts only first packets, so its
  counters must equal the prediction exactly (as many times as the legs cross a rule); mangle and
  raw count every packet of the connection, so each rule podnat predicts there must have counted;
- Envoy's listener totals, which must move for exactly the predicted Envoy ports.

Then what each mode is for: in TPROXY the app sees the real client and the fwmark route is there;
dual-stack pods list both addresses and their IPv6 inbound leg comes from ::6; with DNS capture a
real UDP and TCP query is answered by pilot-agent's proxy; and `podnat inspect` reads each pod as
that mode (capture mode, IPv6 table, DNS flow) with every flow ok.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Lab, listening, require, running_lab

from podnat.facts import PodRef
from podnat.istio.explain import captured_nameserver
from podnat.istio.flows import Actor, Endpoint, FlowSpec, FlowType, Identity, PodContext, dns_flows
from podnat.istio.paths import FlowTrace, Outcome, trace_flow
from podnat.netfilter.model import Family, Ruleset
from podnat.netfilter.nft import detect_and_parse

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.timeout(600)]

MODES = ("tproxy", "nftables", "dual-stack", "dns")
DEPLOYMENTS = ("details-v1", "ratings-v1")
APP_PORT = 9080
ADMIN_PORT = 15000


@pytest.fixture(scope="module", params=MODES)
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    require(shutil.which("nft") is not None, "needs nft for packet tracing (make install)")
    with running_lab(
        Path(f"/run/podnat-lab-modes-{request.param}"), "nft", mode=request.param, deployments=DEPLOYMENTS
    ) as lab:
        yield lab


# --- one flow: what podnat predicts, what the kernel did ---------------------------------------------


@dataclass(frozen=True)
class Probe:
    """One real connection for one flow: the flow, how to make it, and podnat's context for it."""

    name: str
    spec: FlowSpec
    url: str  # http://..., tcp://IP:PORT (connect only), or dns://udp|tcp (a query to the resolver)
    netns: str
    who: Identity | None  # None: root (a remote peer's namespace)
    ctx: PodContext


def _api_pod(lab: Lab, pod) -> dict[str, Any]:
    return lab.source.get_pod(PodRef(pod.namespace, pod.name))


def _context(lab: Lab, pod, address: str) -> PodContext:
    """The context `podnat inspect` builds for this pod and address (intent from the served pod)."""
    from podnat.intent import intent_for_pod
    from podnat.usecases import pod_context

    return pod_context(address, intent_for_pod(_api_pod(lab, pod)), dual_stack=lab.state.mode == "dual-stack")


def _probes(lab: Lab, pod, family: int, live: Ruleset) -> list[Probe]:
    state = lab.state
    v6 = family == 6
    own = pod.ip6 if v6 else pod.ip
    other = next(p for p in state.pods if p.name != pod.name)
    labels = pod.manifest["metadata"]["labels"]
    vip = (state.services6 if v6 else state.services)[labels["app"]]
    node = state.peers["node6" if v6 else "node"]
    istiod = state.peers["istiod6" if v6 else "istiod"]
    ctx = _context(lab, pod, own)
    app, proxy = ctx.app, ctx.proxy

    def at(address: str, port: int) -> Endpoint:
        return Endpoint(ipaddress.ip_address(address), port)

    def url(address: str, port: int, path: str) -> str:
        return f"http://{at(address, port)}{path}"

    node_ns = f"{state.netns_prefix}node"
    # Type 5 over IPv6 goes to pilot-agent (listening on ::): Envoy's admin is on 127.0.0.1 only, as
    # Istio's bootstrap puts it for IPv4 and dual-stack pods.
    loopback = at("::1", 15020) if v6 else at("127.0.0.1", ADMIN_PORT)
    probes = [
        Probe(
            "1-remote-to-local",
            FlowSpec(FlowType.REMOTE_TO_LOCAL, "", Actor.REMOTE, at(own, APP_PORT), ipaddress.ip_address(node)),
            url(own, APP_PORT, "/health"),
            node_ns,
            None,
            ctx,
        ),
        Probe(
            "2-local-to-remote",
            FlowSpec(
                FlowType.LOCAL_TO_REMOTE, "", Actor.APP, at(other.ip6 if v6 else other.ip, APP_PORT), identity=app
            ),
            url(other.ip6 if v6 else other.ip, APP_PORT, "/health"),
            pod.netns,
            app,
            ctx,
        ),
        Probe(
            "3-prometheus",
            FlowSpec(FlowType.PROMETHEUS_TO_LOCAL, "", Actor.REMOTE, at(own, 15090), ipaddress.ip_address(node)),
            url(own, 15090, "/stats/prometheus"),
            node_ns,
            None,
            ctx,
        ),
        Probe(
            "4-own-service",
            FlowSpec(FlowType.LOCAL_TO_LOCAL, "", Actor.APP, at(vip, APP_PORT), identity=app),
            url(vip, APP_PORT, "/health"),
            pod.netns,
            app,
            ctx.with_endpoint(at(vip, APP_PORT), at(own, APP_PORT)),
        ),
        Probe(
            "4-own-pod-ip",
            FlowSpec(FlowType.LOCAL_TO_LOCAL, "", Actor.APP, at(own, APP_PORT), identity=app),
            url(own, APP_PORT, "/health"),
            pod.netns,
            app,
            ctx,
        ),
        Probe(
            "5-proxy-localhost",
            FlowSpec(FlowType.ENVOY_LOCALHOST, "", Actor.PROXY, loopback, identity=proxy),
            f"tcp://{loopback}".replace("[", "").replace("]", ""),
            pod.netns,
            proxy,
            ctx,
        ),
        Probe(
            "6-istiod",
            FlowSpec(FlowType.SIDECAR_TO_ISTIOD, "", Actor.PROXY, at(istiod, 15012), identity=proxy),
            f"tcp://{istiod}:15012",
            pod.netns,
            proxy,
            ctx,
        ),
    ]
    nameserver = captured_nameserver(live)
    if nameserver is not None:  # DNS capture: podnat's seventh flow, over UDP and TCP
        dns_ctx = ctx.replace(nameserver=nameserver)
        probes += [
            Probe(f"7-dns-{spec.proto}", spec, f"dns://{spec.proto}", pod.netns, app, dns_ctx)
            for spec in dns_flows(dns_ctx)
        ]
    return probes


@dataclass(frozen=True)
class Observation:
    answered: bool
    detail: str
    traced: list[tuple[int, str]]  # (IP version, rule) for every rule each first packet matched, in order
    counted: dict[int, Counter[str]]  # IP version -> rule -> packets counted during the connection
    ports: Counter[int]  # Envoy ports whose listener totals moved


def _tables(lab: Lab, pod) -> dict[int, str]:
    """The pod's live tables with counters, read through the API in podnat's debug container."""
    from podnat.lab.probe import nat_counters

    ref = PodRef(pod.namespace, pod.name)
    # TPROXY's istio-proxy is root with NET_ADMIN: podnat reads the table there (no debug container).
    container = "istio-proxy" if lab.state.mode == "tproxy" else "podnat-debug"
    if lab.state.mode == "nftables":  # Istio's own inet tables: `nft list ruleset` (counters since 1.28)
        return {4: nat_counters(lab.source.cluster, ref, container, save="nft")[0]}
    tables = {4: nat_counters(lab.source.cluster, ref, container, save="iptables-nft-save")[0]}
    if pod.ip6:
        tables[6] = nat_counters(lab.source.cluster, ref, container, save="ip6tables-nft-save")[0]
    return tables


def _counters(text: str) -> dict[str, int]:
    from podnat.lab.probe import parse_counters

    return parse_counters(text)


def observe(lab: Lab, pod, probe: Probe) -> Observation:
    from podnat.lab.probe import connect, dns_query, envoy_ports_moved, first_packets, listener_connections

    stats_before = listener_connections(pod.netns)
    before = {family: _counters(text) for family, text in _tables(lab, pod).items()}
    who = probe.who
    with first_packets(pod.netns) as packets:
        if probe.url.startswith("dns://"):
            vip = lab.state.services["details"]
            try:
                answer = dns_query(
                    probe.netns,
                    str(probe.spec.destination.address),
                    "details.bookinfo.svc.cluster.local",
                    probe.spec.proto,
                    who.uid if who else None,
                )
            except RuntimeError as exc:
                answered, detail = False, str(exc)
            else:
                answered, detail = answer == [vip], f"answered {answer}, expected [{vip}]"
        else:
            result = connect(probe.netns, probe.url, who.uid if who else None, who.gid if who else None)
            answered, detail = result.answered, f"curl {result.returncode}"
    after = {family: _counters(text) for family, text in _tables(lab, pod).items()}
    stats_after = listener_connections(pod.netns)
    counted = {
        family: Counter(
            {
                ref: after[family][ref] - before[family].get(ref, 0)
                for ref in after[family]
                if after[family][ref] > before[family].get(ref, 0)
            }
        )
        for family in after
    }
    traced = [(packet.family, ref) for packet in packets for ref in packet.rules]
    return Observation(answered, detail, traced, counted, envoy_ports_moved(stats_before, stats_after))


def _leg_family(leg) -> int:
    """The IP family a leg's connection uses: its destination's. Envoy's Prometheus listener fetches
    from its admin port, which Istio's bootstrap puts on 127.0.0.1 in IPv4 and dual-stack pods: that
    leg is IPv4 even when the scrape came over IPv6, and podnat follows it in the IPv4 table."""
    return leg.dst.address.version


def _is_nat(ref: str) -> bool:
    """podnat writes iptables' nat rules CHAIN:N, native nftables' `istio-proxy-nat/chain:N`."""
    return "/" not in ref or ref.startswith("istio-proxy-nat/")


def first_packet_problems(
    where: str, answered: bool, predicted: FlowTrace, traced: list[str], want: list[str]
) -> list[str]:
    """An ambient connection's check: it was answered, podnat predicted it delivered, and its first packets
    matched podnat's legs rule for rule."""
    problems = []
    if not answered:
        problems.append(f"{where}: the connection failed")
    if predicted.outcome is not Outcome.DELIVERED:
        problems.append(f"{where}: podnat predicted {predicted.outcome.value}: {predicted.reason}")
    if traced != want:
        problems.append(f"{where}: first packets matched {traced}\n      podnat predicted {want}")
    return problems


def compare(lab: Lab, probe: Probe, seen: Observation, predicted: FlowTrace) -> list[str]:
    """What differs between podnat's prediction and what the kernel and Envoy did (empty: nothing)."""
    problems = []
    if not seen.answered:
        problems.append(f"the connection failed ({seen.detail})")
    if predicted.outcome is not Outcome.DELIVERED:
        problems.append(f"podnat predicted {predicted.outcome.value}: {predicted.reason}")
    want = [(_leg_family(leg), ref) for leg in predicted.legs for ref in leg.rules]
    if seen.traced != want:
        problems.append(f"first packets matched {seen.traced}\n      podnat predicted {want}")
    for family, counted in seen.counted.items():
        nat_want = Counter(ref for fam, ref in want if fam == family and _is_nat(ref))
        nat_seen = Counter({ref: n for ref, n in counted.items() if _is_nat(ref)})
        if nat_seen != nat_want:
            problems.append(f"IPv{family} nat counted {dict(nat_seen)}, podnat predicted {dict(nat_want)}")
        silent = [ref for fam, ref in want if fam == family and not _is_nat(ref) and ref not in counted]
        if silent:
            problems.append(f"IPv{family}: predicted rules that did not count: {silent}")
    if seen.ports != Counter(predicted.envoy_ports):
        problems.append(f"Envoy listeners moved {dict(seen.ports)}, predicted {list(predicted.envoy_ports)}")
    return problems


def test_every_flow_counts_and_traces_exactly_the_predicted_rules(lab: Lab) -> None:
    failures: list[str] = []
    checked: Counter[str] = Counter()
    for pod in lab.state.pods:
        tables = _tables(lab, pod)
        parsed = {
            family: detect_and_parse(text, Family.IPV4 if family == 4 else Family.IPV6)
            for family, text in tables.items()
        }
        for family, live in parsed.items():
            other = next((table for f, table in parsed.items() if f != family), None)
            for probe in _probes(lab, pod, family, live):
                seen = observe(lab, pod, probe)
                predicted = trace_flow(live, probe.spec, probe.ctx, other=other)
                checked[probe.name[:1]] += 1
                failures += [f"{pod.name} IPv{family} {probe.name}: {p}" for p in compare(lab, probe, seen, predicted)]
    families = 2 if lab.state.mode == "dual-stack" else 1
    expected = {str(t): families * len(lab.state.pods) for t in range(1, 7)} | {"4": 2 * families * len(lab.state.pods)}
    if lab.state.mode == "dns":
        expected["7"] = 2 * len(lab.state.pods)  # UDP and TCP
    assert dict(checked) == expected
    assert not failures, "\n".join(failures)


# --- what each mode is for ----------------------------------------------------------------------------


def podnat(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "KUBECONFIG": lab.state.apiserver.kubeconfig,
        "HOME": str(lab.root),
        "PATH": "/usr/sbin:/usr/bin:/bin",
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "podnat", *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def _inspect(lab: Lab, pod, *flags: str, exit_code: int = 0) -> dict[str, Any]:
    if lab.state.mode != "tproxy":  # TPROXY's istio-proxy is root with NET_ADMIN: podnat reads the table there
        flags = (*flags, "--debug-container")
    result = podnat(lab, "inspect", pod.name, "-n", "bookinfo", *flags, "-o", "json")
    assert result.returncode == exit_code, result.stdout[-2000:] + result.stderr
    return dict(json.loads(result.stdout))


def test_the_mode_is_what_the_pods_show(lab: Lab) -> None:
    from podnat.lab.probe import connect

    mode = lab.state.mode
    status = json.loads(
        subprocess.run(
            [sys.executable, "-m", "podnat", "lab", "status", "-o", "json", "--root", str(lab.root)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    )
    assert status["mode"] == mode
    node_ns = f"{lab.state.netns_prefix}node"
    for pod in lab.state.pods:
        served = _api_pod(lab, pod)
        init = next(c for c in served["spec"]["initContainers"] if c["name"] == "istio-init")
        env = {e["name"]: e["value"] for e in init.get("env") or []}
        client = connect(node_ns, f"http://{pod.ip}:9080/health").json()["client"]
        if mode == "tproxy":
            assert served["metadata"]["annotations"]["sidecar.istio.io/interceptionMode"] == "TPROXY"
            assert init["args"][init["args"].index("-m") + 1] == "TPROXY"
            rules = subprocess.run(
                ["ip", "netns", "exec", pod.netns, "ip", "rule"], capture_output=True, text=True, check=True
            ).stdout
            assert "fwmark 0x539 lookup 133" in rules
            assert client == lab.state.peers["node"]  # original_src: the app sees the real client
        else:
            assert client == "127.0.0.6"  # Envoy's inbound leg
        if mode == "dual-stack":
            assert env["ISTIO_DUAL_STACK"] == "true"
            assert [a["ip"] for a in served["status"]["podIPs"]] == [pod.ip, pod.ip6]
            assert connect(node_ns, f"http://[{pod.ip6}]:9080/health").json()["client"] == "::6"
        if mode == "dns":
            assert env["ISTIO_META_DNS_CAPTURE"] == "true"


def test_podnat_inspect_reads_each_pod_as_its_mode(lab: Lab) -> None:
    mode = lab.state.mode
    for pod in lab.state.pods:
        report = _inspect(lab, pod)
        if mode == "nftables":  # iptables-save prints nothing: podnat reads `nft list ruleset`
            assert "nft -j list ruleset" in report["sources"]["nat"]  # JSON: this host's nft has it
            assert all(r.startswith("istio-proxy-nat/") for f in report["flows"] for r in f["legs"][0]["rules"])
        if mode == "tproxy":
            assert report["pod"]["capture_mode"] == "TPROXY"
            assert report["sources"]["nat"].startswith("exec istio-proxy")
            inbound = next(f for f in report["flows"] if f["type"] == 1)
            assert inbound["legs"][0]["verdict"] == "TPROXY" and inbound["envoy_ports"] == [15006]
        families = [report] + ([report["second_family"]] if "second_family" in report else [])
        if mode == "dual-stack":
            assert len(families) == 2 and report["second_family"]["family"] == "ipv6"
        for data in families:
            assert {f["status"] for f in data["flows"]} == {"ok"}, [
                (f["type"], f.get("variant"), f["status"]) for f in data["flows"]
            ]
        if mode == "dns":
            dns = [f for f in report["flows"] if f["type"] == 7]
            assert sorted(f["variant"] for f in dns) == ["tcp", "udp"]


def _flow(report: dict[str, Any], flow_type: int, variant: str | None = None) -> dict[str, Any]:
    return next(f for f in report["flows"] if f["type"] == flow_type and f.get("variant") == variant)


def _in(netns: str, *argv: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, check=True, timeout=30
    ).stdout


def test_after_a_fault_podnat_says_what_the_connection_did(lab: Lab) -> None:
    """Runs last for each mode: it breaks the first pod the way that mode's pods break."""
    from podnat.lab.probe import connect, dns_query

    mode = lab.state.mode
    pod = lab.state.pods[0]
    node_ns = f"{lab.state.netns_prefix}node"
    if mode == "tproxy":
        # Without the fwmark rule the app's replies to the client's address leave by eth0: no answer.
        _in(pod.netns, "ip", "rule", "del", "fwmark", "1337", "lookup", "133")
        assert not connect(node_ns, f"http://{pod.ip}:9080/health", timeout=2).answered
        report = _inspect(lab, pod, exit_code=1)
        assert _flow(report, 1)["status"] == "broken"
        assert any("fwmark" in f["message"] for f in report["findings"]), report["findings"]
    elif mode == "nftables":
        # No jump from nat prerouting: inbound bypasses Envoy (the app sees the node, not 127.0.0.6).
        listing = _in(pod.netns, "nft", "-a", "list", "chain", "inet", "istio-proxy-nat", "prerouting")
        handle = next(line.rsplit("# handle ", 1)[1] for line in listing.splitlines() if "jump istio-inbound" in line)
        _in(pod.netns, "nft", "delete", "rule", "inet", "istio-proxy-nat", "prerouting", "handle", handle.strip())
        assert connect(node_ns, f"http://{pod.ip}:9080/health").json()["client"] == lab.state.peers["node"]
        flow = _flow(_inspect(lab, pod, exit_code=1), 1)
        assert flow["status"] == "drift" and flow["envoy_ports"] == [] and flow["expected"]["envoy_ports"] == [15006]
    elif mode == "dual-stack":
        # The IPv6 table loses its PREROUTING jump: IPv6 inbound bypasses Envoy, IPv4 still crosses it.
        _in(pod.netns, "ip6tables-nft", "-t", "nat", "-D", "PREROUTING", "-p", "tcp", "-j", "ISTIO_INBOUND")
        assert connect(node_ns, f"http://[{pod.ip6}]:9080/health").json()["client"] == lab.state.peers["node6"]
        assert connect(node_ns, f"http://{pod.ip}:9080/health").json()["client"] == "127.0.0.6"
        report = _inspect(lab, pod, exit_code=1)
        assert _flow(report, 1)["status"] == "ok"
        flow = _flow(report["second_family"], 1)
        assert flow["status"] == "drift" and flow["envoy_ports"] == [] and flow["expected"]["envoy_ports"] == [15006]
    elif mode == "dns":
        # The UDP redirect to pilot-agent is gone: UDP queries go unanswered, TCP ones are still captured.
        _in(
            pod.netns,
            "iptables-nft",
            "-t",
            "nat",
            "-D",
            "ISTIO_OUTPUT_DNS",
            "-d",
            "10.96.0.2/32",
            "-p",
            "udp",
            "-m",
            "udp",
            "--dport",
            "53",
            "-j",
            "REDIRECT",
            "--to-ports",
            "15053",
        )
        name = "details.bookinfo.svc.cluster.local"
        with pytest.raises(RuntimeError):
            dns_query(pod.netns, "10.96.0.2", name, "udp", 1000, timeout=1)
        assert dns_query(pod.netns, "10.96.0.2", name, "tcp", 1000) == [lab.state.services["details"]]
        report = _inspect(lab, pod, exit_code=1)
        udp, tcp = _flow(report, 7, "udp"), _flow(report, 7, "tcp")
        assert udp["status"] == "drift" and udp["delivered_to"] == "10.96.0.2:53", udp
        assert tcp["status"] == "ok"
    else:
        pytest.fail(f"no fault for mode {mode}")


# --- ambient mode: no sidecar, istio-cni's in-pod rules and a ztunnel stand-in -----------------------------
#
# Each ambient flow is one real connection (the HBONE one through the stand-in's plain-TCP CONNECT: real
# HBONE is HTTP/2 inside mutual TLS, the kernel paths are the same); every first packet, in every table,
# in order, must be podnat's legs rule for rule (`nft monitor trace`); the reply of an inbound connection,
# which is no first packet, must move the mangle counters podnat predicts. Then a fault per mechanism:
# the rules flushed (as after a node reboot), the fwmark rule deleted, the stand-in stopped.

HBONE = (
    "import socket, sys; s = socket.create_connection((sys.argv[1], 15008), timeout=3); "
    "s.sendall(('CONNECT %s:9080 HTTP/1.1\\r\\n\\r\\n' % sys.argv[1]).encode()); head = s.recv(19); "
    "s.sendall(b'GET /health HTTP/1.0\\r\\n\\r\\n'); body = b''\n"
    "while chunk := s.recv(4096): body += chunk\n"
    "print(head.decode().split()[1], body.split(b'\\r\\n\\r\\n', 1)[1].decode())"
)
DEBUG_IMAGE = "docker.io/istio/proxyv2:1.30.3"


def _hbone(netns: str, address: str) -> tuple[bool, str | None]:
    """An HBONE CONNECT to address:15008 from `netns` (HBONE): answered with 200, and the client the app saw."""
    result = subprocess.run(
        ["ip", "netns", "exec", netns, "/usr/bin/python3", "-c", HBONE, address],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    status, _, body = result.stdout.partition(" ")
    return status == "200", json.loads(body or "{}").get("client")


@pytest.fixture(scope="module", params=("ambient", "ambient-nftables"))
def ambient_lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    require(shutil.which("nft") is not None, "needs nft for packet tracing (make install)")
    with running_lab(
        Path(f"/run/podnat-lab-modes-{request.param}"), "nft", mode=request.param, deployments=DEPLOYMENTS
    ) as lab:
        yield lab


def _ambient_probes(lab: Lab, pod) -> list[tuple[str, FlowSpec, str, str, Identity | None]]:
    """(name, podnat's flow, how to make it, where from, as whom) for each ambient flow of `pod`."""
    from podnat.istio.ambient_paths import ambient_flows

    state = lab.state
    other = next(p for p in state.pods if p.name != pod.name)
    node_ns, peer_ns = f"{state.netns_prefix}node", f"{state.netns_prefix}istiod"
    ctx = _ambient_context(lab, pod)
    app = Identity(1000, 1000)
    out = []
    # The remote client: a peer's namespace on the bridge (the node's own sockets to an enrolled pod are
    # SNAT'd to 169.254.7.127 by istio-cni's node rule, as kubelet probes: node_probe_snat).
    peer = ipaddress.ip_address(state.peers["istiod"])
    for spec in ambient_flows(ctx.replace(remote=Endpoint(ipaddress.ip_address(other.ip), APP_PORT))):
        key = spec.variant or str(int(spec.type))
        if spec.type is FlowType.REMOTE_TO_LOCAL and spec.variant in ("plaintext", "reply"):
            from_peer = FlowSpec(
                spec.type, spec.name, spec.actor, spec.destination, peer, spec.identity, variant=spec.variant
            )
            out.append((key, from_peer, f"http://{pod.ip}:9080/health", peer_ns, None))
        elif spec.variant == "hbone":
            from_peer = FlowSpec(spec.type, spec.name, spec.actor, spec.destination, peer, variant="hbone")
            out.append((key, from_peer, f"hbone://{pod.ip}", peer_ns, None))
        elif spec.type is FlowType.KUBELET_PROBE:  # the kubelet: a node socket, SNAT'd by the kernel
            out.append((key, spec, f"http://{pod.ip}:9080/health", node_ns, None))
        elif spec.type is FlowType.DNS:
            out.append((key, spec, f"dns://{spec.proto}", pod.netns, app))
        else:
            out.append((key, spec, f"http://{spec.destination}/health", pod.netns, app))
    return out


def _ambient_context(lab: Lab, pod) -> PodContext:
    from podnat.istio.ambient_paths import ZTUNNEL
    from podnat.istio.flows import context_for

    ctx = context_for(ipaddress.ip_address(pod.ip)).replace(proxy=ZTUNNEL)
    return ctx.replace(nameserver=Endpoint(ipaddress.ip_address("10.96.0.2"), 53))


def _save(netns: str) -> str:
    listing = _in(netns, "nft", "list", "ruleset")
    return listing if "istio-ambient-" in listing else _in(netns, "iptables-nft-save", "-c")


def _probe_snat_count(lab: Lab) -> int:
    """Packets istio-cni's probe SNAT rule on the node has counted (ISTIO_POSTRT, or the nft postrouting rule)."""
    node_ns = f"{lab.state.netns_prefix}node"
    text = _save(node_ns)
    rule = next(line for line in text.splitlines() if "snat" in line.lower() and "istio-inpod-probes-v4" in line)
    found = re.search(r"^\[(\d+):\d+\]|counter packets (\d+)", rule.strip())
    assert found is not None, rule
    return int(found.group(1) or found.group(2))


def test_ambient_flows_trace_exactly_the_predicted_rules(ambient_lab: Lab) -> None:
    from podnat.istio.ambient_paths import trace_ambient
    from podnat.lab.probe import connect, dns_query, first_packets

    lab = ambient_lab
    failures: list[str] = []
    checked: Counter[str] = Counter()
    for pod in lab.state.pods:
        live = detect_and_parse(_save(pod.netns), Family.IPV4)
        ctx = _ambient_context(lab, pod)
        for name, spec, how, netns, who in _ambient_probes(lab, pod):
            predicted = trace_ambient(live, spec, ctx)
            before = _counters(_save(pod.netns))
            snat_before = _probe_snat_count(lab)
            with first_packets(pod.netns) as packets:
                if how.startswith("hbone://"):
                    answered, client = _hbone(netns, how.removeprefix("hbone://"))
                elif how.startswith("dns://"):
                    answer = dns_query(netns, "10.96.0.2", "details.bookinfo.svc.cluster.local", spec.proto, who.uid)
                    answered, client = answer == [lab.state.services["details"]], None
                else:
                    result = connect(netns, how, who.uid if who else None, who.gid if who else None)
                    answered, client = result.answered, result.json().get("client") if result.answered else None
            counted = {
                ref: n - before.get(ref, 0) for ref, n in _counters(_save(pod.netns)).items() if n > before.get(ref, 0)
            }
            if spec.variant == "reply":  # made by a plaintext connection: the client's SYN, then ztunnel's
                plaintext = next(s for _, s, *_ in _ambient_probes(lab, pod) if s.variant == "plaintext")
                first_legs = trace_ambient(live, plaintext, ctx).legs
            else:
                first_legs = predicted.legs
            want = [ref for leg in first_legs for ref in leg.rules]
            traced = [ref for packet in packets for ref in packet.rules if packet.family == 4]
            where = f"{pod.name} {name}"
            checked[name] += 1
            failures += first_packet_problems(where, answered, predicted, traced, want)
            if spec.variant == "reply":  # the app's answer: mangle counts it, nat never sees it
                # (Istio's nft jumps carry no `counter`: only rules with one can be seen counting)
                countable = {r.ref for t in live.tables.values() for r in t.rules() if r.counters is not None}
                missing = [ref for ref in predicted.legs[-1].rules if ref in countable and ref not in counted]
                if missing:
                    failures.append(f"{where}: the reply did not count {missing} (counted {counted})")
            if spec.variant in ("plaintext", "hbone", "reply") and client != lab.state.peers["istiod"]:
                failures.append(f"{where}: the app saw {client}, not the client (ztunnel's transparent socket)")
            snat = _probe_snat_count(lab) - snat_before
            if spec.type is FlowType.KUBELET_PROBE and (client != "169.254.7.127" or snat != 1):
                failures.append(f"{where}: the app saw {client}, the node's probe SNAT rule counted {snat} (want 1)")
            if spec.type is not FlowType.KUBELET_PROBE and snat:
                failures.append(f"{where}: the node's probe SNAT rule counted {snat}")
    assert set(checked) == {"hbone", "plaintext", "reply", "2", "own-pod-ip", "udp", "tcp", "8"}
    assert not failures, "\n".join(failures)


def _ambient_inspect(lab: Lab, pod, exit_code: int) -> dict[str, Any]:
    result = podnat(
        lab, "inspect", pod.name, "-n", "bookinfo", "--debug-container", "--debug-image", DEBUG_IMAGE, "-o", "json"
    )
    assert result.returncode == exit_code, result.stdout[-2000:] + result.stderr
    return dict(json.loads(result.stdout))


def test_ambient_pods_are_read_live_and_ok(ambient_lab: Lab) -> None:
    lab = ambient_lab
    pod = lab.state.pods[0]
    unread = podnat(lab, "inspect", pod.name, "-n", "bookinfo", "-o", "json")
    assert unread.returncode == 3 and "could not be read live" in json.loads(unread.stdout)["error"]["message"]
    report = _ambient_inspect(lab, pod, 0)
    assert report["context"]["mode"] == "ambient"
    assert report["context"]["release"] == "1.30" and report["context"]["release_from"].startswith(
        "ztunnel image on node podnat-lab (istio-system/ztunnel-"
    )
    assert "debug container podnat-debug" in report["sources"]["nat"]
    flows = {(f["type"], f.get("variant")): f for f in report["flows"]}
    assert flows[(1, "plaintext")]["proxy_ports"] == [15006] and flows[(2, None)]["proxy_ports"] == [15001]
    assert {f["status"] for f in report["flows"]} == {"ok"}
    assert report["sources"]["sockets"].endswith("cat /proc/net/tcp /proc/net/tcp6")
    if lab.state.mode == "ambient-nftables":
        assert all(r.startswith("istio-ambient-") for f in report["flows"] for r in f["legs"][0]["rules"])
    # With podnat's agent on the node, ambient pods are read through it: no flag, no debug container.
    from podnat.lab.build import start_agent

    start_agent(lab.state, interval=1.0)
    through_agent = podnat(lab, "verify", "-n", "bookinfo", "-o", "json")
    assert through_agent.returncode == 0, through_agent.stdout[-2000:] + through_agent.stderr
    pods = json.loads(through_agent.stdout)["pods"]
    assert len(pods) == len(lab.state.pods) and {p["status"] for p in pods} == {"ok"}
    assert all(p["sources"]["nat"].startswith("podnat agent ") for p in pods)
    from podnat.lab.build import _kill

    agent = lab.state.agent
    if agent is not None and agent.containers["agent"].pid:  # its watch would hold the API server's stop
        _kill(agent.containers["agent"].pid)


def test_ambient_faults_give_the_verdict_the_connection_had(ambient_lab: Lab) -> None:
    """Runs last: breaks the pods."""
    from podnat.lab.build import lab_break
    from podnat.lab.probe import connect

    lab = ambient_lab
    first, second = lab.state.pods
    peer_ns = f"{lab.state.netns_prefix}istiod"  # a remote client (the node's own sockets are SNAT'd as probes)
    root = lab.root
    # The fwmark rule deleted: the app's replies to the client leave by eth0, inbound never completes.
    lab_break(first.name, "no-fwmark-rule", root)
    assert not connect(peer_ns, f"http://{first.ip}:9080/health", timeout=2).answered
    report = _ambient_inspect(lab, first, 1)
    assert _flow(report, 1, "plaintext")["status"] == "broken"
    assert any("no `ip rule add fwmark 0x111/0xfff lookup 100`" in f["message"] for f in report["findings"])
    # The rules flushed (a node reboot): inbound reaches the app straight from the client, bypassing ztunnel.
    lab_break(first.name, "rules-flushed", root)
    answer = connect(peer_ns, f"http://{first.ip}:9080/health")
    assert answer.answered and answer.json()["client"] == lab.state.peers["istiod"]
    report = _ambient_inspect(lab, first, 1)
    assert report["findings"][0]["message"].startswith(
        "enrolled in ambient but its traffic bypasses ztunnel: no ISTIO_PRERT/ISTIO_OUTPUT in the pod"
    )
    assert _flow(report, 1, "plaintext")["proxy_ports"] == [] and _flow(report, 1, "plaintext")["status"] == "broken"
    # The stand-in stopped: the app's outbound connection is redirected to 15001, where nothing listens.
    lab_break(second.name, "stop-ztunnel", root)
    refused = connect(second.netns, f"http://{first.ip}:9080/health", 1000, 1000, timeout=2)
    assert not refused.answered
    report = _ambient_inspect(lab, second, 1)
    assert _flow(report, 2)["outcome"] == "refused"
    assert any("ztunnel is not listening on 15001, 15006, 15008" in f["message"] for f in report["findings"])


def test_the_agent_reads_a_pod_enrolled_by_its_namespace_alone(ambient_lab: Lab) -> None:
    """Runs after the faults: the first pod has no in-pod rules. Its istio-cni annotation removed too, only its
    Namespace's label istio.io/dataplane-mode=ambient enrols it: podnat's agent reads that Namespace (`get
    namespaces/bookinfo`, the one right its ClusterRole adds for it) and says broken, not skipped."""
    from podnat.lab.build import AGENT_IP, AGENT_PORT, _kill, start_agent
    from podnat.lab.state import LabState

    lab = ambient_lab
    state = LabState.load(lab.root)
    first = state.pods[0]
    meta = first.manifest["metadata"]
    assert meta["annotations"].pop("ambient.istio.io/redirection") == "enabled"
    assert "istio.io/dataplane-mode" not in meta["labels"]
    state.save()
    raw = podnat(lab, "inspect", first.name, "-n", "bookinfo", "--debug-container", "--debug-image", DEBUG_IMAGE)
    assert raw.returncode == 1, raw.stdout[-2000:] + raw.stderr  # the CLI reads the Namespace too
    namespace = json.loads(_raw(lab, "/api/v1/namespaces/bookinfo"))
    assert namespace["metadata"]["labels"]["istio.io/dataplane-mode"] == "ambient"
    log = Path(state.root, "apiserver.log")
    since = len(log.read_text().splitlines())
    agent = start_agent(state, interval=1.0)
    try:
        path = f"/api/v1/namespaces/podnat-system/pods/{agent.name}:{AGENT_PORT}/proxy/v1/pods?namespace=bookinfo"
        deadline = time.monotonic() + 30
        while True:
            pods = {p["pod"]["name"]: p for p in json.loads(_raw(lab, path))["pods"]}
            if pods.get(first.name, {}).get("status") == "broken" or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        report = pods[first.name]
        assert (report["status"], report["pod"]["mesh"]) == ("broken", "ambient"), report
        assert report["findings"][0]["message"].startswith(
            "enrolled in ambient but its traffic bypasses ztunnel: no ISTIO_PRERT/ISTIO_OUTPUT in the pod"
        )
        assert any("enrolled in ambient mode by its namespace's label" in n for n in report["notes"])
        asked = [
            m.group(1)
            for line in log.read_text().splitlines()[since:]
            if (m := re.search(r'aiohttp\.access (\S+) .*?"GET /api/v1/namespaces/bookinfo HTTP', line))
        ]
        assert AGENT_IP in asked, asked  # asked by the agent's pod (the CLI's requests come from 127.0.0.1)
    finally:
        _kill(agent.containers["agent"].pid)


def test_a_request_reads_again_only_the_ambient_pod_whose_routing_or_sockets_changed(
    ambient_lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent's check without a process covers an ambient pod too (podnat.agent.changes): its policy routing
    (`ip rule`, table 100) and listening sockets are stamped, so a request confirms the unchanged pods without
    reading them and reads again the one where a rule was added from outside, or a socket began to listen."""
    from podnat.agent.node import NodePodSource, NodeScanner
    from podnat.agent.service import Agent, AgentConfig
    from podnat.istio.mesh import MeshMode
    from podnat.lab.build import run
    from podnat.lab.state import LabState

    state = LabState.load(ambient_lab.root)
    agent = Agent(
        AgentConfig(node="podnat-lab"),
        NodeScanner(Path("/proc")),
        namespace_labels=lambda name: {"istio.io/dataplane-mode": "ambient"},
    )
    agent.replace_pods([p.manifest for p in state.pods])
    read = {s.uid: s for s in agent.sweep()}
    ambient = {s.uid: s for s in read.values() if s.facts is not None and s.facts.mesh is MeshMode.AMBIENT}
    assert len(ambient) >= 2, {s.report.ref.name: (s.mapping, s.report.status) for s in read.values()}
    for s in ambient.values():
        assert s.check is not None, s.report.ref
        assert (s.check.stamp.routing_table, s.check.stamp.routing is not None) == (100, True)
        assert s.check.stamp.ports is not None
    ran: list[str] = []
    real = NodePodSource.run_in
    monkeypatch.setattr(
        NodePodSource, "run_in", lambda self, held, argv: ran.append(held.uid) or real(self, held, argv)
    )
    agent.states_for("bookinfo", None, 0.0)
    assert ran == []
    pods = {p.manifest["metadata"]["uid"]: p for p in state.pods}
    first, second = sorted(ambient)[:2]
    rule = ["ip", "rule", "add", "fwmark", "0x222/0xfff", "lookup", "100", "priority", "32001"]
    run(rule, netns=pods[first].netns)
    try:
        with listening(pods[second].netns, "0.0.0.0", 15123):
            agent.states_for("bookinfo", None, 0.0)
        assert sorted(ran) == sorted([first, second])
        ran.clear()
        agent.states_for("bookinfo", None, 0.0)  # the rule as read last time; the socket gone: read again
        assert ran == [second]
        ran.clear()
        agent.states_for("bookinfo", None, 0.0)  # each stamped anew at its reading: confirmed
        assert ran == []
    finally:
        run(["ip", "rule", "del", "priority", "32001"], netns=pods[first].netns)


def _raw(lab: Lab, path: str) -> str:
    """`kubectl get --raw PATH` against the lab's API server."""
    return subprocess.run(
        ["kubectl", "--kubeconfig", lab.state.apiserver.kubeconfig, "get", "--raw", path],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={"HOME": str(lab.root), "PATH": "/usr/sbin:/usr/bin:/bin:/usr/local/bin"},
    ).stdout


# --- ambient, dual-stack: the IPv6 flows through the IPv6 in-pod rules, ip -6 rule and table 100 ---------------


@pytest.fixture(scope="module")
def ambient_dual_lab() -> Iterator[Lab]:
    require(shutil.which("nft") is not None, "needs nft for packet tracing (make install)")
    with running_lab(
        Path("/run/podnat-lab-modes-ambient-dual-stack"), "nft", mode="ambient-dual-stack", deployments=DEPLOYMENTS
    ) as lab:
        yield lab


def test_ambient_dual_stack_ipv6_flows_and_a_fault_in_ipv6_only(ambient_dual_lab: Lab) -> None:
    """Each pod's IPv6 flows (HBONE, plaintext, the reply, app -> remote, own pod IP, kubelet probe) as one real
    connection each: the first packets `nft monitor trace` saw in the IPv6 tables are podnat's legs rule for
    rule, the app sees the client's own address (or the probe's fd16:9254:7127:1337:ffff:ffff:ffff:ffff, SNAT'd
    by the node's IPv6 probe rule). `podnat inspect` explains both families, every flow ok; without the IPv6
    fwmark rule IPv6 inbound gets no answer while IPv4's does, and podnat says IPv6's type 1 is broken, IPv4's ok."""
    from podnat.istio.ambient_paths import ZTUNNEL, ambient_flows, trace_ambient
    from podnat.istio.flows import context_for
    from podnat.lab.probe import connect, first_packets

    lab = ambient_dual_lab
    state = lab.state
    node_ns, peer_ns = f"{state.netns_prefix}node", f"{state.netns_prefix}istiod"
    peer, probe_source = state.peers["istiod6"], "fd16:9254:7127:1337:ffff:ffff:ffff:ffff"
    failures: list[str] = []
    checked: Counter[str] = Counter()

    def snat_count() -> int:
        text = _in(node_ns, "ip6tables-nft-save", "-c", "-t", "nat")
        rule = next(line for line in text.splitlines() if "istio-inpod-probes-v6" in line)
        return int(rule.split(":", 1)[0].lstrip("["))

    for pod in state.pods:
        other = next(p for p in state.pods if p.name != pod.name)
        live = detect_and_parse(_in(pod.netns, "ip6tables-nft-save", "-c"), Family.IPV6)
        ctx = context_for(ipaddress.ip_address(pod.ip6)).replace(proxy=ZTUNNEL)
        ctx = ctx.replace(remote=Endpoint(ipaddress.ip_address(other.ip6), APP_PORT))
        plaintext: FlowSpec | None = None
        for flow in ambient_flows(ctx, dns=False):
            spec = flow
            key = flow.variant or str(int(flow.type))
            url, netns, who = f"http://[{pod.ip6}]:9080/health", peer_ns, None
            if flow.type is FlowType.REMOTE_TO_LOCAL:
                spec = FlowSpec(
                    flow.type,
                    flow.name,
                    flow.actor,
                    flow.destination,
                    ipaddress.ip_address(peer),
                    flow.identity,
                    variant=flow.variant,
                )
                plaintext = spec if spec.variant == "plaintext" else plaintext
            elif spec.type is FlowType.KUBELET_PROBE:
                netns = node_ns
            else:
                url, netns, who = f"http://[{spec.destination.address}]:{spec.destination.port}/health", pod.netns, 1000
            predicted = trace_ambient(live, spec, ctx)
            snat_before = snat_count()
            with first_packets(pod.netns) as packets:
                if spec.variant == "hbone":
                    answered, client = _hbone(netns, pod.ip6)
                else:
                    answer = connect(netns, url, who, who)
                    answered, client = answer.answered, answer.json().get("client") if answer.answered else None
            first = trace_ambient(live, plaintext, ctx) if spec.variant == "reply" and plaintext else predicted
            want = [ref for leg in first.legs for ref in leg.rules]
            traced = [ref for packet in packets for ref in packet.rules if packet.family == 6]
            where = f"{pod.name} ipv6 {key}"
            checked[key] += 1
            failures += first_packet_problems(where, answered, predicted, traced, want)
            if spec.type is FlowType.REMOTE_TO_LOCAL and client != peer:
                failures.append(f"{where}: the app saw {client}, not the client {peer}")
            snat = snat_count() - snat_before
            if spec.type is FlowType.KUBELET_PROBE and (client != probe_source or snat != 1):
                failures.append(f"{where}: the app saw {client}, the node's IPv6 probe rule counted {snat} (want 1)")
    assert set(checked) == {"hbone", "plaintext", "reply", "2", "own-pod-ip", "8"}
    assert not failures, "\n".join(failures)
    first = state.pods[0]
    report = _ambient_inspect(lab, first, 0)
    assert report["second_family"]["family"] == "ipv6"
    assert {f["status"] for f in (*report["flows"], *report["second_family"]["flows"])} == {"ok"}
    # The IPv6 fwmark rule deleted: IPv6 inbound replies leave the pod, IPv4's still come back to ztunnel.
    _in(first.netns, "ip", "-6", "rule", "del", "fwmark", "0x111/0xfff", "lookup", "100")
    assert not connect(peer_ns, f"http://[{first.ip6}]:9080/health", timeout=2).answered
    assert connect(peer_ns, f"http://{first.ip}:9080/health").answered
    report = _ambient_inspect(lab, first, 1)
    assert _flow(report, 1, "plaintext")["status"] == "ok"
    assert _flow(report["second_family"], 1, "plaintext")["status"] == "broken"
    assert any(
        "no `ip -6 rule add fwmark 0x111/0xfff lookup 100`" in f["message"] for f in report["second_family"]["findings"]
    )
    # `lab break rules-flushed` on a dual-stack pod flushes both families: IPv6 bypasses ztunnel too.
    from podnat.lab.build import lab_break

    lab_break(first.name, "rules-flushed", lab.root)
    assert "ISTIO_PRERT" not in _in(first.netns, "ip6tables-nft-save")
    assert connect(peer_ns, f"http://[{first.ip6}]:9080/health").json()["client"] == peer
    report = _ambient_inspect(lab, first, 1)
    for family in (report, report["second_family"]):
        assert family["findings"][0]["message"].startswith("enrolled in ambient but its traffic bypasses ztunnel")
