"""Reconcile a live rule set with the one Istio meant to install: rule by rule, then flow by flow.

`diff_rules(live, expected)` lists missing, extra, changed and reordered rules per chain (and
missing/extra chains), naming for each the likely cause in Istio terms: the annotation or
istio-iptables flag that would produce it, or "not something Istio installs". Tables: iptables'
nat/mangle/raw and native nftables' istio-proxy-nat/-mangle/-raw (rule texts as `nft list ruleset`
prints them, which the nftables expected model is written in). Pure.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import Enum

from podnat.istio.origins import rule_origin
from podnat.netfilter.model import Rule, Ruleset

ISTIO_CHAIN = re.compile(r"^(ISTIO_|istio-)")  # iptables' ISTIO_OUTPUT, native nftables' istio-output
ISTIO_TABLES = ("nat", "mangle", "raw", "istio-proxy-nat", "istio-proxy-mangle", "istio-proxy-raw")


class DiffKind(str, Enum):
    """How a live rule differs from the intended one."""

    MISSING = "missing"
    EXTRA = "extra"
    CHANGED = "changed"
    REORDERED = "reordered"
    MISSING_CHAIN = "missing-chain"
    EXTRA_CHAIN = "extra-chain"
    COSMETIC = "cosmetic"  # written differently, the same rule for every packet (explain keeps it out of `diff`)


@dataclass(frozen=True, slots=True)
class RuleDiff:
    """One difference between the live table and the expected one."""

    kind: DiffKind
    table: str
    chain: str
    live: Rule | None  # the live rule (extra, changed, reordered)
    expected: Rule | None  # the intended rule (missing, changed, reordered)
    cause: str
    foreign: bool = False  # a rule from another owner (not an ISTIO_ chain, not Istio's jump)
    releases: tuple[str, ...] = ()  # other Istio releases whose own rules explain the difference

    @property
    def ref(self) -> str:
        rule = self.live or self.expected
        return rule.ref if rule is not None else f"{self.table}/{self.chain}"

    @property
    def text(self) -> str:
        rule = self.live or self.expected
        return rule.text if rule is not None else f":{self.chain}"


def _norm(spec: str) -> str:
    return " ".join(spec.split())


_IMPLIED = {"tcp", "udp", "sctp", "icmp", "icmp6"}
_COSMETIC_MODULES = {"comment"}


def rule_key(rule: Rule) -> tuple[object, ...]:
    """What a rule does to packets, as a comparable value: its conditions and target, not how they are
    written (nft's `counter` keyword, option order, `-m tcp` spelled or implied, comments)."""
    matches = sorted(
        (m.module, tuple(sorted(m.options)))
        for m in rule.matches
        if m.module not in _COSMETIC_MODULES and not (m.module in _IMPLIED and not m.options)
    )
    target = rule.target
    return (
        rule.protocol,
        rule.source,
        rule.destination,
        rule.in_iface,
        rule.out_iface,
        rule.fragment,
        tuple(matches),
        (target.name, tuple(sorted(target.options)), target.goto) if target else None,
    )


def diff_rules(
    live: Ruleset,
    expected: Ruleset,
    tables: tuple[str, ...] = ISTIO_TABLES,
    releases: Mapping[str, Ruleset] | None = None,
) -> tuple[RuleDiff, ...]:
    """Rule-level differences in the tables Istio writes (iptables' or native nftables'), in table and chain order.

    `releases`: the same configuration's rules as other Istio releases write them; a difference that is
    one of those releases' own rule is said to be so, not blamed on tampering."""
    diffs = _diff_rules(live, expected, tables)
    return tuple(_by_release(d, releases) for d in diffs) if releases else diffs


def _by_release(d: RuleDiff, releases: Mapping[str, Ruleset]) -> RuleDiff:
    """A difference explained by the release the rules came from, when another release writes it so."""
    if d.kind is DiffKind.COSMETIC or d.foreign:
        return d
    if d.live is not None:  # extra, changed, reordered: which releases write this rule here?
        key = rule_key(d.live)
        having = [v for v, rs in releases.items() if _chain_has(rs, d.table, d.chain, key)]
        if having and d.kind is not DiffKind.REORDERED:
            return replace(
                d,
                releases=tuple(having),
                cause=f"{_effect(d.live)}: this is the rule as Istio {_versions(having)} writes it for "
                "this configuration: the pod's rules come from that release, not tampering",
            )
    elif d.expected is not None and d.kind is DiffKind.MISSING:
        key = rule_key(d.expected)
        lacking = [v for v, rs in releases.items() if not _chain_has(rs, d.table, d.chain, key)]
        if lacking:
            return replace(
                d,
                releases=tuple(lacking),
                cause=f"Istio {_versions(lacking)} does not install this rule for this configuration: "
                "if the pod's rules come from that release, this is its default, not tampering",
            )
    return d


def _chain_has(ruleset: Ruleset, table: str, chain: str, key: tuple[object, ...]) -> bool:
    tab = ruleset.table(table)
    found = tab.chains.get(chain) if tab is not None else None
    return found is not None and any(rule_key(r) == key for r in found.rules)


def _versions(versions: list[str]) -> str:
    minors = [int(v.split(".")[1]) for v in versions]
    if len(versions) > 1 and minors == list(range(minors[0], minors[-1] + 1)):
        return f"{versions[0]} to {versions[-1]}"
    return ", ".join(versions)


def _diff_rules(live: Ruleset, expected: Ruleset, tables: tuple[str, ...]) -> tuple[RuleDiff, ...]:
    diffs: list[RuleDiff] = []
    for table in tables:
        want = expected.table(table)
        have = live.table(table)
        want_chains = want.chains if want else {}
        have_chains = have.chains if have else {}
        for name, chain in want_chains.items():
            if name not in have_chains:
                diffs.append(
                    RuleDiff(
                        DiffKind.MISSING_CHAIN,
                        table,
                        name,
                        None,
                        None,
                        f"chain {name} is missing: {_missing_cause(None, name)}",
                    )
                )
                diffs.extend(
                    RuleDiff(DiffKind.MISSING, table, name, None, rule, _missing_cause(rule, name))
                    for rule in chain.rules
                )
                continue
            diffs.extend(_diff_chain(table, name, have_chains[name].rules, chain.rules))
        for name, chain in have_chains.items():
            if name in want_chains:
                continue
            if not chain.rules and not ISTIO_CHAIN.match(name):
                continue
            foreign = not ISTIO_CHAIN.match(name)
            diffs.append(RuleDiff(DiffKind.EXTRA_CHAIN, table, name, None, None, _extra_cause_chain(name), foreign))
            diffs.extend(
                RuleDiff(DiffKind.EXTRA, table, name, rule, None, _extra_cause(rule), foreign) for rule in chain.rules
            )
    return tuple(diffs)


def _diff_chain(table: str, chain: str, live: tuple[Rule, ...], expected: tuple[Rule, ...]) -> list[RuleDiff]:
    have = [rule_key(r) for r in live]
    want = [rule_key(r) for r in expected]
    out: list[RuleDiff] = []
    matcher = difflib.SequenceMatcher(a=want, b=have, autojunk=False)
    removed: list[Rule] = []
    added: list[Rule] = []
    pairs: list[tuple[Rule, Rule]] = []
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            out.extend(
                RuleDiff(
                    DiffKind.COSMETIC, table, chain, got, exp, "written differently, the same rule for every packet"
                )
                for exp, got in zip(expected[i1:i2], live[j1:j2], strict=True)
                if _norm(exp.spec) != _norm(got.spec)
            )
            continue
        exp, got = list(expected[i1:i2]), list(live[j1:j2])
        if op == "replace" and len(exp) == len(got):
            pairs.extend(zip(exp, got, strict=True))
            continue
        removed.extend(exp)
        added.extend(got)
    # A rule that is both "removed" and "added" moved: report it once, as reordered.
    added_by_spec: dict[tuple[object, ...], list[Rule]] = {}
    for rule in added:
        added_by_spec.setdefault(rule_key(rule), []).append(rule)
    for rule in removed:
        twins = added_by_spec.get(rule_key(rule))
        if twins:
            moved = twins.pop(0)
            out.append(
                RuleDiff(
                    DiffKind.REORDERED,
                    table,
                    chain,
                    moved,
                    rule,
                    f"{rule.ref} is at position {moved.position} (expected {rule.position}): "
                    "not something Istio does; rules were re-inserted by hand or by another tool",
                )
            )
        else:
            out.append(RuleDiff(DiffKind.MISSING, table, chain, None, rule, _missing_cause(rule, chain)))
    for rules in added_by_spec.values():
        for rule in rules:
            out.append(
                RuleDiff(DiffKind.EXTRA, table, chain, rule, None, _extra_cause(rule), foreign=_is_foreign(rule))
            )
    for exp_rule, got_rule in pairs:
        if rule_key(exp_rule) == rule_key(got_rule):
            continue
        out.append(RuleDiff(DiffKind.CHANGED, table, chain, got_rule, exp_rule, _changed_cause(exp_rule, got_rule)))
    out.sort(key=lambda d: (d.live or d.expected).position if (d.live or d.expected) else 0)  # type: ignore[union-attr]
    return out


def _is_foreign(rule: Rule) -> bool:
    target = rule.target.name if rule.target else ""
    return not ISTIO_CHAIN.match(rule.chain) and not ISTIO_CHAIN.match(target)


_PORT = re.compile(r"(! )?--dport (\d+)")
_DEST = re.compile(r"(?:^| )(! )?-d (\S+)")


def _port_words(port: re.Match[str]) -> str:
    return f"port NOT {port.group(2)}" if port.group(1) else f"port {port.group(2)}"


def _dest_words(dest: re.Match[str]) -> str:
    return f"traffic NOT to {dest.group(2)}" if dest.group(1) else f"traffic to {dest.group(2)}"


def _extra_cause(rule: Rule) -> str:
    """What this rule does to traffic, and which Istio setting would put it here (or that none would)."""
    origin = rule_origin(rule.table, rule.chain, rule.spec)
    effect = _effect(rule)
    if origin is not None:
        return f"{effect}: Istio adds this for {origin}, which this pod does not set"
    if _is_foreign(rule):
        top = rule.position == 1 and rule.chain in ("OUTPUT", "PREROUTING")
        where = f" at the top of {rule.chain}" if top else ""
        owner = "a rule from another owner (a CNI, a firewall, an operator)"
        return f"{effect}: not something Istio installs: {owner}{where}"
    return f"{effect}: not something Istio installs for this pod's configuration"


def _effect(rule: Rule) -> str:
    """One phrase: what the rule does to the traffic it matches."""
    target = rule.target.name if rule.target else ""
    port = _PORT.search(rule.spec)
    dest = _DEST.search(rule.spec)
    bypass = target in ("RETURN", "ACCEPT")
    if rule.chain in ("ISTIO_INBOUND", "PREROUTING") and bypass and port:
        return f"inbound {_port_words(port)} bypasses the sidecar ({rule.ref} returns it)"
    if rule.chain in ("ISTIO_OUTPUT", "OUTPUT") and bypass and port:
        return f"outbound {_port_words(port)} bypasses the sidecar ({rule.ref} returns it)"
    if rule.chain in ("ISTIO_OUTPUT", "OUTPUT") and bypass and dest:
        return f"outbound {_dest_words(dest)} bypasses the sidecar ({rule.ref})"
    if bypass and (rule.in_iface or rule.out_iface):
        iface = (rule.in_iface or rule.out_iface).value  # type: ignore[union-attr]
        return f"traffic on {iface} bypasses the sidecar ({rule.ref})"
    if target in ("ISTIO_REDIRECT", "ISTIO_IN_REDIRECT") and (port or dest or rule.in_iface):
        what = _port_words(port) if port else (_dest_words(dest) if dest else f"interface {rule.in_iface.value}")  # type: ignore[union-attr]
        return f"{what} is captured by {rule.ref}"
    if bypass and rule.position == 1 and rule.chain in ("OUTPUT", "PREROUTING"):
        return f"everything {rule.ref} matches skips Istio's chains"
    if target in ("DROP", "REJECT"):
        return f"{rule.ref} drops what it matches"
    return f"{rule.ref} ({rule.text})"


def _extra_cause_chain(name: str) -> str:
    if ISTIO_CHAIN.match(name):
        return f"chain {name} is Istio's but this pod's configuration does not create it"
    return f"chain {name} is not something Istio installs: another owner (a CNI, kube-proxy, a firewall)"


def _missing_cause(rule: Rule | None, chain: str) -> str:
    if rule is None:
        return "Istio creates it for this pod's configuration; it was deleted or never installed"
    spec = _norm(rule.spec)
    # iptables' chains and targets, or native nftables' (prerouting, jump istio-inbound)
    name, words = chain.upper().replace("-", "_"), spec.upper().replace("-", "_")
    if name == "PREROUTING" and "ISTIO_INBOUND" in words:
        return (
            "inbound capture is off: Istio leaves out this jump only for "
            'traffic.sidecar.istio.io/includeInboundPorts="", which this pod does not set; '
            "the rule was deleted after istio-init ran"
        )
    if name == "OUTPUT" and "ISTIO_OUTPUT" in words:
        return "outbound capture is off: Istio always installs this jump; the rule was deleted after istio-init ran"
    if name == "ISTIO_OUTPUT" and words.endswith(("_J ISTIO_REDIRECT", "JUMP ISTIO_REDIRECT")) and not rule.destination:
        return (
            "outbound capture is off: Istio leaves out the catch-all only for "
            'traffic.sidecar.istio.io/includeOutboundIPRanges="", which this pod does not set'
        )
    port = _PORT.search(spec) or re.search(r"(! )?tcp dport (\d+)", spec)
    if (
        name == "ISTIO_INBOUND"
        and port
        and not port.group(1)
        and port.group(2) in _INJECTOR_PORTS
        and ("RETURN" in words)
    ):
        return (
            f"inbound port {port.group(2)} is not excluded from capture: {_INJECTOR_PORTS[port.group(2)]}; "
            "the exclusions come from the injector (istio-iptables -d, the "
            "traffic.sidecar.istio.io/excludeInboundPorts annotation), which releases and distributions set "
            "differently: not tampering"
        )
    if "owner" in spec or "skuid" in spec or "skgid" in spec:
        return "the proxy's own traffic is no longer recognised: this owner rule was deleted"
    origin = rule_origin(rule.table, rule.chain, rule.spec)
    if origin is not None:
        return f"Istio installs this rule for {origin}; it was deleted after istio-init ran"
    return "Istio installs this rule for this pod's configuration; it was deleted after istio-init ran"


_INJECTOR_PORTS = {
    "15020": "pilot-agent's merged metrics and health port; some distributions and older templates capture it",
    "15021": "the health-check port; releases before 1.6 had none",
    "15090": "Envoy's Prometheus port; releases before 1.5 captured it",
    "15008": "the HBONE tunnel port; releases before 1.10 had none",
}


def _changed_cause(expected: Rule, live: Rule) -> str:
    exp, got = _norm(expected.spec), _norm(live.spec)
    owner_exp = re.findall(r"--(uid|gid)-owner (\S+)", exp)
    owner_got = re.findall(r"--(uid|gid)-owner (\S+)", got)
    if owner_exp and owner_got and owner_exp != owner_got:
        return (
            f"the proxy identity differs ({' '.join(f'{k} {v}' for k, v in owner_got)} instead of "
            f"{' '.join(f'{k} {v}' for k, v in owner_exp)}): istio-iptables -u/-g follows the proxy's "
            "runAsUser/runAsGroup; Envoy's own traffic is not recognised and gets re-captured"
        )
    ports_exp = re.findall(r"--to-ports (\S+)", exp)
    ports_got = re.findall(r"--to-ports (\S+)", got)
    if ports_exp and ports_got and ports_exp != ports_got:
        return (
            f"redirects to port {ports_got[0]} instead of {ports_exp[0]}: istio-iptables -p/-z set "
            "these from the proxy's ports; not something Istio changes at runtime"
        )
    return "not something Istio installs for this pod's configuration"
