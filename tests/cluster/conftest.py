"""One 3-master Redis Cluster per module, and workers pointed at it.

Every node runs on a free loopback port that the fixture starts and stops by PID; nothing here
talks to a Redis the tests did not start. Each test starts from an empty cluster (FLUSHALL on
each of its own masters).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from omnitask.testing import RedisServerNotFound
from omnitask.testing.cluster import RedisClusterSet
from tests.cluster import apps
from tests.conftest import WorkerProcess

WorkerFactory = Callable[..., WorkerProcess]


def running(nodes: RedisClusterSet) -> Iterator[RedisClusterSet]:
    """Start ``nodes`` for a fixture, failing the tests if redis-server is missing."""
    try:
        nodes.start()
    except RedisServerNotFound as exc:
        pytest.fail(str(exc), pytrace=False)
    yield nodes
    nodes.cleanup()


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterSet]:
    yield from running(RedisClusterSet(3))


@pytest.fixture(autouse=True)
def _clean(cluster: RedisClusterSet) -> Iterator[None]:
    for master in cluster.masters:
        with master.client() as client:
            client.flushall()
    apps.app.configure(broker_url=cluster.url)
    yield
    apps.app.close()


@pytest.fixture
def start_worker(cluster: RedisClusterSet) -> Iterator[WorkerFactory]:
    started: list[WorkerProcess] = []

    def start(*args: str, concurrency: int = 1, env: dict[str, str] | None = None) -> WorkerProcess:
        environ = {
            **os.environ,
            "OMNITASK_BROKER_URL": cluster.url,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        worker = WorkerProcess(["-A", "tests.cluster.apps", "-c", str(concurrency), *args], environ)
        started.append(worker)
        return worker.wait_ready()

    yield start
    for worker in started:
        worker.kill()
