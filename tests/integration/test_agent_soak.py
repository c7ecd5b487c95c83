"""The short version of `make soak` (bench/agent_soak.py): pods created and deleted between sweeps,
the agent's memory and open file descriptors flat."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from conftest import require

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))


def test_no_leak_while_pods_come_and_go() -> None:
    require(os.geteuid() == 0, "needs root (network namespaces, cgroups)")
    from agent_soak import soak

    result = soak(pods=12, sweeps=40, churn=3, warmup=10, tag=f"soak{os.getpid() % 10000}")
    assert result["pods_created"] == 12 + 3 * 39
    assert result["not_ok_readings"] == {}, result
    assert result["fds_end"] == result["fds_after_warmup"], result
    assert result["fds_max"] <= result["fds_after_warmup"] + 2, result
    assert result["rss_mb_end"] - result["rss_mb_after_warmup"] < 8, result
