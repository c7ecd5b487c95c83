"""A parsed netfilter rule set: tables, chains, rules, exactly as iptables-save lists them.

Pure data. Rules keep their text (`spec`), their 1-based position in the chain (`position`) and the
line they came from, so every verdict can be checked against a rule number and a line of the input.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import Enum
from itertools import chain as concat
from typing import NamedTuple

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Net = tuple[int, int, int]  # a network as integers: (IP version, prefix length, network address)

BUILTIN_CHAINS: dict[str, tuple[str, ...]] = {
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
    "security": ("INPUT", "FORWARD", "OUTPUT"),
}


class Family(str, Enum):
    """IP family of a rule set: iptables-save (IPv4) or ip6tables-save (IPv6)."""

    IPV4 = "ipv4"
    IPV6 = "ipv6"


@dataclass(frozen=True, slots=True)
class Counters:
    """Packet and byte counters, as `iptables-save -c` prints them."""

    packets: int
    bytes: int


class Option(NamedTuple):
    """One `--option args` of a match or target, possibly negated with `!`.

    Option, Match, Target, Cond and Rule are NamedTuples: rules read from one template share these
    parts, and tuples compare shared parts by identity in C (a dataclass's __eq__ runs in Python)."""

    name: str
    args: tuple[str, ...]
    negated: bool = False


class Match(NamedTuple):
    """A match module (`-m NAME`, or implicit after `-p tcp`) and its options."""

    module: str
    options: tuple[Option, ...]

    def get(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)


class Cond(NamedTuple):
    """A basic rule field (`-s`, `-d`, `-i`, `-o`, `-p`) and whether it is negated.

    A NamedTuple, not a dataclass, like Rule: a table of 100,000 rules builds one per address."""

    value: str
    negated: bool = False
    # For -s/-d: `value` read once at parse time (podnat.netfilter.addresses); () when not read.
    # (derived from `value`: equal values have equal networks, so tuple equality is the right one)
    networks: tuple[Net, ...] = ()


class Target(NamedTuple):
    """What a matching rule does: `-j NAME` or `-g NAME` with the target's options."""

    name: str
    options: tuple[Option, ...] = ()
    goto: bool = False

    def get(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)


class Rule(NamedTuple):
    """One rule. `position` is its 1-based index in its chain as iptables-save lists it.

    Immutable like the other model types, but a NamedTuple: a frozen dataclass costs ~3 us to build
    with its 14 fields, a tuple ~0.4 us, and parsing a table of 100,000 rules builds 100,000 of them
    (podnat/netfilter/parse.py builds them in bulk with `Rule._make`)."""

    table: str
    chain: str
    position: int
    spec: str  # the rule text after `-A CHAIN `, without counters
    line: int
    protocol: Cond | None = None
    source: Cond | None = None
    destination: Cond | None = None
    in_iface: Cond | None = None
    out_iface: Cond | None = None
    fragment: bool | None = None
    matches: tuple[Match, ...] = ()
    target: Target | None = None
    counters: Counters | None = None

    @property
    def ref(self) -> str:
        """`CHAIN:N` for nat rules, `TABLE/CHAIN:N` for any other table (podnat's rule reference)."""
        return rule_ref(self.table, self.chain, self.position)

    @property
    def text(self) -> str:
        """The rule as its tool prints it: `-A CHAIN spec` (iptables), the rule alone (nftables)."""
        return f"-A {self.chain} {self.spec}" if self.table in BUILTIN_CHAINS else self.spec


def rule_ref(table: str, chain: str, position: int) -> str:
    """The reference podnat prints for a rule: nat rules stay `CHAIN:N`, others are `TABLE/CHAIN:N`."""
    return f"{chain}:{position}" if table == "nat" else f"{table}/{chain}:{position}"


@dataclass(frozen=True)  # (no slots: a chain can be weakly referenced, so an index can be kept beside it)
class Chain:
    """A chain: built-in ones have a policy, user chains have none."""

    name: str
    policy: str | None
    rules: tuple[Rule, ...] = ()
    counters: Counters | None = None
    line: int = 0

    @property
    def builtin(self) -> bool:
        return self.policy is not None


@dataclass(frozen=True, slots=True)
class Table:
    """A table (`*nat`) with its chains in the order iptables-save listed them."""

    name: str
    chains: dict[str, Chain] = field(default_factory=dict)

    def chain(self, name: str) -> Chain | None:
        return self.chains.get(name)

    def rules(self) -> tuple[Rule, ...]:
        return tuple(concat.from_iterable(chain.rules for chain in self.chains.values()))


# Where iptables' tables sit on each hook (netfilter priorities): raw, mangle, nat (DNAT before
# filter, SNAT after), filter, security.
IPTABLES_PRIORITY: dict[tuple[str, str], int] = {
    **{("raw", hook): -300 for hook in BUILTIN_CHAINS["raw"]},
    **{("mangle", hook): -150 for hook in BUILTIN_CHAINS["mangle"]},
    ("nat", "PREROUTING"): -100,
    ("nat", "OUTPUT"): -100,
    ("nat", "INPUT"): 100,
    ("nat", "POSTROUTING"): 100,
    **{("filter", hook): 0 for hook in BUILTIN_CHAINS["filter"]},
    **{("security", hook): 50 for hook in BUILTIN_CHAINS["security"]},
}


@dataclass(frozen=True, slots=True)
class BaseChain:
    """A chain the kernel calls at a hook: its table, name, hook, priority and kind (nat or filter)."""

    table: str
    chain: str
    hook: str  # PREROUTING | INPUT | FORWARD | OUTPUT | POSTROUTING
    priority: int
    kind: str = "filter"  # nat chains see only a connection's first packet


@dataclass(frozen=True, slots=True)
class Ruleset:
    """Every table of one iptables-save (or ip6tables-save) dump, or of one nftables ruleset."""

    family: Family
    tables: dict[str, Table] = field(default_factory=dict)
    counters: bool = False  # the dump carried [packets:bytes] counters
    generator: str | None = None  # the "# Generated by ..." banner, e.g. "iptables-nft-save v1.8.9 (nf_tables)"
    warnings: tuple[str, ...] = ()  # e.g. "iptables-legacy tables present, use iptables-legacy-save to see them"
    declared_base_chains: tuple[BaseChain, ...] = ()  # nftables declares its own; iptables' are implied

    def base_chains(self, hook: str) -> tuple[BaseChain, ...]:
        """The chains the kernel runs at `hook`, in priority order."""
        if self.declared_base_chains:
            chains = [c for c in self.declared_base_chains if c.hook == hook]
        else:
            chains = [
                BaseChain(table, hook, hook, IPTABLES_PRIORITY[(table, hook)], "nat" if table == "nat" else "filter")
                for table, tab in self.tables.items()
                if hook in tab.chains and (table, hook) in IPTABLES_PRIORITY
            ]
        return tuple(sorted(chains, key=lambda c: c.priority))

    def table(self, name: str) -> Table | None:
        return self.tables.get(name)

    def rule(self, table: str, chain: str, position: int) -> Rule | None:
        t = self.tables.get(table)
        c = t.chains.get(chain) if t else None
        if c is None or not 1 <= position <= len(c.rules):
            return None
        return c.rules[position - 1]

    def rule_by_ref(self, ref: str) -> Rule | None:
        table, _, rest = ref.rpartition("/")
        chain, _, pos = rest.rpartition(":")
        return self.rule(table or "nat", chain, int(pos)) if pos.isdigit() else None

    @property
    def empty(self) -> bool:
        return not any(t.rules() for t in self.tables.values())

    @property
    def backend(self) -> str | None:
        """`nf_tables` or `legacy`, from the banner, when the dump has one."""
        if not self.generator:
            return None
        if "nf_tables" in self.generator:
            return "nf_tables"
        return "legacy" if "legacy" in self.generator else None
