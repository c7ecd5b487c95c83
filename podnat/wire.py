"""The node agent's wire format: what its `/v1/pods` carries besides the report, the facts a pod was
explained from, as JSON.

Both ends import it: the agent writes it (`agent/http.py`), the CLI's client of the agent reads it
(`kube/agentclient.py`), so it sits below both. `verify` takes the agent's report as it is where it
was made from the pod the CLI listed (`agent_report`: the same resourceVersion, the agent explained it
with the same code); otherwise, and for what needs the traces themselves (`inspect`, `--html`), the CLI
explains the facts itself (`explain_facts`, as for any other source). Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from podnat.evidence import NatSource
from podnat.facts import (
    ListenersReading,
    NatReading,
    PodFacts,
    PodRef,
    PolicyRouting,
    SocketsReading,
)
from podnat.istio.mesh import MeshMode


def facts_data(facts: PodFacts, tables: bool = True) -> dict[str, Any]:
    """`facts` as JSON. Without `tables` (verify's lean answer, for a pod whose report the CLI may take as
    it is: `may_relay`), what the CLI labels that report with: the notes and the table's source and label,
    `withheld` saying the rest was left out."""
    data: dict[str, Any] = {"mesh": facts.mesh.value, "notes": list(facts.notes)}
    if not tables:
        if facts.nat is not None:
            data["nat"] = {"source": facts.nat.source.value, "label": facts.nat.label, "counters": facts.nat.counters}
        data["withheld"] = True
        return data
    if facts.nat is not None:
        nat = facts.nat
        data["nat"] = {
            "source": nat.source.value,
            "label": nat.label,
            "v4": nat.v4,
            "v6": nat.v6,
            "nft": nat.nft,
            "counters": nat.counters,
        }
    if facts.listeners is not None:
        data["listeners"] = {"label": facts.listeners.label, "json": facts.listeners.json_text}
    if facts.routing is not None:
        r = facts.routing
        data["routing"] = {
            "label": r.label,
            "table": r.table,
            "rules_v4": r.rules_v4,
            "routes_v4": r.routes_v4,
            "rules_v6": r.rules_v6,
            "routes_v6": r.routes_v6,
            "error": r.error,
        }
    if facts.sockets is not None:
        data["sockets"] = {"label": facts.sockets.label, "ports": list(facts.sockets.ports)}
    return data


def facts_from_data(data: Mapping[str, Any], pod: Mapping[str, Any]) -> PodFacts:
    """The PodFacts a `facts_data` object describes, for `pod` (the manifest the CLI listed). Withheld
    tables (`withheld`) read as empty: such facts must be completed before anything explains them
    (PodFacts.complete, set by the CLI's client of the agent)."""
    meta = pod.get("metadata") or {}
    ref = PodRef(str(meta.get("namespace") or "default"), str(meta.get("name") or "?"))
    nat = data.get("nat")
    listeners = data.get("listeners")
    routing = data.get("routing")
    sockets = data.get("sockets")
    return PodFacts(
        ref=ref,
        pod=pod,
        nat=NatReading(
            source=NatSource(nat["source"]),
            label=str(nat["label"]),
            v4=str(nat.get("v4") or ""),
            v6=nat.get("v6"),
            nft=nat.get("nft"),
            counters=bool(nat.get("counters")),
        )
        if nat
        else None,
        listeners=ListenersReading(str(listeners["label"]), str(listeners["json"])) if listeners else None,
        routing=PolicyRouting(
            label=str(routing["label"]),
            table=int(routing["table"]),
            rules_v4=routing.get("rules_v4"),
            routes_v4=routing.get("routes_v4"),
            rules_v6=routing.get("rules_v6"),
            routes_v6=routing.get("routes_v6"),
            error=routing.get("error"),
        )
        if routing
        else None,
        notes=tuple(str(n) for n in data.get("notes") or ()),
        mesh=MeshMode(data.get("mesh", "sidecar")),
        sockets=SocketsReading(str(sockets["label"]), tuple(int(p) for p in sockets["ports"])) if sockets else None,
    )


# The fields of `inspect -o json` after the header's, for an explained pod (podnat.render.data._explained_data).
EXPLAINED_FIELDS = (
    "listeners",
    "flows",
    "shadowed",
    "findings",
    "diff",
    "policy_routing",
    "evidence",
    "probe",
    "second_family",
)
_EXPLAINED = ("ok", "drift", "broken", "unknown")


def may_relay(mesh: str | None, status: str | None) -> bool:
    """Whether a report of this mesh mode and status is one the CLI may take as it is (agent_report, and the
    header checks of usecases.relayed_report): an explained sidecar pod. Other pods it explains itself."""
    return mesh == MeshMode.SIDECAR.value and status in _EXPLAINED


def agent_report(item: Mapping[str, Any], pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """What of the agent's report of a pod the CLI can take as it is, or None when it may not.

    Only a pod it explained (status ok, drift, broken or unknown), made from the pod as the CLI listed it
    (the same `resource_version`: an older agent sends none) and from facts whose notes lead its own.
    Returns `status`, the header fields the CLI checks against its own (`pod`, `context`, `sources`),
    `notes` (those the explanation added after the facts'), and `body` (EXPLAINED_FIELDS, in order)."""
    version = str((pod.get("metadata") or {}).get("resourceVersion") or "")
    sent_pod = item.get("pod") or {}
    facts = item.get("facts") or {}
    if not version or str(sent_pod.get("resource_version") or "") != version or item.get("status") not in _EXPLAINED:
        return None
    facts_notes = list(facts.get("notes") or ())
    notes = list(item.get("notes") or ())
    if notes[: len(facts_notes)] != facts_notes:
        return None
    return {
        "status": item["status"],
        "pod": sent_pod,
        "context": item.get("context"),
        "sources": dict(item.get("sources") or {}),
        "notes": notes[len(facts_notes) :],
        "body": {key: item[key] for key in item if key in EXPLAINED_FIELDS},
    }
