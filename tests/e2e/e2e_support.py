"""Helpers for the end-to-end suite: run podnat, read its JSON, and drive the cluster a kubeconfig names.

The cluster is either kind + Istio (nightly) or the podnat lab (CI). The lab serves pods (list, get,
log, exec, ephemeral containers) but no apps/v1: whatever needs a Deployment asks `Cluster.has_apps`.

The JSON readers below are the suite's one statement of podnat's output contract (issues 2, 3 and 5):
  inspect -o json: {"pod": {"name", "namespace", ...}, "sources": {...}, "listeners": [...],
                    "flows": [{"type", "name", "status", "legs": [{"rules", "dst", ...}],
                               "envoy_ports", "expected", ...}], "diff": [...], "findings": [...]}
                   with counters, every leg also has "packets": {rule: packets}
  verify -o json:  {"pods": [<inspect object>, ...], ...}
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from conftest import REPO

OUT = Path(os.environ.get("PODNAT_E2E_OUT", str(REPO / "out" / "e2e")))
PODNAT = (sys.executable, "-m", "podnat")
BOOKINFO = "bookinfo"
ROLLOUT_TIMEOUT = 300.0
FLOW_TYPES = frozenset(range(1, 7))
ENVOY_PORTS = frozenset({15001, 15006, 15090})
NAT_SOURCES = frozenset({"exec", "debug", "init-log"})


# --- running podnat ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PodnatRun:
    """One podnat invocation and what it printed."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        try:
            return json.loads(self.stdout)
        except ValueError as err:
            command = " ".join(self.argv)
            raise AssertionError(f"{command} printed no JSON ({err}); stderr: {self.stderr}") from err

    def describe(self) -> str:
        return f"`{' '.join(self.argv[2:])}` exited {self.returncode}; stderr: {self.stderr.strip()[-2000:]}"


def podnat_kubeconfig() -> str | None:
    """podnat's own kubeconfig (the nightly: the ServiceAccount bound to manifests/rbac), else None."""
    return os.environ.get("PODNAT_E2E_KUBECONFIG") or None


def run_podnat(*args: str, record: str, timeout: float = 600.0, kubeconfig: str | None = None) -> PodnatRun:
    """Run podnat against the current kubeconfig, or as PODNAT_E2E_KUBECONFIG's identity when set (or
    `kubeconfig`'s); keep stdout under out/e2e/podnat/ (CI artifact)."""
    kubeconfig = kubeconfig or podnat_kubeconfig()
    argv = (*PODNAT, *args, *(("--kubeconfig", kubeconfig) if kubeconfig else ()))
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO)
    keep = OUT / "podnat"
    keep.mkdir(parents=True, exist_ok=True)
    (keep / f"{record}.out").write_text(done.stdout)
    (keep / f"{record}.stderr").write_text(f"$ {' '.join(args)}\nexit {done.returncode}\n{done.stderr}")
    return PodnatRun(argv, done.returncode, done.stdout, done.stderr)


# --- podnat's JSON ----------------------------------------------------------------------------------


def pod_reports(verify: Any) -> list[dict[str, Any]]:
    """The per-pod objects of `verify -o json`."""
    reports = verify["pods"] if isinstance(verify, Mapping) else verify
    assert isinstance(reports, list), f"verify JSON has no pod list: {str(verify)[:300]}"
    return reports


def pod_name(report: Mapping[str, Any]) -> str:
    pod = report["pod"]
    return pod["name"] if isinstance(pod, Mapping) else str(pod).split("/")[-1]


def report_for(verify: Any, name: str) -> dict[str, Any]:
    found = [r for r in pod_reports(verify) if pod_name(r) == name]
    names = [pod_name(r) for r in pod_reports(verify)]
    assert found, f"verify does not report pod {name}; it reports {names}"
    return found[0]


