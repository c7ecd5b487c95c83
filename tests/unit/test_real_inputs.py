"""The corpus of real, published inputs (tests/data/real-inputs, with its manifest): podnat gives the
answer a careful engineer gives, input by input. The judging is tools/corpus.py's, which also prints
the README's scoreboard (`make corpus`)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "corpus.py"
_spec = importlib.util.spec_from_file_location("podnat_corpus", TOOL)
assert _spec is not None and _spec.loader is not None
corpus = importlib.util.module_from_spec(_spec)
sys.modules["podnat_corpus"] = corpus
_spec.loader.exec_module(corpus)

ENTRIES = corpus.entries()

# Known wrong answers, each with the work that fixes it; strict: a fix makes this test fail until the
# entry is taken off the list.
KNOWN_WRONG: dict[str, str] = {}


def test_the_corpus_is_large_and_has_provenance():
    assert len(ENTRIES) >= 30
    for entry in ENTRIES:
        assert (corpus.CORPUS / entry["file"]).is_file(), entry["file"]
        assert str(entry.get("source", "")).startswith("https://"), entry["file"]
        assert entry.get("format") and entry.get("istio_release") and entry.get("reporter_saw"), entry["file"]
        assert (entry.get("expected") or {}).get("result") in ("read", "refused"), entry["file"]
    formats = {entry["format"] for entry in ENTRIES}
    assert {"iptables-save", "iptables -S", "iptables -L", "istio-init log", "nft", "partial"} <= formats


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param(
            e,
            id=e["file"],
            marks=[pytest.mark.xfail(reason=KNOWN_WRONG[e["file"]], strict=True)] if e["file"] in KNOWN_WRONG else [],
        )
        for e in ENTRIES
    ],
)
def test_podnat_gives_the_careful_answer(entry: dict[str, object]):
    verdict = corpus.judge(entry)
    assert verdict.score != corpus.WRONG, verdict.why


def test_the_judge_can_say_wrong():
    """A judge that cannot fail is no test: a healthy table read with the wrong proxy uid is wrong."""
    entry = next(e for e in ENTRIES if e["file"].startswith("13-"))
    lying = {**entry, "expected": {**entry["expected"], "proxy_uid": 1337}}
    assert corpus.judge(lying).score == corpus.WRONG
    refused = next(e for e in ENTRIES if e["expected"]["result"] == "refused")
    assert corpus.judge({**refused, "expected": {**refused["expected"], "result": "read"}}).score == corpus.WRONG
