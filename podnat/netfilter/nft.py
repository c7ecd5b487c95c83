"""Parse nftables rule sets into a Ruleset: `nft list ruleset`, `nft -j list ruleset`, `nft -f` scripts.

Istio 1.27+ can program native nftables (`inet istio-proxy-nat`, `-mangle`, `-raw`). podnat reads the
live listing (text or JSON) and the transaction scripts Istio feeds `nft -f`, and translates every rule
into the same Rule model iptables rules use, so traversal, paths and explain work unchanged:

- `meta l4proto tcp` -> protocol; `ip/ip6 saddr|daddr [!=] X | { a, b } | a-b` -> source/destination
  (comma-joined); `iifname/oifname [!=] X` -> in/out interface (`eth*` becomes iptables' `eth+`);
- `tcp/udp/sctp dport|sport [!=] N | a-b` -> Match tcp/udp (`--dport`), a set `{ a, b }` -> multiport;
- `meta skuid/skgid [!=] N` (also bare `skuid`) -> owner `--uid-owner/--gid-owner`; `meta mark [& M]`,
  `ct mark [& M]` -> mark/connmark `--mark V/M`; `ct state a,b` -> conntrack `--ctstate`;
- `counter packets N bytes M` -> Rule.counters; `accept/drop/return/reject/jump/goto`, `redirect to :P`
  (REDIRECT --to-ports), `dnat/snat to A:P`, `masquerade`, `meta mark set V` (MARK --set-xmark),
  `ct mark set meta mark` / `meta mark set ct mark` (CONNMARK --save-mark / --restore-mark),
  `ct mark set ct mark & A | B` (CONNMARK --set-xmark), `ct zone set N` (CT --zone), `notrack`;
  `tproxy [ip|ip6] to [A]:P [meta mark set V] accept` -> TPROXY --on-port/--on-ip/--tproxy-mark (what
  the iptables target does in one step).

Anything else becomes a Match whose module names the expression (`nft "meta hour ..."`): traversal
then says "undecided" at that rule, naming it, and never guesses. So does a rule with more than one
effect (`meta mark set 1 accept`), which the one-target model cannot express. Input that is not
nftables at all, or is malformed (a rule outside a chain, a jump to an undeclared chain, a test with no
value, unbalanced braces, invalid JSON), is a ParseError naming the line (for JSON: the item's 1-based
index in the `nftables` array, or the decoder's line).

Families: a Ruleset is one IP family. `ip` tables apply to IPv4 only, `ip6` tables to IPv6 only,
`inet` tables to both; other families (arp, bridge, netdev) are left out. In an `inet` table an `ip`
test carries an implicit "the packet is IPv4" (`ip daddr != 127.0.0.1` never matches an IPv6 packet,
negated or not), and likewise `ip6`, `tproxy ip`, `meta nfproto`. Choice: such a rule KEEPS its
position and text (so `istio-proxy-nat/istio-output:9` is the kernel's ninth rule in either family)
and gets, on the field it tests (destination otherwise), the condition "not an address of this view's
family" (`! ::/0` in the IPv6 view, `! 0.0.0.0/0` in the IPv4 view), which no packet of the view
satisfies; negated, so code reading a rule's destination (the DNS resolver) does not take it for one.

Tables are keyed by their nft name (`istio-proxy-nat`), so rule refs read `istio-proxy-nat/istio-output:9`;
an iptables-nft `table ip nat` is keyed `nat` and keeps iptables' `CHAIN:N` refs. Base chains become
`declared_base_chains` (hook, numeric priority, kind `nat` for `type nat`) with their policy (default
ACCEPT); regular chains have no policy. Pure: text in, Ruleset out.

Not modelled (each an undecided rule, never a wrong path): named sets and maps (`@name`, `vmap`),
service or user names (`tcp dport ssh`, `skgid java`), comparisons (`<`, `>`), `fib`, `limit`, `quota`,
payload writes. nft's `skuid`/`skgid` never match a packet without a socket, where iptables' negated
owner match does; podnat's owner evaluation follows iptables there (no flow of podnat's sends such a
packet). A `tproxy` without a following `accept` continues the chain in nft and is left undecided.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any

from podnat.netfilter.addresses import address_cond, split_host_port
from podnat.netfilter.errors import ParseError
from podnat.netfilter.model import (
    BaseChain,
    Chain,
    Cond,
    Counters,
    Family,
    IPNetwork,
    Match,
    Option,
    Rule,
    Ruleset,
    Table,
    Target,
)
from podnat.netfilter.parse import parse_ruleset

# Named chain priorities (nft(8), ip/ip6/inet families).
PRIORITIES = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}
HOOKS = ("prerouting", "input", "forward", "output", "postrouting", "ingress", "egress")
FAMILIES_FOR = {Family.IPV4: ("ip", "inet"), Family.IPV6: ("ip6", "inet")}
_ANY_ADDRESS = {Family.IPV4: "0.0.0.0/0", Family.IPV6: "::/0"}
_IP_FAMILY = {"ip": Family.IPV4, "ip6": Family.IPV6, "ipv4": Family.IPV4, "ipv6": Family.IPV6}
_ALL_FAMILIES = ("ip", "ip6", "inet", "arp", "bridge", "netdev")
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|#.*$|!=|==|[{},;]|[^\s{},;"]+')
_FULL = 0xFFFFFFFF

_META_KEYS = {"l4proto", "nfproto", "protocol", "skuid", "skgid", "mark", "iifname", "oifname", "iif", "oif"}
_BARE_META = {"skuid", "skgid", "mark", "iifname", "oifname", "iif", "oif"}
_VERDICTS = {"accept": "ACCEPT", "drop": "DROP", "return": "RETURN", "queue": "QUEUE", "reject": "REJECT"}
# Words that start a statement: where reading resumes after an expression podnat does not know.
_STATEMENTS = {
    "counter",
    "accept",
    "drop",
    "return",
    "continue",
    "queue",
    "reject",
    "jump",
    "goto",
    "redirect",
    "masquerade",
    "dnat",
    "snat",
    "tproxy",
    "log",
    "comment",
    "notrack",
}
_NAT_FLAGS = {"random", "persistent", "fully-random"}
_LOG_OPTIONS = {"prefix", "level", "group", "snaplen", "queue-threshold", "flags"}
_IPTABLES_NAMES = {"nat", "mangle", "raw", "filter", "security"}


class _Unrecognised(Exception):
    """An expression podnat does not model (becomes an unknown Match, not an error)."""


class _Malformed(Exception):
    """Input nft itself would reject (becomes a ParseError)."""


# --- drafts: what the readers collect before rules are translated ------------------------------------


@dataclass(frozen=True, slots=True)
class _RuleDraft:
    line: int
    raw: str  # the offending text for errors
    spec: str  # the rule text podnat keeps (counter values and handle comments removed)
    pieces: tuple[tuple[str, ...], ...]  # token lists: one for a text rule, one per JSON expression


@dataclass
class _ChainDraft:
    name: str
    line: int
    base: tuple[str, str, int] | None = None  # (type, hook, priority)
    policy: str | None = None
    rules: list[_RuleDraft] = field(default_factory=list)


@dataclass
class _TableDraft:
    family: str
    name: str
    line: int
    chains: dict[str, _ChainDraft] = field(default_factory=dict)
    warning: str | None = None


@dataclass
class _Drafts:
    tables: dict[tuple[str, str], _TableDraft] = field(default_factory=dict)
    counters: bool = False
    generator: str = "nft"

    def table(self, family: str, name: str, line: int, raw: str) -> _TableDraft:
        found = self.tables.get((family, name))
        if found is None:
            raise ParseError(line, raw, f"table {family} {name} is not declared")
        return found

    def chain(self, family: str, table: str, name: str, line: int, raw: str) -> _ChainDraft:
        found = self.table(family, table, line, raw).chains.get(name)
        if found is None:
            raise ParseError(line, raw, f"chain {name} is not declared in table {family} {table}")
        return found


# --- entry points ------------------------------------------------------------------------------------


def parse_nft(text: str, family: Family) -> Ruleset:
    """The `family` view of an nftables rule set: `nft list ruleset` text, its JSON, or an `nft -f` script."""
    drafts = _read_json(text) if text.lstrip().startswith("{") else _read_text(text)
    return _build(drafts, family)


def looks_like_nft(text: str) -> bool:
    """Whether `text` is nftables (listing, script or JSON) rather than iptables-save output."""
    head = text[:4096]  # the first line that says decides: not worth splitting a table of 100,000 rules
    lines = head.splitlines()[:-1] if len(head) < len(text) else head.splitlines()
    if not any(line.strip() and not line.strip().startswith("#") for line in lines):
        lines = text.splitlines()
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):
            return True
        word = line.split()[0]
        return word in (
            "table",
            "add",
            "insert",
            "create",
            "flush",
            "delete",
            "chain",
            "rule",
            "define",
            "include",
            "destroy",
            "replace",
        )
    return False


def detect_and_parse(text: str, family: Family | None = None) -> Ruleset:
    """Read iptables-save / ip6tables-save output, `nft list ruleset` text, or `nft -j list ruleset` JSON.

    For nftables `family` picks the view (an inet table serves both); by default IPv4, or IPv6 when the
    rule set has only ip6 tables. For iptables-save it is passed on (None: guessed from the addresses).
    """
    if not looks_like_nft(text):
        return parse_ruleset(text, family)
    if family is None:
        v4 = parse_nft(text, Family.IPV4)
        if v4.tables:
            return v4
        v6 = parse_nft(text, Family.IPV6)
        return v6 if v6.tables else v4
    return parse_nft(text, family)


# --- text: the listing and nft -f scripts ---------------------------------------------------------


def tokenise(line: str) -> list[str]:
    """nft words, quoted strings, braces, commas and semicolons; a `#` comment ends the line."""
    return [t for t in _TOKEN.findall(line) if not t.startswith("#")]


def _read_text(text: str) -> _Drafts:
    drafts = _Drafts(generator="nft list ruleset")
    scope: list[tuple[str, Any]] = []  # ("table", _TableDraft) / ("chain", _ChainDraft) / ("skip", depth)
    script = False
    warning: str | None = None
    lines = text.splitlines()
    for number, raw in enumerate(lines, start=1):
        stripped = raw.strip()
        if "\x00" in raw:
            raise ParseError(number, raw, "binary data, not nftables")
        if stripped.startswith("# Warning:"):
            warning = stripped[2:].strip()
        tokens = tokenise(raw)
        if not tokens:
            continue
        if scope and scope[-1][0] == "skip":
            depth = scope[-1][1] + tokens.count("{") - tokens.count("}")
            scope[-1] = ("skip", depth)
            if depth <= 0:
                scope.pop()
            continue
        if scope and scope[-1][0] == "chain":
            chain: _ChainDraft = scope[-1][1]
            if tokens == ["}"]:
                scope.pop()
            elif tokens[0] in ("type", "policy"):
                _base_spec(chain, tokens, number, raw)
            elif tokens[0] in ("comment", "devices", "flags"):
                pass
            elif tokens[0] == "}":
                raise ParseError(number, raw, "unexpected text after }")
            else:
                chain.rules.append(_text_rule(tokens, number, raw))
            continue
        if scope and scope[-1][0] == "table":
            table: _TableDraft = scope[-1][1]
            if tokens == ["}"]:
                scope.pop()
            elif tokens[0] == "chain" and len(tokens) >= 3 and tokens[2] == "{":
                name = _unquote(tokens[1])
                chain = table.chains.setdefault(name, _ChainDraft(name, number))
                if tokens[-1] != "}":
                    scope.append(("chain", chain))
                    continue
                body = tokens[3:-1]  # a one-line chain: `chain c { type ...; policy ...; RULE; }`
                for start, end in _statements(body):
                    words = body[start:end]
                    if words[0] in ("type", "policy"):
                        _base_spec(chain, words, number, raw)
                    else:
                        chain.rules.append(_text_rule(words, number, raw))
            elif (
                tokens[0] in ("set", "map", "flowtable", "counter", "quota", "ct", "limit", "secmark", "synproxy")
                and tokens[-1] == "{"
            ):
                scope.append(("skip", 1))
            elif tokens[0] in ("flags", "comment"):
                pass
            else:
                raise ParseError(number, raw, f"expected chain, set or }} in table {table.name}")
            continue
        if tokens[0] == "table" and tokens[-1] == "{":
            family, name = _family_and_name(tokens[1:-1], number, raw)
            table = drafts.tables.setdefault((family, name), _TableDraft(family, name, number))
            if warning and name in warning:
                table.warning = warning
            warning = None
            scope.append(("table", table))
            continue
        script = True
        _script_command(drafts, tokens, number, raw)
    if scope:
        kind, what = scope[-1]
        label = f"{kind} {what.name}" if kind in ("table", "chain") else "a block"
        raise ParseError(len(lines), lines[-1] if lines else "", f"{label} is not closed (truncated?)")
    if script:
        drafts.generator = "nft -f script"
    return drafts


def _family_and_name(words: list[str], number: int, raw: str) -> tuple[str, str]:
    if len(words) == 1:
        return "ip", _unquote(words[0])  # nft's default family
    if len(words) == 2 and words[0] in _ALL_FAMILIES:
        return words[0], _unquote(words[1])
    raise ParseError(number, raw, "expected [FAMILY] TABLE")


def _script_command(drafts: _Drafts, tokens: list[str], number: int, raw: str) -> None:
    """One `nft -f` command: add/create/flush/delete table or chain, add/insert rule."""
    if tokens[-1] == ";":
        tokens = tokens[:-1]
    verb = tokens[0]
    if verb in ("table", "chain", "rule"):
        verb, tokens = "add", ["add", *tokens]
    if verb not in ("add", "create", "insert", "flush", "delete", "destroy") or len(tokens) < 3:
        raise ParseError(number, raw, "not nftables (expected table, chain, rule or an nft -f command)")
    obj, rest = tokens[1], tokens[2:]
    if obj == "ruleset" and verb == "flush":
        drafts.tables.clear()
        return
    if obj == "table":
        family, name = _family_and_name([w for w in rest if w not in ("{", "}")], number, raw)
        if verb in ("add", "create"):
            drafts.tables.setdefault((family, name), _TableDraft(family, name, number))
        elif verb == "flush":
            for chain in drafts.table(family, name, number, raw).chains.values():
                chain.rules.clear()
        else:
            drafts.table(family, name, number, raw)
            del drafts.tables[(family, name)]
        return
    family, rest = (rest[0], rest[1:]) if rest[0] in _ALL_FAMILIES else ("ip", rest)
    if len(rest) < 2:
        raise ParseError(number, raw, f"{verb} {obj} needs a table and a chain")
    table_name, chain_name, rest = _unquote(rest[0]), _unquote(rest[1]), rest[2:]
    if obj == "chain":
        table = drafts.table(family, table_name, number, raw)
        if verb in ("add", "create"):
            chain = table.chains.setdefault(chain_name, _ChainDraft(chain_name, number))
            if rest:
                if rest[0] != "{" or rest[-1] != "}":
                    raise ParseError(number, raw, "expected { type ... hook ... priority ...; }")
                body = rest[1:-1]
                for start, end in _statements(body):
                    _base_spec(chain, body[start:end], number, raw)
        elif verb == "flush":
            drafts.chain(family, table_name, chain_name, number, raw).rules.clear()
        else:
            drafts.chain(family, table_name, chain_name, number, raw)
            del table.chains[chain_name]
        return
    if obj == "rule" and verb in ("add", "insert"):
        chain = drafts.chain(family, table_name, chain_name, number, raw)
        index: int | None = None
        if rest and rest[0] in ("index", "position", "handle"):
            if rest[0] != "index" or len(rest) < 2 or not rest[1].isdigit():
                raise ParseError(
                    number,
                    raw,
                    f"{rest[0]} {rest[1] if len(rest) > 1 else ''}: only `index N` "
                    "positions are supported (podnat does not track rule handles)",
                )
            index, rest = int(rest[1]), rest[2:]
        if not rest:
            raise ParseError(number, raw, "a rule needs at least one expression")
        draft = _text_rule(rest, number, raw)
        if index is None:
            position = 0 if verb == "insert" else len(chain.rules)
        else:
            if index >= len(chain.rules):
                raise ParseError(number, raw, f"index {index} out of range ({len(chain.rules)} rules)")
            position = index if verb == "insert" else index + 1
        chain.rules.insert(position, draft)
        return
    raise ParseError(number, raw, f"unsupported nft command {verb} {obj}")


def _statements(tokens: list[str]) -> list[tuple[int, int]]:
    """Spans of `;`-separated statements."""
    spans, start = [], 0
    for i, token in enumerate([*tokens, ";"]):
        if token == ";":
            if i > start:
                spans.append((start, i))
            start = i + 1
    return spans


def _base_spec(chain: _ChainDraft, tokens: list[str], number: int, raw: str) -> None:
    """`type T hook H [device D] priority P;` and/or `policy accept|drop;`."""
    for start, end in _statements(tokens):
        words = tokens[start:end]
        if words[0] == "policy":
            if len(words) != 2 or words[1] not in ("accept", "drop"):
                raise ParseError(number, raw, "policy must be accept or drop")
            chain.policy = words[1].upper()
            continue
        if words[0] in ("comment", "devices", "flags"):
            continue
        if words[0] != "type" or len(words) < 6 or words[2] != "hook":
            raise ParseError(number, raw, "expected type TYPE hook HOOK priority PRIORITY")
        kind, hook = words[1], words[3]
        if kind not in ("filter", "nat", "route") or hook not in HOOKS:
            raise ParseError(number, raw, f"unknown chain type {kind} or hook {hook}")
        rest = words[4:]
        if rest[0] == "device":
            rest = rest[2:]
        if not rest or rest[0] != "priority":
            raise ParseError(number, raw, "expected priority")
        chain.base = (kind, hook, _priority(rest[1:], number, raw))
        if chain.policy is None:
            chain.policy = "ACCEPT"


def _priority(words: list[str], number: int, raw: str) -> int:
    """`-100`, `dstnat`, `mangle - 5`, `filter+10`."""
    text = "".join(words)
    found = re.fullmatch(r"([a-z]+|-?\d+)(?:([+-])(\d+))?", text)
    if found is None:
        raise ParseError(number, raw, f"bad priority {text}")
    base, sign, offset = found.groups()
    if base in PRIORITIES:
        value = PRIORITIES[base]
    elif base.lstrip("-").isdigit():
        value = int(base)
    else:
        raise ParseError(number, raw, f"unknown priority name {base}")
    return value + (int(offset) if sign == "+" else -int(offset) if sign else 0)


def _text_rule(tokens: list[str], number: int, raw: str) -> _RuleDraft:
    if tokens[-1] == ";":
        tokens = tokens[:-1]
    if tokens.count("{") != tokens.count("}"):
        raise ParseError(number, raw, "unbalanced braces")
    return _RuleDraft(number, raw.strip(), _spec(tokens), (tuple(tokens),))


def _spec(tokens: list[str] | tuple[str, ...]) -> str:
    """The rule text without counter values (`counter packets 3 bytes 180` -> `counter`), spaced like nft."""
    out = ""
    depth = 0
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "counter" and i + 1 < len(tokens) and tokens[i + 1] == "packets":
            i += 4  # keep the word, drop `packets N bytes M`
        depth += (token == "{") - (token == "}")
        if token == ",":
            out += ", " if depth else ","
        elif out and not out.endswith((",", " ")):
            out += " " + token
        else:
            out += token
        i += 1
    return out


def _unquote(word: str) -> str:
    return word[1:-1] if len(word) >= 2 and word[0] == word[-1] == '"' else word


# --- JSON: nft -j list ruleset -------------------------------------------------------------------


def _read_json(text: str) -> _Drafts:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        lines = text.splitlines()
        shown = lines[exc.lineno - 1] if 0 < exc.lineno <= len(lines) else text[:120]
        raise ParseError(exc.lineno, shown, f"invalid JSON ({exc.msg}, column {exc.colno})") from None
    items = document.get("nftables") if isinstance(document, dict) else None
    if not isinstance(items, list):
        raise ParseError(1, text[:120], 'not nft -j output (expected {"nftables": [...]})')
    drafts = _Drafts(generator="nft -j list ruleset")
    for number, item in enumerate(items, start=1):
        raw = json.dumps(item)
        if not isinstance(item, dict) or len(item) != 1:
            raise ParseError(number, raw, "expected one object per nftables item")
        kind, body = next(iter(item.items()))
        if not isinstance(body, dict):
            raise ParseError(number, raw, f"{kind} is not an object")
        try:
            if kind == "metainfo":
                drafts.generator = f"nft -j list ruleset (nftables {body.get('version', '?')})"
            elif kind == "table":
                family, name = str(body["family"]), str(body["name"])
                drafts.tables.setdefault((family, name), _TableDraft(family, name, number))
            elif kind == "chain":
                _json_chain(drafts, body, number, raw)
            elif kind == "rule":
                chain = drafts.chain(str(body["family"]), str(body["table"]), str(body["chain"]), number, raw)
                exprs = body["expr"]
                if not isinstance(exprs, list):
                    raise ParseError(number, raw, "rule expr is not a list")
                pieces = tuple(_json_expr(expr) for expr in exprs)
                spec = _spec([t for piece in pieces for t in piece])
                chain.rules.append(_RuleDraft(number, raw, spec, pieces))
            elif kind in ("add", "insert", "create", "delete", "flush", "replace"):
                raise ParseError(number, raw, "nft JSON commands are not supported: pass nft -j list ruleset")
        except KeyError as exc:
            raise ParseError(number, raw, f"{kind} lacks {exc.args[0]!r}") from None
    return drafts


def _json_chain(drafts: _Drafts, body: dict[str, Any], number: int, raw: str) -> None:
    table = drafts.table(str(body["family"]), str(body["table"]), number, raw)
    name = str(body["name"])
    chain = table.chains.setdefault(name, _ChainDraft(name, number))
    if "hook" in body:
        kind, hook, prio = str(body.get("type", "filter")), str(body["hook"]), body.get("prio", 0)
        if hook not in HOOKS or not isinstance(prio, int):
            raise ParseError(number, raw, f"bad hook {hook} or priority {prio}")
        chain.base = (kind, hook, prio)
        chain.policy = str(body.get("policy", "accept")).upper()


def _json_expr(expr: Any) -> tuple[str, ...]:
    """One JSON expression as nft listing words; an unknown one as a single opaque word."""
    try:
        return tuple(tokenise(_render_statement(expr)))
    except (_Unrecognised, KeyError, TypeError, ValueError, AttributeError):
        return (f"json:{json.dumps(expr, separators=(',', ':'))}",)


def _render_statement(expr: Any) -> str:
    if not isinstance(expr, dict) or len(expr) != 1:
        raise _Unrecognised(str(expr))
    kind, body = next(iter(expr.items()))
    if kind == "match":
        left = _render_value(body["left"])
        op = {"==": "== " if " & " in left else "", "!=": "!= ", "in": ""}.get(body["op"])
        if op is None:
            raise _Unrecognised(body["op"])
        return f"{left} {op}{_render_value(body['right'], left)}"
    if kind == "counter":
        if isinstance(body, dict) and "packets" in body:
            return f"counter packets {int(body['packets'])} bytes {int(body['bytes'])}"
        raise _Unrecognised("named counter")
    if kind in ("accept", "drop", "return", "continue", "queue", "notrack") and not body:
        return str(kind)
    if kind == "reject":
        return "reject"
    if kind in ("jump", "goto"):
        return f"{kind} {body['target']!s}"
    if kind in ("redirect", "masquerade"):
        port = f" to :{_render_value(body['port'])}" if body and "port" in body else ""
        return f"{kind}{port}"
    if kind in ("dnat", "snat", "tproxy"):
        family = f" {body['family']}" if "family" in body else ""
        addr = _render_value(body["addr"]) if "addr" in body else ""
        if "port" in body:
            addr = f"[{addr}]" if ":" in addr else addr
            addr = f"{addr}:{_render_value(body['port'])}"
        return f"{kind}{family} to {addr}"
    if kind == "mangle":
        key = _render_value(body["key"])
        return f"{key} set {_render_value(body['value'], key)}"
    if kind == "log":
        return "log"
    raise _Unrecognised(kind)


def _render_value(value: Any, left: str = "") -> str:
    if isinstance(value, bool):
        raise _Unrecognised(str(value))
    if isinstance(value, int):
        return f"0x{value:08x}" if left.split(" & ", 1)[0].endswith("mark") else str(value)
    if isinstance(value, str):
        return f'"{value}"' if left.endswith("ifname") else value
    if isinstance(value, list):
        return ",".join(_render_value(v, left) for v in value)
    if not isinstance(value, dict) or len(value) != 1:
        raise _Unrecognised(str(value))
    kind, body = next(iter(value.items()))
    if kind == "meta":
        key = body["key"]
        return key if key in ("iifname", "oifname") else f"meta {key}"
    if kind == "payload":
        return f"{body['protocol']} {body['field']}"
    if kind == "ct" and "dir" not in body:
        return f"ct {body['key']}"
    if kind == "prefix":
        return f"{body['addr']}/{body['len']}"
    if kind == "range":
        low, high = body
        return f"{_render_value(low, left)}-{_render_value(high, left)}"
    if kind == "set":
        items = body if isinstance(body, list) else [body]
        return "{ " + ", ".join(_render_value(v, left) for v in items) + " }"
    if kind in ("&", "|") and len(body) == 2:
        inner = _render_value(body[0], left)
        return f"{inner} {kind} {_render_value(body[1], left or inner)}"
    raise _Unrecognised(kind)


# --- translation: drafts -> Ruleset ------------------------------------------------------------


def _build(drafts: _Drafts, family: Family) -> Ruleset:
    tables: dict[str, Table] = {}
    bases: list[BaseChain] = []
    warnings: list[str] = []
    counters = False
    applicable = [t for t in drafts.tables.values() if t.family in FAMILIES_FOR[family]]
    names = [t.name for t in applicable]
    for draft in applicable:
        key = draft.name if names.count(draft.name) == 1 else f"{draft.family}/{draft.name}"
        chains: dict[str, Chain] = {}
        for chain in draft.chains.values():
            rules: list[Rule] = []
            for position, rule_draft in enumerate(chain.rules, start=1):
                rule = _translate(rule_draft, key, chain.name, position, table_draft=draft, family=family)
                counters = counters or rule.counters is not None
                rules.append(rule)
            chains[chain.name] = Chain(chain.name, chain.policy, tuple(rules), line=chain.line)
            if chain.base is not None:
                kind, hook, priority = chain.base
                kind = "nat" if kind == "nat" else "filter"
                bases.append(BaseChain(key, chain.name, hook.upper(), priority, kind))
        tables[key] = Table(key, chains)
        if draft.warning:
            warnings.append(draft.warning)
    legacy_style = [f"{t.family} {t.name}" for t in applicable if t.name in _IPTABLES_NAMES]
    native = [f"{t.family} {t.name}" for t in applicable if t.name not in _IPTABLES_NAMES]
    if legacy_style and native:
        warnings.append(
            f"both iptables-nft tables ({', '.join(legacy_style)}) and native nftables tables "
            f"({', '.join(native)}) are loaded: the kernel runs both"
        )
    return Ruleset(family, tables, counters, drafts.generator, tuple(warnings), tuple(bases))


@dataclass
class _RuleParts:
    """What one nft rule says, in the model's terms, while it is being read."""

    protocol: Cond | None = None
    source: Cond | None = None
    destination: Cond | None = None
    in_iface: Cond | None = None
    out_iface: Cond | None = None
    matches: list[Match] = field(default_factory=list)
    effects: list[Target] = field(default_factory=list)  # MARK, CONNMARK, CT, LOG, partial TPROXY
    verdict: Target | None = None
    counters: Counters | None = None
    families: set[Family] = field(default_factory=set)  # the packet must be of these families
    family_field: str = "destination"
    unknown: list[str] = field(default_factory=list)


