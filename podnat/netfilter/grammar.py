"""One iptables rule's words -> a Rule: the options of `-A CHAIN ...` as iptables-save and
iptables-restore spell them (podnat.netfilter.parse reads the lines around them).

`parse_rule` is the plain reader of one rule, and the reference the bulk reader
(podnat.netfilter._bulk) is checked against. Any word podnat cannot read is a ParseError naming the
line and its text. Pure.
"""

from __future__ import annotations

import re
import shlex

from podnat.netfilter.addresses import address_cond
from podnat.netfilter.errors import ParseError
from podnat.netfilter.model import Cond, Counters, Match, Option, Rule, Target

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
COUNTER_PREFIX = re.compile(r"^\[(\d+):(\d+)\]\s+")
_OPTION_LIKE = re.compile(r"^-{1,2}[A-Za-z]")
COMMAND = re.compile(r"^(ip6?tables)(?:-(?:nft|legacy))?\s+(.*)$")


def tokenise(line: str, number: int, raw: str) -> list[str]:
    if '"' not in line and "'" not in line and "\\" not in line:
        return line.split()
    try:
        return shlex.split(line)
    except ValueError as exc:
        raise ParseError(number, raw, f"unbalanced quotes ({exc})") from None


def parse_rule(
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
    spec = rule_spec(raw)
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


def rule_spec(raw: str) -> str:
    line = raw.strip()
    if line.startswith("-A "):  # the common case, as below
        parts = line.split(None, 2)
        return parts[2] if len(parts) > 2 else ""
    line = COUNTER_PREFIX.sub("", line)
    command = COMMAND.match(line)
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
