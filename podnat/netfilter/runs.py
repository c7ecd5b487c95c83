"""Runs of rules that differ only by one address, so a packet finds its first match by prefix lookup.

A pod with a long `excludeOutboundIPRanges` has thousands of consecutive rules such as
`-A ISTIO_OUTPUT -d 100.64.0.4/30 -j RETURN`: same conditions, same target, one network each. In
such a run every rule's other conditions give the same answer for a packet, so the first rule of the
run that matches is the first rule whose network holds the packet's address, from where the walk
is. That is looked up per prefix length in a dict, instead of testing every rule: the traversal
stays first-match exact and counts the same rules (only the one that matches). Pure; a run index is
derived from a chain's rules and kept on the chain on first use.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

from podnat.netfilter.addresses import WIDTH
from podnat.netfilter.alloc import collector_paused
from podnat.netfilter.matches import Result, rest_matches
from podnat.netfilter.model import Chain, Cond, Rule
from podnat.netfilter.packet import Packet

MIN_RUN = 8  # shorter runs are scanned: a lookup costs about as much as testing a few rules

RunIndex = tuple["AddressRun | None", ...]  # per rule of a chain, the run it is in; () when none


@dataclass(frozen=True, slots=True)
class PrefixTable:
    """The networks of one IP version and prefix length in a run, keyed by `network >> shift`."""

    version: int
    shift: int  # host bits: 32 or 128 minus the prefix length
    first: dict[int, int]  # key -> the first position (0-based) in the chain that holds the network
    later: dict[int, list[int]]  # key -> the later positions, ascending, for networks listed again

    def at_or_after(self, key: int, start: int) -> int | None:
        """The first position at or after `start` that holds the network `key`."""
        position = self.first.get(key)
        if position is None or position >= start:
            return position
        positions = self.later.get(key, [])
        k = bisect_left(positions, start)
        return positions[k] if k < len(positions) else None


@dataclass(frozen=True, slots=True)
class AddressRun:
    """Rules `start`..`stop - 1` of a chain: identical but for one non-negated address (`field`)."""

    start: int
    stop: int
    field: str  # "source" | "destination"
    tables: tuple[PrefixTable, ...]

    def first_match(self, rules: tuple[Rule, ...], packet: Packet, hook: str, start: int) -> tuple[int, Result] | None:
        """The first rule at or after `start` that does not fail for `packet` (0-based), with its result."""
        rest = rest_matches(rules[start], packet, hook)
        if rest is False:
            return None
        address = packet.src if self.field == "source" else packet.dst
        version, value = address.version, int(address)
        found = [p for t in self.tables if t.version == version
                 and (p := t.at_or_after(value >> t.shift, start)) is not None]
        return (min(found), rest) if found else None


def chain_runs(chain: Chain) -> RunIndex:
    """The address runs of `chain`, per rule, found on first use and kept on the chain."""
    runs = chain._runs
    if runs is None:
        with collector_paused():
            runs = find_runs(chain.rules)
        object.__setattr__(chain, "_runs", runs)  # a cache of a pure function of the frozen rules
    return runs


def find_runs(rules: tuple[Rule, ...], min_run: int = MIN_RUN) -> RunIndex:
    """Every run of at least `min_run` rules, as the run each rule is in (() when there is none)."""
    if len(rules) < min_run:
        return ()
    at: list[AddressRun | None] = [None] * len(rules)
    start = 0
    while start < len(rules):
        first = rules[start]
        field = _address_field(first)
        stop = start + 1
        if field is not None:
            while stop < len(rules) and _address_field(rules[stop]) == field and _same_rest(first, rules[stop]):
                stop += 1
            if stop - start >= min_run:
                at[start:stop] = [_build(rules, start, stop, field)] * (stop - start)
        start = stop
    return tuple(at) if any(run is not None for run in at) else ()


def _address_field(rule: Rule) -> str | None:
    """The one address a rule tests, when it can be looked up: given, not negated, read."""
    if rule.destination is None and _indexable(rule.source):
        return "source"
    if rule.source is None and _indexable(rule.destination):
        return "destination"
    return None


def _indexable(cond: Cond | None) -> bool:
    return cond is not None and not cond.negated and bool(cond.networks)


def _same_rest(a: Rule, b: Rule) -> bool:
    """Everything but the addresses is the same (rest_matches gives both the same answer). Rules read
    from one template share these objects, hence `is` first."""
    return ((a.protocol is b.protocol or a.protocol == b.protocol)
            and (a.in_iface is b.in_iface or a.in_iface == b.in_iface)
            and (a.out_iface is b.out_iface or a.out_iface == b.out_iface)
            and a.fragment == b.fragment
            and (a.matches is b.matches or a.matches == b.matches)
            and (a.target is b.target or a.target == b.target))


def _build(rules: tuple[Rule, ...], start: int, stop: int, field: str) -> AddressRun:
    tables: dict[tuple[int, int], PrefixTable] = {}
    for position in range(start, stop):
        for version, length, network in getattr(rules[position], field).networks:
            shift = WIDTH[version] - length
            table = tables.get((version, shift))
            if table is None:
                table = tables[(version, shift)] = PrefixTable(version, shift, {}, {})
            key = network >> shift
            first = table.first.setdefault(key, position)
            if first != position:
                later = table.later.setdefault(key, [])
                if not later or later[-1] != position:  # a network listed twice in one rule counts once
                    later.append(position)
    return AddressRun(start, stop, field, tuple(tables.values()))