def _translate(
    draft: _RuleDraft, table: str, chain: str, position: int, *, table_draft: _TableDraft, family: Family
) -> Rule:
    parts = _RuleParts()
    if table_draft.family in ("ip", "ip6"):
        parts.families.add(_IP_FAMILY[table_draft.family])
    for piece in draft.pieces:
        i = 0
        while i < len(piece):
            try:
                i = _expression(parts, piece, i, table=table_draft, family=family)
            except _Unrecognised:
                end = i + 1
                while end < len(piece) and piece[end] not in _STATEMENTS:
                    end += 1
                parts.unknown.append(_spec(piece[i:end]))
                i = end
            except _Malformed as exc:
                raise ParseError(draft.line, draft.raw, str(exc)) from None
    target = _target(parts)
    matches = list(parts.matches)
    matches += [Match(f"nft {text!r}", ()) for text in parts.unknown]
    source, destination = parts.source, parts.destination
    if parts.families and parts.families != {family}:
        impossible = address_cond(_ANY_ADDRESS[family], negated=True)
        if parts.family_field == "source":
            source = impossible
        else:
            destination = impossible
    return Rule(
        table=table,
        chain=chain,
        position=position,
        spec=draft.spec,
        line=draft.line,
        protocol=parts.protocol,
        source=source,
        destination=destination,
        in_iface=parts.in_iface,
        out_iface=parts.out_iface,
        matches=tuple(matches),
        target=target,
        counters=parts.counters,
    )


