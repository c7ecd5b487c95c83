"""The agent's node side for real: bare pods (a namespace, Istio's rules, a sleeping process in a
kubelet-shaped cgroup) on this machine, mapped from /proc and read with nsenter."""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import socket
import subprocess
import sys
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
        out += (
            "\n".join(re.sub(r"\[\d+:\d+\]$", "[-]", line) for line in text.splitlines() if not line.startswith("#"))
            + "\n"
        )
    return out


def _agent(pods: list) -> object:
    from podnat.agent.node import NodeScanner
    from podnat.agent.service import Agent, AgentConfig

    agent = Agent(AgentConfig(node="podnat-bench-node"), NodeScanner(Path("/proc")))
    agent.replace_pods(pods)
    return agent


def test_the_agent_maps_and_reads_each_pod_and_writes_nothing(bare: list) -> None:
    from podnat.report import PodHeader
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
        assert (state.mapping, state.report.status) == ("mapped", "ok"), state.report
        assert state.report.sources["nat"].startswith("node agent on podnat-bench-node")
        live = subprocess.run(
            ["ip", "netns", "exec", pod.netns, "iptables-save"], capture_output=True, text=True, check=True
        ).stdout
        read = state.facts.nat.v4

        def strip(text: str) -> list[str]:
            return [line.split("] ", 1)[-1] for line in text.splitlines() if line.startswith(("-A", "[", ":"))]

        assert [line for line in strip(read) if line.startswith("-A")] == [
            line for line in strip(live) if line.startswith("-A")
        ]
        # the same facts, explained as inspect explains them, give the same report
        again = explain_facts(
            PodHeader(
                ref=state.report.ref,
                node=state.report.node,
                pod_ip=state.report.pod_ip,
                pod_ips=state.report.pod_ips,
                mesh=state.report.mesh,
                istio_version=state.report.istio_version,
                capture_mode=state.report.capture_mode,
                sources={"intent": state.report.sources["intent"]},
            ),
            state.facts,
            __import__("podnat.intent", fromlist=["x"]).intent_for_pod(pod.manifest),
        )
        assert again.status == state.report.status
    assert states["host"].mapping == "host-network" and states["host"].report.status == "skipped"
    assert states["ghost"].mapping == "unmapped" and states["ghost"].report.status == "error"
    assert "no process of this pod" in states["ghost"].report.error
    assert {p.netns: _save(p.netns) for p in bare} == before  # byte-identical: the agent never writes


def test_a_fault_made_outside_flips_the_pod_and_only_that_pod(bare: list) -> None:
    agent = _agent([p.manifest for p in bare])
    target = bare[1]
    _inbound_jump(target.netns, "-D", "PREROUTING")
    try:
        states = {s.report.ref.name: s.report.status for s in agent.sweep()}
        name = target.manifest["metadata"]["name"]
        assert states.pop(name) in ("drift", "broken")
        assert set(states.values()) == {"ok"}
    finally:
        _inbound_jump(target.netns, "-I", "PREROUTING", "1")
    assert {s.report.status for s in agent.sweep()} == {"ok"}


def _inbound_jump(netns: str, *where: str) -> None:
    """Delete (`-D PREROUTING`) or put back (`-I PREROUTING 1`) the pod's jump to ISTIO_INBOUND, from outside."""
    rule = [*where, "-p", "tcp", "-j", "ISTIO_INBOUND"]
    subprocess.run(["ip", "netns", "exec", netns, "iptables-nft", "-t", "nat", *rule], check=True)


