"""The report and the diagrams in a real browser: Debian's Chromium driven by chromium-driver through
Selenium (offline: no network, a throwaway profile).

The inputs are real tables: tests/data/default.v4.iptables-save as istio-init installs it, and copies
with one fault each (PREROUTING's jump removed, the outbound REDIRECT sent to a dead port, the owner
rules moved to another uid), explained against the rules Istio means by `podnat explain --args`
(the CLI, as a user runs it) and by the explain use case for the verify page.

Screenshots are taken at device scale 0.5 to keep the reference images small; regenerate them as
tests/unit/test_render_diagrams.py says, and look at them.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, require
from unit.test_render_diagrams import CASES, check_picture, explained, explained_pod, rules_of

from podnat.facts import PodRef
from podnat.render.html import verify_html
from podnat.report import Failed, Skipped, VerifyReport

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARGS = "istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x '' -b '*' -d 15090,15021,15020"
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    require(Path(CHROMIUM).exists(), "needs Chromium (apt: chromium)")
    require(Path(CHROMEDRIVER).exists(), "needs chromium-driver (apt: chromium-driver)")
    require(Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").exists(), "needs fonts-dejavu-core")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        require(False, "needs selenium (pip: the dev extra, make install)")
        raise
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
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
        "--force-device-scale-factor=0.5",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def podnat(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podnat", *args], capture_output=True, text=True, timeout=120, check=False, cwd=REPO
    )


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[dict]]]:
    """Per case: the `--diagram` SVG and the `-o json` flows podnat's CLI wrote for the same table."""
    out = tmp_path_factory.mktemp("pictures")
    made = {}
    for case, table in CASES.items():
        source = out / f"{case}.iptables-save"
        source.write_text(table)
        svg = out / f"{case}.svg"
        done = podnat("explain", str(source), "--args", ARGS, "--diagram", str(svg), "-o", "json")
        assert done.returncode == (0 if case == "healthy" else 1), done.stderr
        made[case] = (svg, json.loads(done.stdout)["flows"])
    return made


def verify_page(tmp_path: Path) -> Path:
    lab = {"node": "lab", "pod_ip": "10.99.0.2", "istio_version": "1.30.3", "capture_mode": "REDIRECT"}
    report = VerifyReport(
        (
            explained_pod(PodRef("bookinfo", "reviews-v1"), "broken", **lab),
            explained_pod(PodRef("bookinfo", "productpage-v1"), "drift", **lab),
            explained_pod(PodRef("bookinfo", "ratings-v1"), "healthy", **lab),
            Failed(
                ref=PodRef("bookinfo", "details-v1"),
                error="istio-proxy cannot read the nat table without NET_ADMIN",
                error_code=3,
            ),
            explained_pod(PodRef("shop", "cart-5d9f"), "owner", **lab),
            Skipped(ref=PodRef("kube-system", "coredns"), mesh="none", notes=("no istio-proxy container",)),
        )
    )
    page = tmp_path / "report.html"
    page.write_text(verify_html(report))
    return page


def visible_pods(driver) -> list[str]:
    return [d.get_attribute("id") for d in driver.find_elements("css selector", "details.pod") if d.is_displayed()]


def test_filter_and_search(browser, tmp_path):
    browser.get(verify_page(tmp_path).as_uri())
    assert len(visible_pods(browser)) == 6
    shown = browser.find_element("id", "shown")
    assert shown.text == "6 of 6 pods shown"

    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "namespace")).select_by_value("shop")
    assert visible_pods(browser) == ["pod-shop-cart-5d9f"] and shown.text == "1 of 6 pods shown"
    Select(browser.find_element("id", "namespace")).select_by_value("")
    browser.find_element("css selector", '.counts button[data-status="drift"]').click()
    assert visible_pods(browser) == ["pod-bookinfo-productpage-v1", "pod-shop-cart-5d9f"]
    assert (
        browser.find_element("css selector", '.counts button[data-status="drift"]').get_attribute("aria-pressed")
        == "true"
    )
    browser.find_element("css selector", '.counts button[data-status="drift"]').click()  # again: all
    assert len(visible_pods(browser)) == 6
    search = browser.find_element("id", "search")
    search.send_keys("--to-ports 15002")  # the rule text of the broken pod's redirect
    assert visible_pods(browser) == ["pod-bookinfo-reviews-v1"]
    search.clear()
    search.send_keys("NET_ADMIN")
    assert visible_pods(browser) == ["pod-bookinfo-details-v1"]
    search.clear()
    search.send_keys("x")
    search.send_keys("\b")
    assert len(visible_pods(browser)) == 6


