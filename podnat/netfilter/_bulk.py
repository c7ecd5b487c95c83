"""The bulk reader behind parse_ruleset: long runs of rules that differ only by one address.

A pod with a long `excludeOutboundIPRanges` has thousands of rules such as
`-A ISTIO_OUTPUT -d 100.64.0.4/30 -j RETURN`. Read one by one (podnat.netfilter.grammar.parse_rule)
each costs a tokenisation and a rule; here

- `text_lines` finds such runs in the text with one regex (a line, then the lines repeating it but
  for the address and the counters) and hands them over as one Block;
- `chain_rules` parses a rule with its address replaced by a slot once per table (a template), and
  builds the rules of one template together, as columns, in C where possible.

The result is exactly what the plain reader gives (tests/unit/test_runs.py checks it on random
tables); the runs found are handed to the run index (podnat.netfilter.runs) with the chain. Pure.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import repeat
from operator import attrgetter, itemgetter

from podnat.netfilter.addresses import address_cond, bulk_read
from podnat.netfilter.errors import ParseError
from podnat.netfilter.grammar import COUNTER_PREFIX, parse_rule, rule_spec, tokenise
from podnat.netfilter.model import Cond, Counters, Rule
from podnat.netfilter.runs import Blocks

Entry = tuple[int, str, "Counters | None", list[str]]  # a rule line: number, text, counters, tokens after the chain

# A table's long runs of rules that differ only by one address (a pod's thousands of excluded CIDRs)
# are found in the text by one regex (_run_pattern: a line, then the lines repeating it but for the address
# and the counters) and read together, in C where possible, instead of line by line.
_SLOT = "\x00address"  # cannot occur in input: text with NUL is rejected
_PLAIN = r"[^\n\"'\\]"  # no quoting: the words are what str.split gives
_NO_ADDRESS = rf"(?:(?! -[sd] ){_PLAIN})"


@functools.cache
def _run_pattern() -> re.Pattern[str]:
    """The pattern of a run, compiled on first use (~20 ms: for large tables, not at every start)."""
    return re.compile(
        rf"^(?P<counted>\[\d+:\d+\] )?(?P<head>-A [^\s\"'\\]+ (?:{_NO_ADDRESS}*? )?-[sd] )[^\s\"'\\]+"
        rf"(?P<tail>(?: {_NO_ADDRESS}*)?)\n(?:(?(counted)\[\d+:\d+\] )(?P=head)[^\s\"'\\]+(?P=tail)\n)+",
        re.M,
    )


_OTHER_BREAKS = "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # str.splitlines breaks there too
_BLOCK_ADDRESS = re.compile(r" -[sd] (\S+)")
_BLOCK_COUNTERS = re.compile(r"^\[(\d+):(\d+)\] ", re.M)
_BLOCK_SPEC = re.compile(r"^(?:\[\d+:\d+\] )?-A \S+ (\S(?:.*\S)?)[ \t]*$", re.M)


@dataclass(frozen=True, slots=True)
class Block:
    """Consecutive `-A` lines of one chain that differ only by one address (and their counters)."""

    first: int  # the first line's number
    chain: str
    raws: list[str]
    shape: str  # the lines, with the address (and counters) as slots
    counted: bool  # the lines carry [packets:bytes]

    @property
    def tokens(self) -> tuple[str, ...]:
        """The shape's words after the chain, the address as _SLOT."""
        words = self.shape.split()
        return tuple(words[3:] if self.counted else words[2:])

    def addresses(self) -> list[str] | None:
        if not self.counted:  # the address sits at the same place in every line: slice it out, in C
            shape = self.shape
            start = shape.index(_SLOT)
            tail = len(shape) - start - len(_SLOT)
            return list(map(itemgetter(slice(start, -tail if tail else None)), self.raws))
        found = _BLOCK_ADDRESS.findall("\n".join(self.raws))
        return found if len(found) == len(self.raws) else None

    def specs(self) -> list[str]:
        head = f"-A {self.chain} "
        shape = self.shape
        if not self.counted and shape.startswith(head) and shape[len(head)] != " " and shape == shape.rstrip():
            return list(map(itemgetter(slice(len(head), None)), self.raws))
        found = _BLOCK_SPEC.findall("\n".join(self.raws))
        return found if len(found) == len(self.raws) else list(map(rule_spec, self.raws))

    def counters(self) -> list[Counters | None]:
        if not self.counted:
            return [None] * len(self.raws)
        return [Counters(int(p), int(b)) for p, b in _BLOCK_COUNTERS.findall("\n".join(self.raws))]

    def entries(self) -> list[Entry]:
        """The block as single rule lines, for the general path."""
        out: list[Entry] = []
        for number, raw in enumerate(self.raws, start=self.first):
            line, counters = raw.strip(), None
            m = COUNTER_PREFIX.match(line)
            if m:
                counters = Counters(int(m.group(1)), int(m.group(2)))
                line = line[m.end() :]
            out.append((number, raw, counters, tokenise(line, number, raw)[2:]))
        return out


