"""Restore input (what istio-iptables feeds `iptables-restore`) -> the text `iptables-save` prints.

Stable API:
  normalise_restore(text) -> str     one family's restore input (or `iptables -t T ...` commands)
                                     -> live `iptables-save` text
  canonical_rule(tokens) -> str      one rule's options (after `-A CHAIN`) in save's canonical form
  TABLE_ORDER, BUILTIN_CHAINS        table order of an iptables-nft dump; each table's built-ins

What the kernel does to a rule on the way in and back out (docs/istio-capture.md, "restore input vs live
iptables-save", checked against kernel-save/): the address/interface/protocol options come first
in the order -s -d -i -o -p, then each match module in the order it was loaded (`--dport` after
`-p tcp` loads an implicit `-m tcp`), then the target. Addresses become networks (`127.0.0.1/8` ->
`127.0.0.0/8`, a bare address gets /32 or /128); marks print in hex; targets print every option
(`--to-port` -> `--to-ports`, `--set-mark` -> `--set-xmark V/0xffffffff`, CONNMARK's masks, TPROXY's
`--on-ip`). Save groups rules by chain: built-in chains first in hook order, user chains
alphabetically; inside a chain the order is kept (`-I CHAIN N` inserts at position N).
Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import itertools
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

TABLE_ORDER: tuple[str, ...] = ("mangle", "raw", "nat", "filter")
BUILTIN_CHAINS: dict[str, tuple[str, ...]] = {
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
}
_HEADER_OPTIONS = ("-s", "-d", "-i", "-o", "-p")
_LONG_HEADER = {
    "--source": "-s",
    "--src": "-s",
    "--destination": "-d",
    "--dst": "-d",
    "--in-interface": "-i",
    "--out-interface": "-o",
    "--protocol": "-p",
    "--jump": "-j",
    "--match": "-m",
}
# options a protocol match module owns; anything else after it starts an implicit module
_PROTO_OPTIONS = {
    "tcp": {
        "--dport",
        "--sport",
        "--destination-port",
        "--source-port",
        "--tcp-flags",
        "--syn",
        "--tcp-option",
    },
    "udp": {"--dport", "--sport", "--destination-port", "--source-port"},
}
_OPTION_ALIASES = {
    "--destination-port": "--dport",
    "--source-port": "--sport",
    "--destination-ports": "--dports",
    "--source-ports": "--sports",
}
_FULL_MASK = 0xFFFFFFFF


class NormaliseError(ValueError):
    """A line of restore input podnat cannot read; carries the line number and text."""

    def __init__(self, line_no: int, line: str, why: str) -> None:
        super().__init__(f"line {line_no}: {why}: {line!r}")
        self.line_no = line_no
        self.line = line


@dataclass(slots=True)
class _Table:
    """One table being built: declared user chains and each chain's rules in order."""

    name: str
    user_chains: list[str] = field(default_factory=list)
    rules: dict[str, list[str]] = field(default_factory=dict)

    def chain(self, name: str) -> list[str]:
        """The rule list of a chain, declaring a user chain on first use."""
        if name not in self.rules:
            self.rules[name] = []
            if name not in BUILTIN_CHAINS.get(self.name, ()):
                self.user_chains.append(name)
        return self.rules[name]


def format_address(text: str) -> str:
    """An address or network as iptables-save prints it: the network, with its prefix length."""
    net = ipaddress.ip_network(text, strict=False)
    if isinstance(net, ipaddress.IPv6Network):
        return f"{_format_v6(net.network_address)}/{net.prefixlen}"
    return f"{net.network_address}/{net.prefixlen}"


def _format_v6(addr: ipaddress.IPv6Address) -> str:
    """inet_ntop's form: `::a.b.c.d` for IPv4-compatible and `::ffff:a.b.c.d` for mapped addresses."""
    words = [int.from_bytes(addr.packed[i : i + 2], "big") for i in range(0, 16, 2)]
    tail = ipaddress.IPv4Address(addr.packed[12:])
    if words[:6] == [0] * 6 and words[6] != 0:
        return f"::{tail}"
    if words[:5] == [0] * 5 and words[5] == 0xFFFF:
        return f"::ffff:{tail}"
    return addr.compressed


def _mark(value: str) -> tuple[int, int]:
    """`1337`, `0x539`, `1337/0xffffffff` -> (value, mask)."""
    val, _, mask = value.partition("/")
    return int(val, 0), int(mask, 0) if mask else _FULL_MASK


