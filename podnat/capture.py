"""The capture: one shell script that prints what podnat reads in a pod's network namespace, and the
reader of what it printed. Pure: text in, typed sections out (the exec itself is the caller's).

Every source runs the same script (exec in istio-proxy, podnat's debug container, the node agent) and
reads its output with `parse_output` + `nat_tables`.

Both iptables backends are read explicitly: `iptables-nft-save -c`, `ip6tables-nft-save -c`,
`iptables-legacy-save -c`, `ip6tables-legacy-save -c`; the unqualified `iptables-save -c` only where
neither qualified binary exists. Why: Istio's proxyv2 image sets the Debian alternative to legacy
(`update-alternatives --set iptables /usr/sbin/iptables-legacy`), while istio-init / istio-cni write
with iptables-nft in a fresh network namespace, so the image's unqualified `iptables-save` prints the
empty legacy view of a pod whose rules are all in nf_tables.

`nat_tables` uses the backend that holds Istio's rules (chains named ISTIO_*, any case); when both do,
it traces the nf_tables one and says that legacy holds them too (the kernel runs both at each hook).
When no iptables binary is in the image, nft's own listing still shows iptables-nft tables (`table ip
nat` with upper-case ISTIO_* chains), and those are recognised too, as are Istio's native tables
(`inet istio-proxy-nat`, 1.27+). A dump that ran and failed (a table its own writer cannot print) is a
failure, not a reason to trace what is left of it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

DEFAULT_ADMIN_PORT = 15000


class Backend(str, Enum):
    """Which iptables binary printed a dump."""

    NFT = "nft"  # iptables-nft-save: the nf_tables kernel API (istio-init's choice in a fresh netns)
    LEGACY = "legacy"  # iptables-legacy-save: the x_tables kernel API
    UNQUALIFIED = "unqualified"  # iptables-save: whichever the image's alternative names


class IpFamily(str, Enum):
    """The IP family of an iptables dump."""

    V4 = "v4"
    V6 = "v6"


class DumpState(str, Enum):
    """What one iptables-save run gave."""

    ISTIO = "istio"  # rules, among them Istio's chains
    RULES = "rules"  # rules, none of them Istio's
    EMPTY = "empty"  # ran, printed no rule
    DENIED = "denied"  # no CAP_NET_ADMIN (both backends say so in their own words)
    MISSING = "missing"  # the binary is not in the image
    FAILED = "failed"  # anything else


class NftContent(str, Enum):
    """What nft's own listing shows of Istio."""

    NATIVE = "native"  # Istio's native nftables tables (istio-proxy-nat, -mangle, -raw)
    IPTABLES_NFT = "iptables-nft"  # ip/ip6 tables written by iptables-nft with ISTIO_* chains
    NONE = "none"  # read, nothing of Istio's
    UNREAD = "unread"  # nft missing, denied or failed


@dataclass(frozen=True, slots=True)
class Section:
    """One command's output between the script's markers, and its exit status."""

    stdout: str
    stderr: str
    returncode: int


@dataclass(frozen=True, slots=True)
class IptablesDump:
    """One iptables-save run: the backend and family it read, what it printed, what that means."""

    backend: Backend
    family: IpFamily
    command: str
    section: Section

    @property
    def state(self) -> DumpState:
        return _dump_state(self.section)

    @property
    def denial(self) -> str | None:
        """The permission message the binary printed, when it had no CAP_NET_ADMIN."""
        return _first_line(self.section, PERMISSION) if self.state is DumpState.DENIED else None


