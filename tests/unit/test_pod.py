"""podnat/istio/pod.py: what a pod is, read once, from real pod specs: Istio's own injection output
(tests/data/istio/pod-specs), the lab's pods as its API server served them (tests/data/e2e/*.pod.json),
and the variants istio-cni, native sidecars, ambient enrolment and interceptionMode NONE make of them.

And the use cases read each pod once: `inspect` and `verify` hand the PodInfo to the source, the intent
and the explanation, and a pod enrolled in ambient but not yet annotated by istio-cni is ambient to all.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

import podnat.istio.pod as pods
from podnat.facts import Failure, NatReading, NatSource, PodFacts, PodRef, SourceError
from podnat.istio.config import ConfigSource, InterceptionMode, IstioRelease
from podnat.istio.flows import Identity
from podnat.istio.mesh import MeshMode
from podnat.istio.pod import PodInfo, PodSpecError, pod_info, read_pod, with_namespace_labels
from podnat.namespaces import NamespaceLabels
from podnat.render.data import pod_report_data
from podnat.sources import AMBIENT_NOT_READ
from podnat.usecases import inspect_pod, read_pods, verify_pods

DATA = Path(__file__).resolve().parent.parent / "data"
AMBIENT_NOTE = "istio-cni has not annotated it ambient.istio.io/redirection: enabled yet"


def hello() -> dict[str, Any]:
    """Istio's pkg/kube/inject/testdata/inject/hello.yaml.injected: a Deployment, istio-proxy a native sidecar."""
    docs = yaml.safe_load_all((DATA / "istio" / "pod-specs" / "hello.yaml.injected").read_text())
    return dict(next(d for d in docs if d))


def lab_pod(mode: str) -> dict[str, Any]:
    """A lab pod as the lab's API server served it (`kubectl get pod -o json`), per capture mode."""
    return dict(json.loads((DATA / "e2e" / f"lab-{mode}.pod.json").read_text()))


def as_cni(pod: dict[str, Any]) -> dict[str, Any]:
    """The same pod as istio-cni injects it: no istio-init; istio-validation checks the rules instead."""
    pod = copy.deepcopy(pod)
    inits = pod["spec"]["initContainers"]
    init = next(c for c in inits if c["name"] == "istio-init")
    init["name"] = "istio-validation"
    init["args"] = [*init["args"], "--run-validation", "--skip-rule-apply"]
    return pod


def without_proxy(pod: dict[str, Any], **meta: dict[str, str]) -> dict[str, Any]:
    pod = copy.deepcopy(pod)
    spec = pod["spec"]
    spec["containers"] = [c for c in spec["containers"] if c["name"] != "istio-proxy"]
    spec["initContainers"] = []
    for key, values in meta.items():
        pod["metadata"][key] = {**(pod["metadata"].get(key) or {}), **values}
    return pod


# --- sidecar pods -------------------------------------------------------------------------------------


def test_istio_injected_deployment_with_a_native_sidecar() -> None:
    info = read_pod(hello())
    assert (info.kind, info.name, info.mesh, info.reason) == (
        "Deployment",
        "hello",
        MeshMode.SIDECAR,
        "istio-init args",
    )
    assert info.proxy is not None and info.proxy.native_sidecar and info.proxy.image.endswith("proxyv2:latest")
    assert info.init is not None and info.init.argv[:3] == ("istio-iptables", "-p", "15001")
    assert info.app is not None and info.app.name == "hello"
    assert info.app_ports == (80,)  # the app's declared port, from the pod template
    assert info.proxy_identity == Identity(1337, 1337)
    assert info.release == IstioRelease(1, 30)  # tag `latest`: the newest podnat knows
    assert info.config is not None and info.config.source is ConfigSource.ISTIO_INIT
    assert info.config.mode is InterceptionMode.REDIRECT and info.tproxy_route_table is None
    assert any("native sidecar" in note for note in info.notes)
    assert (info.admin_port, info.uses_istio_cni, info.dns_capture_requested) == (15000, False, False)
    assert info.mesh_note == ""


def test_lab_pods_as_the_api_served_them() -> None:
    redirect = read_pod(lab_pod("redirect"))
    assert (redirect.namespace, redirect.mesh, redirect.node) == ("bookinfo", MeshMode.SIDECAR, "podnat-lab")
    assert redirect.pod_ips == ("10.99.0.10",) and redirect.pod_ip == "10.99.0.10"
    assert redirect.app_ports == (9080,) and redirect.release == IstioRelease(1, 30)
    assert redirect.proxy_identity == Identity(1337, 1337) and not redirect.proxy.native_sidecar  # type: ignore[union-attr]
    tproxy = read_pod(lab_pod("tproxy"))
    assert tproxy.config is not None and tproxy.config.mode is InterceptionMode.TPROXY and tproxy.tproxy
    assert tproxy.proxy_identity == Identity(0, 1337)  # istio-proxy runs as root in TPROXY mode
    assert tproxy.tproxy_route_table == 133
    nft = read_pod(lab_pod("nftables"))
    assert nft.config is not None and nft.config.native_nftables
    assert any("native nftables" in note for note in nft.notes)