def test_open_a_pod_click_a_flow_and_read_its_panel(browser, tmp_path):
    browser.get(verify_page(tmp_path).as_uri())
    pod = browser.find_element("id", "pod-bookinfo-reviews-v1")
    views = pod.find_elements("css selector", "section.flow-view")
    assert pod.get_attribute("open") is None and not any(v.is_displayed() for v in views)  # folded
    pod.find_element("css selector", "summary").click()
    assert pod.get_attribute("open") == "true"
    assert not any(v.is_displayed() for v in views)  # a panel shows when its row is clicked

    flows = explained_flows("broken")
    row = browser.find_element("id", "pod-bookinfo-reviews-v1-flow-2")
    row.find_element("css selector", "td.path").click()
    shown = [v for v in views if v.is_displayed()]
    assert [v.get_attribute("data-flow") for v in shown] == ["2"]
    panel = shown[0].find_element("css selector", "g.panel")
    assert panel.get_attribute("data-flow") == "2" and panel.get_attribute("data-status") == "broken"
    live = [g.get_attribute("data-rule") for g in panel.find_elements("css selector", "g.route.live g.rule")]
    assert live == rules_of(flows[1])
    refs = [c.text for c in shown[0].find_elements("css selector", "code.ref")]
    assert refs == rules_of(flows[1]) + rules_of(flows[1]["expected"])
    assert row.get_attribute("class") == "flow-row selected"
    assert browser.current_url.endswith("#pod-bookinfo-reviews-v1-flow-2")  # a link to share

    copies = shown[0].find_elements("css selector", "button.copy")
    texts = [c.text for c in shown[0].find_elements("css selector", "code.rule")]
    assert [c.get_attribute("data-copy") for c in copies] == texts
    copy = copies[texts.index("-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15002")]
    copy.click()
    assert copy.text == "copied"
    from selenium.webdriver.common.keys import Keys

    search = browser.find_element("id", "search")  # paste what was copied: the rule's text
    search.send_keys(Keys.CONTROL, "v")
    assert search.get_attribute("value") == copy.get_attribute("data-copy")
    assert visible_pods(browser) == ["pod-bookinfo-reviews-v1"]  # and the search finds the pod by it
    search.clear()
    search.send_keys("x", Keys.BACKSPACE)

    # the keyboard: from the flow's button, arrow down to the next flow, Enter shows its panel

    button = row.find_element("css selector", "button")
    button.send_keys(Keys.ARROW_DOWN)
    focused = browser.switch_to.active_element
    assert focused.find_element("xpath", "ancestor::tr").get_attribute("id") == "pod-bookinfo-reviews-v1-flow-3"
    focused.send_keys(Keys.ENTER)
    assert [v.get_attribute("data-flow") for v in views if v.is_displayed()] == ["3"]


def explained_flows(case: str) -> list[dict]:
    from podnat.render.data import explanation_data

    return explanation_data(explained(case))["flows"]


def test_the_keyboard_reaches_and_opens_a_pod(browser, tmp_path):
    from selenium.webdriver.common.keys import Keys

    browser.get(verify_page(tmp_path).as_uri())
    body = browser.find_element("tag name", "body")
    body.send_keys(Keys.TAB)  # the first control: the first status count
    reached = []
    for _ in range(12):  # counts, search, namespace, status, then the pods' summaries
        focused = browser.switch_to.active_element
        reached.append(focused.tag_name)
        if focused.tag_name == "summary":
            break
        focused.send_keys(Keys.TAB)
    assert reached[:1] == ["button"] and "input" in reached and "select" in reached and reached[-1] == "summary"
    focused = browser.switch_to.active_element
    pod = focused.find_element("xpath", "..")
    assert pod.get_attribute("id") == "pod-bookinfo-reviews-v1" and pod.get_attribute("open") is None
    focused.send_keys(Keys.ENTER)
    assert pod.get_attribute("open") == "true"
    focused.send_keys(Keys.TAB)  # into the pod: the first flow's button
    assert browser.switch_to.active_element.get_attribute("aria-controls") == "pod-bookinfo-reviews-v1-view-1"


