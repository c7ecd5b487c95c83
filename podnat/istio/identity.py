"""Who Envoy is, as a table says it: the uid/gid that Istio's owner rules exempt from capture. Pure.

istio-iptables writes `-A ISTIO_OUTPUT -m owner --uid-owner UID -j RETURN` (and `--gid-owner GID`)
for the proxy's identity (`-u`/`-g`, 1337 by default; OpenShift and VMs use others, e.g. 201507 or
997); native nftables writes `meta skuid UID ... return` in `istio-output`. A table whose owner rules
name another uid is a table for that proxy: tracing it as uid 1337 would invent a loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import compress
from operator import attrgetter

from podnat.netfilter.model import Rule, Ruleset
from podnat.netfilter.runs import representatives

DEFAULT_PROXY_ID = 1337
_OUTPUT_CHAINS = ("ISTIO_OUTPUT", "istio-output")
_EXEMPT = ("RETURN", "ACCEPT")


@dataclass(frozen=True, slots=True)
class TableIdentity:
    """The uid and gid the table's owner rules exempt (None: it names none), and the rule that said so."""

    uid: int | None
    gid: int | None
    ref: str  # e.g. "ISTIO_OUTPUT:4" or "istio-proxy-nat/istio-output:4"


def _owner_ids(rule: Rule) -> Iterator[tuple[str, int, bool]]:
    for match in rule.matches:
        if match.module != "owner":
            continue
        for option in match.options:
            if option.name in ("uid-owner", "gid-owner") and option.args:
                low, _, high = option.args[0].partition("-")
                if low.isdigit() and (not high or high == low):
                    yield option.name[:3], int(low), option.negated


_MATCHES = attrgetter("matches")


def _output_rules(ruleset: Ruleset) -> Iterator[Rule]:
    """The output chains' rules that have a match module (owner rules among them), picked out in C:
    a pod's 100,000 excluded CIDRs have none."""
    for table in ruleset.tables.values():
        for name in _OUTPUT_CHAINS:
            chain = table.chains.get(name)
            if chain is not None:
                rules = list(representatives(chain))  # one of each run read from one template
                yield from compress(rules, map(_MATCHES, rules))


def proxy_identity_in_table(ruleset: Ruleset) -> TableIdentity | None:
    """The proxy identity Istio's owner rules exempt in ISTIO_OUTPUT (or nftables' istio-output).

    An exemption is an owner rule that lets the socket's traffic go (RETURN/ACCEPT) when it *is* that
    uid/gid. Only when there is none does a negated owner rule (`! --uid-owner N -j RETURN`, Istio's
    "not the proxy on lo") say who the proxy is: a hand-written `! --uid-owner 1000 -j RETURN` names
    the app, not Envoy, so it never wins over an exemption."""
    found: dict[str, tuple[int, str]] = {}
    negated: dict[str, tuple[int, str]] = {}
    for rule in _output_rules(ruleset):
        target = rule.target.name if rule.target else ""
        for kind, value, neg in _owner_ids(rule):
            if neg:
                if target in _EXEMPT:
                    negated.setdefault(kind, (value, rule.ref))
            elif target in _EXEMPT:
                found.setdefault(kind, (value, rule.ref))
    chosen = found or negated
    if not chosen:
        return None
    uid, gid = chosen.get("uid"), chosen.get("gid")
    ref = (uid or gid)[1]  # type: ignore[index]
    return TableIdentity(uid[0] if uid else None, gid[0] if gid else None, ref)
