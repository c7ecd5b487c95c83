"""Runs of rules that differ only by one address, so a packet finds its first match by prefix lookup.

A pod with a long `excludeOutboundIPRanges` has thousands of consecutive rules such as
`-A ISTIO_OUTPUT -d 100.64.0.4/30 -j RETURN`: same conditions, same target, one network each. In
such a run every rule's other conditions give the same answer for a packet, so the first rule of the
run that matches is the first rule whose network holds the packet's address, from where the walk
is. That is looked up per prefix length in a dict, instead of testing every rule: the traversal
stays first-match exact and counts the same rules (only the one that matches).

A chain's index is a pure function of its rules, built on the chain's first traversal and kept
beside the chain (keyed by the chain itself, and dropped with it), not in it: the model stays plain
data. The bulk reader (podnat.netfilter._bulk) hands over the runs it already found in the text
(`note_blocks`), so that they are not looked for again. Pure: no I/O.
"""

from __future__ import annotations

import weakref
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain as concat
from itertools import compress, groupby, repeat
from operator import attrgetter, itemgetter, rshift
from typing import cast

from podnat.netfilter.addresses import WIDTH, by_prefix
from podnat.netfilter.matches import Result, rest_matches
from podnat.netfilter.model import Chain, Cond, Rule
from podnat.netfilter.packet import Packet

MIN_RUN = 8  # shorter runs are scanned: a lookup costs about as much as testing a few rules

RunIndex = tuple["AddressRun | None", ...]  # per rule of a chain, the run it is in; () when none
# (start, stop, field, known): rules the bulk reader read as one run, in order; `known`: their IPv4
# networks as it read them (prefix lengths, networks as integers), else None
Blocks = tuple[tuple[int, int, str, "tuple[list[int], list[int]] | None"], ...]

# Beside the chains, keyed by id(chain): a chain is not hashed (that would hash its rules), and the
# entries go when the chain does (weakref.finalize), before its id can be reused.
_INDEXES: dict[int, RunIndex] = {}
_BLOCKS: dict[int, Blocks] = {}


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
        found = [
            p for t in self.tables if t.version == version and (p := t.at_or_after(value >> t.shift, start)) is not None
        ]
        return (min(found), rest) if found else None


def chain_runs(chain: Chain) -> RunIndex:
    """The address runs of `chain`, per rule, found on first use and kept beside the chain."""
    key = id(chain)
    runs = _INDEXES.get(key)
    if runs is None:
        if key not in _BLOCKS:
            weakref.finalize(chain, _forget, key)
        runs = _INDEXES[key] = find_runs(chain.rules, blocks=_BLOCKS.get(key, ()))
    return runs


def spans(chain: Chain) -> Iterator[tuple[int, int]]:
    """The chain's rules as consecutive ranges (start, stop), 0-based: each run the bulk reader read
    from one template as one range (rules alike but for one `-s`/`-d` address, their text, position,
    line and counters: their protocol, interfaces, matches and target are the same objects), every
    other rule alone. A question about a whole table that no rule's address, position or counters
    answers needs one rule of each range (a pod's 100,000 excluded CIDRs are one range)."""
    done = 0
    for start, stop, _, _ in (*_BLOCKS.get(id(chain), ()), (len(chain.rules), len(chain.rules), "", None)):
        yield from ((i, i + 1) for i in range(done, start))
        if stop > start:
            yield start, stop
        done = stop


def representatives(chain: Chain) -> Iterator[Rule]:
    """The first rule of each of the chain's spans, in order (see spans)."""
    rules = chain.rules
    done = 0
    for start, stop, _, _ in _BLOCKS.get(id(chain), ()):
        yield from rules[done : start + 1]
        done = stop
    yield from rules[done:]


def note_blocks(chain: Chain, blocks: Blocks) -> None:
    """What the bulk reader read as runs of `chain` (rules start..stop-1 of one template, differing
    only by their `field` address, not negated, read): used when the chain's index is built."""
    key = id(chain)
    if key not in _BLOCKS and key not in _INDEXES:
        weakref.finalize(chain, _forget, key)
    _BLOCKS[key] = blocks


def _forget(key: int) -> None:
    _INDEXES.pop(key, None)
    _BLOCKS.pop(key, None)


def find_runs(rules: tuple[Rule, ...], min_run: int = MIN_RUN, blocks: Blocks = ()) -> RunIndex:
    """Every run of at least `min_run` rules, as the run each rule is in (() when there is none).

    `blocks`: ranges the bulk reader read from one template, one address each (note_blocks): each is
    a run as it stands; the rules around them are grouped here."""
    if len(rules) < min_run:
        return ()
    at: list[AddressRun | None] = [None] * len(rules)
    found = False
    done = 0
    for start, stop, field, known in (*blocks, (len(rules), len(rules), "", None)):
        if stop - start < min_run and stop < len(rules):
            continue  # too short to index: the rules go with those around them
        for run in _scan(rules, done, start, min_run):
            at[run.start : run.stop] = [run] * (run.stop - run.start)
            found = True
        if stop > start:
            run = (_from_networks(known, start, field) if known else None) or _build(
                list(map(attrgetter(field), rules[start:stop])), start, field
            )
            at[start:stop] = [run] * (stop - start)
            found = True
        done = stop
    return tuple(at) if found else ()


def _scan(rules: tuple[Rule, ...], lo: int, hi: int, min_run: int) -> Iterator[AddressRun]:
    """The runs among rules lo..hi-1: rules whose other conditions and target are equal come together,
    compared in C (rules read from one template share those objects); each such group is then split
    by address field."""
    stop = lo
    for _, group in groupby(map(_REST, rules[lo:hi])):
        start, stop = stop, stop + len(list(group))
        if stop - start >= min_run:
            yield from _address_runs(rules, start, stop, min_run)