def flows_by_type(report: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    return {int(flow["type"]): flow for flow in report["flows"]}


def predicted_rules(flow: Mapping[str, Any]) -> list[str]:
    """Every rule the flow's connections should count, in order (legs[].rules)."""
    return [rule for leg in flow["legs"] for rule in leg["rules"]]


def listener_ports(report: Mapping[str, Any]) -> set[int]:
    listeners = report["listeners"]
    if isinstance(listeners, Mapping):  # {"source": ..., "listeners": [...]} or {"15001": ...}
        listeners = listeners.get("listeners", list(listeners))
    ports = set()
    for item in listeners:
        if isinstance(item, Mapping):
            port = item.get("port", item.get("port_value"))
            if port is None:
                port = item["local_address"]["socket_address"]["port_value"]
            ports.add(int(port))
        else:
            ports.add(int(item))
    return ports


def source_kinds(report: Mapping[str, Any]) -> dict[str, str]:
    """What each fact came from: {"nat": "exec|debug|init-log", "listeners": ..., ...}."""
    sources = report["sources"]
    if isinstance(sources, Mapping):
        items = sources.items()
    else:
        items = ((s.get("fact", s.get("name", str(i))), s) for i, s in enumerate(sources))
    return {
        str(fact): str(value.get("source", value.get("kind", value.get("label", ""))))
        if isinstance(value, Mapping)
        else str(value)
        for fact, value in items
    }


def rule_counters(report: Mapping[str, Any]) -> dict[str, int]:
    """Packets per rule ("CHAIN:N" or "TABLE/CHAIN:N") from a table read with counters: each leg's
    `packets` ({rule: packets}, podnat/render/data.py), or a top-level `counters` map."""
    found: dict[str, int] = {}
    for flow in report["flows"]:
        for leg in flow["legs"]:
            found.update({rule: int(n) for rule, n in (leg.get("packets") or {}).items() if n is not None})
    for rule, value in (report.get("counters") or {}).items():
        found[rule] = int(value["packets"] if isinstance(value, Mapping) else value)
    assert found, "inspect JSON carries no counters (a source read with -c, e.g. --debug-container)"
    return found


def diff_text(report: Mapping[str, Any]) -> str:
    return json.dumps(report.get("diff", {})) + json.dumps(report.get("findings", []))


# --- the cluster ------------------------------------------------------------------------------------


class Cluster:
    """The cluster the current kubeconfig names, through the official client."""

    def __init__(self) -> None:
        from kubernetes import client, config

        config.load_kube_config()
        self._client = client
        self.core = client.CoreV1Api()
        self.has_apps = self._serves_apps_v1()

    def _serves_apps_v1(self) -> bool:
        try:
            groups = self._client.ApisApi().get_api_versions().groups or []
        except Exception:  # the lab answers /apis with an empty list; anything else: no apps/v1 either
            return False
        return any(g.name == "apps" for g in groups)

    @property
    def apps(self) -> Any:
        return self._client.AppsV1Api()

    def reachable(self) -> str | None:
        """None when the API answers, else why not."""
        try:
            self.core.list_namespaced_pod(BOOKINFO, limit=1, _request_timeout=20)
        except Exception as err:
            return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        return None

    def pod_json(self, pod: Any) -> dict[str, Any]:
        """A pod as the API's JSON (camelCase), what podnat and capture_setup read."""
        return dict(self._client.ApiClient().sanitize_for_serialization(pod))

    def running_pods(self, namespace: str, selector: str | None = None) -> list[Any]:
        pods = self.core.list_namespaced_pod(namespace, label_selector=selector).items
        return [p for p in pods if p.status.phase == "Running" and p.metadata.deletion_timestamp is None]

    def pod_per_workload(self, namespace: str) -> dict[str, Any]:
        """One running pod for each (app, version), keyed "app-version"."""
        chosen: dict[str, Any] = {}
        for pod in sorted(self.running_pods(namespace), key=lambda p: p.metadata.name):
            labels = pod.metadata.labels or {}
            if "app" in labels:
                chosen.setdefault(f"{labels['app']}-{labels.get('version', 'v1')}", pod)
        return chosen

    def exec(self, namespace: str, pod: str, container: str, command: Sequence[str]) -> tuple[int, str, str]:
        """Run a command in a container; (exit status, stdout, stderr)."""
        from kubernetes.stream import stream

        # stream() swaps call_api on its ApiClient: give every exec a client of its own
        api = self._client.CoreV1Api(self._client.ApiClient())
        ws = stream(
            api.connect_get_namespaced_pod_exec,
            pod,
            namespace,
            container=container,
            command=list(command),
            stdout=True,
            stderr=True,
            stdin=False,
            tty=False,
            _preload_content=False,
        )
        out, err = [], []
        deadline = time.monotonic() + 300
        while ws.is_open() and time.monotonic() < deadline:
            ws.update(timeout=5)
            out.append(ws.read_stdout() if ws.peek_stdout() else "")
            err.append(ws.read_stderr() if ws.peek_stderr() else "")
        ws.close()
        return (ws.returncode if ws.returncode is not None else -1), "".join(out), "".join(err)

    def add_ephemeral_container(
        self, namespace: str, pod: Any, name: str, image: str, capabilities: Sequence[str]
    ) -> None:
        """A root ephemeral container that shares the pod's network namespace and waits for exec
        (kept if the pod already has one by that name: ephemeral containers cannot be removed)."""
        if name not in {c.name for c in pod.spec.ephemeral_containers or []}:
            self._patch_ephemeral(namespace, pod, name, image, capabilities)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            live = self.core.read_namespaced_pod(pod.metadata.name, namespace)
            for status in live.status.ephemeral_container_statuses or []:
                if status.name == name and status.state and status.state.running:
                    return
            time.sleep(2)
        raise AssertionError(f"ephemeral container {name} in {pod.metadata.name} is not running")

    def _patch_ephemeral(self, namespace: str, pod: Any, name: str, image: str, capabilities: Sequence[str]) -> None:
        body = {
            "spec": {
                "ephemeralContainers": [
                    {
                        "name": name,
                        "image": image,
                        "command": ["sleep", "3600"],
                        "securityContext": {
                            "runAsUser": 0,
                            "runAsNonRoot": False,
                            "capabilities": {"add": list(capabilities)},
                        },
                    }
                ]
            }
        }
        self.core.patch_namespaced_pod_ephemeralcontainers(pod.metadata.name, namespace, body)

    @contextmanager
    def scratch_namespace(self, purpose: str) -> Iterator[str]:
        """A fresh namespace with sidecar injection (kr8s-style isolation), deleted when the test passed.

        A failed test keeps it (label podnat-e2e=true) for `make e2e-dump`, which dumps every such
        namespace before the cluster goes; its name is written to out/e2e/kept-namespaces.txt."""
        name = f"podnat-e2e-{purpose}-{uuid.uuid4().hex[:6]}"
        self.core.create_namespace(
            {"metadata": {"name": name, "labels": {"istio-injection": "enabled", "podnat-e2e": "true"}}}
        )
        try:
            yield name
        except BaseException:
            OUT.mkdir(parents=True, exist_ok=True)
            with (OUT / "kept-namespaces.txt").open("a") as kept:
                kept.write(f"{name}\n")
            raise
        with suppress(Exception):
            self.core.delete_namespace(name, propagation_policy="Foreground")

    def clone_bookinfo(
        self, namespace: str, deployments: set[str], annotations: Mapping[str, str] | None = None
    ) -> None:
        """Bookinfo's Deployments named in `deployments`, and the Services of their apps, created in
        `namespace` (pod templates get `annotations`), rolled out."""
        manifests = bookinfo_manifests()
        chosen = [o for o in manifests if o["kind"] == "Deployment" and o["metadata"]["name"] in deployments]
        assert {o["metadata"]["name"] for o in chosen} == deployments, "not in manifests/bookinfo/"
        apps = {o["spec"]["template"]["metadata"]["labels"]["app"] for o in chosen}
        services = [o for o in manifests if o["kind"] == "Service" and o["metadata"]["name"] in apps]
        for original in services + chosen:
            obj = json.loads(json.dumps(original))
            obj["metadata"]["namespace"] = namespace
            if obj["kind"] == "Service":
                self.core.create_namespaced_service(namespace, obj)
            else:
                template = obj["spec"]["template"]["metadata"]
                template.setdefault("annotations", {}).update(annotations or {})
                self.apps.create_namespaced_deployment(namespace, obj)
        for name in sorted(deployments):
            self.wait_rollout(namespace, name)

    def annotate_template(self, namespace: str, deployment: str, annotations: Mapping[str, str]) -> None:
        patch = {"spec": {"template": {"metadata": {"annotations": dict(annotations)}}}}
        self.apps.patch_namespaced_deployment(deployment, namespace, patch)
        self.wait_rollout(namespace, deployment)

    def wait_rollout(self, namespace: str, deployment: str) -> None:
        """Like `kubectl rollout status`: the new ReplicaSet is available and the old pods are gone."""
        deadline = time.monotonic() + ROLLOUT_TIMEOUT
        while time.monotonic() < deadline:
            dep = self.apps.read_namespaced_deployment(deployment, namespace)
            st, want = dep.status, dep.spec.replicas or 0
            if (
                (st.observed_generation or 0) >= dep.metadata.generation
                and (st.updated_replicas or 0) == want
                and (st.available_replicas or 0) == want
                and (st.replicas or 0) == want
            ):
                selector = ",".join(f"{k}={v}" for k, v in dep.spec.selector.match_labels.items())
                pods = self.core.list_namespaced_pod(namespace, label_selector=selector).items
                if len(pods) == want and all(p.metadata.deletion_timestamp is None for p in pods):
                    return
            time.sleep(3)
        raise AssertionError(f"{namespace}/{deployment} did not roll out in {ROLLOUT_TIMEOUT:.0f}s")


def bookinfo_manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((REPO / "manifests" / "bookinfo").rglob("*.y*ml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def proxy_image(pod: Any) -> str:
    """The pod's istio-proxy image, whether a container or a native sidecar (init container)."""
    for container in (pod.spec.containers or []) + (pod.spec.init_containers or []):
        if container.name == "istio-proxy":
            return str(container.image)
    raise AssertionError(f"{pod.metadata.name} has no istio-proxy")


# Delete the jump into ISTIO_INBOUND from PREROUTING (nat; mangle in TPROXY mode; native nftables),
# whichever iptables build holds it, and print how to put it back: "iptables BIN TABLE POS SPEC" or
# "nft TABLE CHAIN HANDLE".
BREAK_PREROUTING_JUMP = r"""
for bin in iptables-nft iptables-legacy iptables; do
  command -v "$bin-save" >/dev/null 2>&1 || command -v "$bin" >/dev/null 2>&1 || continue
  for table in nat mangle; do
    line=$("$bin-save" -t "$table" 2>/dev/null | grep '^-A PREROUTING ' \
      | grep -n -- '-j ISTIO_INBOUND$' | head -n 1)
    [ -n "$line" ] || continue
    pos=${line%%:*}
    spec=${line#*:-A PREROUTING }
    "$bin" -t "$table" -D PREROUTING "$pos" || exit 1
    echo "iptables $bin $table $pos $spec"
    exit 0
  done
done
if command -v nft >/dev/null 2>&1; then
  handle=$(nft -a list chain inet istio-proxy-nat prerouting 2>/dev/null \
    | sed -n 's/.*jump istio-inbound.*# handle \([0-9][0-9]*\).*/\1/p' | head -n 1)
  if [ -n "$handle" ]; then
    nft delete rule inet istio-proxy-nat prerouting handle "$handle" || exit 1
    echo "nft istio-proxy-nat prerouting $handle"
    exit 0
  fi
fi
echo "no PREROUTING jump to ISTIO_INBOUND in this pod" >&2
exit 3
"""


def restore_command(printed: str) -> list[str] | None:
    """The command that puts back what BREAK_PREROUTING_JUMP removed (iptables only)."""
    match = re.match(r"iptables (\S+) (\S+) (\d+) (.+)$", printed.strip())
    if not match:
        return None
    binary, table, pos, spec = match.groups()
    return ["sh", "-c", f"{binary} -t {table} -I PREROUTING {pos} {spec}"]


# Run inside productpage's app container (argv[1]: http://REVIEWS_POD_IP:9080): calls to reviews,
# several at once so that each sidecar opens fresh upstream connections (nat counts only a
# connection's first packet; pooled ones count nothing). Prints the HTTP status of every call.
CALL_REVIEWS = r"""
import concurrent.futures, json, sys, urllib.error, urllib.request
def call(i):
    req = urllib.request.Request(sys.argv[1] + "/reviews/%d" % i, headers={"Connection": "close"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except Exception as err:
        return repr(err)
with concurrent.futures.ThreadPoolExecutor(8) as pool:
    print(json.dumps(list(pool.map(call, range(16)))))
"""
