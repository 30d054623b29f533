"""Run a real omnitask worker on the example tasks and use it, end to end.

    python examples/quickstart.py [--private-redis]

Uses the Redis at $OMNITASK_BROKER_URL, else redis://localhost:6379/0 when one answers there,
else starts a private redis-server on a free loopback port (and stops it at the end).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from omnitask.testing import RedisServer, RedisServerNotFound

HERE = Path(__file__).resolve().parent
DEFAULT_URL = "redis://localhost:6379/0"


@contextmanager
def broker_url(private: bool) -> Iterator[str]:
    url = os.environ.get("OMNITASK_BROKER_URL")
    if url is None and not private:
        try:
            with redis.Redis.from_url(DEFAULT_URL, socket_connect_timeout=0.5) as client:
                client.ping()
            url = DEFAULT_URL
        except redis.RedisError:
            pass
    if url is not None:
        print(f"Using the Redis at {url}; the demo's keys start with 'ot:{{quickstart' and")
        print("its results expire after a day.")
        yield url
        return
    try:
        with RedisServer() as server:
            print(f"Started a private redis-server at {server.url} (stopped at the end)")
            yield server.url
    except RedisServerNotFound as exc:
        sys.exit(f"quickstart: {exc}")


@contextmanager
def worker(url: str) -> Iterator[subprocess.Popen[str]]:
    env = {**os.environ, "OMNITASK_BROKER_URL": url, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "omnitask", "worker", "-A", "tasks", "-c", "2", "-l", "warning"],
        cwd=HERE,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        print(f"  | {line.rstrip()}")
        if line.startswith("omnitask worker") and line.rstrip().endswith("ready"):
            break
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)  # warm shutdown: finish, hand back, exit 0
        code = proc.wait(30)
        proc.stdout.close()
        print(f"worker stopped with exit code {code}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--private-redis", action="store_true", help="always start a private one")
    args = parser.parse_args()
    with broker_url(args.private_redis) as url:
        os.environ["OMNITASK_BROKER_URL"] = url
        sys.path.insert(0, str(HERE))
        import tasks  # imported once the broker URL is known

        with worker(url):
            return demo(tasks)


def demo(tasks) -> int:  # type: ignore[no-untyped-def]
    from datetime import datetime, timezone

    from omnitask import TaskState

    began = datetime.now(timezone.utc)
    start = time.perf_counter()
    print("add.delay(1, 2).get() ->", tasks.add.delay(1, 2).get(timeout=10))

    results = tasks.add.delay_many((i, i) for i in range(100))
    print("100 tasks in one round trip, sum of results ->", sum(r.get(timeout=10) for r in results))

    slow = tasks.report.delay(300)
    print("report task state right after sending ->", slow.state)
    print("report(300).get() ->", slow.get(timeout=10), f"state={slow.state}")

    later = tasks.add.apply_async((20, 22), countdown=1.0)
    print("countdown=1 s result ->", later.get(timeout=10), f"(done {later.date_done:%H:%M:%S})")

    try:
        tasks.send_email.delay("not-an-address").get(timeout=10)
    except tasks.InvalidEmailError as exc:
        print("send_email raised on the worker, re-raised here ->", repr(exc))
    failed = tasks.app.AsyncResult(tasks.send_email.delay("nobody").id)
    failed.get(timeout=10, propagate=False)
    assert failed.state == TaskState.FAILURE

    kinds: dict[str, int] = {}
    for event in tasks.app.events.replay(2000):
        if event.time >= began.replace(microsecond=began.microsecond // 1000 * 1000):
            kinds[event.kind] = kinds.get(event.kind, 0) + 1
    print("events of this run:", ", ".join(f"{k}={n}" for k, n in sorted(kinds.items())))
    print(f"done in {time.perf_counter() - start:.2f} s")
    tasks.app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
