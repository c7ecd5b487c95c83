"""Parse `iptables-save` / `ip6tables-save` output (and iptables-restore input) into a Ruleset.

Both backends (nf_tables and legacy), with or without `-c` counters, every table. The restore-input
forms Istio's goldens use (`-N`, `-I CHAIN [N]`, implicit `-p tcp --dport`) are accepted too. Any
line podnat cannot read is a ParseError naming the line number and the offending text: podnat never
guesses what a rule means.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import repeat
from operator import attrgetter, itemgetter

from podnat.netfilter.addresses import address_cond, bulk_networks
from podnat.netfilter.alloc import collector_paused
from podnat.netfilter.errors import InputError
from podnat.netfilter.model import (
    BUILTIN_CHAINS,
    Blocks,
    Chain,
    Cond,
    Counters,
    Family,
    Match,
    Option,
    Rule,
    Ruleset,
    Table,
    Target,
)


class ParseError(InputError):
    """A line of a rule dump podnat cannot read (its number, its text, and why)."""

    shown_width = 120
    line: int
    text: str

    def __init__(self, line: int, text: str, message: str) -> None:
        super().__init__(line, text, message)


# Options of the match modules podnat knows, with how many arguments each takes. A module not listed
# here still parses (its options are read greedily) but cannot be evaluated.
MATCH_OPTIONS: dict[str, dict[str, int]] = {
    "tcp": {"sport": 1, "dport": 1, "source-port": 1, "destination-port": 1, "syn": 0, "tcp-flags": 2, "tcp-option": 1},
    "udp": {"sport": 1, "dport": 1, "source-port": 1, "destination-port": 1},
    "sctp": {"sport": 1, "dport": 1, "source-port": 1, "destination-port": 1, "chunk-types": 2},
    "icmp": {"icmp-type": 1},
    "icmp6": {"icmpv6-type": 1},
    "multiport": {"ports": 1, "sports": 1, "dports": 1, "source-ports": 1, "destination-ports": 1},
    "owner": {"uid-owner": 1, "gid-owner": 1, "socket-exists": 0, "suppl-groups": 0},
    "mark": {"mark": 1},
    "connmark": {"mark": 1},
    "conntrack": {
        "ctstate": 1,
        "ctproto": 1,
        "ctorigsrc": 1,
        "ctorigdst": 1,
        "ctreplsrc": 1,
        "ctrepldst": 1,
        "ctorigsrcport": 1,
        "ctorigdstport": 1,
        "ctreplsrcport": 1,
        "ctrepldstport": 1,
        "ctstatus": 1,
        "ctexpire": 1,
        "ctdir": 1,
    },
    "state": {"state": 1},
    "addrtype": {"src-type": 1, "dst-type": 1, "limit-iface-in": 0, "limit-iface-out": 0},
    "comment": {"comment": 1},
    "set": {
        "match-set": 2,
        "return-nomatch": 0,
        "update-counters": 0,
        "update-subcounters": 0,
        "packets-eq": 1,
        "packets-lt": 1,
        "packets-gt": 1,
        "bytes-eq": 1,
        "bytes-lt": 1,
        "bytes-gt": 1,
    },
    "iprange": {"src-range": 1, "dst-range": 1},
    "socket": {"transparent": 0, "nowildcard": 0, "restore-skmark": 0},
    "pkttype": {"pkt-type": 1},
    "mac": {"mac-source": 1},
    "length": {"length": 1},
    "limit": {"limit": 1, "limit-burst": 1},
    "statistic": {"mode": 1, "probability": 1, "every": 1, "packet": 1},
}

# Targets podnat knows: their options (with arity) and whether they end the traversal of the table.
TARGET_OPTIONS: dict[str, dict[str, int]] = {
    "ACCEPT": {},
    "DROP": {},
    "RETURN": {},
    "QUEUE": {},
    "NOTRACK": {},
    "TRACE": {},
    "REJECT": {"reject-with": 1},
    "REDIRECT": {"to-ports": 1, "random": 0},
    "DNAT": {"to-destination": 1, "random": 0, "persistent": 0},
    "SNAT": {"to-source": 1, "random": 0, "random-fully": 0, "persistent": 0},
    "MASQUERADE": {"to-ports": 1, "random": 0, "random-fully": 0},
    "MARK": {"set-xmark": 1, "set-mark": 1, "and-mark": 1, "or-mark": 1, "xor-mark": 1},
    "CONNMARK": {
        "save-mark": 0,
        "restore-mark": 0,
        "nfmask": 1,
        "ctmask": 1,
        "mask": 1,
        "set-xmark": 1,
        "set-mark": 1,
        "and-mark": 1,
        "or-mark": 1,
        "xor-mark": 1,
    },
    "TPROXY": {"on-port": 1, "on-ip": 1, "tproxy-mark": 1},
    "CT": {
        "zone": 1,
        "zone-orig": 1,
        "zone-reply": 1,
        "notrack": 0,
        "helper": 1,
        "ctevents": 1,
        "expevents": 1,
        "timeout": 1,
    },
    "LOG": {
        "log-prefix": 1,
        "log-level": 1,
        "log-tcp-sequence": 0,
        "log-tcp-options": 0,
        "log-ip-options": 0,
        "log-uid": 0,
        "log-macdecode": 0,
    },
    "NFLOG": {"nflog-group": 1, "nflog-prefix": 1, "nflog-range": 1, "nflog-size": 1, "nflog-threshold": 1},
    "NFQUEUE": {"queue-num": 1, "queue-balance": 1, "queue-bypass": 0, "queue-cpu-fanout": 0},
    "CHECKSUM": {"checksum-fill": 0},
    "TCPMSS": {"set-mss": 1, "clamp-mss-to-pmtu": 0},
    "CLASSIFY": {"set-class": 1},
    "DSCP": {"set-dscp": 1, "set-dscp-class": 1},
    "TOS": {"set-tos": 1, "and-tos": 1, "or-tos": 1, "xor-tos": 1},
    "AUDIT": {"type": 1},
}

_BASIC = {
    "-s": "source",
    "--source": "source",
    "--src": "source",
    "-d": "destination",
    "--destination": "destination",
    "--dst": "destination",
    "-i": "in_iface",
    "--in-interface": "in_iface",
    "-o": "out_iface",
    "--out-interface": "out_iface",
    "-p": "protocol",
    "--protocol": "protocol",
}
_IMPLICIT_PROTO_MODULES = {"tcp", "udp", "sctp", "icmp", "icmp6", "ipv6-icmp", "icmpv6"}
_COUNTER_PREFIX = re.compile(r"^\[(\d+):(\d+)\]\s+")
_CHAIN_LINE = re.compile(r"^:(\S+)\s+(\S+)(?:\s+\[(\d+):(\d+)\])?\s*$")
_OPTION_LIKE = re.compile(r"^-{1,2}[A-Za-z]")
_COMMAND = re.compile(r"^(ip6?tables)(?:-(?:nft|legacy))?\s+(.*)$")


_Entry = tuple[int, str, "Counters | None", list[str]]  # a rule line: number, text, counters, tokens after the chain

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
class _Block:
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
        return found if len(found) == len(self.raws) else list(map(_spec, self.raws))

    def counters(self) -> list[Counters | None]:
        if not self.counted:
            return [None] * len(self.raws)
        return [Counters(int(p), int(b)) for p, b in _BLOCK_COUNTERS.findall("\n".join(self.raws))]

    def entries(self) -> list[_Entry]:
        """The block as single rule lines, for the general path."""
        out: list[_Entry] = []
        for number, raw in enumerate(self.raws, start=self.first):
            line, counters = raw.strip(), None
            m = _COUNTER_PREFIX.match(line)
            if m:
                counters = Counters(int(m.group(1)), int(m.group(2)))
                line = line[m.end() :]
            out.append((number, raw, counters, _tokenise(line, number, raw)[2:]))
        return out


def _blocks(text: str, binary: bool) -> Iterator[tuple[int, str, _Block | None]]:
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
        yield number, raws[0], _Block(number, head.split(None, 2)[1], raws, shape, counted)
        number += len(raws)
        at = run.end()
    rest = text[at:].split("\n")
    for raw in rest[:-1] if rest[-1] == "" else rest:
        yield number, raw, None
        number += 1


def _singles(entries: list[_Entry | _Block]) -> list[_Entry | _Block]:
    """A chain's entries with its blocks split into single lines (an `-I` can land inside one)."""
    if not any(isinstance(e, _Block) for e in entries):
        return entries
    return [single for e in entries for single in (e.entries() if isinstance(e, _Block) else (e,))]


