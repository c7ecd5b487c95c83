"""The one module that imports `kubernetes`: config loading and the API calls podnat makes, created lazily.

Offline commands never import this module's dependencies: `kubernetes` is imported inside functions.
Exec needs an ApiClient of its own per call (`kubernetes.stream.stream()` swaps `call_api` on the
client it is given), so this hands out a fresh one for each exec; the other calls share one
PlainApiClient.

The calls go through the official client (its Configuration from the kubeconfig, its
authentication, REST and WebSocket layers and ApiException), but not through the generated
`CoreV1Api`/`AppsV1Api` classes: their modules import about 250 pydantic model classes (0.3-0.9 s of
a one-pod `inspect`) that podnat never builds, since it reads every answer as raw JSON
(`_preload_content=False`). `RawApi` makes the same requests the generated methods make (path,
query, headers, authentication), for the few methods podnat calls, under the same names; outside
exec it makes them with PlainApiClient, ApiClient's request building without ApiClient's module
(which imports pydantic itself).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from podnat.kube import errors

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, Configuration

IN_CLUSTER_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


@dataclass(frozen=True, slots=True)
class KubeOptions:
    """kubectl-style connection flags."""

    kubeconfig: str | None = None  # --kubeconfig (default: $KUBECONFIG, ~/.kube/config, in-cluster)
    context: str | None = None  # --context
    request_timeout: float | None = None  # --request-timeout, seconds; None: the defaults below

    @property
    def timeout(self) -> float:
        return self.request_timeout if self.request_timeout else 30.0


def _default_kubeconfig() -> list[str]:
    env = os.environ.get("KUBECONFIG")
    if env:
        return [p for p in env.split(os.pathsep) if p]
    return [str(Path.home() / ".kube" / "config")]


def load_configuration(options: KubeOptions) -> Configuration:
    """A client Configuration from --kubeconfig/--context, $KUBECONFIG, ~/.kube/config or in-cluster."""
    from kubernetes import config as kube_config
    from kubernetes.client import Configuration
    from kubernetes.config.config_exception import ConfigException

    configuration = Configuration()
    paths = [options.kubeconfig] if options.kubeconfig else _default_kubeconfig()
    existing = [p for p in paths if Path(p).expanduser().is_file()]
    try:
        if existing:
            kube_config.load_kube_config(
                config_file=existing[0] if len(existing) == 1 else os.pathsep.join(existing),
                context=options.context,
                client_configuration=configuration,
            )
        elif options.kubeconfig:
            raise errors.no_kubeconfig(f"--kubeconfig {options.kubeconfig} does not exist")
        elif os.environ.get("KUBERNETES_SERVICE_HOST") and IN_CLUSTER_TOKEN.is_file():
            kube_config.load_incluster_config(client_configuration=configuration)
        else:
            raise errors.no_kubeconfig(f"none of {', '.join(paths)} exists and podnat is not in a cluster")
    except ConfigException as exc:
        raise errors.bad_kubeconfig(str(exc), options.context) from exc
    except (OSError, ValueError) as exc:  # unreadable file, YAML that is not a kubeconfig
        raise errors.bad_kubeconfig(str(exc), options.context) from exc
    # Bounded retries: a dead server should fail in seconds, not after urllib3's default 3 retries
    # with backoff per request.
    configuration.retries = 1
    return configuration


class KubeClient:
    """API calls over one Configuration; `exec_core()` gives each exec its own ApiClient."""

    def __init__(self, configuration: Configuration, options: KubeOptions) -> None:
        self.configuration = configuration
        self.options = options
        self.api_client = PlainApiClient(configuration)
        self.core = RawApi(self.api_client)  # the core/v1 calls (CoreV1Api's names)
        self.apps = RawApi(self.api_client)  # the apps/v1 calls (AppsV1Api's names)

    def full_api_client(self) -> ApiClient:
        """The official ApiClient itself, for the generated API classes (the agent's Events)."""
        from kubernetes.client import ApiClient

        return ApiClient(self.configuration)

    @classmethod
    def connect(cls, options: KubeOptions) -> KubeClient:
        return cls(load_configuration(options), options)

    @property
    def server(self) -> str:
        return str(self.configuration.host)

    def exec_core(self) -> RawApi:
        """The API calls on a fresh ApiClient, for one exec; close it with `close_exec_core`."""
        from kubernetes.client import ApiClient

        return RawApi(ApiClient(self.configuration))

    @staticmethod
    def close_exec_core(api: RawApi) -> None:
        api.api_client.close()

    def stream_exec(self, api: RawApi, **kwargs: Any) -> Any:
        """`kubernetes.stream.stream(connect_get_namespaced_pod_exec, ...)` with `_preload_content=False`."""
        from kubernetes.stream import stream

        _set_websocket_timeout(self.options.timeout)
        return stream(api.connect_get_namespaced_pod_exec, _preload_content=False, **kwargs)

    def close(self) -> None:
        self.api_client.close()


# The query parameters podnat passes, by the generated methods' argument names, in the order the
# generated methods put them in the URL (their wire names' alphabetical order).
_QUERY = {
    "allow_watch_bookmarks": "allowWatchBookmarks",
    "command": "command",
    "container": "container",
    "_continue": "continue",
    "field_selector": "fieldSelector",
    "label_selector": "labelSelector",
    "limit": "limit",
    "resource_version": "resourceVersion",
    "stderr": "stderr",
    "stdin": "stdin",
    "stdout": "stdout",
    "tail_lines": "tailLines",
    "timeout_seconds": "timeoutSeconds",
    "tty": "tty",
    "watch": "watch",
}
_JSON = "application/json"  # what the generated methods' Accept lists come to (ApiClient.select_header_accept)
# The generated PATCH methods' first content type; the REST layer sends a body that is not a list
# (not a JSON patch) as application/strategic-merge-patch+json, as kubectl does.
_PATCH = "application/json-patch+json"


class PlainApiClient:
    """The two steps of ApiClient that podnat's calls use, `param_serialize` and `call_api`, over the official
    client's Configuration (its authentication: `auth_settings()`, a token refresh hook included) and REST
    layer (RESTClientObject: TLS, client certificates, proxies, retries), without ApiClient itself: its
    module imports pydantic for the response models podnat never builds (~70 ms of every live command's
    start). The requests are ApiClient's, header for header (tests/unit/test_kube_client.py compares them).
    Exec is ApiClient's (KubeClient.exec_core): kubernetes.stream works on one."""

    def __init__(self, configuration: Configuration) -> None:
        import kubernetes
        from kubernetes.client.rest import RESTClientObject

        self.configuration = configuration
        self.rest_client = RESTClientObject(configuration)
        self.default_headers = {"User-Agent": f"OpenAPI-Generator/{kubernetes.__version__}/python"}  # ApiClient's

    def param_serialize(
        self,
        method: str,
        resource_path: str,
        path_params: dict[str, str] | None = None,
        query_params: list[tuple[str, Any]] | None = None,
        header_params: dict[str, str] | None = None,
        body: Any = None,
        post_params: list[Any] | None = None,
        files: dict[str, Any] | None = None,
        auth_settings: list[str] | None = None,
        collection_formats: dict[str, str] | None = None,
    ) -> tuple[str, str, dict[str, str], Any, list[Any] | None]:
        """(method, url, headers, body, post_params), as ApiClient.param_serialize makes them for these
        arguments (no files, form parameters, cookies or per-request authentication: podnat sends none)."""
        from urllib.parse import quote

        if files or post_params:
            raise TypeError("podnat sends no files or form parameters")
        config = self.configuration
        headers = {**(header_params or {}), **self.default_headers}
        for key, value in (path_params or {}).items():
            safe = config.safe_chars_for_path_param
            resource_path = resource_path.replace(f"{{{key}}}", quote(str(value), safe=safe))
        queries = list(query_params or [])
        settings: dict[str, Any] = dict(config.auth_settings())
        for setting in (settings[name] for name in auth_settings or [] if settings.get(name)):
            if setting["in"] == "header" and setting["type"] != "http-signature":
                headers[setting["key"]] = setting["value"]
            elif setting["in"] == "query":
                queries.append((setting["key"], setting["value"]))
            elif setting["in"] == "cookie":
                raise TypeError("a cookie authentication setting: podnat sends none")
        url = config.host + resource_path
        if queries:
            url += "?" + _url_query(queries, collection_formats or {})
        return method, url, headers, body, post_params

    def call_api(
        self,
        method: str,
        url: str,
        header_params: dict[str, str] | None = None,
        body: Any = None,
        post_params: list[Any] | None = None,
        _request_timeout: Any = None,
    ) -> Any:
        return self.rest_client.request(
            method, url, headers=header_params, body=body, post_params=post_params, _request_timeout=_request_timeout
        )

    def close(self) -> None:
        self.rest_client.pool_manager.clear()


def _url_query(params: list[tuple[str, Any]], collection_formats: dict[str, str]) -> str:
    """ApiClient.parameters_to_url_query for the values podnat passes (strings, numbers, booleans, and
    lists of strings in the `multi` format)."""
    from urllib.parse import quote

    def text(value: Any) -> str:
        return str(value).lower() if isinstance(value, bool) else str(value)

    pairs: list[tuple[str, str]] = []
    for key, value in params:
        if isinstance(value, list):
            if collection_formats.get(key) != "multi":
                raise TypeError(f"{key}: a list podnat sends only as repeated parameters")
            pairs += [(key, quote(text(v))) for v in value]
        else:
            pairs.append((key, quote(text(value))))
    return "&".join(f"{key}={value}" for key, value in pairs)


class RawApi:
    """The core/v1 and apps/v1 calls podnat makes, under the generated methods' names and arguments,
    answered raw as the generated methods answer with `_preload_content=False`: the urllib3 response
    (a WSClient for exec under `kubernetes.stream.stream`), or ApiException for a status outside 2xx."""

    def __init__(self, api_client: ApiClient | PlainApiClient) -> None:
        self.api_client = api_client

    def list_pod_for_all_namespaces(self, **kwargs: Any) -> Any:
        return self._call("GET", "/api/v1/pods", {}, kwargs)

    def list_namespaced_pod(self, namespace: str, **kwargs: Any) -> Any:
        return self._call("GET", "/api/v1/namespaces/{namespace}/pods", {"namespace": namespace}, kwargs)

    def read_namespaced_pod(self, name: str, namespace: str, **kwargs: Any) -> Any:
        path = "/api/v1/namespaces/{namespace}/pods/{name}"
        return self._call("GET", path, {"name": name, "namespace": namespace}, kwargs)

    def read_namespace(self, name: str, **kwargs: Any) -> Any:
        return self._call("GET", "/api/v1/namespaces/{name}", {"name": name}, kwargs)

    def read_namespaced_pod_log(self, name: str, namespace: str, **kwargs: Any) -> Any:
        path = "/api/v1/namespaces/{namespace}/pods/{name}/log"
        return self._call("GET", path, {"name": name, "namespace": namespace}, kwargs)

    def patch_namespaced_pod_ephemeralcontainers(self, name: str, namespace: str, body: Any, **kwargs: Any) -> Any:
        path = "/api/v1/namespaces/{namespace}/pods/{name}/ephemeralcontainers"
        return self._call("PATCH", path, {"name": name, "namespace": namespace}, kwargs, body=body, content_type=_PATCH)

    def connect_get_namespaced_pod_exec(self, name: str, namespace: str, **kwargs: Any) -> Any:
        path = "/api/v1/namespaces/{namespace}/pods/{name}/exec"
        return self._call("GET", path, {"name": name, "namespace": namespace}, kwargs, accept="*/*")

    def read_namespaced_deployment(self, name: str, namespace: str, **kwargs: Any) -> Any:
        path = "/apis/apps/v1/namespaces/{namespace}/deployments/{name}"
        return self._call("GET", path, {"name": name, "namespace": namespace}, kwargs)

    def _call(
        self,
        method: str,
        path: str,
        path_params: dict[str, str],
        kwargs: dict[str, Any],
        *,
        body: Any = None,
        accept: str = _JSON,
        content_type: str | None = None,
    ) -> Any:
        if kwargs.pop("_preload_content", True) is not False:
            raise TypeError("podnat reads answers raw: pass _preload_content=False")
        timeout = kwargs.pop("_request_timeout", None)
        unknown = sorted(set(kwargs) - set(_QUERY))
        if unknown:
            raise TypeError(f"{path}: unexpected arguments {', '.join(unknown)}")
        query = [(wire, kwargs[key]) for key, wire in _QUERY.items() if kwargs.get(key) is not None]
        headers = {"Accept": accept, **({"Content-Type": content_type} if content_type else {})}
        request = self.api_client.param_serialize(
            method,
            path,
            path_params=path_params,
            query_params=query,
            header_params=headers,
            body=body,
            post_params=[],
            files={},
            auth_settings=["BearerToken"],
            collection_formats={"command": "multi"},
        )
        method, url, headers, body, post_params = request
        response = self.api_client.call_api(method, url, headers, body, post_params, _request_timeout=timeout)
        if not 200 <= response.status <= 299:
            from kubernetes.client.exceptions import ApiException

            response.read()
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        return response.response


def _set_websocket_timeout(seconds: float) -> None:
    # kubernetes.stream ignores _request_timeout when it opens the WebSocket; websocket-client takes
    # its connect/recv timeout from this process-wide default instead.
    import websocket

    websocket.setdefaulttimeout(seconds)


def context_namespace(options: KubeOptions) -> str:
    """The namespace kubectl would use: the context's, in-cluster the pod's own, else "default"."""
    from kubernetes import config as kube_config

    paths = [options.kubeconfig] if options.kubeconfig else _default_kubeconfig()
    existing = [p for p in paths if Path(p).expanduser().is_file()]
    if existing:
        try:
            contexts, current = kube_config.list_kube_config_contexts(config_file=existing[0])
        except Exception:
            return "default"
        chosen = next((c for c in contexts if c["name"] == options.context), current) if options.context else current
        return str((chosen or {}).get("context", {}).get("namespace") or "default")
    namespace_file = IN_CLUSTER_TOKEN.with_name("namespace")
    return namespace_file.read_text().strip() if namespace_file.is_file() else "default"
