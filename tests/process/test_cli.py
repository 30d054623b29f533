"""The ``omnitask`` command and the quickstart example, run as a user runs them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from omnitask import OmniTask
from omnitask.cli import _banner
from tests.apps import basic
from tests.conftest import ROOT

pytestmark = pytest.mark.process


def omnitask(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "omnitask", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("args", [["--help"], ["worker", "--help"], ["events", "--help"]])
def test_help(args: list[str]) -> None:
    done = omnitask(*args)
    assert done.returncode == 0 and "usage: omnitask" in done.stdout


def test_version() -> None:
    assert omnitask("--version").stdout.startswith("omnitask 0.1.0")


def test_bad_app_is_a_clear_error() -> None:
    done = omnitask("worker", "-A", "no_such_module_xyz")
    assert done.returncode == 1
    assert "cannot import 'no_such_module_xyz' given by -A" in done.stderr


def test_banner_masks_the_password() -> None:
    app = OmniTask("secret", broker="redis://user:hunter2@127.0.0.1:1/0")
    app.task(name="t")(lambda: None)
    text = _banner(app, "host:1", ["default"], 2)
    assert "hunter2" not in text and "redis://user:***@127.0.0.1:1/0" in text
    assert ". t" in text and "concurrency: 2 processes" in text


def test_events_command_prints_json(redis_url: str) -> None:
    basic.app.configure(broker_url=redis_url)
    sent = basic.add.delay(1, 2)
    basic.app.close()
    done = omnitask(
        "events", "-A", "tests.apps.basic", "--replay", "--json", "--timeout", "0.3",
        env={"OMNITASK_BROKER_URL": redis_url},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert events == [
        {
            "kind": "task-sent",
            "time": events[0]["time"],
            "task_id": sent.id,
            "name": "tests.apps.basic.add",
            "queue": "default",
        }
    ]


def test_quickstart_example_runs_end_to_end(redis_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "examples/quickstart.py"],
        cwd=ROOT,
        env={**os.environ, "OMNITASK_BROKER_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "add.delay(1, 2).get() -> 3" in out
    assert "sum of results -> 9900" in out
    assert "InvalidEmailError" in out and "worker stopped with exit code 0" in out


def test_worker_flags_reach_the_settings(start_worker: object, redis_url: str) -> None:
    done = omnitask(
        "worker", "-A", "tests.apps.basic", "--time-limit", "-1",
        env={"OMNITASK_BROKER_URL": redis_url},
    )  # fmt: skip
    assert done.returncode == 1
    assert "time_limit_s must be greater than 0" in done.stderr


def test_dlq_command_lists_dead_letters(redis_url: str) -> None:
    import redis as redis_py

    basic.app.configure(broker_url=redis_url)
    qk = basic.app.keys.queue("default")
    with redis_py.Redis.from_url(redis_url) as client:
        client.sadd(basic.app.keys.queues, "default")
        client.xadd(qk.dead, {"msg": b"junk", "reason": "malformed", "detail": "x", "w": "w1"})
    basic.app.close()
    env = {"OMNITASK_BROKER_URL": redis_url}
    done = omnitask("dlq", "count", "-A", "tests.apps.basic", env=env)
    assert done.returncode == 0 and "1" in done.stdout, done.stderr
    listed = omnitask("dlq", "list", "-A", "tests.apps.basic", "--json", env=env)
    assert listed.returncode == 0 and "malformed" in listed.stdout, listed.stderr


def test_password_protected_redis(start_worker: object) -> None:
    from omnitask.testing import RedisServer
    from tests.conftest import WorkerProcess

    with RedisServer(extra_args=["--requirepass", "s3cret-pw"]) as server:
        url = f"redis://:s3cret-pw@127.0.0.1:{server.port}/0"
        env = {**os.environ, "OMNITASK_BROKER_URL": url, "PYTHONUNBUFFERED": "1"}
        worker = WorkerProcess(["-A", "tests.apps.basic", "-c", "1"], env).wait_ready()
        try:
            basic.app.configure(broker_url=url)
            assert basic.add.delay(20, 22).get(timeout=5) == 42
            assert "s3cret-pw" not in worker.output
            assert f"redis://:***@127.0.0.1:{server.port}/0" in worker.output
        finally:
            basic.app.close()
            worker.kill()


def test_run_sh_sets_up_a_fresh_clone(tmp_path: Path) -> None:
    # The README's first command, on a copy of the repository without .venv: it must install
    # omnitask before the demo (it once skipped the install because "import omnitask" found
    # the source folder) and run the demo on a private Redis.
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    clone = tmp_path / "clone"
    for name in filter(None, listed):
        source = ROOT / name.decode()
        if source.is_file():
            (clone / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / name.decode())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMNITASK_", "VIRTUAL_ENV"))}
    done = subprocess.run(
        ["bash", "examples/run.sh", "--private-redis"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "add.delay(1, 2).get() -> 3" in done.stdout
    assert "worker stopped with exit code 0" in done.stdout