def _target(parts: _RuleParts) -> Target | None:
    """One target from the rule's statements, or an unknown match when nft does more than one thing."""
    effects = [e for e in parts.effects if e.name != "LOG"] or parts.effects[:1]
    tproxy = [e for e in effects if e.name == "TPROXY"]
    if tproxy:
        marks = [e for e in effects if e.name == "MARK"]
        others = [e for e in effects if e.name not in ("TPROXY", "MARK")]
        mark = marks[0].get("set-xmark") if len(marks) == 1 else None
        if (
            parts.verdict is None
            or parts.verdict.name != "ACCEPT"
            or others
            or len(marks) > 1
            or (marks and mark is None)
            or len(tproxy) > 1
        ):
            parts.unknown.append("tproxy without a single accept (nft continues the chain)")
            return parts.verdict
        options = tproxy[0].options + ((Option("tproxy-mark", mark.args),) if mark else ())
        return Target("TPROXY", options)
    if effects and parts.verdict is not None:
        parts.unknown.append(f"{effects[0].name} and {parts.verdict.name} in one rule")
        return parts.verdict
    if len(effects) > 1:
        parts.unknown.append(" and ".join(e.name for e in effects) + " in one rule")
        return effects[-1]
    return effects[0] if effects else parts.verdict


def _expression(parts: _RuleParts, tokens: tuple[str, ...], i: int, *, table: _TableDraft, family: Family) -> int:
    """Read one test or statement at `tokens[i]`; return where the next one starts."""
    word = tokens[i]
    if word in _STATEMENTS:
        return _statement(parts, tokens, i, table)
    selector, j = _selector(tokens, i)
    if j < len(tokens) and tokens[j] == "set":
        return _set_statement(parts, selector, tokens, j + 1)
    mask: int | None = None
    if j < len(tokens) and tokens[j] in ("&", "and"):
        mask = _number(tokens, j + 1)
        j += 2
    negated = False
    if j < len(tokens) and tokens[j] in ("==", "eq", "!=", "ne"):
        negated = tokens[j] in ("!=", "ne")
        j += 1
    elif j < len(tokens) and tokens[j] in ("<", ">", "<=", ">=", "lt", "gt", "le", "ge"):
        raise _Unrecognised(tokens[j])
    values, is_set, j = _values(tokens, j, selector)
    _test(parts, selector, mask=mask, negated=negated, values=values, is_set=is_set, family=family)
    return j


