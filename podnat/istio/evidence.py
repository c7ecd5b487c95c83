"""Observed evidence: do a live table's counters agree with the predicted paths? Pure.

Counters count every first packet since the rules were loaded, so a rule on a predicted path that
never counted means that path has not been taken (yet); a rule that counted but lies on no predicted
path is traffic the user did not expect.
"""

from __future__ import annotations

from dataclasses import dataclass

from podnat.istio.explain import Explanation
from podnat.netfilter.model import Ruleset


@dataclass(frozen=True, slots=True)
class FlowEvidence:
    """A flow's predicted rules with their packet counts, and whether all of them counted."""

    flow: int
    variant: str | None
    counts: tuple[tuple[str, int], ...]

    @property
    def consistent(self) -> bool:
        return all(packets > 0 for _, packets in self.counts)

    @property
    def silent(self) -> tuple[str, ...]:
        return tuple(ref for ref, packets in self.counts if packets == 0)


@dataclass(frozen=True, slots=True)
class Evidence:
    """Counters next to predictions: per flow, and the rules that counted off every predicted path."""

    flows: tuple[FlowEvidence, ...]
    unexpected: tuple[tuple[str, str, int], ...]  # (ref, rule text, packets)


def evidence(expl: Explanation, live: Ruleset) -> Evidence | None:
    """None when the table came without counters (`iptables-save` without -c, or an init log)."""
    if not live.counters:
        return None
    predicted: set[str] = set()
    flows = []
    for report in expl.flows:
        refs = report.live.rules
        predicted.update(refs)
        counts = tuple((ref, _packets(live, ref)) for ref in dict.fromkeys(refs))
        flows.append(FlowEvidence(int(report.spec.type), report.spec.variant, counts))
    unexpected = []
    for table in live.tables.values():
        for rule in table.rules():
            if rule.counters is not None and rule.counters.packets > 0 and rule.ref not in predicted:
                unexpected.append((rule.ref, rule.text, rule.counters.packets))
    return Evidence(tuple(flows), tuple(unexpected))


def _packets(live: Ruleset, ref: str) -> int:
    rule = live.rule_by_ref(ref)
    return rule.counters.packets if rule is not None and rule.counters is not None else 0
