"""Pausing a queue: claim hands out nothing from it, atomically, until it is resumed."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from omnitask import OmniTask
from omnitask.control import Control
from omnitask.producer import Call


@pytest.fixture
def app(redis_url: str) -> Iterator[OmniTask]:
    app = OmniTask("pause", broker=redis_url)

    @app.task(name="job")
    def job(i: int) -> int:
        return i

    yield app
    app.close()


def send(app: OmniTask, i: int, **options: object) -> str:
    call = Call.build(app, app.tasks["job"], (i,), {}, options)  # type: ignore[arg-type]
    app.broker.enqueue(call.queue, [call.item])
    return call.task_id


def test_a_paused_queue_hands_out_nothing_until_resumed(app: OmniTask, r: redis.Redis) -> None:
    control = Control(app)
    qk = app.keys.queue("default")
    assert control.pause_queue("default") is True
    assert control.pause_queue("default") is False
    send(app, 1)
    send(app, 2, countdown=0.01)
    time.sleep(0.05)  # now a delayed task that is due
    claim = app.broker.claim("default", "c1", 2)
    assert claim.tasks == []
    # Not the due delayed task's time: an idle worker would wake for it over and over.
    assert claim.next_due_ms is None
    assert r.llen(qk.ready[5]) == 1 and r.zcard(qk.delayed) == 1
    assert r.zscore(qk.consumers, "c1") is not None  # the lease is still refreshed
    assert control.paused() == ["default"]

    r.delete(qk.wake)
    assert control.resume_queue("default") is True
    assert r.llen(qk.wake) > 0  # idle workers wake at once
    assert len(app.broker.claim("default", "c1", 2).tasks) == 2
    assert control.resume_queue("default") is False


def test_other_queues_and_orphans_are_not_held_up(app: OmniTask, r: redis.Redis) -> None:
    control = Control(app)
    send(app, 1)
    first = app.broker.claim("default", "c1", 1)
    assert len(first.tasks) == 1
    send(app, 2, queue="other")
    control.pause_queue("default")
    # A claim whose reply was lost is returned again (held=0): it was claimed before the pause.
    assert [t.body for t in app.broker.claim("default", "c1", 1).tasks] == [first.tasks[0].body]
    assert len(app.broker.claim("other", "c1", 1).tasks) == 1


def test_purge_deletes_ready_and_delayed_but_not_in_flight(app: OmniTask, r: redis.Redis) -> None:
    for i in range(3):
        send(app, i)
    send(app, 3, priority=9)
    send(app, 4, countdown=60)
    app.broker.claim("default", "c1", 1)  # the priority 9 one is now in flight
    purged = Control(app).purge("default")
    assert (purged.queue, purged.ready, purged.delayed) == ("default", 3, 1)
    qk = app.keys.queue("default")
    assert r.llen(qk.proc("c1")) == 1
    assert not any(r.exists(k) for k in (*qk.ready, qk.delayed))
    assert Control(app).purge("default").ready == 0
