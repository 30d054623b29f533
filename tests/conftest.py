"""Shared fixtures: a private Redis for the session, and real worker processes.

The tests never touch a Redis they did not start (not the one on 127.0.0.1:6379, not any
other): ``redis_server`` starts its own on a free loopback port and stops it by PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from omnitask.testing import RedisServer, RedisServerNotFound

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        server.start()
    except RedisServerNotFound as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def _flush_own_redis(request: pytest.FixtureRequest) -> None:
    # Only the session's own server, and only when the test uses it.
    if "redis_server" in request.fixturenames:
        server: RedisServer = request.getfixturevalue("redis_server")
        if server.process is not None and server.ping():
            with redis.Redis.from_url(server.url) as client:
                client.flushall()


class WorkerProcess:
    """A real ``python -m omnitask worker`` in its own session, with its output collected."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.args = args
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "omnitask", "worker", *args],
            cwd=ROOT,
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
            if " ready" in line and "omnitask worker" in line:
                self._ready.set()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout_s: float = 20.0) -> WorkerProcess:
        if not self._ready.wait(timeout_s):
            self.kill()
            raise AssertionError(f"worker did not become ready:\n{self.output}")
        return self

    def children(self) -> list[int]:
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self.proc.pid)],
            capture_output=True,
            text=True,
            check=False,
        )
        return [int(p) for p in out.stdout.split()]

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout_s: float = 30.0) -> int:
        code = self.proc.wait(timeout_s)
        self._close()
        return code

    def _close(self) -> None:
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def kill(self) -> None:
        """SIGKILL the whole process group: supervisor and children at once."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._close()


WorkerFactory = Callable[..., WorkerProcess]


@pytest.fixture
def start_worker(redis_url: str) -> Iterator[WorkerFactory]:
    started: list[WorkerProcess] = []

    def start(
        app: str = "tests.apps.basic",
        *args: str,
        concurrency: int = 1,
        env: dict[str, str] | None = None,
        ready: bool = True,
        url: str | None = None,
    ) -> WorkerProcess:
        full_env = {
            **os.environ,
            "OMNITASK_BROKER_URL": url or redis_url,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        worker = WorkerProcess(["-A", app, "-c", str(concurrency), *args], full_env)
        started.append(worker)
        return worker.wait_ready() if ready else worker

    yield start
    for worker in started:
        worker.kill()


def wait_for(predicate: Callable[[], object], timeout_s: float = 10.0, what: str = "") -> None:
    """Wait until ``predicate()`` is true, checking every 20 ms (bounded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what or predicate}")
