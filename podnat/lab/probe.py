"""Real connections in the lab, and what the kernel and Envoy counted for them (tests and demos).

`connect` opens one connection from inside a lab namespace as a given uid; `nat_counters` reads a
pod's rule counters through the Kubernetes API from podnat's debug container (as a user would);
`listener_connections` reads Envoy's per-listener connection totals. Only lab addresses are used.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any

from podnat.netfilter.nft import detect_and_parse


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """How one connection ended: curl's exit code, and the body when it got an answer."""

    returncode: int
    body: str

    @property
    def answered(self) -> bool:
        return self.returncode == 0

    @property
    def refused(self) -> bool:
        return self.returncode == 7  # curl: failed to connect

    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


def connect(netns: str, url: str, uid: int | None = None, gid: int | None = None, timeout: float = 3.0) -> ProbeResult:
    """`curl URL` from `netns` as uid/gid (root when None); a `tcp://IP:PORT` URL only connects."""
    if url.startswith("tcp://"):
        host, port = url[len("tcp://"):].rsplit(":", 1)
        code = (f"import socket; s=socket.create_connection(({host!r}, {port}), timeout={timeout}); "
                "s.close(); print('connected')")
        argv = ["/usr/bin/python3", "-c", code]
    else:
        argv = ["curl", "-s", "-m", str(timeout), url]
    if uid is not None:
        argv = ["setpriv", "--reuid", str(uid), "--regid", str(gid if gid is not None else uid), "--clear-groups",
                "--", *argv]
    result = subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True,
                            timeout=timeout + 10, check=False)
    code = result.returncode
    if url.startswith("tcp://") and code != 0:
        code = 7 if "refused" in result.stderr.lower() else 28
    return ProbeResult(code, result.stdout)


def parse_counters(text: str) -> dict[str, int]:
    """`iptables-save -c` text -> {rule ref: packets}."""
    ruleset = detect_and_parse(text)
    return {rule.ref: rule.counters.packets for table in ruleset.tables.values() for rule in table.rules()
            if rule.counters is not None}


def nat_counters(
    source: Any, pod: Any, container: str = "podnat-debug", save: str = "iptables-save"
) -> tuple[str, dict[str, int]]:
    """The pod's live table with counters, read through the API in podnat's debug container."""
    result = source.exec(pod, container, [save, "-c"])
    if result.returncode not in (0, None):
        raise RuntimeError(f"iptables-save in {container}: {result.stderr.strip()[:200]}")
    return result.stdout, parse_counters(result.stdout)


def listener_connections(netns: str) -> dict[str, int]:
    """Envoy's downstream connection totals per listener (`listener.<name>.downstream_cx_total`)."""
    result = subprocess.run(["ip", "netns", "exec", netns, "curl", "-s", "-m", "3",
                             "http://127.0.0.1:15000/stats?filter=downstream_cx_total$"],
                            capture_output=True, text=True, timeout=15, check=False)
    totals: dict[str, int] = {}
    for line in result.stdout.splitlines():
        name, _, value = line.partition(": ")
        if (name.startswith("listener.") and name.endswith(".downstream_cx_total") and ".worker_" not in name
                and value.strip().isdigit()):
            totals[name[len("listener."):-len(".downstream_cx_total")]] = int(value)
    return totals
