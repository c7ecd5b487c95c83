"""Every form a user pastes, recognised by content: what podnat reads, what it notes, what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from podnat.istio.identity import proxy_identity_in_table
from podnat.istio.inputs import (
    CNI_LOG,
    COMMANDS,
    INIT_LOG,
    LIST_S,
    NFT_TEXT,
    RESTORE,
    SAVE,
    VM_LOG,
    InputError,
    read_input,
)
from podnat.netfilter.parse import ParseError

DATA = Path(__file__).resolve().parent.parent / "data"
DEFAULT = (DATA / "default.v4.iptables-save").read_text()


def _nat_rules(text: str) -> list[str]:
    ruleset, _ = read_input(text)
    nat = ruleset.table("nat")
    assert nat is not None
    return [rule.ref for rule in nat.rules()]


def test_save_dump_reads_as_before():
    ruleset, info = read_input(DEFAULT)
    assert info.format == SAVE and info.notes == () and info.failed is None
    assert ruleset.table("nat") is not None


def test_kubectl_chatter_and_prompts_are_skipped_and_noted():
    text = (
        "root@node:~# kubectl exec -it p -c istio-proxy -- iptables-save\n"
        'Defaulted container "istio-proxy" out of: istio-proxy, app\n' + DEFAULT
    )
    _, info = read_input(text)
    assert info.format == SAVE
    assert [n.split(":")[0] for n in info.notes] == ["line 1", "line 2"]
    assert "shell prompt" in info.notes[0] and "kubectl" in info.notes[1]
    assert _nat_rules(text) == _nat_rules(DEFAULT)


def _as_list_rules(save: str, table: str = "nat") -> str:
    """iptables -t T -S, as iptables prints it, from a save dump's table."""
    out: list[str] = []
    inside = False
    for line in save.splitlines():
        if line == f"*{table}":
            inside = True
        elif inside and line == "COMMIT":
            break
        elif inside and line.startswith(":"):
            name, policy = line[1:].split()[:2]
            out.append(f"-P {name} {policy}" if policy != "-" else f"-N {name}")
        elif inside and line.startswith("-A"):
            out.append(line)
    return "\n".join(sorted(out, key=lambda x: {"-P": 0, "-N": 1}.get(x[:2], 2))) + "\n"


def test_list_rules_is_read_in_full():
    text = _as_list_rules(DEFAULT)
    ruleset, info = read_input(text)
    assert info.format == LIST_S
    assert _nat_rules(text) == _nat_rules(DEFAULT)
    assert ruleset.table("nat").chains["PREROUTING"].policy == "ACCEPT"  # type: ignore[union-attr]


def test_list_rules_with_counters():
    text = (
        "-P PREROUTING ACCEPT -c 10 600\n-P INPUT ACCEPT -c 0 0\n-P OUTPUT ACCEPT -c 3 180\n"
        "-P POSTROUTING ACCEPT -c 3 180\n-N ISTIO_REDIRECT\n-A OUTPUT -p tcp -c 3 180 -j ISTIO_REDIRECT\n"
        "-A ISTIO_REDIRECT -p tcp -c 3 180 -j REDIRECT --to-ports 15001\n"
    )
    ruleset, info = read_input(text)
    assert info.format == LIST_S and ruleset.counters
    nat = ruleset.table("nat")
    assert nat is not None and nat.chains["OUTPUT"].rules[0].counters.packets == 3  # type: ignore[union-attr]


def test_list_rules_error_names_the_input_line():
    text = (
        "-P PREROUTING ACCEPT\n-P INPUT ACCEPT\n-P OUTPUT ACCEPT\n-P POSTROUTING ACCEPT\n"
        "-A OUTPUT -p tcp -j ISTIO_NOWHERE\n"
    )
    with pytest.raises(ParseError) as caught:
        read_input(text)
    assert caught.value.line == 5 and "ISTIO_NOWHERE" in str(caught.value)


def test_headerless_nat_body_is_read_with_a_note():
    body = DEFAULT.split("*nat\n", 1)[1]
    text = "\n".join(line for line in body.splitlines() if not line.startswith("*")) + "\n"
    ruleset, info = read_input(text)
    assert info.format == SAVE and any("no `*nat` line" in n for n in info.notes)
    assert ruleset.table("nat") is not None