def text_lines(text: str, binary: bool) -> Iterator[tuple[int, str, Block | None]]:
    """(number, line, None) for each line, as str.splitlines gives them, except that runs of `-A`
    lines of one shape (all but one `-s`/`-d` address and the counters alike) come as one
    (first number, first line, block)."""
    if binary or text.count("\n") < 64 or any(c in text for c in _OTHER_BREAKS):
        yield from ((number, raw, None) for number, raw in enumerate(text.splitlines(), start=1))
        return
    number, at = 1, 0
    for run in _run_pattern().finditer(text):
        head, tail = run.group("head"), run.group("tail")
        if (head + tail).count(" -s ") + (head + tail).count(" -d ") > 1:
            continue  # another address: the lines go one by one (below, with the text around them)
        for raw in text[at : run.start()].split("\n")[:-1]:
            yield number, raw, None
            number += 1
        raws = run.group(0).split("\n")[:-1]
        counted = run.group("counted") is not None
        shape = ("[\x00] " if counted else "") + head + _SLOT + tail
        yield number, raws[0], Block(number, head.split(None, 2)[1], raws, shape, counted)
        number += len(raws)
        at = run.end()
    rest = text[at:].split("\n")
    for raw in rest[:-1] if rest[-1] == "" else rest:
        yield number, raw, None
        number += 1


def singles(entries: list[Entry | Block]) -> list[Entry | Block]:
    """A chain's entries with its blocks split into single lines (an `-I` can land inside one)."""
    if not any(isinstance(e, Block) for e in entries):
        return entries
    return [single for e in entries for single in (e.entries() if isinstance(e, Block) else (e,))]


_MISSING = Rule("", "", 0, "", 0)
# NamedTuple._make without its Python-level length check: for fields built exactly in _fill.
_new_rule = partial(tuple.__new__, Rule)
_new_cond = partial(tuple.__new__, Cond)
_NETWORKS = attrgetter("networks")


@dataclass
class Seen:
    """The IP versions of the addresses read so far, so that checking a table's family does not walk
    every rule again; `unread` when some address was left for _check_addresses to reject."""

    versions: set[int] = field(default_factory=set)
    unread: bool = False

    def note(self, rule: Rule) -> None:
        for cond in (rule.source, rule.destination):
            if cond is not None:
                if not cond.networks:
                    self.unread = True
                self.versions.update(net[0] for net in cond.networks)