def _selector(tokens: tuple[str, ...], i: int) -> tuple[str, int]:
    word = tokens[i]
    following = tokens[i + 1] if i + 1 < len(tokens) else ""
    if word == "meta" and following in _META_KEYS:
        return f"meta {following}", i + 2
    if word in _BARE_META:
        return f"meta {word}", i + 1
    if word in ("ip", "ip6") and following in ("saddr", "daddr"):
        return f"{word} {following}", i + 2
    if (word, following) in (("ip", "protocol"), ("ip6", "nexthdr")):
        return f"{word} {following}", i + 2
    if word in ("tcp", "udp", "sctp") and following in ("dport", "sport"):
        return f"{word} {following}", i + 2
    if word == "ct" and following in ("state", "mark", "zone"):
        return f"ct {following}", i + 2
    raise _Unrecognised(word)


def _values(tokens: tuple[str, ...], j: int, selector: str) -> tuple[list[str], bool, int]:
    """`V`, `V,W` (flag lists) or `{ V, W }`."""
    if j >= len(tokens) or tokens[j] in _STATEMENTS or tokens[j] in ("}", ",", ";"):
        raise _Malformed(f"{selector} needs a value")
    if tokens[j] == "{":
        try:
            end = tokens.index("}", j)
        except ValueError:
            raise _Malformed("unbalanced braces") from None
        values = [_unquote(t) for t in tokens[j + 1 : end] if t != ","]
        if not values:
            raise _Malformed(f"{selector}: empty set")
        return values, True, end + 1
    values = [_unquote(tokens[j])]
    j += 1
    while j + 1 < len(tokens) and tokens[j] == ",":
        values.append(_unquote(tokens[j + 1]))
        j += 2
    return values, False, j


