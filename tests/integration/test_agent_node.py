"""The agent's node side for real: bare pods (a namespace, Istio's rules, a sleeping process in a
kubelet-shaped cgroup) on this machine, mapped from /proc and read with nsenter."""

from __future__ import annotations

import copy
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require

pytestmark = [pytest.mark.root]
TAG = f"it{os.getpid() % 10000}"


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list]:
    require(os.geteuid() == 0, "needs root (network namespaces, cgroups)")
    from podnat.lab.barepods import make_bare_pods, remove_bare_pods

    remove_bare_pods(TAG)
    try:
        yield make_bare_pods(TAG, 4, tmp_path_factory.mktemp("bare"))
    finally:
        remove_bare_pods(TAG)


def _save(netns: str) -> str:
    """Every table of both backends and both families, without counters: what a write would change."""
    out = ""
    for tool in ("iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"):
        text = subprocess.run(["ip", "netns", "exec", netns, tool], capture_output=True, text=True, check=False).stdout
        # chain policy counters move with the agent's own connection to the admin port: not a rule
        out += "\n".join(re.sub(r"\[\d+:\d+\]$", "[-]", line) for line in text.splitlines()
                         if not line.startswith("#")) + "\n"
    return out


def _agent(pods: list) -> object:
    from podnat.agent.node import NodeScanner
    from podnat.agent.service import Agent, AgentConfig

    agent = Agent(AgentConfig(node="podnat-bench-node"), NodeScanner(Path("/proc")))
    agent.replace_pods(pods)
    return agent


def test_the_agent_maps_and_reads_each_pod_and_writes_nothing(bare: list) -> None:
    from podnat.usecases import explain_facts

    before = {p.netns: _save(p.netns) for p in bare}
    host_pod = copy.deepcopy(bare[0].manifest)
    host_pod["metadata"].update(name="host", uid="00000000-0000-0000-0000-000000000001")
    host_pod["spec"]["hostNetwork"] = True
    ghost = copy.deepcopy(bare[0].manifest)
    ghost["metadata"].update(name="ghost", uid="00000000-0000-0000-0000-000000000002")
    agent = _agent([*(p.manifest for p in bare), host_pod, ghost])
    states = {s.report.ref.name: s for s in agent.sweep()}
    for pod in bare:
        state = states[pod.manifest["metadata"]["name"]]
        assert (state.mapping, state.report.status) == ("mapped", "ok"), state.report.error
        assert state.report.sources["nat"].startswith("node agent on podnat-bench-node")
        live = subprocess.run(["ip", "netns", "exec", pod.netns, "iptables-save"], capture_output=True, text=True,
                              check=True).stdout
        read = state.facts.nat.v4
        strip = lambda text: [line.split("] ", 1)[-1] for line in text.splitlines()  # noqa: E731
                              if line.startswith(("-A", "[", ":"))]
        assert [line for line in strip(read) if line.startswith("-A")] == [
            line for line in strip(live) if line.startswith("-A")]
        # the same facts, explained as inspect explains them, give the same report
        again = explain_facts(type(state.report)(ref=state.report.ref, node=state.report.node,
                                                 pod_ip=state.report.pod_ip, pod_ips=state.report.pod_ips,
                                                 mesh=state.report.mesh, istio_version=state.report.istio_version,
                                                 capture_mode=state.report.capture_mode,
                                                 sources={"intent": state.report.sources["intent"]}),
                              state.facts, __import__("podnat.intent", fromlist=["x"]).intent_for_pod(pod.manifest))
        assert again.status == state.report.status
    assert states["host"].mapping == "host-network" and states["host"].report.status == "skipped"
    assert states["ghost"].mapping == "unmapped" and states["ghost"].report.status == "error"
    assert "no process of this pod" in states["ghost"].report.error
    assert {p.netns: _save(p.netns) for p in bare} == before  # byte-identical: the agent never writes


def test_a_fault_made_outside_flips_the_pod_and_only_that_pod(bare: list) -> None:
    agent = _agent([p.manifest for p in bare])
    target = bare[1]
    subprocess.run(["ip", "netns", "exec", target.netns, "iptables-nft", "-t", "nat", "-D", "PREROUTING", "-p", "tcp",
                    "-j", "ISTIO_INBOUND"], check=True)
    try:
        states = {s.report.ref.name: s.report.status for s in agent.sweep()}
        name = target.manifest["metadata"]["name"]
        assert states.pop(name) in ("drift", "broken")
        assert set(states.values()) == {"ok"}
    finally:
        subprocess.run(["ip", "netns", "exec", target.netns, "iptables-nft", "-t", "nat", "-I", "PREROUTING", "1",
                        "-p", "tcp", "-j", "ISTIO_INBOUND"], check=True)
    assert {s.report.status for s in agent.sweep()} == {"ok"}


def test_the_mapped_process_exiting_is_that_pods_error_the_rest_carry_on(bare: list) -> None:
    agent = _agent([p.manifest for p in bare])
    victim = bare[3]
    os.kill(victim.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while Path(f"/proc/{victim.pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    states = {s.report.ref.name: s for s in agent.sweep()}
    gone = states[victim.manifest["metadata"]["name"]]
    assert gone.report.status == "error" and gone.mapping == "unmapped"
    assert {s.report.status for n, s in states.items() if n != victim.manifest["metadata"]["name"]} == {"ok"}