def test_istio_cni_pod_reads_annotations_env_and_run_as() -> None:
    pod = as_cni(lab_pod("tproxy"))
    info = read_pod(pod)
    assert info.init is None and info.validation is not None and info.uses_istio_cni
    assert info.reason == "istio-cni: annotations, istio-proxy env and CNI defaults"
    assert info.config is not None and info.config.source is ConfigSource.ISTIO_CNI
    assert info.config.mode is InterceptionMode.TPROXY  # the annotation
    assert info.config.proxy_uids == ("1337",)  # runAsUser 0 is istio-cni's default, as from_cni reads it
    assert info.proxy_identity == Identity(0, 1337)
    # istio-cni with no istio-validation container: the sidecar.istio.io/status annotation says so
    pod["spec"]["initContainers"] = []
    status = json.loads(pod["metadata"]["annotations"]["sidecar.istio.io/status"])
    status["initContainers"] = ["istio-validation"]
    pod["metadata"]["annotations"]["sidecar.istio.io/status"] = json.dumps(status)
    assert read_pod(pod).uses_istio_cni


def test_interception_mode_none_from_the_annotation_or_the_args() -> None:
    pod = lab_pod("redirect")
    pod["metadata"]["annotations"]["sidecar.istio.io/interceptionMode"] = "NONE"
    info = read_pod(pod)
    assert (info.mesh, info.config, info.proxy_identity) == (MeshMode.NO_CAPTURE, None, None)
    assert info.mesh_note.endswith("has interceptionMode NONE: istio-proxy captures no traffic")
    pod = lab_pod("redirect")
    args = pod["spec"]["initContainers"][0]["args"]
    args[args.index("REDIRECT")] = "NONE"
    assert read_pod(pod).mesh is MeshMode.NO_CAPTURE and read_pod(pod).reason == "istio-init -m NONE: no capture rules"


def test_an_init_container_named_istio_proxy_is_a_sidecar_only_with_restart_policy_always() -> None:
    deployment = hello()
    spec = deployment["spec"]["template"]["spec"]
    proxy = next(c for c in spec["initContainers"] if c["name"] == "istio-proxy")
    del proxy["restartPolicy"]  # an init container that runs to completion before the app
    info = read_pod(deployment)
    assert (info.mesh, info.proxy) == (MeshMode.NO_SIDECAR, None)


def test_admin_port_dns_and_terminating() -> None:
    pod = lab_pod("redirect")
    pod["metadata"]["annotations"]["proxy.istio.io/config"] = '{"proxyAdminPort": 15099}'
    pod["metadata"]["deletionTimestamp"] = "2026-12-05T10:40:00Z"
    proxy = next(c for c in pod["spec"]["containers"] if c["name"] == "istio-proxy")
    proxy.setdefault("env", []).append({"name": "ISTIO_META_DNS_CAPTURE", "value": "true"})
    init = pod["spec"]["initContainers"][0]
    init.setdefault("env", []).append({"name": "ISTIO_META_DNS_CAPTURE", "value": "true"})
    info = read_pod(pod)
    assert info.admin_port == 15099 and info.dns_capture_requested
    assert info.config is not None and not info.config.dns_active  # nameservers come from resolv.conf
    assert info.terminating == f"pod bookinfo/{info.name} is terminating (deletionTimestamp 2026-12-05T10:40:00Z)"
    assert read_pod(lab_pod("redirect")).terminating == ""


# --- no sidecar, ambient --------------------------------------------------------------------------------


def test_no_sidecar() -> None:
    info = read_pod(without_proxy(lab_pod("redirect")))
    assert (info.mesh, info.config, info.proxy, info.release) == (MeshMode.NO_SIDECAR, None, None, None)
    assert info.mesh_note == f"pod bookinfo/{info.name} has no istio-proxy sidecar: nothing to explain"


def test_ambient_annotated_by_istio_cni() -> None:
    pod = without_proxy(
        lab_pod("redirect"),
        labels={"istio.io/dataplane-mode": "ambient"},
        annotations={"ambient.istio.io/redirection": "enabled"},
    )
    info = read_pod(pod)
    assert (info.mesh, info.notes, info.ambient_redirected) == (MeshMode.AMBIENT, (), True)
    assert info.mesh_note.endswith("is in ambient mode (ztunnel captures): no sidecar rules")


