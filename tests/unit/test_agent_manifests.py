"""The agent's manifests and alerts: what the README promises about them, and `promtool` on the rules."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import require

REPO = Path(__file__).resolve().parents[2]
AGENT = REPO / "manifests" / "agent"


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_kustomizations_name_files_that_exist() -> None:
    for kustomization in (AGENT / "kustomization.yaml", AGENT / "prometheus" / "kustomization.yaml"):
        for resource in yaml.safe_load(kustomization.read_text())["resources"]:
            assert (kustomization.parent / resource).is_file(), resource


def test_the_daemonset_is_least_privilege_and_out_of_the_mesh() -> None:
    (daemonset,) = _docs(AGENT / "daemonset.yaml")
    spec = daemonset["spec"]["template"]["spec"]
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert spec["hostNetwork"] is False and spec["hostPID"] is False
    assert labels["sidecar.istio.io/inject"] == "false" and labels["istio.io/dataplane-mode"] == "none"
    (container,) = spec["containers"]
    security = container["securityContext"]
    assert security["privileged"] is False and security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["SYS_ADMIN", "SYS_PTRACE", "NET_ADMIN", "NET_RAW"]}
    # every added capability has its reason written beside it
    text = (AGENT / "daemonset.yaml").read_text()
    for cap in security["capabilities"]["add"]:
        before = text.split(f"- {cap}\n")[0].splitlines()[-2]  # [-1]: the indent before "- CAP"
        assert before.strip().startswith("#"), cap
    proc = next(v for v in spec["volumes"] if v["name"] == "host-proc")
    assert proc["hostPath"]["path"] == "/proc"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "host-proc")
    assert mount == {"name": "host-proc", "mountPath": "/host/proc", "readOnly": True}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {"NODE_NAME": "spec.nodeName", "POD_NAME": "metadata.name", "POD_IP": "status.podIP"}


def test_rbac_is_what_the_agent_and_the_cli_use() -> None:
    role, _ = _docs(AGENT / "rbac.yaml")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]},
        {"apiGroups": ["events.k8s.io", ""], "resources": ["events"], "verbs": ["create", "patch"]},
    ]
    reader, _ = _docs(AGENT / "cli-rbac.yaml")
    assert reader["kind"] == "Role" and reader["metadata"]["namespace"] == "podnat-system"
    assert {"apiGroups": [""], "resources": ["pods/proxy"], "verbs": ["get"]} in reader["rules"]


def test_the_prometheusrule_carries_the_plain_rules() -> None:
    (rule,) = _docs(AGENT / "prometheus" / "prometheusrule.yaml")
    plain = yaml.safe_load((AGENT / "prometheus" / "alerts.rules.yaml").read_text())
    assert rule["spec"]["groups"] == plain["groups"]


@pytest.mark.parametrize(
    "command",
    [
        ["check", "rules", "manifests/agent/prometheus/alerts.rules.yaml"],
        ["test", "rules", "tests/data/promtool/alerts_test.yaml"],
    ],
)
def test_promtool(command: list[str]) -> None:
    require(shutil.which("promtool") is not None, "needs promtool (make install: apt prometheus)")
    done = subprocess.run(["promtool", *command], cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_the_nightly_builds_loads_deploys_the_agent_and_runs_its_tests() -> None:
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "nightly-e2e.yml").read_text())
    job = workflow["jobs"]["agent"]
    assert job["env"]["E2E_AGENT"] == "1" and job["env"]["CI"] == "true"
    runs = [s.get("run", "").strip() for s in job["steps"]]
    assert "make e2e-up e2e-agent-up e2e" in runs
    assert any("'.[dev,agent]'" in run for run in runs)
    down = next(s for s in job["steps"] if s.get("run", "").strip() == "make e2e-down")
    assert down["if"] == "always()"
    recipe = subprocess.run(
        ["make", "-n", "--no-print-directory", "e2e-agent-up"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"},
    )
    lines = recipe.stdout
    assert "docker build -f manifests/agent/Dockerfile" in lines and "load docker-image" in lines, recipe.stderr
    assert "apply -k manifests/agent" in lines and "rollout status daemonset/podnat-agent" in lines