def _test(
    parts: _RuleParts,
    selector: str,
    *,
    mask: int | None,
    negated: bool,
    values: list[str],
    is_set: bool,
    family: Family,
) -> None:
    head, _, key = selector.partition(" ")
    if any(v.startswith("@") for v in values):
        raise _Unrecognised(f"named set {values[0]}")
    if selector in ("meta l4proto", "ip protocol", "ip6 nexthdr"):
        if head in ("ip", "ip6"):
            parts.families.add(_IP_FAMILY[head])
        if mask is not None or len(values) != 1:
            raise _Unrecognised(selector)
        cond = Cond(values[0], negated)
        if parts.protocol is not None and parts.protocol != cond:
            raise _Unrecognised(f"{selector} twice")
        parts.protocol = cond
    elif selector in ("meta nfproto", "meta protocol"):
        if mask is not None or len(values) != 1 or values[0] not in _IP_FAMILY:
            raise _Unrecognised(selector)
        wanted = _IP_FAMILY[values[0]]
        parts.families.add(wanted if not negated else next(f for f in Family if f is not wanted))
    elif head in ("ip", "ip6"):
        _address_test(parts, head, key, mask=mask, negated=negated, values=values, family=family)
    elif key in ("iifname", "oifname", "iif", "oif"):
        if mask is not None or len(values) != 1:
            raise _Unrecognised(f"{selector} with a set")
        name = values[0][:-1] + "+" if values[0].endswith("*") else values[0]
        attr = "in_iface" if key.startswith("i") else "out_iface"
        if getattr(parts, attr) is not None:
            raise _Unrecognised(f"{selector} twice")
        setattr(parts, attr, Cond(name, negated))
    elif head in ("tcp", "udp", "sctp"):
        if mask is not None:
            raise _Unrecognised(f"{selector} with a mask")
        ports = [_port(v) for v in values]
        if is_set or len(ports) > 1:
            if parts.protocol is None:
                parts.protocol = Cond(head)
            elif parts.protocol != Cond(head):
                parts.matches.append(Match(head, ()))
            parts.matches.append(Match("multiport", (Option(f"{key}s", (",".join(ports),), negated),)))
        else:
            parts.matches.append(Match(head, (Option(key, (ports[0],), negated),)))
    elif key in ("skuid", "skgid"):
        if mask is not None or len(values) != 1:
            raise _Unrecognised(f"{selector} with a set or mask")
        name = "uid-owner" if key == "skuid" else "gid-owner"
        parts.matches.append(Match("owner", (Option(name, (values[0],), negated),)))
    elif key == "mark":
        if len(values) != 1:
            raise _Unrecognised(f"{selector} with a set")
        value = _int(values[0])
        spec = f"0x{value:x}" + (f"/0x{mask:x}" if mask is not None else "")
        module = "connmark" if head == "ct" else "mark"
        parts.matches.append(Match(module, (Option("mark", (spec,), negated),)))
    elif selector == "ct state":
        if mask is not None:
            raise _Unrecognised(f"{selector} with a mask")
        states = ",".join(v.upper() for v in values)
        parts.matches.append(Match("conntrack", (Option("ctstate", (states,), negated),)))
    else:
        raise _Unrecognised(selector)


