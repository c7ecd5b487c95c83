"""Where a pod's rules were read from, and what that reading is evidence of. A leaf: the CLI's `--source`
takes NatSource as it starts, and podnat/facts.py labels every reading with it."""

from __future__ import annotations

from enum import Enum


class NatSource(str, Enum):
    """Where a pod's nat table was read from, most live first."""

    NODE = "node"  # the podnat agent on the pod's node, read inside the pod's namespace (podnat/agent/)
    EXEC = "exec"  # iptables-save -c in istio-proxy (works only where the proxy is privileged)
    DEBUG = "debug"  # an ephemeral debug container with NET_ADMIN (opt-in: --debug-container)
    INIT_LOG = "init-log"  # the istio-init (or istio-cni-node) log: applied at pod start, not necessarily live

    @property
    def evidence(self) -> Evidence:
        return Evidence.AT_START if self is NatSource.INIT_LOG else Evidence.LIVE


class Evidence(str, Enum):
    """What a reading of the rules is evidence of: the rules the kernel runs now, or those applied at start."""

    LIVE = "live"  # read in the pod's namespace now (node agent, exec, debug container)
    AT_START = "at-start"  # the istio-init / istio-cni-node log: what was applied when the pod started
