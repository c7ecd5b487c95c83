"""`podnat lab ...`: the Typer sub-app. Imports of the lab's machinery happen inside the commands,
so `podnat --help` and the offline commands stay fast."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from podnat.errors import PodnatError

app = typer.Typer(no_args_is_help=True, add_completion=False)


class Backend(str, Enum):
    nft = "nft"
    legacy = "legacy"


class Mode(str, Enum):
    redirect = "redirect"
    tproxy = "tproxy"
    nftables = "nftables"
    dual_stack = "dual-stack"
    dns = "dns"
    ambient = "ambient"
    ambient_nftables = "ambient-nftables"
    ambient_dual_stack = "ambient-dual-stack"


class StatusOutput(str, Enum):
    table = "table"
    json = "json"


Root = Annotated[Path | None, typer.Option("--root", envvar="PODNAT_LAB_DIR", help="Where the lab keeps its state.")]


def _fail(exc: PodnatError) -> None:
    from podnat.render.console import error

    error(exc.message)
    raise typer.Exit(int(exc.code))


@app.command()
def up(
    backend: Annotated[
        Backend, typer.Option("--backend", help="iptables backend the rules are loaded with.")
    ] = Backend.nft,
    mode: Annotated[
        Mode,
        typer.Option(
            "--mode",
            help="How the pods capture traffic: redirect (Istio's default), tproxy "
            "(interceptionMode TPROXY), nftables (native nftables), dual-stack "
            "(IPv4 and IPv6), dns (DNS capture to pilot-agent's 15053), "
            "ambient (no sidecar: istio-cni's in-pod rules, a ztunnel stand-in), "
            "ambient-nftables (the same with native nftables), ambient-dual-stack (ambient, IPv4 and IPv6).",
        ),
    ] = Mode.redirect,
    agent: Annotated[
        bool,
        typer.Option(
            "--agent/--no-agent",
            help="Also run podnat's node agent (a pod of "
            "podnat-system); podnat inspect/verify then read pods through it.",
        ),
    ] = True,
    agent_interval: Annotated[
        float, typer.Option("--agent-interval", min=0.5, help="Seconds between the agent's sweeps.")
    ] = 60.0,
    root: Root = None,
) -> None:
    """Build the Bookinfo pods (netns, Istio's rules, a real Envoy, the apps) and the lab's Kubernetes API."""
    from podnat.lab.build import lab_up
    from podnat.render.console import note

    try:
        state = lab_up(backend.value, root, progress=note, mode=mode.value, agent=agent, agent_interval=agent_interval)
    except PodnatError as exc:
        _fail(exc)
        return
    note(
        f"{len(state.pods)} pods in namespace bookinfo ({state.mode} mode); export KUBECONFIG=$(podnat lab kubeconfig)"
    )
    typer.echo(state.apiserver.kubeconfig if state.apiserver else "")


@app.command()
def down(root: Root = None) -> None:
    """Stop and remove everything the lab made (processes, namespaces, files)."""
    from podnat.lab.build import lab_down
    from podnat.render.console import note

    removed = lab_down(root)
    note(f"removed {len(removed)} things" if removed else "nothing to remove")


@app.command()
def kubeconfig(root: Root = None) -> None:
    """Print the lab's kubeconfig path: export KUBECONFIG=$(podnat lab kubeconfig)."""
    from podnat.lab.build import lab_kubeconfig

    try:
        typer.echo(lab_kubeconfig(root))
    except PodnatError as exc:
        _fail(exc)


@app.command()
def status(
    root: Root = None,
    output: Annotated[StatusOutput, typer.Option("--output", "-o", help="table or json.")] = StatusOutput.table,
) -> None:
    """The lab's pods: namespace paths, IPs, process ids."""
    from podnat.lab.build import lab_status

    try:
        state = lab_status(root)
    except PodnatError as exc:
        _fail(exc)
        return
    pods: list[dict[str, Any]] = [
        {
            "namespace": p.namespace,
            "name": p.name,
            "ip": p.ip,
            **({"ip6": p.ip6} if p.ip6 else {}),
            "netns": f"/run/netns/{p.netns}",
            "containers": {
                name: {
                    "uid": c.uid,
                    "gid": c.gid,
                    "pid": c.pid,
                    "capabilities": c.capabilities,
                    "ephemeral": c.ephemeral,
                }
                for name, c in p.containers.items()
            },
        }
        for p in state.pods
    ]
    if output is StatusOutput.json:
        api = state.apiserver
        data = {
            "root": state.root,
            "backend": state.backend,
            "mode": state.mode,
            "pods": pods,
            "kubeconfig": api.kubeconfig if api else None,
            "apiserver_pid": api.pid if api else None,
        }
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    typer.echo(f"mode {state.mode}, backend {state.backend}, {len(pods)} pods")
    for pod in pods:
        pids = ", ".join(f"{n}={c['pid']}" for n, c in pod["containers"].items() if c["pid"])
        ips = pod["ip"] + (f" {pod['ip6']}" if "ip6" in pod else "")
        typer.echo(f"{pod['namespace']}/{pod['name']}  {ips}  {pod['netns']}  {pids}")


@app.command("break")
def break_(
    pod: Annotated[str, typer.Argument(help="Pod (or Deployment) name, e.g. reviews-v1.")],
    fault: Annotated[
        str,
        typer.Argument(
            help="no-prerouting-jump | exclude-port | foreign-accept | owner-uid | "
            "stop-envoy | dead-port | legacy-copy; ambient labs: rules-flushed | "
            "no-fwmark-rule | stop-ztunnel"
        ),
    ],
    root: Root = None,
) -> None:
    """Break a pod the way real pods break (for the demo and the tests)."""
    from podnat.lab.build import lab_break
    from podnat.render.console import note

    try:
        note(lab_break(pod, fault, root))
    except PodnatError as exc:
        _fail(exc)
