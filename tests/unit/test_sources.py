"""The source policy (podnat/sources.py) with a fake cluster: which source reads a pod, in which order, which
failures allow the next, and that a source asked for by name is never replaced.

The fake is the `Cluster` port in a few dozen lines: pods and logs in dicts, errors a test injects as the
`SourceError` the real adapter raises, and containers that are directories of stub executables (each prints
canned output), so exec really runs the argv, podnat's capture script included, with PATH set to that
directory. The real client against a real API server is tests/integration/test_kube_cluster_lab.py's.
"""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import REFERENCE

from podnat.capture import capture_script
from podnat.facts import (
    DebugContainer,
    ExecResult,
    Failure,
    MeshMode,
    NatReading,
    NatSource,
    PodFacts,
    PodRef,
    SourceError,
)
from podnat.namespaces import check_namespace
from podnat.sources import ALLOWS_NEXT, ORDER, Choice, LiveSource, read_facts, split_sections

NS = "bookinfo"
POD = "reviews-v1-7f9c6b-x2k4p"
IMAGE = "docker.io/istio/proxyv2:1.24.2"
REPO = Path(__file__).resolve().parents[2]
LIVE = REFERENCE / "kernel-save" / "iptables" / "inbound-ports-wildcard.v4.iptables-save"
NFT_LIVE = REFERENCE / "kernel-save" / "nftables" / "inbound-ports-wildcard.nft-list-ruleset"
LISTENERS = (
    '{"listener_statuses":[{"name":"virtualOutbound","local_address":{"socket_address":'
    '{"address":"0.0.0.0","port_value":15001}}}]}'
)
NFT_DENIED = ("Could not fetch rule set generation id: Permission denied (you must be root)\n", 4)
LEGACY_DENIED = (
    "iptables-save v1.8.9 (legacy): Cannot initialize: Permission denied (you must be root)\n",
    1,
)
# The one-line errors the adapter (podnat/kube/cluster.py) makes of the API's answers, as a test injects them.
EXEC_FORBIDDEN = SourceError(
    Failure.FORBIDDEN,
    "cannot create pods/exec in namespace bookinfo: grant it (manifests/rbac/) or use --source init-log",
)
PATCH_FORBIDDEN = SourceError(
    Failure.FORBIDDEN,
    "cannot patch pods/ephemeralcontainers in namespace bookinfo: grant it (ClusterRole podnat-debug-container, "
    "manifests/rbac/) or read without a debug container",
)
LOG_FORBIDDEN = SourceError(Failure.FORBIDDEN, "cannot get pods/log in namespace bookinfo: grant it (manifests/rbac/)")


