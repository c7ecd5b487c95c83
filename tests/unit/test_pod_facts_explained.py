"""Facts beyond the table, explained: a TPROXY pod's policy routing (`ip rule`, `ip route`, recorded
from iproute2 6.1 in tests/data/routing) and DNS capture that was asked for but is not in the rules.
Live pods through `inspect_pod` with a fake PodSource; the offline CLI as a user runs it."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from podnat.facts import NatReading, NatSource, PodFacts, PodRef, PolicyRouting
from podnat.istio.config import InterceptionConfig
from podnat.istio.explain import FlowStatus
from podnat.istio.generator import expected_rules
from podnat.render.data import pod_report_data
from podnat.report import Explained, PodReport
from podnat.usecases import inspect_pod

DATA = Path(__file__).resolve().parent.parent / "data"
ROUTING = DATA / "routing"
DEFAULT = DATA / "default.v4.iptables-save"
INJECTED = "istio-iptables -p 15001 -z 15006 -u 1337 -m {mode} -i '*' -x '' -b '*' -d 15090,15021,15020"
TPROXY = INJECTED.format(mode="TPROXY")
REDIRECT = INJECTED.format(mode="REDIRECT")
DNS_ENV = {"ISTIO_META_DNS_CAPTURE": "true"}


def recorded(name: str) -> str:
    return (ROUTING / name).read_text()


def make_pod(args: str, env: Mapping[str, str] | None = None, ips: tuple[str, ...] = ("10.99.0.2",)) -> dict[str, Any]:
    init = {
        "name": "istio-init",
        "image": "docker.io/istio/proxyv2:1.30.0",
        "args": shlex.split(args),
        "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
    }
    return {
        "kind": "Pod",
        "metadata": {"name": "reviews-v1-x", "namespace": "bookinfo", "annotations": {}},
        "spec": {
            "nodeName": "node-1",
            "initContainers": [init],
            "containers": [
                {"name": "reviews", "image": "reviews:1", "ports": [{"containerPort": 9080}]},
                {"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.30.0"},
            ],
        },
        "status": {"phase": "Running", "podIP": ips[0], "podIPs": [{"ip": ip} for ip in ips]},
    }


class FakeSource:
    """A PodSource that hands out the facts it was given."""

    def __init__(self, **facts: Any) -> None:
        self.facts = facts

    def list_pods(self, namespace: str | None, selector: str | None = None) -> list[dict[str, Any]]:
        return []

    def get_pod(self, ref: PodRef) -> dict[str, Any]:
        raise NotImplementedError

    def read_facts(self, pod: Mapping[str, Any], source: NatSource | None, debug_container: bool) -> PodFacts:
        return PodFacts(ref=PodRef("bookinfo", "reviews-v1-x"), pod=pod, **self.facts)


def live_table(
    args: str, env: Mapping[str, str] | None = None, nameservers: tuple[str, ...] = (), ipv6: bool = False
) -> NatReading:
    """The rules istio-init installs for these args, as the pod's live table (the pod as intended)."""
    rules = expected_rules(InterceptionConfig.from_args(args, env or {}, "1.30", nameservers=nameservers, ipv6=ipv6))
    return NatReading(NatSource.EXEC, "exec istio-proxy: iptables-save -c", v4=rules.v4, v6=rules.v6)


def routing(
    rules: str | None,
    routes: str | None,
    *,
    table: int = 133,
    rules6: str | None = None,
    routes6: str | None = None,
    error: str | None = None,
) -> PolicyRouting:
    return PolicyRouting(
        f"exec istio-proxy: ip rule show; ip route show table {table} (and ip -6)",
        table,
        rules,
        routes,
        rules6,
        routes6,
        error,
    )


def tproxy_report(reading: PolicyRouting | None, args: str = TPROXY) -> PodReport:
    return inspect_pod(FakeSource(nat=live_table(args), routing=reading), make_pod(args))


def statuses(report: PodReport) -> dict[tuple[int, str | None], str]:
    assert report.explanation is not None
    return {(int(f.spec.type), f.spec.variant): f.status.value for f in report.explanation.flows}


