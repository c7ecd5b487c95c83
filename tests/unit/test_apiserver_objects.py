"""The lab API server's pure parts: selectors, Status shapes, the Table, exec statuses, TLS."""

from __future__ import annotations

import datetime
import ipaddress

import pytest

from podnat.lab import apiobjects as api
from podnat.lab.apiobjects import ApiError
from podnat.selectors import FieldRequirement, LabelRequirement, selects


def pod(name: str, labels: dict[str, str], phase: str = "Running") -> dict[str, object]:
    return {
        "metadata": {"name": name, "namespace": "bookinfo", "labels": labels},
        "spec": {"nodeName": "lab"},
        "status": {"phase": phase},
    }


def test_label_selector_grammar() -> None:
    assert api.parse_label_selector("a=b,c!=d,e in (x, y),f notin (z),g,!h,i==j,k>3") == [
        LabelRequirement("a", "=", ("b",)),
        LabelRequirement("c", "!=", ("d",)),
        LabelRequirement("e", "in", ("x", "y")),
        LabelRequirement("f", "notin", ("z",)),
        LabelRequirement("g", "exists"),
        LabelRequirement("h", "!"),
        LabelRequirement("i", "=", ("j",)),
        LabelRequirement("k", "gt", ("3",)),
    ]
    assert api.parse_label_selector("") == [] and api.parse_label_selector(None) == []


@pytest.mark.parametrize(
    ("selector", "selected"),
    [
        ("app=reviews", ["reviews-v1", "reviews-v2"]),
        ("app=reviews,version!=v2", ["reviews-v1"]),
        ("version in (v2,v3)", ["reviews-v2"]),
        ("app notin (reviews)", ["details-v1"]),
        ("!version", ["details-v1"]),
        ("version", ["reviews-v1", "reviews-v2"]),
        ("app.kubernetes.io/name=x", []),
    ],
)
def test_label_selector_matches(selector: str, selected: list[str]) -> None:
    pods = [
        pod("reviews-v1", {"app": "reviews", "version": "v1"}),
        pod("reviews-v2", {"app": "reviews", "version": "v2"}),
        pod("details-v1", {"app": "details"}),
    ]
    requirements = api.parse_label_selector(selector)
    assert [p["metadata"]["name"] for p in pods if selects(p, requirements, [])] == selected  # type: ignore[index]


@pytest.mark.parametrize("selector", ["a in (x", "=b", "a=b c", "a=$"])
def test_bad_label_selector_is_a_400(selector: str) -> None:
    with pytest.raises(ApiError) as err:
        api.parse_label_selector(selector)
    assert err.value.code == 400 and err.value.message.startswith("unable to parse requirement")


def test_field_selector() -> None:
    assert api.parse_field_selector("metadata.name=x,status.phase!=Failed") == [
        FieldRequirement("metadata.name", True, "x"),
        FieldRequirement("status.phase", False, "Failed"),
    ]
    checks = api.parse_field_selector("metadata.name=x,spec.nodeName==lab")
    assert selects(pod("x", {}), [], checks) and not selects(pod("y", {}), [], checks)
    with pytest.raises(ApiError) as err:
        api.parse_field_selector("spec.containers=x")
    assert (err.value.code, err.value.message) == (400, "field label not supported: spec.containers")


def test_status_shapes() -> None:
    assert api.not_found("pods", "x").status() == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'pods "x" not found',
        "reason": "NotFound",
        "details": {"name": "x", "kind": "pods"},
        "code": 404,
    }
    denied = api.forbidden("ro", "create", "pods/exec", "bookinfo", "p")
    assert denied.message == (
        'pods "p" is forbidden: User "ro" cannot create resource "pods/exec" in API group "" in the namespace '
        '"bookinfo"'
    )
    assert (denied.code, denied.reason, denied.details) == (403, "Forbidden", {"name": "p", "kind": "pods"})
    listing = api.forbidden("ro", "list", "pods", None, None)
    assert (
        listing.message == 'pods is forbidden: User "ro" cannot list resource "pods" in API group "" at the '
        "cluster scope"
    )
    assert api.unauthorized().status()["code"] == 401
    assert api.conflict("pods", "p").status()["reason"] == "Conflict"


