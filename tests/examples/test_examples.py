"""The example programs run as their docstrings say: real workers, the suite's own Redis.

Each example is run as a user runs it, ``python examples/<name>.py``, in the examples folder,
next to a worker started with ``python -m omnitask worker -A <module> -c 1`` on that folder.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, WorkerFactory

pytestmark = pytest.mark.process

EXAMPLES = ROOT / "examples"
ON_PATH = {"PYTHONPATH": str(EXAMPLES)}  # `-A report` imports examples/report.py


def _env(redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNITASK_")}
    env.update(OMNITASK_BROKER_URL=redis_url, PYTHONUNBUFFERED="1")
    return env


def run_example(name: str, *args: str, redis_url: str, timeout_s: float = 30.0) -> str:
    done = subprocess.run(
        [sys.executable, name, *args],
        cwd=EXAMPLES,
        env=_env(redis_url),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize("name", ["async_io.py", "report.py", "webapp.py"])
def test_docstring_says_how_to_run_it(name: str) -> None:
    doc = ast.get_docstring(ast.parse((EXAMPLES / name).read_text()))
    assert doc is not None and f"python {name}" in doc


def test_async_io_fetches_overlap_on_one_child(start_worker: WorkerFactory, redis_url: str) -> None:
    start_worker("async_io", env=ON_PATH)
    out = run_example("async_io.py", redis_url=redis_url)
    assert "1 fetch: 'page /warm-up' in " in out, out
    match = re.search(r"^100 fetches: ([\d.]+) s on one child", out, re.MULTILINE)
    assert match is not None, out
    # One by one they would take 50 s; on the child's event loop, about the time of one.
    assert float(match[1]) < 10, out


def test_report_shows_progress_until_done(start_worker: WorkerFactory, redis_url: str) -> None:
    start_worker("report", env=ON_PATH)
    out = run_example("report.py", "--chunks", "8", redis_url=redis_url)
    assert re.search(r"\[#+\.*\] [1-8]/8", out), out  # at least one progress bar was drawn
    match = re.search(r"^(\d+) rows written to (\S+) in [\d.]+ s$", out, re.MULTILINE)
    assert match is not None, out
    path = Path(match[2])
    try:
        assert match[1] == "800"
        assert len(path.read_text().splitlines()) == 801  # a header and 100 rows a chunk
    finally:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def webapp(redis_url: str, log: Path) -> Iterator[str]:
    """``python webapp.py --port 0``; yields its base URL, read from its first line."""
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "webapp.py", "--port", "0"],
            cwd=EXAMPLES,
            env=_env(redis_url),
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            start_new_session=True,
        )
    assert proc.stdout is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 15.0)
        line = proc.stdout.readline() if ready else ""
        match = re.match(r"serving on (http://127\.0\.0\.1:\d+)$", line.strip())
        assert match is not None, f"webapp did not start: {line!r}\n{log.read_text()}"
        yield match[1]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()


def call(method: str, url: str, body: object = None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.load(exc)


def test_webapp_starts_a_report_and_follows_it(
    start_worker: WorkerFactory, redis_url: str, tmp_path: Path
) -> None:
    start_worker("report", env=ON_PATH)
    with webapp(redis_url, tmp_path / "webapp.log") as base:
        status, sent = call("POST", f"{base}/reports", {"chunks": 4})
        assert status == 202 and sent["url"] == f"/reports/{sent['id']}", sent
        # Arguments are checked in the request handler, at delay(): nothing is sent.
        status, bad = call("POST", f"{base}/reports", {"chunks": "many"})
        assert status == 400 and "argument 'chunks' must be int" in bad["error"], bad
        assert call("GET", f"{base}/nowhere")[0] == 404

        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + 20
        while not seen or seen[-1]["state"] not in ("SUCCESS", "FAILURE"):
            assert time.monotonic() < deadline, seen
            status, body = call("GET", f"{base}{sent['url']}")
            assert status == 200, body
            seen.append(body)
            time.sleep(0.1)

    final = seen[-1]
    assert final["state"] == "SUCCESS", final
    assert final["result"]["rows"] == 400
    progress = [s["progress"] for s in seen if s["state"] == "PROGRESS"]
    assert progress and all(p["total"] == 4 for p in progress), seen
    Path(final["result"]["path"]).unlink(missing_ok=True)
