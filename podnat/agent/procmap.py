"""Which network namespace is which pod's, from the node's `/proc` alone (no container-runtime socket).

Pure: the readers in podnat/agent/node.py hand in what they read from `/proc`; nothing here does I/O.

- The pod UID is in each process's `/proc/PID/cgroup`, as the kubelet names the pod's cgroup:
  cgroupfs driver `.../kubepods/besteffort/pod<uid>/<container>`, systemd driver
  `.../kubepods-besteffort-pod<uid with _>.slice/cri-containerd-<id>.scope` (CRI-O: `crio-<id>.scope`),
  cgroup v1 (one line per hierarchy) or v2 (`0::/...`), below any prefix (kind: `kubelet.slice/...`,
  a cgroup namespace: `/../..`).
- Each PID's `ns/net` is a namespace by inode; processes in the node's own namespace (hostNetwork
  pods, CRI-O's conmon, the runtime) are skipped.
- Where a pod's processes sit in different namespaces, the oldest process wins (the sandbox, which
  holds the namespace, starts first); the pod IP must be on an interface of that namespace, else the
  pod is reported unmapped with the reason. Nothing is guessed.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# A pod UID as the kubelet writes it into a cgroup path: dashes (cgroupfs) or underscores (systemd).
_POD_UID = re.compile(
    r"pod([0-9a-f]{8})[-_]([0-9a-f]{4})[-_]([0-9a-f]{4})[-_]([0-9a-f]{4})[-_]([0-9a-f]{12})(?:\.slice)?(?=/|$)"
)


def pod_uid_from_cgroup(text: str) -> str | None:
    """The pod UID in a `/proc/PID/cgroup` file, or None (not a pod's process, or lines disagree)."""
    found: set[str] = set()
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        if "kubepods" not in path:
            continue
        matches = list(_POD_UID.finditer(path))
        if matches:  # the innermost pod segment (there is only one on a real node)
            found.add("-".join(matches[-1].groups()))
    return found.pop() if len(found) == 1 else None


@dataclass(frozen=True, slots=True)
class Process:
    """One PID as read from `/proc`: its start time (clock ticks since boot), netns inode, pod UID."""

    pid: int
    start: int
    netns: int
    pod_uid: str | None


@dataclass(frozen=True, slots=True)
class Candidate:
    """A pod's network namespace as its oldest process there shows it."""

    pod_uid: str
    netns: int
    pid: int
    start: int


def candidates(
    processes: Iterable[Process], node_netns: int | None, skip_netns: Iterable[int] = ()
) -> dict[str, list[Candidate]]:
    """For each pod UID, its namespaces (one per inode, by its oldest process), oldest first.

    The node's own namespace and `skip_netns` (the agent's own) are never a pod's."""
    skipped = {node_netns, *skip_netns}
    best: dict[tuple[str, int], Candidate] = {}
    for proc in processes:
        if proc.pod_uid is None or proc.netns in skipped:
            continue
        key = (proc.pod_uid, proc.netns)
        known = best.get(key)
        if known is None or (proc.start, proc.pid) < (known.start, known.pid):
            best[key] = Candidate(proc.pod_uid, proc.netns, proc.pid, proc.start)
    out: dict[str, list[Candidate]] = {}
    for cand in sorted(best.values(), key=lambda c: (c.start, c.pid)):
        out.setdefault(cand.pod_uid, []).append(cand)
    return out


@dataclass(frozen=True, slots=True)
class Mapped:
    """The pod's namespace: read it through `pid`'s `ns/net` (or an fd opened on it)."""

    pod_uid: str
    netns: int
    pid: int
    note: str | None = None  # e.g. another namespace of the pod's processes was left aside


@dataclass(frozen=True, slots=True)
class Unmapped:
    """The pod could not be mapped to a namespace; `reason` says why (reported, never guessed)."""

    pod_uid: str
    reason: str


@dataclass(frozen=True, slots=True)
class HostNetwork:
    """A hostNetwork pod: it shares the node's rules, there is nothing of its own to read."""

    pod_uid: str


Mapping_ = Mapped | Unmapped | HostNetwork


def decide(
    pod_uid: str,
    pod_ips: Iterable[str],
    host_network: bool,
    found: list[Candidate] | None,
    addresses: Mapping[int, frozenset[str]],
) -> Mapping_:
    """One pod's namespace: the oldest candidate's, if the pod IP is on one of its interfaces.

    `addresses` maps a namespace inode to the addresses on its interfaces (for the oldest candidate at
    least); a namespace whose addresses could not be read is absent."""
    if host_network:
        return HostNetwork(pod_uid)
    if not found:
        return Unmapped(
            pod_uid,
            "no process of this pod in a network namespace of its own on this node "
            "(a pod's namespace is found through its processes' /proc/PID/cgroup)",
        )
    ips = {_normal(ip) for ip in pod_ips if ip}
    first = found[0]
    if not ips:
        return Unmapped(pod_uid, "the pod has no IP yet: its namespace cannot be confirmed")
    have = addresses.get(first.netns)
    if have is None:
        return Unmapped(pod_uid, f"the addresses of namespace net:[{first.netns}] (pid {first.pid}) could not be read")
    if not ips & have:
        return Unmapped(
            pod_uid,
            f"the namespace of its oldest process (pid {first.pid}, net:[{first.netns}]) "
            f"does not hold the pod IP {', '.join(sorted(ips))}: not mapped, not guessed",
        )
    note = None
    if len(found) > 1:
        others = ", ".join(f"pid {c.pid} net:[{c.netns}]" for c in found[1:])
        note = f"processes of this pod in other namespaces ({others}): the oldest (pid {first.pid}) wins"
    return Mapped(pod_uid, first.netns, first.pid, note)


def _normal(ip: str) -> str:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip


def local_addresses(fib_trie: str, if_inet6: str = "") -> frozenset[str]:
    """The addresses on a namespace's interfaces: `/proc/PID/net/fib_trie` (IPv4, the `/32 host LOCAL`
    leaves) and `/proc/PID/net/if_inet6` (IPv6, 32 hex digits per line)."""
    found: set[str] = set()
    last: str | None = None
    for line in fib_trie.splitlines():
        stripped = line.strip()
        if stripped.startswith("|--"):
            last = stripped[3:].strip()
        elif stripped.startswith("/32 host LOCAL") and last is not None:
            found.add(_normal(last))
    for line in if_inet6.splitlines():
        fields = line.split()
        if fields and len(fields[0]) == 32:
            try:
                found.add(str(ipaddress.IPv6Address(int(fields[0], 16))))
            except ValueError:
                continue
    return frozenset(found)


def start_ticks(stat: str) -> int:
    """Field 22 (starttime) of `/proc/PID/stat`; the command name in parentheses may hold spaces."""
    return int(stat.rsplit(")", 1)[1].split()[19])


def netns_inode(link: str) -> int | None:
    """`net:[4026531840]` (readlink of /proc/PID/ns/net) -> 4026531840."""
    match = re.fullmatch(r"net:\[(\d+)\]", link.strip())
    return int(match.group(1)) if match else None
