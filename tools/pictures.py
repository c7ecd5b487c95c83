"""`make pictures`: the README's reference pictures, from real tables, with podnat's own renderers.

    python -m tools.pictures [--out docs/pictures]

- default-pod.png: every panel of the pod Istio's injector sets up by default
  (tests/data/default.v4.iptables-save), as `podnat explain --diagram` draws it;
- drift-1.png, drift-3.png: the same table with PREROUTING's jump to ISTIO_INBOUND removed (the lab's
  `no-prerouting-jump` fault), reconciled with what `istio-iptables` installs (`--args`): types 1 and 3
  bypass Envoy, drawn red beside the expected route;
- broken-2.png: the outbound REDIRECT sent to 15002, where nothing listens (the lab's `dead-port`);
- report.png: `podnat explain --html` of the drifted table in Chromium, type 1's panel opened.

SVG to PNG by rsvg-convert (librsvg2-bin); the report by Chromium through Selenium (the dev extra).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from podnat.istio.explain import explain
from podnat.istio.flows import PodContext
from podnat.netfilter.parse import parse_ruleset
from podnat.render.diagram import build_diagram, flow_id
from podnat.render.svg import diagram_svg, panel_svg

REPO = Path(__file__).resolve().parent.parent
DEFAULT = REPO / "tests" / "data" / "default.v4.iptables-save"
ARGS = "istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x '' -b '*' -d 15090,15021,15020"
FAULTS = {
    "drift": ("-A PREROUTING -p tcp -j ISTIO_INBOUND\n", ""),
    "broken": ("--to-ports 15001", "--to-ports 15002"),
}


def png(svg: str, target: Path, zoom: float) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".svg") as source:
        source.write(svg)
        source.flush()
        subprocess.run(["rsvg-convert", f"--zoom={zoom}", source.name, "-o", str(target)], check=True, timeout=60)
    print(f"wrote {target.relative_to(REPO) if target.is_relative_to(REPO) else target}")


def report_picture(table: Path, target: Path, work: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    page = work / "report.html"
    done = subprocess.run(
        [sys.executable, "-m", "podnat", "explain", table.name, "--args", ARGS, "--html", str(page)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=table.parent,
    )
    if done.returncode not in (0, 1):
        raise SystemExit(f"podnat explain --html failed: {done.stderr}")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--force-device-scale-factor=0.75",
        "--window-size=1280,1100",
        f"--user-data-dir={work / 'profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        driver.get(page.as_uri())
        driver.find_element("css selector", "tr.flow-row").click()
        driver.execute_script("window.scrollTo(0, 0)")
        target.write_bytes(driver.get_screenshot_as_png())
    finally:
        driver.quit()
    print(f"wrote {target.relative_to(REPO) if target.is_relative_to(REPO) else target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "pictures")
    out = parser.parse_args().out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    default = DEFAULT.read_text()
    expected = parse_ruleset(default)
    png(
        diagram_svg(explain(expected, PodContext()), "the default sidecar pod (podnat explain --diagram)"),
        out / "default-pod.png",
        0.6,
    )
    for case, (old, new) in FAULTS.items():
        expl = explain(parse_ruleset(default.replace(old, new)), PodContext(), expected=expected)
        diagram = build_diagram(expl, case)
        for index, panel in enumerate(diagram.panels):
            if panel.failing and panel.flow in ("1", "2", "3"):
                png(panel_svg(diagram, index), out / f"{case}-{flow_id(panel.report)}.png", 0.8)
    with tempfile.TemporaryDirectory() as work:
        table = Path(work) / "no-prerouting-jump.iptables-save"
        table.write_text(default.replace(*FAULTS["drift"]))
        report_picture(table, out / "report.png", Path(work))


if __name__ == "__main__":
    main()
