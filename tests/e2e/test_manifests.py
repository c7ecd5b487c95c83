"""The nightly's inputs are valid without a cluster: manifests, RBAC, kind config, workflow, make targets.

Not marked e2e: this runs in every `make test`. Kubernetes objects are read with the official client's
models and written back; a field the model does not know (a typo, a wrong indent) is lost on the way
back, so the round trip must give the manifest unchanged.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, require
from kubernetes.client import ApiClient

MANIFESTS = REPO / "manifests"
BOOKINFO = MANIFESTS / "bookinfo"
ISTIO = MANIFESTS / "istio"
WORKFLOW = REPO / ".github" / "workflows" / "nightly-e2e.yml"
E2E_MK = REPO / "mk" / "e2e.mk"

SETUPS = ("redirect", "cni", "nftables", "tproxy", "native-sidecars")
# kind -> the client's model; anything else under manifests/ needs a check of its own below
MODELS = {
    ("v1", "Namespace"): "V1Namespace",
    ("v1", "Service"): "V1Service",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("apps/v1", "DaemonSet"): "V1DaemonSet",
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): "V1ClusterRole",
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): "V1ClusterRoleBinding",
    ("rbac.authorization.k8s.io/v1", "Role"): "V1Role",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "V1RoleBinding",
}
# not core Kubernetes (no client model): their own tools check them (the agent's PrometheusRule with
# promtool in its tests, kustomize files by the agent's tests)
NOT_KUBERNETES = {
    ("install.istio.io/v1alpha1", "IstioOperator"),
    ("kind.x-k8s.io/v1alpha4", "Cluster"),
    ("kustomize.config.k8s.io/v1beta1", "Kustomization"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}
BOOKINFO_WORKLOADS = {
    ("productpage", "v1"),
    ("details", "v1"),
    ("ratings", "v1"),
    ("reviews", "v1"),
    ("reviews", "v2"),
    ("reviews", "v3"),
}
BOOKINFO_SERVICES = {"productpage", "details", "ratings", "reviews"}
PINNED_IMAGE = re.compile(r"^[\w.\-/:]+(:[\w][\w.\-]{0,127}(@sha256:[0-9a-f]{64})?|@sha256:[0-9a-f]{64})$")
KIND_NODE_IMAGE = re.compile(r"^kindest/node:v\d+\.\d+\.\d+@sha256:[0-9a-f]{64}$")


def yaml_docs(path: Path) -> Iterator[dict[str, Any]]:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc is not None:
            assert isinstance(doc, dict), f"{path}: a document is not a mapping"
            yield doc


def manifest_files(under: Path) -> list[Path]:
    return sorted(p for p in under.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def round_trip(doc: dict[str, Any], model: str) -> dict[str, Any]:
    """Read `doc` into the client's model and write it back (what the API client would send)."""
    api = ApiClient()
    obj = api.deserialize(json.dumps(doc), model, "application/json")
    return api.sanitize_for_serialization(obj)


def lost_paths(original: Any, back: Any, path: str = "") -> list[str]:
    """Where `back` differs from `original`: fields the model dropped or changed."""
    if isinstance(original, dict) and isinstance(back, dict):
        out = []
        for key, value in original.items():
            out += lost_paths(value, back.get(key), f"{path}.{key}") if key in back else [f"{path}.{key}"]
        return out
    if isinstance(original, list) and isinstance(back, list) and len(original) == len(back):
        pairs = enumerate(zip(original, back, strict=True))
        return [p for i, (a, b) in pairs for p in lost_paths(a, b, f"{path}[{i}]")]
    return [] if original == back else [f"{path} ({original!r} -> {back!r})"]


def kube_objects(under: Path) -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, doc)
        for path in manifest_files(under)
        for doc in yaml_docs(path)
        if (doc.get("apiVersion"), doc.get("kind")) in MODELS
    ]


def bookinfo_objects() -> list[dict[str, Any]]:
    objects = [doc for _, doc in kube_objects(BOOKINFO)]
    require(bool(objects), f"no Kubernetes objects under {BOOKINFO} yet (Bookinfo for podnat, issue 6)")
    return objects


