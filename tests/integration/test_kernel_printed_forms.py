"""The forms users paste, as a real iptables prints them: `iptables -t nat -S -v` (every rule with its
counters) and an `iptables-save` whose first lines were cut (`kubectl logs --tail`, `tail -n +3`), taken
from the kernel after Istio's default table was loaded into a namespace and a connection moved its
counters, on the nf_tables and the legacy backend. podnat must read each as the full dump: the same
flows, the same rules, the same counters, and say which form it was."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import require

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

DEFAULT = (Path(__file__).resolve().parent.parent / "data" / "default.v4.iptables-save").read_text()
BACKENDS = {
    "nf_tables": ("iptables-restore", "iptables", "iptables-save"),
    "legacy": ("iptables-legacy-restore", "iptables-legacy", "iptables-legacy-save"),
}
# One connection attempt from root in the namespace to its own loopback: nat OUTPUT and ISTIO_OUTPUT count it.
CONNECT = (
    "import socket\ns = socket.socket()\ns.settimeout(1)\n"
    "try:\n    s.connect(('127.0.0.1', 9))\nexcept OSError:\n    pass\n"
)


def in_netns(netns: str, *command: str, stdin: str | None = None) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", netns, *command], input=stdin, capture_output=True, text=True, check=True, timeout=30
    ).stdout


def explain(text: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "podnat", "explain", "-", "-o", "json"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


@pytest.mark.parametrize("backend", BACKENDS)
def test_what_iptables_prints_reads_as_the_full_dump(netns: str, backend: str) -> None:
    restore, iptables, save = BACKENDS[backend]
    require(all(shutil.which(c) for c in BACKENDS[backend]), f"needs {restore} (make install)")
    in_netns(netns, restore, stdin=DEFAULT)
    in_netns(netns, "ip", "link", "set", "lo", "up")
    in_netns(netns, sys.executable, "-c", CONNECT)
    dump = in_netns(netns, save, "-c", "-t", "nat")
    listed = in_netns(netns, iptables, "-t", "nat", "-S", "-v")
    lines = dump.splitlines(keepends=True)
    cut = "".join(lines[lines.index("*nat\n") + 1 :])  # the comment and *nat gone, the :CHAIN lines kept

    assert any(" -c 1 " in line for line in listed.splitlines()), listed  # a rule that counted the connection
    full = explain(dump)
    assert full["input"]["format"] == "iptables-save"
    for text, form, note in ((listed, "iptables -S", None), (cut, "iptables-save", "*nat")):
        read = explain(text)
        assert read["input"]["format"] == form
        if note is not None:  # the headerless body is read as nat, and the paste's cut is said
            assert any(note in n for n in read["input"]["notes"]), read["input"]
        assert read["flows"] == full["flows"]
        assert read["context"] == full["context"]
        assert read["findings"] == full["findings"]