def test_ambient_enrolled_but_not_annotated_yet_is_ambient_with_a_note() -> None:
    pod = without_proxy(lab_pod("redirect"), labels={"istio.io/dataplane-mode": "ambient"})
    info = read_pod(pod)
    assert info.mesh is MeshMode.AMBIENT and not info.ambient_redirected
    assert len(info.notes) == 1 and AMBIENT_NOTE in info.notes[0] and "the pod's label" in info.notes[0]


def test_ambient_enrolled_by_the_namespace_label_and_opted_out_by_the_pod_label() -> None:
    pod = without_proxy(lab_pod("redirect"))
    ambient_ns = {"istio.io/dataplane-mode": "ambient"}
    assert read_pod(pod).mesh is MeshMode.NO_SIDECAR  # namespace not known: not enrolled
    info = read_pod(pod, namespace_labels=ambient_ns)
    assert info.mesh is MeshMode.AMBIENT and "its namespace's label" in info.notes[0]
    opted_out = without_proxy(lab_pod("redirect"), labels={"istio.io/dataplane-mode": "none"})
    assert read_pod(opted_out, namespace_labels=ambient_ns).mesh is MeshMode.NO_SIDECAR
    # a sidecar pod stays a sidecar pod in an ambient namespace
    assert read_pod(lab_pod("redirect"), namespace_labels=ambient_ns).mesh is MeshMode.SIDECAR
    # a pod read before its namespace: the same answer, without reading the pod again
    first = read_pod(pod)
    assert first.namespace_decides and not read_pod(opted_out).namespace_decides
    later = with_namespace_labels(first, ambient_ns)
    assert (later.mesh, later.notes, later.raw) == (info.mesh, info.notes, first.raw)
    assert with_namespace_labels(read_pod(opted_out), ambient_ns).mesh is MeshMode.NO_SIDECAR
    assert with_namespace_labels(first, {}) is first  # not enrolled: the same PodInfo


# --- errors, and the raw JSON behind PodInfo ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("annotation", "eighty"),  # traffic.sidecar.istio.io/excludeInboundPorts of an istio-cni pod
        ("runAsUser", "root"),
        ("containers", "not-a-list-of-objects"),
    ],
)
def test_what_podnat_cannot_read_is_one_error_type(where: str, value: str) -> None:
    pod = as_cni(lab_pod("redirect"))
    if where == "annotation":
        pod["metadata"]["annotations"]["traffic.sidecar.istio.io/excludeInboundPorts"] = value
    elif where == "runAsUser":
        next(c for c in pod["spec"]["containers"] if c["name"] == "istio-proxy")["securityContext"]["runAsUser"] = value
    else:
        pod["spec"]["containers"] = [value]
    with pytest.raises(PodSpecError, match=rf"^pod bookinfo/{pod['metadata']['name']}: "):
        read_pod(pod)
    assert issubclass(PodSpecError, ValueError)


def test_pod_info_is_a_read_only_view_of_the_raw_pod_and_is_not_read_twice() -> None:
    raw = lab_pod("redirect")
    info = read_pod(raw)
    assert info["metadata"] is raw["metadata"] and dict(info) == raw and info == raw
    assert pod_info(info) is info


# --- the use cases read each pod once, and agree on what it is ----------------------------------------------


class AmbientSource:
    """A PodSource that reads what it is handed as the real adapters do (pod_info): no node agent, so an
    ambient pod's in-pod rules cannot be read (what podnat.sources says then)."""

    def __init__(self) -> None:
        self.seen: list[PodInfo] = []

    def list_pods(self, namespace: str | None, selector: str | None = None) -> list[dict[str, Any]]:
        return []

    def get_pod(self, ref: PodRef) -> dict[str, Any]:
        raise NotImplementedError

    def read_facts(self, pod: Mapping[str, Any], source: NatSource | None, debug_container: bool) -> PodFacts:
        info = pod_info(pod)
        self.seen.append(info)
        ref = PodRef(info.namespace, info.name)
        if info.mesh is MeshMode.AMBIENT:
            return PodFacts(ref=ref, pod=info, mesh=info.mesh, notes=(info.mesh_note, AMBIENT_NOT_READ))
        table = (DATA / "default.v4.iptables-save").read_text()
        return PodFacts(ref=ref, pod=info, mesh=info.mesh, nat=NatReading(NatSource.DEBUG, "debug", v4=table))


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[Mapping[str, Any]]:
    calls: list[Mapping[str, Any]] = []
    real = pods.read_pod

    def counting(raw: Mapping[str, Any], namespace_labels: Mapping[str, str] | None = None) -> PodInfo:
        calls.append(raw)
        return real(raw, namespace_labels)

    monkeypatch.setattr(pods, "read_pod", counting)
    return calls