# --- TPROXY policy routing ------------------------------------------------------------------------


def test_tproxy_routing_present_is_ok_and_shown() -> None:
    report = tproxy_report(routing(recorded("rule-present.txt"), recorded("route-present.txt")))
    assert report.status == "ok"
    data = pod_report_data(report)
    assert data["policy_routing"] == {
        "family": "ipv4",
        "source": "exec istio-proxy: ip rule show; ip route show table 133 (and ip -6)",
        "mark": 1337,
        "table": 133,
        "fwmark_rule": True,
        "local_route": True,
        "missing": [],
        "unknown": None,
    }
    assert data["sources"]["routing"] == "exec istio-proxy: ip rule show; ip route show table 133 (and ip -6)"
    assert not [f for f in data["findings"] if "policy routing" in f["message"]]


def test_tproxy_rule_missing_breaks_inbound() -> None:
    report = tproxy_report(routing(recorded("rule-default.txt"), recorded("route-present.txt")))
    assert report.status == "broken"
    # Only the flow whose app sees a client address outside the pod: type 1. Type 4's hairpin comes from
    # the pod's own IP, type 3's port 15090 is not diverted.
    assert {k: v for k, v in statuses(report).items() if v != "ok"} == {(1, None): "broken"}
    assert report.explanation is not None
    inbound = report.explanation.flows[0].live
    assert inbound.outcome.value == "dropped" and inbound.delivered_to is None
    assert "no `ip rule fwmark 0x539 lookup 133`" in inbound.reason
    finding = next(f for f in report.explanation.findings if "policy routing" in f.message)
    assert finding.severity == "error" and finding.flow_types == (1,)
    assert finding.rules == ("mangle/ISTIO_TPROXY:1",)
    assert "`ip rule add fwmark 1337 lookup 133` is missing" in finding.message
    assert "they meet `32766: from all lookup main` first" in finding.message
    data = pod_report_data(report)["policy_routing"]
    assert (data["fwmark_rule"], data["local_route"], data["missing"]) == (
        False,
        True,
        ["ip rule add fwmark 1337 lookup 133"],
    )


def test_tproxy_route_missing_breaks_inbound() -> None:
    # The source keeps "" for `ip route show table 133` when iproute2 says "FIB table does not exist".
    report = tproxy_report(routing(recorded("rule-present.txt"), ""))
    assert statuses(report)[(1, None)] == FlowStatus.BROKEN.value
    assert report.explanation is not None
    finding = next(f for f in report.explanation.findings if "policy routing" in f.message)
    assert "`ip route add local default dev lo table 133` is missing" in finding.message
    assert "no `local default dev lo` in table 133" in report.explanation.flows[0].live.reason


def test_tproxy_custom_table() -> None:
    # istio-init -r 134; the recorded namespace has `fwmark 0x539/0xfff lookup 134` (a masked rule selects
    # mark 1337 too). A custom -t is checked in test_routing.py: podnat's Envoy model marks its sockets
    # 1337 whatever -t says, so the flows of such a pod are not a fair test of the routing check.
    args = TPROXY + " -r 134"
    ok = tproxy_report(routing(recorded("rule-masked.txt"), recorded("route-present.txt"), table=134), args)
    assert ok.status == "ok"
    assert pod_report_data(ok)["policy_routing"]["table"] == 134
    # Istio's default pair (1337 -> 133) is not what this pod needs: nothing sends its mark to 134.
    broken = tproxy_report(routing(recorded("rule-present.txt"), recorded("route-present.txt"), table=134), args)
    assert broken.status == "broken"
    assert pod_report_data(broken)["policy_routing"]["missing"] == ["ip rule add fwmark 1337 lookup 134"]


def test_tproxy_routing_unknown_is_a_warning_not_a_break() -> None:
    missing_ip = tproxy_report(routing(None, None, error="`ip` is not in the image of istio-proxy"))
    assert missing_ip.status == "ok"
    data = pod_report_data(missing_ip)
    assert (data["policy_routing"]["fwmark_rule"], data["policy_routing"]["local_route"]) == (None, None)
    assert data["policy_routing"]["unknown"] == "`ip` is not in the image of istio-proxy"
    (finding,) = [f for f in data["findings"] if "policy routing" in f["message"]]
    assert finding["severity"] == "warning" and "not known: `ip` is not in the image" in finding["message"]
    not_read = tproxy_report(None)
    assert not_read.status == "ok"
    assert pod_report_data(not_read)["policy_routing"]["source"] == "not read"


