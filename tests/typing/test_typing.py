"""Task[P, R] stays honest: mypy must report exactly the marked lines of tasks_checked.py."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
CHECKED = HERE / "tasks_checked.py"


def expected() -> set[tuple[int, str]]:
    marks = set()
    for number, line in enumerate(CHECKED.read_text().splitlines(), start=1):
        match = re.search(r"# E: ([a-z-]+)", line)
        if match:
            marks.add((number, match.group(1)))
    return marks


def test_mypy_reports_exactly_the_marked_errors() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "--hide-error-context",
         "--show-error-codes", "--no-incremental", str(CHECKED)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    reported = set()
    for line in done.stdout.splitlines():
        match = re.match(r".*tasks_checked\.py:(\d+): error: .*\[([a-z-]+)\]$", line)
        if match:
            reported.add((int(match.group(1)), match.group(2)))
    assert reported == expected(), done.stdout