@dataclass
class _ChainBuilder:
    name: str
    policy: str | None
    counters: Counters | None
    line: int
    rules: list[_Entry | _Block] = field(default_factory=list)


@dataclass
class _TableBuilder:
    name: str
    line: int
    chains: dict[str, _ChainBuilder] = field(default_factory=dict)


def parse_ruleset(text: str, family: Family | None = None) -> Ruleset:
    """Parse one iptables-save (or restore-input) dump. The family is guessed from addresses if not given."""
    with collector_paused():
        return _parse_ruleset(text, family)


def _parse_ruleset(text: str, family: Family | None) -> Ruleset:
    tables: list[Table] = []
    current: _TableBuilder | None = None
    generator: str | None = None
    warnings: list[str] = []
    has_counters = False
    commands: dict[str, _TableBuilder] = {}  # tables built from `iptables -t T -A ...` command lines
    binary = "\x00" in text
    seen = _Addresses()
    number = 0
    for number, raw, block in _blocks(text, binary):
        if block is not None and current is not None:
            chain = current.chains.get(block.chain)
            if chain is not None:
                chain.rules.append(block)
                has_counters = has_counters or block.counted
                continue
            # (a block outside a table or of an undeclared chain: its first line fails below)
        line = raw.strip()
        if binary and "\x00" in raw:
            raise ParseError(number, raw, "binary data, not iptables-save output")
        if current is not None and line.startswith("-A "):  # most lines: the general path below, shortened
            tokens = _tokenise(line, number, raw)
            chain = current.chains.get(tokens[1])
            if chain is None:
                raise ParseError(number, raw, f"rule for chain {tokens[1]} before the chain is declared")
            chain.rules.append((number, raw, None, tokens[2:]))
            continue
        if not line:
            continue
        if line.startswith("#"):
            body = line.lstrip("#").strip()
            if body.startswith("Generated by "):
                generator = body[len("Generated by ") :].split(" on ")[0]
            elif body.lower().startswith("warning:"):
                warnings.append(body.split(":", 1)[1].strip())
            continue
        command = _COMMAND.match(line) if current is None else None
        if command is not None:
            _command_line(command, family, commands, number, raw)
            continue
        if line.startswith("*"):
            if current is not None:
                raise ParseError(number, raw, f"table {line[1:].strip()} starts before COMMIT of table {current.name}")
            name = line[1:].strip()
            if not re.fullmatch(r"[a-z_]+", name):
                raise ParseError(number, raw, "bad table name")
            current = _TableBuilder(name, number)
            for builtin in BUILTIN_CHAINS.get(name, ()):
                current.chains[builtin] = _ChainBuilder(builtin, "ACCEPT", None, number)
            continue
        if line == "COMMIT":
            if current is None:
                raise ParseError(number, raw, "COMMIT outside a table")
            tables.append(_build_table(current, seen))
            current = None
            continue
        if current is None:
            if line.startswith(("-A ", "-I ", "-N ", "[", ":")):
                what = "chain declaration" if line.startswith((":", "-N ")) else "rule"
                raise ParseError(number, raw, f"{what} before any table header (*nat)")
            raise ParseError(
                number,
                raw,
                "not iptables-save output (a table starts with a line like *nat, "
                "its chains with :CHAIN, its rules with -A; it ends with COMMIT)",
            )
        if line.startswith(":"):
            m = _CHAIN_LINE.match(line)
            if not m:
                raise ParseError(number, raw, "bad chain line")
            name, policy = m.group(1), m.group(2)
            counters = Counters(int(m.group(3)), int(m.group(4))) if m.group(3) is not None else None
            is_builtin = name in BUILTIN_CHAINS.get(current.name, ())
            if is_builtin and policy not in ("ACCEPT", "DROP"):
                raise ParseError(number, raw, f"bad policy {policy} for built-in chain {name}")
            if not is_builtin and policy != "-":
                raise ParseError(number, raw, f"user chain {name} cannot have policy {policy}")
            chain = current.chains.get(name)
            if chain is not None and chain.rules:
                raise ParseError(number, raw, f"chain {name} declared after its rules")
            current.chains[name] = _ChainBuilder(name, policy if is_builtin else None, counters, number)
            continue
        counters = None
        m = _COUNTER_PREFIX.match(line) if line.startswith("[") else None
        if m:
            counters = Counters(int(m.group(1)), int(m.group(2)))
            line = line[m.end() :]
            has_counters = True
        tokens = _tokenise(line, number, raw)
        verb = tokens[0]
        if verb in ("-N", "--new-chain"):
            if len(tokens) != 2:
                raise ParseError(number, raw, "-N takes one chain name")
            if tokens[1] not in current.chains:
                current.chains[tokens[1]] = _ChainBuilder(tokens[1], None, None, number)
            continue
        if verb in ("-A", "--append", "-I", "--insert"):
            if len(tokens) < 2:
                raise ParseError(number, raw, f"{verb} needs a chain")
            chain = current.chains.get(tokens[1])
            if chain is None:
                raise ParseError(number, raw, f"rule for chain {tokens[1]} before the chain is declared")
            rest = tokens[2:]
            if verb in ("-A", "--append"):
                chain.rules.append((number, raw, counters, rest))
            else:
                index = 1
                if rest and rest[0].isdigit():
                    index = int(rest[0])
                    rest = rest[1:]
                chain.rules = _singles(chain.rules)
                if not 1 <= index <= len(chain.rules) + 1:
                    raise ParseError(number, raw, f"insert position {index} out of range")
                chain.rules.insert(index - 1, (number, raw, counters, rest))
            continue
        raise ParseError(number, raw, f"unknown command {verb}")
    if current is not None:
        raise ParseError(number, f"*{current.name}", f"the {current.name} table has no COMMIT: the paste is cut")
    tables.extend(_build_table(builder, seen) for builder in commands.values())
    ruleset_tables: dict[str, Table] = {}
    for table in tables:
        if table.name in ruleset_tables:
            raise ParseError(0, f"*{table.name}", f"table {table.name} appears twice: pass one family's dump at a time")
        ruleset_tables[table.name] = table
    fam = family or (
        _guess_family(ruleset_tables) if len(seen.versions) != 1 else Family.IPV6 if 6 in seen.versions else Family.IPV4
    )
    if seen.unread or not seen.versions <= {6 if fam is Family.IPV6 else 4}:
        _check_addresses(ruleset_tables, fam)
    return Ruleset(fam, ruleset_tables, has_counters, generator, tuple(warnings))


