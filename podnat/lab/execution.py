"""Run a command "as a container" of a lab pod: its network namespace, its uid/gid, its capabilities.

`ip netns exec NETNS` (when the pod has a namespace) then `setpriv --reuid U --regid G --clear-groups`
with the container's capabilities as the inheritable, ambient and bounding sets: istio-proxy (uid
1337, no capabilities) gets iptables-save's real permission error, an ephemeral debug container (uid
0, NET_ADMIN/NET_RAW) reads the table and nothing more. Without root the identity cannot change: the
command runs as we are (the unprivileged tests use containers with our own uid and netns "").

Each command gets a session of its own, so that the whole process group can be killed when the
client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from podnat.lab.state import LabContainer

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_CAPABILITY = re.compile(r"(?:CAP_)?([A-Z_]+)")


@dataclass(frozen=True, slots=True)
class Invocation:
    """What to spawn for one exec: the full argv (wrappers included) and the container's environment."""

    argv: tuple[str, ...]
    env: dict[str, str]
    command: tuple[str, ...]  # what the client asked for, for messages


def container_path(container: LabContainer) -> str:
    return ":".join([*container.path, SYSTEM_PATH])


def container_env(container: LabContainer, hostname: str) -> dict[str, str]:
    """A container's environment: its PATH, HOSTNAME and HOME, nothing inherited from the server."""
    return {
        "PATH": container_path(container),
        "HOSTNAME": hostname,
        "HOME": "/root" if container.uid == 0 else "/",
        "LANG": "C.UTF-8",
    }


def capability_names(capabilities: Sequence[str]) -> list[str]:
    """`NET_ADMIN`, `CAP_NET_RAW`, `net_admin` -> setpriv's `net_admin`; unknown shapes are dropped."""
    names: list[str] = []
    for cap in capabilities:
        m = _CAPABILITY.fullmatch(cap.strip().upper())
        if m and m.group(1).lower() not in names:
            names.append(m.group(1).lower())
    return names


def setpriv_args(container: LabContainer) -> list[str]:
    caps = "".join(f",+{c}" for c in capability_names(container.capabilities))
    return [
        "--reuid",
        str(container.uid),
        "--regid",
        str(container.gid),
        "--clear-groups",
        f"--inh-caps=-all{caps}",
        f"--ambient-caps=-all{caps}",
        f"--bounding-set=-all{caps}",
    ]


def find_executable(name: str, path: str) -> str | None:
    """Where `name` resolves in the container's PATH (None: the runtime's "executable file not found")."""
    if "/" in name:
        return name if Path(name).is_file() and os.access(name, os.X_OK) else None
    return shutil.which(name, path=path)


def invocation(
    command: Sequence[str],
    netns: str,
    container: LabContainer,
    *,
    hostname: str,
    euid: int | None = None,
) -> Invocation:
    """The argv that runs `command` in `netns` (or on the host for "") with the container's identity."""
    euid = os.geteuid() if euid is None else euid
    env = container_env(container, hostname)
    argv: list[str] = []
    if euid == 0:
        if netns:
            argv += [shutil.which("ip") or "ip", "netns", "exec", netns]
        argv += [shutil.which("setpriv") or "setpriv", *setpriv_args(container), "--"]
    # Without root nothing can switch identity or namespace: run as we are (tests, benchmarks).
    return Invocation(tuple(argv + list(command)), env, tuple(command))


def runtime_not_found(command: Sequence[str], container: LabContainer) -> str | None:
    """containerd's message when the command is not in the image, or None when it is."""
    if find_executable(command[0], container_path(container)) is not None:
        return None
    return (
        "error executing command in container: failed to exec in container: failed to start exec: "
        "OCI runtime exec failed: exec failed: unable to start container process: "
        f'exec: "{command[0]}": executable file not found in $PATH: unknown'
    )


async def spawn(
    run: Invocation, *, stdin: bool, stdout: bool, stderr: bool, merge_stderr: bool = False
) -> asyncio.subprocess.Process:
    """Start the command in a session of its own (its process group is what `kill_group` ends)."""
    err: int = subprocess.DEVNULL
    if merge_stderr and stdout:
        err = subprocess.STDOUT
    elif stderr:
        err = subprocess.PIPE
    return await asyncio.create_subprocess_exec(
        *run.argv,
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
        stderr=err,
        env=run.env,
        cwd="/",
        start_new_session=True,
    )


def kill_group(pid: int) -> None:
    """SIGKILL the command's process group (it leads its own session); gone already is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def exit_code(returncode: int) -> int:
    """A signal death as runtimes report it: 128 + signal number."""
    return 128 - returncode if returncode < 0 else returncode
