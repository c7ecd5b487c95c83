"""verify's progress bar: rich's, where rich would show one; nothing loaded where it would not."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CODE = """
import sys
from podnat.render.emit import verify_progress
with verify_progress(3) as progress:
    progress.advance()
print(type(progress).__name__, 'rich.console' in sys.modules)
"""


@pytest.mark.parametrize(
    ("env", "shown"),
    [
        ({}, "_NoProgress False"),  # stderr is a pipe here
        ({"FORCE_COLOR": ""}, "_NoProgress False"),  # rich: empty FORCE_COLOR is no terminal
        ({"TTY_COMPATIBLE": "1"}, "VerifyProgress True"),
        ({"FORCE_COLOR": "1"}, "VerifyProgress True"),
        ({"FORCE_COLOR": "1", "TTY_COMPATIBLE": "0"}, "VerifyProgress True"),  # rich decides: no bar, loaded
    ],
)
def test_rich_is_loaded_only_where_it_may_show_a_bar(env: dict[str, str], shown: str) -> None:
    base = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    done = subprocess.run(
        [sys.executable, "-c", CODE], env={**base, **env}, capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == shown


def test_where_rich_says_no_terminal_the_bar_it_makes_stays_off() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from podnat.render.emit import verify_progress\nprint(verify_progress(1).enabled)",
        ],
        env={**os.environ, "FORCE_COLOR": "1", "TTY_COMPATIBLE": "0"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "False"
