"""`podnat explain`/`trace` on what users paste: the `input` and `context` objects, exit codes, one-line refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data"
DEFAULT = (DATA / "default.v4.iptables-save").read_text()


def podnat(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "250"}
    return subprocess.run(
        [sys.executable, "-m", "podnat", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_explain_json_says_the_form_and_where_the_identity_came_from():
    table = DEFAULT.replace("--uid-owner 1337", "--uid-owner 201507").replace("--gid-owner 1337", "--gid-owner 201507")
    result = podnat("explain", "-", "-o", "json", stdin='Defaulted container "istio-proxy" out of: a, b\n' + table)
    assert result.returncode == 0, result.stderr  # Envoy as 201507: no loop
    data = json.loads(result.stdout)
    assert data["input"]["format"] == "iptables-save"
    assert data["input"]["notes"][0].startswith("line 1: kubectl's message skipped")
    assert data["context"] == {
        "pod_ip": "10.99.0.2",
        "proxy_uid": 201507,
        "proxy_gid": 201507,
        "proxy_identity_from": "table ISTIO_OUTPUT:4",
        "mode": "sidecar",
        "release": None,
        "release_from": None,
    }
    assert all(flow["outcome"] == "delivered" for flow in data["flows"])


def test_flags_and_args_win_over_the_table():
    flag = json.loads(podnat("explain", "-", "-o", "json", "--proxy-uid", "1337", stdin=DEFAULT).stdout)
    assert flag["context"]["proxy_identity_from"] == "flag"
    args = json.loads(
        podnat(
            "explain",
            "-",
            "-o",
            "json",
            "--args",
            "istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x '' -b '*' -d 15090,15021,15020",
            stdin=DEFAULT,
        ).stdout
    )
    assert args["context"]["proxy_identity_from"] == "args"
    assert args["context"]["release"] and args["context"]["release_from"].startswith("best match of the table")


def test_trace_json_has_input_and_context():
    result = podnat(
        "trace",
        "--nat-file",
        "-",
        "--pod-ip",
        "10.99.0.2",
        "--from",
        "app",
        "--to",
        "10.99.0.1:9080",
        "-o",
        "json",
        stdin=DEFAULT,
    )
    data = json.loads(result.stdout)
    assert data["input"] == {"format": "iptables-save", "notes": []}
    assert data["context"]["proxy_identity_from"] == "table ISTIO_OUTPUT:4"


def test_failed_restore_log_is_an_error_finding_and_exit_1():
    log = (
        "2024-05-01T10:00:00.000000Z\tinfo\tRunning iptables-restore with the following input:\n"
        "*nat\n-N ISTIO_REDIRECT\nCOMMIT\n"
        "2024-05-01T10:00:00.100000Z\terror\tFailed to execute: iptables-restore --noflush, exit status 1\n"
    )
    result = podnat("explain", "-", "-o", "json", stdin=log)
    assert result.returncode == 1, result.stderr
    data = json.loads(result.stdout)
    assert data["findings"][0]["severity"] == "error"
    assert data["findings"][0]["message"].startswith("capture was never installed")
    # only Prometheus, which scrapes Envoy's own port, meets Envoy
    assert all(flow["envoy_ports"] == [] for flow in data["flows"] if flow["type"] != 3)
    assert "line 5: Failed to execute: iptables-restore" in data["findings"][0]["message"]


def test_listing_refused_in_one_line_exit_4():
    result = podnat("explain", "-", stdin="Chain PREROUTING (policy ACCEPT)\ntarget prot opt source destination\n")
    assert result.returncode == 4
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert "`iptables -L` listing" in result.stderr and "iptables-save -t nat" in result.stderr


def test_inspect_json_has_context_per_pod():
    """The same `context` object on a live pod (inspect, and each pod of verify), from its spec."""
    from test_pod_facts_explained import TPROXY, FakeSource, live_table, make_pod, routing

    from podnat.render.data import pod_report_data, verify_data
    from podnat.usecases import VerifyReport, inspect_pod

    report = inspect_pod(FakeSource(nat=live_table(TPROXY), routing=routing(None, None)), make_pod(TPROXY))
    context = {
        "pod_ip": "10.99.0.2",
        "proxy_uid": 0,
        "proxy_gid": 1337,
        "proxy_identity_from": "pod spec",
        "mode": "sidecar",
        "release": "1.30",
        "release_from": "pod spec (proxy image)",
    }
    assert pod_report_data(report)["context"] == context
    assert pod_report_data(report)["pod"]["ip"] == "10.99.0.2"  # the existing fields stay
    assert verify_data(VerifyReport((report,)))["pods"][0]["context"] == context


def test_trace_and_explain_agree_on_dns_over_tcp():
    """One connection, one answer: with DNS capture, TCP to the resolver's 53 is answered by pilot-agent's
    DNS proxy (15053) in both (a kernel dump of Istio's dns-uid-gid golden)."""
    table = DATA / "istio" / "kernel-save" / "iptables" / "dns-uid-gid.v4.iptables-save"
    explained = json.loads(podnat("explain", str(table), "-o", "json").stdout)
    flow = next(f for f in explained["flows"] if f["type"] == 7 and f["name"].endswith("(tcp)"))
    resolver = flow["legs"][0]["dst"]
    traced = podnat(
        "trace",
        "--nat-file",
        str(table),
        "--pod-ip",
        "10.99.0.2",
        "--from",
        "app",
        "--to",
        resolver,
        "--proto",
        "tcp",
        "-o",
        "json",
    )
    assert traced.returncode == 0, traced.stdout
    data = json.loads(traced.stdout)
    assert data["outcome"] == flow["outcome"] == "delivered"
    assert data["delivered_to"] == flow["delivered_to"] == "127.0.0.1:15053"
    assert [leg["rules"] for leg in data["legs"]] == [leg["rules"] for leg in flow["legs"]]


INJECTED = "istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x '' -b '*' -d 15090,15021,15020"
CORPUS = DATA / "real-inputs"


def test_reconcile_picks_the_release_that_matches_and_blames_no_tampering():
    """A 1.12-era table from a book (port 22 excluded, `-p tcp` on OUTPUT): without --istio-version the
    release that wrote it is found; with the newest forced, each difference is that release's own rule."""
    table = str(CORPUS / "07-istio-insider-book-iptables-save.txt")
    found = json.loads(podnat("explain", table, "--args", INJECTED, "-o", "json").stdout)
    assert found["context"]["release"] == "1.12" and found["context"]["release_from"].startswith("best match")
    assert found["diff"] == [] and not [f for f in found["findings"] if f["severity"] == "error"]
    forced = json.loads(podnat("explain", table, "--args", INJECTED, "--istio-version", "1.30", "-o", "json").stdout)
    assert forced["diff"] and all("not tampering" in d["cause"] for d in forced["diff"])
    inverted = next(d for d in forced["diff"] if d["rule"] == "ISTIO_OUTPUT:2")
    assert inverted["cause"].startswith("traffic NOT to 127.0.0.1/32")  # a cause never inverts its rule


def test_cosmetic_differences_are_not_drift():
    """Native nftables from a release that prints no `counter` keyword (the sail-operator docs)."""
    result = podnat(
        "explain",
        str(CORPUS / "08-sail-operator-docs-nft-list-ruleset-sidecar.txt"),
        "--args",
        INJECTED + " --native-nftables",
        "-o",
        "json",
    )
    data = json.loads(result.stdout)
    assert result.returncode == 0 and data["diff"] == []
    assert [f["severity"] for f in data["findings"]] == ["info"]
    assert "the same for every packet" in data["findings"][0]["message"]
