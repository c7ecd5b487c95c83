"""PATCH pods/ephemeralcontainers: the three patch types, and the API server's validation of the result.

Pure. The Python client sends a dict as a strategic merge patch and a list as a JSON patch (RFC 6902);
`kubectl debug` sends a strategic merge patch with `$setElementOrder` directives; a JSON merge patch
replaces the whole list. Containers merge by name; once added they may be neither changed nor removed.
"""

from __future__ import annotations

import copy
import datetime
import json
import uuid
from collections.abc import Mapping
from typing import Any

from podnat.lab.apiobjects import ApiError, Cause, bad_request, conflict, invalid
from podnat.lab.state import LabContainer

STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
PATCH_TYPES = (JSON_PATCH, MERGE, "application/apply-patch+yaml", STRATEGIC)
_FORBIDDEN_FIELDS = ("ports", "livenessProbe", "readinessProbe", "startupProbe", "lifecycle", "resources")


def unsupported_media_type() -> ApiError:
    return ApiError(
        415,
        "UnsupportedMediaType",
        "the body of the request was in an unknown format - accepted media types include: " + ", ".join(PATCH_TYPES),
    )


def patched_ephemeral_containers(pod: Mapping[str, Any], content_type: str, body: Any) -> list[dict[str, Any]]:
    """The pod's spec.ephemeralContainers after the patch, validated; raises ApiError (400/409/415/422)."""
    meta = pod.get("metadata") or {}
    name = str(meta.get("name"))
    existing = list((pod.get("spec") or {}).get("ephemeralContainers") or [])
    media = content_type.split(";", maxsplit=1)[0].strip().lower()
    if media == STRATEGIC:
        if not isinstance(body, dict):
            raise bad_request("the strategic merge patch is not a JSON object")
        _check_resource_version(body, meta, name)
        new = _strategic(existing, body)
    elif media == MERGE:
        if not isinstance(body, dict):
            raise bad_request("the merge patch is not a JSON object")
        _check_resource_version(body, meta, name)
        spec = body.get("spec")
        new = existing
        if isinstance(spec, dict) and "ephemeralContainers" in spec:
            new = copy.deepcopy(spec["ephemeralContainers"] or [])
        elif spec is None and "spec" in body:
            new = []
    elif media == JSON_PATCH:
        if not isinstance(body, list):
            raise bad_request("the JSON patch is not a list of operations")
        patched = apply_json_patch(pod, body)
        new = list((patched.get("spec") or {}).get("ephemeralContainers") or [])
    else:
        raise unsupported_media_type()
    if not isinstance(new, list) or not all(isinstance(c, dict) for c in new):
        raise invalid("Pod", name, [Cause("spec.ephemeralContainers", "FieldValueInvalid", "not a list")])
    new = [defaulted(c) for c in new]
    validate(pod, existing, new)
    return new


def _check_resource_version(body: Mapping[str, Any], meta: Mapping[str, Any], name: str) -> None:
    wanted = (body.get("metadata") or {}).get("resourceVersion")
    if wanted and str(wanted) != str(meta.get("resourceVersion")):
        raise conflict("pods", name)


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


def _merge(base: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = _strip_directives(value)
    return out


def _strategic(existing: list[dict[str, Any]], body: Mapping[str, Any]) -> list[dict[str, Any]]:
    spec = body.get("spec")
    if not isinstance(spec, dict) or "ephemeralContainers" not in spec:
        return copy.deepcopy(existing)
    items = spec["ephemeralContainers"]
    if items is None:
        return []
    if not isinstance(items, list):
        raise bad_request("spec.ephemeralContainers in the patch is not a list")
    merged = copy.deepcopy(existing)
    for item in items:
        if not isinstance(item, dict):
            raise bad_request("an item of spec.ephemeralContainers in the patch is not an object")
        directive = item.get("$patch")
        at = next((i for i, c in enumerate(merged) if c.get("name") == item.get("name")), None)
        if directive == "delete":
            if at is not None:
                merged.pop(at)
        elif directive == "replace":
            return [_strip_directives(i) for i in items if i.get("$patch") != "replace"]
        elif at is None:
            merged.append(_strip_directives(item))
        else:
            merged[at] = _merge(merged[at], item)
    return merged


def defaulted(container: Mapping[str, Any]) -> dict[str, Any]:
    """The defaults the API server fills in, so that a resent container compares equal to the stored one."""
    out = dict(container)
    image = str(out.get("image") or "")
    out.setdefault("terminationMessagePath", "/dev/termination-log")
    out.setdefault("terminationMessagePolicy", "File")
    tagged = ":" in image.rsplit("/", 1)[-1] or "@" in image
    pinned = tagged and not image.endswith(":latest")
    out.setdefault("imagePullPolicy", "IfNotPresent" if pinned else "Always")
    return out


def validate(pod: Mapping[str, Any], existing: list[dict[str, Any]], new: list[dict[str, Any]]) -> None:
    spec = pod.get("spec") or {}
    name = str((pod.get("metadata") or {}).get("name"))
    causes: list[Cause] = []
    new_names = [c.get("name") for c in new]
    for old in existing:
        if old.get("name") not in new_names:
            causes.append(
                Cause(
                    "spec.ephemeralContainers",
                    "FieldValueForbidden",
                    f'existing ephemeral containers "{old.get("name")}" may not be removed',
                )
            )
    regular = [c.get("name") for c in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]]
    seen: set[str] = set()
    for index, container in enumerate(new):
        where = f"spec.ephemeralContainers[{index}]"
        cname = container.get("name")
        stored = next((c for c in existing if c.get("name") == cname), None)
        if stored is not None:
            if defaulted(stored) != container:
                causes.append(
                    Cause(where, "FieldValueForbidden", f'existing ephemeral containers "{cname}" may not be changed')
                )
            seen.add(str(cname))
            continue
        if not cname:
            causes.append(Cause(f"{where}.name", "FieldValueRequired", ""))
        elif cname in regular or cname in seen:
            causes.append(Cause(f"{where}.name", "FieldValueDuplicate", json.dumps(cname)))
        else:
            seen.add(str(cname))
        if not container.get("image"):
            causes.append(Cause(f"{where}.image", "FieldValueRequired", ""))
        target = container.get("targetContainerName")
        if target and target not in regular:
            causes.append(Cause(f"{where}.targetContainerName", "FieldValueNotFound", json.dumps(target)))
        for field in _FORBIDDEN_FIELDS:
            if container.get(field):
                causes.append(
                    Cause(f"{where}.{field}", "FieldValueForbidden", "cannot be set for an Ephemeral Container")
                )
    if causes:
        raise invalid("Pod", name, causes)