def chain_rules(
    table: str,
    chain: str,
    entries: list[Entry | Block],
    chain_names: set[str],
    templates: dict[tuple[str, ...], Rule | None],
    seen: Seen,
) -> tuple[tuple[Rule, ...], Blocks]:
    """A chain's rules, reading rules that differ only by one `-s`/`-d` address once, and the blocks of
    such rules (for the run index: podnat.netfilter.runs.note_blocks).

    The rule with its address replaced by a slot is parsed once per table (a template); the parser
    never looks inside an address, so every rule of that form parses to the template with its own
    address. Consecutive rules of one template (a pod's thousands of excluded CIDRs) are built
    together (_Group). A template whose slot does not land exactly in -s/-d is not used.
    """
    rules: list[Rule] = []
    blocks: list[tuple[int, int, str, tuple[list[int], list[int]] | None]] = []
    group = _Group(chain, None)
    position = 1
    for entry, template, addresses in _with_templates(table, chain, entries, chain_names, templates):
        if template is not group.template:
            group.flush_into(rules, seen, blocks)
            group = _Group(chain, template)
        if isinstance(entry, Block):
            count = len(entry.raws)
            group.add(
                range(position, position + count),
                range(entry.first, entry.first + count),
                entry.specs(),
                entry.counters(),
                addresses,
            )
            position += count
        elif template is not None:
            group.add((position,), (entry[0],), (rule_spec(entry[1]),), (entry[2],), addresses)
            position += 1
        else:
            number, raw, counters, tokens = entry
            rule = _parse_rule_cached(table, chain, position, number, raw, counters, tokens, chain_names, templates)
            seen.note(rule)
            rules.append(rule)
            position += 1
    group.flush_into(rules, seen, blocks)
    return tuple(rules), tuple(blocks)


def _with_templates(
    table: str,
    chain: str,
    entries: list[Entry | Block],
    chain_names: set[str],
    templates: dict[tuple[str, ...], Rule | None],
) -> Iterator[tuple[Entry | Block, Rule | None, Sequence[str]]]:
    """Each entry with its template and address(es); a block without a usable template comes as its
    single lines, and a line with no template (not one address) with None."""
    for entry in entries:
        if isinstance(entry, Block):
            field_name = "source" if entry.tokens[entry.tokens.index(_SLOT) - 1] == "-s" else "destination"
            template = _cached_template(table, chain, entry.tokens, [field_name], chain_names, templates)
            addresses = entry.addresses() if template is not None else None
            if template is not None and addresses is not None:
                yield entry, template, addresses
                continue
            singles: list[Entry | Block] = list(entry.entries())
            yield from _with_templates(table, chain, singles, chain_names, templates)
            continue
        tokens = entry[3]
        has_source, has_destination = "-s" in tokens, "-d" in tokens
        i = tokens.index("-s" if has_source else "-d") + 1 if has_source != has_destination else len(tokens)
        if i >= len(tokens):
            yield entry, None, ()
            continue
        address = tokens[i]
        tokens[i] = _SLOT
        shape = tuple(tokens)
        tokens[i] = address
        template = _cached_template(
            table, chain, shape, ["source" if has_source else "destination"], chain_names, templates
        )
        yield entry, template, (address,)


def _cached_template(
    table: str,
    chain: str,
    shape: tuple[str, ...],
    fields: list[str],
    chain_names: set[str],
    templates: dict[tuple[str, ...], Rule | None],
) -> Rule | None:
    """The template of a shape (its addresses in `fields` as slots), parsed once per table."""
    template = templates.get(shape, _MISSING)
    if template is _MISSING:
        template = templates[shape] = _template(table, chain, list(shape), chain_names, fields)
    return template