def test_invalid_joins_causes_as_the_api_server_does() -> None:
    one = api.invalid("Pod", "p", [api.Cause("spec.x", "FieldValueRequired", "")])
    assert one.message == 'Pod "p" is invalid: spec.x: Required value'
    two = api.invalid(
        "Pod", "p", [api.Cause("a", "FieldValueForbidden", "no"), api.Cause("b", "FieldValueNotFound", '"t"')]
    )
    assert two.message == 'Pod "p" is invalid: [a: Forbidden: no, b: Not found: "t"]'
    assert two.code == 422 and two.details is not None
    assert two.details["causes"][1] == {"reason": "FieldValueNotFound", "message": 'Not found: "t"', "field": "b"}


def test_exec_status_as_the_kubelet_sends_it() -> None:
    assert api.exec_status(0, ["true"]) == {"metadata": {}, "status": "Success"}
    failed = api.exec_status(3, ["sh", "-c", "exit 3"])
    assert failed == {
        "metadata": {},
        "status": "Failure",
        "message": "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": "3"}]},
    }


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (-5, "<invalid>"),
        (-0.5, "0s"),
        (45, "45s"),
        (119, "119s"),
        (303, "5m3s"),
        (300, "5m"),
        (720, "12m"),
        (3 * 3600 + 300, "3h5m"),
        (20 * 3600, "20h"),
        (3 * 86400 + 4 * 3600, "3d4h"),
        (40 * 86400, "40d"),
        (800 * 86400, "2y70d"),
        (9 * 365 * 86400, "9y"),
    ],
)
def test_human_duration(seconds: float, shown: str) -> None:
    assert api.human_duration(seconds) == shown


def test_pod_table_rows() -> None:
    manifest = {
        "metadata": {"name": "p", "namespace": "bookinfo", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"containers": [{"name": "app"}, {"name": "istio-proxy"}], "nodeName": "lab"},
        "status": {
            "phase": "Running",
            "podIP": "10.89.0.2",
            "containerStatuses": [
                {"name": "app", "ready": True, "restartCount": 1},
                {
                    "name": "istio-proxy",
                    "ready": False,
                    "restartCount": 2,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                },
            ],
        },
    }
    now = datetime.datetime(2026, 1, 1, 0, 5, 3, tzinfo=datetime.timezone.utc)
    table = api.pod_table([manifest], "7", "Metadata", now)
    assert table["kind"] == "Table" and table["metadata"] == {"resourceVersion": "7"}
    (row,) = table["rows"]
    assert row["cells"] == ["p", "1/2", "CrashLoopBackOff", "3", "5m3s", "10.89.0.2", "lab", "<none>", "<none>"]
    assert row["object"]["kind"] == "PartialObjectMetadata" and row["object"]["metadata"]["namespace"] == "bookinfo"
    assert [c["priority"] for c in table["columnDefinitions"]] == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert api.wants_table("application/json;as=Table;v=v1;g=meta.k8s.io,application/json")
    assert not api.wants_table("application/json")


def test_version_picks_a_websocket_kubectl() -> None:
    version = api.version_info()
    assert version["major"] == "1" and int(version["minor"]) >= 30 and version["gitVersion"].startswith("v1.")


def test_certificates_carry_what_strict_clients_need(tmp_path: object) -> None:
    from pathlib import Path

    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from podnat.lab.certs import make_tls

    files = make_tls(Path(str(tmp_path)))
    ca = x509.load_pem_x509_certificate(files.ca_file.read_bytes())
    server = x509.load_pem_x509_certificate(files.cert_file.read_bytes())
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert constraints.critical and constraints.value.ca
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    server.verify_directly_issued_by(ca)
    assert files.key_file.stat().st_mode & 0o777 == 0o600