def _address_test(
    parts: _RuleParts, head: str, key: str, *, mask: int | None, negated: bool, values: list[str], family: Family
) -> None:
    if mask is not None:
        raise _Unrecognised(f"{head} {key} with a mask")
    version = 4 if head == "ip" else 6
    networks: list[str] = []
    for value in values:
        try:
            found = _networks(value)
        except (ValueError, TypeError):
            raise _Unrecognised(f"{head} {key} {value}") from None
        if any(n.version != version for n in found):
            raise _Malformed(f"IPv{found[0].version} address {value} in an {head} test")
        networks += [str(n) for n in found]
    wanted = _IP_FAMILY[head]
    parts.families.add(wanted)
    attr = "source" if key == "saddr" else "destination"
    if wanted is not family:
        parts.family_field = attr
        return
    if getattr(parts, attr) is not None:
        raise _Unrecognised(f"{head} {key} twice")
    setattr(parts, attr, address_cond(",".join(networks), negated))


def _networks(value: str) -> list[IPNetwork]:
    """`10.0.0.0/8`, `::1`, or a range `10.0.0.1-10.0.0.9` as the networks that cover it."""
    if "-" not in value or "/" in value:
        return [ipaddress.ip_network(value, strict=False)]
    low, high = (ipaddress.ip_address(v) for v in value.split("-", 1))
    if isinstance(low, ipaddress.IPv4Address) and isinstance(high, ipaddress.IPv4Address):
        return list(ipaddress.summarize_address_range(low, high))
    if isinstance(low, ipaddress.IPv6Address) and isinstance(high, ipaddress.IPv6Address):
        return list(ipaddress.summarize_address_range(low, high))
    raise ValueError(f"mixed families in {value}")


