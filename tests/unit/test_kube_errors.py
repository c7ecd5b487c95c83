"""kube/errors.py: every failure of the API, exec or a kubeconfig as ONE line that says what to do. Pure: the
client's exceptions are built here as the official client raises them (no server; the real client against the
lab's API server is tests/integration/test_kube_cluster_lab.py's)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from podnat.facts import Failure, SourceError
from podnat.kube.client import KubeClient, KubeOptions
from podnat.kube.errors import Action, from_status, parse_handshake, translate

NS = "bookinfo"
POD = "reviews-v1-7f9c6b-x2k4p"
SERVER = "https://api.example:6443"


def status(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code,
    }


def test_no_kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SourceError) as err:
        KubeClient.connect(KubeOptions(kubeconfig=str(tmp_path / "missing")))
    assert err.value.failure is Failure.NO_KUBECONFIG
    assert err.value.message == f"no kubeconfig: --kubeconfig {tmp_path / 'missing'} does not exist; pass " + (
        "--kubeconfig FILE or set KUBECONFIG"
    )
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(SourceError) as err:
        KubeClient.connect(KubeOptions())
    assert err.value.code == 3 and "pass --kubeconfig FILE or set KUBECONFIG" in err.value.message


def test_unknown_context(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kc"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [{"name": "c", "cluster": {"server": SERVER}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )
    with pytest.raises(SourceError) as err:
        KubeClient.connect(KubeOptions(kubeconfig=str(kubeconfig), context="prod"))
    assert err.value.failure is Failure.NO_KUBECONFIG and "kubeconfig has no context 'prod'" in err.value.message


def test_dns_failure_is_named() -> None:
    # Built by hand: resolving a name would leave this machine.
    import urllib3

    inner = urllib3.exceptions.NameResolutionError("api.example.invalid", None, OSError("Name or service not known"))
    exc = urllib3.exceptions.MaxRetryError(None, "/api/v1/pods", inner)
    err = translate(exc, Action("list", "pods"), "https://api.example.invalid:6443")
    assert err.failure is Failure.UNREACHABLE
    assert err.message.startswith("cannot resolve the API server host of https://api.example.invalid:6443")


def test_handshake_reason_is_parsed() -> None:
    body = json.dumps(status(403, "Forbidden", "nope")).encode()
    reason = f"Handshake status 403 Forbidden -+-+- {{'content-type': 'application/json'}} -+-+- {body!r}"
    code, parsed = parse_handshake(reason)
    assert code == 403 and parsed is not None and parsed["message"] == "nope"


def test_forbidden_names_verb_resource_and_what_to_grant() -> None:
    msg = 'pods is forbidden: User "u" cannot list resource "pods" in API group "" in the namespace "bookinfo"'
    err = from_status(403, status(403, "Forbidden", msg), Action("list", "pods", NS), SERVER)
    assert (err.failure, err.message) == (
        Failure.FORBIDDEN,
        "cannot list pods in namespace bookinfo: grant it (manifests/rbac/)",
    )
    msg = 'namespaces "x" is forbidden: User "u" cannot get resource "namespaces" in API group "" at the cluster scope'
    err = from_status(403, status(403, "Forbidden", msg), Action("get", "namespaces", None, "x"), SERVER)
    assert err.message == "cannot get namespaces cluster-wide: grant it (manifests/rbac/)"


def test_exec_denied_by_a_policy_and_pod_security() -> None:
    msg = 'admission webhook "validation.gatekeeper.sh" denied the request: [deny-exec] exec is not allowed'
    err = from_status(403, status(403, "Forbidden", msg), Action("create", "pods/exec", NS, POD), SERVER)
    assert err.failure is Failure.EXEC_DENIED
    assert err.message.startswith(f"a policy denied create pods/exec on pod {NS}/{POD}: ")
    assert err.message.endswith("ask for an exception or use --source init-log")
    msg = (
        f'pods "{POD}" is forbidden: violates PodSecurity "baseline:latest": non-default capabilities '
        '(container "podnat-debug" must not include "NET_ADMIN", "NET_RAW" in securityContext.capabilities.add)'
    )
    action = Action("patch", "pods/ephemeralcontainers", NS, POD)
    err = from_status(403, status(403, "Forbidden", msg), action, SERVER)
    assert err.failure is Failure.POD_SECURITY
    assert err.message.startswith("Pod Security admission (baseline:latest) rejected podnat's debug container")
    msg = (
        f'pods "{POD}" is forbidden: User "u" cannot patch resource "pods/ephemeralcontainers" in API group "" '
        'in the namespace "bookinfo"'
    )
    err = from_status(403, status(403, "Forbidden", msg), action, SERVER)
    assert err.message == (
        "cannot patch pods/ephemeralcontainers in namespace bookinfo: grant it (ClusterRole "
        "podnat-debug-container, manifests/rbac/) or read without a debug container"
    )


def test_a_namespace_that_does_not_exist() -> None:
    body = status(404, "NotFound", 'namespaces "nosuchns" not found')
    err = from_status(404, body, Action("get", "namespaces", None, "nosuchns"), SERVER)
    assert (err.failure, err.message) == (
        Failure.NOT_FOUND,
        "namespace nosuchns does not exist: check -n/--namespace (`kubectl get namespaces`)",
    )
