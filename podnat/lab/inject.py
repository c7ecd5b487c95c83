"""The lab's pods as its API serves them: a Bookinfo Deployment's template after Istio's sidecar injection.

Pure (no I/O): `injected_pod` writes what Istio's injection template writes for each capture mode (istio-init
and its args from the annotations, istio-proxy, labels, annotations, a running status); `ambient_pod` the same
template enrolled in ambient instead. The network namespaces, rules and processes that make the pods real are
podnat/lab/build.py's.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

SUBNET = "10.99.0"  # the lab's pod network: the node (NODE_IP) and the pods, istiod and the agent in it
NODE_IP = f"{SUBNET}.1"
NODE_NAME = "podnat-lab"
NAMESPACE = "bookinfo"
PROXY_IMAGE = "docker.io/istio/proxyv2:1.30.3"
PROXY_UID = 1337


def istio_init_args(annotations: Mapping[str, str]) -> list[str]:
    """istio-init's args as Istio's injection template builds them from the pod's annotations."""
    a = annotations
    exclude_in = ",".join(
        p for p in ("15090", "15021", a.get("traffic.sidecar.istio.io/excludeInboundPorts", ""), "15020") if p
    )
    args = [
        "istio-iptables",
        "-p",
        "15001",
        "-z",
        "15006",
        "-u",
        str(PROXY_UID),
        "-m",
        a.get("sidecar.istio.io/interceptionMode", "REDIRECT"),
        "-i",
        a.get("traffic.sidecar.istio.io/includeOutboundIPRanges", "*"),
        "-x",
        a.get("traffic.sidecar.istio.io/excludeOutboundIPRanges", ""),
        "-b",
        a.get("traffic.sidecar.istio.io/includeInboundPorts", "*"),
        "-d",
        exclude_in,
    ]
    if a.get("traffic.sidecar.istio.io/excludeOutboundPorts"):
        args += ["-o", a["traffic.sidecar.istio.io/excludeOutboundPorts"]]
    if a.get("traffic.sidecar.istio.io/includeOutboundPorts"):
        args += ["-q", a["traffic.sidecar.istio.io/includeOutboundPorts"]]
    if a.get("traffic.sidecar.istio.io/excludeInterfaces"):
        args += ["-c", a["traffic.sidecar.istio.io/excludeInterfaces"]]
    return [*args, "--log_output_level=default:info"]


def ambient_pod(
    deployment: Mapping[str, Any], name: str, ip: str, template_hash: str, lab: str = "", ip6: str | None = None
) -> dict[str, Any]:
    """The Pod the API serves in ambient mode: the Deployment's template untouched (no injection), enrolled by
    its Namespace's label istio.io/dataplane-mode=ambient (the API server's Namespace objects carry it; the pod
    has no such label of its own) and the annotation istio-cni adds once it has written the pod's rules."""
    pod = injected_pod(deployment, name, ip, template_hash, "redirect", ip6, lab)
    meta, spec, status = pod["metadata"], pod["spec"], pod["status"]
    meta["labels"] = {
        k: v for k, v in meta["labels"].items() if not k.startswith(("security.istio.io/", "service.istio.io/"))
    }
    meta["annotations"] = {k: v for k, v in meta["annotations"].items() if k.startswith("kubectl.kubernetes.io/")}
    meta["annotations"]["ambient.istio.io/redirection"] = "enabled"
    spec["initContainers"] = []
    spec["containers"] = [c for c in spec["containers"] if c["name"] != "istio-proxy"]
    status["initContainerStatuses"] = []
    status["containerStatuses"] = [c for c in status["containerStatuses"] if c["name"] != "istio-proxy"]
    return pod