def _mark_text(value: str) -> str:
    """A mark match value as save prints it: hex, the mask only when not all ones."""
    val, mask = _mark(value)
    return f"{val:#x}" if mask == _FULL_MASK else f"{val:#x}/{mask:#x}"


@dataclass(slots=True)
class _Module:
    """A match module and its options, in the order given."""

    name: str
    options: list[str] = field(default_factory=list)


def canonical_rule(tokens: Sequence[str], *, ipv6: bool = False) -> str:
    """The options of one rule (everything after `-A CHAIN`) in iptables-save's canonical order."""
    header: dict[str, str] = {}
    modules: list[_Module] = []
    target: list[str] = []
    negate = False
    current: _Module | None = None
    i = 0
    while i < len(tokens):
        tok = _LONG_HEADER.get(tokens[i], tokens[i])
        if tok == "!":
            negate = True
            i += 1
            continue
        if tok in _HEADER_OPTIONS:
            value = tokens[i + 1]
            if tok in ("-s", "-d"):
                value = format_address(value)
            header[tok] = ("! " if negate else "") + f"{tok} {value}"
            negate = False
            i += 2
            continue
        if tok == "-m":
            current = _Module(tokens[i + 1])
            modules.append(current)
            i += 2
            continue
        if tok == "-j":
            target = list(tokens[i + 1 :])
            break
        if tok.startswith("--"):
            name = _OPTION_ALIASES.get(tok, tok)
            owner_ok = current is not None and (
                current.name not in _PROTO_OPTIONS or tok in _PROTO_OPTIONS[current.name]
            )
            if not owner_ok and tok in ("--dport", "--sport", "--destination-port", "--source-port"):
                proto = header.get("-p", "").split()[-1] if "-p" in header else "tcp"
                current = _Module(proto)
                modules.append(current)
            if current is None:
                raise ValueError(f"option {tok} outside any match")
            values: list[str] = []
            i += 1
            while i < len(tokens) and not tokens[i].startswith("-") and tokens[i] != "!":
                values.append(tokens[i])
                i += 1
            if current.name in ("mark", "connmark") and name == "--mark":
                values = [_mark_text(values[0])]
            current.options.append(("! " if negate else "") + " ".join([name, *values]))
            negate = False
            continue
        raise ValueError(f"unexpected token {tok!r}")
    parts = [header[opt] for opt in _HEADER_OPTIONS if opt in header]
    for module in modules:
        parts.append(f"-m {module.name}")
        parts.extend(module.options)
    if target:
        parts.append("-j " + _canonical_target(target, ipv6=ipv6))
    return " ".join(parts)


def _target_options(tokens: Sequence[str]) -> dict[str, str]:
    """`--opt value` pairs of a target (flags without a value map to "")."""
    opts: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        key = tokens[i]
        if i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            opts[key] = tokens[i + 1]
            i += 2
        else:
            opts[key] = ""
            i += 1
    return opts


def _canonical_target(tokens: Sequence[str], *, ipv6: bool) -> str:
    """A target and its options as save prints them."""
    name, rest = tokens[0], tokens[1:]
    opts = _target_options(rest)
    if name == "REDIRECT":
        port = opts.get("--to-ports", opts.get("--to-port"))
        return "REDIRECT" + (f" --to-ports {port}" if port else "")
    if name == "MARK":
        if "--set-mark" in opts:
            val, mask = _mark(opts["--set-mark"])
            return f"MARK --set-xmark {val:#x}/{mask:#x}"
        if "--set-xmark" in opts:
            val, mask = _mark(opts["--set-xmark"])
            return f"MARK --set-xmark {val:#x}/{mask:#x}"
    if name == "CONNMARK" and ("--save-mark" in opts or "--restore-mark" in opts):
        verb = "--save-mark" if "--save-mark" in opts else "--restore-mark"
        nfmask = int(opts.get("--nfmask", opts.get("--mask", "0xffffffff")), 0)
        ctmask = int(opts.get("--ctmask", opts.get("--mask", "0xffffffff")), 0)
        return f"CONNMARK {verb} --nfmask {nfmask:#x} --ctmask {ctmask:#x}"
    if name == "TPROXY":
        port = opts.get("--on-port", "0")
        on_ip = opts.get("--on-ip", "::" if ipv6 else "0.0.0.0")
        val, mask = _mark(opts.get("--tproxy-mark", "0x0/0x0"))
        return f"TPROXY --on-port {port} --on-ip {on_ip} --tproxy-mark {val:#x}/{mask:#x}"
    return " ".join(tokens)


