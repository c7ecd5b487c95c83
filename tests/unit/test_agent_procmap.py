"""The agent's /proc mapping on recorded `/proc/PID/cgroup` and `/proc/PID/net` contents."""

from __future__ import annotations

from pathlib import Path

import pytest

from podnat.agent.procmap import (
    Candidate,
    HostNetwork,
    Mapped,
    Process,
    Unmapped,
    candidates,
    decide,
    local_addresses,
    netns_inode,
    pod_uid_from_cgroup,
    start_ticks,
)

DATA = Path(__file__).resolve().parent.parent / "data"
UID = "8d0e2a3c-5f1b-4c2d-9e6a-7b8c9d0e1f2a"


@pytest.mark.parametrize(
    "name",
    [
        "v2-systemd-containerd",
        "v2-systemd-containerd-kind",
        "v2-systemd-crio",
        "v2-systemd-crio-conmon",
        "v2-systemd-guaranteed",
        "v2-cgroupfs-containerd",
        "v2-cgroupns",
        "v1-cgroupfs-containerd",
        "v1-systemd-crio",
        "v1-hybrid-systemd-containerd",
    ],
)
def test_pod_uid_in_every_kubelet_cgroup_shape(name: str) -> None:
    assert pod_uid_from_cgroup((DATA / "cgroup" / f"{name}.txt").read_text()) == UID


@pytest.mark.parametrize("name", ["node-containerd", "node-init", "node-session", "node-podman", "disagree"])
def test_no_pod_uid_outside_kubepods_or_when_hierarchies_disagree(name: str) -> None:
    assert pod_uid_from_cgroup((DATA / "cgroup" / f"{name}.txt").read_text()) is None


def test_a_uid_shaped_name_outside_a_pod_segment_is_not_a_pod() -> None:
    assert pod_uid_from_cgroup(f"0::/kubepods.slice/notapod{UID}x.slice/x.scope\n") is None


def test_candidates_dedup_by_inode_skip_the_node_and_order_oldest_first() -> None:
    procs = [
        Process(10, 500, 111, UID),  # app container
        Process(9, 400, 111, UID),  # the sandbox: oldest in that namespace
        Process(11, 450, 1, UID),  # CRI-O's conmon: node namespace
        Process(12, 300, 222, UID),  # an even older process in another namespace
        Process(13, 100, 333, None),  # not a pod's
        Process(14, 50, 444, "other"),
        Process(15, 60, 555, "agent"),
    ]
    found = candidates(procs, node_netns=1, skip_netns=(555,))
    assert found == {
        UID: [Candidate(UID, 222, 12, 300), Candidate(UID, 111, 9, 400)],
        "other": [Candidate("other", 444, 14, 50)],
    }


def test_decide_confirms_the_pod_ip_and_the_oldest_wins() -> None:
    found = [Candidate(UID, 222, 12, 300), Candidate(UID, 111, 9, 400)]
    mapped = decide(UID, ["10.0.0.5"], False, found, {222: frozenset({"10.0.0.5", "127.0.0.1"})})
    assert isinstance(mapped, Mapped) and (mapped.netns, mapped.pid) == (222, 12)
    assert mapped.note is not None and "oldest (pid 12) wins" in mapped.note


def test_decide_never_guesses() -> None:
    found = [Candidate(UID, 222, 12, 300), Candidate(UID, 111, 9, 400)]
    # the oldest namespace lacks the pod IP: unmapped, even though the younger one has it
    wrong = decide(UID, ["10.0.0.5"], False, found, {222: frozenset({"10.0.0.9"}), 111: frozenset({"10.0.0.5"})})
    assert isinstance(wrong, Unmapped) and "does not hold the pod IP 10.0.0.5" in wrong.reason
    assert isinstance(decide(UID, ["10.0.0.5"], False, None, {}), Unmapped)
    assert isinstance(decide(UID, [], False, found, {}), Unmapped)
    assert isinstance(decide(UID, ["10.0.0.5"], False, found, {}), Unmapped)  # addresses unreadable
    assert decide(UID, ["10.0.0.5"], True, found, {}) == HostNetwork(UID)


def test_decide_matches_ipv6_in_any_spelling() -> None:
    found = [Candidate(UID, 7, 1, 1)]
    mapped = decide(UID, ["fd00:0::2"], False, found, {7: frozenset({"fd00::2"})})
    assert isinstance(mapped, Mapped)


def test_local_addresses_from_recorded_proc_net() -> None:
    fib = (DATA / "procnet" / "fib_trie").read_text()
    inet6 = (DATA / "procnet" / "if_inet6").read_text()
    # /32 host LOCAL leaves only (127.0.0.0/8 is a LOCAL route, not an address), both tries deduplicated
    assert local_addresses(fib, inet6) == {"127.0.0.1", "192.0.2.2", "::1", "fe80::fc:ff:fe00:1", "fd00::2"}


def test_stat_start_time_and_netns_link() -> None:
    stat = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10"
    assert start_ticks(stat) == 987654
    assert netns_inode("net:[4026531840]\n") == 4026531840
    assert netns_inode("mnt:[1]") is None
