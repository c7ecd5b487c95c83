"""Every parser's error is one InputError (line, text, message), and says the same one line as before."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from podnat.envoy.listeners import ListenersError, parse_listeners
from podnat.istio.initlog import InitLogError, parse_initlog
from podnat.istio.inputs import read_input
from podnat.istio.routing import TranscriptError, parse_transcript
from podnat.netfilter.errors import InputError
from podnat.netfilter.model import Family
from podnat.netfilter.nft import parse_nft
from podnat.netfilter.parse import ParseError, parse_ruleset
from podnat.netfilter.routing import RoutingParseError, parse_rules

LONG = "-A OUTPUT -m comment --comment " + "x" * 200 + " -j NOPE_X"


@pytest.mark.parametrize(
    ("read", "kind", "line", "text", "said"),
    [
        (
            lambda: parse_ruleset("*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j NOPE_X\nCOMMIT\n"),
            ParseError,
            3,
            "-A OUTPUT -j NOPE_X",
            "line 3: jump to chain NOPE_X, which is not declared in table nat: '-A OUTPUT -j NOPE_X'",
        ),
        (
            lambda: parse_ruleset(f"*nat\n:OUTPUT ACCEPT [0:0]\n{LONG}\nCOMMIT\n"),
            ParseError,
            3,
            LONG,
            f"line 3: jump to chain NOPE_X, which is not declared in table nat: {LONG[:117] + '...'!r}",
        ),
        (
            lambda: parse_ruleset("*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j RETURN\nCOMMIT\n*nat\nCOMMIT\n"),
            ParseError,
            0,
            "*nat",
            "line 0: table nat appears twice: pass one family's dump at a time: '*nat'",
        ),
        (
            lambda: parse_nft("table ip t {\n  chain c {\n", Family.IPV4),
            ParseError,
            2,
            "  chain c {",
            None,
        ),
        (
            lambda: parse_rules("0:\tfrom all lookup local\nbogus\n"),
            RoutingParseError,
            2,
            "bogus",
            "line 2: not an `ip rule` line (PRIORITY: SELECTOR ACTION): 'bogus'",
        ),
        (
            lambda: parse_transcript("ip rule show\n"),
            TranscriptError,
            1,
            "ip rule show",
            "line 1: output before any `$ COMMAND` line: 'ip rule show'",
        ),
        (
            lambda: parse_transcript("$\n"),
            TranscriptError,
            1,
            None,
            "line 1: `$` without a command",
        ),
        (
            lambda: parse_listeners('{"listener_statuses": [\n{]'),
            ListenersError,
            2,
            None,
            "listeners JSON: line 2: Expecting property name enclosed in double quotes",
        ),
        (
            lambda: parse_listeners("[]"),
            ListenersError,
            None,
            None,
            "listeners JSON: expected an object with listener_statuses",
        ),
        (
            lambda: parse_initlog("2024-05-01T10:00:00.000000Z\tinfo\tistio-iptables\nhello\n"),
            InitLogError,
            None,
            None,
            None,
        ),
        (
            lambda: read_input("Chain PREROUTING (policy ACCEPT)\ntarget prot opt source destination\n"),
            InputError,
            1,
            None,
            None,
        ),
    ],
)
def test_every_parser_error_is_an_input_error(
    read: Callable[[], object], kind: type[InputError], line: int | None, text: str | None, said: str | None
) -> None:
    with pytest.raises(InputError) as caught:
        read()
    err = caught.value
    assert type(err) is kind
    assert isinstance(err, ValueError)
    if line is not None:
        assert err.line == line
    assert err.text == text
    assert err.message and err.message in str(err)
    if said is not None:
        assert str(err) == said
    # one line, starting with the line number when there is one
    assert "\n" not in str(err)
    if err.line is not None and kind is not ListenersError:
        assert str(err).startswith(f"line {err.line}: ")