@dataclass(frozen=True, slots=True)
class Capture:
    """Everything one capture run printed, by reading."""

    iptables: tuple[IptablesDump, ...]  # the dumps that ran, in script order
    nft: Section | None  # `nft -j list ruleset`, or the text listing where nft has no JSON
    listeners: Section | None  # Envoy's listeners?format=json
    routing: Mapping[str, Section] = field(default_factory=dict)  # rule, route, rule6, route6

    def dump(self, backend: Backend, family: IpFamily) -> IptablesDump | None:
        return next((d for d in self.iptables if d.backend is backend and d.family is family), None)

    @property
    def nft_content(self) -> NftContent:
        text = self.nft_text
        if text is None:
            return NftContent.NONE if self.nft is not None and self.nft.returncode == 0 else NftContent.UNREAD
        return nft_content(text)

    @property
    def nft_text(self) -> str | None:
        nft = self.nft
        return nft.stdout if nft is not None and nft.returncode == 0 and nft.stdout.strip() else None

    @property
    def permission_messages(self) -> tuple[str, ...]:
        """Each distinct permission message (iptables backends and nft), in the order printed."""
        found = [d.denial for d in self.iptables if d.denial]
        if self.nft is not None and self.nft.returncode != 0:
            line = _first_line(self.nft, PERMISSION)
            if line:
                found.append(line)
        return tuple(dict.fromkeys(found))


class NatProblem(str, Enum):
    """Why a capture gave no table."""

    PERMISSION = "permission"  # every backend that exists refused (no CAP_NET_ADMIN)
    MISSING = "missing"  # no iptables-save of any kind, and nft shows nothing of Istio's
    FAILED = "failed"  # iptables-save failed for another reason
    EMPTY = "empty"  # every backend read, none holds a rule, nft shows nothing of Istio's
    NO_OUTPUT = "no-output"  # the capture printed no iptables section at all


@dataclass(frozen=True, slots=True)
class NatTables:
    """The rule tables to trace, and where they came from."""

    command: str  # e.g. "iptables-nft-save -c", "nft -j list ruleset (native nftables)"
    v4: str  # iptables-save text, or nft's listing when the rules came from there ("" for native mode)
    v6: str | None
    nft: str | None  # nft's own listing where read
    backend: Backend | None  # the iptables backend traced (None: the rules came from nft's listing)
    also: tuple[str, ...] = ()  # other commands whose output holds Istio's rules too: the kernel runs both


@dataclass(frozen=True, slots=True)
class NatFailure:
    """No table: the reason and the one-line detail the binary printed."""

    problem: NatProblem
    command: str
    detail: str
    returncode: int = 0
    legacy_warning: bool = False  # iptables-nft-save warned that legacy tables exist
    nft: NftContent = NftContent.UNREAD
    read: tuple[str, ...] = ()  # the iptables commands that ran and printed no rule


# Exit status 4 (nft backend) / 1 (legacy) / nft's own: a process without CAP_NET_ADMIN asked.
# (iptables-legacy-save 1.8.9 says "Failed to list table names in /proc/net/ip_tables_names: Permission
# denied"; the rest are the nft backend's, older legacy releases' and nft's words.)
PERMISSION = re.compile(
    r"Permission denied \(you must be root\)|Could not fetch rule set generation id|"
    r"Cannot initialize: Permission denied|can't open lock file|Operation not permitted|"
    r"Failed to list table names in \S+: Permission denied"
)
MISSING = re.compile(r"executable file not found|not found|No such file or directory")
_LEGACY_WARNING = "iptables-legacy tables present"

# Section name -> (backend, family, command), in script order.
IPTABLES_SECTIONS: dict[str, tuple[Backend, IpFamily, str]] = {
    "v4_nft": (Backend.NFT, IpFamily.V4, "iptables-nft-save -c"),
    "v6_nft": (Backend.NFT, IpFamily.V6, "ip6tables-nft-save -c"),
    "v4_legacy": (Backend.LEGACY, IpFamily.V4, "iptables-legacy-save -c"),
    "v6_legacy": (Backend.LEGACY, IpFamily.V6, "ip6tables-legacy-save -c"),
    "v4": (Backend.UNQUALIFIED, IpFamily.V4, "iptables-save -c"),
    "v6": (Backend.UNQUALIFIED, IpFamily.V6, "ip6tables-save -c"),
}
NFT_COMMAND = "nft -j list ruleset 2>/dev/null || nft list ruleset"  # JSON where nft has it, else text