def test_bare_rules_are_refused_saying_so():
    text = "\n\n-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN\n"
    with pytest.raises(InputError) as caught:
        read_input(text)
    assert str(caught.value).startswith("line 3: rule before any table header (*nat)")
    assert "grep or a fragment" in str(caught.value)


def test_cut_paste_says_so():
    text = "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j RETURN\n"
    with pytest.raises(ParseError, match="the nat table has no COMMIT: the paste is cut"):
        read_input(text)


@pytest.mark.parametrize("verbose", [False, True])
def test_list_listing_is_refused_naming_what_to_run(verbose: bool):
    header = (
        "    pkts bytes target     prot opt in     out     source               destination\n"
        if verbose
        else "target     prot opt source               destination\n"
    )
    text = f"Chain PREROUTING (policy ACCEPT)\n{header}ISTIO_INBOUND  tcp  --  anywhere             anywhere\n"
    with pytest.raises(InputError) as caught:
        read_input(text)
    message = str(caught.value)
    assert message.startswith("line 1: this is an `iptables -L")
    assert "iptables-save -t nat" in message and "iptables -t nat -S" in message


def test_init_log_takes_the_dump_and_says_applied_at_start():
    log = (
        "2024-05-01T10:00:00.000000Z\tinfo\tRunning iptables restore with: iptables-nft and the following "
        "input:\n*nat\n-N ISTIO_REDIRECT\nCOMMIT\n"
        "2024-05-01T10:00:00.100000Z\tinfo\tFinal iptables state (IPv4):\n" + DEFAULT
    )
    ruleset, info = read_input(log)
    assert info.format == INIT_LOG and info.from_log and info.failed is None
    assert any("applied at start" in n for n in info.notes)
    assert ruleset.table("nat") is not None


@pytest.mark.parametrize("v6_rules", [True, False])
def test_a_logs_ipv6_rules_are_mentioned_only_when_there_are_some(v6_rules: bool):
    """A VM's journal dumps empty ip6tables tables too (a published 1.9 one does): that is no IPv6 rule."""
    v6 = DEFAULT if v6_rules else "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
    log = (
        "2024-05-01T10:00:00.000000Z\tinfo\tFinal iptables state (IPv4):\n"
        + DEFAULT
        + "2024-05-01T10:00:00.100000Z\tinfo\tFinal iptables state (IPv6):\n"
        + v6
    )
    info = read_input(log)[1]
    assert any("IPv6 rules too" in n for n in info.notes) is v6_rules


def test_cni_and_vm_logs():
    record = "2024-05-01T10:00:00.000000Z\tinfo\t"
    cni = (
        f"{record}============= Start iptables configuration for default/app-1 =============\n"
        f"{record}Final iptables state (IPv4):\n"
        + DEFAULT
        + f"{record}============= End iptables configuration for default/app-1 =============\n"
    )
    assert read_input(cni)[1].format == CNI_LOG
    vm = "".join(
        f"Dec 05 10:00:00 vm1 istio-start.sh[812]: {line}\n"
        for line in ["Running command: iptables-save", *DEFAULT.splitlines()]
    )
    ruleset, info = read_input(vm)
    assert info.format == VM_LOG and any("journald" in n for n in info.notes)
    assert ruleset.table("nat") is not None


@pytest.mark.parametrize("stamp", ["7月 19 09:03:35", "juil. 19 09:03:35", "Dez 05 10:00:00"])
def test_journald_prefixes_in_other_locales(stamp: str):
    """journalctl prints the month as the VM's locale spells it (a published zh_CN journal: `7月 19 ...`)."""
    vm = "".join(
        f"{stamp} localhost.localdomain istio-start.sh[6717]: {line}\n"
        for line in ["iptables-save", *DEFAULT.splitlines()]
    )
    ruleset, info = read_input(vm)
    assert info.format == VM_LOG and any(f"from {len(DEFAULT.splitlines()) + 1} lines" in n for n in info.notes)
    assert ruleset.table("nat") is not None


def test_failed_restore_log_is_no_table():
    log = (
        "2024-05-01T10:00:00.000000Z\tinfo\tRunning iptables-restore with the following input:\n"
        "*nat\n-N ISTIO_REDIRECT\nCOMMIT\n"
        "2024-05-01T10:00:00.100000Z\terror\tFailed to execute: iptables-restore --noflush, exit status 1\n"
        "iptables-restore: unable to initialize table 'nat'\n"
    )
    ruleset, info = read_input(log)
    assert info.failed is not None and "line 5" in info.failed
    assert not ruleset.tables


