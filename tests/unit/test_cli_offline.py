"""The offline commands as a user runs them: JSON contract, exit codes, one-line errors, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REFERENCE

DATA = Path(__file__).resolve().parent.parent / "data"
DEFAULT = DATA / "default.v4.iptables-save"


def python(code: str) -> subprocess.CompletedProcess[str]:
    """`code` run by a fresh interpreter (what podnat loads at start is the point of these tests)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)


def podnat(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "250"}
    return subprocess.run(
        [sys.executable, "-m", "podnat", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_trace_json_contract():
    result = podnat(
        "trace",
        "--nat-file",
        str(DEFAULT),
        "--pod-ip",
        "10.99.0.2",
        "--from",
        "app",
        "--to",
        "10.99.0.1:9080",
        "-o",
        "json",
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) >= {"legs", "envoy_ports", "outcome", "delivered_to"}
    assert [leg["rules"] for leg in data["legs"]] == [
        ["OUTPUT:1", "ISTIO_OUTPUT:9", "ISTIO_REDIRECT:1"],
        ["OUTPUT:1", "ISTIO_OUTPUT:4"],
    ]
    first = data["legs"][0]
    assert {k: first[k] for k in ("actor", "src", "dst", "hook", "verdict", "to")} == {
        "actor": "app",
        "src": "10.99.0.2",
        "dst": "10.99.0.1:9080",
        "hook": "OUTPUT",
        "verdict": "REDIRECT",
        "to": "127.0.0.1:15001",
    }
    assert data["envoy_ports"] == [15001]
    assert data["outcome"] == "delivered" and data["delivered_to"] == "10.99.0.1:9080"


def test_trace_remote_and_endpoint():
    result = podnat(
        "trace",
        "--nat-file",
        "-",
        "--pod-ip",
        "10.99.0.2",
        "--from",
        "app",
        "--to",
        "10.96.12.3:9080",
        "--endpoint",
        "10.99.0.2",
        "-o",
        "json",
        stdin=DEFAULT.read_text(),
    )
    data = json.loads(result.stdout)
    assert data["envoy_ports"] == [15001, 15006]
    assert data["delivered_to"] == "10.99.0.2:9080"
    inbound = podnat(
        "trace",
        "--nat-file",
        str(DEFAULT),
        "--pod-ip",
        "10.99.0.2",
        "--from",
        "remote",
        "--to",
        "10.99.0.2:9080",
        "-o",
        "json",
    )
    legs = json.loads(inbound.stdout)["legs"]
    assert legs[0]["hook"] == "PREROUTING" and legs[0]["to"] == "10.99.0.2:15006"
    assert legs[1]["src"] == "127.0.0.6"


def test_trace_refused_exits_1(tmp_path):
    listeners = tmp_path / "l.json"
    listeners.write_text(
        json.dumps(
            {
                "listener_statuses": [
                    {
                        "name": "virtualInbound",
                        "local_address": {"socket_address": {"address": "0.0.0.0", "port_value": 15006}},
                    }
                ]
            }
        )
    )
    result = podnat(
        "trace",
        "--nat-file",
        str(DEFAULT),
        "--pod-ip",
        "10.99.0.2",
        "--from",
        "app",
        "--to",
        "10.99.0.1:80",
        "--listeners",
        str(listeners),
        "-o",
        "json",
    )
    assert result.returncode == 1
    assert json.loads(result.stdout)["outcome"] == "refused"


def test_explain_json_has_flows_shadowed_findings():
    result = podnat("explain", str(DEFAULT), "-o", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert sorted({f["type"] for f in data["flows"]}) == [1, 2, 3, 4, 5, 6]
    assert [s["rule"] for s in data["shadowed"]] == ["ISTIO_OUTPUT:5", "ISTIO_OUTPUT:6", "ISTIO_OUTPUT:8"]
    assert "findings" in data and "diff" not in data


def test_explain_human_output_names_rules():
    result = podnat("explain", str(DEFAULT))
    assert result.returncode == 0
    assert "ISTIO_OUTPUT:9" in result.stdout and "Envoy 15001" in result.stdout


BAD_INPUTS = {
    "truncated": "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j RETURN\n",
    "garbage": "\x7fELF\x02\x01 garbage\n",
    "unknown option": "*nat\n-A PREROUTING --frobnicate -j RETURN\nCOMMIT\n",
    "rule before chain": "*nat\n-A FOO -j RETURN\nCOMMIT\n",
    "empty": "",
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_4(tmp_path, name):
    path = tmp_path / "bad.txt"
    path.write_text(BAD_INPUTS[name])
    result = podnat("explain", str(path))
    assert result.returncode == 4
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("podnat: ")
    assert "Traceback" not in result.stderr


def test_binary_file_exit_4(tmp_path):
    path = tmp_path / "bin"
    path.write_bytes(b"\x00\x01\x02\xff" * 64)
    result = podnat("explain", str(path))
    assert result.returncode == 4 and "binary" in result.stderr


def test_missing_file_exit_4():
    result = podnat("explain", "/nonexistent/table")
    assert result.returncode == 4 and "cannot read" in result.stderr


def test_usage_errors_exit_2():
    assert (
        podnat(
            "trace", "--nat-file", str(DEFAULT), "--pod-ip", "nope", "--from", "app", "--to", "1.2.3.4:80"
        ).returncode
        == 2
    )
    assert podnat("trace", "--nat-file", str(DEFAULT)).returncode == 2
    assert podnat("explain", str(DEFAULT), "-o", "xml").returncode == 2


def test_offline_commands_do_not_import_the_kubernetes_client():
    code = (
        f"import sys, runpy; sys.argv=['podnat','explain',{str(DEFAULT)!r},'-o','json'];\n"
        "try:\n  runpy.run_module('podnat', run_name='__main__')\n"
        "except SystemExit: pass\n"
        "assert 'kubernetes' not in sys.modules, 'kubernetes imported'\n"
        "assert 'markdown_it' not in sys.modules, 'rich.markdown loaded at start'\n"
        "assert 'pygments' not in sys.modules, 'rich.traceback loaded at start'\n"
        "assert 'rich.console' not in sys.modules, 'rich loaded for -o json'\n"
        "assert 'podnat.istio.ambient' not in sys.modules, 'ambient rule model loaded for a sidecar table'\n"
        "assert 'podnat.report' not in sys.modules, 'the pod reports loaded for a saved table'\n"
    )
    result = python(code)
    assert result.returncode == 0, result.stderr


def test_rich_markdown_deferred_at_start_still_works_when_used():
    code = (
        "import io, sys, podnat.cli\n"
        "assert 'markdown_it' not in sys.modules\n"
        "from rich.console import Console\n"
        "from rich.markdown import Markdown\n"
        "console = Console(file=io.StringIO(), width=40)\n"
        "console.print(Markdown('# Title\\n\\n*some* text'))\n"
        "import rich.markdown\n"
        "assert 'markdown_it' in sys.modules and rich.markdown.MarkdownIt is not None\n"
        "assert isinstance(Markdown('x'), rich.markdown.Markdown)\n"
        "print(console.file.getvalue())\n"
    )
    result = python(code)
    assert result.returncode == 0, result.stderr
    assert "Title" in result.stdout and "some text" in result.stdout


def test_typer_rich_help_and_usage_errors_still_work_with_rich_loaded_on_first_use():
    shown = podnat("explain", "--help")
    assert shown.returncode == 0 and "explain [OPTIONS] FILE" in shown.stdout
    assert "╭─ Options" in shown.stdout and "--pod-ip" in shown.stdout  # typer's rich help panels
    listed = podnat("--help")
    assert listed.returncode == 0 and "explain" in listed.stdout and "╭─ Commands" in listed.stdout
    refused = podnat("explain", str(DEFAULT), "-o", "xml")
    assert refused.returncode == 2 and "╭─ Error" in refused.stderr and "'xml' is not one of" in refused.stderr


def test_rich_traceback_deferred_at_start_still_works_when_used():
    code = (
        "import io, sys, podnat.cli\n"
        "assert 'pygments' not in sys.modules\n"
        "from rich.console import Console\n"
        "from rich.traceback import Traceback\n"
        "console = Console(file=io.StringIO(), width=100)\n"
        "try:\n  1 / 0\nexcept ZeroDivisionError as exc:\n"
        "  console.print(Traceback.from_exception(type(exc), exc, exc.__traceback__))\n"
        "  made = Traceback()\n"
        "import rich.traceback\n"
        "assert 'pygments' in sys.modules and isinstance(made, rich.traceback.Traceback)\n"
        "print(console.file.getvalue())\n"
    )
    result = python(code)
    assert result.returncode == 0, result.stderr
    assert "ZeroDivisionError" in result.stdout


CLIENT_DEFERRED = (
    "kubernetes.dynamic",
    "kubernetes.informer",
    "kubernetes.leaderelection",
    "kubernetes.watch",
    "kubernetes.stream",
    "requests_oauthlib",
    "oauthlib.oauth2",
    "dateutil.parser",
    "kubernetes.client.api_client",
)


def test_the_client_modules_podnats_calls_do_not_use_are_not_loaded_to_connect(tmp_path):
    """podnat/_deferred.py: after loading a kubeconfig and making the client, what the calls podnat makes
    never use is still a stand-in (nor are requests or websocket-client loaded), and the client works."""
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:6443'}}]\n"
        "users: [{name: u, user: {token: t0ken}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    code = (
        "import sys, podnat.cli\n"
        "from podnat.kube.client import KubeClient, KubeOptions\n"
        f"client = KubeClient.connect(KubeOptions(kubeconfig={str(kubeconfig)!r}))\n"
        "assert client.server == 'https://127.0.0.1:6443'\n"
        f"for name in {CLIENT_DEFERRED!r}:\n"
        "    assert 'stand-in' in (sys.modules[name].__doc__ or ''), name\n"
        "assert 'requests' not in sys.modules and 'websocket' not in sys.modules and 'pydantic' not in sys.modules\n"
        "import kubernetes\n"
        "assert kubernetes.watch is sys.modules['kubernetes.watch']\n"
    )
    # and a command's start imports none of their parent packages
    start = python("import sys, podnat.cli\nassert not {'kubernetes', 'oauthlib', 'dateutil'} & set(sys.modules)\n")
    assert start.returncode == 0, start.stderr
    result = python(code)
    assert result.returncode == 0, result.stderr


def test_the_deferred_client_modules_work_when_used():
    """Each one loads on first use, once: exec's stream and its WebSocket client (a submodule imported
    directly included), Watch, the OIDC refresh's session and its errors, the date parser behind the models."""
    code = (
        "import sys, podnat.cli\n"
        "from kubernetes.config import kube_config\n"
        "import kubernetes.stream.ws_client as ws_client\n"  # a submodule first: loaded from where it lives
        "from kubernetes.stream import stream\n"
        "import kubernetes.stream.ws_client as again\n"
        "assert again is ws_client and sys.modules['kubernetes.stream.ws_client'] is ws_client\n"
        "assert stream.func.__module__ == 'kubernetes.stream.stream'\n"
        "from kubernetes.watch import Watch\n"
        "import kubernetes.watch.watch\n"
        "assert Watch is kubernetes.watch.watch.Watch\n"
        "session = kube_config.OAuth2Session(client_id='podnat')\n"
        "import requests_oauthlib\n"
        "assert isinstance(session, requests_oauthlib.OAuth2Session)\n"
        "import oauthlib.oauth2.rfc6749.errors as errors\n"
        "assert kube_config.oauthlib.oauth2.rfc6749.errors.InvalidClientIdError is errors.InvalidClientIdError\n"
        "from kubernetes.client import ApiClient\n"
        "import datetime, json\n"
        "answer = json.dumps({'eventTime': '2026-12-05T20:00:00.000000Z', 'metadata': {'name': 'e'}})\n"
        "event = ApiClient().deserialize(answer, 'EventsV1Event', 'application/json')\n"
        "assert event.event_time == datetime.datetime(2026, 12, 5, 20, tzinfo=datetime.timezone.utc), event\n"
        "import kubernetes.client.api_client as api_client\n"  # the parse it imported at start: a forwarder
        "assert api_client.parse('2026-12-05T20:00:00Z') == event.event_time\n"
    )
    result = python(code)
    assert result.returncode == 0, result.stderr


def test_pod_spec_reconciles_cleanly_against_its_own_default_table():
    result = podnat(
        "explain", str(DEFAULT), "--pod-spec", str(REFERENCE / "pod-specs/hello.yaml.injected"), "-o", "json"
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert {f["status"] for f in data["flows"]} == {"ok"}
    assert data["diff"] == []


def test_args_intent_finds_the_deleted_jump(tmp_path):
    live = tmp_path / "live.txt"
    live.write_text(DEFAULT.read_text().replace("-A PREROUTING -p tcp -j ISTIO_INBOUND\n", ""))
    args = "istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x '' -b '*' -d 15090,15021,15020"
    result = podnat("explain", str(live), "--args", args, "--istio-version", "1.30", "-o", "json")
    assert result.returncode == 1
    data = json.loads(result.stdout)
    flow1 = next(f for f in data["flows"] if f["type"] == 1)
    assert flow1["status"] == "drift" and flow1["expected"]["envoy_ports"] == [15006]
    assert [d["kind"] for d in data["diff"]] == ["missing"]
    assert data["diff"][0]["expected"] == "-A PREROUTING -p tcp -j ISTIO_INBOUND"


def test_older_release_intent_differs():
    args = "istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x '' -b '*' -d 15090,15021,15020"
    result = podnat("explain", str(DEFAULT), "--args", args, "--istio-version", "1.24", "-o", "json")
    data = json.loads(result.stdout)
    # 1.24 installed `-A OUTPUT -p tcp -j ISTIO_OUTPUT`; the live 1.25+ table has no -p tcp
    assert {d["kind"] for d in data["diff"]} == {"changed"}


TPROXY = REFERENCE / "kernel-save/iptables/tproxy.v4.iptables-save"


def _flows(text: str, *args: str) -> dict[int, dict]:
    result = podnat("explain", "-", "-o", "json", *args, stdin=text)
    assert result.returncode in (0, 1), result.stderr
    return {flow["type"]: flow for flow in json.loads(result.stdout)["flows"]}


def test_a_saved_tproxy_table_is_explained_as_a_tproxy_pod():
    # docs/istio-capture.md, TPROXY: Envoy (uid 0, gid 1337) keeps the client's address on its leg to the app, which
    # returns at ISTIO_OUTPUT #3, not #1; its own outbound legs return at the gid rule #7.
    flows = _flows(TPROXY.read_text())
    inbound = flows[1]
    assert inbound["outcome"] == "delivered" and inbound["envoy_ports"] == [15006]
    assert inbound["legs"][0]["rules"][-1] == "mangle/ISTIO_TPROXY:1"
    app_leg = inbound["legs"][1]
    assert app_leg["src"] == "10.99.0.1" and "ISTIO_OUTPUT:3" in app_leg["rules"]
    assert "ISTIO_OUTPUT:1" not in app_leg["rules"]
    assert flows[6]["legs"][0]["rules"][-1] == "ISTIO_OUTPUT:7"
    # --proxy-uid 1337 says Envoy runs as 1337: its leg to the app is then captured again (a loop)
    assert _flows(TPROXY.read_text(), "--proxy-uid", "1337")[1]["outcome"] == "loop"


def test_a_tproxy_table_with_its_own_mark_is_followed_with_that_mark():
    # istio-init -t 7: the TPROXY mark, the mangle rules and Envoy's socket mark all change together.
    text = TPROXY.read_text().replace("0x539", "0x7")
    assert "0x7/0xffffffff" in text
    assert _flows(text) == _flows(TPROXY.read_text())


def test_a_named_command_is_built_alone_and_anything_else_sees_every_command():
    code = (
        "import typer.main\n"
        "from podnat.cli import _for_argv, app\n"
        "def built(*argv):\n"
        "    return sorted(typer.main.get_command(_for_argv(['podnat', *argv])).commands)\n"
        "every = sorted(typer.main.get_command(app).commands)\n"
        "assert {'explain', 'trace', 'inspect', 'verify', 'lab', 'version'} <= set(every), every\n"
        "assert built('explain', 'x.txt') == ['explain']\n"
        "assert built('lab', 'up') == ['lab']\n"
        "assert built() == built('--help') == built('--debug', 'explain') == built('explian') == every\n"
        "assert sorted(typer.main.get_command(app).commands) == every  # the app itself is left whole\n"
    )
    result = python(code)
    assert result.returncode == 0, result.stderr
