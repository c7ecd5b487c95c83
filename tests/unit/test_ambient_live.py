"""Live ambient pods through `inspect_pod` / `verify_pods` with a fake PodSource: first-class, not skipped;
an enrolled pod whose in-pod rules or ztunnel listeners are gone is broken; the release comes from the
ztunnel image on the pod's node; a pod that could not be read says how to read it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from podnat.facts import MeshMode, NatReading, NatSource, PodFacts, PodRef, PolicyRouting, SocketsReading
from podnat.render.data import pod_report_data
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
