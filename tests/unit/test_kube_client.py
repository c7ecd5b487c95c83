"""podnat's RawApi sends, call by call, the request the official client's generated method sends (both
through the real `kubernetes` ApiClient, its call_api recorded), and a live command's client loads none
of the generated API or model modules."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

pytest.importorskip("kubernetes")

from kubernetes.client import ApiClient, AppsV1Api, Configuration, CoreV1Api

from podnat.kube.client import PlainApiClient, RawApi

EXEC = {
    "command": ["sh", "-c", "iptables-save -c; echo '# done'"],
    "container": "podnat-debug",
    "stderr": True,
    "stdin": False,
    "stdout": True,
    "tty": False,
}
# (generated class, method, positional arguments, keyword arguments), as podnat's call sites pass them
# (every keyword argument any call site passes appears here at least once)
CALLS: list[tuple[type, str, tuple[Any, ...], dict[str, Any]]] = [
    (CoreV1Api, "list_pod_for_all_namespaces", (), {"label_selector": "app=reviews", "field_selector": None}),
    (
        CoreV1Api,
        "list_pod_for_all_namespaces",
        (),
        {"field_selector": "spec.nodeName=n1", "watch": True, "resource_version": "42", "timeout_seconds": 30},
    ),
    (  # the agent's watch
        CoreV1Api,
        "list_pod_for_all_namespaces",
        (),
        {
            "field_selector": "spec.nodeName=n1",
            "watch": True,
            "resource_version": None,
            "timeout_seconds": 60,
            "allow_watch_bookmarks": True,
        },
    ),
    (CoreV1Api, "list_namespaced_pod", ("bookinfo",), {"label_selector": "app in (a,b)", "limit": 5}),
    (CoreV1Api, "list_namespaced_pod", ("kube-system",), {"_continue": "tok/en", "field_selector": "x=y"}),
    (CoreV1Api, "read_namespaced_pod", ("reviews-v1-7f9c6b-x2", "bookinfo"), {}),
    (CoreV1Api, "read_namespace", ("bookinfo",), {}),
    (CoreV1Api, "read_namespaced_pod_log", ("reviews-v1-7f9c6b-x2", "bookinfo"), {"container": "istio-init"}),
    (CoreV1Api, "read_namespaced_pod_log", ("p", "ns"), {"container": "c", "tail_lines": 100}),
    (
        CoreV1Api,
        "patch_namespaced_pod_ephemeralcontainers",
        ("reviews-v1-7f9c6b-x2", "bookinfo", {"spec": {"ephemeralContainers": [{"name": "podnat-debug"}]}}),
        {},
    ),
    (CoreV1Api, "connect_get_namespaced_pod_exec", ("reviews-v1-7f9c6b-x2", "bookinfo"), EXEC),
    (AppsV1Api, "read_namespaced_deployment", ("reviews-v1", "bookinfo"), {}),
]


class _Answer:
    status = 200
    response = b'{"kind": "Pod"}'

    def read(self) -> None:
        pass


def _recorder(plain: bool = False) -> tuple[Any, list[tuple[Any, ...]]]:
    """An ApiClient (or podnat's PlainApiClient) whose call_api records the request instead of sending it."""
    configuration = Configuration(host="https://10.96.0.1:443")
    configuration.api_key = {"authorization": "Bearer t0ken"}
    api_client = PlainApiClient(configuration) if plain else ApiClient(configuration)
    sent: list[tuple[Any, ...]] = []

    def call_api(*request: Any, _request_timeout: Any = None) -> _Answer:
        sent.append((*request, _request_timeout))
        return _Answer()

    api_client.call_api = call_api  # type: ignore[method-assign]
    return api_client, sent


@pytest.mark.parametrize("plain", [False, True], ids=["ApiClient", "PlainApiClient"])
@pytest.mark.parametrize(("generated", "method", "args", "kwargs"), CALLS, ids=[c[1] for c in CALLS])
def test_raw_api_sends_what_the_generated_method_sends(
    generated: type, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], plain: bool
) -> None:
    """RawApi over the official ApiClient (exec's) or over PlainApiClient (every other call's)."""
    theirs, theirs_sent = _recorder()
    ours, ours_sent = _recorder(plain)
    timeout = (5.0, 65.0)  # (connect, read), as the agent's watch passes it
    expected = getattr(generated(theirs), method)(*args, **kwargs, _preload_content=False, _request_timeout=timeout)
    got = getattr(RawApi(ours), method)(*args, **kwargs, _preload_content=False, _request_timeout=timeout)
    assert ours_sent == theirs_sent
    assert "Bearer t0ken" in str(ours_sent)  # the configuration's authentication is applied
    assert got == expected == _Answer.response