def test_tproxy_dual_stack_checks_each_family() -> None:
    pod = make_pod(TPROXY, {"ISTIO_DUAL_STACK": "true"}, ips=("10.99.0.2", "fd00:10:99::2"))
    reading = routing(
        recorded("rule-present.txt"), recorded("route-present.txt"), rules6=recorded("rule6-default.txt"), routes6=""
    )
    report = inspect_pod(FakeSource(nat=live_table(TPROXY, ipv6=True), routing=reading), pod)
    assert isinstance(report, Explained)
    assert [family.family.value for family in report.families] == ["ipv4", "ipv6"]
    assert report.explanation.policy_routing is not None and not report.explanation.policy_routing.broken
    assert report.status == "broken"  # the IPv6 side
    data = pod_report_data(report)["second_family"]
    assert data["policy_routing"]["missing"] == [
        "ip -6 rule add fwmark 1337 lookup 133",
        "ip -6 route add local default dev lo table 133",
    ]


def test_redirect_pod_has_no_policy_routing() -> None:
    report = inspect_pod(FakeSource(nat=live_table(REDIRECT)), make_pod(REDIRECT))
    assert "policy_routing" not in pod_report_data(report) and "routing" not in report.sources


# --- DNS capture asked for -------------------------------------------------------------------------


def test_dns_requested_but_not_in_the_rules_warns() -> None:
    # istio-init found no nameserver: it installed the rules without DNS capture.
    report = inspect_pod(FakeSource(nat=live_table(REDIRECT)), make_pod(REDIRECT, DNS_ENV))
    assert report.status == "ok"  # a warning: every flow still takes its path
    assert report.explanation is not None
    assert 7 not in {int(f.spec.type) for f in report.explanation.flows}
    (finding,) = [f for f in report.explanation.findings if "DNS" in f.message]
    assert finding.severity == "warning" and finding.flow_types == (7,)
    for words in (
        "no nameserver in the pod's /etc/resolv.conf",
        "straight to the resolver",
        "ServiceEntry hostnames",
        "pilot-agent's DNS proxy (15053)",
    ):
        assert words in finding.message


def test_dns_requested_and_present_has_flow_7() -> None:
    # The live table names the nameserver istio-init found; the intent is built with it.
    nat = live_table(REDIRECT, DNS_ENV, nameservers=("10.96.0.10",))
    report = inspect_pod(FakeSource(nat=nat), make_pod(REDIRECT, DNS_ENV))
    assert report.status == "ok" and report.explanation is not None
    assert statuses(report)[(7, "udp")] == statuses(report)[(7, "tcp")] == "ok"
    assert report.explanation.diff == ()
    assert not [f for f in report.explanation.findings if "DNS" in f.message]
    udp = next(f.live for f in report.explanation.flows if f.spec.variant == "udp")
    assert str(udp.delivered_to) == "127.0.0.1:15053"


def test_dns_in_the_rules_but_not_requested_drifts() -> None:
    nat = live_table(REDIRECT, DNS_ENV, nameservers=("10.96.0.10",))
    report = inspect_pod(FakeSource(nat=nat), make_pod(REDIRECT))
    assert statuses(report)[(7, "udp")] == "drift"


# --- offline: podnat explain --args ----------------------------------------------------------------