def _port(value: str) -> str:
    low, _, high = value.partition("-")
    if not low.isdigit() or (high and not high.isdigit()):
        raise _Unrecognised(f"port {value}")
    return f"{low}:{high}" if high else low


def _int(value: str) -> int:
    try:
        return int(value, 0)
    except ValueError:
        try:
            return int(value)
        except ValueError:
            raise _Unrecognised(value) from None


def _number(tokens: tuple[str, ...], j: int) -> int:
    if j >= len(tokens):
        raise _Malformed("a mask needs a value")
    return _int(tokens[j])


def _set_statement(parts: _RuleParts, selector: str, tokens: tuple[str, ...], j: int) -> int:
    """`meta mark set V`, `ct mark set V`, `ct zone set N`: V a number, the other mark, or `R & A | B`."""
    end = j
    while end < len(tokens) and tokens[end] not in _STATEMENTS:
        end += 1
    words = list(tokens[j:end])
    if not words:
        raise _Malformed(f"{selector} set needs a value")
    if selector == "ct zone":
        if len(words) != 1 or not words[0].isdigit():
            raise _Unrecognised("ct zone set")
        parts.effects.append(Target("CT", (Option("zone", (words[0],)),)))
        return end
    if selector not in ("meta mark", "ct mark"):
        raise _Unrecognised(f"{selector} set")
    target = "MARK" if selector == "meta mark" else "CONNMARK"
    source, rest = _mark_source(words)
    and_mask, or_value = _FULL, 0
    while rest:
        if len(rest) < 2 or rest[0] not in ("&", "and", "|", "or"):
            raise _Unrecognised(" ".join(words))
        value = _int(rest[1])
        if rest[0] in ("&", "and"):
            and_mask &= value
            or_value &= value
        else:
            or_value |= value
        rest = rest[2:]
    if source is None:
        value = (_int(words[0]) & and_mask) | or_value
        parts.effects.append(Target(target, (Option("set-xmark", (f"0x{value:x}/0xffffffff",)),)))
    elif source == selector:
        # new = (old & A) | B == (old & ~mask) ^ B with mask = ~(A & ~B)
        mask = ~(and_mask & ~or_value) & _FULL
        parts.effects.append(Target(target, (Option("set-xmark", (f"0x{or_value:x}/0x{mask:x}",)),)))
    elif or_value == 0:
        verb = "restore-mark" if target == "MARK" else "save-mark"
        nfmask = and_mask if verb == "save-mark" else _FULL
        ctmask = and_mask if verb == "restore-mark" else _FULL
        parts.effects.append(
            Target(
                "CONNMARK",
                (Option(verb, ()), Option("nfmask", (f"0x{nfmask:x}",)), Option("ctmask", (f"0x{ctmask:x}",))),
            )
        )
    else:
        raise _Unrecognised(" ".join(words))
    return end


