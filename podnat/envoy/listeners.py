"""Envoy's `listeners?format=json` (admin API), parsed into the ports a sidecar really listens on.

Per-service listeners (`10.96.12.3_9080`, `0.0.0.0_9080`) are matched by virtualOutbound's
original-destination lookup and do not bind a port of their own (`bind_to_port: false`); the
listeners.json endpoint does not carry that flag, so podnat applies Istio's naming: the virtual
listeners and Istio's static listeners (15090 Prometheus, 15021 health) bind, `ADDR_PORT` ones do not.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

from podnat.netfilter.errors import InputError

STATIC_BINDING_PORTS = frozenset({15090, 15021})
_SERVICE_NAME = re.compile(r"^\[?[0-9a-fA-F:.]+\]?_\d+$")


class ListenersError(InputError):
    """The listeners JSON could not be read."""

    subject = "listeners JSON"


class ListenerKind(str, Enum):
    """What an Envoy listener is for, as its name and port tell."""

    VIRTUAL_OUTBOUND = "virtualOutbound"  # 15001: what the outbound capture redirects to
    VIRTUAL_INBOUND = "virtualInbound"  # 15006: what the inbound capture redirects to
    PROMETHEUS = "prometheus"  # 15090, bound
    HEALTH = "health"  # 15021, bound
    SERVICE = "service"  # ADDR_PORT: matched by virtualOutbound's original-destination lookup, binds nothing
    OTHER = "other"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Listener:
    """One Envoy listener: its name, address, port and whether it binds that port."""

    name: str
    address: str
    port: int
    binds: bool

    @property
    def kind(self) -> ListenerKind:
        if self.name == "virtualOutbound":
            return ListenerKind.VIRTUAL_OUTBOUND
        if self.name == "virtualInbound":
            return ListenerKind.VIRTUAL_INBOUND
        if self.port == 15090 and self.binds:
            return ListenerKind.PROMETHEUS
        if self.port == 15021 and self.binds:
            return ListenerKind.HEALTH
        return ListenerKind.SERVICE if not self.binds else ListenerKind.OTHER


def istio_default_listeners(outbound_port: int = 15001, inbound_port: int = 15006) -> tuple[Listener, ...]:
    """The listeners every Istio sidecar has (what `--listeners` defaults to)."""
    return (
        Listener("virtualOutbound", "0.0.0.0", outbound_port, True),
        Listener("virtualInbound", "0.0.0.0", inbound_port, True),
        Listener("0.0.0.0_15090", "0.0.0.0", 15090, True),
        Listener("0.0.0.0_15021", "0.0.0.0", 15021, True),
    )


def parse_listeners(text: str) -> tuple[Listener, ...]:
    """Parse `listeners?format=json` output (`{"listener_statuses": [...]}`)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ListenersError(exc.lineno, None, exc.msg) from None
    if not isinstance(data, dict) or not isinstance(data.get("listener_statuses", []), list):
        raise ListenersError(None, None, "expected an object with listener_statuses")
    return tuple(_listener(entry) for entry in data.get("listener_statuses") or [])


def _listener(entry: Any) -> Listener:
    if not isinstance(entry, dict) or "name" not in entry:
        raise ListenersError(None, None, f"a listener without a name: {str(entry)[:80]}")
    name = str(entry["name"])
    socket = (entry.get("local_address") or {}).get("socket_address") or {}
    address = str(socket.get("address", "0.0.0.0"))
    try:
        port = int(socket.get("port_value", 0))
    except (TypeError, ValueError):
        raise ListenersError(None, None, f"listener {name} has a bad port") from None
    binds = name in ("virtualOutbound", "virtualInbound") or not _SERVICE_NAME.match(name)
    if _SERVICE_NAME.match(name) and port in STATIC_BINDING_PORTS and address in ("0.0.0.0", "::"):
        binds = True
    return Listener(name, address, port, binds)