def test_a_link_to_a_flow_opens_its_pod_at_its_panel(browser, tmp_path):
    browser.get(verify_page(tmp_path).as_uri() + "#pod-shop-cart-5d9f-flow-4-own-pod-ip")
    pod = browser.find_element("id", "pod-shop-cart-5d9f")
    assert pod.get_attribute("open") == "true"
    shown = [
        v.get_attribute("data-flow") for v in pod.find_elements("css selector", "section.flow-view") if v.is_displayed()
    ]
    assert shown == ["4-own-pod-ip"]
    others = browser.find_element("id", "pod-bookinfo-reviews-v1")
    assert others.get_attribute("open") is None


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_panel_draws_one_flow_with_its_rules(browser, pictures, case):
    """In the browser's DOM, as drawn: one live route per panel whose rule badges are legs[].rules
    of `podnat explain -o json`; for a failing flow the expected route (expected.legs[].rules),
    dotted as the browser computes its style, and offset from the live one on screen."""
    svg, flows = pictures[case]
    browser.get(svg.as_uri())
    panels = browser.find_elements("css selector", "g.panel")
    ids = [f"{f['type']}-{f['variant']}" if f.get("variant") else str(f["type"]) for f in flows]
    assert [p.get_attribute("data-flow") for p in panels] == ids
    for panel, flow in zip(panels, flows, strict=True):
        live = panel.find_elements("css selector", "g.route.live")
        expected = panel.find_elements("css selector", "g.route.expected")
        assert len(live) == 1
        badges = live[0].find_elements("css selector", "g.rule")
        assert [b.get_attribute("data-rule") for b in badges] == rules_of(flow)
        assert [b.find_element("css selector", "text").text for b in badges] == [
            r.rpartition(":")[2] for r in rules_of(flow)
        ]  # the numbers shown
        if flow["status"] == "ok":
            assert expected == []
            continue
        assert len(expected) == 1
        assert [b.get_attribute("data-rule") for b in expected[0].find_elements("css selector", "g.rule")] == rules_of(
            flow["expected"]
        )
        lines = expected[0].find_elements("css selector", "polyline")
        assert lines and all(line.value_of_css_property("stroke-dasharray") not in ("none", "") for line in lines)
        assert all(
            line.value_of_css_property("stroke-dasharray") in ("none", "")
            for line in live[0].find_elements("css selector", "polyline")
        )
        # offset: where both routes take the same rule, the browser draws the two badges apart
        shared = browser.execute_script(
            "const [live, exp] = arguments; const out = [];"
            "for (const b of exp.querySelectorAll('g.rule')) {"
            "  const twin = live.querySelector(`g.rule[data-rule='${b.dataset.rule}']`);"
            "  if (twin) { const r1 = twin.getBoundingClientRect(), r2 = b.getBoundingClientRect();"
            "    out.push([r2.left - r1.left, r2.top - r1.top]); } }"
            "return out;",
            live[0],
            expected[0],
        )
        assert all(math.hypot(dx, dy) >= 3 for dx, dy in shared), shared
        points = [
            {
                p
                for line in group.find_elements("css selector", "polyline")
                for p in line.get_attribute("points").split()
            }
            for group in (live[0], expected[0])
        ]
        assert not points[0] & points[1], "the expected route runs on the live one"


SCREENSHOTS = [("healthy", flow, None) for flow in ("1", "2", "3", "4", "4-own-pod-ip", "5", "6")] + [
    ("broken", "2", "healthy"),
    ("broken", "4", "healthy"),
    ("drift", "1", "healthy"),
    ("drift", "3", "healthy"),
    ("owner", "6", "healthy"),
]


@pytest.mark.parametrize(("case", "flow", "other"), SCREENSHOTS)
def test_panel_looks_like_the_reference(browser, pictures, case, flow, other):
    svg, _ = pictures[case]
    browser.get(svg.as_uri())
    panel = browser.find_element("css selector", f'g.panel[data-flow="{flow}"]')
    browser.execute_script("arguments[0].scrollIntoView()", panel)
    png = panel.screenshot_as_png
    neighbour = f"chromium-panel-{other}-{flow}.png" if other else "chromium-panel-healthy-2.png"
    if case == "healthy" and flow == "2":
        neighbour = "chromium-panel-healthy-1.png"
    check_picture(png, f"chromium-panel-{case}-{flow}.png", neighbour)


def test_report_looks_like_the_reference(browser, tmp_path):
    browser.get(verify_page(tmp_path).as_uri())
    closed = browser.get_screenshot_as_png()
    check_picture(closed, "chromium-report.png")
    browser.get(verify_page(tmp_path).as_uri() + "#pod-bookinfo-productpage-v1-flow-1")
    opened = browser.get_screenshot_as_png()
    check_picture(opened, "chromium-report-flow.png", "chromium-report.png")
