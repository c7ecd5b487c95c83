"""Live ambient pods through `inspect_pod` / `verify_pods` with a fake PodSource: first-class, not skipped;
an enrolled pod whose in-pod rules or ztunnel listeners are gone is broken; the release comes from the
ztunnel image on the pod's node; a pod that could not be read says how to read it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from podnat.facts import MeshMode, NatReading, NatSource, PodFacts, PodRef, PolicyRouting, SocketsReading
from podnat.render.data import pod_report_data
from podnat.report import Explained
from podnat.sources import AMBIENT_NOT_READ
from podnat.usecases import _RELEASES, inspect_pod, verify_pods

DATA = Path(__file__).resolve().parent.parent / "data" / "ambient"
LIVE = (DATA / "default.v4.iptables-save").read_text()
ROUTING_TEXT = (DATA / "routing.txt").read_text().split("$ ip route show table 100\n")
ALL_PORTS = (9080, 15001, 15006, 15008, 15053)


def ambient_pod(name: str = "ratings-v1-x", node: str = "node-1", **annotations: str) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "bookinfo",
            "labels": {"istio.io/dataplane-mode": "ambient"},
            "annotations": dict(annotations),
        },
        "spec": {
            "nodeName": node,
            "containers": [{"name": "ratings", "image": "ratings:1", "ports": [{"containerPort": 9080}]}],
        },
        "status": {"phase": "Running", "podIP": "10.99.0.2", "podIPs": [{"ip": "10.99.0.2"}]},
    }


ZTUNNEL = {
    "metadata": {"name": "ztunnel-abcde", "namespace": "istio-system"},
    "spec": {
        "nodeName": "node-1",
        "containers": [{"name": "istio-proxy", "image": "docker.io/istio/ztunnel:1.28.2-distroless"}],
    },
}


class FakeSource:
    """A PodSource: ztunnel on node-1, and the facts it was given for every pod."""

    def __init__(self, **facts: Any) -> None:
        self.facts = facts

    def list_pods(self, namespace: str | None, selector: str | None = None) -> list[dict[str, Any]]:
        return [ZTUNNEL] if selector == "app=ztunnel" else []

    def get_pod(self, ref: PodRef) -> dict[str, Any]:
        raise NotImplementedError

    def read_facts(self, pod: Mapping[str, Any], source: NatSource | None, debug_container: bool) -> PodFacts:
        return PodFacts(ref=PodRef("bookinfo", pod["metadata"]["name"]), pod=pod, mesh=MeshMode.AMBIENT, **self.facts)


def read(table: str = LIVE, ports: tuple[int, ...] = ALL_PORTS, rules: str | None = ROUTING_TEXT[0]) -> dict[str, Any]:
    return {
        "nat": NatReading(NatSource.NODE, "node agent on node-1 (uid 0, NET_ADMIN): iptables-nft-save -c", v4=table),
        "sockets": SocketsReading("node agent on node-1: cat /proc/net/tcp /proc/net/tcp6", ports),
        "routing": PolicyRouting(
            "node agent on node-1: ip rule show; ip route show table 100 (and ip -6)",
            100,
            rules.removeprefix("$ ip rule show\n") if rules is not None else None,
            ROUTING_TEXT[1],
            "",
            "",
        ),
    }


def setup_function() -> None:
    _RELEASES.clear()


def test_an_ambient_pod_as_istio_cni_wrote_it_is_ok() -> None:
    report = inspect_pod(FakeSource(**read()), ambient_pod())
    assert (report.mesh, report.status, report.istio_version) == ("ambient", "ok", "1.28")
    data = pod_report_data(report)
    assert data["context"]["mode"] == "ambient"
    assert data["context"]["release_from"].startswith("ztunnel image on node node-1 (istio-system/ztunnel-abcde")
    flows = {(f["type"], f.get("variant")): f for f in data["flows"]}
    assert flows[(1, "plaintext")]["proxy_ports"] == [15006] and flows[(2, None)]["proxy_ports"] == [15001]
    assert all(f["status"] == "ok" for f in data["flows"])


def test_rules_gone_after_a_reboot_is_broken() -> None:
    report = inspect_pod(FakeSource(**read(table="")), ambient_pod())
    assert report.status == "broken"
    assert report.explanation is not None
    assert report.explanation.findings[0].message.startswith(
        "enrolled in ambient but its traffic bypasses ztunnel: no ISTIO_PRERT/ISTIO_OUTPUT in the pod"
    )


def test_ztunnel_not_listening_is_broken() -> None:
    report = inspect_pod(FakeSource(**read(ports=(9080,))), ambient_pod())
    assert report.status == "broken"
    assert report.explanation is not None
    assert any("ztunnel is not listening on 15001, 15006, 15008" in f.message for f in report.explanation.findings)


def test_fwmark_rule_deleted_is_broken() -> None:
    rules = "0:\tfrom all lookup local\n32766:\tfrom all lookup main\n32767:\tfrom all lookup default\n"
    report = inspect_pod(FakeSource(**read(rules="$ ip rule show\n" + rules)), ambient_pod())
    assert report.status == "broken"
    assert report.explanation is not None
    assert any("no `ip rule add fwmark 0x111/0xfff lookup 100`" in f.message for f in report.explanation.findings)


def test_annotations_are_the_intent() -> None:
    report = inspect_pod(FakeSource(**read()), ambient_pod(**{"ambient.istio.io/dns-capture": "false"}))
    assert report.status == "drift"
    assert report.explanation is not None and report.explanation.diff
    assert any("ambient.istio.io/dns-capture" in d.cause for d in report.explanation.diff)


def test_not_readable_says_how_and_verify_counts_it() -> None:
    class Unreadable(FakeSource):
        def read_facts(self, pod: Mapping[str, Any], source: NatSource | None, debug_container: bool) -> PodFacts:
            return PodFacts(ref=PodRef("bookinfo", "x"), pod=pod, mesh=MeshMode.AMBIENT, notes=("x", AMBIENT_NOT_READ))

    report = inspect_pod(Unreadable(), ambient_pod())
    assert report.status == "error" and report.error == AMBIENT_NOT_READ and report.error_code == 3
    result = verify_pods(Unreadable, [ambient_pod()], 1)
    assert int(result.exit_code) == 3
    ok = verify_pods(lambda: FakeSource(**read()), [ambient_pod("a"), ambient_pod("b")], 2)
    assert [p.status for p in ok.pods] == ["ok", "ok"] and int(ok.exit_code) == 0


# --- a dual-stack ambient pod: both families explained, as a sidecar's ---------------------------------------
# Recorded in a network namespace of our own: the IPv6 in-pod rules loaded with ip6tables-nft-restore and dumped
# with ip6tables-nft-save -c; `ip -6 rule add fwmark 0x111/0xfff pref 32764 lookup 100`, `ip -6 route add local
# ::/0 dev lo table 100`, then `ip -6 rule show` and `ip -6 route show table 100`.
LIVE6 = (DATA / "default.v6.iptables-save").read_text()
ROUTING6 = (
    (DATA / "routing-v6.txt").read_text().removeprefix("$ ip -6 rule show\n").split("$ ip -6 route show table 100\n")
)
NO_FWMARK6 = "0:\tfrom all lookup local\n32766:\tfrom all lookup main\n"


def dual_stack_pod() -> dict[str, Any]:
    pod = ambient_pod()
    pod["status"]["podIPs"] = [{"ip": "10.99.0.2"}, {"ip": "fd00:99::2"}]
    return pod


def read_dual(table6: str = LIVE6, rules6: str = ROUTING6[0]) -> dict[str, Any]:
    facts = read()
    facts["nat"] = NatReading(facts["nat"].source, facts["nat"].label, v4=LIVE, v6=table6)
    v4 = facts["routing"]
    facts["routing"] = PolicyRouting(v4.label, 100, v4.rules_v4, v4.routes_v4, rules6, ROUTING6[1])
    return facts


def test_a_dual_stack_ambient_pod_is_explained_in_both_families() -> None:
    report = inspect_pod(FakeSource(**read_dual()), dual_stack_pod())
    assert report.status == "ok"
    assert isinstance(report, Explained)
    assert [f.family.value for f in report.families] == ["ipv4", "ipv6"]
    v6 = report.families[1].explanation
    assert v6.proxy == "ztunnel" and all(f.status.value == "ok" for f in v6.flows)
    flows = {(int(f.spec.type), f.spec.variant): f for f in v6.flows}
    assert str(flows[(1, "plaintext")].live.legs[0].dst.address) == "fd00:99::2"
    assert flows[(1, "plaintext")].live.proxy_ports == (15006,) and flows[(2, None)].live.proxy_ports == (15001,)
    assert str(flows[(8, None)].spec.source) == "fd16:9254:7127:1337:ffff:ffff:ffff:ffff"
    data = pod_report_data(report)
    assert data["second_family"]["family"] == "ipv6"
    assert {f["status"] for f in data["second_family"]["flows"]} == {"ok"}


def test_dual_stack_ambient_faults_in_one_family_only() -> None:
    # istio-cni wrote no IPv6 rules (IPv6 off in its agent): the pod's IPv6 traffic bypasses ztunnel, IPv4 does not
    no_v6 = inspect_pod(FakeSource(**read_dual(table6="")), dual_stack_pod())
    assert isinstance(no_v6, Explained) and no_v6.status == "broken"
    v4, v6 = no_v6.families
    assert all(f.status.value == "ok" for f in v4.explanation.flows)
    assert v6.explanation.findings[0].message.startswith("enrolled in ambient but its traffic bypasses ztunnel")
    # the IPv6 fwmark rule deleted: IPv6 inbound replies leave the pod, IPv4's come back
    no_rule = inspect_pod(FakeSource(**read_dual(rules6=NO_FWMARK6)), dual_stack_pod())
    assert isinstance(no_rule, Explained) and no_rule.status == "broken"
    v4, v6 = no_rule.families
    assert all(f.status.value == "ok" for f in v4.explanation.flows)
    broken = {(int(f.spec.type), f.spec.variant) for f in v6.explanation.flows if f.status.value == "broken"}
    assert (1, "plaintext") in broken
    assert any("ip -6 rule add fwmark 0x111/0xfff lookup 100" in f.message for f in v6.explanation.findings)


def test_the_console_shows_each_familys_flows(monkeypatch: pytest.MonkeyPatch) -> None:
    """`podnat inspect` of a dual-stack pod: a flows table per family (titled with its address), and an ambient
    pod's fwmark rule and table 100 as its policy routing (not TPROXY's)."""
    import io

    from rich.console import Console

    from podnat.render import console

    screen = io.StringIO()
    monkeypatch.setattr(console, "out", Console(file=screen, width=160, soft_wrap=False, color_system=None))
    console.print_pod_report(inspect_pod(FakeSource(**read_dual(rules6=NO_FWMARK6)), dual_stack_pod()))
    text = screen.getvalue()
    assert "ipv4 (10.99.0.2)" in text and "ipv6 (fd00:99::2)" in text
    assert text.count("path (rules ⇒ ztunnel ports ⇒ end)") == 2
    assert "policy routing (ipv6)  ip -6 rule fwmark 0x111 lookup 100 ✗ missing" in text and "TPROXY" not in text
    assert "status: broken" in text
