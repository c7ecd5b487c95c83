"""A Ruleset printed as the kernel's iptables-save prints it: one spelling of every rule.

What the kernel does to a rule on the way in and back out (docs/istio-capture.md, "restore input vs
live iptables-save", checked against tests/data/istio/kernel-save/): the address, interface and
protocol options come first, in the order -s -d -i -o -p (then -f), then each match module in the
order it was loaded (`--dport` after `-p tcp` loads an implicit `-m tcp`), then the target.
Addresses become networks (`127.0.0.1/8` -> `127.0.0.0/8`, a bare address gets /32 or /128, IPv6 as
inet_ntop spells it); marks print in hex; targets print every option (`--to-port` -> `--to-ports`,
`--set-mark` -> `--set-xmark V/M`, CONNMARK's masks, TPROXY's `--on-ip`). A table lists its built-in
chains in hook order, then its user chains alphabetically; tables come in iptables-nft-save's order.

    format_rule(rule, family)     `-A CHAIN ...` as the kernel prints the rule
    format_ruleset(ruleset)       the whole dump (chain counters `[0:0]` unless the dump had them)

Printing what iptables-save printed gives the same text back (tests/unit/test_save.py, on every
kernel dump in the reference data). Pure.
"""

from __future__ import annotations

import ipaddress

from podnat.netfilter.addresses import ntop
from podnat.netfilter.matches import parse_mark
from podnat.netfilter.model import BUILTIN_CHAINS, Cond, Family, Match, Option, Rule, Ruleset, Target

TABLE_ORDER: tuple[str, ...] = ("mangle", "raw", "nat", "filter")  # iptables-nft-save's
_FULL_MASK = 0xFFFFFFFF
# The long spellings iptables-save never prints.
_OPTION_ALIASES = {
    "destination-port": "dport",
    "source-port": "sport",
    "destination-ports": "dports",
    "source-ports": "sports",
}
_QUOTED = set(" \t\"'\\")


def format_address(text: str) -> str:
    """An address or network as iptables-save prints it: the network, with its prefix length."""
    parts = []
    for part in text.split(","):
        net = ipaddress.ip_network(part, strict=False)
        parts.append(f"{ntop(net.network_address)}/{net.prefixlen}")
    return ",".join(parts)


def format_rule(rule: Rule, family: Family = Family.IPV4) -> str:
    """`-A CHAIN spec` with the spec in the kernel's spelling (no counters)."""
    spec = format_spec(rule, family)
    return f"-A {rule.chain} {spec}" if spec else f"-A {rule.chain}"


def format_spec(rule: Rule, family: Family = Family.IPV4) -> str:
    """A rule's options (everything after `-A CHAIN`) in iptables-save's canonical order."""
    parts: list[str] = []
    for flag, cond in (
        ("-s", rule.source),
        ("-d", rule.destination),
        ("-i", rule.in_iface),
        ("-o", rule.out_iface),
        ("-p", rule.protocol),
    ):
        if cond is not None:
            parts.append(_header(flag, cond))
    if rule.fragment is not None:
        parts.append("-f" if rule.fragment else "! -f")
    for match in rule.matches:
        parts.append(f"-m {match.module}")
        parts.extend(_match_option(match, option) for option in match.options)
    if rule.target is not None:
        parts.append(_target(rule.target, family))
    return " ".join(parts)


def format_ruleset(ruleset: Ruleset, *, counters: bool = True) -> str:
    """The whole dump: each table's chains (`:NAME POLICY [p:b]`), its rules, COMMIT. Without
    `counters`, every chain's are [0:0] and rules carry none (what a restore starts from)."""
    out: list[str] = []
    names = [t for t in TABLE_ORDER if t in ruleset.tables]
    names += sorted(t for t in ruleset.tables if t not in TABLE_ORDER)
    for name in names:
        table = ruleset.tables[name]
        builtins = [c for c in BUILTIN_CHAINS.get(name, ()) if c in table.chains]
        users = sorted(c for c in table.chains if c not in builtins)
        out.append(f"*{name}")
        for chain_name in (*builtins, *users):
            chain = table.chains[chain_name]
            held = chain.counters if counters else None
            shown = f"[{held.packets}:{held.bytes}]" if held else "[0:0]"
            out.append(f":{chain_name} {chain.policy or '-'} {shown}")
        for chain_name in (*builtins, *users):
            for rule in table.chains[chain_name].rules:
                line = format_rule(rule, ruleset.family)
                if counters and ruleset.counters and rule.counters is not None:
                    line = f"[{rule.counters.packets}:{rule.counters.bytes}] {line}"
                out.append(line)
        out.append("COMMIT")
    return "\n".join(out) + ("\n" if out else "")


def _header(flag: str, cond: Cond) -> str:
    value = format_address(cond.value) if flag in ("-s", "-d") else cond.value
    return f"! {flag} {value}" if cond.negated else f"{flag} {value}"


def _match_option(match: Match, option: Option) -> str:
    name = _OPTION_ALIASES.get(option.name, option.name)
    args = option.args
    if match.module in ("mark", "connmark") and name == "mark" and args:
        args = (_mark_match(args[0]), *args[1:])
    return _option(name, args, option.negated)


def _option(name: str, args: tuple[str, ...], negated: bool = False) -> str:
    words = [f"--{name}", *map(_quoted, args)]
    return ("! " if negated else "") + " ".join(words)


def _quoted(word: str) -> str:
    """A word as iptables-save quotes it: in double quotes when it holds a space or a quote."""
    if not word or _QUOTED.isdisjoint(word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _mark_match(value: str) -> str:
    """A mark match value: hex, with the mask only when it is not all ones."""
    mark, mask = parse_mark(value)
    return f"{mark:#x}" if mask == _FULL_MASK else f"{mark:#x}/{mask:#x}"


def _target(target: Target, family: Family) -> str:
    verb = "-g" if target.goto else "-j"
    name = target.name
    options = {option.name: option for option in target.options}

    def value(option: str, default: str) -> str:
        found = options.get(option)
        return found.args[0] if found is not None and found.args else default

    if name == "REDIRECT" and "to-ports" in options:
        return f"{verb} REDIRECT --to-ports {value('to-ports', '')}"
    if name == "MARK" and ("set-mark" in options or "set-xmark" in options):
        mark, mask = parse_mark(value("set-mark", "") or value("set-xmark", ""))
        if "set-mark" in options:
            mask |= mark  # --set-mark V/M zeroes M and ORs in V: the kernel keeps it as V/(M|V)
        return f"{verb} MARK --set-xmark {mark:#x}/{mask:#x}"
    if name == "CONNMARK" and ("save-mark" in options or "restore-mark" in options):
        what = "save-mark" if "save-mark" in options else "restore-mark"
        both = value("mask", "0xffffffff")
        nfmask, ctmask = int(value("nfmask", both), 0), int(value("ctmask", both), 0)
        return f"{verb} CONNMARK --{what} --nfmask {nfmask:#x} --ctmask {ctmask:#x}"
    if name == "TPROXY":
        on_ip = value("on-ip", "::" if family is Family.IPV6 else "0.0.0.0")
        mark, mask = parse_mark(value("tproxy-mark", "0x0/0x0"))
        return f"{verb} TPROXY --on-port {value('on-port', '0')} --on-ip {on_ip} --tproxy-mark {mark:#x}/{mask:#x}"
    words = [verb, name, *(_option(o.name, o.args, o.negated) for o in target.options)]
    return " ".join(words)