_REST = attrgetter("protocol", "in_iface", "out_iface", "fragment", "matches", "target")
_SOURCE, _DESTINATION = attrgetter("source"), attrgetter("destination")
_NEGATED, _NETWORKS = attrgetter("negated"), attrgetter("networks")


def _address_runs(rules: tuple[Rule, ...], start: int, stop: int, min_run: int) -> Iterator[AddressRun]:
    """The runs among rules start..stop-1, whose other conditions are all the same."""
    segment = rules[start:stop]
    sources, destinations = list(map(_SOURCE, segment)), list(map(_DESTINATION, segment))
    for field, conds, others in (("source", sources, destinations), ("destination", destinations, sources)):
        if not any(others) and all(conds):  # (truth: every Cond is a non-empty tuple)
            addressed = cast("list[Cond]", conds)
            if not any(map(_NEGATED, addressed)) and all(map(_NETWORKS, addressed)):
                yield _build(addressed, start, field)  # the whole group: one field, every address indexable
                return
    i = start
    while i < stop:  # the general case: rule by rule
        found = _address_field(rules[i])
        j = i + 1
        if found is not None:
            while j < stop and _address_field(rules[j]) == found:
                j += 1
            if j - i >= min_run:
                yield _build([getattr(rule, found) for rule in rules[i:j]], i, found)
        i = j


def _address_field(rule: Rule) -> str | None:
    """The one address a rule tests, when it can be looked up: given, not negated, read."""
    if rule.destination is None and _indexable(rule.source):
        return "source"
    if rule.source is None and _indexable(rule.destination):
        return "destination"
    return None


def _indexable(cond: Cond | None) -> bool:
    return cond is not None and not cond.negated and bool(cond.networks)


def _from_networks(known: tuple[list[int], list[int]], start: int, field: str) -> AddressRun | None:
    """The run of rules start.. whose addresses are the IPv4 networks the bulk reader read, when all but
    a few at the start have one prefix length (a pod's excluded CIDRs after `-d 127.0.0.1/32`): that
    length's table is built in C. None otherwise, or when a network is listed twice (_build then)."""
    prefixes, nets = known
    length = prefixes[-1]
    few = len(prefixes) - prefixes.count(length)
    if few > 8 or prefixes[few:].count(length) != len(prefixes) - few:
        return None
    shift = 32 - length
    keys = list(map(rshift, nets[few:], repeat(shift))) if shift else nets[few:]
    stop = start + len(prefixes)
    first = dict(zip(reversed(keys), range(stop - 1, start + few - 1, -1), strict=True))  # the first position wins
    if len(first) != len(keys):
        return None
    tables = {length: first}
    for position, (other, net) in enumerate(zip(prefixes[:few], nets[:few], strict=True), start=start):
        table = tables.setdefault(other, {})
        if table.setdefault(net >> (32 - other), position) != position:
            return None
    return AddressRun(start, stop, field, _ordered(PrefixTable(4, 32 - n, table, {}) for n, table in tables.items()))


def _build(conds: list[Cond], start: int, field: str) -> AddressRun:
    """The prefix tables of the rules start.. whose addresses are `conds` (one per rule)."""
    stop = start + len(conds)
    nets = list(concat.from_iterable(map(_NETWORKS, conds)))
    kinds = by_prefix(nets) if len(nets) == len(conds) else None
    if kinds is not None and len(kinds) == 1:  # one network per rule, one prefix length: a pod's excluded CIDRs
        ((version, length),) = kinds
        shift = WIDTH[version] - length
        keys = list(map(rshift, map(_NETWORK, nets), repeat(shift)))
        first = dict(zip(reversed(keys), range(stop - 1, start - 1, -1), strict=True))  # the first position wins
        if len(first) == len(keys):
            return AddressRun(start, stop, field, (PrefixTable(version, shift, first, {}),))
        kinds = None  # a network listed again: the general way below keeps the later positions too
    if kinds is not None:  # one network per rule: each prefix length's table built in C
        fast: list[PrefixTable] = []
        for (version, length), mask in kinds.items():
            shift = WIDTH[version] - length
            keys = list(map(rshift, map(_NETWORK, compress(nets, mask)), repeat(shift)))
            positions = list(compress(range(start, stop), mask))
            first = dict(zip(reversed(keys), reversed(positions), strict=True))  # the first position wins
            if len(first) != len(keys):
                break  # a network listed again: the general way below keeps the later positions too
            fast.append(PrefixTable(version, shift, first, {}))
        else:
            return AddressRun(start, stop, field, _ordered(fast))
    tables: dict[tuple[int, int], PrefixTable] = {}
    for position, cond in enumerate(conds, start=start):
        for version, length, network in cond.networks:
            shift = WIDTH[version] - length
            table = tables.get((version, shift))
            if table is None:
                table = tables[(version, shift)] = PrefixTable(version, shift, {}, {})
            key = network >> shift
            first_at = table.first.setdefault(key, position)
            if first_at != position:
                later = table.later.setdefault(key, [])
                if not later or later[-1] != position:  # a network listed twice in one rule counts once
                    later.append(position)
    return AddressRun(start, stop, field, _ordered(tables.values()))


def _ordered(tables: Iterable[PrefixTable]) -> tuple[PrefixTable, ...]:
    """A run's prefix tables in one order (IP version, then longest prefix first), however found."""
    return tuple(sorted(tables, key=_ORDER))


_ORDER = attrgetter("version", "shift")


_NETWORK = itemgetter(2)