def listeners_argv(port: int) -> list[str]:
    argv = ["pilot-agent", "request", "GET", "listeners?format=json"]
    return [*argv, "--debug-port", str(port)] if port != DEFAULT_ADMIN_PORT else argv


def routing_commands(table: int | None) -> dict[str, str]:
    """The capture's policy-routing sections (none when the pod is not in TPROXY mode)."""
    if table is None:
        return {}
    return {
        "rule": "ip rule show",
        "route": f"ip route show table {table}",
        "rule6": "ip -6 rule show",
        "route6": f"ip -6 route show table {table}",
    }


SOCKETS_COMMAND = "cat /proc/net/tcp /proc/net/tcp6"


def listening_ports(text: str) -> tuple[int, ...]:
    """The TCP ports something listens on, from /proc/net/tcp and tcp6 (state 0A), sorted."""
    ports: set[int] = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[3] == "0A" and ":" in fields[1]:
            try:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
            except ValueError:
                continue
    return tuple(sorted(ports))


def capture_script(
    marker: str,
    port: int = DEFAULT_ADMIN_PORT,
    routing_table: int | None = None,
    *,
    listeners: bool = True,
    sockets: bool = False,
    skip_known: bool = False,
    proc_net: str = "/proc/net",
) -> str:
    """One shell run printing each reading between `MARKER begin NAME` and `MARKER end NAME RC` lines.

    Both stdout and stderr get the markers, so each section's stderr is attributed too. The end marker
    starts on a fresh line (`printf '\\n...'`): output without a final newline stays intact. The
    unqualified `iptables-save` runs only where neither `-nft` nor `-legacy` binary of that family
    exists. With a `routing_table` (TPROXY pods) it also prints the policy routing.

    With `skip_known` (the node agent's: a process each is most of what reading a pod costs it), two
    commands are not run where what they would print is known without them (shell built-ins decide,
    reading `proc_net`, the namespace's own /proc/net): a legacy `-save` binary that exists, where no
    x_tables table is loaded in the namespace (its `ip_tables_names`/`ip6_tables_names` readable and
    empty: it would print nothing and exit 0); and curl for the listeners (after `pilot-agent`, absent on
    the node), where no TCP socket listens in the namespace (the first entry of `tcp` and `tcp6`, where
    the kernel lists listening sockets first, is not LISTEN: `curl -sf` would be refused, print nothing
    and exit 7)."""

    def section(name: str, command: str) -> str:
        return (
            f"echo '{marker} begin {name}'; echo '{marker} begin {name}' >&2; {command}; rc=$?; "
            f"printf '\\n{marker} end {name} %s\\n' $rc; printf '\\n{marker} end {name} %s\\n' $rc >&2"
        )

    parts = []
    for name, (backend, family, command) in IPTABLES_SECTIONS.items():
        if backend is Backend.LEGACY and skip_known:
            names = f"{proc_net}/{'ip_tables_names' if family is IpFamily.V4 else 'ip6_tables_names'}"
            binary = command.split()[0]
            skip = f"command -v {binary} >/dev/null 2>&1 && podnat_no_tables {names}"
            parts.append(section(name, f"if {skip}; then :; else {command}; fi"))
        elif backend is Backend.UNQUALIFIED:
            tool = "iptables" if family is IpFamily.V4 else "ip6tables"
            parts.append(
                f"if ! command -v {tool}-nft-save >/dev/null 2>&1 && "
                f"! command -v {tool}-legacy-save >/dev/null 2>&1; then {section(name, command)}; fi"
            )
        else:
            parts.append(section(name, command))
    parts.append(section("nft", NFT_COMMAND))
    if listeners:
        request = (
            " ".join(listeners_argv(port)[:3])
            + " 'listeners?format=json'"
            + (f" --debug-port {port}" if port != DEFAULT_ADMIN_PORT else "")
        )
        curl = f"curl -sf http://127.0.0.1:{port}/listeners?format=json"
        ask = f"if podnat_listening; then {curl}; else podnat_rc 7; fi" if skip_known else curl
        parts.append(section("listeners", f"{request} || {ask}"))
    parts.extend(section(name, command) for name, command in routing_commands(routing_table).items())
    if sockets:  # an ambient pod: the sockets ztunnel listens on in the pod's namespace
        parts.append(section("sockets", SOCKETS_COMMAND))
    functions = _SKIP_FUNCTIONS.format(net=proc_net) if skip_known else ""
    return functions + "\n".join(parts) + "\n"