def test_every_manifest_is_a_kind_we_check() -> None:
    for path in manifest_files(MANIFESTS):
        for doc in yaml_docs(path):
            key = (doc.get("apiVersion"), doc.get("kind"))
            if path.name.endswith("-patch.yaml"):
                assert "kind" not in doc, f"{path}: a patch file carries no kind"
                continue
            if path.name.endswith(".rules.yaml"):  # Prometheus rules (tests/unit/test_agent_manifests.py)
                assert "kind" not in doc and "groups" in doc, f"{path}: a Prometheus rules file has groups"
                continue
            assert key in MODELS or key in NOT_KUBERNETES, f"{path}: {key} has no check in {__file__}"


def test_kubernetes_objects_survive_the_clients_models() -> None:
    objects = kube_objects(MANIFESTS)
    assert objects, "no Kubernetes objects under manifests/"
    for path, doc in objects:
        model = MODELS[(doc["apiVersion"], doc["kind"])]
        lost = lost_paths(doc, round_trip(doc, model))
        assert not lost, f"{path}: {doc['kind']} {doc['metadata'].get('name')}: not in {model}: {lost}"


def test_bookinfo_has_six_workloads_and_four_services_in_namespace_bookinfo() -> None:
    objects = bookinfo_objects()
    namespaces = [o for o in objects if o["kind"] == "Namespace"]
    assert [n["metadata"]["name"] for n in namespaces] == ["bookinfo"]
    assert namespaces[0]["metadata"].get("labels", {}).get("istio-injection") == "enabled"
    namespaced = [o for o in objects if o["kind"] != "Namespace"]
    for obj in namespaced:
        # without an explicit namespace `kubectl apply -f` would put it wherever the context points
        assert obj["metadata"].get("namespace") == "bookinfo", f"{obj['kind']} {obj['metadata']['name']}"

    deployments = [o for o in objects if o["kind"] == "Deployment"]
    workloads = {}
    for dep in deployments:
        labels = dep["spec"]["template"]["metadata"]["labels"]
        workloads[(labels.get("app"), labels.get("version"))] = dep
        assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert dep["spec"].get("replicas", 1) == 1, dep["metadata"]["name"]
    assert set(workloads) == BOOKINFO_WORKLOADS

    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    assert set(services) >= BOOKINFO_SERVICES
    for name in BOOKINFO_SERVICES:
        spec = services[name]["spec"]
        assert spec["selector"].get("app") == name
        assert 9080 in [p["port"] for p in spec["ports"]], f"Service {name} must serve 9080"


def test_bookinfo_images_are_pinned() -> None:
    for dep in (o for o in bookinfo_objects() if o["kind"] == "Deployment"):
        pod = dep["spec"]["template"]["spec"]
        for container in pod["containers"] + pod.get("initContainers", []):
            image = container["image"]
            assert PINNED_IMAGE.match(image), f"{dep['metadata']['name']}: image {image} is not pinned"
            assert not image.split("@")[0].endswith(":latest"), f"{image}: latest is not a pin"


def rbac_rules() -> dict[str, set[tuple[str, str, str]]]:
    docs = list(yaml_docs(MANIFESTS / "rbac" / "podnat-clusterrole.yaml"))
    return {
        d["metadata"]["name"]: {
            (group, resource, verb)
            for rule in d["rules"]
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for verb in rule["verbs"]
        }
        for d in docs
        if d["kind"] == "ClusterRole"
    }


def test_rbac_is_least_privilege() -> None:
    roles = rbac_rules()
    # exec is `create` for kubectl and for API servers that authorize WebSocket upgrades as create;
    # the Python client's exec is a WebSocket GET, authorized as `get` by older API servers.
    assert roles == {
        "podnat": {
            ("", "pods", "get"),
            ("", "pods", "list"),
            ("", "namespaces", "get"),  # verify -n NS: does NS exist?
            ("", "pods/log", "get"),
            ("", "pods/exec", "create"),
            ("", "pods/exec", "get"),
        },
        "podnat-debug-container": {("", "pods/ephemeralcontainers", "patch")},
    }
    for name, rules in roles.items():
        assert all("*" not in rule for rule in rules), f"{name}: wildcards are not least privilege"