def make_pod(
    name: str = POD,
    ns: str = NS,
    *,
    proxy: bool = True,
    native: bool = False,
    init: str | None = "istio-init",
    phase: str = "Running",
    proxy_state: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    node: str = "node-1",
    owner: str | None = None,
) -> dict[str, Any]:
    containers: list[dict[str, Any]] = [{"name": "reviews", "image": "reviews:1"}]
    inits: list[dict[str, Any]] = []
    if init:
        inits.append({"name": init, "image": IMAGE, "args": ["istio-iptables", "-p", "15001"]})
    proxy_spec = {"name": "istio-proxy", "image": IMAGE}
    if proxy and native:
        inits.append({**proxy_spec, "restartPolicy": "Always"})
    elif proxy:
        containers.append(proxy_spec)
    state = proxy_state or {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
    statuses = [{"name": "reviews", "ready": True, "state": {"running": {}}}]
    init_statuses = []
    if proxy and native:
        init_statuses.append({"name": "istio-proxy", "ready": "running" in state, "state": state})
    elif proxy:
        statuses.append({"name": "istio-proxy", "ready": "running" in state, "state": state})
    meta: dict[str, Any] = {
        "name": name,
        "namespace": ns,
        "annotations": annotations or {},
        "labels": labels or {"app": "reviews"},
        "creationTimestamp": "2026-01-01T00:00:00Z",
    }
    if owner:
        meta["ownerReferences"] = [{"kind": "ReplicaSet", "name": owner, "apiVersion": "apps/v1"}]
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": meta,
        "spec": {"containers": containers, "initContainers": inits, "nodeName": node},
        "status": {
            "phase": phase,
            "containerStatuses": statuses,
            "initContainerStatuses": init_statuses,
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


@dataclass
class FakeCluster:
    """The Cluster port over dicts and stub directories; `calls` records what the policy asked for."""

    root: Path
    pods: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    logs: dict[tuple[str, str, str], str] = field(default_factory=dict)
    containers: dict[tuple[str, str, str], Path] = field(default_factory=dict)
    fail: dict[str, SourceError] = field(default_factory=dict)  # "exec:CONTAINER", "add_debug_container", ...
    agent: PodFacts | SourceError | None = None  # the node agent's answer (None: no agent on the node)
    calls: list[str] = field(default_factory=list)

    def _call(self, what: str, *keys: str) -> None:
        self.calls.append(what)
        for key in (what, *keys):
            if key in self.fail:
                raise self.fail[key]

    def add_pod(self, pod: dict[str, Any]) -> dict[str, Any]:
        self.pods[(pod["metadata"]["namespace"], pod["metadata"]["name"])] = pod
        return pod

    def container(
        self, pod: str, name: str, tools: dict[str, tuple[str, str, int]], *, shell: bool = True, ns: str = NS
    ) -> Path:
        """A container: a directory of stubs; each tool prints (stdout, stderr) and exits rc."""
        d = self.root / f"{ns}.{pod}.{name}"
        d.mkdir(parents=True, exist_ok=True)
        if shell:
            (d / "sh").symlink_to(shutil.which("sh") or "/bin/sh")
        for tool, (out, err, rc) in tools.items():
            (d / f"{tool}.out").write_text(out)
            (d / f"{tool}.err").write_text(err)
            script = d / tool
            script.write_text(f"#!/bin/sh\n/bin/cat '{d}/{tool}.out'\n/bin/cat '{d}/{tool}.err' >&2\nexit {rc}\n")
            script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        self.containers[(ns, pod, name)] = d
        return d

    def list_pods(self, namespace: str | None, selector: str | None = None, node: str | None = None) -> list[Any]:
        self._call("list_pods", f"list_pods:{namespace}")
        want = dict(term.split("=", 1) for term in (selector or "").split(",") if term)
        return [
            p
            for (ns, _), p in self.pods.items()
            if namespace in (None, ns)
            and all(p["metadata"].get("labels", {}).get(k) == v for k, v in want.items())
            and node in (None, p["spec"].get("nodeName"))
        ]

    def get_pod(self, ref: PodRef) -> dict[str, Any]:
        self._call("get_pod")
        if (ref.namespace, ref.name) not in self.pods:
            raise SourceError(Failure.NOT_FOUND, f"pod {ref.name} not found in namespace {ref.namespace}")
        return self.pods[(ref.namespace, ref.name)]

    def get_namespace(self, name: str) -> dict[str, Any]:
        self._call("get_namespace")
        if name not in {ns for ns, _ in self.pods} | {"empty"}:
            raise SourceError(Failure.NOT_FOUND, f"namespace {name} does not exist")
        return {"kind": "Namespace", "metadata": {"name": name}}

    def exec(self, ref: PodRef, container: str, argv: list[str]) -> ExecResult:
        self._call("exec", f"exec:{container}")
        directory = self.containers.get((ref.namespace, ref.name, container))
        if directory is None:
            raise SourceError(Failure.PROXY_NOT_READY, f"pod {ref} has no running container {container}")
        return run_in_container(directory, argv)

    def read_log(self, ref: PodRef, container: str) -> str:
        self._call("read_log")
        text = self.logs.get((ref.namespace, ref.name, container))
        if text is None:
            raise SourceError(Failure.PROXY_NOT_READY, f"pod {ref} has no container {container}")
        return text

    def add_debug_container(self, pod: Any, container: Any) -> DebugContainer:
        self._call("add_debug_container")
        spec = self.pods[(pod["metadata"]["namespace"], pod["metadata"]["name"])]["spec"]
        existing = spec.setdefault("ephemeralContainers", [])
        added = not any(c["name"] == container["name"] for c in existing)
        if added:
            existing.append(dict(container))
        return DebugContainer(container["name"], added)

    def agent_facts(self, pod: Any) -> PodFacts | None:
        self.calls.append("agent_facts")
        if isinstance(self.agent, SourceError):
            raise self.agent
        return self.agent

    def agent_absent(self, pod: Any) -> str:
        return "no running pod labelled app.kubernetes.io/name=podnat-agent in namespace podnat-system"


def run_in_container(directory: Path, argv: list[str]) -> ExecResult:
    """Run argv "in" a container: PATH is the container's stub directory, nothing else."""
    if not argv or not (directory / argv[0]).exists():
        msg = (
            f'OCI runtime exec failed: exec failed: unable to start container process: exec: "{argv[0]}": '
            "executable file not found in $PATH: unknown\r\n"
        )
        return ExecResult("", msg, 126)
    proc = subprocess.run(
        argv, env={"PATH": str(directory)}, capture_output=True, text=True, timeout=20, check=False, cwd=directory
    )
    return ExecResult(proc.stdout, proc.stderr, proc.returncode)


@pytest.fixture
def fake(tmp_path: Path) -> FakeCluster:
    return FakeCluster(root=tmp_path / "containers")


def source_for(fake: FakeCluster, debug_image: str | None = None) -> LiveSource:
    return LiveSource(fake, debug_image=debug_image)


def init_log() -> str:
    dump = LIVE.read_text()
    return (
        "2026-01-01T00:00:00.000000Z\tinfo\tRunning iptables restore with: iptables-nft-restore and the "
        "following input:\n* nat\n-A OUTPUT -j ISTIO_OUTPUT\nCOMMIT\n"
        f"2026-01-01T00:00:00.100000Z\tinfo\tFinal iptables state (IPv4):\n{dump}"
    )


def unprivileged_proxy(fake: FakeCluster, denial: tuple[str, int] = NFT_DENIED) -> None:
    fake.container(
        POD,
        "istio-proxy",
        {
            "iptables-save": ("", denial[0], denial[1]),
            "ip6tables-save": ("", denial[0], denial[1]),
            "pilot-agent": (LISTENERS, "", 0),
        },
    )


def privileged_proxy(fake: FakeCluster) -> Path:
    return fake.container(
        POD,
        "istio-proxy",
        {"iptables-save": (LIVE.read_text(), "", 0), "ip6tables-save": ("", "", 0), "pilot-agent": (LISTENERS, "", 0)},
    )


def debug_container(fake: FakeCluster) -> Path:
    return fake.container(
        POD,
        "podnat-debug",
        {
            "iptables-save": (LIVE.read_text(), "", 0),
            "ip6tables-save": ("", "", 0),
            "nft": (NFT_LIVE.read_text(), "", 0),
            "pilot-agent": (LISTENERS, "", 0),
        },
    )


def expect(err: pytest.ExceptionInfo[SourceError], failure: Failure, text: str) -> None:
    assert err.value.failure is failure, err.value.message
    assert err.value.code == 3
    assert text in err.value.message, err.value.message
    assert "\n" not in err.value.message


# --- the policy as data ----------------------------------------------------------------------------------


def test_the_default_order_and_what_a_demand_tries() -> None:
    assert ORDER == (NatSource.NODE, NatSource.EXEC, NatSource.DEBUG, NatSource.INIT_LOG)
    assert Choice().plan() == (NatSource.NODE, NatSource.EXEC, NatSource.INIT_LOG)
    assert Choice(debug_container=True).plan() == ORDER  # --debug-container: a permission within the order
    for source in NatSource:
        assert Choice(source, debug_container=True).plan() == (source,)  # --source NAME: that source alone
    # Failures that say the API itself failed never allow the next source.
    assert not ALLOWS_NEXT & {Failure.UNAUTHORIZED, Failure.UNREACHABLE, Failure.TIMEOUT, Failure.API_ERROR}


def test_live_or_applied_at_start_is_the_source_s() -> None:
    live = {s for s in NatSource if NatReading(s, "", "").live}
    assert live == {NatSource.NODE, NatSource.EXEC, NatSource.DEBUG}
    assert PodFacts(PodRef(NS, POD), {}).live is None  # nothing read (e.g. no sidecar)


# --- reading a healthy pod ----------------------------------------------------------------------


def test_privileged_proxy_one_exec_reads_table_and_listeners(fake: FakeCluster) -> None:
    fake.add_pod(make_pod())
    privileged_proxy(fake)
    facts = source_for(fake).read_facts(fake.pods[(NS, POD)], None, False)
    assert facts.nat is not None and facts.nat.source is NatSource.EXEC and facts.live is True
    assert facts.nat.v4 == LIVE.read_text() and facts.nat.counters
    assert facts.nat.label == "exec istio-proxy: iptables-save -c"
    assert facts.listeners is not None and "virtualOutbound" in facts.listeners.json_text
    assert fake.calls == ["agent_facts", "exec"]  # one exec for the table, v6, nft and listeners


def test_permission_denied_falls_back_to_init_log_and_says_it_is_not_live(fake: FakeCluster) -> None:
    fake.add_pod(make_pod())
    unprivileged_proxy(fake, NFT_DENIED)
    fake.logs[(NS, POD, "istio-init")] = init_log()
    facts = source_for(fake).read_facts(fake.pods[(NS, POD)], None, False)
    assert facts.nat is not None and facts.nat.source is NatSource.INIT_LOG and facts.live is False
    assert facts.nat.label == "istio-init log: applied at pod start, not necessarily live"
    assert LIVE.read_text() in facts.nat.v4
    assert facts.listeners is not None  # read by the same exec that met the permission error
    assert any("cannot read the nat table without NET_ADMIN" in n for n in facts.notes)
    assert not any("Could not fetch" in n for n in facts.notes)  # never shown raw
    assert fake.calls == ["agent_facts", "exec", "read_log"]  # one exec + one log read


def test_permission_denied_legacy_backend_with_source_exec(fake: FakeCluster) -> None:
    fake.add_pod(make_pod())
    unprivileged_proxy(fake, LEGACY_DENIED)
    fake.logs[(NS, POD, "istio-init")] = init_log()
    with pytest.raises(SourceError) as err:
        source_for(fake).read_facts(fake.pods[(NS, POD)], NatSource.EXEC, False)
    expect(
        err,
        Failure.NAT_PERMISSION,
        "istio-proxy cannot read the nat table without NET_ADMIN (pod bookinfo/reviews-v1-7f9c6b-x2k4p): "
        "rerun with --debug-container, or read the rules applied at start with --source init-log",
    )
    assert "read_log" not in fake.calls  # a demand is never replaced


def test_debug_container_added_then_reused(fake: FakeCluster) -> None:
    fake.add_pod(make_pod())
    unprivileged_proxy(fake)
    debug_container(fake)
    src = source_for(fake)
    facts = src.read_facts(fake.pods[(NS, POD)], None, True)
    assert facts.nat is not None and facts.nat.source is NatSource.DEBUG and facts.live is True
    assert (facts.nat.debug_container, facts.nat.debug_container_added) == ("podnat-debug", True)
    assert facts.nat.v4 == LIVE.read_text() and facts.nat.nft == NFT_LIVE.read_text()
    assert facts.nat.listeners_json == LISTENERS
    assert any(n.startswith("added ephemeral container podnat-debug") for n in facts.notes)
    spec = fake.pods[(NS, POD)]["spec"]["ephemeralContainers"][0]
    assert spec["image"] == IMAGE and spec["targetContainerName"] == "istio-proxy"
    assert spec["securityContext"]["runAsUser"] == 0
    assert spec["securityContext"]["capabilities"]["add"] == ["NET_ADMIN", "NET_RAW"]
    assert fake.calls == ["agent_facts", "exec", "add_debug_container", "exec"]

    again = src.read_facts(fake.pods[(NS, POD)], None, True)
    assert again.nat is not None and again.nat.debug_container_added is False
    assert "reused ephemeral container podnat-debug" in again.notes
    assert len(fake.pods[(NS, POD)]["spec"]["ephemeralContainers"]) == 1


def test_a_running_debug_container_is_read_before_exec(fake: FakeCluster) -> None:
    """With --debug-container, a debug container the pod's status shows running reads the live rules first:
    no exec in istio-proxy (which cannot read them) before it."""
    pod = fake.add_pod(make_pod())
    pod["status"]["ephemeralContainerStatuses"] = [{"name": "podnat-debug", "state": {"running": {}}}]
    unprivileged_proxy(fake)
    debug_container(fake)
    facts = source_for(fake).read_facts(pod, None, True)
    assert facts.nat is not None and facts.nat.source is NatSource.DEBUG and facts.live is True
    assert facts.nat.listeners_json == LISTENERS
    assert fake.calls == ["agent_facts", "add_debug_container", "exec"]
    # without --debug-container the running container is not used: exec first, as always
    fake.calls.clear()
    fake.logs[(NS, POD, "istio-init")] = init_log()
    from_log = source_for(fake).read_facts(pod, None, False)
    assert from_log.nat is not None and from_log.nat.source is NatSource.INIT_LOG
    assert fake.calls[:2] == ["agent_facts", "exec"] and "add_debug_container" not in fake.calls


def test_source_debug_skips_exec(fake: FakeCluster) -> None:
    fake.add_pod(make_pod())
    unprivileged_proxy(fake)
    debug_container(fake)
    facts = source_for(fake).read_facts(fake.pods[(NS, POD)], NatSource.DEBUG, False)
    assert facts.nat is not None and facts.nat.source is NatSource.DEBUG
    assert fake.calls == ["add_debug_container", "exec"]


def test_debug_container_rejected_by_pod_security(fake: FakeCluster) -> None:
    fake.add_pod(make_pod())
    unprivileged_proxy(fake)
    fake.logs[(NS, POD, "istio-init")] = init_log()
    fake.fail["add_debug_container"] = SourceError(
        Failure.POD_SECURITY,
        "Pod Security admission (baseline:latest) rejected podnat's debug container in bookinfo (it needs uid 0, "
        "NET_ADMIN and NET_RAW): use --source init-log, or relabel the namespace "
        "pod-security.kubernetes.io/enforce=privileged",
    )
    with pytest.raises(SourceError) as err:
        source_for(fake).read_facts(fake.pods[(NS, POD)], NatSource.DEBUG, True)
    expect(err, Failure.POD_SECURITY, "Pod Security admission (baseline:latest) rejected podnat's debug container")
    assert "read_log" not in fake.calls


def test_debug_container_forbidden_falls_back_but_never_silently(fake: FakeCluster) -> None:
    """--debug-container alone is a permission: with a token that may not patch pods/ephemeralcontainers the
    init log is read, the notes say why, and the facts say the rules are not live."""
    fake.add_pod(make_pod())
    unprivileged_proxy(fake)
    fake.logs[(NS, POD, "istio-init")] = init_log()
    fake.fail["add_debug_container"] = PATCH_FORBIDDEN
    facts = source_for(fake).read_facts(fake.pods[(NS, POD)], None, True)
    assert facts.nat is not None and facts.nat.source is NatSource.INIT_LOG
    assert facts.live is False
    assert PATCH_FORBIDDEN.message in facts.notes
    assert fake.calls == ["agent_facts", "exec", "add_debug_container", "read_log"]


@pytest.mark.parametrize(
    ("source", "fail", "grant"),
    [
        (NatSource.EXEC, {"exec": EXEC_FORBIDDEN}, "cannot create pods/exec in namespace bookinfo: grant it"),
        (
            NatSource.DEBUG,
            {"add_debug_container": PATCH_FORBIDDEN},
            "cannot patch pods/ephemeralcontainers in namespace bookinfo: grant it",
        ),
        (NatSource.INIT_LOG, {"read_log": LOG_FORBIDDEN}, "cannot get pods/log in namespace bookinfo: grant it"),
        (
            NatSource.NODE,
            {},
            "no podnat agent on node node-1 of pod bookinfo/reviews-v1-7f9c6b-x2k4p (no running pod labelled "
            "app.kubernetes.io/name=podnat-agent in namespace podnat-system): install it",
        ),
    ],
)
def test_a_source_asked_for_by_name_is_a_demand(
    fake: FakeCluster, source: NatSource, fail: dict[str, SourceError], grant: str
) -> None:
    """Denied or unavailable: that is the pod's error (exit 3, saying what to grant), and nothing else is read,
    although every other source would work here."""
    fake.add_pod(make_pod())
    privileged_proxy(fake)
    debug_container(fake)
    fake.logs[(NS, POD, "istio-init")] = init_log()
    fake.fail.update(fail)
    with pytest.raises(SourceError) as err:
        source_for(fake).read_facts(fake.pods[(NS, POD)], source, True)
    assert err.value.code == 3 and grant in err.value.message, err.value.message
    assert len(fake.calls) == 1, fake.calls


def test_an_agent_podnat_may_not_ask_is_a_note_and_exec_reads_instead(fake: FakeCluster) -> None:
    fake.add_pod(make_pod())
    privileged_proxy(fake)
    fake.agent = SourceError(
        Failure.FORBIDDEN,
        "the podnat agent podnat-agent-x1 on node node-1 could not be asked: cannot get pods/proxy in namespace "
        "podnat-system: grant it (manifests/rbac/)",
    )
    src = source_for(fake)
    facts = src.read_facts(fake.pods[(NS, POD)], None, False)
    assert facts.nat is not None and facts.nat.source is NatSource.EXEC
    assert f"{fake.agent.message}: read without it" in facts.notes
    with pytest.raises(SourceError) as caught:
        src.read_facts(fake.pods[(NS, POD)], NatSource.NODE, False)
    assert caught.value.failure is Failure.FORBIDDEN


def test_a_table_the_agent_read_live_and_found_unreadable_is_the_pods_error(fake: FakeCluster) -> None:
    """Not a note to read on without it: exec would read the same table, the log the rules applied at start."""
    fake.add_pod(make_pod())
    privileged_proxy(fake)
    fake.agent = SourceError(
        Failure.TABLE_UNREADABLE,
        "the podnat agent podnat-agent-x1 on node node-1 could not read the pod: iptables-nft-save failed in "
        "node agent on node-1 of pod bookinfo/reviews-v1-7f9c6b-x2k4p (exit 3): Parsing nftables rule failed",
    )
    with pytest.raises(SourceError) as caught:
        source_for(fake).read_facts(fake.pods[(NS, POD)], None, False)
    assert caught.value is fake.agent and caught.value.code == 3
    assert fake.calls == ["agent_facts"]


def test_the_agent_s_facts_come_first(fake: FakeCluster) -> None:
    fake.add_pod(make_pod())
    reading = NatReading(NatSource.NODE, "podnat agent podnat-agent-x1 on node node-1: iptables-save -c", "x")
    fake.agent = PodFacts(PodRef(NS, POD), fake.pods[(NS, POD)], nat=reading, notes=("agent note",))
    facts = source_for(fake).read_facts(fake.pods[(NS, POD)], None, True)
    assert facts.nat == reading and facts.live is True and facts.notes == ("agent note",)
    assert fake.calls == ["agent_facts"]


def test_forbidden_exec_auto_mode_uses_init_log(fake: FakeCluster) -> None:
    fake.add_pod(make_pod())
    fake.logs[(NS, POD, "istio-init")] = init_log()
    fake.fail["exec"] = EXEC_FORBIDDEN
    facts = source_for(fake).read_facts(fake.pods[(NS, POD)], None, False)
    assert facts.nat is not None and facts.nat.source is NatSource.INIT_LOG
    assert facts.listeners is None
    assert EXEC_FORBIDDEN.message in facts.notes


def test_when_the_log_fails_too_both_reasons_are_said(fake: FakeCluster) -> None:
    fake.add_pod(make_pod())
    unprivileged_proxy(fake)
    fake.fail["read_log"] = LOG_FORBIDDEN
    with pytest.raises(SourceError) as err:
        source_for(fake).read_facts(fake.pods[(NS, POD)], None, False)
    expect(
        err,
        Failure.FORBIDDEN,
        "istio-proxy cannot read the nat table without NET_ADMIN (pod bookinfo/reviews-v1-7f9c6b-x2k4p); "
        f"the log fallback failed too: {LOG_FORBIDDEN.message}",
    )


def test_a_failure_of_the_api_itself_allows_no_next_source(fake: FakeCluster) -> None:
    fake.add_pod(make_pod())
    fake.logs[(NS, POD, "istio-init")] = init_log()
    fake.fail["exec"] = SourceError(Failure.UNAUTHORIZED, "the API server rejected the credentials")
    with pytest.raises(SourceError) as err:
        source_for(fake).read_facts(fake.pods[(NS, POD)], None, True)
    assert err.value.failure is Failure.UNAUTHORIZED
    assert fake.calls == ["agent_facts", "exec"]


def test_exec_denied_by_policy_is_the_error_of_source_exec(fake: FakeCluster) -> None:
    fake.add_pod(make_pod())
    fake.fail["exec"] = SourceError(
        Failure.EXEC_DENIED,
        "a policy denied create pods/exec on pod bookinfo/reviews-v1-7f9c6b-x2k4p: ...; "
        "ask for an exception or use --source init-log",
    )
    with pytest.raises(SourceError) as err:
        source_for(fake).read_facts(fake.pods[(NS, POD)], NatSource.EXEC, False)
    expect(err, Failure.EXEC_DENIED, "a policy denied create pods/exec")


def test_pod_not_running(fake: FakeCluster) -> None:
    pod = fake.add_pod(make_pod(phase="Pending"))
    with pytest.raises(SourceError) as err:
        source_for(fake).read_facts(pod, None, False)
    expect(err, Failure.POD_NOT_RUNNING, "pod bookinfo/reviews-v1-7f9c6b-x2k4p is Pending, not Running")


def test_no_sidecar_and_ambient_are_facts_not_errors(fake: FakeCluster) -> None:
    src = source_for(fake)
    plain = src.read_facts(make_pod(proxy=False, init=None), None, False)
    assert (plain.mesh, plain.nat, plain.listeners) == (MeshMode.NO_SIDECAR, None, None)
    assert "has no istio-proxy sidecar" in plain.notes[0]
    assert fake.calls == []  # no call for a pod outside the mesh
    ambient = src.read_facts(
        make_pod(proxy=False, init=None, annotations={"ambient.istio.io/redirection": "enabled"}), None, False
    )
    assert ambient.mesh is MeshMode.AMBIENT and ambient.nat is None
    assert fake.calls == ["agent_facts"]  # an ambient pod is read by its node's podnat agent when there is one


def test_interception_none(fake: FakeCluster) -> None:
    pod = fake.add_pod(make_pod(annotations={"sidecar.istio.io/interceptionMode": "NONE"}))
    fake.container(POD, "istio-proxy", {"pilot-agent": (LISTENERS, "", 0)})
    facts = source_for(fake).read_facts(pod, None, False)
    assert facts.mesh is MeshMode.NO_CAPTURE and facts.nat is None and facts.listeners is not None


def test_proxy_not_ready(fake: FakeCluster) -> None:
    waiting = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s"}}
    pod = fake.add_pod(make_pod(proxy_state=waiting))
    with pytest.raises(SourceError) as err:
        source_for(fake).read_facts(pod, NatSource.EXEC, False)
    expect(
        err,
        Failure.PROXY_NOT_READY,
        f"istio-proxy in pod {NS}/{POD} is not ready: not running (waiting: CrashLoopBackOff)",
    )
    assert fake.calls == []


def test_iptables_save_missing(fake: FakeCluster) -> None:
    pod = fake.add_pod(make_pod())
    fake.container(POD, "istio-proxy", {"pilot-agent": (LISTENERS, "", 0)})  # sh, but no iptables-save
    with pytest.raises(SourceError) as err:
        source_for(fake).read_facts(pod, NatSource.EXEC, False)
    expect(err, Failure.TOOL_MISSING, "iptables-save is not in the image of istio-proxy")


def test_no_shell_runs_one_exec_per_command(fake: FakeCluster) -> None:
    pod = fake.add_pod(make_pod())
    live = LIVE.read_text()
    fake.container(
        POD,
        "istio-proxy",
        {"iptables-save": (live, "", 0), "ip6tables-save": ("", "", 0), "pilot-agent": (LISTENERS, "", 0)},
        shell=False,
    )
    facts = source_for(fake).read_facts(pod, NatSource.EXEC, False)
    assert facts.nat is not None and facts.nat.v4 == live and facts.listeners is not None
    # the failed `sh`; per family the -nft and -legacy binaries (missing here), then the unqualified one;
    # nft; pilot-agent
    assert fake.calls.count("exec") == 9


def test_empty_table_says_native_nftables(fake: FakeCluster) -> None:
    pod = fake.add_pod(make_pod())
    fake.container(
        POD,
        "istio-proxy",
        {"iptables-save": ("", "", 0), "ip6tables-save": ("", "", 0), "pilot-agent": (LISTENERS, "", 0)},
    )
    with pytest.raises(SourceError) as err:
        source_for(fake).read_facts(pod, NatSource.EXEC, False)
    expect(
        err,
        Failure.EMPTY_TABLE,
        "is empty: native nftables mode (Istio 1.27+) keeps the rules in `nft list ruleset`",
    )


def test_empty_table_with_nft_reads_nft(fake: FakeCluster) -> None:
    pod = fake.add_pod(make_pod())
    nft = NFT_LIVE.read_text()
    fake.container(
        POD,
        "istio-proxy",
        {
            "iptables-save": ("", "", 0),
            "ip6tables-save": ("", "", 0),
            "nft": (nft, "", 0),
            "pilot-agent": (LISTENERS, "", 0),
        },
    )
    facts = source_for(fake).read_facts(pod, NatSource.EXEC, False)
    assert facts.nat is not None and facts.nat.v4 == "" and facts.nat.nft == nft
    assert "nft list ruleset" in facts.nat.label


def test_init_log_unrecognisable(fake: FakeCluster) -> None:
    pod = fake.add_pod(make_pod())
    fake.logs[(NS, POD, "istio-init")] = "starting\nsomething else\n"
    with pytest.raises(SourceError) as err:
        source_for(fake).read_facts(pod, NatSource.INIT_LOG, False)
    expect(
        err,
        Failure.LOG,
        "the istio-init log of pod bookinfo/reviews-v1-7f9c6b-x2k4p has no rules podnat recognises (line 2: ",
    )


def test_source_init_log_reads_a_pod_that_is_not_running(fake: FakeCluster) -> None:
    pod = fake.add_pod(make_pod(phase="Failed"))
    fake.logs[(NS, POD, "istio-init")] = init_log()
    facts = source_for(fake).read_facts(pod, NatSource.INIT_LOG, False)
    assert facts.nat is not None and facts.live is False and fake.calls == ["read_log", "exec"]  # + listeners


# --- istio-cni and native sidecars ----------------------------------------------------------------


def test_istio_cni_pod_reads_the_cni_node_log(fake: FakeCluster) -> None:
    pod = fake.add_pod(make_pod(init="istio-validation", native=True))
    unprivileged_proxy(fake)
    cni = make_pod("istio-cni-node-x7", ns="kube-system", proxy=False, init=None, labels={"k8s-app": "istio-cni-node"})
    cni["spec"]["containers"] = [{"name": "install-cni", "image": "install-cni:1.24"}]
    fake.add_pod(cni)
    fake.add_pod(
        make_pod(
            "istio-cni-node-y8",
            ns="kube-system",
            proxy=False,
            init=None,
            node="node-2",
            labels={"k8s-app": "istio-cni-node"},
        )
    )
    fake.logs[("kube-system", "istio-cni-node-x7", "install-cni")] = (
        "2026-01-01T00:00:00.000000Z\tinfo\tcni-plugin\t============= Start iptables configuration for "
        f"{POD} =============\n{init_log()}"
        f"2026-01-01T00:00:01.000000Z\tinfo\tcni-plugin\t============= End iptables configuration for {POD} "
        "=============\n"
    )
    facts = source_for(fake).read_facts(pod, None, False)
    assert facts.nat is not None and facts.nat.source is NatSource.INIT_LOG and facts.live is False
    assert facts.nat.label == (
        "istio-cni-node log (kube-system/istio-cni-node-x7): applied at pod start, not necessarily live"
    )
    assert LIVE.read_text() in facts.nat.v4
    assert facts.listeners is not None  # native sidecar: istio-proxy found in initContainers


def test_istio_cni_without_node_pod(fake: FakeCluster) -> None:
    pod = fake.add_pod(make_pod(init="istio-validation"))
    fake.fail["list_pods:kube-system"] = SourceError(Failure.NOT_FOUND, "namespace kube-system does not exist")
    with pytest.raises(SourceError) as err:
        source_for(fake).read_facts(pod, NatSource.INIT_LOG, False)
    expect(
        err,
        Failure.LOG,
        "uses istio-cni: its rules are in the istio-cni-node log on node node-1, and no istio-cni-node pod",
    )


def test_istio_cni_node_pods_podnat_may_not_list(fake: FakeCluster) -> None:
    pod = fake.add_pod(make_pod(init="istio-validation"))
    fake.fail["list_pods"] = SourceError(Failure.FORBIDDEN, "cannot list pods in namespace kube-system: grant it")
    with pytest.raises(SourceError) as err:
        source_for(fake).read_facts(pod, NatSource.INIT_LOG, False)
    expect(err, Failure.FORBIDDEN, "on node node-1, which podnat cannot list: cannot list pods in namespace")


# --- the capture script, run by a real shell ------------------------------------------------------


def test_capture_script_sections(tmp_path: Path) -> None:
    d = tmp_path / "c"
    d.mkdir()
    (d / "sh").symlink_to(shutil.which("sh") or "/bin/sh")
    sections = split_sections(run_in_container(d, ["sh", "-c", capture_script("M1", 15000)]), "M1")
    assert sections is not None and set(sections) == {
        "v4_nft",
        "v6_nft",
        "v4_legacy",
        "v6_legacy",
        "v4",
        "v6",
        "nft",
        "listeners",
    }
    assert sections["v4"].returncode == 127 and "iptables-save" in sections["v4"].stderr


# --- TPROXY: policy routing, read by the same exec --------------------------------------------------

ROUTING = REPO / "tests" / "data" / "routing"


def tproxy_pod(*extra: str) -> dict[str, Any]:
    pod = make_pod(annotations={"sidecar.istio.io/interceptionMode": "TPROXY"})
    pod["spec"]["initContainers"][0]["args"] = ["istio-iptables", "-p", "15001", "-m", "TPROXY", *extra]
    return pod


def ip_stub(directory: Path, answers: dict[str, tuple[str, str, int]]) -> None:
    """An `ip` that answers by its arguments ("rule show", "-6 route show table 133", ...)."""
    cases = []
    for index, (args, (out, err, rc)) in enumerate(answers.items()):
        (directory / f"ip.{index}.out").write_text(out)
        (directory / f"ip.{index}.err").write_text(err)
        cases.append(
            f"  '{args}') /bin/cat '{directory}/ip.{index}.out'; /bin/cat '{directory}/ip.{index}.err' >&2; exit {rc};;"
        )
    script = directory / "ip"
    script.write_text('#!/bin/sh\ncase "$*" in\n' + "\n".join(cases) + "\n  *) exit 99;;\nesac\n")
    script.chmod(0o755)


def recorded_ip(table: int = 133) -> dict[str, tuple[str, str, int]]:
    """The rule is there, table 133 is not (v4), both are there (v6): as iproute2 6.1 printed them."""
    return {
        "rule show": ((ROUTING / "rule-present.txt").read_text(), "", 0),
        f"route show table {table}": ("", (ROUTING / "route-missing.stderr").read_text(), 2),
        "-6 rule show": ((ROUTING / "rule6-present.txt").read_text(), "", 0),
        f"-6 route show table {table}": ((ROUTING / "route6-present.txt").read_text(), "", 0),
    }


def test_tproxy_pod_reads_policy_routing_in_the_same_exec(fake: FakeCluster) -> None:
    pod = fake.add_pod(tproxy_pod())
    d = fake.container(
        POD,
        "istio-proxy",
        {"iptables-save": (LIVE.read_text(), "", 0), "ip6tables-save": ("", "", 0), "pilot-agent": (LISTENERS, "", 0)},
    )
    ip_stub(d, recorded_ip())
    facts = source_for(fake).read_facts(pod, None, False)
    routing = facts.routing
    assert routing is not None
    assert routing.label == "exec istio-proxy: ip rule show; ip route show table 133 (and ip -6)"
    assert routing.table == 133 and routing.error is None and routing.complete
    assert routing.rules_v4 == (ROUTING / "rule-present.txt").read_text()
    assert routing.routes_v4 == ""  # "FIB table does not exist": an empty table, not an unreadable one
    assert routing.routes_v6 == (ROUTING / "route6-present.txt").read_text()
    assert fake.calls.count("exec") == 1


def test_tproxy_custom_table_and_unprivileged_proxy(fake: FakeCluster) -> None:
    # istio-proxy cannot read the nat table, but `ip rule` needs no privilege: routing comes from its exec.
    pod = fake.add_pod(tproxy_pod("-t", "4242", "-r", "200"))
    unprivileged_proxy(fake)
    ip_stub(fake.containers[(NS, POD, "istio-proxy")], recorded_ip(200))
    fake.logs[(NS, POD, "istio-init")] = init_log()
    facts = source_for(fake).read_facts(pod, None, False)
    assert facts.nat is not None and facts.nat.source is NatSource.INIT_LOG
    assert facts.routing is not None and facts.routing.table == 200
    assert facts.routing.label == "exec istio-proxy: ip rule show; ip route show table 200 (and ip -6)"
    assert facts.routing.rules_v4 and facts.routing.error is None


def test_tproxy_without_ip_is_unknown(fake: FakeCluster) -> None:
    pod = fake.add_pod(tproxy_pod())
    fake.container(
        POD,
        "istio-proxy",
        {"iptables-save": (LIVE.read_text(), "", 0), "ip6tables-save": ("", "", 0), "pilot-agent": (LISTENERS, "", 0)},
    )
    facts = source_for(fake).read_facts(pod, None, False)
    assert facts.routing is not None
    assert (facts.routing.rules_v4, facts.routing.routes_v4, facts.routing.rules_v6) == (None, None, None)
    assert facts.routing.error == "`ip` is not in the image of istio-proxy"
    assert facts.nat is not None  # the table itself is unaffected


def test_tproxy_debug_container_reads_routing(fake: FakeCluster) -> None:
    pod = fake.add_pod(tproxy_pod())
    unprivileged_proxy(fake)  # and no `ip` in istio-proxy
    d = fake.container(
        POD,
        "podnat-debug",
        {"iptables-save": (LIVE.read_text(), "", 0), "ip6tables-save": ("", "", 0), "pilot-agent": (LISTENERS, "", 0)},
    )
    ip_stub(d, recorded_ip())
    facts = source_for(fake).read_facts(pod, None, True)
    assert facts.nat is not None and facts.nat.source is NatSource.DEBUG
    assert facts.routing is not None and facts.routing.error is None
    assert facts.routing.label == "ephemeral container podnat-debug: ip rule show; ip route show table 133 (and ip -6)"


def test_tproxy_without_shell_one_exec_per_command(fake: FakeCluster) -> None:
    pod = fake.add_pod(tproxy_pod())
    d = fake.container(
        POD,
        "istio-proxy",
        {"iptables-save": (LIVE.read_text(), "", 0), "ip6tables-save": ("", "", 0), "pilot-agent": (LISTENERS, "", 0)},
        shell=False,
    )
    facts = source_for(fake).read_facts(pod, NatSource.EXEC, False)
    assert facts.routing is not None and facts.routing.error == "`ip` is not in the image of istio-proxy"
    assert fake.calls.count("exec") == 10  # sh, 3 per family (-nft, -legacy, unqualified), nft, pilot-agent, ip
    ip_stub(d, recorded_ip())
    again = source_for(fake).read_facts(pod, NatSource.EXEC, False)
    assert again.routing is not None and again.routing.complete and again.routing.routes_v4 == ""
    assert fake.calls.count("exec") == 10 + 13  # ... and the four `ip` commands


def test_redirect_pod_reads_no_routing(fake: FakeCluster) -> None:
    pod = fake.add_pod(make_pod())
    d = fake.container(
        POD,
        "istio-proxy",
        {"iptables-save": (LIVE.read_text(), "", 0), "ip6tables-save": ("", "", 0), "pilot-agent": (LISTENERS, "", 0)},
    )
    ip_stub(d, recorded_ip())
    assert source_for(fake).read_facts(pod, None, False).routing is None


def test_capture_script_routing_sections(tmp_path: Path) -> None:
    d = tmp_path / "c"
    d.mkdir()
    (d / "sh").symlink_to(shutil.which("sh") or "/bin/sh")
    sections = split_sections(run_in_container(d, ["sh", "-c", capture_script("M2", 15000, 200)]), "M2")
    assert sections is not None
    assert set(sections) == {
        "v4_nft",
        "v6_nft",
        "v4_legacy",
        "v6_legacy",
        "v4",
        "v6",
        "nft",
        "listeners",
        "rule",
        "route",
        "rule6",
        "route6",
    }
    assert sections["rule"].returncode == 127 and "ip" in sections["rule"].stderr
    assert "ip -6 route show table 200" in capture_script("M2", 15000, 200)


# --- Istio's proxyv2 toolset: `iptables-save` is the legacy one, the rules are in nf_tables ------------

CAPTURED = REPO / "tests" / "data" / "capture"


def recorded_tool_outputs(scenario: str) -> dict[str, tuple[str, str, int]]:
    """Each binary's (stdout, stderr, rc) as the capture script recorded it in a real netns."""
    from podnat.capture import IPTABLES_SECTIONS

    result = ExecResult((CAPTURED / f"{scenario}.stdout").read_text(), (CAPTURED / f"{scenario}.stderr").read_text(), 0)
    out = split_sections(result, "podnat-recorded")
    assert out is not None
    tools = {
        IPTABLES_SECTIONS[name][2].split()[0]: (s.stdout, s.stderr, s.returncode)
        for name, s in out.items()
        if name in IPTABLES_SECTIONS
    }
    tools["nft"] = (out["nft"].stdout, out["nft"].stderr, out["nft"].returncode)
    old = (CAPTURED / f"{scenario}.unqualified-iptables-save").read_text()
    tools["iptables-save"] = (old, "", 0)  # the image's alternative: the legacy view
    tools["pilot-agent"] = (LISTENERS, "", 0)
    return tools


def test_proxy_image_toolset_reads_the_nft_backend(fake: FakeCluster) -> None:
    pod = fake.add_pod(make_pod())
    fake.container(POD, "istio-proxy", recorded_tool_outputs("nft-rules"))
    facts = source_for(fake).read_facts(pod, NatSource.EXEC, False)
    assert facts.nat is not None
    assert facts.nat.label == "exec istio-proxy: iptables-nft-save -c"
    assert "[3:180] -A OUTPUT -j ISTIO_OUTPUT" in facts.nat.v4 and facts.nat.counters
    assert fake.calls.count("exec") == 1


def test_proxy_image_toolset_both_backends_named_in_the_label(fake: FakeCluster) -> None:
    pod = fake.add_pod(make_pod())
    fake.container(POD, "istio-proxy", recorded_tool_outputs("both-backends"))
    facts = source_for(fake).read_facts(pod, NatSource.EXEC, False)
    assert facts.nat is not None
    assert facts.nat.label == (
        "exec istio-proxy: iptables-nft-save -c (iptables-legacy-save -c holds Istio's rules too: the kernel runs both)"
    )
    assert facts.nat.v4.startswith("# Warning: iptables-legacy tables present")


def test_proxy_image_toolset_unprivileged_falls_back(fake: FakeCluster) -> None:
    pod = fake.add_pod(make_pod())
    fake.container(POD, "istio-proxy", recorded_tool_outputs("unprivileged"))
    with pytest.raises(SourceError) as err:
        source_for(fake).read_facts(pod, NatSource.EXEC, False)
    expect(err, Failure.NAT_PERMISSION, "istio-proxy cannot read the nat table without NET_ADMIN")


def test_no_shell_native_nftables_reads_nft(fake: FakeCluster) -> None:
    # A distroless proxy image (no sh) in native nftables mode: the iptables backends are empty, nft has it.
    pod = fake.add_pod(make_pod())
    nft = NFT_LIVE.read_text()
    fake.container(
        POD,
        "istio-proxy",
        {
            "iptables-nft-save": ("", "", 0),
            "ip6tables-nft-save": ("", "", 0),
            "iptables-legacy-save": ("", "", 0),
            "ip6tables-legacy-save": ("", "", 0),
            "nft": (nft, "", 0),
            "pilot-agent": (LISTENERS, "", 0),
        },
        shell=False,
    )
    facts = source_for(fake).read_facts(pod, NatSource.EXEC, False)
    assert facts.nat is not None and facts.nat.nft == nft
    assert facts.nat.label == "exec istio-proxy: nft list ruleset (native nftables)"


# --- ambient pods ------------------------------------------------------------------------------------------

AMBIENT_DATA = REPO / "tests" / "data" / "ambient"


def ambient_pod() -> dict[str, Any]:
    return make_pod(proxy=False, init=None, labels={"istio.io/dataplane-mode": "ambient"})


def test_ambient_pod_without_debug_image_says_how_to_read_it(fake: FakeCluster) -> None:
    facts = source_for(fake).read_facts(ambient_pod(), None, True)
    assert facts.mesh is MeshMode.AMBIENT and facts.nat is None
    assert any("could not be read live" in n and "--debug-image" in n and "podnat agent" in n for n in facts.notes)
    assert "add_debug_container" not in fake.calls


def test_ambient_pod_read_by_a_debug_container_of_the_named_image(fake: FakeCluster) -> None:
    fake.add_pod(ambient_pod())
    transcript = (AMBIENT_DATA / "routing.txt").read_text().split("$ ip route show table 100\n")
    d = fake.container(
        POD,
        "podnat-debug",
        {
            "iptables-save": ((AMBIENT_DATA / "default.v4.iptables-save").read_text(), "", 0),
            "ip6tables-save": ("", "", 0),
            "nft": ("", "", 0),
            "cat": ((AMBIENT_DATA / "proc-net-tcp.txt").read_text(), "", 0),
        },
    )
    ip_stub(
        d,
        {
            "rule show": (transcript[0].removeprefix("$ ip rule show\n"), "", 0),
            "route show table 100": (transcript[1], "", 0),
            "-6 rule show": ("", "", 0),
            "-6 route show table 100": ("", "", 0),
        },
    )
    src = source_for(fake, debug_image="istio/proxyv2:1.27.1")
    facts = src.read_facts(fake.pods[(NS, POD)], None, True)
    assert facts.mesh is MeshMode.AMBIENT and facts.nat is not None and "ISTIO_PRERT" in facts.nat.v4
    assert facts.sockets is not None and facts.sockets.ports == (9080, 15001, 15006, 15008, 15053)
    assert (
        facts.routing is not None
        and facts.routing.table == 100
        and "fwmark 0x111/0xfff" in (facts.routing.rules_v4 or "")
    )
    spec = fake.pods[(NS, POD)]["spec"]["ephemeralContainers"][0]
    assert spec["image"] == "istio/proxyv2:1.27.1" and spec["targetContainerName"] == "reviews"
    assert fake.calls.count("exec") == 1


@pytest.mark.parametrize(
    ("source", "image", "says"),
    [
        (NatSource.EXEC, None, "it has no istio-proxy to exec into; read it with --source node"),
        (NatSource.INIT_LOG, None, "it has no istio-init log; read it with --source node"),
        (NatSource.DEBUG, None, "pass --debug-image IMAGE"),
        (NatSource.NODE, None, "no podnat agent on node node-1"),
    ],
)
def test_an_ambient_pod_is_never_read_by_another_source_than_the_one_asked_for(
    fake: FakeCluster, source: NatSource, image: str | None, says: str
) -> None:
    fake.add_pod(ambient_pod())
    with pytest.raises(SourceError) as err:
        source_for(fake, debug_image=image).read_facts(fake.pods[(NS, POD)], source, False)
    assert err.value.code == 3 and says in err.value.message, err.value.message
    assert "add_debug_container" not in fake.calls and "exec" not in fake.calls


# --- verify's namespace -----------------------------------------------------------------------------


def test_a_namespace_that_does_not_exist_is_an_error_and_one_podnat_may_not_check_a_warning(
    fake: FakeCluster,
) -> None:
    fake.add_pod(make_pod())
    assert check_namespace(fake, NS) is None
    assert check_namespace(fake, "empty") is None  # exists, no pods: verify warns about that itself
    with pytest.raises(SourceError) as err:
        check_namespace(fake, "nosuchns")
    assert err.value.failure is Failure.NOT_FOUND and err.value.code == 3
    fake.fail["get_namespace"] = SourceError(
        Failure.FORBIDDEN, "cannot get namespaces cluster-wide: grant it (manifests/rbac/)"
    )
    warning = check_namespace(fake, "nosuchns")
    assert warning == (
        "namespace nosuchns could not be checked (cannot get namespaces cluster-wide: grant it (manifests/rbac/))"
    )
    fake.fail["get_namespace"] = SourceError(Failure.UNREACHABLE, "cannot reach the API server")
    with pytest.raises(SourceError):
        check_namespace(fake, NS)


def test_verify_s_namespace_check_is_the_read_its_pods_labels_come_from(fake: FakeCluster) -> None:
    from podnat.namespaces import NamespaceLabels

    fake.add_pod(make_pod())
    namespaces = NamespaceLabels(fake)
    assert namespaces.check(NS) is None
    assert namespaces(NS) == {} and fake.calls == ["get_namespace"]  # read once
    with pytest.raises(SourceError):
        namespaces.check("nosuchns")
    assert namespaces("nosuchns") is None and fake.calls == ["get_namespace"] * 2


def test_read_facts_takes_the_cluster_and_the_choice(fake: FakeCluster) -> None:
    fake.add_pod(make_pod())
    privileged_proxy(fake)
    facts = read_facts(fake, fake.pods[(NS, POD)], Choice(NatSource.EXEC))
    assert facts.nat is not None and facts.nat.source is NatSource.EXEC and fake.calls == ["exec"]


# --- the report says what evidence it rests on -------------------------------------------------------------


def test_the_report_says_live_or_applied_at_start_in_json_and_in_the_verify_table() -> None:
    import dataclasses

    from test_pod_facts_explained import REDIRECT, FakeSource, live_table, make_pod

    from podnat.render import console
    from podnat.render.data import pod_report_data, verify_data
    from podnat.report import VerifyReport
    from podnat.sources import INIT_LOG_LABEL
    from podnat.usecases import inspect_pod

    reading = live_table(REDIRECT)
    live = inspect_pod(FakeSource(nat=reading), make_pod(REDIRECT))
    logged = dataclasses.replace(reading, source=NatSource.INIT_LOG, label=INIT_LOG_LABEL)
    at_start = inspect_pod(FakeSource(nat=logged), make_pod(REDIRECT))
    plain = make_pod(REDIRECT)
    plain["metadata"]["name"] = "plain"
    plain["spec"]["containers"] = [c for c in plain["spec"]["containers"] if c["name"] != "istio-proxy"]
    plain["spec"]["initContainers"] = []
    unread = inspect_pod(FakeSource(), plain)
    assert (live.status.value, at_start.status.value) == ("ok", "ok")  # the same rules: both explain as ok...
    assert (live.live, at_start.live, unread.live) == (True, False, None)  # ...but only one is live
    assert [pod_report_data(r)["live"] for r in (live, at_start, unread)] == [True, False, None]
    report = VerifyReport((live, dataclasses.replace(at_start, ref=PodRef(NS, "reviews-v2-y")), unread))
    assert [p["live"] for p in verify_data(report)["pods"]] == [True, False, None]
    with console.out.capture() as captured:
        console.print_verify(report)
    table = captured.get()
    cells = [[c.strip() for c in re.split("[│┃]", line)[1:-1]] for line in table.splitlines() if line[:1] in "│┃"]
    assert cells[0][:4] == ["NAMESPACE", "POD", "STATUS", "LIVE"]
    rows = {row[1]: row[3] for row in cells[1:] if row[0] == NS}
    assert rows == {"reviews-v1-x": "yes", "reviews-v2-y": "no (at start)", "plain": "-"}, table
    assert "(1 read from rules applied at start, not live)" in table.splitlines()[-1]
    from podnat.render.html import verify_html

    page = verify_html(report)
    assert page.count("<dt>rules</dt><dd>live</dd>") == 1
    assert page.count("<dt>rules</dt><dd>applied at start, not necessarily live</dd>") == 1