# The capture script's shell functions (built-ins only: no process). podnat_no_tables FILE: FILE is readable
# and empty. podnat_listening: a TCP socket listens in the namespace (or it cannot be told: no file, one that is
# not a regular file or unreadable, no header line).
_SKIP_FUNCTIONS = (  # one line, before the first section's: the line numbers sh puts in its messages stay
    'podnat_no_tables() {{ [ -f "$1" ] && [ -r "$1" ] || return 1; podnat_l=x; read -r podnat_l 2>/dev/null <"$1"; '
    '[ -z "$podnat_l" ]; }}; '
    "podnat_listening() {{ podnat_n=; for podnat_f in {net}/tcp {net}/tcp6; do "
    '[ -e "$podnat_f" ] || continue; [ -f "$podnat_f" ] && [ -r "$podnat_f" ] || return 0; podnat_n=1; '
    'podnat_s=0A; {{ read -r _ && {{ read -r _ _ _ podnat_s _ || podnat_s=; }}; }} 2>/dev/null <"$podnat_f"; '
    '[ "$podnat_s" = 0A ] && return 0; '
    'done; [ -z "$podnat_n" ]; }}; '
    'podnat_rc() {{ return "$1"; }}; '
)

# Any marker's sections, compiled once.
_SECTION = re.compile(r"^(\S+) begin (\w+)\n(.*?)\n\1 end \2 (\d+)$", re.S | re.M)


def split_sections(stdout: str, stderr: str, marker: str) -> dict[str, Section] | None:
    """The sections of a capture_script run, or None when the script never started (no shell)."""
    out, err = _split(stdout, marker), _split(stderr, marker)
    if not out:
        return None
    return {name: Section(text, err.get(name, ("", rc))[0], rc) for name, (text, rc) in out.items()}


def _split(text: str, marker: str) -> dict[str, tuple[str, int]]:
    return {m.group(2): (m.group(3), int(m.group(4))) for m in _SECTION.finditer(text) if m.group(1) == marker}


def read_sections(sections: Mapping[str, Section]) -> Capture:
    """The typed capture out of named sections (from the script, or from one exec per command)."""
    dumps = tuple(
        IptablesDump(backend, family, command, sections[name])
        for name, (backend, family, command) in IPTABLES_SECTIONS.items()
        if name in sections
    )
    routing = {name: sections[name] for name in ("rule", "route", "rule6", "route6") if name in sections}
    return Capture(dumps, sections.get("nft"), sections.get("listeners"), routing)


def parse_output(stdout: str, stderr: str, marker: str) -> Capture | None:
    """What the exec of capture_script printed, as a Capture (None when the script never started)."""
    sections = split_sections(stdout, stderr, marker)
    return None if sections is None else read_sections(sections)


