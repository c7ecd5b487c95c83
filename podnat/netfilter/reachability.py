"""Shadowed rules: rules no packet can reach, and the earlier rules that take their packets first.

podnat builds representative packets from every address, port, interface, owner and mark the
rules mention (plus one value none of them mention: e.g. root's uid, and a packet with no socket),
keeps only what routing can produce (traffic to or from a loopback address leaves by `lo`), and walks
each through the real traversal. A rule that some representative packet satisfies but that no walk
reaches is shadowed by the rules where those walks ended. Exhaustive over the equivalence classes the
rules define, so not a guess; skipped (and said so) when a table mentions too many distinct values to
enumerate.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain as concat
from itertools import compress, groupby, repeat
from operator import attrgetter, itemgetter, or_

from podnat.netfilter.addresses import WIDTH, by_prefix, cond_networks, network_bounds, to_address
from podnat.netfilter.matches import parse_mark, rule_matches
from podnat.netfilter.model import Chain, Cond, Family, Rule, Ruleset, Table
from podnat.netfilter.packet import Packet
from podnat.netfilter.runs import AddressRun, chain_runs, representatives
from podnat.netfilter.traverse import traverse

MAX_PACKETS = 20000
_LOCAL_HOOKS = ("OUTPUT", "POSTROUTING")


@dataclass(frozen=True, slots=True)
class Shadowed:
    """A rule that can never count, with the rules that take its packets first."""

    rule: Rule
    by: tuple[str, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class Reachability:
    """The shadowed rules of a table, and what could not be analysed."""

    shadowed: tuple[Shadowed, ...]
    skipped: tuple[str, ...] = ()


NAT_HOOKS = ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")


def shadowed_rules(ruleset: Ruleset) -> Reachability:
    """Every nat rule that no first packet can reach, base chain by base chain (iptables' nat table,
    or nftables' `type nat` chains)."""
    found: dict[str, Shadowed] = {}
    skipped: list[str] = []
    for hook in NAT_HOOKS:
        for base in ruleset.base_chains(hook):
            if base.kind == "nat":
                _analyse(ruleset, base.table, base.chain, hook, found, skipped)
    ordered = sorted(found.values(), key=lambda s: (s.rule.table, s.rule.chain, s.rule.position))
    return Reachability(tuple(ordered), tuple(skipped))


def _analyse(
    ruleset: Ruleset, table: str, entry: str, hook: str, found: dict[str, Shadowed], skipped: list[str]
) -> None:
    tab = ruleset.table(table)
    if tab is not None:
        chains = _reachable_chains(tab, entry)
        if not chains or not any(tab.chains[c].rules for c in chains):
            return
        space = _PacketSpace([tab.chains[c] for c in chains], hook, ruleset.family)
        if space.size > MAX_PACKETS:
            count = f"{space.size}" if space.exact else f"at least {space.size}"
            skipped.append(f"{table} {hook}: {count} representative packets, over {MAX_PACKETS}")
            return
        rules = [rule for c in chains for rule in tab.chains[c].rules]
        packets = list(space.packets())
        hit: set[str] = set()
        for packet in packets:
            hit.update(traverse(ruleset, table, hook, packet, start=entry).refs)
        for rule in rules:
            if rule.ref in hit or rule.ref in found:
                continue
            shadow = _explain(ruleset, table, hook, rule, packets)
            if shadow is not None:
                found[rule.ref] = shadow


def _explain(ruleset: Ruleset, table: str, hook: str, rule: Rule, packets: list[Packet]) -> Shadowed | None:
    results = [(p, rule_matches(rule, p, hook)) for p in packets]
    candidates = [p for p, result in results if result is True]
    if not candidates:
        if any(not isinstance(result, bool) for _, result in results):
            return None  # podnat cannot decide the rule for some packet: not provably unreachable
        return Shadowed(rule, (), f"no packet at {hook} can satisfy its conditions")
    by: set[str] = set()
    for packet in candidates:
        trace = traverse(ruleset, table, hook, packet, start=rule.chain)
        if rule.ref in trace.refs:
            return Shadowed(rule, (), f"nothing jumps to {rule.chain} with the packets it matches")
        before = [h for h in trace.hits if h.chain == rule.chain and h.position < rule.position]
        if before:
            by.add(before[-1].ref)
        elif trace.verdict.rule:
            by.add(trace.verdict.rule)
    refs = tuple(sorted(by, key=_ref_key))
    return Shadowed(rule, refs, "every packet it could match is taken first by " + ", ".join(refs))


def _ref_key(ref: str) -> tuple[str, int]:
    chain, _, pos = ref.rpartition(":")
    return chain, int(pos)


def _reachable_chains(table: Table, entry: str) -> list[str]:
    if entry not in table.chains:
        return []
    order, todo = [entry], [entry]
    while todo:
        # a run read from one template is looked at once, and consecutive rules with one target too
        for target, _ in groupby(map(_TARGET, representatives(table.chains[todo.pop()]))):
            name = target.name if target else None
            if name in table.chains and name not in order:
                order.append(name)
                todo.append(name)
    return order


class _PacketSpace:
    """The representative packets for a set of rules at one hook."""

    def __init__(self, chains: list[Chain], hook: str, family: Family, bound: bool = True) -> None:
        v6 = family is Family.IPV6
        self.hook = hook
        self.local = hook in _LOCAL_HOOKS
        other = ipaddress.ip_address("fd00::ffff:fe" if v6 else "10.255.255.254")
        loop = ipaddress.ip_address("::1" if v6 else "127.0.0.1")
        # Addresses as (version, int) until they are needed: a table with 100,000 networks is counted
        # (and skipped) without building 200,000 address objects.
        srcs: Addresses = {4: set(), 6: set()}
        dsts: Addresses = {4: set(), 6: set()}
        srcs[other.version].add(int(other))
        dsts[other.version].add(int(other))
        dsts[loop.version].add(int(loop))
        ifaces: set[str] = {"lo", "eth0", "other0"}
        protos = {"tcp", "udp"}
        dports: set[int | None] = {8080}
        sports: set[int | None] = {50000}
        ids: set[int] = {1000}
        marks: set[int] = {0}
        # An address run (a pod's thousands of excluded CIDRs; podnat.netfilter.runs) is one group: its
        # other conditions are read once, its addresses counted in bulk.
        groups, runs = _groups(chains)
        for group in groups:
            rule = group[0]
            for cond in (rule.in_iface, rule.out_iface):
                if cond is not None:
                    ifaces.add(cond.value[:-1] + "0" if cond.value.endswith("+") else cond.value)
            if rule.protocol is not None and rule.protocol.value not in ("all", "0"):
                protos.add(rule.protocol.value)
            for match in rule.matches:
                for option in match.options:
                    if option.name in ("dport", "destination-port", "dports", "destination-ports", "ports"):
                        dports.update(_ports(option.args[0]))
                    if option.name in ("sport", "source-port", "sports", "source-ports", "ports"):
                        sports.update(_ports(option.args[0]))
                    if option.name in ("uid-owner", "gid-owner") and option.args[0].split("-")[0].isdigit():
                        ids.update(int(x) for x in option.args[0].split("-"))
                    if match.module in ("mark", "connmark") and option.name == "mark":
                        marks.add(parse_mark(option.args[0])[0])
        self.ifaces, self.protos = sorted(ifaces), sorted(protos)
        self.dports, self.sports = sorted(dports, key=lambda p: p or 0), sorted(sports, key=lambda p: p or 0)
        # Every identity a rule can see, not only the pod's app and proxy: one uid/gid that no rule names
        # (root, unless a rule names it), and (below) a packet with no socket at all.
        ids.add(0 if 0 not in ids else max(ids) + 1)
        self.ids, self.marks = sorted(ids), sorted(marks)
        # A run's distinct networks have distinct first addresses: a bound that already says "too
        # many" spares counting 100,000 addresses exactly.
        fewest = {"source": 1, "destination": len(dsts[4]) + len(dsts[6])}
        for run in runs if bound else ():
            fewest[run.field] = max(fewest[run.field], *(len(t.first) for t in run.tables))
        self.exact = self._others * fewest["source"] * fewest["destination"] <= MAX_PACKETS
        if not self.exact:
            self._bound = self._others * fewest["source"] * fewest["destination"]
            return
        for group in groups:
            _add_all_ends(filter(None, map(_SOURCE, group)), srcs)
            _add_all_ends(filter(None, map(_DESTINATION, group)), dsts)
        self._srcs, self._dsts = srcs, dsts

    @property
    def _others(self) -> int:
        """How many choices everything but the addresses gives."""
        identities = len(self.ids) ** 2 + 1 if self.local else 1
        return len(self.ifaces) * len(self.protos) * len(self.dports) * len(self.sports) * identities * len(self.marks)

    @property
    def size(self) -> int:
        """The number of representative packets (when not exact, a lower bound over MAX_PACKETS)."""
        if not self.exact:
            return self._bound
        return _count(self._srcs) * _count(self._dsts) * self._others

    def packets(self) -> Iterator[Packet]:
        identities: list[tuple[int | None, int | None]] = (
            [*itertools.product(self.ids, self.ids), (None, None)] if self.local else [(None, None)]
        )
        srcs = sorted((to_address(v, a) for v, values in self._srcs.items() for a in values), key=str)
        dsts = sorted((to_address(v, a) for v, values in self._dsts.items() for a in values), key=str)
        for src, dst, iface, proto, dport, sport, (uid, gid), mark in itertools.product(
            srcs, dsts, self.ifaces, self.protos, self.dports, self.sports, identities, self.marks
        ):
            if (src.is_loopback or dst.is_loopback) and iface != "lo":
                continue  # routing sends loopback traffic by lo, and only by lo
            if not self.local and iface == "lo" and not src.is_loopback:
                continue
            yield Packet(
                proto=proto,
                src=src,
                dst=dst,
                sport=sport,
                dport=dport,
                in_iface=None if self.local else iface,
                out_iface=iface if self.local else None,
                uid=uid,
                gid=gid,
                mark=mark,
                ctmark=mark,
            )


Addresses = dict[int, set[int]]  # IP version -> addresses as integers


def _count(addresses: Addresses) -> int:
    return sum(map(len, addresses.values()))


def _groups(chains: list[Chain]) -> tuple[list[tuple[Rule, ...]], list[AddressRun]]:
    """The chains' rules as groups whose other conditions are equal (each address run is one group,
    every other rule one on its own), and the runs."""
    groups: list[tuple[Rule, ...]] = []
    runs: list[AddressRun] = []
    for chain in chains:
        index, rules = chain_runs(chain), chain.rules
        if not index:
            groups.extend((rule,) for rule in rules)
            continue
        i = 0
        while i < len(rules):
            run = index[i]
            if run is None:
                groups.append((rules[i],))
                i += 1
            else:
                runs.append(run)
                groups.append(rules[run.start : run.stop])
                i = run.stop
    return groups, runs


def _add_all_ends(conds: Iterable[Cond], bucket: Addresses) -> None:
    """Each network's first and last address, by IP version, as integers: in C when the networks
    are read, else one by one."""
    conds = list(conds)
    if not conds:
        return
    nets = list(concat.from_iterable(map(_NETWORKS, conds)))
    kinds = by_prefix(nets) if all(map(_NETWORKS, conds)) else None
    if kinds is not None:
        for (version, length), mask in kinds.items():
            firsts = list(map(_NETWORK, compress(nets, mask)))
            host = (1 << (WIDTH[version] - length)) - 1
            bucket[version].update(firsts)
            bucket[version].update(map(or_, firsts, repeat(host)))
        return
    for cond in conds:
        for net in cond_networks(cond):
            first, last = network_bounds(net)
            bucket[net[0]].update((first, last))


_SOURCE, _DESTINATION, _NETWORKS = attrgetter("source"), attrgetter("destination"), attrgetter("networks")
_NETWORK = itemgetter(2)
_TARGET = attrgetter("target")


def _ports(spec: str) -> set[int | None]:
    ports: set[int | None] = set()
    for part in spec.split(","):
        for bound in part.split(":"):
            if bound.isdigit():
                ports.add(int(bound))
    return ports
