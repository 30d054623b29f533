"""Workflows on real workers: chains, groups, chords joined in Redis, links, failures, chaos."""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator

import pytest
import redis

from omnitask import GroupResult, chain, chord, group
from omnitask.broker.scripts import JOIN
from tests.apps import flows as f
from tests.conftest import WorkerFactory, wait_for

pytestmark = pytest.mark.process

APP = "tests.apps.flows"


@pytest.fixture(autouse=True)
def _app(redis_url: str) -> Iterator[None]:
    f.app.configure(broker_url=redis_url)
    yield
    f.app.close()


@pytest.fixture
def worker(start_worker: WorkerFactory) -> None:
    start_worker(APP, concurrency=2)


@pytest.mark.usefixtures("worker")
def test_chain_passes_each_result_on() -> None:
    assert (f.add.s(1, 2) | f.mul.s(10) | f.add.s(5)).delay().get(timeout=5) == 35
    assert chain(f.add.s(1, 2), f.add.si(7, 7)).delay().get(timeout=5) == 14  # immutable
    assert (f.add.s(2) | f.mul.s(3)).delay(1).get(timeout=5) == 9  # args for the first task
    sig = f.add.s(1).set(priority=9, countdown=0.2)
    started = time.monotonic()
    assert sig.delay(1).get(timeout=5) == 2
    assert time.monotonic() - started >= 0.2


@pytest.mark.usefixtures("worker")
def test_group_results_in_order() -> None:
    result = group(f.add.s(i, i) for i in range(10)).delay()
    assert isinstance(result, GroupResult) and len(result) == 10
    assert result.get(timeout=5) == [2 * i for i in range(10)]
    assert result.ready() and result.successful() and result.completed_count() == 10


def test_a_group_joined_mid_chain_stays_on_the_chain_queue(start_worker: WorkerFactory) -> None:
    # The group is joined by a built-in task: it runs on the workflow's queue, so a worker of
    # that queue alone finishes the chain (and a Redis Cluster keeps it in one slot).
    start_worker(APP, "-Q", "side")
    side = {"queue": "side"}
    flow = chain(
        f.add.s(1, 1).set(**side),
        group(f.add.s(10).set(**side), f.add.s(20).set(**side)),
        f.tsum.s().set(**side),
    )
    assert flow.delay().get(timeout=10) == 34


@pytest.mark.usefixtures("worker")
def test_chords_join_once_with_every_result(r: redis.Redis) -> None:
    assert chord([f.add.s(i, i) for i in range(10)], f.tsum.s()).delay().get(timeout=5) == 90
    assert chord([f.add.s(i, 1) for i in range(3)])(f.collect.s("a")).get(timeout=5) == 6
    assert chord([f.add.s(1, 1)], f.tsum.s()).delay().get(timeout=5) == 2  # one task
    assert chord([], f.tsum.s()).delay().get(timeout=5) == 0  # nothing to wait for
    assert r.get("test:callback:a") == b"1"
    # Each chord's hash goes a few minutes after its callback succeeded, not a day later.
    chords = r.keys("ot:{tflows:*}:chord:*")
    assert chords and all(0 < int(r.pttl(k)) <= 300_000 for k in chords)


@pytest.mark.usefixtures("worker")
def test_nested_workflows() -> None:
    # a group inside a chain is a chord: the next task gets the list
    assert (
        chain(f.add.s(1, 1), group(f.mul.s(2), f.mul.s(3)), f.tsum.s()).delay().get(timeout=5) == 10
    )
    # a chain inside a chord's header, a chain as the body, a chord inside a chain
    assert (
        chord([f.add.s(1, 1) | f.mul.s(10), f.add.s(2, 2)], f.tsum.s()).delay().get(timeout=5) == 24
    )
    assert (
        chord([f.add.s(1, 1), f.add.s(2, 2)], f.tsum.s() | f.mul.s(3)).delay().get(timeout=5) == 18
    )
    inner = chord([f.mul.s(2), f.mul.s(3)], f.tsum.s())
    assert (f.add.s(1, 1) | inner | f.add.s(100)).delay().get(timeout=5) == 110
    # a group at the end of a chain: its result is the group's
    tail = (f.add.s(1, 1) | group(f.mul.s(2), f.mul.s(3))).delay()
    assert isinstance(tail, GroupResult) and tail.get(timeout=5) == [4, 6]