def nat_tables(capture: Capture) -> NatTables | NatFailure:
    """The tables to trace: the backend holding Istio's rules (nf_tables first when both do), else
    Istio's tables in nft's listing, else any backend with rules; or why there are none."""
    by_backend: dict[Backend, tuple[IptablesDump | None, IptablesDump | None]] = {
        b: (capture.dump(b, IpFamily.V4), capture.dump(b, IpFamily.V6)) for b in Backend
    }

    def holds(backend: Backend, state: DumpState) -> bool:
        return any(d is not None and d.state is state for d in by_backend[backend])

    nft_text = capture.nft_text
    content = capture.nft_content
    istio = [b for b in Backend if holds(b, DumpState.ISTIO)]
    with_rules = istio or [b for b in Backend if holds(b, DumpState.RULES)]
    if with_rules:
        backend = with_rules[0]
        v4, v6 = by_backend[backend]
        unreadable = _unreadable((v4, v6) if backend is not Backend.LEGACY else (v4,), content)
        if unreadable is not None:
            return unreadable
        also = tuple(_command(by_backend[b]) for b in with_rules[1:])
        v4_text = v4.section.stdout if v4 is not None and v4.section.returncode == 0 else ""
        # iptables-nft-save warns on stderr when legacy tables exist: keep it with the dump, as a comment
        # line, so the analysis can say that the kernel runs both rule sets.
        warnings = [
            line.strip().lstrip("# ")
            for d in (v4, v6)
            if d is not None
            for line in d.section.stderr.splitlines()
            if _LEGACY_WARNING in line
        ]
        if Backend.LEGACY in with_rules[1:] and not warnings:
            warnings.append(
                f"{_LEGACY_WARNING} and hold Istio's rules too (iptables-legacy-save -c): the kernel runs both"
            )
        header = "".join(f"# {w}\n" for w in dict.fromkeys(warnings))
        ok_v6 = v6 is not None and v6.section.returncode == 0 and v6.section.stdout.strip()
        v6_text = v6.section.stdout if ok_v6 and v6 is not None else None
        return NatTables(_command((v4, v6)), header + v4_text, v6_text, nft_text, backend, also)
    if content is NftContent.NATIVE and nft_text is not None:
        return NatTables(_nft_command(nft_text) + " (native nftables)", "", None, nft_text, None)
    if content is NftContent.IPTABLES_NFT and nft_text is not None:
        unreadable = _unreadable((*by_backend[Backend.NFT], *by_backend[Backend.UNQUALIFIED]), content)
        if unreadable is not None:
            return unreadable
        # No iptables binary could read them; nft's listing of the same tables serves (same rules).
        nft_v6 = nft_text if _nft_istio_families(nft_text) & {"ip6", "inet"} else None
        return NatTables(_nft_command(nft_text) + " (iptables-nft tables)", nft_text, nft_v6, nft_text, None)
    return _failure(capture, content)


def _unreadable(dumps: tuple[IptablesDump | None, ...], content: NftContent) -> NatFailure | None:
    """The first of `dumps` that ran and failed (not denied, not missing): a table its own writer cannot
    print (e.g. another tool's nft rule in iptables-nft's nat table: iptables-nft-save exits 3 with the
    dump cut short). Tracing the rest, or nft's listing of the same tables (xtables matches and targets
    it shows as opaque `xt` expressions), would report flows as unknown or drift: it is an error.
    Legacy's IPv6 dump is not asked: it fails where the kernel has no ip6_tables, which is no table."""
    failed = next((d for d in dumps if d is not None and d.state is DumpState.FAILED), None)
    if failed is None:
        return None
    return NatFailure(
        NatProblem.FAILED, failed.command, _one_line(failed.section), failed.section.returncode, nft=content
    )


def _failure(capture: Capture, content: NftContent) -> NatFailure:
    present = [d for d in capture.iptables if d.state is not DumpState.MISSING]
    legacy_warning = any(_LEGACY_WARNING in d.section.stderr for d in capture.iptables)
    if not capture.iptables:
        return NatFailure(NatProblem.NO_OUTPUT, "iptables-save -c", "", nft=content)
    if not present:
        first = capture.iptables[0]
        return NatFailure(
            NatProblem.MISSING, first.command, _one_line(first.section), first.section.returncode, nft=content
        )
    empty = [d for d in present if d.state is DumpState.EMPTY]
    if empty:
        return NatFailure(
            NatProblem.EMPTY, empty[0].command, "", 0, legacy_warning, content, tuple(d.command for d in empty)
        )
    denied = [d for d in present if d.state is DumpState.DENIED]
    if denied:
        return NatFailure(
            NatProblem.PERMISSION, denied[0].command, denied[0].denial or "", denied[0].section.returncode, nft=content
        )
    failed = present[0]
    return NatFailure(
        NatProblem.FAILED, failed.command, _one_line(failed.section), failed.section.returncode, nft=content
    )


