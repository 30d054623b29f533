"""Async tasks on real workers, and the awaitable client API from asyncio and trio."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import anyio
import pytest
import redis

import omnitask
from omnitask import SoftTimeLimitExceeded, TaskRevokedError, TimeLimitExceeded
from tests.apps import aio
from tests.conftest import WorkerFactory, wait_for

pytestmark = pytest.mark.process

APP = "tests.apps.aio"


@pytest.fixture(autouse=True)
def _app(redis_url: str) -> Iterator[None]:
    aio.app.configure(broker_url=redis_url)
    yield
    aio.app.close()


def log(r: redis.Redis) -> list[str]:
    return [v.decode() for v in r.lrange("test:log", 0, -1)]


def test_many_async_tasks_run_at_once_beside_a_sync_one(
    start_worker: WorkerFactory, r: redis.Redis
) -> None:
    start_worker(APP, concurrency=1)
    assert aio.add.delay(1, 2).get(timeout=5) == 3
    started = time.monotonic()
    naps = [aio.nap.delay(1.0, f"n{i}") for i in range(50)]
    blocking = aio.block.delay(1.5)
    assert [n.get(timeout=10) for n in naps] == [f"n{i}" for i in range(50)]
    naps_done = time.monotonic() - started
    assert blocking.get(timeout=10) == "blocked"
    both_done = time.monotonic() - started
    # One child: 50 one-second naps overlap each other and the sync task claimed after them,
    # which runs in the main thread and never holds up the loop (the naps end before it).
    assert naps_done < 1.45, naps_done
    assert both_done < 2.2, both_done
    assert sorted(log(r)) == sorted(f"n{i}" for i in range(50))


def test_async_concurrency_caps_tasks_in_flight(start_worker: WorkerFactory) -> None:
    start_worker(APP, "--async-concurrency", "5", concurrency=1)
    started = time.monotonic()
    naps = [aio.nap.delay(0.5) for _ in range(10)]
    for n in naps:
        n.get(timeout=10)
    # Five at a time: two rounds of half a second.
    assert 0.95 < time.monotonic() - started < 2.5


def test_failures_retries_and_progress(start_worker: WorkerFactory, r: redis.Redis) -> None:
    start_worker(APP, concurrency=1)
    with pytest.raises(ValueError, match="no good"):
        aio.fail.delay("no good").get(timeout=5)
    assert aio.flaky.delay("test:flaky").get(timeout=5) == 3
    result = aio.report.delay(4)
    wait_for(lambda: result.state == "PROGRESS", what="progress state")
    assert set(result.info) == {"current", "total"} and result.info["total"] == 4
    assert result.get(timeout=5) == 4


def test_time_limits_cancel_the_task(start_worker: WorkerFactory, r: redis.Redis) -> None:
    start_worker(APP, concurrency=1)
    started = time.monotonic()
    with pytest.raises(TimeLimitExceeded):
        aio.overrun.delay().get(timeout=5)
    assert time.monotonic() - started < 2.0
    assert log(r) == ["cleaned-up"]  # the task's finally ran: cancelled, not killed
    with pytest.raises(SoftTimeLimitExceeded):
        aio.soft_overrun.delay().get(timeout=5)
    with pytest.raises(TimeLimitExceeded):  # caught the cancellation and returned: still late
        aio.stubborn.delay().get(timeout=5)
    # The child was not killed for either: it still answers at once.
    assert aio.add.delay(2, 2).get(timeout=2) == 4


def test_revoke_terminate_cancels_only_that_task(
    start_worker: WorkerFactory, r: redis.Redis
) -> None:
    worker = start_worker(APP, concurrency=1)
    children = worker.children()
    doomed = aio.forever.delay("a")
    other = aio.nap.delay(1.0, "survivor")
    wait_for(lambda: "started:a" in log(r), what="task started")
    assert doomed.revoke(terminate=True)
    with pytest.raises(TaskRevokedError):
        doomed.get(timeout=5)
    assert other.get(timeout=5) == "survivor"
    assert "cancelled:a" in log(r)
    assert worker.children() == children  # no process was killed


def test_trio_backend(start_worker: WorkerFactory) -> None:
    start_worker(APP, "--async-backend", "trio", concurrency=1)
    assert aio.which_loop.delay().get(timeout=5) == "trio"
    naps = [aio.nap.delay(0.5) for _ in range(20)]
    started = time.monotonic()
    for n in naps:
        n.get(timeout=5)
    assert time.monotonic() - started < 1.5
    with pytest.raises(TimeLimitExceeded):
        aio.overrun.delay().get(timeout=5)


def test_warm_shutdown_lets_async_tasks_finish(start_worker: WorkerFactory) -> None:
    worker = start_worker(APP, concurrency=1)
    naps = [aio.nap.delay(1.0, f"w{i}") for i in range(5)]
    time.sleep(0.3)
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    assert [n.get(timeout=1) for n in naps] == [f"w{i}" for i in range(5)]


def test_shutdown_timeout_hands_async_tasks_back(
    start_worker: WorkerFactory, r: redis.Redis
) -> None:
    worker = start_worker(APP, "--shutdown-timeout", "2", concurrency=1)
    stuck = aio.forever.delay("s")
    wait_for(lambda: "started:s" in log(r), what="task started")
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    assert "cancelled:s" in log(r)
    assert stuck.state == "PENDING"  # not failed: handed back, waiting for the next worker
    start_worker(APP, concurrency=1)
    wait_for(lambda: log(r).count("started:s") == 2, what="run again by the next worker")
    stuck.revoke(terminate=True)


def test_client_api_from_asyncio_and_trio(start_worker: WorkerFactory) -> None:
    start_worker(APP, concurrency=1)

    async def main() -> None:
        result = await aio.add.delay_async(2, 3)
        assert await result == 5
        assert await result.get_async(timeout=5) == 5
        sent = await aio.add.send_async((4, 5), countdown=0.1, priority=9)
        assert await sent.get_async(timeout=5) == 9
        by_name = await aio.app.send_task_async("tests.apps.aio.add", (1, 1))
        assert await by_name == 2
        # Many waits at once, none of them blocking the loop.
        results = [await aio.nap.delay_async(0.3, f"c{i}") for i in range(20)]
        values: list[str] = []
        started = anyio.current_time()
        async with anyio.create_task_group() as tg:
            for res in results:

                async def wait(res: object = res) -> None:
                    values.append(await res)  # type: ignore[misc]

                tg.start_soon(wait)
        assert sorted(values) == sorted(f"c{i}" for i in range(20))
        assert anyio.current_time() - started < 2.0
        with pytest.raises(omnitask.TimeoutError):
            await aio.forever.delay("t").get_async(timeout=0.2)
        with anyio.move_on_after(0.2) as scope:  # a cancelled wait is just cancelled
            await aio.nap.delay(5.0).get_async()
        assert scope.cancelled_caught

    for backend in ("asyncio", "trio"):
        anyio.run(main, backend=backend)
