"""Walk one table's hook for one packet, with netfilter's exact first-match semantics.

`traverse(ruleset, "nat", "OUTPUT", packet)` returns the rules whose counters the packet increments
(in order, jumps included even when nothing in the called chain matches), and the verdict: ACCEPT
by policy or rule, DROP, REDIRECT/DNAT/SNAT/MASQUERADE with where to, or UNDECIDED naming the rule
that needs state podnat does not have. Pure.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from enum import Enum

from podnat.netfilter.addresses import split_host_port
from podnat.netfilter.matches import Result, Unknown, parse_mark, rule_matches
from podnat.netfilter.model import Chain, Rule, Ruleset, Target
from podnat.netfilter.packet import Packet
from podnat.netfilter.runs import chain_runs

MAX_DEPTH = 64  # the kernel refuses deeper jump stacks; a deeper walk means a loop
_TERMINAL_NAT = {"REDIRECT", "DNAT", "SNAT", "MASQUERADE"}
_CONTINUE = {"LOG", "NFLOG", "TRACE", "CHECKSUM", "TCPMSS", "CLASSIFY", "DSCP", "TOS", "AUDIT", "CT", "NOTRACK"}


class VerdictKind(str, Enum):
    """How a table's traversal of a hook ended."""

    ACCEPT = "ACCEPT"
    DROP = "DROP"
    REJECT = "REJECT"
    QUEUE = "QUEUE"
    REDIRECT = "REDIRECT"
    DNAT = "DNAT"
    SNAT = "SNAT"
    MASQUERADE = "MASQUERADE"
    TPROXY = "TPROXY"
    UNDECIDED = "UNDECIDED"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The end of a traversal: what happened, which rule did it (None: a chain policy)."""

    kind: VerdictKind
    rule: str | None = None
    port: int | None = None  # REDIRECT/DNAT/TPROXY port, when given
    address: str | None = None  # DNAT/SNAT/TPROXY address, when given
    reason: str | None = None  # for UNDECIDED: why podnat cannot tell
    policy_chain: str | None = None  # set when a built-in chain's policy decided


@dataclass(frozen=True, slots=True)
class TableTrace:
    """One table at one hook: the rules that counted, in order, and the verdict."""

    table: str
    hook: str
    hits: tuple[Rule, ...]
    verdict: Verdict
    packet: Packet  # the packet after MARK/CONNMARK targets

    @property
    def refs(self) -> tuple[str, ...]:
        return tuple(rule.ref for rule in self.hits)


def traverse(  # noqa: C901  the evaluator's one loop: a branch per verdict and jump kind
    ruleset: Ruleset, table: str, hook: str, packet: Packet, start: str | None = None, *, indexed: bool = True
) -> TableTrace:
    """Walk `table` at `hook` (from chain `start`, default the hook's built-in chain) for `packet`.

    Runs of rules that differ only by address are looked up by prefix (podnat.netfilter.runs), with
    the same result as testing each rule; `indexed=False` tests each rule (the reference).
    """
    tab = ruleset.table(table)
    entry = tab.chain(start or hook) if tab is not None else None
    if tab is None or entry is None:
        return TableTrace(table, hook, (), Verdict(VerdictKind.ACCEPT, policy_chain=hook), packet)
    hits: list[Rule] = []
    stack: list[tuple[Chain, int]] = []
    chain, index = entry, 0
    runs = chain_runs(chain) if indexed else ()
    while True:
        if index >= len(chain.rules):
            if chain.builtin or not stack:
                return _policy(table, hook, chain, entry, hits, packet)
            chain, index = stack.pop()
            runs = chain_runs(chain) if indexed else ()
            continue
        run = runs[index] if runs else None
        result: Result
        if run is not None:
            found = run.first_match(chain.rules, packet, hook, index)
            if found is None:
                index = run.stop
                continue
            index, result = found
            rule = chain.rules[index]
        else:
            rule = chain.rules[index]
            result = rule_matches(rule, packet, hook)
        index += 1
        if isinstance(result, Unknown):
            verdict = Verdict(VerdictKind.UNDECIDED, rule.ref, reason=result.reason)
            return TableTrace(table, hook, tuple(hits), verdict, packet)
        if not result:
            continue
        hits.append(rule)
        target = rule.target
        if target is None:
            continue
        name = target.name
        if name in tab.chains and not _is_target_extension(name):
            if len(stack) >= MAX_DEPTH:
                verdict = Verdict(VerdictKind.UNDECIDED, rule.ref, reason="jump stack deeper than 64: a chain loop")
                return TableTrace(table, hook, tuple(hits), verdict, packet)
            if not target.goto:
                stack.append((chain, index))
            chain, index = tab.chains[name], 0
            runs = chain_runs(chain) if indexed else ()
            continue
        if name == "RETURN":
            if chain.builtin or not stack:
                return _policy(table, hook, chain, entry, hits, packet)
            chain, index = stack.pop()
            runs = chain_runs(chain) if indexed else ()
            continue
        if name in ("MARK", "CONNMARK"):
            packet = _apply_mark(target, packet)
            continue
        if name in _CONTINUE:
            continue
        verdict = _terminal(rule, target, packet)
        return TableTrace(table, hook, tuple(hits), verdict, packet)


def _is_target_extension(name: str) -> bool:
    return name in ("ACCEPT", "DROP", "RETURN", "QUEUE")


def _policy(table: str, hook: str, chain: Chain, entry: Chain, hits: list[Rule], packet: Packet) -> TableTrace:
    builtin = chain if chain.builtin else entry
    kind = VerdictKind.DROP if builtin.policy == "DROP" else VerdictKind.ACCEPT
    return TableTrace(table, hook, tuple(hits), Verdict(kind, policy_chain=builtin.name), packet)


def _terminal(rule: Rule, target: Target, packet: Packet) -> Verdict:
    name = target.name
    if name in ("ACCEPT", "DROP", "REJECT", "QUEUE"):
        return Verdict(VerdictKind(name), rule.ref)
    if name == "NFQUEUE":
        return Verdict(VerdictKind.QUEUE, rule.ref)
    if name in ("REDIRECT", "MASQUERADE"):
        ports = target.get("to-ports")
        port = _first_port(ports.args[0]) if ports else (packet.dport if name == "REDIRECT" else None)
        return Verdict(VerdictKind(name), rule.ref, port=port)
    if name in ("DNAT", "SNAT"):
        option = target.get("to-destination" if name == "DNAT" else "to-source")
        address, port = _host_and_port(option.args[0]) if option else (None, None)
        return Verdict(VerdictKind(name), rule.ref, port=port, address=address)
    if name == "TPROXY":
        on_port = target.get("on-port")
        on_ip = target.get("on-ip")
        return Verdict(
            VerdictKind.TPROXY,
            rule.ref,
            port=int(on_port.args[0]) if on_port else packet.dport,
            address=on_ip.args[0] if on_ip else None,
        )
    return Verdict(VerdictKind.UNDECIDED, rule.ref, reason=f"target {name} is not modelled")


def _first_port(spec: str) -> int:
    return int(spec.replace(":", "-").split("-")[0])


def _host_and_port(spec: str) -> tuple[str | None, int | None]:
    """A NAT target's `ADDRESS[-ADDRESS][:PORT[-PORT]]`: the first address and the first port."""
    spec = spec.split("-", maxsplit=1)[0] if spec.count(":") <= 1 else spec
    host, port = split_host_port(spec)
    if port is not None or spec.startswith("["):
        return host or None, _first_port(port) if port else None
    try:
        ipaddress.ip_address(spec)
    except ValueError:
        return None, None
    return spec, None


def _apply_mark(target: Target, packet: Packet) -> Packet:
    """MARK and CONNMARK, with the kernel's xmark arithmetic."""
    mark, ctmark = packet.mark, packet.ctmark
    for option in target.options:
        if target.name == "CONNMARK" and option.name in ("save-mark", "restore-mark"):
            nfmask = _mask(target, "nfmask")
            ctmask = _mask(target, "ctmask")
            if option.name == "save-mark":
                ctmark = (ctmark & ~ctmask) ^ (mark & nfmask)
            else:
                mark = (mark & ~nfmask) ^ (ctmark & ctmask)
            continue
        if option.name in ("nfmask", "ctmask", "mask"):
            continue
        value, mask = parse_mark(option.args[0]) if option.args else (0, 0)
        current = mark if target.name == "MARK" else ctmark
        if option.name == "set-xmark":
            current = (current & ~mask) ^ value
        elif option.name == "set-mark":
            current = (current & ~mask) | value
        elif option.name == "and-mark":
            current &= value
        elif option.name == "or-mark":
            current |= value
        elif option.name == "xor-mark":
            current ^= value
        if target.name == "MARK":
            mark = current
        else:
            ctmark = current
    return replace(packet, mark=mark & 0xFFFFFFFF, ctmark=ctmark & 0xFFFFFFFF)


def _mask(target: Target, name: str) -> int:
    option = target.get(name)
    return int(option.args[0], 0) if option else 0xFFFFFFFF