def _command(dumps: tuple[IptablesDump | None, IptablesDump | None]) -> str:
    v4, v6 = dumps
    chosen = v4 if v4 is not None and v4.state in (DumpState.ISTIO, DumpState.RULES) else (v6 or v4)
    return chosen.command if chosen is not None else "iptables-save -c"


def _nft_command(text: str) -> str:
    return "nft -j list ruleset" if text.lstrip().startswith("{") else "nft list ruleset"


_ISTIO_CHAIN = re.compile(r"^(?:\[\d+:\d+\] )?(?::ISTIO|-A ISTIO|-A \S+ .*-j ISTIO)", re.M | re.I)
_RULE = re.compile(r"^(?:\[\d+:\d+\] )?-A ", re.M)


def _dump_state(section: Section) -> DumpState:
    both = section.stderr + section.stdout
    if section.returncode != 0:
        if PERMISSION.search(both):
            return DumpState.DENIED
        if section.returncode in (126, 127) or MISSING.search(section.stderr):
            return DumpState.MISSING
        return DumpState.FAILED
    if not _RULE.search(section.stdout):
        return DumpState.EMPTY
    return DumpState.ISTIO if _ISTIO_CHAIN.search(section.stdout) else DumpState.RULES


def nft_content(text: str) -> NftContent:
    """What nft's listing (text or JSON) shows of Istio: its native tables, iptables-nft tables with
    ISTIO_* chains (chain names in any case), or nothing."""
    if not text.strip():
        return NftContent.NONE
    tables = _nft_tables(text)
    if any(name.lower().startswith(("istio-proxy-", "istio-ambient-")) for _, name in tables):
        return NftContent.NATIVE
    return NftContent.IPTABLES_NFT if _nft_istio_families(text) else NftContent.NONE


def _nft_istio_families(text: str) -> set[str]:
    """The families of ip/ip6/inet tables (not Istio's native ones) with a chain named istio* (any case)."""
    return {
        family
        for (family, table), chains in _nft_chains(text).items()
        if family in ("ip", "ip6", "inet")
        and not table.lower().startswith(("istio-proxy-", "istio-ambient-"))
        and any(c.lower().startswith("istio") for c in chains)
    }


def _nft_tables(text: str) -> set[tuple[str, str]]:
    return set(_nft_chains(text))


_TABLE = re.compile(r"^\s*table\s+(\w+)\s+\"?([^\s\"{]+)\"?\s*\{", re.M)
_CHAIN = re.compile(r"^\s*chain\s+\"?([^\s\"{]+)\"?\s*\{")


def _nft_chains(text: str) -> dict[tuple[str, str], list[str]]:
    """(family, table) -> chain names, from `nft list ruleset` or `nft -j list ruleset`."""
    found: dict[tuple[str, str], list[str]] = {}
    if text.lstrip().startswith("{"):
        try:
            items = json.loads(text).get("nftables") or []
        except (ValueError, AttributeError):
            return found
        for item in items:
            if not isinstance(item, dict):
                continue
            if isinstance(item.get("table"), dict):
                t = item["table"]
                found.setdefault((str(t.get("family")), str(t.get("name"))), [])
            elif isinstance(item.get("chain"), dict):
                c = item["chain"]
                found.setdefault((str(c.get("family")), str(c.get("table"))), []).append(str(c.get("name")))
        return found
    current: tuple[str, str] | None = None
    for line in text.splitlines():
        table = _TABLE.match(line)
        if table:
            current = (table.group(1), table.group(2))
            found.setdefault(current, [])
            continue
        chain = _CHAIN.match(line)
        if chain and current is not None:
            found[current].append(chain.group(1))
    return found


def _first_line(section: Section, pattern: re.Pattern[str]) -> str | None:
    for line in (section.stderr + "\n" + section.stdout).splitlines():
        if pattern.search(line):
            return line.strip()
    return None


def _one_line(section: Section) -> str:
    return " ".join((section.stderr + section.stdout).split())[:160]
