"""PATCH pods/ephemeralcontainers (the three patch types, validation) and how an exec is spawned."""

from __future__ import annotations

from typing import Any

import pytest

from podnat.lab import ephemeral, execution
from podnat.lab.apiobjects import ApiError
from podnat.lab.state import LabContainer

SMP, MERGE, JSON = ephemeral.STRATEGIC, ephemeral.MERGE, ephemeral.JSON_PATCH
DEBUG = {
    "name": "podnat-debug",
    "image": "docker.io/istio/proxyv2:1.30.3",
    "targetContainerName": "istio-proxy",
    "securityContext": {"runAsUser": 0, "capabilities": {"add": ["NET_ADMIN", "NET_RAW"]}},
}


def pod(*ephemerals: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "bookinfo", "resourceVersion": "5"},
        "spec": {
            "containers": [{"name": "app"}, {"name": "istio-proxy"}],
            "initContainers": [{"name": "istio-init"}],
            "ephemeralContainers": [ephemeral.defaulted(e) for e in ephemerals],
        },
    }


def names(containers: list[dict[str, Any]]) -> list[str]:
    return [str(c["name"]) for c in containers]


def test_strategic_merge_adds_by_name_and_tolerates_directives() -> None:
    body = {
        "spec": {
            "$setElementOrder/ephemeralContainers": [{"name": "a"}, {"name": "podnat-debug"}],
            "ephemeralContainers": [{**DEBUG, "$patch": "merge"}],
        }
    }
    new = ephemeral.patched_ephemeral_containers(pod({"name": "a", "image": "busybox:1.36"}), SMP, body)
    assert names(new) == ["a", "podnat-debug"]
    assert new[1]["imagePullPolicy"] == "IfNotPresent" and "$patch" not in new[1]


def test_python_v1pod_body_ignores_everything_but_ephemeral_containers() -> None:
    body = {"spec": {"containers": [], "ephemeralContainers": [DEBUG]}}
    assert names(ephemeral.patched_ephemeral_containers(pod(), SMP, body)) == ["podnat-debug"]


def test_resending_an_existing_container_is_a_no_op_but_changing_it_is_a_422() -> None:
    current = pod(DEBUG)
    assert names(ephemeral.patched_ephemeral_containers(current, SMP, {"spec": {"ephemeralContainers": [DEBUG]}})) == [
        "podnat-debug"
    ]
    changed = {**DEBUG, "image": "busybox:1.36"}
    with pytest.raises(ApiError) as err:
        ephemeral.patched_ephemeral_containers(current, SMP, {"spec": {"ephemeralContainers": [changed]}})
    assert err.value.code == 422
    assert err.value.message == (
        'Pod "p" is invalid: spec.ephemeralContainers[0]: Forbidden: existing ephemeral '
        'containers "podnat-debug" may not be changed'
    )


def test_json_patch() -> None:
    ops = [
        {"op": "add", "path": "/spec/ephemeralContainers/-", "value": DEBUG},
        {"op": "test", "path": "/metadata/name", "value": "p"},
    ]
    assert names(ephemeral.patched_ephemeral_containers(pod(), JSON, ops)) == ["podnat-debug"]
    with pytest.raises(ApiError) as err:
        ephemeral.patched_ephemeral_containers(pod(), JSON, [{"op": "test", "path": "/metadata/name", "value": "q"}])
    assert err.value.code == 422
    with pytest.raises(ApiError) as err:
        remove = [{"op": "remove", "path": "/spec/ephemeralContainers/0"}]
        ephemeral.patched_ephemeral_containers(pod(DEBUG), JSON, remove)
    assert err.value.code == 422 and "may not be removed" in err.value.message


def test_merge_patch_replaces_the_list_so_dropping_one_is_a_422() -> None:
    with pytest.raises(ApiError) as err:
        ephemeral.patched_ephemeral_containers(pod(DEBUG), MERGE, {"spec": {"ephemeralContainers": []}})
    assert err.value.reason == "Invalid" and err.value.details is not None
    assert err.value.details["causes"] == [
        {
            "reason": "FieldValueForbidden",
            "field": "spec.ephemeralContainers",
            "message": 'Forbidden: existing ephemeral containers "podnat-debug" may not be removed',
        }
    ]


