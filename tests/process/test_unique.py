"""Unique tasks: one task per key and window, atomically, throttled or debounced."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis

from omnitask import ConfigurationError, OmniTask
from tests.apps import uniq
from tests.conftest import WorkerFactory, wait_for

APP = "tests.apps.uniq"


@pytest.fixture(autouse=True)
def _app(redis_url: str) -> Iterator[None]:
    uniq.app.configure(broker_url=redis_url)
    yield
    uniq.app.close()


def ready_count(queue: str = "default") -> int:
    return uniq.app.broker.ready_count(queue)


def test_racing_sends_give_one_task(r: redis.Redis) -> None:
    ids: list[str] = []
    barrier = threading.Barrier(8)

    def send() -> None:
        barrier.wait()
        ids.append(uniq.refresh.delay(7).id)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(ids) == 8 and len(set(ids)) == 1
    assert ready_count() == 1
    other = uniq.refresh.delay(8)  # other arguments, another key
    assert other.id != ids[0] and ready_count() == 2


def test_key_function_and_window(r: redis.Redis) -> None:
    first = uniq.notify.delay(1, "a")
    assert uniq.notify.delay(1, "b").id == first.id  # same user: same key
    assert uniq.notify.delay(2, "a").id != first.id
    assert ready_count() == 2
    keys = list(r.scan_iter("ot:{tuniq:default}:u:*"))
    assert len(keys) == 2 and all(0 < int(r.pttl(k)) <= 2000 for k in keys)
    r.delete(*keys)  # as if the window had passed
    assert uniq.notify.delay(1, "c").id != first.id


@pytest.mark.process
def test_throttled_task_runs_once_per_window(start_worker: WorkerFactory, r: redis.Redis) -> None:
    start_worker(APP)
    results = [uniq.refresh.delay(3) for _ in range(5)]
    assert {res.get(timeout=5) for res in results} == {3}
    assert r.lrange("test:runs", 0, -1) == [b"refresh:3"]


@pytest.mark.process
def test_debounce_runs_the_last_call_once(start_worker: WorkerFactory, r: redis.Redis) -> None:
    start_worker(APP)
    started = time.monotonic()
    results = []
    for version in range(1, 5):
        results.append(uniq.reindex.delay("doc", version))
        time.sleep(0.1)
    assert len({res.id for res in results}) == 1  # every caller holds the same result
    assert results[0].get(timeout=5) == 4  # the last call's arguments
    elapsed = time.monotonic() - started
    assert 0.8 <= elapsed < 2.5, elapsed  # 0.5 s after the last call, not after the first
    time.sleep(0.3)
    assert r.lrange("test:runs", 0, -1) == [b"reindex:doc:4"]
    # A new cycle once it ran.
    assert uniq.reindex.delay("doc", 5).id != results[0].id
    wait_for(lambda: r.llen("test:runs") == 2, what="second cycle")


def test_options_are_checked() -> None:
    app = OmniTask("tuniq-check")
    with pytest.raises(ConfigurationError, match="need unique_for"):
        app.task(unique_key=lambda x: str(x))
    with pytest.raises(ConfigurationError, match="unique_mode"):
        app.task(unique_for=1, unique_mode="sometimes")  # type: ignore[call-overload]
    with pytest.raises(ConfigurationError, match="greater than 0"):
        app.task(unique_for=0)
