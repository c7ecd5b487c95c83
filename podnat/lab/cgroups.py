"""Lab pods' processes in cgroups shaped as the kubelet makes them, so the agent's /proc mapping runs
for real: `<lab>.slice/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice/
cri-containerd-<id>.scope` (the systemd driver's shape, under a slice of the lab's own, as kind nests
the kubelet's under `kubelet.slice`). The unified (v2) hierarchy where one is mounted, else the named
v1 `systemd` hierarchy: neither has a controller enabled here, so nothing is limited or accounted
differently. `remove` takes the lab's slice away again.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from pathlib import Path


def hierarchy() -> Path | None:
    """Where to make the lab's cgroups: the cgroup2 mount, else the v1 `name=systemd` one, else None."""
    v1: Path | None = None
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(" - ")
        if len(fields) != 2:
            continue
        mount_point = Path(fields[0].split()[4])
        fstype, _, options = [*fields[1].split(), "", "", ""][:3]
        if fstype == "cgroup2":
            return mount_point
        if fstype == "cgroup" and "name=systemd" in options:
            v1 = mount_point
    return v1


def lab_slice(prefix: str) -> str:
    return f"podnat-lab-{prefix.rstrip('-')}.slice"


def container_cgroup(prefix: str, pod_uid: str, pod_name: str, container: str) -> Path | None:
    """The cgroup directory of one container of a lab pod (created), or None without a hierarchy."""
    base = hierarchy()
    if base is None:
        return None
    uid = pod_uid.replace("-", "_")
    scope = hashlib.sha256(f"{pod_name}/{container}".encode()).hexdigest()
    path = (
        base
        / lab_slice(prefix)
        / "kubepods.slice"
        / "kubepods-besteffort.slice"
        / f"kubepods-besteffort-pod{uid}.slice"
        / f"cri-containerd-{scope}.scope"
    )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only cgroupfs (an unprivileged container): the lab runs, the agent cannot map
    return path


def remove_pod(prefix: str, pod_uid: str) -> None:
    """Remove one pod's slice (its processes gone): what the kubelet does when a pod is deleted."""
    base = hierarchy()
    if base is None:
        return
    uid = pod_uid.replace("-", "_")
    pod = (
        base
        / lab_slice(prefix)
        / "kubepods.slice"
        / "kubepods-besteffort.slice"
        / f"kubepods-besteffort-pod{uid}.slice"
    )
    for _ in range(40):
        for directory in [*(p for p in pod.glob("*") if p.is_dir()), pod]:
            with contextlib.suppress(OSError):
                directory.rmdir()
        if not pod.exists():
            return
        time.sleep(0.025)


def enter_command(cgroup: Path | None, argv: list[str]) -> list[str]:
    """argv, run from a shell that first moves itself into `cgroup` (so no child is left outside)."""
    if cgroup is None:
        return argv
    # `;`, not `&&`: a cgroup that refuses the move must not keep the process from starting
    return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" 2>/dev/null; exec "$@"', str(cgroup), *argv]


def remove(prefix: str, timeout: float = 3.0) -> None:
    """Remove the lab's slice, deepest first (a cgroup goes once its processes have exited)."""
    base = hierarchy()
    if base is None:
        return
    top = base / lab_slice(prefix)
    if not top.is_dir():
        return
    deadline = time.monotonic() + timeout
    while top.is_dir():
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for directory in [*dirs, top]:
            with contextlib.suppress(OSError):
                directory.rmdir()
        if not top.is_dir() or time.monotonic() > deadline:
            return
        time.sleep(0.05)