def _commands_to_restore(lines: Iterable[tuple[int, str]]) -> list[tuple[int, str]]:
    """`iptables -t T ARGS` commands (istio-iptables before 1.24) -> restore lines grouped by table."""
    by_table: dict[str, list[tuple[int, str]]] = {}
    for line_no, line in lines:
        words = shlex.split(line)
        args = words[1:]
        table = "filter"
        if len(args) >= 2 and args[0] == "-t":
            table, args = args[1], args[2:]
        by_table.setdefault(table, []).append((line_no, shlex.join(args)))
    out: list[tuple[int, str]] = []
    for table, rules in by_table.items():
        out.append((rules[0][0], f"*{table}"))
        out.extend(rules)
        out.append((rules[-1][0], "COMMIT"))
    return out


def _is_command(line: str) -> bool:
    """Whether a line is an `iptables`/`ip6tables` command rather than restore input."""
    head = line.split(maxsplit=1)[0] if line.strip() else ""
    return head.endswith(("iptables", "ip6tables")) or (head.endswith(("-legacy", "-nft")) and "tables" in head)


def parse_restore(text: str, *, ipv6: bool = False) -> dict[str, _Table]:
    """Restore input (or command form) -> tables with their chains and canonical rules."""
    raw = [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1)]
    raw = [(n, line) for n, line in raw if line and not line.startswith("#")]
    if raw and all(_is_command(line) for _, line in raw):
        raw = _commands_to_restore(raw)
    tables: dict[str, _Table] = {}
    table: _Table | None = None
    for line_no, line in raw:
        try:
            if line.startswith("*"):
                name = line[1:].strip()
                table = tables.setdefault(name, _Table(name))
                continue
            if line == "COMMIT":
                table = None
                continue
            if table is None:
                raise NormaliseError(line_no, line, "rule outside a `*table` ... COMMIT block")
            if line.startswith(":"):
                table.chain(line[1:].split()[0])
                continue
            words = shlex.split(line)
            op = words[0]
            if op == "-N":
                table.chain(words[1])
            elif op == "-A":
                table.chain(words[1]).append(canonical_rule(words[2:], ipv6=ipv6))
            elif op == "-I":
                chain = table.chain(words[1])
                pos, rest = (int(words[2]), words[3:]) if len(words) > 2 and words[2].isdigit() else (1, words[2:])
                chain.insert(pos - 1, canonical_rule(rest, ipv6=ipv6))
            else:
                raise NormaliseError(line_no, line, f"unsupported operation {op}")
        except NormaliseError:
            raise
        except (ValueError, IndexError) as exc:
            raise NormaliseError(line_no, line, str(exc)) from exc
    return tables


def render_save(tables: dict[str, _Table]) -> str:
    """Tables -> `iptables-save` text (iptables-nft's table order, `[0:0]` counters)."""
    out: list[str] = []
    names = [t for t in TABLE_ORDER if t in tables] + sorted(t for t in tables if t not in TABLE_ORDER)
    for name in names:
        table = tables[name]
        builtins = BUILTIN_CHAINS.get(name, ())
        users = sorted(table.user_chains)
        out.append(f"*{name}")
        out.extend(f":{chain} ACCEPT [0:0]" for chain in builtins)
        out.extend(f":{chain} - [0:0]" for chain in users)
        for chain in (*builtins, *users):
            out.extend(f"-A {chain} {rule}".rstrip() for rule in table.rules.get(chain, []))
        out.append("COMMIT")
    return "\n".join(out) + ("\n" if out else "")


def normalise_restore(text: str, *, ipv6: bool | None = None) -> str:
    """One family's restore input (or `iptables -t ...` commands) -> live `iptables-save` text."""
    if ipv6 is None:
        ipv6 = _looks_v6(text)
    return render_save(parse_restore(text, ipv6=ipv6))


def _looks_v6(text: str) -> bool:
    """Whether restore input is for ip6tables: its commands say so, or its addresses are IPv6."""
    for line in text.splitlines():
        words = line.split()
        if words and words[0].startswith("ip6tables"):
            return True
        if words and words[0].startswith("iptables"):
            return False
        for opt, value in itertools.pairwise(words):
            if opt in ("-s", "-d", "--on-ip") and ":" in value:
                return True
    return False
