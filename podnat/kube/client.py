"""The one module that imports `kubernetes`: config loading and API objects, created lazily.

Offline commands never import this module's dependencies: `kubernetes` is imported inside functions.
Exec needs an ApiClient of its own per call (`kubernetes.stream.stream()` swaps `call_api` on the
client it is given), so this hands out a fresh one for each exec and one shared client for the rest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from podnat.kube import errors

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, AppsV1Api, Configuration, CoreV1Api

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
    """API objects built from one Configuration; `exec_core()` gives each exec its own ApiClient."""

    def __init__(self, configuration: Configuration, options: KubeOptions) -> None:
        from kubernetes.client import ApiClient

        self.configuration = configuration
        self.options = options
        self.api_client: ApiClient = ApiClient(configuration)
        self._core: CoreV1Api | None = None
        self._apps: AppsV1Api | None = None
        _set_websocket_timeout(options.timeout)

    @classmethod
    def connect(cls, options: KubeOptions) -> KubeClient:
        return cls(load_configuration(options), options)

    @property
    def server(self) -> str:
        return str(self.configuration.host)

    @property
    def core(self) -> CoreV1Api:
        from kubernetes.client import CoreV1Api

        if self._core is None:
            self._core = CoreV1Api(self.api_client)
        return self._core

    @property
    def apps(self) -> AppsV1Api:
        from kubernetes.client import AppsV1Api

        if self._apps is None:
            self._apps = AppsV1Api(self.api_client)
        return self._apps

    def exec_core(self) -> CoreV1Api:
        """A CoreV1Api on a fresh ApiClient, for one exec; close it with `close_exec_core`."""
        from kubernetes.client import ApiClient, CoreV1Api

        return CoreV1Api(ApiClient(self.configuration))

    @staticmethod
    def close_exec_core(api: CoreV1Api) -> None:
        api.api_client.close()

    def stream_exec(self, api: CoreV1Api, **kwargs: Any) -> Any:
        """`kubernetes.stream.stream(connect_get_namespaced_pod_exec, ...)` with `_preload_content=False`."""
        from kubernetes.stream import stream

        return stream(api.connect_get_namespaced_pod_exec, _preload_content=False, **kwargs)

    def close(self) -> None:
        self.api_client.close()


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
