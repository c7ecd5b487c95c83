"""The node side of the agent: scan `/proc`, map pods to network namespaces, read inside them.

I/O only; the decisions are podnat/agent/procmap.py's. Reading a pod runs the capture script the exec
path runs in istio-proxy (podnat.capture: both iptables backends' save commands for both families,
nft -j list ruleset, Envoy's listeners from the admin port, `ip rule`/`ip route`) under
`nsenter --net` into the pod's namespace, and hands its output to the same readers
(split_sections, interpret_nat, interpret_listeners, interpret_routing): one code path for both.

The namespace is held by an fd opened when the pod is mapped (and checked to be the inode that was
mapped), so a PID reused between the scan and the read cannot point the agent at another namespace,
and the mapped process exiting mid-read does not change what is read.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from podnat.agent import procmap
from podnat.capture import capture_script
from podnat.evidence import NatSource
from podnat.facts import ExecResult, PodFacts, PodRef
from podnat.istio.mesh import MeshMode
from podnat.istio.pod import pod_info
from podnat.kube.errors import Failure, KubeSourceError
from podnat.sources import (
    ambient_facts,
    ambient_script,
    interpret_listeners,
    interpret_nat,
    interpret_routing,
    split_sections,
)

READ_TIMEOUT = 20.0


@dataclass(frozen=True, slots=True)
class PodNetns:
    """A mapped pod: its namespace (inode), the process it was found through, an fd holding it."""

    uid: str
    netns: int
    pid: int
    fd: int
    note: str | None = None


class NodeScanner:
    """Scans a `/proc` (the node's, e.g. mounted read-only at /host/proc) for pods' namespaces."""

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self.proc = proc
        self.own_netns = _inode(Path("/proc/self/ns/net"))
        self.denied = 0  # PIDs whose ns/net the last scan could not read

    def node_netns(self) -> int | None:
        return _inode(self.proc / "1" / "ns" / "net")

    def processes(self) -> list[procmap.Process]:
        """Every readable PID: start time, netns inode, pod UID; a PID that exits mid-scan is left out."""
        out: list[procmap.Process] = []
        self.denied = 0
        node = self.node_netns()
        try:
            names = os.listdir(self.proc)  # noqa: PTH208 (strings, not Paths: thousands of PIDs per sweep)
        except OSError:
            return out
        for name in names:
            if not name.isdigit():
                continue
            base = self.proc / name
            try:
                netns = procmap.netns_inode(os.readlink(base / "ns" / "net"))  # noqa: PTH115
                if netns is None or netns in (node, self.own_netns):
                    continue  # the node's own namespace (most processes): no need to read more
                uid = procmap.pod_uid_from_cgroup((base / "cgroup").read_text())
                if uid is None:
                    continue
                start = procmap.start_ticks((base / "stat").read_text())
            except PermissionError:
                self.denied += 1  # no CAP_SYS_PTRACE: another user's process
                continue
            except (OSError, ValueError, IndexError):
                continue  # exited, or a kernel thread without these files
            out.append(procmap.Process(int(name), start, netns, uid))
        return out

    def addresses(self, pid: int) -> frozenset[str] | None:
        try:
            fib = (self.proc / str(pid) / "net" / "fib_trie").read_text()
        except OSError:
            return None
        try:
            inet6 = (self.proc / str(pid) / "net" / "if_inet6").read_text()
        except OSError:
            inet6 = ""  # IPv6 off in that namespace
        return procmap.local_addresses(fib, inet6)

    def map_pods(self, pods: Iterable[Mapping[str, Any]]) -> dict[str, procmap.Mapping_]:
        """Each pod (by UID) mapped to its namespace, or why not."""
        found = procmap.candidates(self.processes(), self.node_netns(), [i for i in (self.own_netns,) if i])
        out: dict[str, procmap.Mapping_] = {}
        for pod in pods:
            meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
            uid = str(meta.get("uid") or "")
            ips = [str(e.get("ip")) for e in status.get("podIPs") or [] if e.get("ip")] or (
                [str(status["podIP"])] if status.get("podIP") else []
            )
            cands = found.get(uid)
            addresses: dict[int, frozenset[str]] = {}
            if cands:
                seen = self.addresses(cands[0].pid)
                if seen is not None:
                    addresses[cands[0].netns] = seen
            found_ = procmap.decide(uid, ips, bool(spec.get("hostNetwork")), cands, addresses)
            if isinstance(found_, procmap.Unmapped) and self.denied:
                found_ = procmap.Unmapped(
                    uid,
                    f"{found_.reason}; the namespaces of {self.denied} processes could "
                    "not be read (permission denied: the agent needs CAP_SYS_PTRACE)",
                )
            out[uid] = found_
        return out

    def hold(self, mapped: procmap.Mapped) -> PodNetns:
        """Open the mapped process's namespace and check it is the one mapped (the PID may be reused)."""
        path = self.proc / str(mapped.pid) / "ns" / "net"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise KubeSourceError(
                Failure.API_ERROR,
                f"the process mapped to this pod (pid {mapped.pid}) exited "
                f"before its namespace was opened ({exc.strerror}): it is mapped again next "
                "sweep",
            ) from exc
        if os.fstat(fd).st_ino != mapped.netns:
            os.close(fd)
            raise KubeSourceError(
                Failure.API_ERROR,
                f"pid {mapped.pid} is no longer in net:[{mapped.netns}] (it "
                "exited and the pid was reused): mapped again next sweep",
            )
        return PodNetns(mapped.pod_uid, mapped.netns, mapped.pid, fd, mapped.note)


class NodePodSource:
    """PodSource for the agent: a pod's facts read inside its namespace from the node.

    `netns_of(uid)` gives the held namespace of a mapped pod (or raises why it is not mapped)."""

    def __init__(
        self,
        node: str,
        netns_of: Any,
        timeout: float = READ_TIMEOUT,
        pods: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.node = node
        self.netns_of = netns_of
        self.timeout = timeout
        self.pods = pods

    def list_pods(self, namespace: str | None, selector: str | None = None) -> list[dict[str, Any]]:
        """The node's pods the agent keeps (e.g. ztunnel's, whose image tells an ambient pod's release)."""
        if self.pods is None:
            raise NotImplementedError("this source keeps no pods")
        from podnat.selectors import parse_label_selector, selects

        requirements = parse_label_selector(selector)
        return [
            p
            for p in self.pods()
            if (namespace is None or (p.get("metadata") or {}).get("namespace") == namespace)
            and selects(p, requirements, [])
        ]

    def get_pod(self, ref: PodRef) -> dict[str, Any]:
        raise NotImplementedError("the agent keeps its pods from the API server's watch")

    def read_facts(self, pod: Mapping[str, Any], source: NatSource | None, debug_container: bool) -> PodFacts:
        del source, debug_container
        meta = pod.get("metadata") or {}
        ref = PodRef(str(meta.get("namespace") or "default"), str(meta.get("name") or "?"))
        pod = pod_info(pod)  # a PodInfo from the use case: read once
        mesh, why = pod.mesh, pod.mesh_note
        if mesh is MeshMode.NO_SIDECAR:
            return PodFacts(ref=ref, pod=pod, mesh=mesh, notes=(why,))
        held: PodNetns = self.netns_of(str(meta.get("uid") or ""))
        notes = [n for n in (why, held.note) if n]
        if mesh is MeshMode.AMBIENT:
            marker = f"podnat-{secrets.token_hex(8)}"
            result = self.run_in(held, ["sh", "-c", ambient_script(marker, skip_known=True)])
            sections = split_sections(result, marker)
            if sections is None:
                detail = " ".join((result.stderr or result.stdout).split())[:200]
                raise KubeSourceError(
                    Failure.API_ERROR,
                    f"reading the namespace of pod {ref} (pid {held.pid}, "
                    f"net:[{held.netns}]) failed (exit {result.returncode}): {detail or 'no output'}",
                )
            return ambient_facts(pod, ref, sections, f"node agent on {self.node}", NatSource.NODE, tuple(notes))
        port, table = pod.admin_port, pod.tproxy_route_table
        marker = f"podnat-{secrets.token_hex(8)}"
        result = self.run_in(held, ["sh", "-c", capture_script(marker, port, table, skip_known=True)])
        sections = split_sections(result, marker)
        if sections is None:
            detail = " ".join((result.stderr or result.stdout).split())[:200]
            raise KubeSourceError(
                Failure.API_ERROR,
                f"reading the namespace of pod {ref} (pid {held.pid}, "
                f"net:[{held.netns}]) failed (exit {result.returncode}): {detail or 'no output'}",
            )
        where = f"node agent on {self.node}"
        nat, nat_error = interpret_nat(sections, ref, where, NatSource.NODE)
        if nat is None:
            assert nat_error is not None
            raise nat_error
        listeners, listeners_error = interpret_listeners(sections.get("listeners"), where)
        if listeners is not None:  # on the node there is no pilot-agent: curl asked the admin port itself
            listeners = replace(
                listeners,
                label=listeners.label.replace(
                    "pilot-agent request GET listeners?format=json",
                    f"Envoy's admin port 127.0.0.1:{port}/listeners, in the pod's network namespace",
                ),
            )
        if listeners_error:
            notes.append(listeners_error)
        routing = interpret_routing(sections, where, table) if table is not None else None
        if mesh is MeshMode.NO_CAPTURE:
            return PodFacts(ref=ref, pod=pod, listeners=listeners, notes=tuple(notes), mesh=mesh)
        return PodFacts(ref=ref, pod=pod, nat=nat, listeners=listeners, notes=tuple(notes), mesh=mesh, routing=routing)

    def run_in(self, held: PodNetns, argv: list[str]) -> ExecResult:
        """argv in the held namespace (network only: the agent's own files and tools), bounded in time."""
        command = ["nsenter", f"--net=/proc/self/fd/{held.fd}", "--", *argv]
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                pass_fds=(held.fd,),
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise KubeSourceError(Failure.TIMEOUT, f"reading net:[{held.netns}] took over {self.timeout:g}s") from exc
        except OSError as exc:
            raise KubeSourceError(Failure.TOOL_MISSING, f"cannot run nsenter: {exc.strerror or exc}") from exc
        return ExecResult(done.stdout, done.stderr, done.returncode)


def release(held: Iterable[PodNetns]) -> None:
    for item in held:
        with contextlib.suppress(OSError):
            os.close(item.fd)


def _inode(path: Path) -> int | None:
    try:
        return procmap.netns_inode(os.readlink(path))  # noqa: PTH115
    except OSError:
        return None
