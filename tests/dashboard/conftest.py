"""Fixtures of the dashboard tests: the dashboard as a real ``python -m omnitask`` process.

``start_dashboard`` runs ``python -m omnitask dashboard -A tests.dashboard.app`` on a free
loopback port against the session's own Redis, waits (bounded) until it answers HTTP, and
kills its process group afterwards.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from omnitask import OmniTask
from tests.conftest import ROOT
from tests.dashboard import app as dash

APP = "tests.dashboard.app"
# Fast heartbeats: worker status and liveness show up sooner.
WORKER_ENV = {"OMNITASK_HEARTBEAT_INTERVAL_S": "0.5"}
START_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


class Dashboard:
    """A running ``omnitask dashboard`` process and an HTTP client for it."""

    def __init__(self, proc: subprocess.Popen[str], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log = log
        self.auth: dict[str, str] = {}

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> Reply:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        all_headers = {**self.auth, **(headers or {})}
        if body is not None and "Content-Type" not in all_headers:
            all_headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.base + path, data, all_headers, method=method)
        try:
            with _opener.open(req, timeout=10) as resp:
                return Reply(resp.status, dict(resp.headers), resp.read())
        except urllib.error.HTTPError as err:
            return Reply(err.code, dict(err.headers), err.read())

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Reply:
        return self.request("POST", path, body, **kwargs)

    def api(self, path: str) -> Any:
        reply = self.get(path)
        assert reply.status == 200, (path, reply.status, reply.text)
        return reply.json()

    def use_basic(self, user: str, password: str) -> None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.auth = {"Authorization": f"Basic {token}"}

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")


DashboardFactory = Callable[..., Dashboard]


@pytest.fixture
def app(redis_url: str) -> Iterator[OmniTask]:
    dash.app.configure(broker_url=redis_url, heartbeat_interval_s=0.5)
    yield dash.app
    dash.app.close()


def _wait_answering(board: Dashboard) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if board.proc.poll() is not None:
            raise AssertionError(
                f"the dashboard exited with {board.proc.returncode}:\n{board.output}"
            )
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", board.port), timeout=0.5),
        ):
            return
        time.sleep(0.05)
    raise AssertionError(f"the dashboard did not answer in {START_TIMEOUT_S} s:\n{board.output}")


@pytest.fixture
def start_dashboard(redis_url: str, tmp_path: Path) -> Iterator[DashboardFactory]:
    started: list[Dashboard] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Dashboard:
        port = free_port()
        log = tmp_path / f"dashboard-{port}.log"
        full_env = {
            **os.environ,
            "OMNITASK_BROKER_URL": redis_url,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        with log.open("w") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "omnitask",
                    "dashboard",
                    "-A",
                    APP,
                    "--port",
                    str(port),
                    *args,
                ],
                cwd=ROOT,
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                text=True,
            )
        board = Dashboard(proc, port, log)
        started.append(board)
        _wait_answering(board)
        return board

    yield start
    for board in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(board.proc.pid, signal.SIGKILL)
        board.proc.wait(10)