def test_commands_and_nft_forms():
    commands = (
        "iptables -t nat -N ISTIO_REDIRECT\niptables -t nat -A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n"
    )
    assert read_input(commands)[1].format == COMMANDS
    nft = (
        "table inet istio-proxy-nat {\n\tchain output {\n"
        "\t\ttype nat hook output priority dstnat; policy accept;\n\t}\n}\n"
    )
    assert read_input(nft)[1].format == NFT_TEXT


def test_proxy_identity_is_read_from_the_owner_rules():
    text = DEFAULT.replace("--uid-owner 1337", "--uid-owner 201507").replace("--gid-owner 1337", "--gid-owner 201507")
    found = proxy_identity_in_table(read_input(text)[0])
    assert found is not None and (found.uid, found.gid, found.ref) == (201507, 201507, "ISTIO_OUTPUT:4")
    found = proxy_identity_in_table(read_input(DEFAULT)[0])
    assert found is not None and (found.uid, found.gid) == (1337, 1337)


def test_a_hand_written_negated_owner_rule_does_not_name_the_proxy():
    text = DEFAULT.replace(
        "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
        "-A ISTIO_OUTPUT -m owner ! --uid-owner 1000 -j RETURN\n-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
    )
    found = proxy_identity_in_table(read_input(text)[0])
    assert found is not None and found.uid == 1337


def test_shadow_analysis_asks_every_identity():
    """`! --uid-owner 1000 -j RETURN` is taken by every root-owned connection: reachable, not shadowed."""
    from podnat.netfilter.reachability import shadowed_rules

    text = DEFAULT.replace(
        "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
        "-A ISTIO_OUTPUT -m owner ! --uid-owner 1000 -j RETURN\n-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
    )
    shadowed = [s.rule.ref for s in shadowed_rules(read_input(text)[0]).shadowed]
    assert shadowed == ["ISTIO_OUTPUT:5", "ISTIO_OUTPUT:6", "ISTIO_OUTPUT:9"]


def test_tables_before_istio_1_5_are_read_with_a_warning():
    from podnat.istio.era import predates_split_listeners

    old = DEFAULT.replace("--to-ports 15006", "--to-ports 15001").replace(
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1337 "
        "-j ISTIO_IN_REDIRECT",
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ISTIO_REDIRECT",
    )
    signs = predates_split_listeners(read_input(old)[0])
    assert len(signs) == 2 and "before 1.3" in signs[0] and signs[1].startswith("ISTIO_OUTPUT:2 captures lo traffic")
    assert predates_split_listeners(read_input(DEFAULT)[0]) == ()


def test_restore_input_without_its_table_line_and_with_prose_between():
    """A blog's copy of istio-init's restore input: headings between the blocks, no `* nat`, no COMMIT."""
    text = (
        "Create new Istio chains\n-N ISTIO_INBOUND\n-N ISTIO_REDIRECT\n-N ISTIO_IN_REDIRECT\n-N ISTIO_OUTPUT\n"
        "Add routing rules.\n-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN\n"
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n"
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006\n-A PREROUTING -p tcp -j ISTIO_INBOUND\n"
        "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT\n-A OUTPUT -p tcp -j ISTIO_OUTPUT\n"
        "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN\n-A ISTIO_OUTPUT -j ISTIO_REDIRECT\n"
    )
    ruleset, info = read_input(text)
    assert info.format == RESTORE
    assert info.notes[0] == "line 1: not a rule, skipped: Create new Istio chains"
    assert info.notes[1] == "line 6: not a rule, skipped: Add routing rules."
    assert "no `*nat` line: read as the nat table" in info.notes[2]
    assert [r.ref for r in ruleset.table("nat").rules()][:2] == ["PREROUTING:1", "OUTPUT:1"]  # type: ignore[union-attr]
    wrapped = text.replace("-A OUTPUT -p tcp -j ISTIO_OUTPUT\n", "-A OUTPUT -p tcp\n  -j ISTIO_OUTPUT\n")
    with pytest.raises(InputError, match="line 13: not a line of `iptables -S` output"):
        read_input(wrapped)


def test_a_dump_whose_first_header_was_cut_keeps_its_other_tables():
    filter_table = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
    text = DEFAULT.split("*nat\n", 1)[1] + filter_table
    ruleset, info = read_input(text)
    assert set(ruleset.tables) == {"nat", "filter"}
    assert any("no `*nat` line" in n for n in info.notes)
