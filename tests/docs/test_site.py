"""The docs site in a real browser: scripts/check_site.py, when Chromium is installed.

CI installs Debian's ``chromium`` and ``chromium-driver`` (see .ci/run); elsewhere the test is
skipped with the command that installs them.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

_missing = [b for b in (CHROMIUM, CHROMEDRIVER) if not os.access(b, os.X_OK)]


@pytest.mark.process
@pytest.mark.timeout(180)
@pytest.mark.skipif(
    bool(_missing),
    reason=f"{', '.join(_missing)} missing: 'apt-get install -y chromium chromium-driver'",
)
@pytest.mark.skipif(
    importlib.util.find_spec("selenium") is None,
    reason="selenium missing: pip install -e '.[docs]'",
)
def test_site_in_browser(tmp_path: Path) -> None:
    shot = tmp_path / "site.png"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_site.py"), "--screenshot", str(shot)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report
    assert "check_site: ok" in report
    assert shot.stat().st_size > 10_000, "the screenshot is suspiciously small"
