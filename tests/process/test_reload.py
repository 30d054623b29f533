"""``omnitask worker --reload``: a real reloader on an app written into a temporary directory."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from omnitask import OmniTask
from omnitask.worker.reload import _without_reload, watch_roots
from tests.conftest import wait_for

APP = """
import time

import redis

from omnitask import OmniTask

app = OmniTask("treload")


@app.task(name="version")
def version() -> str:
    return "{version}"


@app.task(name="slow")
def slow(seconds: float) -> str:
    redis.Redis.from_url(app.conf.broker_url).rpush("test:started", "{version}")
    time.sleep(seconds)
    return "{version}"
"""


class Reloader:
    """``python -m omnitask worker -A reloadapp --reload -c 1`` run in ``directory``."""

    def __init__(self, directory: Path, redis_url: str) -> None:
        self.lines: list[str] = []
        env = {**os.environ, "OMNITASK_BROKER_URL": redis_url, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "omnitask", "worker", "-A", "reloadapp", "--reload", "-c", "1"],
            cwd=directory,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def ready_count(self) -> int:
        return sum(
            1
            for line in self.lines
            if line.startswith("omnitask worker ") and line.endswith(" ready")
        )

    def wait_ready(self, count: int = 1) -> None:
        wait_for(lambda: self.ready_count() >= count, timeout_s=15, what=f"ready line {count}")

    def worker_pids(self) -> list[int]:
        """The running worker's supervisor and its children."""
        pids = _children(self.proc.pid)
        return pids + [child for pid in pids for child in _children(pid)]

    def kill(self) -> None:
        # Workers run in sessions of their own: kill their groups, then the reloader's.
        for pid in _children(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _children(pid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False
    )
    return [int(p) for p in out.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def write_app(directory: Path, version: str) -> None:
    (directory / "reloadapp.py").write_text(APP.format(version=version))


@pytest.fixture
def client(redis_url: str) -> Iterator[OmniTask]:
    app = OmniTask("treload", broker=redis_url)
    yield app
    app.close()


@pytest.fixture
def reloader(tmp_path: Path, redis_url: str) -> Iterator[Reloader]:
    write_app(tmp_path, "v1")
    running = Reloader(tmp_path, redis_url)
    try:
        running.wait_ready()
        yield running
    finally:
        running.kill()


def version_becomes(client: OmniTask, expected: str, timeout_s: float = 10.0) -> float:
    """Send ``version`` until it returns ``expected``; return the seconds that took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if client.send_task("version").get(timeout=timeout_s) == expected:
            return time.monotonic() - start
    raise AssertionError(f"version never became {expected!r}")


@pytest.mark.process
def test_a_change_restarts_the_worker_on_the_new_code(
    reloader: Reloader, client: OmniTask, tmp_path: Path
) -> None:
    assert client.send_task("version").get(timeout=5) == "v1"
    # Same size, same second: a stale .pyc would still answer "v1".
    write_app(tmp_path, "v2")
    took = version_becomes(client, "v2")
    print(f"change to first task on the new code: {took:.2f} s")
    assert "change detected file=reloadapp.py" in reloader.output
    reloader.wait_ready(2)


@pytest.mark.process
def test_a_running_task_is_handed_back_and_runs_again(
    reloader: Reloader, client: OmniTask, tmp_path: Path, r: redis.Redis
) -> None:
    result = client.send_task("slow", (2.0,))
    wait_for(lambda: r.llen("test:started") == 1, what="the slow task to start")
    write_app(tmp_path, "v2")
    # Stopped, handed back at once (no lease wait), run from the start on the new code.
    assert result.get(timeout=8) == "v2"
    assert r.lrange("test:started", 0, -1) == [b"v1", b"v2"]
    assert "cold shutdown" in reloader.output


@pytest.mark.process
def test_a_syntax_error_is_shown_and_the_next_change_is_awaited(
    reloader: Reloader, client: OmniTask, tmp_path: Path
) -> None:
    (tmp_path / "reloadapp.py").write_text("def broken(:\n")
    wait_for(lambda: "waiting for changes" in reloader.output, what="the failure line")
    assert "SyntaxError" in reloader.output
    assert reloader.proc.poll() is None
    write_app(tmp_path, "v3")
    reloader.wait_ready(2)
    assert client.send_task("version").get(timeout=5) == "v3"


@pytest.mark.process
def test_sigterm_is_a_warm_shutdown_that_leaves_nothing_behind(
    reloader: Reloader, client: OmniTask, r: redis.Redis
) -> None:
    result = client.send_task("slow", (1.0,))
    wait_for(lambda: r.llen("test:started") == 1, what="the slow task to start")
    workers = reloader.worker_pids()
    assert len(workers) == 2  # supervisor and one child
    reloader.proc.send_signal(signal.SIGTERM)
    assert reloader.proc.wait(8) == 0
    assert result.get(timeout=1) == "v1"  # warm: the running task finished
    wait_for(lambda: not any(_alive(pid) for pid in workers), timeout_s=5, what="workers gone")


def test_reload_flag_is_not_passed_to_the_worker() -> None:
    argv = ["worker", "-A", "app", "--reload", "-c", "2", "--rel", "-l", "debug"]
    assert _without_reload(argv) == ["worker", "-A", "app", "-c", "2", "-l", "debug"]


def test_watch_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    (tmp_path / "single.py").write_text("")
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("raise RuntimeError('imported')\n")
    assert watch_roots("single:app") == [tmp_path]
    assert watch_roots("pkg.sub.tasks:app") == [tmp_path / "pkg"]  # without importing pkg
    assert watch_roots("no_such_module_xyz") == [tmp_path]
