"""Kubernetes label and field selectors on pods: kubectl's `-l` grammar, and whether a pod matches.

Pure. Shared by the lab's API server (which answers a bad selector with a 400 Status, as the real one
does: `lab/apiobjects.py`) and the node agent (`/v1/pods?labelSelector=`, the node's pods it keeps).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s*\((.*)\)\s*$")
_CMP = re.compile(rf"^\s*({_KEY})\s*(==|!=|=|>|<)\s*(\S*)\s*$")
_EXISTS = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")


class SelectorError(ValueError):
    """A selector the API server would refuse; the message is the API server's own."""


@dataclass(frozen=True, slots=True)
class LabelRequirement:
    """One term of a label selector: `key op values` (op: in, notin, =, !=, exists, !, gt, lt)."""

    key: str
    op: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        if self.op in ("in", "="):
            return value in self.values
        if self.op in ("notin", "!="):
            return value not in self.values
        if self.op == "exists":
            return self.key in labels
        if self.op == "!":
            return self.key not in labels
        if value is None or not re.fullmatch(r"-?\d+", value):
            return False
        return int(value) > int(self.values[0]) if self.op == "gt" else int(value) < int(self.values[0])


def _split_top(text: str) -> list[str]:
    """Split on commas outside parentheses: `a in (x,y),b` -> [`a in (x,y)`, `b`]."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _check_value(value: str, requirement: str) -> str:
    if not re.fullmatch(_VALUE, value) or len(value) > 63:
        raise SelectorError(
            f'unable to parse requirement: values[0][{requirement}]: Invalid value: "{value}": a valid '
            "label must be an empty string or consist of alphanumeric characters, '-', '_' or '.'"
        )
    return value


def parse_label_selector(text: str | None) -> list[LabelRequirement]:
    """kubectl's -l grammar: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`, `a>1`."""
    if not text or not text.strip():
        return []
    requirements: list[LabelRequirement] = []
    for part in _split_top(text):
        if m := _SET.match(part):
            values = tuple(_check_value(v.strip(), part) for v in m.group(4).split(",") if v.strip())
            requirements.append(LabelRequirement(m.group(1), m.group(3), values))
        elif m := _CMP.match(part):
            key, op, value = m.group(1), m.group(3), m.group(4)
            if op in ("=", "==", "!="):
                kind = "!=" if op == "!=" else "="
                requirements.append(LabelRequirement(key, kind, (_check_value(value, part),)))
            elif re.fullmatch(r"-?\d+", value):
                requirements.append(LabelRequirement(key, "gt" if op == ">" else "lt", (value,)))
            else:
                raise SelectorError(
                    f"unable to parse requirement: for 'Gt', 'Lt' operators, the value "
                    f"must be an integer: {part.strip()}"
                )
        elif m := _EXISTS.match(part):
            requirements.append(LabelRequirement(m.group(2), "!" if m.group(1) else "exists"))
        else:
            raise SelectorError(
                f"unable to parse requirement: found '{part.strip()}', expected: "
                "identifier, '!', 'in', 'notin', '=', '==', '!='"
            )
    return requirements


def _field(*path: str) -> Callable[[Mapping[str, Any]], str]:
    def get(pod: Mapping[str, Any]) -> str:
        node: Any = pod
        for key in path:
            node = node.get(key) if isinstance(node, Mapping) else None
        if isinstance(node, bool):
            return str(node).lower()
        return "" if node is None else str(node)

    return get


POD_FIELDS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    name: _field(*name.split("."))
    for name in (
        "metadata.name",
        "metadata.namespace",
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    )
}
POD_FIELDS["spec.hostNetwork"] = lambda pod: str(bool((pod.get("spec") or {}).get("hostNetwork"))).lower()

# What the API server indexes for core/v1 Events (`kubectl describe` lists a pod's by involvedObject.*).
EVENT_FIELDS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    name: _field(*name.split("."))
    for name in (
        "metadata.name",
        "metadata.namespace",
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "type",
    )
}
EVENT_FIELDS["source"] = _field("source", "component")


@dataclass(frozen=True, slots=True)
class FieldRequirement:
    """One term of a field selector: `field=value` or `field!=value`."""

    field: str
    equal: bool
    value: str

    def matches(
        self, obj: Mapping[str, Any], fields: Mapping[str, Callable[[Mapping[str, Any]], str]] = POD_FIELDS
    ) -> bool:
        return (fields[self.field](obj) == self.value) == self.equal


def parse_field_selector(
    text: str | None, fields: Mapping[str, Callable[[Mapping[str, Any]], str]] = POD_FIELDS
) -> list[FieldRequirement]:
    """`metadata.name=x,status.phase!=Failed`; a field the kind (`fields`: pods by default) does not
    index is refused, as in Kubernetes."""
    if not text or not text.strip():
        return []
    checks: list[FieldRequirement] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*([^=!\s]+)\s*(==|!=|=)\s*(.*?)\s*", part)
        if not m:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{part}'")
        field, op, value = m.groups()
        if field not in fields:
            raise SelectorError(f"field label not supported: {field}")
        checks.append(FieldRequirement(field, op != "!=", value))
    return checks


def selects(
    obj: Mapping[str, Any],
    labels: Iterable[LabelRequirement],
    fields: Iterable[FieldRequirement],
    index: Mapping[str, Callable[[Mapping[str, Any]], str]] = POD_FIELDS,
) -> bool:
    """Does `obj` (a pod, unless `index` says which fields its kind has) carry every label and field term."""
    obj_labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(r.matches(obj_labels) for r in labels) and all(f.matches(obj, index) for f in fields)
