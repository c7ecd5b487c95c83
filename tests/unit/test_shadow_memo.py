"""The shadow analysis is memoised by whoever explains many pods (verify's run, the agent's sweep), not by
podnat/istio/explain.py: the pure module keeps nothing between calls."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_pod_facts_explained import REDIRECT, FakeSource, live_table, make_pod

import podnat.istio.explain as explain_module
from podnat.istio.explain import ShadowMemo, explain, rules_key
from podnat.istio.flows import context_for
from podnat.netfilter.parse import parse_ruleset
from podnat.netfilter.reachability import Reachability, shadowed_rules
from podnat.usecases import verify_pods

DEFAULT = Path(__file__).resolve().parent.parent / "data" / "default.v4.iptables-save"


@pytest.fixture
def analysed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of tables shadowed_rules analysed (each call appends the table's rule count)."""
    calls: list[int] = []

    def counting(ruleset):  # type: ignore[no-untyped-def]
        calls.append(sum(1 for t in ruleset.tables.values() for _ in t.rules()))
        return shadowed_rules(ruleset)

    monkeypatch.setattr(explain_module, "shadowed_rules", counting)
    return calls


def test_explain_keeps_no_state_between_calls(analysed: list[int]) -> None:
    live = parse_ruleset(DEFAULT.read_text())
    ctx = context_for(family="ipv4")
    first, second = explain(live, ctx), explain(live, ctx)
    assert len(analysed) == 2  # nothing remembered without a memo
    assert first.shadowed == second.shadowed and [s.rule.ref for s in first.shadowed] == [
        "ISTIO_OUTPUT:5",
        "ISTIO_OUTPUT:6",
        "ISTIO_OUTPUT:8",
    ]


def test_a_memo_the_caller_owns_analyses_each_table_once(analysed: list[int]) -> None:
    live = parse_ruleset(DEFAULT.read_text())
    again = parse_ruleset(DEFAULT.read_text())  # another pod's table: equal, not the same object
    ctx = context_for(family="ipv4")
    memo: ShadowMemo = {}
    first, second = explain(live, ctx, shadows=memo), explain(again, ctx, shadows=memo)
    assert len(analysed) == 1 and list(memo) == [rules_key(live)]
    assert isinstance(memo[rules_key(live)], Reachability)
    assert first.shadowed == second.shadowed == explain(live, ctx).shadowed


def test_verify_analyses_a_table_its_pods_share_once_per_run(analysed: list[int]) -> None:
    pods = [make_pod(REDIRECT) for _ in range(3)]
    for i, pod in enumerate(pods):
        pod["metadata"] = {**pod["metadata"], "name": f"reviews-v1-{i}"}
    first = verify_pods(lambda: FakeSource(nat=live_table(REDIRECT)), pods, 1)
    assert [r.status for r in first.pods] == ["ok"] * 3
    assert len(analysed) == 1
    verify_pods(lambda: FakeSource(nat=live_table(REDIRECT)), pods, 1)
    assert len(analysed) == 2  # the memo went with the first run
