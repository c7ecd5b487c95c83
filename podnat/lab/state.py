"""The lab's state file: the contract between the pod builder (lab/build.py) and the API server.

`podnat lab up` writes `<root>/state.json` (root: $PODNAT_LAB_DIR, default /run/podnat-lab); the API
server re-reads it when its mtime changes. Everything a pod is, for the API, is here: the Pod object
the API serves, and for each container how to run a command "inside" it (network namespace, uid,
gid, capabilities, PATH) and where its log is.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_ROOT = Path("/run/podnat-lab")


def lab_root() -> Path:
    """Where the lab keeps its state, kubeconfig, logs and helper binaries."""
    return Path(os.environ.get("PODNAT_LAB_DIR", str(DEFAULT_ROOT)))


@dataclass(slots=True)
class LabContainer:
    """How to run a command as this container: its identity and what it may do."""

    name: str
    uid: int
    gid: int
    capabilities: list[str] = field(default_factory=list)  # e.g. ["NET_ADMIN", "NET_RAW"]
    path: list[str] = field(default_factory=list)  # extra PATH dirs first (e.g. the pilot-agent shim)
    log_file: str | None = None  # what `kubectl logs -c NAME` returns
    pid: int | None = None  # the container's main process (Envoy for istio-proxy, the app server)
    init: bool = False  # an init container (istio-init): has a log, exec is refused (not running)
    ephemeral: bool = False


@dataclass(slots=True)
class LabPod:
    """One lab pod: a network namespace with Istio's rules, a real Envoy and a real app."""

    namespace: str
    name: str
    ip: str
    netns: str  # name under /run/netns
    manifest: dict[str, Any]  # the v1 Pod the API serves (metadata, spec, status)
    containers: dict[str, LabContainer] = field(default_factory=dict)
    ip6: str | None = None
    ztunnel_pid: int | None = None  # ambient mode: the ztunnel stand-in in the pod's namespace


@dataclass(slots=True)
class LabApiServer:
    """Where the lab's Kubernetes API listens and how to authenticate."""

    port: int
    pid: int | None
    token: str
    readonly_token: str  # a second token: may get/list/log, lacks pods/exec and ephemeralcontainers
    kubeconfig: str
    ca_file: str
    agent_token: str = ""  # the node agent's ServiceAccount: the rules manifests/agent's RBAC grants it
    cli_token: str = ""  # podnat-user: the rules manifests/rbac and manifests/agent/cli-rbac.yaml grant podnat-users


@dataclass(slots=True)
class LabState:
    """Everything `podnat lab up` built: pods, processes, the API server."""

    root: str
    backend: str = "nft"  # iptables backend the rules were loaded with: nft | legacy
    mode: str = "redirect"  # capture setup of the pods: redirect | tproxy | nftables | dual-stack | dns | ambient
    pods: list[LabPod] = field(default_factory=list)
    apiserver: LabApiServer | None = None
    netns: list[str] = field(default_factory=list)  # every namespace the lab created (for `down`)
    pids: list[int] = field(default_factory=list)  # every process the lab started (for `down`)
    services: dict[str, str] = field(default_factory=dict)  # Service name -> VIP (pods resolve them by name)
    services6: dict[str, str] = field(default_factory=dict)  # Service name -> IPv6 VIP (dual-stack mode)
    peers: dict[str, str] = field(default_factory=dict)  # lab peers outside the pods: node, istiod -> IP
    netns_prefix: str = "pnl-"  # every namespace of this lab starts with it (one prefix per root)
    agent: LabPod | None = None  # podnat's node agent, a pod of podnat-system (`lab up --agent`)
    ztunnel: LabPod | None = None  # ambient mode: ztunnel's DaemonSet pod in istio-system (its image names the release)

    @property
    def all_pods(self) -> list[LabPod]:
        """What the API serves: the Bookinfo pods, ztunnel's pod (ambient) and, when it runs, the agent's pod."""
        return [*self.pods, *(p for p in (self.ztunnel, self.agent) if p is not None)]

    def find(self, namespace: str, name: str) -> LabPod | None:
        return next((p for p in self.all_pods if p.namespace == namespace and p.name == name), None)

    def save(self) -> Path:
        path = Path(self.root) / "state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, root: Path | None = None) -> LabState:
        root = root or lab_root()
        raw = json.loads((root / "state.json").read_text())

        def pod(p: dict[str, Any]) -> LabPod:
            return LabPod(
                **{k: v for k, v in p.items() if k != "containers"},
                containers={n: LabContainer(**c) for n, c in p["containers"].items()},
            )

        pods = [pod(p) for p in raw.pop("pods")]
        api = raw.pop("apiserver")
        agent = raw.pop("agent", None)
        ztunnel = raw.pop("ztunnel", None)
        return cls(
            pods=pods,
            apiserver=LabApiServer(**api) if api else None,
            agent=pod(agent) if agent else None,
            ztunnel=pod(ztunnel) if ztunnel else None,
            **raw,
        )