def test_the_cli_user_gets_exactly_manifests_rbac_and_the_agent_reader_role() -> None:
    """podnat-user (group podnat-users): the ClusterRole podnat cluster-wide and the Role podnat-agent-reader
    in podnat-system, as manifests/rbac and manifests/agent/cli-rbac.yaml bind them; not the debug
    container's ClusterRole (bound only where --debug-container is needed), nothing the agent holds."""
    from podnat.lab.apiserver import cli_identity

    user = cli_identity()
    assert user.name == "podnat-user" and user.rules is not None
    allowed = [
        ("get", "", "pods", "bookinfo", "reviews-v1"),
        ("list", "", "pods", None, None),
        ("get", "", "namespaces", None, "bookinfo"),
        ("get", "", "pods/log", "bookinfo", "reviews-v1"),
        ("create", "", "pods/exec", "bookinfo", "reviews-v1"),
        ("get", "", "pods/exec", "bookinfo", "reviews-v1"),
        ("get", "", "pods/proxy", "podnat-system", "podnat-agent-x:9477"),
    ]
    refused = [
        ("patch", "", "pods/ephemeralcontainers", "bookinfo", "reviews-v1"),
        ("get", "", "pods/proxy", "bookinfo", "reviews-v1:15000"),
        ("list", "", "namespaces", None, None),
        ("watch", "", "pods", None, None),
        ("list", "", "events", "bookinfo", None),
        ("create", "events.k8s.io", "events", "bookinfo", None),
        ("delete", "", "pods", "bookinfo", "reviews-v1"),
        ("get", "", "secrets", "bookinfo", "x"),
    ]
    assert [a for a in allowed if not api.allowed(user.rules, *a)] == []
    assert [r for r in refused if api.allowed(user.rules, *r)] == []


def test_group_rules_follow_only_the_named_bindings_of_that_group() -> None:
    role = {
        "kind": "ClusterRole",
        "metadata": {"name": "r"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
    }

    def binding(kind: str, name: str, group: str, namespace: str | None = None) -> dict[str, object]:
        meta = {"name": name, **({"namespace": namespace} if namespace else {})}
        subjects = [{"kind": "Group", "name": group, "apiGroup": "rbac.authorization.k8s.io"}]
        return {"kind": kind, "metadata": meta, "roleRef": {"kind": "ClusterRole", "name": "r"}, "subjects": subjects}

    docs = [role, binding("RoleBinding", "here", "g", "ns"), binding("ClusterRoleBinding", "all", "other")]
    (rule,) = api.group_rules(docs, "g")
    assert rule.namespace == "ns" and api.allowed([rule], "get", "", "pods", "ns", "p")
    assert not api.allowed([rule], "get", "", "pods", "elsewhere", "p")
    assert api.group_rules(docs, "g", {("ClusterRoleBinding", "all")}) == ()
    assert api.group_rules(docs, "nobody") == ()


def test_the_agents_service_account_gets_exactly_the_rbac_of_its_manifests() -> None:
    """manifests/agent as kustomize applies it: the DaemonSet's ServiceAccount, the ClusterRole its
    ClusterRoleBinding names; nothing of the CLI's Role (bound to a group) or of other subjects."""
    from podnat.lab.apiserver import agent_identity

    agent = agent_identity()
    assert agent.name == "system:serviceaccount:podnat-system:podnat-agent"
    assert agent.rules is not None
    allowed = [
        ("get", "", "pods", "bookinfo", "reviews-v1"),
        ("list", "", "pods", None, None),
        ("watch", "", "pods", None, None),
        ("create", "events.k8s.io", "events", "bookinfo", None),
        ("patch", "events.k8s.io", "events", "bookinfo", "reviews-v1.1234"),
        ("create", "", "events", "bookinfo", None),
        ("get", "", "namespaces", None, "bookinfo"),  # a pod's namespace labels (ambient enrolment)
    ]
    refused = [
        ("create", "", "pods/exec", "bookinfo", "reviews-v1"),
        ("patch", "", "pods/ephemeralcontainers", "bookinfo", "reviews-v1"),
        ("get", "", "pods/proxy", "podnat-system", "podnat-agent-x"),
        ("get", "", "pods/log", "bookinfo", "reviews-v1"),
        ("patch", "", "pods", "bookinfo", "reviews-v1"),
        ("delete", "", "pods", "bookinfo", "reviews-v1"),
        ("list", "", "namespaces", None, None),
        ("list", "events.k8s.io", "events", "bookinfo", None),
        ("create", "", "pods", "bookinfo", None),
    ]
    assert [api.allowed(agent.rules, *request) for request in allowed] == [True] * len(allowed)
    assert [api.allowed(agent.rules, *request) for request in refused] == [False] * len(refused)


def test_rbac_rules_wildcards_subresources_names_and_role_bindings() -> None:
    docs = [
        {
            "kind": "ClusterRole",
            "metadata": {"name": "wide"},
            "rules": [{"apiGroups": ["*"], "resources": ["*/log"], "verbs": ["get"]}],
        },
        {
            "kind": "Role",
            "metadata": {"name": "one", "namespace": "a"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["*"], "resourceNames": ["p"]}],
        },
        {
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "wide"},
            "roleRef": {"kind": "ClusterRole", "name": "wide"},
            "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "ns"}],
        },
        {
            "kind": "RoleBinding",
            "metadata": {"name": "one", "namespace": "a"},
            "roleRef": {"kind": "Role", "name": "one"},
            "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "ns"}],
        },
        {  # another account: grants nothing to sa
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "other"},
            "roleRef": {"kind": "ClusterRole", "name": "wide"},
            "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "elsewhere"}],
        },
    ]
    rules = api.service_account_rules(docs, "ns", "sa")
    assert api.allowed(rules, "get", "", "pods/log", "b", "x")
    assert not api.allowed(rules, "get", "", "pods", "b", "x")
    assert api.allowed(rules, "delete", "", "pods", "a", "p")
    assert not api.allowed(rules, "delete", "", "pods", "a", "q")  # another name
    assert not api.allowed(rules, "delete", "", "pods", "b", "p")  # another namespace
    assert api.service_account_rules(docs, "ns", "other") == ()


