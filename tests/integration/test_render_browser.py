"""The diagram and the verify page as a browser shows them: headless Debian Chromium takes a screenshot
of the file (offline: no network, a throwaway profile), compared with a reference within a tolerance.

The screenshots are taken at device scale 0.5 (a 1280x900 window -> a 640x450 image) to keep the
reference images small; regenerate them as tests/unit/test_render_diagrams.py says.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import require
from unit.test_render_diagrams import check_picture, explained, verify_report

from podnat.render.html import verify_html
from podnat.render.svg import diagram_svg

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.timeout(180)


def screenshot(page: Path, tmp_path: Path) -> bytes:
    require(Path(CHROMIUM).exists() or shutil.which("chromium") is not None,
            "needs Chromium (apt: chromium) for browser screenshots")
    require(Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").exists(), "needs fonts-dejavu-core")
    binary = CHROMIUM if Path(CHROMIUM).exists() else str(shutil.which("chromium"))
    shot = tmp_path / "screenshot.png"
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", "--force-device-scale-factor=0.5", f"--user-data-dir={tmp_path / 'profile'}",
               f"--screenshot={shot}", "--window-size=1280,900", page.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert shot.exists(), f"Chromium wrote no screenshot (exit {done.returncode}): {done.stderr[-2000:]}"
    return shot.read_bytes()


@pytest.mark.parametrize(("case", "other"), [("healthy", "broken"), ("broken", "healthy")])
def test_svg_in_chromium(case, other, tmp_path):
    page = tmp_path / f"{case}.svg"
    page.write_text(diagram_svg(explained(case), f"bookinfo/reviews-v1 ({case})"))
    check_picture(screenshot(page, tmp_path), f"chromium-svg-{case}.png", f"chromium-svg-{other}.png")


def test_verify_page_in_chromium(tmp_path):
    page = tmp_path / "report.html"
    page.write_text(verify_html(verify_report()))
    check_picture(screenshot(page, tmp_path), "chromium-verify.png", "chromium-svg-healthy.png")