def test_rbac_binding_examples_point_at_the_two_roles() -> None:
    docs = list(yaml_docs(MANIFESTS / "rbac" / "podnat-clusterrole.yaml"))
    refs = {(d["kind"], d["roleRef"]["name"]) for d in docs if d["kind"].endswith("Binding")}
    assert refs == {("ClusterRoleBinding", "podnat"), ("RoleBinding", "podnat-debug-container")}
    # the debug-container grant is namespaced: a RoleBinding, never cluster-wide
    assert not any(d["kind"] == "ClusterRoleBinding" and d["roleRef"]["name"] == "podnat-debug-container" for d in docs)


def mk_variable(name: str) -> str:
    match = re.search(rf"^{re.escape(name)}\s*[:?]?=\s*(\S+)\s*$", E2E_MK.read_text(), re.MULTILINE)
    assert match, f"{E2E_MK} does not set {name}"
    return match.group(1)


def test_kind_cluster_pins_its_node_image_and_uses_iptables_kube_proxy() -> None:
    (cluster,) = yaml_docs(MANIFESTS / "kind" / "cluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("kind.x-k8s.io/v1alpha4", "Cluster")
    assert cluster["networking"]["kubeProxyMode"] == "iptables"
    assert cluster["name"] == mk_variable("KIND_CLUSTER")
    nodes = cluster["nodes"]
    assert [n["role"] for n in nodes].count("control-plane") == 1
    assert len({n["image"] for n in nodes}) == 1, "all nodes run the same pinned image"
    assert KIND_NODE_IMAGE.match(nodes[0]["image"]), nodes[0]["image"]


def istio_operator(setup: str) -> dict[str, Any]:
    (doc,) = yaml_docs(ISTIO / f"{setup}.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("install.istio.io/v1alpha1", "IstioOperator")
    return doc["spec"]


@pytest.mark.parametrize("setup", SETUPS)
def test_each_capture_setup_has_istio_install_settings(setup: str) -> None:
    spec = istio_operator(setup)
    values = spec.get("values", {})
    native = values.get("pilot", {}).get("env", {}).get("ENABLE_NATIVE_SIDECARS")
    # Istio defaults to native sidecars on Kubernetes 1.33+: every setup says which layout it tests
    assert native == ("true" if setup == "native-sidecars" else "false")
    cni = spec.get("components", {}).get("cni", {}).get("enabled", False)
    assert cni == (setup == "cni")
    assert values.get("global", {}).get("nativeNftables", False) == (setup == "nftables")


def test_tproxy_is_a_bookinfo_annotation_overlay() -> None:
    (patch,) = yaml_docs(ISTIO / "tproxy-bookinfo-patch.yaml")
    assert list(patch) == ["spec"] and list(patch["spec"]) == ["template"], "patches the pod template only"
    template = patch["spec"]["template"]
    assert round_trip(template, "V1PodTemplateSpec") == template
    annotations = template["metadata"]["annotations"]
    assert annotations == {"sidecar.istio.io/interceptionMode": "TPROXY"}


def test_mk_setups_match_the_istio_manifests() -> None:
    listed = re.search(r"^E2E_SETUPS\s*:=\s*(.+)$", E2E_MK.read_text(), re.MULTILINE)
    assert listed and tuple(listed.group(1).split()) == SETUPS
    newest, older = (mk_variable(f"ISTIO_VERSION_{r}") for r in ("newest", "older"))
    minor = [tuple(int(x) for x in v.split(".")[:2]) for v in (newest, older)]
    assert minor[0] > minor[1], f"newest {newest} must be a later minor than older {older}"


def workflow() -> dict[Any, Any]:
    doc = yaml.safe_load(WORKFLOW.read_text())
    # YAML 1.1 reads the key `on` as True
    doc["on"] = doc.pop(True, doc.get("on"))
    return doc


def test_workflow_runs_nightly_and_on_demand() -> None:
    triggers = workflow()["on"]
    assert set(triggers) == {"schedule", "workflow_dispatch"}
    (cron,) = (entry["cron"] for entry in triggers["schedule"])
    assert len(cron.split()) == 5


def test_workflow_matrix_covers_every_capture_setup() -> None:
    job = workflow()["jobs"]["e2e"]  # the capture-setup matrix (the agent job: test_agent_manifests.py)
    assert job["strategy"]["fail-fast"] is False
    entries = {(e["setup"], e["istio"]) for e in job["strategy"]["matrix"]["include"]}
    assert entries == {
        ("redirect", "newest"),
        ("redirect", "older"),
        ("cni", "newest"),
        ("nftables", "newest"),
        ("tproxy", "newest"),
        ("native-sidecars", "newest"),
    }
    assert job["env"]["E2E_SETUP"] == "${{ matrix.setup }}"
    assert job["env"]["ISTIO_RELEASE"] == "${{ matrix.istio }}"
    assert job["env"]["CI"] == "true"
    # podnat runs as the ServiceAccount; its token stays out of the uploaded evidence
    assert not job["env"]["E2E_PODNAT_KUBECONFIG"].startswith(job["env"]["E2E_OUT"])


def test_workflow_runs_make_and_keeps_evidence_on_failure() -> None:
    job = workflow()["jobs"]["e2e"]  # the capture-setup matrix (the agent job: test_agent_manifests.py)
    steps = job["steps"]
    runs = [s.get("run", "") for s in steps]
    main = next(i for i, run in enumerate(runs) if run.strip() == "make e2e-up e2e-sa-kubeconfig e2e")
    assert "if" not in steps[main]
    dump = next(i for i, run in enumerate(runs) if run.strip() == "make e2e-dump")
    assert steps[dump]["if"] == "failure()"
    upload = next(i for i, s in enumerate(steps) if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert steps[upload]["if"] == "failure()"
    assert steps[upload]["with"]["path"].rstrip("/") == "out/e2e"
    assert main < dump < upload
    down = next(i for i, run in enumerate(runs) if run.strip() == "make e2e-down")
    assert steps[down]["if"] == "always()" and down > upload


def make_dry_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`make -n` with mk/e2e.mk included, through the top Makefile once it includes it."""
    require(shutil.which("make") is not None, "needs make")
    top = REPO / "Makefile"
    if top.is_file() and "mk/e2e.mk" in top.read_text():
        makefile = top
    else:
        makefile = tmp_path / "Makefile"
        makefile.write_text(f"include {E2E_MK}\n")
    return subprocess.run(
        ["make", "--no-print-directory", "-n", "-C", str(REPO), "-f", str(makefile), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_make_n_e2e_up_prints_the_whole_bring_up(tmp_path: Path) -> None:
    run = make_dry_run(tmp_path, "e2e-up", "TOOLS_DIR=/nonexistent/tools")
    assert run.returncode == 0, run.stderr
    out = run.stdout
    newest = mk_variable("ISTIO_VERSION_newest")
    expected_in_order = [
        "sha256sum -c",  # tools are fetched and checked first
        "create cluster --name podnat-e2e --config manifests/kind/cluster.yaml",
        f"istioctl-{newest} install --context kind-podnat-e2e -y -f manifests/istio/redirect.yaml",
        "apply -f manifests/bookinfo/",
        "rollout status",
        "?(@.metadata.deletionTimestamp)",  # old pods gone before the Ready wait
        "wait --for=condition=Ready pod --all",
        "apply -f manifests/rbac/ -f manifests/e2e/",
    ]
    positions = [out.find(text) for text in expected_in_order]
    assert all(p >= 0 for p in positions), dict(zip(expected_in_order, positions, strict=True))
    assert positions == sorted(positions), "e2e-up runs its steps in this order"
    assert "tproxy-bookinfo-patch.yaml" not in out


@pytest.mark.parametrize("setup", SETUPS)
def test_make_n_e2e_up_installs_each_setup(tmp_path: Path, setup: str) -> None:
    run = make_dry_run(tmp_path, "e2e-up", f"E2E_SETUP={setup}", "ISTIO_RELEASE=older")
    assert run.returncode == 0, run.stderr
    older = mk_variable("ISTIO_VERSION_older")
    install = f"istioctl-{older} install --context kind-podnat-e2e -y -f manifests/istio/{setup}.yaml"
    assert install in run.stdout
    assert (ISTIO / f"{setup}.yaml").is_file()
    assert ("--patch-file manifests/istio/tproxy-bookinfo-patch.yaml" in run.stdout) == (setup == "tproxy")


def test_make_rejects_an_unknown_setup(tmp_path: Path) -> None:
    run = make_dry_run(tmp_path, "e2e-up", "E2E_SETUP=ambient")
    assert run.returncode != 0
    assert "E2E_SETUP=ambient is not a capture setup" in run.stderr


def test_make_n_e2e_runs_the_suite_against_the_current_kubeconfig(tmp_path: Path) -> None:
    run = make_dry_run(tmp_path, "e2e", "e2e-down")
    assert run.returncode == 0, run.stderr
    assert re.search(r"-m pytest tests/e2e --e2e\b", run.stdout)
    # the suite uses the current kubeconfig; only podnat's own may be another (PODNAT_E2E_KUBECONFIG)
    assert not re.search(r"(?<![A-Z_])KUBECONFIG=", run.stdout.split("pytest")[0])
    assert "E2E_SETUP=redirect " in run.stdout  # the suite asserts the job's capture setup first
    assert "kind-v" in run.stdout and "delete cluster --name podnat-e2e" in run.stdout


def test_the_nightly_serviceaccount_is_bound_to_exactly_the_rbac_roles() -> None:
    docs = list(yaml_docs(MANIFESTS / "e2e" / "podnat-serviceaccount.yaml"))
    (account,) = [d for d in docs if d["kind"] == "ServiceAccount"]
    who = {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": account["metadata"]["namespace"]}
    bindings = [d for d in docs if d["kind"].endswith("Binding")]
    assert all(b["subjects"] == [who] for b in bindings)
    assert sorted(b["roleRef"]["name"] for b in bindings) == sorted(rbac_rules())
    assert all(b["roleRef"]["kind"] == "ClusterRole" for b in bindings)
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "Role")], "no role of its own: only manifests/rbac's"


def test_make_n_e2e_sa_kubeconfig_uses_a_token_of_the_serviceaccount(tmp_path: Path) -> None:
    run = make_dry_run(tmp_path, "e2e-sa-kubeconfig", "E2E_PODNAT_KUBECONFIG=out/sa.kubeconfig", "TOOLS_DIR=/t")
    assert run.returncode == 0, run.stderr
    assert "-n podnat-e2e-identity create token podnat --duration 2h" in run.stdout
    assert "--kubeconfig out/sa.kubeconfig config use-context podnat" in run.stdout


def test_make_n_e2e_dump_keeps_what_a_failed_night_needs(tmp_path: Path) -> None:
    run = make_dry_run(tmp_path, "e2e-dump", "TOOLS_DIR=/t")
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "get namespaces -l podnat-e2e=true" in out  # the scratch namespaces a failed test kept
    assert "{.spec.initContainers[*].name} {.spec.containers[*].name}" in out  # istio-init or istio-validation
    assert "logs -l k8s-app=istio-cni-node --all-containers --prefix" in out
    assert "podnat verify" in out and "verify-$ns.json" in out


def test_each_pinned_istio_release_has_its_own_checksum_pin() -> None:
    text = E2E_MK.read_text()
    for role in ("newest", "older"):
        version = mk_variable(f"ISTIO_VERSION_{role}")
        assert re.search(rf"^ISTIOCTL_SHA256_{re.escape(version)} :=[ \t]*([0-9a-f]{{64}})?[ \t]*$", text, re.M), (
            f"no ISTIOCTL_SHA256_{version} line (empty, or a sha256) in {E2E_MK}"
        )


def test_make_n_e2e_tools_sums_prints_the_lines_to_pin(tmp_path: Path) -> None:
    run = make_dry_run(tmp_path, "e2e-tools-sums", "ISTIO_RELEASE=older")
    assert run.returncode == 0, run.stderr
    older = mk_variable("ISTIO_VERSION_older")
    for line in ("KIND_SHA256 ?= ", "KUBECTL_SHA256 ?= ", f"ISTIOCTL_SHA256_{older} := "):
        assert line in run.stdout, line
    assert f"istioctl-{older}-linux-amd64.tar.gz.sha256" in run.stdout


def test_make_n_e2e_lab_asserts_the_labs_mode(tmp_path: Path) -> None:
    run = make_dry_run(tmp_path, "e2e-lab", "E2E_LAB_MODE=tproxy")
    assert run.returncode == 0, run.stderr
    assert "lab up --mode tproxy" in run.stdout and "E2E_SETUP=tproxy " in run.stdout
