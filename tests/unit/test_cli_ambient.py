"""`podnat explain` and `podnat trace` on a saved ambient table, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

from test_cli_offline import DEFAULT, podnat

DATA = Path(__file__).resolve().parent.parent / "data"
AMBIENT = DATA / "ambient" / "default.v4.iptables-save"
AMBIENT_NFT = DATA / "nft" / "cni-ambient-nftables" / "default.nft-list-ruleset"
ROUTING_MISSING = DATA / "ambient" / "routing-missing.txt"


def test_explain_recognises_an_ambient_table() -> None:
    for path in (AMBIENT, AMBIENT_NFT):
        result = podnat("explain", str(path), "-o", "json")
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        assert data["context"]["mode"] == "ambient"
        ports = {(f["type"], f.get("variant")): f["proxy_ports"] for f in data["flows"]}
        assert ports == {
            (1, "hbone"): [15008],
            (1, "plaintext"): [15006],
            (1, "reply"): [],
            (2, None): [15001],
            (4, "own-pod-ip"): [],
            (7, "udp"): [15053],
            (7, "tcp"): [15053],
            (8, None): [],
        }
        assert all(f["envoy_ports"] == [] for f in data["flows"])


def test_sidecar_flows_gain_proxy_ports() -> None:
    data = json.loads(podnat("explain", str(DEFAULT), "-o", "json").stdout)
    assert data["context"]["mode"] == "sidecar"
    assert all(f["proxy_ports"] == f["envoy_ports"] for f in data["flows"])


def test_trace_ztunnel_and_a_kubelet_probe() -> None:
    base = ("trace", "--nat-file", str(AMBIENT), "--pod-ip", "10.99.0.2")
    proxy = json.loads(podnat(*base, "--from", "proxy", "--to", "10.99.0.1:9080", "-o", "json").stdout)
    assert [leg["rules"] for leg in proxy["legs"]] == [["raw/OUTPUT:1", "mangle/OUTPUT:1", "OUTPUT:1"]]
    unmarked = json.loads(
        podnat(*base, "--from", "proxy", "--mark", "0", "--to", "10.99.0.1:9080", "-o", "json").stdout
    )
    assert unmarked["proxy_ports"] == [15001]
    probe = json.loads(
        podnat(*base, "--from", "remote", "--src", "169.254.7.127", "--to", "10.99.0.2:8080", "-o", "json").stdout
    )
    assert probe["legs"][0]["rules"][-1] == "ISTIO_PRERT:1" and probe["proxy_ports"] == []
    assert probe["context"]["mode"] == "ambient"


def test_routing_transcript_breaks_inbound() -> None:
    result = podnat(
        "trace",
        "--nat-file",
        str(AMBIENT),
        "--pod-ip",
        "10.99.0.2",
        "--from",
        "remote",
        "--to",
        "10.99.0.2:9080",
        "--routing",
        str(ROUTING_MISSING),
        "-o",
        "json",
    )
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["outcome"] == "dropped" and "ip rule add fwmark 0x111/0xfff lookup 100" in data["reason"]
    explained = podnat("explain", str(AMBIENT), "--routing", str(ROUTING_MISSING))
    assert explained.returncode == 1
    assert "ambient policy routing (ipv4) is incomplete" in explained.stdout


def test_mode_ambient_on_rules_that_are_gone(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    result = podnat("explain", str(empty), "--mode", "ambient", "-o", "json")
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["findings"][0]["message"].startswith("enrolled in ambient but its traffic bypasses ztunnel")
    # the sidecar table forced to ambient: no in-pod rules either
    assert podnat("explain", str(DEFAULT), "--mode", "ambient").returncode == 1


def test_bad_routing_transcript_and_mark(tmp_path: Path) -> None:
    bad = tmp_path / "routing.txt"
    bad.write_text("0: from all lookup local\n")
    result = podnat("explain", str(AMBIENT), "--routing", str(bad))
    assert result.returncode == 4
    assert "output before any `$ COMMAND` line" in result.stderr and "Traceback" not in result.stderr
    result = podnat(
        "trace",
        "--nat-file",
        str(AMBIENT),
        "--pod-ip",
        "10.99.0.2",
        "--from",
        "proxy",
        "--to",
        "10.99.0.1:80",
        "--mark",
        "lots",
    )
    assert result.returncode == 2 and "--mark" in result.stderr


def test_routing_transcript_for_a_tproxy_sidecar(tmp_path: Path) -> None:
    table = DATA / "nft" / "tproxy.nft-list-ruleset"
    good = tmp_path / "good.txt"
    good.write_text(
        "$ ip rule show\n0:\tfrom all lookup local\n32765:\tfrom all fwmark 0x539 lookup 133\n"
        "32766:\tfrom all lookup main\n$ ip route show table 133\nlocal default dev lo scope host\n"
    )
    assert podnat("explain", str(table), "--routing", str(good)).returncode == 0
    missing = tmp_path / "missing.txt"
    missing.write_text(
        "$ ip rule show\n0:\tfrom all lookup local\n32766:\tfrom all lookup main\n"
        "$ ip route show table 133\nlocal default dev lo scope host\n"
    )
    result = podnat("explain", str(table), "--routing", str(missing), "-o", "json")
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["policy_routing"]["fwmark_rule"] is False
    inbound = next(f for f in data["flows"] if f["type"] == 1)
    assert inbound["outcome"] == "dropped"


def test_the_table_header_names_the_proxy_the_flows_enter(tmp_path: Path) -> None:
    """An ambient pod's flows enter ztunnel's ports, a sidecar pod's Envoy's: the console table and the HTML
    page say which in the path column's header (the JSON keeps `envoy_ports` and has `proxy_ports`). A pod
    whose rules are gone enters no port at all, and is still ztunnel's."""
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    for args in ((str(AMBIENT),), (str(AMBIENT_NFT),), (str(empty), "--mode", "ambient")):
        shown = podnat("explain", *args).stdout
        assert "path (rules ⇒ ztunnel ports ⇒ end)" in shown, shown
        assert "Envoy ports" not in shown
    sidecar = podnat("explain", str(DEFAULT)).stdout
    assert "path (rules ⇒ Envoy ports ⇒ end)" in sidecar and "ztunnel" not in sidecar
    for table, proxy in ((AMBIENT, "ztunnel"), (DEFAULT, "Envoy")):
        page = tmp_path / f"{proxy}.html"
        podnat("explain", str(table), "--html", str(page))
        assert f'<th scope="col">path (rules ⇒ {proxy} ports ⇒ end)</th>' in page.read_text()
