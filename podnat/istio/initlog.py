"""Rules out of a log: istio-init (1.5 to 1.30), a VM's istio-start.sh and the istio-cni-node DaemonSet.

Pure: text in, text out. istio-iptables logs what it fed `iptables-restore` and, after applying it,
a real `iptables-save` dump; the dump is the better of the two (it is what the kernel held at pod
start), the restore input the fallback. Neither is necessarily what is live now: callers label it so.

Formats (docs/istio-capture.md, "Where a pod's rules are printed"):
  1.5-1.17   `Writing following contents to rules file: FILE` + restore input;
             `iptables-save` (before 1.11) or `Running command: iptables-save` / `Command output:` + dump
  1.18-1.21  `Running iptables-restore with the following input:`; dump as above
  1.22-1.24  dump after `Running command (without lock): iptables-nft-save` / `Command output:`
  1.25+      `Running iptables restore with: BIN and the following input:`;
             `Final iptables state (IPv4):` / `(IPv6):` + dump
  nftables   `nftables rules programmed:` + the nft script (native nftables mode, 1.27+)
istio-cni-node logs the same records between `============= Start iptables configuration for POD`
and the matching `End` line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from podnat.netfilter.errors import InputError


class InitLogFormat(str, Enum):
    """Which istio-iptables log format a log was recognised as."""

    RULES_FILE = "1.5-1.17"  # "Writing following contents to rules file" (published 1.5, 1.7, 1.9 logs)
    RESTORE_INPUT = "1.18-1.21"  # "Running iptables-restore with the following input"
    WITHOUT_LOCK = "1.22-1.24"  # "Running command (without lock): iptables-nft-save"
    FINAL_STATE = "1.25+"  # "Final iptables state (IPv4):"
    NFTABLES = "nftables"  # "nftables rules programmed:" (native nftables, 1.27+)


class RulesKind(str, Enum):
    """What the extracted text is."""

    SAVE_DUMP = "iptables-save dump taken right after the rules were applied"
    RESTORE_INPUT = "input fed to iptables-restore (not a dump)"
    NFT = "nft rules programmed"


class LogOrigin(str, Enum):
    """Which container's log the rules came from."""

    ISTIO_INIT = "istio-init"
    ISTIO_CNI = "istio-cni-node"


@dataclass(frozen=True, slots=True)
class InitLogRules:
    """The rules a log says were applied at pod start; `line` is where the chosen text begins."""

    v4: str  # iptables-save dump or restore input; "" when only nft rules were logged
    v6: str | None
    nft: str | None
    kind: RulesKind
    log_format: InitLogFormat
    origin: LogOrigin
    line: int  # 1-based line of the log (of the whole log, for istio-cni-node) where v4 (or nft) starts