def _command_line(
    command: re.Match[str], family: Family | None, tables: dict[str, _TableBuilder], number: int, raw: str
) -> None:
    """One `iptables -t nat -A CHAIN ...` line (Istio's logs and goldens up to 1.23 print these)."""
    binary_family = Family.IPV6 if command.group(1) == "ip6tables" else Family.IPV4
    if family is not None and binary_family is not family:
        return
    tokens = _tokenise(command.group(2), number, raw)
    table = "filter"
    if len(tokens) >= 2 and tokens[0] in ("-t", "--table"):
        table, tokens = tokens[1], tokens[2:]
    if table not in BUILTIN_CHAINS:
        raise ParseError(number, raw, f"unknown table {table}")
    builder = tables.get(table)
    if builder is None:
        builder = tables[table] = _TableBuilder(table, number)
        for builtin in BUILTIN_CHAINS[table]:
            builder.chains[builtin] = _ChainBuilder(builtin, "ACCEPT", None, number)
    if not tokens:
        raise ParseError(number, raw, "iptables command without a verb")
    verb = tokens[0]
    if verb in ("-N", "--new-chain") and len(tokens) == 2:
        builder.chains.setdefault(tokens[1], _ChainBuilder(tokens[1], None, None, number))
        return
    if verb in ("-A", "--append", "-I", "--insert") and len(tokens) >= 2:
        chain = builder.chains.get(tokens[1])
        if chain is None:
            raise ParseError(number, raw, f"rule for chain {tokens[1]} before the chain is declared")
        rest = tokens[2:]
        if verb in ("-A", "--append"):
            chain.rules.append((number, raw, None, rest))
            return
        index = 1
        if rest and rest[0].isdigit():
            index, rest = int(rest[0]), rest[1:]
        chain.rules.insert(min(index, len(chain.rules) + 1) - 1, (number, raw, None, rest))
        return
    raise ParseError(number, raw, f"unsupported iptables command {verb}")