@pytest.mark.usefixtures("worker")
def test_a_failure_fails_what_follows(r: redis.Redis) -> None:
    failing_chain = (f.add.s(1, 1) | f.boom.s() | f.add.s(5)).delay()
    with pytest.raises(ValueError, match="boom 2"):
        failing_chain.get(timeout=5)
    failing_chord = chord([f.add.s(1, 1), f.boom.s(3)], f.collect.s("never")).delay()
    with pytest.raises(ValueError, match="boom 3"):
        failing_chord.get(timeout=5)
    time.sleep(0.3)
    assert r.get("test:callback:never") is None


@pytest.mark.usefixtures("worker")
def test_link_and_link_error(r: redis.Redis) -> None:
    first = f.add.apply_async((1, 2), link=f.mul.s(10))
    assert first.get(timeout=5) == 3
    failed = f.boom.apply_async((1,), link_error=f.note.s())
    with pytest.raises(ValueError):
        failed.get(timeout=5)
    wait_for(lambda: r.lrange("test:errbacks", 0, -1) == [failed.id.encode()], what="errback")


def test_large_group_is_sent_in_one_step(r: redis.Redis) -> None:
    started = time.monotonic()
    result = group(f.add.s(i, 1) for i in range(10_000)).delay()
    elapsed = time.monotonic() - started
    assert len(result) == 10_000
    ready = sum(int(r.llen(k)) for k in f.app.keys.queue("default").ready)  # type: ignore[misc]
    assert ready == 10_000
    assert elapsed < 15, elapsed


def test_join_counts_each_header_task_once(r: redis.Redis) -> None:
    """join.lua alone: a redelivered header task (same index) is not counted twice."""
    key, qk = "test:chord", f.app.keys.queue("cbq")
    r.hset(key, mapping={"n": 2, "cb": b"\x9e\x01\x05callback", "q": "cbq"})
    keys = [key, *qk.ready, qk.wake]

    def join(index: int) -> int:
        return int(r.eval(JOIN.source, len(keys), *keys, index, b"record", 60_000))  # type: ignore[arg-type]

    assert [join(0), join(0), join(1), join(1)] == [1, 0, 2, 0]
    assert r.llen(qk.ready[5]) == 1  # queued exactly once, at priority 5 (its envelope's)
    r.hset("test:failed", mapping={"n": 1, "cb": b"x", "q": "cbq", "failed": "id"})
    keys[0] = "test:failed"
    assert join(0) == -1
    keys[0] = "test:gone"
    assert join(0) == -2


def test_chord_callback_runs_once_while_workers_are_killed(
    start_worker: WorkerFactory, r: redis.Redis
) -> None:
    """Chaos: children and a whole worker SIGKILLed during the header; one callback run."""
    rng = random.Random(7)
    first = start_worker(APP, "--lease", "2", concurrency=2)
    second = start_worker(APP, "--lease", "2", concurrency=2)
    n = 400
    header = [f.slow_add.s(i, 0, 0.02) for i in range(n)]
    result = chord(header, f.collect.s("chaos")).delay()
    kills = 0
    started = time.monotonic()
    while time.monotonic() - started < 1.5:
        children = second.children() + (first.children() if kills < 6 else [])
        if children:
            os.kill(rng.choice(children), signal.SIGKILL)  # its supervisor hands its task back
            kills += 1
        time.sleep(0.1)
    first.kill()  # the whole worker, mid-header: its tasks come back when its lease lapses
    assert not result.ready()
    assert result.get(timeout=30) == sum(range(n))
    assert kills >= 5
    time.sleep(0.5)
    assert r.get("test:callback:chaos") == b"1"  # exactly one callback run
