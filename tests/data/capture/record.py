"""Record the capture script's real output in network namespaces of this machine (root only).

    sudo .venv/bin/python tests/data/capture/record.py [SCENARIO ...]

Each scenario is a fresh netns with Istio's default REDIRECT rules loaded the way some writer would
(istio-init with iptables-nft, with iptables-legacy, both, or native nftables), some traffic to the
netns' own loopback so the counters move, then podnat's capture script run with the toolset of
Istio's proxyv2 image: a PATH where the Debian alternative points `iptables-save` at the legacy
binary, the -nft/-legacy binaries and nft. The script's stdout/stderr/exit status are written here
as SCENARIO.stdout / .stderr / .rc, the marker being MARKER below. Nothing here is read by podnat.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent
sys.path.insert(0, str(DATA.parents[1]))
from podnat.capture import capture_script  # noqa: E402

MARKER = "podnat-recorded"
V4 = (DATA / "default.v4.iptables-save").read_text()
V6 = V4.replace("127.0.0.6/32", "::6/128").replace("127.0.0.1/32", "::1/128")
NFT = (DATA / "nft" / "default.nft").read_text()
LISTENERS = '{"listener_statuses":[]}'
SBIN = Path("/usr/sbin")


def toolset(directory: Path, *, with_nft_save: bool = True) -> None:
    """Istio's proxyv2 toolset: `iptables-save` is the legacy one (its base image's alternative)."""
    directory.mkdir(parents=True, exist_ok=True)
    links = {
        "sh": "/bin/sh",
        "cat": "/bin/cat",
        "nft": SBIN / "nft",
        "ip": "/sbin/ip",
        "iptables-save": SBIN / "xtables-legacy-multi",
        "ip6tables-save": SBIN / "xtables-legacy-multi",
        "iptables-legacy-save": SBIN / "xtables-legacy-multi",
        "ip6tables-legacy-save": SBIN / "xtables-legacy-multi",
    }
    if with_nft_save:
        links |= {"iptables-nft-save": SBIN / "xtables-nft-multi", "ip6tables-nft-save": SBIN / "xtables-nft-multi"}
    for name, target in links.items():
        (directory / name).symlink_to(target)
    agent = directory / "pilot-agent"
    agent.write_text(f"#!/bin/sh\necho '{LISTENERS}'\n")
    agent.chmod(0o755)


def run(
    netns: str, argv: list[str], *, input: str | None = None, env_path: str | None = None, unprivileged: bool = False
) -> subprocess.CompletedProcess[str]:
    prefix = ["ip", "netns", "exec", netns]
    if unprivileged:  # istio-proxy: uid 1337, no capabilities
        prefix += [
            "setpriv",
            "--reuid",
            "1337",
            "--regid",
            "1337",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ]
    if env_path:
        prefix += ["env", "-i", f"PATH={env_path}"]
    return subprocess.run([*prefix, *argv], input=input, capture_output=True, text=True, timeout=30, check=False)


def load(netns: str, writer: str) -> None:
    if writer in ("nft", "legacy", "nft-v4"):
        backend, families = writer.removesuffix("-v4"), (("iptables", V4), ("ip6tables", V6))
        for tool, text in families[:1] if writer.endswith("-v4") else families:
            result = run(netns, [f"{tool}-{backend}-restore"], input=text)
            assert result.returncode == 0, result.stderr
    elif writer == "foreign":
        rule = "ip daddr { 192.0.2.1, 192.0.2.2 } meta mark set 0x1 counter"
        result = run(netns, ["nft", f"add rule ip nat OUTPUT {rule}"])
        assert result.returncode == 0, result.stderr
    elif writer == "native":
        result = run(netns, ["nft", "-f", "-"], input=NFT)
        assert result.returncode == 0, result.stderr
    run(netns, ["ip", "link", "set", "lo", "up"])
    for _ in range(3):  # traffic to the netns' own loopback: counters move
        run(
            netns,
            [
                sys.executable,
                "-c",
                "import socket; s=socket.socket(); s.settimeout(1);\n"
                "try: s.connect(('127.0.0.1', 9))\nexcept OSError: pass",
            ],
        )


SCENARIOS = {
    # name: (writers, unprivileged, image has iptables-nft-save)
    "nft-rules": (("nft",), False, True),  # istio-init in a fresh netns: iptables-nft
    "legacy-rules": (("legacy",), False, True),  # legacy rules existed first: istio-iptables picks legacy
    "both-backends": (("nft", "legacy"), False, True),  # a second copy with the other backend: both run
    "native-nftables": (("native",), False, True),  # --native-nftables (Istio 1.27+)
    "unprivileged": (("nft",), True, True),  # istio-proxy itself: uid 1337 without NET_ADMIN
    "nft-rules-no-nft-save": (("nft",), False, False),  # an image with only legacy binaries and nft
    # another tool's nft rule in iptables-nft's nat table, one iptables-nft-save cannot print (exit 3)
    "nft-rules-unprintable": (("nft", "foreign"), False, True),
    # the same with IPv4 rules only (no table iptables-nft can print holds Istio's rules)
    "nft-v4-rules-unprintable": (("nft-v4", "foreign"), False, True),
}


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("run as root: it creates network namespaces")
    script = capture_script(MARKER, 15000)
    wanted = sys.argv[1:] or list(SCENARIOS)  # e.g. `record.py nft-rules-unprintable`: only that one
    for name in wanted:
        writers, unprivileged, with_nft_save = SCENARIOS[name]
        netns = f"podnat-rec-{os.getpid()}"
        tools = Path(f"/tmp/{netns}-tools")
        shutil.rmtree(tools, ignore_errors=True)
        subprocess.run(["ip", "netns", "add", netns], check=True)
        try:
            toolset(tools, with_nft_save=with_nft_save)
            for writer in writers:
                load(netns, writer)
            result = run(netns, ["sh", "-c", script], env_path=str(tools), unprivileged=unprivileged)
            (HERE / f"{name}.stdout").write_text(result.stdout)
            (HERE / f"{name}.stderr").write_text(result.stderr)
            (HERE / f"{name}.rc").write_text(f"{result.returncode}\n")
            # What the old capture read: the image's unqualified iptables-save (legacy by the alternative).
            old = run(netns, ["iptables-save", "-c"], env_path=str(tools), unprivileged=unprivileged)
            (HERE / f"{name}.unqualified-iptables-save").write_text(old.stdout + old.stderr)
        finally:
            subprocess.run(["ip", "netns", "delete", netns], check=False)
            shutil.rmtree(tools, ignore_errors=True)
        print(f"{name}: exit {result.returncode}")


if __name__ == "__main__":
    main()