class InitLogError(InputError):
    """Nothing recognisable in a log; `line` points at the most telling line (1-based)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(line, None, message)


# A new log record: `2024-05-01T10:00:00.123456Z<ws>info<ws>...` (istio's logger). Content lines
# (the rules themselves) carry no timestamp.
_RECORD = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?\s")
_ERROR_RECORD = re.compile(r"^\S+\s+(?:error|fatal)\s|Failed to execute|^Error:", re.IGNORECASE)
# `kubectl logs --prefix` adds `[pod/NAME/CONTAINER] `.
_KUBECTL_PREFIX = re.compile(r"^\[pod/[^\]\s]+\] ")

_IPT_LINE = re.compile(r"^(?:\*\s?[a-z]+\s*$|:\S+ |\[\d+:\d+\] -[AI] |-[ANIPXF] |COMMIT\s*$|#)")
_RULE_LINE = re.compile(r"^(?:\[\d+:\d+\] )?-[AI] ")
_NFT_LINE = re.compile(r"^(?:(?:add|flush|delete|insert|replace|create|table|chain|rule|set|map)\b|\s|}|#)")

_WRITING_FILE = re.compile(r"Writing following contents to rules file:\s*(\S*)")
_RESTORE_OLD = re.compile(r"Running (ip6?tables)-restore with the following input:")
_RESTORE_NEW = re.compile(r"Running iptables restore with:\s*(\S+)\s+and the following input:")
_FINAL_STATE = re.compile(r"Final iptables state \(IPv([46])\):")
_RUN_SAVE = re.compile(
    r"Running command(?: \(without lock\))?:\s*(\S*ip6?tables\S*-save)\b"
    r"|^(ip6?tables\S*-save)\s*$"  # before 1.11 the command was echoed bare, its output right after
)
_WITHOUT_LOCK = re.compile(r"Running command \(without lock\):")
_COMMAND_OUTPUT = re.compile(r"Command output:")
_NFT_PROGRAMMED = re.compile(r"nftables rules programmed:")


@dataclass(frozen=True, slots=True)
class _LogSection:
    """One section of the log (a dump, a restore input, an nft listing) and the line it starts on."""

    text: str
    line: int  # 1-based line of the first content line (or of the marker, when empty)


def _strip_prefix(line: str) -> str:
    return _KUBECTL_PREFIX.sub("", line, count=1)


def _take(lines: list[str], start: int, grammar: re.Pattern[str]) -> _LogSection:
    """Content lines from index `start` until a new log record or a line outside the grammar."""
    taken: list[str] = []
    i = start
    while i < len(lines):
        line = lines[i]
        if _RECORD.match(line) or (line.strip() and not grammar.match(line)):
            break
        taken.append(line)
        i += 1
    while taken and not taken[-1].strip():
        taken.pop()
    # Leading blank lines carry nothing either; keep `line` pointing at the first real one.
    lead = 0
    while lead < len(taken) and not taken[lead].strip():
        lead += 1
    text = "\n".join(taken[lead:])
    return _LogSection(text + "\n" if text else "", start + lead + 1)


def _dump_has_rules(text: str) -> bool:
    return any(_RULE_LINE.match(line) for line in text.splitlines())


def parse_initlog(log: str, *, origin: LogOrigin = LogOrigin.ISTIO_INIT, first_line: int = 1) -> InitLogRules:
    """The rules an istio-init log says were applied: the final dump if logged, else the restore input.

    Raises InitLogError (with a line number) when the log holds nothing recognisable."""
    lines = [_strip_prefix(line) for line in log.splitlines()]
    dumps: dict[str, _LogSection] = {}  # "4"/"6" -> last dump
    inputs: dict[str, list[_LogSection]] = {"4": [], "6": []}
    nft: _LogSection | None = None
    seen: set[InitLogFormat] = set()
    first_marker: int | None = None

    i = 0
    while i < len(lines):
        line = lines[i]
        family: str | None = None
        if m := _FINAL_STATE.search(line):
            seen.add(InitLogFormat.FINAL_STATE)
            dumps[m.group(1)] = _take(lines, i + 1, _IPT_LINE)
        elif m := _RESTORE_NEW.search(line):
            seen.add(InitLogFormat.FINAL_STATE)
            family = "6" if "ip6tables" in m.group(1) else "4"
            inputs[family].append(_take(lines, i + 1, _IPT_LINE))
        elif m := _RESTORE_OLD.search(line):
            seen.add(InitLogFormat.RESTORE_INPUT)
            family = "6" if m.group(1) == "ip6tables" else "4"
            inputs[family].append(_take(lines, i + 1, _IPT_LINE))
        elif m := _WRITING_FILE.search(line):
            seen.add(InitLogFormat.RULES_FILE)
            family = "6" if "ip6tables" in m.group(1) else "4"
            inputs[family].append(_take(lines, i + 1, _IPT_LINE))
        elif m := _RUN_SAVE.search(line):
            if _WITHOUT_LOCK.search(line):
                seen.add(InitLogFormat.WITHOUT_LOCK)
            family = "6" if "ip6tables" in (m.group(1) or m.group(2)) else "4"
            j = i + 1
            # The dump follows a `Command output:` record (1.11-1.24), or directly (older fmt.Print logs).
            if j < len(lines) and _COMMAND_OUTPUT.search(lines[j]):
                j += 1
            elif j < len(lines) and _RECORD.match(lines[j]):
                j = len(lines)  # no output logged for this command
            if j < len(lines):
                dumps[family] = _take(lines, j, _IPT_LINE)
        elif _NFT_PROGRAMMED.search(line):
            seen.add(InitLogFormat.NFTABLES)
            nft = _take(lines, i + 1, _NFT_LINE)
        else:
            i += 1
            continue
        if first_marker is None:
            first_marker = i
        i += 1

    if not seen and not dumps:
        raise InitLogError(_telling_line(lines) + first_line - 1, _nothing_found(lines))

    log_format = _pick_format(seen)
    v4_dump, v6_dump = dumps.get("4"), dumps.get("6")
    v4_inputs = [b for b in inputs["4"] if b.text]
    v6_inputs = [b for b in inputs["6"] if b.text]

    if v4_dump is not None and (_dump_has_rules(v4_dump.text) or nft is None):
        if not _dump_has_rules(v4_dump.text) and v4_inputs:
            # An empty dump beside a real restore input: the save ran but showed nothing useful.
            return _from_inputs(v4_inputs, v6_inputs, nft, log_format, origin=origin, first_line=first_line)
        v6 = v6_dump.text if v6_dump is not None and v6_dump.text else _joined(v6_inputs)
        if not v4_dump.text and not v6:
            raise InitLogError(
                v4_dump.line + first_line - 1,
                "the istio-iptables records are there but the iptables-save dump after them is empty",
            )
        return InitLogRules(
            v4=v4_dump.text,
            v6=v6,
            nft=nft.text if nft else None,
            kind=RulesKind.SAVE_DUMP,
            log_format=log_format,
            origin=origin,
            line=v4_dump.line + first_line - 1,
        )
    if v4_inputs or v6_inputs:
        return _from_inputs(v4_inputs, v6_inputs, nft, log_format, origin=origin, first_line=first_line)
    if nft is not None and nft.text:
        return InitLogRules(
            v4="",
            v6=None,
            nft=nft.text,
            kind=RulesKind.NFT,
            log_format=InitLogFormat.NFTABLES,
            origin=origin,
            line=nft.line + first_line - 1,
        )
    where = (first_marker or 0) + 1
    raise InitLogError(
        where + first_line - 1,
        f"found istio-iptables records ({log_format.value} format) but no rules after them: "
        f"{lines[where - 1].strip()[:120]!r}",
    )


def _from_inputs(
    v4: list[_LogSection],
    v6: list[_LogSection],
    nft: _LogSection | None,
    log_format: InitLogFormat,
    *,
    origin: LogOrigin,
    first_line: int,
) -> InitLogRules:
    line = (v4 or v6)[0].line
    return InitLogRules(
        v4=_joined(v4) or "",
        v6=_joined(v6),
        nft=nft.text if nft and nft.text else None,
        kind=RulesKind.RESTORE_INPUT,
        log_format=log_format,
        origin=origin,
        line=line + first_line - 1,
    )


def _joined(blocks: list[_LogSection]) -> str | None:
    text = "".join(b.text for b in blocks if b.text)
    return text or None


def _pick_format(seen: set[InitLogFormat]) -> InitLogFormat:
    # The most specific marker wins: 1.22-1.24 also print 1.18-style restore input.
    for fmt in (
        InitLogFormat.FINAL_STATE,
        InitLogFormat.WITHOUT_LOCK,
        InitLogFormat.RESTORE_INPUT,
        InitLogFormat.RULES_FILE,
        InitLogFormat.NFTABLES,
    ):
        if fmt in seen:
            return fmt
    return InitLogFormat.RULES_FILE  # a bare `Running command: iptables-save` dump


def _telling_line(lines: list[str]) -> int:
    for n, line in enumerate(lines, 1):
        if _ERROR_RECORD.search(line):
            return n
    return max(len(lines), 1)


def _nothing_found(lines: list[str]) -> str:
    if not any(line.strip() for line in lines):
        return "the log is empty (was it rotated, or did the container never run?)"
    n = _telling_line(lines)
    if _ERROR_RECORD.search(lines[n - 1]):
        return f"istio-iptables failed before it logged any rules: {lines[n - 1].strip()[:160]!r}"
    return (
        "no istio-iptables rules recognised (no restore input, iptables-save dump or nft rules; "
        f"Istio 1.11-1.30 formats): {lines[n - 1].strip()[:120]!r}"
    )


def _cni_marker(edge: str, pod: str) -> re.Pattern[str]:
    return re.compile(rf"=+ {edge} iptables configuration for (?:[\w.-]+/)?{re.escape(pod)} =*\s*$")


def extract_cni_block(log: str, pod: str) -> tuple[str, int]:
    """The records istio-cni-node logged for `pod` (the last Start..End pair), and the first line's number."""
    lines = log.splitlines()
    start_re, end_re = _cni_marker("Start", pod), _cni_marker("End", pod)
    starts = [n for n, line in enumerate(lines) if start_re.search(line)]
    if not starts:
        raise InitLogError(
            max(len(lines), 1),
            f"no '============= Start iptables configuration for {pod}' record in the istio-cni-node log "
            "(rotated away, or another node's istio-cni-node programmed this pod)",
        )
    begin = starts[-1]
    end = next((n for n in range(begin + 1, len(lines)) if end_re.search(lines[n])), len(lines))
    return "\n".join(lines[begin + 1 : end]) + "\n", begin + 2


def parse_cni_log(log: str, pod: str) -> InitLogRules:
    """The rules istio-cni-node logged for `pod`; line numbers refer to the whole log."""
    block, first = extract_cni_block(log, pod)
    return parse_initlog(block, origin=LogOrigin.ISTIO_CNI, first_line=first)
