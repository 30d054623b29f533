"""``omnitask inspect / control / purge / status / health`` against real workers.

The commands run in this process through ``cli.main`` (fast), except where the exit code of a
real process is the point (health as a container probe runs it).
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from omnitask import OmniTask
from omnitask.cli import main
from tests.apps import inspectapp
from tests.conftest import ROOT, WorkerFactory, wait_for

pytestmark = pytest.mark.process

APP = "tests.apps.inspectapp"
# Fast heartbeats: control commands ride on them, and a dead worker's status expires sooner.
ENV = {"OMNITASK_HEARTBEAT_INTERVAL_S": "0.5"}


@pytest.fixture
def app(redis_url: str) -> Iterator[OmniTask]:
    inspectapp.app.configure(broker_url=redis_url, heartbeat_interval_s=0.5)
    yield inspectapp.app
    inspectapp.app.close()


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main([args[0], "-A", APP, *args[1:]])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def cli_json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    code, out, err = cli(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def started(r: redis.Redis) -> list[str]:
    return [tag.decode() for tag in r.lrange("test:started", 0, -1)]


def test_inspect_views_with_a_worker_running_tasks(
    app: OmniTask, start_worker: WorkerFactory, r: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    worker = start_worker(APP, "-n", "w1", concurrency=2, env=ENV)
    held = inspectapp.hold.delay("a")
    wait_for(lambda: started(r) == ["a"], what="the task to start")
    later = inspectapp.add.apply_async((1, 2), countdown=60)
    inspectapp.add.apply_async((3, 4), queue="other", priority=8)  # nobody consumes "other"
    sent_ms = time.time() * 1000

    [active] = cli_json(capsys, "inspect", "active")
    assert (active["task_id"], active["worker"], active["queue"]) == (held.id, "w1", "default")
    assert active["name"] == "tests.apps.inspectapp.hold"
    assert active["consumer"].startswith("w1/")
    assert active["started_ms"] is not None and active["started_ms"] <= sent_ms
    _code, out, _ = cli(capsys, "inspect", "active")
    header, row = out.splitlines()
    assert header.split() == ["WORKER", "QUEUE", "TASK", "ID", "NAME", "STARTED", "SENT"]
    assert row.split()[:4] == ["w1", "default", held.id, "tests.apps.inspectapp.hold"]
    assert cli_json(capsys, "inspect", "reserved") == []

    scheduled = cli_json(capsys, "inspect", "scheduled")
    assert scheduled["total"] == 1
    [due] = scheduled["tasks"]
    assert (due["task_id"], due["queue"], due["name"]) == (
        later.id,
        "default",
        "tests.apps.inspectapp.add",
    )
    assert 55_000 < due["due_ms"] - sent_ms < 61_000
    row = cli(capsys, "inspect", "scheduled")[1].splitlines()[1].split()
    assert row[1] == "in" and row[3:6] == ["default", later.id, "tests.apps.inspectapp.add"]

    registered = cli_json(capsys, "inspect", "registered")
    assert set(registered) == {"w1"}
    assert {"tests.apps.inspectapp.hold", "tests.apps.inspectapp.nap"} <= set(registered["w1"])
    assert cli(capsys, "inspect", "registered")[1].splitlines() == [
        "w1 (3 tasks)",
        "  tests.apps.inspectapp.add",
        "  tests.apps.inspectapp.hold",
        "  tests.apps.inspectapp.nap",
    ]

    queues = {q["name"]: q for q in cli_json(capsys, "inspect", "queues")}
    assert queues["default"] | {"oldest_ms": None} == {
        "name": "default", "ready": 0, "ready_by_priority": {}, "delayed": 1, "in_flight": 1,
        "consumers": 2, "dead": 0, "oldest_ms": None, "paused": False,
    }  # fmt: skip
    assert queues["other"]["ready_by_priority"] == {"8": 1} and queues["other"]["consumers"] == 0
    assert abs(queues["other"]["oldest_ms"] - sent_ms) < 5_000
    out = cli(capsys, "inspect", "queues")[1]
    assert [line.split()[:4] for line in out.splitlines()[1:]] == [
        ["default", "0", "-", "1"],
        ["other", "1", "8:1", "0"],
    ]

    r.rpush("test:go:a", 1)
    assert held.get(timeout=5) == "a"
    stats = cli_json(capsys, "inspect", "stats")
    [w1] = stats["workers"]
    assert (w1["name"], w1["pid"], w1["concurrency"], w1["processes"]) == (
        "w1",
        worker.proc.pid,
        2,
        2,
    )
    assert w1["queues"] == ["default"] and w1["succeeded"] == 1 and w1["failed"] == 0
    assert stats["counted_over"]["events"] > 0
    out = cli(capsys, "inspect", "stats")[1]
    assert out.splitlines()[1].split()[:4] == ["w1", str(worker.proc.pid), "2/2", "default"]


def test_pause_holds_tasks_and_reserved_shows_those_behind_a_sync_task(
    app: OmniTask, start_worker: WorkerFactory, r: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    start_worker(APP, "-n", "w1", concurrency=1, env=ENV)
    # An async task first: the child then claims two at a time for its event loop.
    assert inspectapp.nap.delay(0.01, "n1").get(timeout=5) == "n1"
    assert cli(capsys, "control", "pause-queue", "default")[1] == "paused queue 'default'\n"
    held = inspectapp.hold.delay("s")
    napping = inspectapp.nap.delay(0.01, "n2")
    time.sleep(1.0)  # long enough for an unpaused worker to have started both many times over
    assert started(r) == []
    [default] = cli_json(capsys, "inspect", "queues")
    assert default["ready"] == 2 and default["paused"] is True
    assert cli(capsys, "inspect", "queues")[1].splitlines()[1].endswith("paused")

    resumed_at = time.monotonic()
    assert cli(capsys, "control", "resume-queue", "default")[1] == "resumed queue 'default'\n"
    wait_for(lambda: started(r) == ["s"], timeout_s=3, what="the paused task to start")
    assert time.monotonic() - resumed_at < 2.0  # woken, not found by the 5 s idle wait
    # Claimed together; the sync task holds the child's main thread, the async one waits.
    assert [t["task_id"] for t in cli_json(capsys, "inspect", "active")] == [held.id]
    assert [t["task_id"] for t in cli_json(capsys, "inspect", "reserved")] == [napping.id]
    r.rpush("test:go:s", 1)
    assert held.get(timeout=5) == "s" and napping.get(timeout=5) == "n2"
    assert cli_json(capsys, "inspect", "reserved") == []


def test_control_pool_grow_shrink_and_shutdown(
    app: OmniTask, start_worker: WorkerFactory, r: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    worker = start_worker(APP, "-n", "w1", concurrency=1, env=ENV)
    assert len(worker.children()) == 1
    sent = time.monotonic()
    code, out, err = cli(capsys, "control", "pool-grow", "2", "w1")
    assert code == 0, err
    assert time.monotonic() - sent < 2.0  # within about one heartbeat interval
    assert out.splitlines()[1].split() == [
        "w1",
        "ok",
        "pool",
        "grown",
        "by",
        "2",
        "to",
        "3",
        "processes",
    ]
    wait_for(lambda: len(worker.children()) == 3, what="3 children")

    # Two busy children and one idle: shrinking by 2 stops the idle one, and warmly one busy one.
    a, b = inspectapp.hold.delay("a"), inspectapp.hold.delay("b")
    wait_for(lambda: sorted(started(r)) == ["a", "b"], what="two tasks to start")
    [reply] = cli_json(capsys, "control", "pool-shrink", "2")["replies"]
    assert reply == {
        "worker": "w1",
        "ok": True,
        "detail": "pool shrunk by 2 to 1 process",
        "concurrency": 1,
    }
    wait_for(lambda: len(worker.children()) == 2, what="the idle child to stop")
    time.sleep(0.5)
    assert len(worker.children()) == 2  # the busy one finishes its task first
    r.rpush("test:go:a", 1)
    r.rpush("test:go:b", 1)
    assert (a.get(timeout=5), b.get(timeout=5)) == ("a", "b")
    wait_for(lambda: len(worker.children()) == 1, what="the busy child to stop after its task")
    assert sorted(r.lrange("test:log", 0, -1)) == [b"a", b"b"]  # each ran once
    wait_for(  # published with the next heartbeat
        lambda: (
            [(w["concurrency"], w["processes"]) for w in cli_json(capsys, "status")] == [(1, 1)]
        ),
        what="the status to show one process",
    )
    # Still consuming with the one child left.
    assert inspectapp.add.delay(2, 3).get(timeout=5) == 5

    code, _, err = cli(capsys, "control", "pool-shrink", "1", "w1")
    assert code == 1  # refused: a worker keeps one child
    code, _, err = cli(capsys, "control", "pool-grow", "1", "nobody")
    assert code == 1 and "no live worker named 'nobody'" in err

    code, out, _ = cli(capsys, "control", "shutdown", "w1")
    assert code == 0 and "warm shutdown started" in out
    assert worker.wait(10) == 0
    assert "warm shutdown name=w1 (signal SIGTERM)" in worker.output
    code, out, _ = cli(capsys, "status")
    assert code == 1 and out.strip() == "0 worker(s) online"


def test_purge_asks_unless_forced(
    app: OmniTask,
    r: redis.Redis,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    qk = app.keys.queue("default")
    for i in range(3):
        inspectapp.add.delay(i, i)
    inspectapp.add.apply_async((9, 9), countdown=60)

    monkeypatch.setattr(sys, "stdin", io.StringIO())
    code, _, err = cli(capsys, "purge", "-Q", "default")
    assert code == 1 and "not deleting without --force" in err

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    code, out, _ = cli(capsys, "purge", "-Q", "default")
    assert code == 0
    assert (
        out == "Delete 3 ready and 1 delayed task(s) from queue 'default'? [y/N] nothing deleted\n"
    )
    assert r.llen(qk.ready[5]) == 3

    monkeypatch.setattr(sys, "stdin", Terminal("y\n"))
    code, out, _ = cli(capsys, "purge", "-Q", "default")
    assert out.endswith("purged 3 ready and 1 delayed task(s) from queue 'default'\n")

    inspectapp.add.delay(1, 1)
    assert cli_json(capsys, "purge", "-Q", "default", "-f") == {
        "queue": "default", "ready": 1, "delayed": 0,
    }  # fmt: skip
    assert not any(r.exists(k) for k in (*qk.ready, qk.delayed))


def omnitask(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **ENV, "OMNITASK_BROKER_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "omnitask", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_health_exit_codes(
    app: OmniTask, start_worker: WorkerFactory, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(capsys, "health")[:2] == (0, "ok\n")
    code, _, err = cli(capsys, "health", "--worker", "w1")
    assert code == 1 and err == "unhealthy: worker 'w1' has no heartbeat in Redis\n"

    worker = start_worker(APP, "-n", "w1", concurrency=1, env=ENV)
    done = omnitask("health", "-A", APP, "--worker", "w1", url=redis_url)
    assert done.returncode == 0 and done.stdout.startswith("ok: heartbeat"), done.stderr
    code, out, _ = cli(capsys, "status")
    assert out.splitlines()[1].split()[:4] == ["w1", "online", str(worker.proc.pid), "1/1"]

    worker.kill()  # SIGKILL: no goodbye, the heartbeat goes stale
    wait_for(
        lambda: cli(capsys, "health", "--worker", "w1", "--max-age", "1")[0] == 1,
        timeout_s=5, what="the heartbeat to go stale",
    )  # fmt: skip
    done = omnitask(
        "health", "-A", APP, "--worker", "w1", "--max-age", "1", "--json", url=redis_url
    )
    report = json.loads(done.stdout)
    assert done.returncode == 1 and report["ok"] is False and report["redis"] is True
    assert "last heartbeat" in report["reason"]
    # Its status expires three heartbeats after the last one; it stays listed, as stale.
    wait_for(lambda: cli(capsys, "status")[0] == 1, timeout_s=5, what="the status to expire")
    assert cli(capsys, "status")[1].splitlines()[1].split()[:2] == ["w1", "stale"]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"redis://127.0.0.1:{s.getsockname()[1]}/0"
    done = omnitask("health", "-A", APP, url=closed)
    assert done.returncode == 1 and done.stderr.startswith("unhealthy: Redis at ")
