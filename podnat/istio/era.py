"""Tables from before the releases podnat models: Istio before 1.5. Pure.

podnat models Envoy as today's releases run it: two listeners (outbound 15001, inbound 15006), owner
rules that tell Envoy's own traffic on lo apart, Prometheus' 15090 left alone. A table written before
that (one listener on 15001 for both directions before 1.3; 15090 captured and lo traffic captured
whoever sent it before 1.5) is still read and traced rule for rule, but what happens after Envoy may
not be what that release's Envoy did: the caller warns.
"""

from __future__ import annotations

import re
from itertools import compress
from operator import attrgetter

from podnat.netfilter.model import Rule, Ruleset
from podnat.netfilter.runs import representatives

_OUT_IFACE = attrgetter("out_iface")

_TO_PORTS = re.compile(r"--to-ports (\d+)")
_DPORT = re.compile(r"--dport (\d+)")


def _target(rule: Rule) -> str:
    return rule.target.name if rule.target else ""


def predates_split_listeners(ruleset: Ruleset) -> tuple[str, ...]:
    """The signs, in words, that an iptables nat table was written by an Istio release before 1.5
    (empty when there are none)."""
    nat = ruleset.table("nat")
    if nat is None:
        return ()
    signs: list[str] = []
    chains = nat.chains

    def rules(name: str) -> list[Rule]:
        # one rule for each run read from one template: these signs are in no rule's address
        chain = chains.get(name)
        return list(representatives(chain)) if chain is not None else []

    ports = {
        name: {m.group(1) for r in rules(name) if (m := _TO_PORTS.search(r.spec))}
        for name in ("ISTIO_REDIRECT", "ISTIO_IN_REDIRECT")
    }
    if ports["ISTIO_IN_REDIRECT"] and ports["ISTIO_IN_REDIRECT"] <= ports["ISTIO_REDIRECT"]:
        signs.append(
            f"inbound is redirected to {', '.join(sorted(ports['ISTIO_IN_REDIRECT']))}, Envoy's outbound "
            "port (one listener for both directions: Istio before 1.3)"
        )
    if any(_target(r) == "ISTIO_REDIRECT" for r in rules("PREROUTING")) and "ISTIO_INBOUND" not in chains:
        signs.append("PREROUTING sends inbound traffic to ISTIO_REDIRECT, with no ISTIO_INBOUND (Istio 0.x)")
    output = rules("ISTIO_OUTPUT")
    for r in compress(output, map(_OUT_IFACE, output)):  # (only rules with -o: picked out in C)
        if (
            _target(r) in ("ISTIO_IN_REDIRECT", "ISTIO_REDIRECT")
            and r.out_iface is not None
            and r.out_iface.value == "lo"
            and not r.out_iface.negated
            and not any(m.module == "owner" for m in r.matches)
        ):
            signs.append(
                f"{r.ref} captures lo traffic to a non-loopback address whoever sends it, before the "
                "owner rules (Istio before 1.5)"
            )
            break
    inbound = rules("ISTIO_INBOUND")
    catch_all = any(_target(r) == "ISTIO_IN_REDIRECT" and not _DPORT.search(r.spec) for r in inbound)
    returned = {m.group(1) for r in inbound if _target(r) == "RETURN" and (m := _DPORT.search(r.spec))}
    if signs and catch_all and "15090" not in returned:
        # on its own only a custom exclusion list (istio-iptables without -d): a sign only beside the others
        signs.append("Prometheus' port 15090 is captured inbound, not excluded (Istio before 1.5)")
    return tuple(signs)