def _tokenise(line: str, number: int, raw: str) -> list[str]:
    if '"' not in line and "'" not in line and "\\" not in line:
        return line.split()
    try:
        return shlex.split(line)
    except ValueError as exc:
        raise ParseError(number, raw, f"unbalanced quotes ({exc})") from None


def _build_table(builder: _TableBuilder, seen: _Addresses) -> Table:
    chain_names = set(builder.chains)
    templates: dict[tuple[str, ...], Rule | None] = {}
    chains: dict[str, Chain] = {}
    for chain in builder.chains.values():
        rules, blocks = _chain_rules(builder.name, chain.name, chain.rules, chain_names, templates, seen)
        chains[chain.name] = Chain(chain.name, chain.policy, rules, chain.counters, chain.line, blocks)
    return Table(builder.name, chains)


_MISSING = Rule("", "", 0, "", 0)
# NamedTuple._make without its Python-level length check: for fields built exactly in _fill.
_new_rule = partial(tuple.__new__, Rule)
_new_cond = partial(tuple.__new__, Cond)
_NETWORKS = attrgetter("networks")


@dataclass
class _Addresses:
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


def _chain_rules(
    table: str,
    chain: str,
    entries: list[_Entry | _Block],
    chain_names: set[str],
    templates: dict[tuple[str, ...], Rule | None],
    seen: _Addresses,
) -> tuple[tuple[Rule, ...], Blocks]:
    """A chain's rules, reading rules that differ only by one `-s`/`-d` address once, and the blocks of
    such rules (Chain.blocks).

    The rule with its address replaced by a slot is parsed once per table (a template); the parser
    never looks inside an address, so every rule of that form parses to the template with its own
    address. Consecutive rules of one template (a pod's thousands of excluded CIDRs) are built
    together (_Group). A template whose slot does not land exactly in -s/-d is not used.
    """
    rules: list[Rule] = []
    blocks: list[tuple[int, int, str]] = []
    group = _Group(chain, None)
    position = 1
    for entry, template, addresses in _with_templates(table, chain, entries, chain_names, templates):
        if template is not group.template:
            group.flush_into(rules, seen, blocks)
            group = _Group(chain, template)
        if isinstance(entry, _Block):
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
            group.add((position,), (entry[0],), (_spec(entry[1]),), (entry[2],), addresses)
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
    entries: list[_Entry | _Block],
    chain_names: set[str],
    templates: dict[tuple[str, ...], Rule | None],
) -> Iterator[tuple[_Entry | _Block, Rule | None, Sequence[str]]]:
    """Each entry with its template and address(es); a block without a usable template comes as its
    single lines, and a line with no template (not one address) with None."""
    for entry in entries:
        if isinstance(entry, _Block):
            field_name = "source" if entry.tokens[entry.tokens.index(_SLOT) - 1] == "-s" else "destination"
            template = _cached_template(table, chain, entry.tokens, [field_name], chain_names, templates)
            addresses = entry.addresses() if template is not None else None
            if template is not None and addresses is not None:
                yield entry, template, addresses
                continue
            singles: list[_Entry | _Block] = list(entry.entries())
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

    def flush_into(self, rules: list[Rule], seen: _Addresses, blocks: list[tuple[int, int, str]]) -> None:
        """Append the group's rules (the template with each rule's address, position, line, text and
        counters) and, when their addresses can be looked up, the group as a block."""
        template = self.template
        if template is None or not self.specs:
            return
        slot = template.source if template.source is not None else template.destination
        assert slot is not None
        networks = bulk_networks(self.addresses)
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
            blocks.append((len(rules), len(rules) + len(conds), "source" if source else "destination"))
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
    """_parse_rule, reading rules that differ only by their `-s`/`-d` addresses once (as _chain_rules
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
        return _parse_rule(table, chain, position, number, raw, counters, tokens, chain_names)
    template = _cached_template(table, chain, tuple(key), [name for name, _ in slots], chain_names, templates)
    if template is None:
        return _parse_rule(table, chain, position, number, raw, counters, tokens, chain_names)
    source, destination = template.source, template.destination
    for field_name, i in slots:
        if field_name == "source" and source is not None:
            source = address_cond(tokens[i], source.negated)
        elif destination is not None:
            destination = address_cond(tokens[i], destination.negated)
    return template._replace(
        chain=chain,
        position=position,
        spec=_spec(raw),
        line=number,
        source=source,
        destination=destination,
        counters=template.counters if template.counters is not None else counters,
    )


def _template(table: str, chain: str, key: list[str], chain_names: set[str], slots: list[str]) -> Rule | None:
    try:
        rule = _parse_rule(table, chain, 0, 0, "", None, key, chain_names)
    except ParseError:
        return None  # the rule itself will say what is wrong, with its line
    filled = {
        name for name in ("source", "destination") if (cond := getattr(rule, name)) is not None and cond.value == _SLOT
    }
    return rule if filled == set(slots) and len(slots) == len(filled) else None


def _parse_rule(
    table: str,
    chain: str,
    position: int,
    number: int,
    raw: str,
    counters: Counters | None,
    tokens: list[str],
    chain_names: set[str],
) -> Rule:
    fields: dict[str, Cond] = {}
    matches: list[Match] = []
    fragment: bool | None = None
    target: Target | None = None
    module: str | None = None
    module_options: list[Option] = []
    negate = False
    i = 0
    n = len(tokens)

    def close_module() -> None:
        nonlocal module, module_options
        if module is not None:
            matches.append(Match(module, tuple(module_options)))
        module, module_options = None, []

    while i < n:
        token = tokens[i]
        if token == "!":
            if negate:
                raise ParseError(number, raw, "double negation")
            negate = True
            i += 1
            continue
        if token in _BASIC:
            if i + 1 >= n:
                raise ParseError(number, raw, f"{token} needs a value")
            name = _BASIC[token]
            if name in fields:
                raise ParseError(number, raw, f"{token} given twice")
            close_module()
            value = tokens[i + 1]
            fields[name] = address_cond(value, negate) if name in ("source", "destination") else Cond(value, negate)
            negate = False
            i += 2
            continue
        if token in ("-f", "--fragment"):
            close_module()
            fragment = not negate
            negate = False
            i += 1
            continue
        if token in ("-m", "--match"):
            if i + 1 >= n:
                raise ParseError(number, raw, "-m needs a module name")
            if negate:
                raise ParseError(number, raw, "! cannot negate -m")
            close_module()
            module = tokens[i + 1]
            i += 2
            continue
        if token in ("-c", "--set-counters"):
            if i + 2 >= n:
                raise ParseError(number, raw, "-c needs packets and bytes")
            counters = Counters(_int(tokens[i + 1], number, raw), _int(tokens[i + 2], number, raw))
            i += 3
            continue
        if token in ("-j", "--jump", "-g", "--goto"):
            if i + 1 >= n:
                raise ParseError(number, raw, f"{token} needs a target")
            if negate:
                raise ParseError(number, raw, "! cannot negate a target")
            close_module()
            target, i = _parse_target(tokens, i, number, raw, chain_names, table)
            continue
        if token.startswith("--"):
            if module is None:
                proto = fields.get("protocol")
                if proto is not None and not proto.negated and proto.value in _IMPLICIT_PROTO_MODULES:
                    module = {"ipv6-icmp": "icmp6", "icmpv6": "icmp6"}.get(proto.value, proto.value)
                else:
                    raise ParseError(number, raw, f"unknown option {token}")
            option, i = _parse_option(tokens, i, MATCH_OPTIONS.get(module), module, negate, number, raw)
            module_options.append(option)
            negate = False
            continue
        raise ParseError(number, raw, f"unknown option {token}")
    close_module()
    if negate:
        raise ParseError(number, raw, "dangling !")
    spec = _spec(raw)
    return Rule(
        table=table,
        chain=chain,
        position=position,
        spec=spec,
        line=number,
        protocol=fields.get("protocol"),
        source=fields.get("source"),
        destination=fields.get("destination"),
        in_iface=fields.get("in_iface"),
        out_iface=fields.get("out_iface"),
        fragment=fragment,
        matches=tuple(matches),
        target=target,
        counters=counters,
    )


def _parse_target(
    tokens: list[str], i: int, number: int, raw: str, chain_names: set[str], table: str
) -> tuple[Target, int]:
    goto = tokens[i] in ("-g", "--goto")
    name = tokens[i + 1]
    i += 2
    known = TARGET_OPTIONS.get(name)
    if name in chain_names and name not in TARGET_OPTIONS:
        known = {}
    elif goto:
        raise ParseError(number, raw, f"goto to undeclared chain {name}")
    elif known is None:
        if name.isupper() and not any(c in name for c in "-_"):
            known = None  # an extension target podnat does not model: parsed, not evaluated
        else:
            raise ParseError(number, raw, f"jump to chain {name}, which is not declared in table {table}")
    options: list[Option] = []
    while i < len(tokens):
        negate = tokens[i] == "!"
        if negate:
            i += 1
            if i >= len(tokens):
                raise ParseError(number, raw, "dangling !")
        if not tokens[i].startswith("--"):
            raise ParseError(number, raw, f"unexpected {tokens[i]} after target {name}")
        option, i = _parse_option(tokens, i, known, name, negate, number, raw)
        options.append(option)
    if name in chain_names and options:
        raise ParseError(number, raw, f"jump to chain {name} takes no options")
    return Target(name, tuple(options), goto), i


def _parse_option(
    tokens: list[str], i: int, arities: dict[str, int] | None, owner: str, negated: bool, number: int, raw: str
) -> tuple[Option, int]:
    name = tokens[i][2:]
    i += 1
    if arities is not None:
        if name not in arities:
            # getopt_long, as iptables uses it, accepts any unambiguous prefix (`--to-port`).
            candidates = [known for known in arities if known.startswith(name)]
            if len(candidates) != 1:
                raise ParseError(number, raw, f"unknown option --{name} for {owner}")
            name = candidates[0]
        count = arities[name]
        if i + count > len(tokens):
            raise ParseError(number, raw, f"--{name} needs {count} value(s)")
        args = tuple(tokens[i : i + count])
        if any(a == "!" for a in args):
            raise ParseError(number, raw, f"--{name} needs {count} value(s)")
        return Option(name, args, negated), i + count
    start = i
    while i < len(tokens) and tokens[i] != "!" and not _OPTION_LIKE.match(tokens[i]):
        i += 1
    return Option(name, tuple(tokens[start:i]), negated), i


def _spec(raw: str) -> str:
    line = raw.strip()
    if line.startswith("-A "):  # the common case, as below
        parts = line.split(None, 2)
        return parts[2] if len(parts) > 2 else ""
    line = _COUNTER_PREFIX.sub("", line)
    command = _COMMAND.match(line)
    if command is not None:
        line = re.sub(r"^(?:-t|--table)\s+\S+\s+", "", command.group(2))
    parts = line.split(None, 2)
    if parts and parts[0] in ("-I", "--insert") and len(parts) > 2:
        rest = parts[2].split(None, 1)
        if rest and rest[0].isdigit():
            return rest[1] if len(rest) > 1 else ""
    return parts[2] if len(parts) > 2 else ""


def _int(value: str, number: int, raw: str) -> int:
    if not value.isdigit():
        raise ParseError(number, raw, f"expected a number, got {value}")
    return int(value)


def _guess_family(tables: dict[str, Table]) -> Family:
    for table in tables.values():
        for rule in table.rules():
            for cond in (rule.source, rule.destination):
                if cond is not None:
                    return Family.IPV6 if ":" in cond.value else Family.IPV4
    return Family.IPV4


def _check_addresses(tables: dict[str, Table], family: Family) -> None:
    version = 6 if family is Family.IPV6 else 4
    for table in tables.values():
        for rule in table.rules():
            for cond in (rule.source, rule.destination):
                if cond is None or (cond.networks and all(net[0] == version for net in cond.networks)):
                    continue
                for part in cond.value.split(","):  # the first bad part, as ipaddress reads it
                    try:
                        net = ipaddress.ip_network(part, strict=False)
                    except ValueError:
                        raise ParseError(rule.line, rule.text, f"bad address {part}") from None
                    if net.version != version:
                        raise ParseError(rule.line, rule.text, f"IPv{net.version} address in an IPv{version} table")