@pytest.mark.parametrize(
    ("container", "message"),
    [
        ({"image": "x:1"}, "spec.ephemeralContainers[0].name: Required value"),
        ({"name": "app", "image": "x:1"}, 'spec.ephemeralContainers[0].name: Duplicate value: "app"'),
        ({"name": "d"}, "spec.ephemeralContainers[0].image: Required value"),
        (
            {"name": "d", "image": "x:1", "targetContainerName": "nope"},
            'spec.ephemeralContainers[0].targetContainerName: Not found: "nope"',
        ),
        (
            {"name": "d", "image": "x:1", "ports": [{"containerPort": 80}]},
            "spec.ephemeralContainers[0].ports: Forbidden: cannot be set for an Ephemeral Container",
        ),
    ],
)
def test_validation(container: dict[str, Any], message: str) -> None:
    with pytest.raises(ApiError) as err:
        ephemeral.patched_ephemeral_containers(pod(), SMP, {"spec": {"ephemeralContainers": [container]}})
    assert err.value.message == f'Pod "p" is invalid: {message}'


def test_conflict_and_unsupported_media_type() -> None:
    with pytest.raises(ApiError) as err:
        ephemeral.patched_ephemeral_containers(pod(), SMP, {"metadata": {"resourceVersion": "4"}, "spec": {}})
    assert err.value.code == 409
    assert ephemeral.patched_ephemeral_containers(pod(), SMP, {"metadata": {"resourceVersion": "5"}}) == []
    with pytest.raises(ApiError) as err:
        ephemeral.patched_ephemeral_containers(pod(), "application/apply-patch+yaml", {})
    assert err.value.code == 415


def test_lab_container_takes_the_identity_the_patch_asked_for() -> None:
    made = ephemeral.lab_container(pod(), DEBUG, ["/lab/bin"])
    assert made == LabContainer("podnat-debug", 0, 0, ["NET_ADMIN", "NET_RAW"], ["/lab/bin"], ephemeral=True)
    plain = ephemeral.lab_container(
        {"spec": {"securityContext": {"runAsUser": 1000, "runAsGroup": 3000}}},
        {"name": "d", "securityContext": {"capabilities": {"add": ["CAP_SYS_PTRACE"]}}},
        [],
    )
    assert (plain.uid, plain.gid, plain.capabilities) == (1000, 3000, ["SYS_PTRACE"])


def test_invocation_as_root_switches_namespace_and_identity() -> None:
    proxy = LabContainer("istio-proxy", 1337, 1337, path=["/lab/bin"])
    run = execution.invocation(["iptables-save"], "podnat-p", proxy, hostname="p", euid=0)
    assert run.argv[1:4] == ("netns", "exec", "podnat-p")
    assert run.argv[5:] == (
        "--reuid",
        "1337",
        "--regid",
        "1337",
        "--clear-groups",
        "--inh-caps=-all",
        "--ambient-caps=-all",
        "--bounding-set=-all",
        "--",
        "iptables-save",
    )
    assert run.env["PATH"] == f"/lab/bin:{execution.SYSTEM_PATH}" and run.env["HOSTNAME"] == "p"
    debug = LabContainer("d", 0, 0, ["NET_ADMIN", "cap_net_raw"])
    host = execution.invocation(["true"], "", debug, hostname="p", euid=0)
    assert "netns" not in host.argv
    assert "--bounding-set=-all,+net_admin,+net_raw" in host.argv


def test_invocation_without_root_runs_directly() -> None:
    run = execution.invocation(["sh", "-c", "true"], "", LabContainer("app", 1000, 1000), hostname="p", euid=1000)
    assert run.argv == ("sh", "-c", "true")
    assert execution.exit_code(-9) == 137 and execution.exit_code(3) == 3


def test_runtime_not_found_message() -> None:
    container = LabContainer("app", 0, 0)
    assert execution.runtime_not_found(["sh"], container) is None
    message = execution.runtime_not_found(["no-such-tool-here"], container)
    assert message is not None and 'exec: "no-such-tool-here": executable file not found in $PATH' in message