def test_forbidden_names_the_api_group() -> None:
    err = api.forbidden("system:serviceaccount:s:a", "list", "events", "bookinfo", None, "events.k8s.io")
    assert err.status() == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'events.events.k8s.io is forbidden: User "system:serviceaccount:s:a" cannot list resource '
        '"events" in API group "events.k8s.io" in the namespace "bookinfo"',
        "reason": "Forbidden",
        "details": {"group": "events.k8s.io", "kind": "events"},
        "code": 403,
    }


def test_core_view_of_an_events_k8s_io_event() -> None:
    """As the API server converts it: what `kubectl describe` selects on and prints."""
    event = {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": "r.1", "namespace": "bookinfo"},
        "regarding": {"apiVersion": "v1", "kind": "Pod", "name": "r", "namespace": "bookinfo", "uid": "u"},
        "reportingController": "podnat.dev/agent",
        "reportingInstance": "podnat.dev/agent-node",
        "action": "Verify",
        "reason": "CaptureDrift",
        "type": "Warning",
        "note": "podnat: traffic capture is drift",
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "series": {"count": 2, "lastObservedTime": "2026-01-01T00:01:00.000000Z"},
    }
    core = api.core_event(event)
    assert core == {
        "kind": "Event",
        "apiVersion": "v1",
        "metadata": {"name": "r.1", "namespace": "bookinfo"},
        "involvedObject": event["regarding"],
        "reason": "CaptureDrift",
        "message": "podnat: traffic capture is drift",
        "source": {},
        "firstTimestamp": None,
        "lastTimestamp": None,
        "type": "Warning",
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingComponent": "podnat.dev/agent",
        "reportingInstance": "podnat.dev/agent-node",
        "series": event["series"],
        "action": "Verify",
    }
    from podnat.selectors import EVENT_FIELDS

    selector = api.parse_field_selector(
        "involvedObject.name=r,involvedObject.namespace=bookinfo,involvedObject.kind=Pod,involvedObject.uid=u",
        EVENT_FIELDS,
    )
    assert selects(core, [], selector, EVENT_FIELDS)
    assert not selects(core, [], api.parse_field_selector("involvedObject.uid=v", EVENT_FIELDS), EVENT_FIELDS)
    with pytest.raises(ApiError) as err:
        api.parse_field_selector("regarding.name=r", EVENT_FIELDS)
    assert (err.value.code, err.value.message) == (400, "field label not supported: regarding.name")