def _mark_source(words: list[str]) -> tuple[str | None, list[str]]:
    if words[0] == "mark":
        return "meta mark", words[1:]
    if words[:2] in (["meta", "mark"], ["ct", "mark"]):
        return f"{words[0]} mark", words[2:]
    _int(words[0])
    return None, words[1:]


def _statement(parts: _RuleParts, tokens: tuple[str, ...], i: int, table: _TableDraft) -> int:
    word = tokens[i]
    nxt = tokens[i + 1] if i + 1 < len(tokens) else None
    if word == "counter":
        if nxt == "packets":
            if i + 4 >= len(tokens) or tokens[i + 3] != "bytes":
                raise _Malformed("counter packets N bytes M")
            try:
                parts.counters = Counters(int(tokens[i + 2]), int(tokens[i + 4]))
            except ValueError:
                raise _Malformed("counter values must be numbers") from None
            return i + 5
        if nxt == "name":
            raise _Unrecognised("named counter")
        parts.counters = parts.counters or Counters(0, 0)
        return i + 1
    if word == "comment":
        if nxt is None:
            raise _Malformed("comment needs a string")
        return i + 2
    if word == "continue":
        return i + 1
    if word in _VERDICTS:
        _verdict(parts, Target(_VERDICTS[word]))
        j = i + 1
        if word == "reject" and nxt == "with":
            j = i + 4 if i + 3 < len(tokens) and tokens[i + 2] in ("icmp", "icmpv6", "icmpx") else i + 3
        return j
    if word in ("jump", "goto"):
        if nxt is None:
            raise _Malformed(f"{word} needs a chain")
        name = _unquote(nxt)
        if name not in table.chains:
            raise _Malformed(f"{word} to chain {name}, not declared in table {table.family} {table.name}")
        _verdict(parts, Target(name, goto=word == "goto"))
        return i + 2
    if word == "notrack":
        parts.effects.append(Target("CT", (Option("notrack", ()),)))
        return i + 1
    if word == "log":
        j = i + 1
        while j < len(tokens) and tokens[j] in _LOG_OPTIONS:
            j += 2
        parts.effects.append(Target("LOG"))
        return j
    if word in ("redirect", "masquerade", "dnat", "snat", "tproxy"):
        return _nat(parts, tokens, i)
    raise _Unrecognised(word)


def _verdict(parts: _RuleParts, target: Target) -> None:
    if parts.verdict is not None:
        raise _Malformed("two verdicts in one rule")
    parts.verdict = target


def _nat(parts: _RuleParts, tokens: tuple[str, ...], i: int) -> int:
    word = tokens[i]
    j = i + 1
    nat_family: str | None = None
    if j < len(tokens) and tokens[j] in ("ip", "ip6"):
        nat_family = tokens[j]
        j += 1
    address: str | None = None
    port: str | None = None
    if j < len(tokens) and tokens[j] == "to":
        if j + 1 >= len(tokens):
            raise _Malformed(f"{word} to needs an address or :port")
        address, port = _address_port(tokens[j + 1], word)
        j += 2
    while j < len(tokens) and (tokens[j] in _NAT_FLAGS or tokens[j] == ","):
        j += 1
    if nat_family is not None:
        parts.families.add(_IP_FAMILY[nat_family])
    if word in ("redirect", "masquerade"):
        if address:
            raise _Malformed(f"{word} takes only a port")
        name = "REDIRECT" if word == "redirect" else "MASQUERADE"
        _verdict(parts, Target(name, (Option("to-ports", (port,)),) if port else ()))
    elif word in ("dnat", "snat"):
        if address is None:
            raise _Unrecognised(f"{word} without to")
        host = f"[{address}]" if ":" in address and port else address
        spec = f"{host}:{port}" if port else address
        option = "to-destination" if word == "dnat" else "to-source"
        _verdict(parts, Target(word.upper(), (Option(option, (spec,)),)))
    else:
        if port is None:
            raise _Unrecognised("tproxy without a port")
        if address is None:
            address = "::" if nat_family == "ip6" else "0.0.0.0"
        parts.effects.append(Target("TPROXY", (Option("on-port", (port,)), Option("on-ip", (address,)))))
    return j


def _address_port(spec: str, word: str) -> tuple[str | None, str | None]:
    """`:15001`, `15001` (redirect), `10.0.0.1`, `10.0.0.1:80`, `[fd00::1]:80`, `fd00::1`."""
    if spec.startswith(":"):
        return None, _port_spec(spec[1:])
    if word in ("redirect", "masquerade") and spec.replace("-", "").isdigit():
        return None, _port_spec(spec)
    host, port = split_host_port(spec)
    return host, _port_spec(port) if port is not None else None


def _port_spec(text: str) -> str:
    if not text.replace("-", "").isdigit():
        raise _Unrecognised(f"port {text}")
    return text