def lab_container(pod: Mapping[str, Any], container: Mapping[str, Any], target_path: list[str]) -> LabContainer:
    """How the lab runs an ephemeral container: the uid, gid and capabilities its securityContext asks
    for (root, no capabilities by default), the target container's PATH (it shares that image)."""
    pod_sc = (pod.get("spec") or {}).get("securityContext") or {}
    sc = container.get("securityContext") or {}
    uid = sc.get("runAsUser", pod_sc.get("runAsUser", 0))
    gid = sc.get("runAsGroup", pod_sc.get("runAsGroup", 0))
    caps = (sc.get("capabilities") or {}).get("add") or []
    dropped = {str(c).upper().removeprefix("CAP_") for c in (sc.get("capabilities") or {}).get("drop") or []}
    wanted = [str(c).upper().removeprefix("CAP_") for c in caps]
    return LabContainer(
        name=str(container["name"]),
        uid=int(uid),
        gid=int(gid),
        capabilities=[c for c in wanted if c not in dropped],
        path=list(target_path),
        ephemeral=True,
    )


def running_status(container: Mapping[str, Any], now: datetime.datetime) -> dict[str, Any]:
    return {
        "name": container.get("name"),
        "image": container.get("image"),
        "imageID": "",
        "containerID": f"lab://{uuid.uuid4().hex}",
        "ready": False,
        "restartCount": 0,
        "lastState": {},
        "state": {"running": {"startedAt": now.strftime("%Y-%m-%dT%H:%M:%SZ")}},
    }


# --- RFC 6902 -------------------------------------------------------------------------------------


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, tokens: list[str], path: str) -> Any:
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, list):
            if not token.isdigit() or int(token) >= len(node):
                raise _patch_failed(f"doc is missing path: {path!r}")
            node = node[int(token)]
        elif isinstance(node, dict) and token in node:
            node = node[token]
        else:
            raise _patch_failed(f"doc is missing path: {path!r}")
    return node


def _patch_failed(detail: str) -> ApiError:
    return ApiError(
        422,
        "Invalid",
        "the server rejected our request due to an error in our request",
        {"causes": [{"reason": "FieldValueInvalid", "message": detail}]},
    )


def _add(node: Any, token: str, value: Any, path: str) -> None:
    if isinstance(node, list):
        if token == "-":
            node.append(value)
        elif token.isdigit() and int(token) <= len(node):
            node.insert(int(token), value)
        else:
            raise _patch_failed(f"index out of bounds at {path!r}")
    elif isinstance(node, dict):
        node[token] = value
    else:
        raise _patch_failed(f"doc is missing path: {path!r}")


def _remove(node: Any, token: str, path: str) -> Any:
    if isinstance(node, list) and token.isdigit() and int(token) < len(node):
        return node.pop(int(token))
    if isinstance(node, dict) and token in node:
        return node.pop(token)
    raise _patch_failed(f"doc is missing path: {path!r}")


def _get(doc: Any, tokens: list[str], path: str) -> Any:
    return _parent(doc, [*tokens, ""], path)  # walks every token: the value at `path`


def apply_json_patch(doc: Mapping[str, Any], operations: list[Any]) -> dict[str, Any]:
    """add/remove/replace/move/copy/test on a copy of `doc`, as RFC 6902 says."""
    out: dict[str, Any] = copy.deepcopy(dict(doc))
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise bad_request("a JSON patch operation needs an op and a path")
        kind, path = op["op"], str(op["path"])
        tokens = _pointer(path)
        if not tokens:
            raise _patch_failed("the whole document cannot be patched")
        parent = _parent(out, tokens, path)
        if kind == "add":
            _add(parent, tokens[-1], copy.deepcopy(op.get("value")), path)
        elif kind == "remove":
            _remove(parent, tokens[-1], path)
        elif kind == "replace":
            _remove(parent, tokens[-1], path)
            _add(parent, tokens[-1], copy.deepcopy(op.get("value")), path)
        elif kind in ("move", "copy"):
            source = _pointer(str(op.get("from", "")))
            src_parent = _parent(out, source, str(op.get("from")))
            value = _remove(src_parent, source[-1], path) if kind == "move" else copy.deepcopy(_get(out, source, path))
            _add(_parent(out, tokens, path), tokens[-1], value, path)
        elif kind == "test":
            if _get(out, tokens, path) != op.get("value"):
                raise _patch_failed(f"testing value {path} failed")
        else:
            raise bad_request(f"unexpected JSON patch operation {kind!r}")
    return out