def podnat(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "250"}
    return subprocess.run(
        [sys.executable, "-m", "podnat", *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def test_offline_dns_requested_without_dns_rules(tmp_path: Path) -> None:
    result = podnat("explain", str(DEFAULT), "--args", REDIRECT + " --redirect-dns", "-o", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    (finding,) = [f for f in data["findings"] if "DNS capture was requested" in f["message"]]
    assert finding["severity"] == "warning" and finding["flow_types"] == [7]
    assert 7 not in {f["type"] for f in data["flows"]}
    table = podnat("explain", str(DEFAULT), "--args", REDIRECT + " --redirect-dns")
    assert "DNS capture was requested" in table.stdout
    plain = podnat("explain", str(DEFAULT), "--args", REDIRECT, "-o", "json")
    assert not [f for f in json.loads(plain.stdout)["findings"] if "DNS" in f["message"]]


def test_offline_dns_requested_and_present(tmp_path: Path) -> None:
    dump = tmp_path / "dns.iptables-save"
    dump.write_text(live_table(REDIRECT, DNS_ENV, nameservers=("10.96.0.10",)).v4)
    # Without --nameserver the resolvers the table redirects are taken as the ones istio-init found.
    result = podnat(
        "explain", str(dump), "--args", REDIRECT + " --redirect-dns", "--istio-version", "1.30", "-o", "json"
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [(f["type"], f["variant"], f["status"]) for f in data["flows"] if f["type"] == 7] == [
        (7, "udp", "ok"),
        (7, "tcp", "ok"),
    ]
    assert data["diff"] == [] and not [f for f in data["findings"] if "DNS" in f["message"]]


# --- iptables and native nftables both loaded ------------------------------------------------------


def test_iptables_and_native_nftables_both_loaded_is_an_error() -> None:
    from podnat.istio.generator_nft import nft_listing

    nft = nft_listing(InterceptionConfig.from_args(REDIRECT + " --native-nftables", {}, "1.30"))
    iptables = live_table(REDIRECT)
    both = NatReading(iptables.source, iptables.label, v4=iptables.v4, v6=iptables.v6, nft=nft)
    report = inspect_pod(FakeSource(nat=both), make_pod(REDIRECT))
    assert report.status == "drift"
    assert report.explanation is not None
    (finding,) = [f for f in report.explanation.findings if "native nftables" in f.message]
    assert finding.severity == "error" and "runs both" in finding.message
    assert any("both" in note for note in report.notes)
    # only Istio's nftables tables: native nftables mode, read from nft, no such finding
    alone = NatReading(iptables.source, iptables.label, v4="", v6=None, nft=nft)
    native = inspect_pod(FakeSource(nat=alone), make_pod(REDIRECT + " --native-nftables"))
    assert native.explanation is not None and native.status == "ok"
    assert not [f for f in native.explanation.findings if "native nftables" in f.message]


# --- pods being deleted ------------------------------------------------------------------------------


def test_verify_skips_a_terminating_pod_and_says_so() -> None:
    from podnat.usecases import verify_pods

    live, leaving = make_pod(REDIRECT), make_pod(REDIRECT)
    leaving["metadata"] = {**leaving["metadata"], "name": "reviews-v1-old", "deletionTimestamp": "2026-01-01T00:00:00Z"}
    asked: list[str] = []

    class Counting(FakeSource):
        def read_facts(self, pod: Mapping[str, Any], source: NatSource | None, debug_container: bool) -> PodFacts:
            asked.append(pod["metadata"]["name"])
            return super().read_facts(pod, source, debug_container)

    report = verify_pods(lambda: Counting(nat=live_table(REDIRECT)), [live, leaving], 2)
    by_name = {r.ref.name: r for r in report.pods}
    assert asked == ["reviews-v1-x"]  # no exec in a pod that is going away
    assert by_name["reviews-v1-old"].status == "skipped"
    assert by_name["reviews-v1-old"].notes == (
        "pod bookinfo/reviews-v1-old is terminating (deletionTimestamp 2026-01-01T00:00:00Z): not checked",
    )
    assert by_name["reviews-v1-x"].status == "ok" and report.exit_code == 0


def test_inspect_of_a_terminating_pod_still_reads_it_and_notes_it() -> None:
    pod = make_pod(REDIRECT)
    pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    report = inspect_pod(FakeSource(nat=live_table(REDIRECT)), pod)
    assert report.status == "ok"
    assert report.notes[-1] == (
        "pod bookinfo/reviews-v1-x is terminating (deletionTimestamp 2026-01-01T00:00:00Z): its rules go with it"
    )