def test_the_agents_request_is_the_same_over_plain_api_client() -> None:
    """podnat/kube/agentclient.py's pods/proxy GET: PlainApiClient serializes it as ApiClient does."""
    path = "/api/v1/namespaces/podnat-system/pods/podnat-agent-x:9477/proxy/v1/pods?facts=lean&maxAge=0"
    serialized = [
        client.param_serialize("GET", path, header_params={"Accept": "application/json"}, auth_settings=["BearerToken"])
        for client in (_recorder()[0], _recorder(plain=True)[0])
    ]
    assert serialized[0] == serialized[1]
    assert serialized[1][2]["authorization"] == "Bearer t0ken"


def test_plain_api_client_takes_the_token_from_the_refresh_hook_as_api_client_does() -> None:
    """A kubeconfig's exec credential plugin refreshes the token through Configuration.refresh_api_key_hook."""
    for plain in (False, True):
        api_client, _ = _recorder(plain)
        api_client.configuration.refresh_api_key_hook = lambda c: c.api_key.update(authorization="Bearer fr3sh")
        headers = api_client.param_serialize("GET", "/api/v1/namespaces", auth_settings=["BearerToken"])[2]
        assert headers["authorization"] == "Bearer fr3sh"


def test_plain_api_client_sends_through_the_clients_rest_layer() -> None:
    """call_api is RESTClientObject.request with ApiClient.call_api's arguments."""
    api_client, _ = _recorder(plain=True)
    del api_client.call_api  # the recorder's: the real one below
    seen: list[tuple[Any, ...]] = []
    api_client.rest_client.request = lambda *a, **k: seen.append((a, k)) or "answer"
    assert api_client.call_api("GET", "https://h/x", {"A": "b"}, None, [], _request_timeout=5) == "answer"
    assert seen == [
        (("GET", "https://h/x"), {"headers": {"A": "b"}, "body": None, "post_params": [], "_request_timeout": 5})
    ]


def test_raw_api_raises_the_clients_api_exception_for_a_status_outside_2xx() -> None:
    from kubernetes.client.exceptions import ApiException

    class Forbidden(_Answer):
        status = 403
        reason = "Forbidden"
        data = b'{"kind": "Status", "reason": "Forbidden"}'
        headers = None

    for api_class in (CoreV1Api, RawApi):
        api_client, _ = _recorder()
        api_client.call_api = lambda *a, **k: Forbidden()  # type: ignore[method-assign]
        with pytest.raises(ApiException) as raised:
            api_class(api_client).read_namespaced_pod("p", "ns", _preload_content=False)
        assert (raised.value.status, raised.value.body) == (403, Forbidden.data.decode())


def test_raw_api_refuses_what_podnat_never_asks_for() -> None:
    api_client, sent = _recorder()
    with pytest.raises(TypeError, match="_preload_content=False"):
        RawApi(api_client).read_namespaced_pod("p", "ns")
    with pytest.raises(TypeError, match="pretty"):
        RawApi(api_client).read_namespaced_pod("p", "ns", pretty="true", _preload_content=False)
    assert sent == []


def test_a_live_commands_client_loads_no_generated_api_or_model_module(tmp_path: Any) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:6443'}}]\n"
        "users: [{name: u, user: {token: t0ken}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u, namespace: bookinfo}}]\n"
    )
    code = (
        "import sys\n"
        "from podnat.kube.client import KubeClient, KubeOptions, context_namespace\n"
        f"options = KubeOptions(kubeconfig={str(kubeconfig)!r})\n"
        "client = KubeClient.connect(options)\n"
        "api = client.exec_core()\n"
        "import kubernetes.stream\n"
        "assert context_namespace(options) == 'bookinfo'\n"
        "assert client.server == 'https://127.0.0.1:6443'\n"
        "loaded = [m for m in sys.modules if m.startswith(('kubernetes.client.api.', 'kubernetes.client.models.'))]\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_every_call_site_in_podnat_passes_only_what_raw_api_takes() -> None:
    """Each `X.core.METHOD(...)`, `X.apps.METHOD(...)` and `stream_exec(...)` in podnat names a RawApi
    method and passes keyword arguments RawApi sends (RawApi refuses the others, at run time)."""
    import ast
    from pathlib import Path

    import podnat
    from podnat.kube.client import _QUERY

    allowed = {*_QUERY, "_preload_content", "_request_timeout"}
    seen: list[tuple[str, str]] = []
    for path in Path(podnat.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            target = node.func.value
            if isinstance(target, ast.Attribute) and target.attr in ("core", "apps"):
                method, keywords = node.func.attr, {k.arg for k in node.keywords if k.arg}
            elif node.func.attr == "stream_exec":
                method, keywords = "connect_get_namespaced_pod_exec", {k.arg for k in node.keywords if k.arg}
                keywords -= {"name", "namespace"}
            else:
                continue
            seen.append((path.name, method))
            assert hasattr(RawApi, method), f"{path.name}:{node.lineno}: RawApi has no {method}"
            assert keywords <= allowed, f"{path.name}:{node.lineno}: RawApi does not send {keywords - allowed}"
    assert {m for _, m in seen} >= {
        "read_namespaced_pod",
        "list_pod_for_all_namespaces",
        "connect_get_namespaced_pod_exec",
    }
