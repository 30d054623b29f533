"""Prefetch (``--prefetch N``): batches claimed at once, quick successes acknowledged together."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
import redis

from tests.apps import basic
from tests.conftest import WorkerFactory, wait_for

pytestmark = pytest.mark.process


@pytest.fixture(autouse=True)
def _app(redis_url: str) -> Iterator[None]:
    basic.app.configure(broker_url=redis_url)
    yield
    basic.app.close()


def in_flight(r: redis.Redis) -> int:
    """Envelopes still claimed by some consumer (none once every batch was acknowledged)."""
    return sum(int(r.llen(key)) for key in r.scan_iter(match="*:proc:*"))


def tags(r: redis.Redis, key: str) -> list[str]:
    return [v.decode() for v in r.lrange(key, 0, -1)]


def test_batches_record_every_outcome(start_worker: WorkerFactory, r: redis.Redis) -> None:
    start_worker("tests.apps.basic", "--prefetch", "8")
    sums = basic.add.delay_many([(i, i) for i in range(50)])
    slow = basic.record.delay("slow", 0.05)  # over the deferral bound: acknowledged at once
    failed = basic.fail.delay("in a batch")
    assert [s.get(timeout=10) for s in sums] == [2 * i for i in range(50)]
    assert slow.get(timeout=10) == "slow"
    with pytest.raises(basic.Boom, match="in a batch"):
        failed.get(timeout=10)
    wait_for(lambda: in_flight(r) == 0, what="every batch acknowledged")
    succeeded = [
        f
        for _, f in r.xrange(basic.app.keys.queue("default").events)
        if f[b"e"] == b"task-succeeded"
    ]
    assert len(succeeded) == 51  # one final event per success, none lost in a batch


def test_warm_shutdown_acknowledges_what_ran(start_worker: WorkerFactory, r: redis.Redis) -> None:
    worker = start_worker("tests.apps.basic", "--prefetch", "50")
    results = basic.record.delay_many([(f"t{i}", 0.002) for i in range(400)])
    wait_for(lambda: r.llen("test:log") >= 30, what="some runs")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    ran = set(tags(r, "test:log"))
    assert 30 <= len(ran) < 400
    assert in_flight(r) == 0  # the batch's acks were sent before the child stopped
    for i, result in enumerate(results):
        # Every task that ran has its result; every other one is back in the queue, unrun.
        assert (result.state == "SUCCESS") == (f"t{i}" in ran)
    assert sum(r.llen(key) for key in basic.app.keys.queue("default").ready) == 400 - len(ran)


def test_a_killed_child_hands_its_batch_back(start_worker: WorkerFactory, r: redis.Redis) -> None:
    worker = start_worker("tests.apps.basic", "--prefetch", "10")
    results = basic.record.delay_many([(f"k{i}", 0.003) for i in range(60)])
    wait_for(lambda: r.llen("test:started") >= 5, what="some runs")
    os.kill(worker.children()[0], signal.SIGKILL)
    assert sorted(res.get(timeout=20) for res in results) == sorted(f"k{i}" for i in range(60))
    runs = tags(r, "test:started")
    # Nothing lost; what ran in the killed child's unacknowledged batch ran again (at most a
    # batch, plus the task it was running).
    assert set(runs) == {f"k{i}" for i in range(60)}
    assert len(runs) - 60 <= 10
    wait_for(lambda: in_flight(r) == 0, what="every batch acknowledged")
