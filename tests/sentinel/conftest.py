"""A Sentinel set per test (master, replica, three sentinels) and workers pointed at it.

Everything runs on free loopback ports the fixtures start and stop by PID; nothing here talks
to a Redis the tests did not start.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from omnitask.testing import RedisServerNotFound
from omnitask.testing.sentinel import SentinelSet, SentinelUnavailable
from tests.conftest import WorkerProcess
from tests.sentinel import apps

SentinelFactory = Callable[..., SentinelSet]
WorkerFactory = Callable[..., WorkerProcess]

# Short enough that a failover takes about two seconds, long enough not to fire on a busy
# two-core machine: sentinels call the master down after this long without a reply.
DOWN_AFTER_MS = 500
FAILOVER_TIMEOUT_MS = 2000


@pytest.fixture
def start_sentinels() -> Iterator[SentinelFactory]:
    started: list[SentinelSet] = []

    def start(**kwargs: Any) -> SentinelSet:
        kwargs.setdefault("down_after_ms", DOWN_AFTER_MS)
        kwargs.setdefault("failover_timeout_ms", FAILOVER_TIMEOUT_MS)
        sentinels = SentinelSet(**kwargs)
        started.append(sentinels)
        try:
            return sentinels.start()
        except RedisServerNotFound as exc:
            pytest.fail(str(exc), pytrace=False)
        except SentinelUnavailable as exc:
            pytest.skip(f"redis-server does not run as a sentinel here: {exc}")

    yield start
    for sentinels in started:
        sentinels.cleanup()


@pytest.fixture
def start_worker() -> Iterator[WorkerFactory]:
    started: list[WorkerProcess] = []

    def start(url: str, *args: str, concurrency: int = 1) -> WorkerProcess:
        env = {**os.environ, "OMNITASK_BROKER_URL": url, "PYTHONUNBUFFERED": "1"}
        worker = WorkerProcess(["-A", "tests.sentinel.apps", "-c", str(concurrency), *args], env)
        started.append(worker)
        return worker.wait_ready()

    yield start
    for worker in started:
        worker.kill()


@pytest.fixture(autouse=True)
def _app() -> Iterator[None]:
    yield
    apps.app.close()
