"""`podnat lab ...`: the Typer sub-app. Imports of the lab's machinery happen inside the commands,
so `podnat --help` and the offline commands stay fast."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from podnat.errors import PodnatError

app = typer.Typer(no_args_is_help=True, add_completion=False)


class Backend(str, Enum):
    nft = "nft"
    legacy = "legacy"


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
    root: Root = None,
) -> None:
    """Build the Bookinfo pods (netns, Istio's rules, a real Envoy, the apps) and the lab's Kubernetes API."""
    from podnat.lab.build import lab_up
    from podnat.render.console import note

    try:
        state = lab_up(backend.value, root, progress=note)
    except PodnatError as exc:
        _fail(exc)
        return
    note(f"{len(state.pods)} pods in namespace bookinfo; export KUBECONFIG=$(podnat lab kubeconfig)")
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
    pods = [{
        "namespace": p.namespace, "name": p.name, "ip": p.ip, "netns": f"/run/netns/{p.netns}",
        "containers": {name: {"uid": c.uid, "gid": c.gid, "pid": c.pid, "capabilities": c.capabilities,
                              "ephemeral": c.ephemeral} for name, c in p.containers.items()},
    } for p in state.pods]
    if output is StatusOutput.json:
        api = state.apiserver
        data = {"root": state.root, "backend": state.backend, "pods": pods,
                "kubeconfig": api.kubeconfig if api else None, "apiserver_pid": api.pid if api else None}
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    for pod in pods:
        pids = ", ".join(f"{n}={c['pid']}" for n, c in pod["containers"].items() if c["pid"])
        typer.echo(f"{pod['namespace']}/{pod['name']}  {pod['ip']}  {pod['netns']}  {pids}")


@app.command("break")
def break_(
    pod: Annotated[str, typer.Argument(help="Pod (or Deployment) name, e.g. reviews-v1.")],
    fault: Annotated[str, typer.Argument(help="no-prerouting-jump | exclude-port | foreign-accept | owner-uid | "
                                              "stop-envoy | dead-port | legacy-copy")],
    root: Root = None,
) -> None:
    """Break a pod the way real pods break (for the demo and the tests)."""
    from podnat.lab.build import lab_break
    from podnat.render.console import note

    try:
        note(lab_break(pod, fault, root))
    except PodnatError as exc:
        _fail(exc)