def test_inspect_and_verify_read_each_pod_once(reads: list[Mapping[str, Any]]) -> None:
    source = AmbientSource()
    report = inspect_pod(source, lab_pod("redirect"), NatSource.DEBUG, True)
    assert report.explanation is not None and report.mesh == "sidecar"
    assert len(reads) == 1 and source.seen == [source.seen[0]] and isinstance(source.seen[0], PodInfo)
    reads.clear()
    pods_ = [lab_pod("redirect"), lab_pod("tproxy"), without_proxy(lab_pod("nftables"))]
    result = verify_pods(AmbientSource, pods_, 2)
    assert len(result.pods) == 3 and len(reads) == 3


def test_pods_read_ahead_are_not_read_again_and_one_that_cannot_be_read_is_reported_as_before(
    reads: list[Mapping[str, Any]],
) -> None:
    """read_pods (verify reads the specs while the agents answer): verify_pods reads nothing again, and a pod
    whose spec cannot be read is passed through for verify_pods to report, the same report as without."""
    broken = lab_pod("redirect")
    broken["metadata"]["name"] = "broken"
    broken["spec"]["containers"] = "not a list"
    pods_ = [lab_pod("redirect"), lab_pod("tproxy"), broken]
    read = read_pods(pods_)
    assert [type(p) for p in read] == [PodInfo, PodInfo, dict] and read[2] is broken
    reads.clear()
    ahead = verify_pods(AmbientSource, read, 2)
    assert len(reads) == 1  # the broken one, tried again by verify_pods to report it
    as_before = verify_pods(AmbientSource, pods_, 2)
    assert [json.dumps(pod_report_data(p)) for p in ahead.pods] == [
        json.dumps(pod_report_data(p)) for p in as_before.pods
    ]
    assert ahead.pods[0].status == "error" and "broken" in str(ahead.pods[0].error)


def test_ambient_enrolled_but_not_annotated_is_ambient_to_inspect_and_verify_alike() -> None:
    pod = without_proxy(lab_pod("redirect"), labels={"istio.io/dataplane-mode": "ambient"})
    source = AmbientSource()
    inspected = inspect_pod(source, pod)
    verified = verify_pods(AmbientSource, [pod], 1).pods[0]
    assert source.seen[0].mesh is MeshMode.AMBIENT  # what the source was asked to read
    for report in (inspected, verified):
        data = pod_report_data(report)
        assert (data["pod"]["mesh"], data["context"]["mode"], data["status"]) == ("ambient", "ambient", "error")
        assert report.error == AMBIENT_NOT_READ and report.error_code == 3
        assert any(AMBIENT_NOTE in note for note in report.notes)


class Namespaces:
    """The one Cluster method NamespaceLabels uses: namespaces by name, `bookinfo` labelled ambient."""

    def __init__(self, forbidden: bool = False) -> None:
        self.forbidden = forbidden
        self.asked: list[str] = []

    def get_namespace(self, name: str) -> dict[str, Any]:
        self.asked.append(name)
        if self.forbidden:
            raise SourceError(Failure.FORBIDDEN, f"cannot get namespaces {name}")
        return {"kind": "Namespace", "metadata": {"name": name, "labels": {"istio.io/dataplane-mode": "ambient"}}}


def test_a_namespace_labelled_ambient_enrols_its_pods_in_inspect_and_verify() -> None:
    plain = without_proxy(lab_pod("redirect"))
    cluster = Namespaces()
    labels = NamespaceLabels(cluster)  # type: ignore[arg-type]
    report = inspect_pod(AmbientSource(), plain, namespace_labels=labels)
    assert report.mesh == "ambient" and any("its namespace's label" in note for note in report.notes)
    verified = verify_pods(
        AmbientSource, [plain, lab_pod("redirect"), without_proxy(plain)], 2, namespace_labels=labels
    )
    assert [p.mesh for p in verified.pods].count("ambient") == 2 and "sidecar" in [p.mesh for p in verified.pods]
    assert cluster.asked == ["bookinfo"]  # once per run, and never for the sidecar pod
    # without the right to read namespaces: the pod's own labels decide, as without the lookup
    denied = inspect_pod(AmbientSource(), plain, namespace_labels=NamespaceLabels(Namespaces(forbidden=True)))  # type: ignore[arg-type]
    assert denied.mesh == "no-sidecar" and denied.status == "skipped"