class _Group:
    """Consecutive rules of one template, as columns, built together when the group ends."""

    def __init__(self, chain: str, template: Rule | None) -> None:
        self.chain = chain  # (a template is shared by the table's chains)
        self.template = template
        self.positions: list[int] = []
        self.numbers: list[int] = []
        self.specs: list[str] = []
        self.counters: list[Counters | None] = []
        self.addresses: list[str] = []

    def add(
        self,
        positions: Sequence[int],
        numbers: Sequence[int],
        specs: Sequence[str],
        counters: Sequence[Counters | None],
        addresses: Sequence[str],
    ) -> None:
        self.positions.extend(positions)
        self.numbers.extend(numbers)
        self.specs.extend(specs)
        self.counters.extend(counters)
        self.addresses.extend(addresses)

    def flush_into(
        self, rules: list[Rule], seen: Seen, blocks: list[tuple[int, int, str, tuple[list[int], list[int]] | None]]
    ) -> None:
        """Append the group's rules (the template with each rule's address, position, line, text and
        counters) and, when their addresses can be looked up, the group as a block."""
        template = self.template
        if template is None or not self.specs:
            return
        slot = template.source if template.source is not None else template.destination
        assert slot is not None
        read = bulk_read(self.addresses)
        networks, known = (read[0], (read[1], read[2])) if read else (None, None)
        if networks is None:
            conds = [address_cond(address, slot.negated) for address in self.addresses]
            for cond in conds:
                seen.unread = seen.unread or not cond.networks
                seen.versions.update(net[0] for net in cond.networks)
        else:
            conds = list(map(_new_cond, zip(self.addresses, repeat(slot.negated), networks)))
            seen.versions.add(4)
        source = template.source is not None
        if len(conds) > 1 and not slot.negated and (networks is not None or all(map(_NETWORKS, conds))):
            address_field = "source" if source else "destination"
            blocks.append((len(rules), len(rules) + len(conds), address_field, known))
        rules.extend(
            map(
                _new_rule,
                zip(
                    repeat(template.table),
                    repeat(self.chain),
                    self.positions,
                    self.specs,
                    self.numbers,
                    repeat(template.protocol),
                    conds if source else repeat(None),
                    repeat(None) if source else conds,
                    repeat(template.in_iface),
                    repeat(template.out_iface),
                    repeat(template.fragment),
                    repeat(template.matches),
                    repeat(template.target),
                    repeat(template.counters) if template.counters is not None else self.counters,
                ),
            )
        )


def _parse_rule_cached(
    table: str,
    chain: str,
    position: int,
    number: int,
    raw: str,
    counters: Counters | None,
    tokens: list[str],
    chain_names: set[str],
    templates: dict[tuple[str, ...], Rule | None],
) -> Rule:
    """parse_rule, reading rules that differ only by their `-s`/`-d` addresses once (as chain_rules
    does for rules with one address; this is for rules with both)."""
    key = tokens.copy()
    slots: list[tuple[str, int]] = []
    for flag, field_name in (("-s", "source"), ("-d", "destination")):
        if flag in tokens:
            i = tokens.index(flag) + 1
            if i < len(tokens):
                key[i] = _SLOT
                slots.append((field_name, i))
    if not slots:
        return parse_rule(table, chain, position, number, raw, counters, tokens, chain_names)
    template = _cached_template(table, chain, tuple(key), [name for name, _ in slots], chain_names, templates)
    if template is None:
        return parse_rule(table, chain, position, number, raw, counters, tokens, chain_names)
    source, destination = template.source, template.destination
    for field_name, i in slots:
        if field_name == "source" and source is not None:
            source = address_cond(tokens[i], source.negated)
        elif destination is not None:
            destination = address_cond(tokens[i], destination.negated)
    return template._replace(
        chain=chain,
        position=position,
        spec=rule_spec(raw),
        line=number,
        source=source,
        destination=destination,
        counters=template.counters if template.counters is not None else counters,
    )


def _template(table: str, chain: str, key: list[str], chain_names: set[str], slots: list[str]) -> Rule | None:
    try:
        rule = parse_rule(table, chain, 0, 0, "", None, key, chain_names)
    except ParseError:
        return None  # the rule itself will say what is wrong, with its line
    filled = {
        name for name in ("source", "destination") if (cond := getattr(rule, name)) is not None and cond.value == _SLOT
    }
    return rule if filled == set(slots) and len(slots) == len(filled) else None