def injected_pod(
    deployment: Mapping[str, Any],
    name: str,
    ip: str,
    template_hash: str,
    mode: str = "redirect",
    ip6: str | None = None,
    lab: str = "",
) -> dict[str, Any]:
    """The Pod the API serves: the Deployment's template after Istio's sidecar injection, running.

    Per mode, what Istio's injection template writes differently: TPROXY (the annotation, so `-m
    TPROXY`, and istio-proxy as uid 0/gid 1337 with NET_ADMIN), nftables (`--native-nftables`),
    dual-stack and dns (proxy metadata ISTIO_DUAL_STACK / ISTIO_META_DNS_CAPTURE in the env of
    istio-init and istio-proxy)."""
    template = deployment["spec"]["template"]
    meta = template.get("metadata") or {}
    labels = {
        **(meta.get("labels") or {}),
        "pod-template-hash": template_hash,
        "security.istio.io/tlsMode": "istio",
        "service.istio.io/canonical-name": (meta.get("labels") or {}).get("app", name),
        "service.istio.io/canonical-revision": (meta.get("labels") or {}).get("version", "latest"),
    }
    annotations = dict(meta.get("annotations") or {})
    if mode == "tproxy":
        annotations["sidecar.istio.io/interceptionMode"] = "TPROXY"
    metadata_env = {"dns": {"ISTIO_META_DNS_CAPTURE": "true"}, "dual-stack": {"ISTIO_DUAL_STACK": "true"}}.get(mode, {})
    env = [{"name": k, "value": v} for k, v in metadata_env.items()]
    app_containers = [dict(c) for c in template["spec"]["containers"]]
    annotations.update(
        {
            "kubectl.kubernetes.io/default-container": app_containers[0]["name"],
            "kubectl.kubernetes.io/default-logs-container": app_containers[0]["name"],
            "sidecar.istio.io/status": json.dumps(
                {
                    "initContainers": ["istio-init"],
                    "containers": ["istio-proxy"],
                    "volumes": ["workload-socket", "istio-envoy", "istio-data", "istio-podinfo", "istio-token"],
                    "imagePullSecrets": None,
                    "revision": "default",
                }
            ),
            "prometheus.io/path": "/stats/prometheus",
            "prometheus.io/port": "15020",
            "prometheus.io/scrape": "true",
        }
    )
    init_args = istio_init_args(annotations)
    if mode == "nftables":
        init_args.insert(-1, "--native-nftables")
    init = {
        "name": "istio-init",
        "image": PROXY_IMAGE,
        "args": init_args,
        **({"env": env} if env else {}),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": False,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
    }
    proxy: dict[str, Any] = {
        "name": "istio-proxy",
        "image": PROXY_IMAGE,
        "args": ["proxy", "sidecar", "--domain", "$(POD_NAMESPACE).svc.cluster.local"],
        "ports": [{"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}, "periodSeconds": 15},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "runAsGroup": PROXY_UID,
            "runAsNonRoot": True,
            "runAsUser": PROXY_UID,
            "capabilities": {"drop": ["ALL"]},
        },
        **({"env": env} if env else {}),
    }
    if mode == "tproxy":  # transparent sockets need CAP_NET_ADMIN: as 1337 Envoy cannot start (docs/istio-capture.md)
        proxy["securityContext"] = {
            **proxy["securityContext"],
            "allowPrivilegeEscalation": True,
            "runAsNonRoot": False,
            "runAsUser": 0,
            "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]},
        }
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    deploy_name = deployment["metadata"]["name"]
    running = {"running": {"startedAt": now}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": deployment["metadata"].get("namespace", NAMESPACE),
            # One UID per lab (`lab`: its namespace prefix): labs of other roots on this machine hold pods of
            # the same names, and the agent finds a pod's processes by the UID in their cgroup.
            "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"podnat-lab/{lab}{name}")),
            "labels": labels,
            "annotations": annotations,
            "creationTimestamp": now,
            "resourceVersion": "1",
            "generateName": f"{deploy_name}-{template_hash}-",
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": f"{deploy_name}-{template_hash}",
                    "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"podnat-lab/rs/{deploy_name}")),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "nodeName": NODE_NAME,
            "initContainers": [init],
            "containers": [*app_containers, proxy],
            "restartPolicy": "Always",
            "serviceAccountName": "default",
        },
        "status": {
            "phase": "Running",
            "hostIP": NODE_IP,
            "podIP": ip,
            "podIPs": [{"ip": a} for a in (ip, ip6) if a],
            "startTime": now,
            "conditions": [
                {"type": t, "status": "True"} for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
            ],
            "initContainerStatuses": [
                {
                    "name": "istio-init",
                    "ready": True,
                    "restartCount": 0,
                    "image": PROXY_IMAGE,
                    "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
                }
            ],
            "containerStatuses": [
                {
                    "name": c["name"],
                    "ready": True,
                    "restartCount": 0,
                    "started": True,
                    "image": c["image"],
                    "state": running,
                }
                for c in [*app_containers, proxy]
            ],
        },
    }