def test_a_request_reads_again_only_the_pods_whose_namespace_changed(
    bare: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`/v1/pods?maxAge=0` (states_for): a pod whose namespace did not change keeps its reading, checked now,
    without a process; one changed from outside is read again (and drifts); a hostNetwork pod is not read."""
    from podnat.agent.node import NodePodSource

    host_pod = copy.deepcopy(bare[0].manifest)
    host_pod["metadata"].update(name="host", uid="00000000-0000-0000-0000-000000000003")
    host_pod["spec"]["hostNetwork"] = True
    agent = _agent([*(p.manifest for p in bare[:3]), host_pod])
    read = {s.uid: s for s in agent.sweep()}
    assert all(s.check is not None for s in read.values() if s.mapping == "mapped")
    ran: list[str] = []
    real = NodePodSource.run_in
    monkeypatch.setattr(
        NodePodSource, "run_in", lambda self, held, argv: ran.append(held.uid) or real(self, held, argv)
    )
    time.sleep(0.01)
    checked = {s.uid: s for s in agent.states_for(None, None, 0.0)}
    assert ran == []
    assert {u: s.observed_at for u, s in checked.items()} == {u: s.observed_at for u, s in read.items()}
    assert all(s.checked_at > s.observed_at for s in checked.values())
    target = bare[1]
    uid = target.manifest["metadata"]["uid"]
    _inbound_jump(target.netns, "-D", "PREROUTING")
    try:
        after = {s.uid: s for s in agent.states_for(None, None, 0.0)}
        assert ran == [uid]
        assert after[uid].report.status in ("drift", "broken") and after[uid].observed_at > read[uid].observed_at
        assert {s.report.status for u, s in after.items() if u != uid} <= {"ok", "skipped"}
        # a later request allowing a minute serves what the last one checked, checking nothing
        assert [s.report.status for s in agent.states_for(None, None, 60.0)] == [
            s.report.status for s in after.values()
        ]
        assert ran == [uid]
    finally:
        _inbound_jump(target.netns, "-I", "PREROUTING", "1")
    assert {s.report.status for s in agent.states_for(None, None, 0.0)} <= {"ok", "skipped"}
    assert ran == [uid, uid]


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


SWEEP = """
import json, sys
from pathlib import Path
from podnat.agent.node import NodeScanner
from podnat.agent.service import Agent, AgentConfig
agent = Agent(AgentConfig(node="n"), NodeScanner(Path("/proc")))
agent.replace_pods(json.loads(Path(sys.argv[1]).read_text()))
print(json.dumps({s.report.ref.name: [s.report.status, getattr(s.report, "error", None)] for s in agent.sweep()}))
"""


def test_each_capability_the_daemonset_adds_is_needed_and_they_are_enough(bare: list, tmp_path: Path) -> None:
    """The agent as root with only the DaemonSet's capabilities (bounding set), then without each one:
    a pod with nf_tables rules and one with legacy rules."""
    import yaml

    from podnat.lab.barepods import make_bare_pods, remove_bare_pods

    daemonset = yaml.safe_load((Path(__file__).parents[2] / "manifests/agent/daemonset.yaml").read_text())
    caps = daemonset["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]
    assert caps["drop"] == ["ALL"]
    added = [c.lower() for c in caps["add"]]
    tag = f"{TAG}l"
    remove_bare_pods(tag)
    try:
        legacy = make_bare_pods(tag, 1, tmp_path, backend="legacy", start=7)
        pods = tmp_path / "pods.json"
        pods.write_text(json.dumps([bare[0].manifest, legacy[0].manifest]))
        script = tmp_path / "sweep.py"
        script.write_text(SWEEP)

        def sweep(capabilities: list[str]) -> dict[str, list]:
            bounding = "-all" + "".join(f",+{c}" for c in capabilities)
            done = subprocess.run(
                ["setpriv", "--bounding-set", bounding, "--inh-caps", "-all", sys.executable, str(script), str(pods)],
                capture_output=True,
                text=True,
                check=True,
                timeout=120,
            )
            return json.loads(done.stdout)

        names = [bare[0].manifest["metadata"]["name"], legacy[0].manifest["metadata"]["name"]]
        assert {n: v[0] for n, v in sweep(added).items()} == dict.fromkeys(names, "ok")
        for cap in added:
            without = sweep([c for c in added if c != cap])
            assert "error" in {v[0] for v in without.values()}, (cap, without)
            if cap == "sys_ptrace":
                assert all("CAP_SYS_PTRACE" in v[1] for v in without.values()), without
    finally:
        remove_bare_pods(tag)


def test_a_table_iptables_cannot_print_is_that_pods_problem_only(bare: list) -> None:
    """Another tool wrote an nft rule into iptables-nft's nat table that iptables-nft-save cannot print
    (exit 3, the dump cut short): that pod is an error saying so (not a trace of what is left of its
    table, unknown or drift), the others are ok."""
    victim = bare[2]
    rule = ["ip", "daddr", "{ 192.0.2.1, 192.0.2.2 }", "meta", "mark", "set", "0x1", "counter"]
    subprocess.run(
        ["ip", "netns", "exec", victim.netns, "nft", "add", "rule", "ip", "nat", "OUTPUT", *rule], check=True
    )
    try:
        broken = subprocess.run(
            ["ip", "netns", "exec", victim.netns, "iptables-nft-save"], capture_output=True, text=True, check=False
        )
        assert broken.returncode != 0 and "Parsing nftables rule failed" in broken.stderr
        reports = {s.report.ref.name: s.report for s in _agent([p.manifest for p in bare[:3]]).sweep()}
        failed = reports.pop(victim.manifest["metadata"]["name"])
        assert failed.status == "error", failed
        assert "iptables-nft-save failed in node agent on podnat-bench-node" in failed.error, failed.error
        assert "(exit 3)" in failed.error and "Parsing nftables rule failed" in failed.error, failed.error
        assert {r.status for r in reports.values()} == {"ok"}
    finally:
        handle = subprocess.run(
            ["ip", "netns", "exec", victim.netns, "nft", "-a", "list", "chain", "ip", "nat", "OUTPUT"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        found = re.search(r"meta mark set 0x00000001 counter .*# handle (\d+)", handle)
        assert found is not None, handle
        number = found.group(1)
        subprocess.run(
            ["ip", "netns", "exec", victim.netns, "nft", "delete", "rule", "ip", "nat", "OUTPUT", "handle", number],
            check=True,
        )


def test_a_namespace_that_disappears_mid_read_fails_that_pod_only(bare: list, tmp_path: Path) -> None:
    """The pod's process is killed and its namespace deleted after the agent mapped it and before it
    read: the held namespace is still read or the pod errors; the others carry on; next sweep, unmapped."""
    from podnat.agent.node import NodeScanner
    from podnat.agent.service import Agent, AgentConfig
    from podnat.lab.barepods import make_bare_pods, remove_bare_pods

    tag = f"{TAG}d"
    remove_bare_pods(tag)
    try:
        (doomed,) = make_bare_pods(tag, 1, tmp_path, start=9)
        uid = doomed.manifest["metadata"]["uid"]

        class Vanishing(NodeScanner):
            def hold(self, mapped):  # type: ignore[no-untyped-def]
                held = super().hold(mapped)
                if mapped.pod_uid == uid:
                    os.kill(doomed.pid, signal.SIGKILL)
                    subprocess.run(["ip", "netns", "delete", doomed.netns], check=True)
                return held

        agent = Agent(AgentConfig(node="podnat-bench-node"), Vanishing(Path("/proc")))
        agent.replace_pods([doomed.manifest, bare[0].manifest, bare[1].manifest])
        states = {s.uid: s.report.status for s in agent.sweep()}
        assert states.pop(uid) in ("ok", "error")
        assert set(states.values()) == {"ok"}
        time.sleep(0.2)
        again = {s.uid: s for s in agent.sweep()}
        assert again[uid].mapping == "unmapped" and again[uid].report.status == "error"
    finally:
        remove_bare_pods(tag)


def test_the_commands_the_agent_skips_would_print_what_it_says_in_their_place(bare: list, tmp_path: Path) -> None:
    """In a pod with no x_tables table and no listening socket the agent runs neither legacy `-save` nor curl
    (capture_script's skip_known): the real binaries, run in the same namespace, print the same."""
    import shutil

    from podnat.capture import capture_script, split_sections

    wrappers, log = tmp_path / "bin", tmp_path / "ran"
    wrappers.mkdir()
    for tool in ("iptables-legacy-save", "ip6tables-legacy-save", "curl"):
        real = shutil.which(tool)
        require(real is not None, f"needs {tool}")
        (wrappers / tool).write_text(f"#!/bin/sh\necho {tool} >> '{log}'\nexec '{real}' \"$@\"\n")
        (wrappers / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{wrappers}:{os.environ['PATH']}"}

    def sections(skip_known: bool) -> dict[str, tuple[str, str, int]]:
        script = capture_script("M", 15000, skip_known=skip_known)
        done = subprocess.run(
            ["nsenter", f"--net=/proc/{bare[0].pid}/ns/net", "--", "sh", "-c", script],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=60,
        )
        found = split_sections(done.stdout, done.stderr, "M")
        assert found is not None

        def stable(text: str) -> str:  # iptables-save's header and footer carry the time
            return "\n".join(line for line in text.splitlines() if not line.startswith("# "))

        return {name: (stable(s.stdout), stable(s.stderr), s.returncode) for name, s in found.items()}

    ran = sections(skip_known=False)
    assert sorted(log.read_text().split()) == ["curl", "ip6tables-legacy-save", "iptables-legacy-save"]
    log.unlink()
    skipped = sections(skip_known=True)
    assert not log.exists()  # none of them ran
    # the same sections; those skipped say exactly what the binaries said (the others differ in counters only:
    # curl's refused SYN is counted in nat OUTPUT, which the agent no longer adds to each read)
    assert set(skipped) == set(ran)
    assert [skipped[k] for k in ("v4_legacy", "v6_legacy", "listeners")] == [
        ran[k] for k in ("v4_legacy", "v6_legacy", "listeners")
    ]
    assert ran["listeners"][2] == 7 and ran["v4_legacy"] == ("", "", 0)


def _wait_for_sweep(port: int, agent: subprocess.Popen[bytes]) -> None:
    import urllib.request

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and agent.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                if re.search(r"^podnat_agent_sweep_duration_seconds_count [1-9]", resp.read().decode(), re.M):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("the agent did not sweep")


def _answered(log: Path, since: int) -> list[tuple[float, float, str]]:
    """(arrived, answered, path) of each request the lab's API server logged since line `since`: a line's time
    is when it was answered, its last field how long that took (podnat/lab/apiserver.py's access log)."""
    import datetime

    found = []
    for line in log.read_text().splitlines()[since:]:
        if m := re.match(r'(\S+ \S+) aiohttp\.access \S+ .*?"GET ([^"? ]+)\S* [^"]+" .* ([0-9.]+)$', line):
            answered = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            found.append((answered - float(m.group(3)), answered, m.group(2)))
    return found


def test_verify_asks_the_agent_the_last_run_found_with_its_first_requests(bare: list, tmp_path: Path) -> None:
    """podnat/kube/agentcache.py on a real API server (300 ms a request) and a real agent: the first run asks
    the agent once the lists have answered (two rounds); the next asks it with the lists (one round), and
    reports the same."""
    from podnat.lab.apiserver import start_apiserver, stop_apiserver
    from podnat.lab.barepods import NODE
    from podnat.lab.build import agent_pod_manifest
    from podnat.lab.state import LabContainer, LabPod, LabState

    state = LabState(root=str(tmp_path), netns_prefix="pnb-none-")
    for pod in (p for p in bare if Path(f"/proc/{p.pid}").exists()):  # a test above ends one pod's process
        containers = {"app": LabContainer("app", 65534, 65534, pid=pod.pid)}
        name = pod.manifest["metadata"]["name"]
        state.pods.append(LabPod("bench", name, pod.manifest["status"]["podIP"], pod.netns, pod.manifest, containers))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    manifest = agent_pod_manifest("podnat-agent-t", "00000000-0000-0000-0000-00000000a7e5", "127.0.0.1", port, NODE)
    state.agent = LabPod("podnat-system", "podnat-agent-t", "127.0.0.1", "", manifest, {})
    state.apiserver = start_apiserver(tmp_path, latency_ms=300, state=state)
    env = {**os.environ, "KUBECONFIG": state.apiserver.kubeconfig, "PODNAT_CACHE_DIR": str(tmp_path / "cache")}
    argv = [sys.executable, "-m", "podnat", "agent", "--node", NODE, "--proc", "/proc", "--address", "127.0.0.1"]
    agent = subprocess.Popen(
        [*argv, "--port", str(port), "--no-events"],
        env={**env, "POD_NAME": "podnat-agent-t"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    log = tmp_path / "apiserver.log"
    try:
        _wait_for_sweep(port, agent)
        runs = []
        for _ in range(2):
            since = len(log.read_text().splitlines())
            done = subprocess.run(
                [sys.executable, "-m", "podnat", "verify", "-n", "bench", "-o", "json"],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert done.returncode in (0, 1), done.stdout + done.stderr  # 1: a test above changed a pod's rules
            runs.append((json.loads(done.stdout), _answered(log, since)))
        (first, cold), (second, warm) = runs
    finally:
        os.killpg(agent.pid, signal.SIGTERM)
        agent.wait(10)
        stop_apiserver(state.apiserver)
    proxy = f"/api/v1/namespaces/podnat-system/pods/podnat-agent-t:{port}/proxy/v1/pods"
    for report, requests in ((first, cold), (second, warm)):
        lists = ["/api/v1/namespaces/bench", "/api/v1/namespaces/bench/pods", "/api/v1/namespaces/podnat-system/pods"]
        assert sorted(path for _, _, path in requests) == sorted([*lists, proxy]), requests
        assert {p["sources"]["nat"].split(",")[0] for p in report["pods"]} == {
            f"podnat agent podnat-agent-t on node {NODE}"
        }
    # the first run: the agent asked once the lists had answered (two rounds); the second: all four arrived
    # before any was answered (one round)
    listed = max(answered for _, answered, path in cold if path != proxy)
    assert next(arrived for arrived, _, path in cold if path == proxy) > listed, cold
    assert max(arrived for arrived, _, _ in warm) < min(answered for _, answered, _ in warm), warm
    assert [p["status"] for p in first["pods"]] == [p["status"] for p in second["pods"]]
