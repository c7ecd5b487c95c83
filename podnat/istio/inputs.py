"""What a user pasted: recognise its form by content (never by file name), read it, say which it was.

Pure: text in, (Ruleset, InputInfo) out. The lossless forms are read in full:

- `iptables-save` / `ip6tables-save` (and restore input, and `iptables -t T -A ...` command lines),
  with the stray lines a paste carries skipped and noted (kubectl's `Defaulting debug container
  name ...` / `Defaulted container ...`, shell prompts and the commands typed at them);
- `iptables -S` / `iptables -t T -S` (with `-v`/`-c` counters), one table or several in a row;
- Istio's logs: istio-init (every release), istio-cni-node, a VM's `istio-start.sh` output with or
  without journald prefixes; the rules the log shows were installed (podnat.istio.initlog), or, when
  the log shows the restore failed, no rules at all (`InputInfo.failed` says why);
- a nat body whose `*nat` line was cut (it declares its chains): read as nat, with a note;
- nftables: `nft list ruleset` text and `nft -j list ruleset` JSON (podnat.netfilter.nft).

Refused, each with a one-line reason and what to run instead: `iptables -L` listings (they drop
interfaces and more), bare `-A` lines with no table or chain declarations (a grep, a fragment).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from podnat.netfilter.errors import InputError, ParseError
from podnat.netfilter.model import BUILTIN_CHAINS, Family, Ruleset
from podnat.netfilter.nft import detect_and_parse, looks_like_nft


class _Lazy:
    """A regular expression compiled on first use: the fast path (a plain dump) needs none of these,
    and compiling them all costs ~10 ms at every start."""

    __slots__ = ("_args", "_compiled")

    def __init__(self, pattern: str, flags: int = 0) -> None:
        self._args = (pattern, flags)
        self._compiled: re.Pattern[str] | None = None

    def __getattr__(self, name: str) -> Any:
        if self._compiled is None:
            self._compiled = re.compile(*self._args)
        return getattr(self._compiled, name)


SAVE = "iptables-save"
LIST_S = "iptables -S"
RESTORE = "iptables-restore input"
COMMANDS = "iptables commands"
NFT_TEXT = "nft list ruleset"
NFT_JSON = "nft -j list ruleset"
INIT_LOG = "istio-init log"
CNI_LOG = "istio-cni log"
VM_LOG = "istio-start log"
APPLIED_AT_START = "from a log: applied at start, not necessarily live"


@dataclass(frozen=True, slots=True)
class InputInfo:
    """Which form the input was, what was skipped or assumed to read it, and (for a log) whether the
    rules were installed at all."""

    format: str
    notes: tuple[str, ...] = ()
    failed: str | None = None  # a log that shows the restore failed: capture was never installed
    from_log: bool = False


# --- stray lines -----------------------------------------------------------------------------------

_KUBECTL = _Lazy(
    r"^(?:Defaulting debug container name|Defaulted container|If you don't see a command prompt"
    r"|Unable to use a TTY|command terminated with exit code|Targeting container|Use 'kubectl describe pod"
    r"|Warning: Use tokens from the TokenRequest API)"
)
# A shell prompt with (or without) the command typed at it: `$ kubectl ...`, `root@pod:/# iptables-save`,
# `[root@node ~]# ...`, `bash-5.1# ...`, `/ # ...`; and bare commands that print a table.
_PROMPT = _Lazy(
    r"^(?:\$|%|>|(?:\([\w.-]+\)\s*)?[\w.-]+@[\w.-]+(?::\S*)?\s?[#$%]|\[[^\]\s]+@[^\]]+\][#$]|[\w.-]+-\d[\d.]*[#$]"
    r"|/\s#|~\s?[#$]|(?:\([^)]*\)\s*)?➜\s+\S+)(?:\s+(?P<command>\S.*))?$"
)
_COMMAND_WORDS = _Lazy(
    r"^(?:sudo\s+)?(?:kubectl|oc|nsenter|docker|crictl|nerdctl|ip6?tables-(?:legacy-|nft-)?save|istioctl"
    r"|ip6?tables(?:-legacy|-nft)?\s+(?:-\S+\s+)*?(?:-S|--list-rules|-L|--list|-[nvx]*L[nvx]*)\b)"
)
_TABLE_IN_COMMAND = _Lazy(r"(?:^|\s)(?:-t|--table)[\s=]?(nat|mangle|raw|filter|security)\b")


def _stray(line: str) -> tuple[str, str | None] | None:
    """(what the line is, the command typed) for a line a paste carries that is not part of the table."""
    if _KUBECTL.match(line):
        return "kubectl's message", None
    if line[:1] in "-:*" or re.match(r"^\[\d+:\d+\]", line) or line == "COMMIT":
        return None
    m = _PROMPT.match(line)
    if m:
        return "shell prompt", m.group("command")
    if _COMMAND_WORDS.match(line):
        return "command line", line
    return None


def _quote(line: str) -> str:
    return line if len(line) <= 80 else line[:77] + "..."


# --- logs ------------------------------------------------------------------------------------------

_LOG_MARKERS = _Lazy(
    r"Writing following contents to rules file|Running ip6?tables-restore with the following input"
    r"|Running iptables restore with:|Final iptables state \(IPv[46]\)|Running command(?: \(without lock\))?:"
    r"|nftables rules programmed:|=+ Start iptables configuration for|istio-iptables|istio-start\.sh"
    r"|^Variables:\s*$|^Environment:\s*$|^-{5,}\s*$"
)
_LOG_RECORD = _Lazy(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?\s+(?:info|warn|error|debug)\s")
# journald: `Dec 05 10:00:00 host istio-start.sh[123]: ...`, the month as the locale spells it (`7月 19 ...`
# under zh_CN, `déc. 05 ...`), or an ISO timestamp (`-o short-iso`)
_JOURNALD = _Lazy(
    r"^(?:(?:[^\W\d_]{3,}\.?|\d{1,2}月)\s+\d{1,2}\s+\d\d:\d\d:\d\d|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?)"
    r"\s+\S+\s+[\w.@/-]+(?:\[\d+\])?:\s?"
)
_FAILED = _Lazy(
    r"unable to initialize table|iptables-restore(?:-legacy|-nft)?: line \d+ failed|Failed to execute: "
    r"(?:ip6?tables|nft)|(?:ip6?tables|nft)\S*-restore\S*.*exit status [1-9]|exit status [1-9].*restore"
    r"|failed to (?:apply|program) (?:ip6?tables|nftables|rules)|iptables-restore: .*(?:failed|Could not)"
    r"|nftables run failed|Error: Could not process rule",
    re.IGNORECASE,
)
_DRY_RUN = _Lazy(r"--dry-run\b|due to dry run mode|dry[- ]run mode", re.IGNORECASE)
_CNI_START = _Lazy(r"=+ Start iptables configuration for (?:[\w.-]+/)?([\w.-]+) =*\s*$")


def _is_log(lines: list[str]) -> bool:
    return any(
        (_LOG_MARKERS.search(line) and not re.match(r"^(?:-[AINP] |:|\*|\[\d)", line))
        or _LOG_RECORD.match(line)
        or _FAILED.search(line)
        for line in lines
    )


# `stern` and `kubectl logs --prefix` put the pod and container before each line
_STERN = _Lazy(r"^([\w.-]+ [\w.-]+ )\d{4}-\d\d-\d\dT")


def _without_log_prefixes(lines: list[str], notes: list[str]) -> list[str]:
    prefixes = {m.group(1) for line in lines if (m := _STERN.match(line))}
    if not prefixes:
        return lines
    out = []
    for line in lines:
        prefix = next((p for p in prefixes if line.startswith(p)), None)
        out.append(line[len(prefix) :] if prefix else line)
    notes.append(f"pod/container prefixes removed ({', '.join(sorted(p.strip() for p in prefixes))})")
    return out


def _read_log(lines: list[str], notes: list[str]) -> tuple[str, InputInfo]:
    from podnat.istio.initlog import InitLogError, LogOrigin, RulesKind, extract_cni_block, parse_initlog

    vm = any("istio-start" in line for line in lines)
    cni_log = any("istio-cni" in line or "install-cni" in line for line in lines)
    journald = sum(1 for line in lines if _JOURNALD.match(line))
    if journald:
        lines = [_JOURNALD.sub("", line, count=1) for line in lines]
        notes.append(f"journald prefixes removed from {journald} lines")
    lines = _without_log_prefixes(lines, notes)
    # `set -x` traces of the shell scripts before 1.5 (`+ iptables -t nat -A ...`)
    lines = [re.sub(r"^\++ (?=ip6?tables)", "", line) for line in lines]
    text = "\n".join(lines) + "\n"
    form = VM_LOG if vm else CNI_LOG if cni_log else INIT_LOG
    cni = [m.group(1) for line in lines if (m := _CNI_START.search(line))]
    failure = next((n for n, line in enumerate(lines, 1) if _FAILED.search(line)), None)
    dry_run = next((n for n, line in enumerate(lines, 1) if _DRY_RUN.search(line)), None)
    if dry_run is not None:
        return "", _failed(form, notes, lines[dry_run - 1], dry_run, "a dry run: nothing was applied")
    try:
        if cni:
            block, first = extract_cni_block(text, cni[-1])
            rules = parse_initlog(block, origin=LogOrigin.ISTIO_CNI, first_line=first)
            form = CNI_LOG
            notes.append(f"the last pod the log configures: {cni[-1]}")
        else:
            rules = parse_initlog(text)
    except InitLogError as exc:
        if failure is not None:
            return "", _failed(form, notes, lines[failure - 1], failure)
        rule_lines = [n for n, line in enumerate(lines, 1) if re.match(r"^\s*(?:\[\d+:\d+\] )?-A ", line)]
        if rule_lines and not any(re.match(r"^\s*\*\s?[a-z]+\s*$", line) for line in lines):
            raise InputError(
                rule_lines[0],
                None,
                f"an Istio log ({form}) that shows only part of a dump: rules with no table header (*nat) or chain "
                "declarations (`systemctl status` and `--tail` print the last lines only); read the whole log "
                "(`journalctl -u istio`, `kubectl logs POD -c istio-init`) or run `iptables-save -t nat`",
            ) from None
        raise InputError(exc.line, None, f"an Istio log, but {exc.message}") from None
    if failure is not None and (rules.kind is RulesKind.RESTORE_INPUT or failure > rules.line):
        # the restore ran and failed (no dump after it, or the failure came after the dump)
        return "", _failed(form, notes, lines[failure - 1], failure)
    what = (
        "the last complete iptables-save dump it logged"
        if rules.kind is RulesKind.SAVE_DUMP
        else "the nft rules it programmed"
        if rules.kind is RulesKind.NFT
        else "the restore input it logged (no iptables-save dump after it)"
    )
    notes.append(f"{APPLIED_AT_START}: {what}, from line {rules.line} (Istio {rules.log_format.value} log format)")
    chosen = rules.v4 or rules.nft or ""
    if rules.v4 and rules.v6 and re.search(r"^(?:\[\d+:\d+\] )?-[AI] ", rules.v6, re.M):
        notes.append("the log has IPv6 rules too; podnat reads the IPv4 ones")
    return chosen, InputInfo(form, tuple(notes), None, True)


def _failed(form: str, notes: list[str], line: str, number: int, what: str = "") -> InputInfo:
    reason = f"{what + ', ' if what else ''}line {number}: {_quote(_LOG_RECORD.sub('', line.strip()).strip())}"
    notes.append(f"{APPLIED_AT_START}: the log shows the rules were not installed ({reason})")
    return InputInfo(form, tuple(notes), reason, True)


# --- iptables -L -----------------------------------------------------------------------------------

_LISTING = _Lazy(r"^Chain \S+ [({](?:policy \w+|\d+ references?)")
_LISTING_VERBOSE = _Lazy(r"^\s*pkts\s+bytes\s+target\s+prot\s+opt\s+in\s+out\s+source")


def _refuse_listing(lines: list[str], table: str | None) -> None:
    first = next(n for n, line in enumerate(lines, 1) if _LISTING.match(line.strip()))
    t = table or "nat"
    verbose = any(_LISTING_VERBOSE.match(line) for line in lines)
    names = any(re.search(r"\b(?:anywhere|localhost)\b", line) for line in lines)
    lost = (
        "it abbreviates matches and targets (`owner UID match`, `redir ports`), which podnat cannot read back "
        "faithfully"
        if verbose
        else "it has lost the interfaces (`-i lo`, `-o lo`) and more, which decide Istio's paths"
    )
    if names:
        lost += "; without -n its addresses and owners are names (`anywhere`, `localhost`), not the rules' values"
    raise InputError(
        first,
        None,
        f"this is an `iptables -L{' -v' if verbose else ''}` listing, not a table podnat can read: {lost}; "
        f"run `iptables-save -t {t}` (or `iptables -t {t} -S`) in the pod instead",
    )


# --- iptables -S and headerless bodies -------------------------------------------------------------

_S_LINE = _Lazy(r"^-(?:P|N|A|I)\s")
_OWN_COMMENT = _Lazy(r"^#\s*(?:Generated by|Completed on|Completed$|Warning:)")


def _comment_note(lines: list[str]) -> list[str]:
    """A note for the `#` lines iptables-save does not print itself (a reader's annotations)."""
    found = [n for n, line in enumerate(lines, 1) if line.startswith("#") and not _OWN_COMMENT.match(line)]
    if not found:
        return []
    where = ", ".join(map(str, found[:8])) + (", ..." if len(found) > 8 else "")
    plural = "s" if len(found) > 1 else ""
    return [f"{len(found)} `#` comment line{plural} skipped (line{plural} {where})"]


def _infer_table(lines: list[str], declared: list[str], hint: str | None) -> str | None:
    if hint:
        return hint
    builtins = {name for name in declared if name.isupper() and any(name in c for c in BUILTIN_CHAINS.values())}
    for table in ("nat", "mangle", "raw", "filter"):
        if builtins and builtins == set(BUILTIN_CHAINS[table]):
            return table
    text = "\n".join(lines)
    for table, targets in (
        ("nat", r"REDIRECT|DNAT|SNAT|MASQUERADE"),
        ("mangle", r"TPROXY|MARK|CONNMARK"),
        ("raw", r"-j CT\b|NOTRACK"),
    ):
        if re.search(rf"-j (?:{targets})\b", text):
            return table
    if builtins:
        candidates = [t for t in ("nat", "mangle", "raw", "filter") if builtins <= set(BUILTIN_CHAINS[t])]
        if len(candidates) == 1:
            return candidates[0]
        if "INPUT" in builtins and "PREROUTING" not in builtins and "POSTROUTING" not in builtins:
            return "filter"
        return candidates[0] if candidates else None
    return None


def _from_list_rules(
    lines: list[str],
    table_hint: str | None,
    restore: bool = False,
) -> tuple[list[str], list[int], list[str]]:
    """`iptables [-t T] -S` output (one table or several in a row), or restore input without its `*table`
    line (`restore`), as iptables-save text, with each new line's number in the input, and notes."""
    blocks: list[list[int]] = []
    previous = ""
    notes: list[str] = []
    listed = [n for n, line in enumerate(lines) if _S_LINE.match(line)]
    for n, line in enumerate(lines):
        word = line.split(None, 1)[0] if line.strip() else ""
        if word not in ("-P", "-N", "-A", "-I"):
            if word and not word.startswith("#"):
                # prose between the rules (a blog's headings) is skipped; anything with options in it may be a
                # rule wrapped by the paste, and is not guessed at
                if listed[0] < n < listed[-1] and re.search(r"(?:^|\s)--?[A-Za-z]", line):
                    raise InputError(
                        n + 1,
                        None,
                        f"not a line of `iptables -S` output, between its rules: {_quote(line)}; "
                        "paste the output as iptables printed it",
                    )
                notes.append(f"line {n + 1}: not a rule, skipped: {_quote(line)}")
            continue
        if not blocks or (word == "-P" and previous not in ("-P", "")):
            blocks.append([])
        blocks[-1].append(n)
        previous = word
    out: list[str] = []
    numbers: list[int] = []
    hints = [table_hint] if len(blocks) == 1 else [None] * len(blocks)
    for block, hint in zip(blocks, hints, strict=True):
        body = [lines[n] for n in block]
        declared = [line.split()[1] for line in body if line.split()[0] in ("-P", "-N") and len(line.split()) > 1]
        table = _infer_table(body, declared, hint)
        if table is None:
            raise InputError(
                block[0] + 1,
                None,
                "`iptables -S` output, but podnat cannot tell which table it is: run "
                "`iptables -t nat -S` and include the command line in the paste",
            )
        out.append(f"*{table}")
        numbers.append(block[0] + 1)
        for n in block:
            words = lines[n].split()
            if words[0] == "-P":
                counters = ""
                if len(words) >= 6 and words[3] in ("-c", "--set-counters"):
                    counters = f" [{words[4]}:{words[5]}]"
                if len(words) < 3:
                    raise InputError(n + 1, None, "-P needs a chain and a policy")
                out.append(f":{words[1]} {words[2]}{counters}")
            elif words[0] == "-N":
                out.append(f":{words[1]} - [0:0]" if len(words) == 2 else lines[n])
            else:
                out.append(_counted(lines[n]))
            numbers.append(n + 1)
        out.append("COMMIT")
        numbers.append(block[-1] + 1)
        how = "" if hint else " (from its chains and targets)"
        notes.append(
            f"no `*{table}` line: read as the {table} table{how}" if restore else f"read as the {table} table{how}"
        )
    return out, numbers, notes


_RULE_COUNTERS = _Lazy(r"\s(?:-c|--set-counters) (\d+) (\d+)(?=\s|$)")


def _counted(line: str) -> str:
    """`-A ... -c P B ...` (`iptables -S -v`) as iptables-save prints it: `[P:B] -A ...`."""
    m = _RULE_COUNTERS.search(line)
    return f"[{m.group(1)}:{m.group(2)}] {line[: m.start()]}{line[m.end() :]}" if m else line


def _headerless(lines: list[str], table_hint: str | None) -> tuple[list[str], list[int], str]:
    """A table body whose `*table` line was cut, but which declares its chains."""
    first_decl = next(n for n, line in enumerate(lines) if line.startswith(":"))
    # the cut table ends at its COMMIT (whole tables may follow it)
    end = next(
        (n for n in range(first_decl, len(lines)) if lines[n] == "COMMIT" or lines[n].startswith("*")), len(lines)
    )
    body = lines[first_decl:end]
    declared = [line[1:].split()[0] for line in body if line.startswith(":") and len(line) > 1]
    table = _infer_table([line for line in body if line.startswith("-")], declared, table_hint)
    if table is None:
        raise InputError(
            first_decl + 1,
            None,
            f"rule before any table header (*nat): the paste declares chains "
            f"({', '.join(declared[:4])}) podnat cannot place in a table; paste the whole output of "
            "`iptables-save -t nat`",
        )
    out = [*lines[:first_decl], f"*{table}", *lines[first_decl:]]
    numbers = [*range(1, first_decl + 1), first_decl + 1, *range(first_decl + 1, len(lines) + 1)]
    if not any(line.strip() == "COMMIT" for line in lines):
        raise InputError(
            len(lines),
            None,
            f"the {table} table has no COMMIT: the paste is cut (its `*{table}` line is missing too); "
            f"paste the whole output of `iptables-save -t {table}`",
        )
    return (
        out,
        numbers,
        f"no `*{table}` line (the top of the paste was cut): read as the {table} table from its chain declarations",
    )


# --- the entry point -------------------------------------------------------------------------------


def read_input(text: str, family: Family | None = None) -> tuple[Ruleset, InputInfo]:
    """Recognise `text`'s form, read its rules. Raises InputError or ParseError (line numbers are the
    input's own) for what podnat refuses."""
    if text.lstrip().startswith("{"):
        return detect_and_parse(text, family), InputInfo(NFT_JSON)
    if _plain_dump(text):
        # the common case, a whole dump (100,000 rules too): nothing to recognise line by line
        restore = text.startswith(("-N ", "-I ")) or "\n-N " in text or "\n-I " in text
        return detect_and_parse(text, family), InputInfo(RESTORE if restore else SAVE, tuple(_comment_note_text(text)))
    raw_lines = text.splitlines()
    notes: list[str] = []
    lines: list[str] = []
    table_hint: str | None = None
    for n, raw in enumerate(raw_lines, 1):
        stray = _stray(raw.strip())
        if stray is None:
            lines.append(raw)
            continue
        kind, command = stray
        notes.append(f"line {n}: {kind} skipped: {_quote(raw.strip())}")
        if command and (m := _TABLE_IN_COMMAND.search(command)):
            table_hint = m.group(1)
        lines.append("")  # keep the line numbers the user sees
    stripped = [line.strip() for line in lines]
    if _is_log(stripped):
        # a log's bare commands (`iptables-save` before its output) are records of the log
        kept = [
            raw if (stray := _stray(raw.strip())) is None or stray[0] == "command line" else "" for raw in raw_lines
        ]
        notes = [n for n in notes if "command line skipped" not in n]
        body, info = _read_log(kept, notes)
        if info.failed is not None:
            return Ruleset(Family.IPV4 if family is None else family, {}), info
        if not body.strip():
            raise InputError(None, None, "an Istio log with no rules in it")
        try:
            ruleset = detect_and_parse(body, family)
        except ParseError as exc:
            raise InputError(None, None, f"the rules in the log cannot be read: {exc}") from None
        return ruleset, info
    if any(_LISTING.match(line) for line in stripped):
        _refuse_listing(stripped, table_hint)
    cleaned = "\n".join(lines) + ("\n" if text.endswith("\n") else "")
    if looks_like_nft(cleaned):
        return detect_and_parse(cleaned, family), InputInfo(NFT_TEXT, tuple(notes))
    notes += _comment_note(stripped)
    has_header = any(line.startswith("*") for line in stripped)
    if not has_header and any(line.startswith(("-P ", "-N ")) for line in stripped):
        # `-N` and `-A` with no `-P`: restore input whose `*nat` line was cut (iptables -S prints -P lines)
        restore = not any(line.startswith("-P ") for line in stripped)
        out, numbers, more = _from_list_rules(stripped, table_hint, restore)
        return _parse_mapped(out, numbers, family), InputInfo(RESTORE if restore else LIST_S, tuple(notes + more))
    first = next((line for line in stripped if line and not line.startswith("#")), "")
    if first.startswith(":"):
        out, numbers, note = _headerless(stripped, table_hint)
        return _parse_mapped(out, numbers, family), InputInfo(SAVE, (*notes, note))
    if not has_header:
        first_rule = next((n for n, line in enumerate(stripped, 1) if _S_LINE.match(line)), None)
        if first_rule is not None:
            raise InputError(
                first_rule,
                None,
                "rule before any table header (*nat): bare -A lines with no table header and no chain "
                "declarations (a grep or a fragment) do not say which chains exist or what else is in the "
                "table; paste the whole output of `iptables-save -t nat` (or `iptables -t nat -S`)",
            )
    ruleset = detect_and_parse(cleaned, family)
    form = SAVE
    if ruleset.generator is None and any(line.startswith(("iptables ", "ip6tables ")) for line in stripped):
        form = COMMANDS
    elif any(re.match(r"^-(?:N|I)\s", line) for line in stripped):
        form = RESTORE
    return ruleset, InputInfo(form, tuple(notes))


# Lines of a plain dump: rules, counters, chains, table headers, COMMIT, comments, blank.
_OTHER = re.compile(r"\n(?![-\[:*#\n]|COMMIT|$)")  # a line that starts otherwise
_HEADER = re.compile(r"^\*", re.M)


def _plain_dump(text: str) -> bool:
    """Only table headers, chains, rules, COMMIT, comments and blank lines (one regex scan, in C)."""
    first = text[:1]
    return (
        first in ("*", "#", "\n")
        and _HEADER.search(text) is not None
        and _OTHER.search(text) is None
        and "\r" not in text
    )


_COMMENT = re.compile(r"^[ \t]*#.*$", re.M)


def _comment_note_text(text: str) -> list[str]:
    if "#" not in text:
        return []
    found = [(text.count("\n", 0, m.start()), m.group(0).strip()) for m in _COMMENT.finditer(text)]
    lines = [""] * (found[-1][0] + 1) if found else []
    for index, line in found:
        lines[index] = line
    return _comment_note(lines)


def _parse_mapped(out: list[str], numbers: list[int], family: Family | None) -> Ruleset:
    """Parse generated save text, reporting errors at the input's own line numbers."""
    try:
        return detect_and_parse("\n".join(out) + "\n", family)
    except ParseError as exc:
        line = numbers[exc.line - 1] if 0 < exc.line <= len(numbers) else exc.line
        raise ParseError(line, exc.text, exc.message) from None


def looks_ambient(ruleset: Ruleset) -> bool:
    """A rule set holding ztunnel's in-pod capture: ISTIO_PRERT / istio-prerouting in an istio-ambient or
    iptables table, or a rule that tests ztunnel's socket mark 0x539/0xfff. (Here, with the other
    recognising by content, so that reading a sidecar's table never loads the ambient rule model.)"""
    for table in ruleset.tables.values():
        if table.name.startswith("istio-ambient-"):
            return True
        if "ISTIO_PRERT" in table.chains and "ISTIO_INBOUND" not in table.chains:
            return True
    return False
