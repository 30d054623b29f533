"""The core round trips on a real 3-master Redis Cluster, with real worker processes.

Each queue's keys share one hash tag, so every script and MULTI of a queue runs on the master
of its slot; queues spread over the masters. These tests send, run and read back through
``redis+cluster://`` exactly as on one server.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest

from omnitask import TaskState
from omnitask.errors import ConfigurationError
from omnitask.testing.cluster import RedisClusterSet
from tests.cluster import apps
from tests.cluster.conftest import WorkerFactory

pytestmark = pytest.mark.process

QUEUES = ("q-a", "q-b", "q-d")


def wait_for(ready: Callable[[], bool], timeout_s: float = 10.0, what: str = "it") -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def started() -> list[str]:
    return [v.decode() for v in apps.app.broker.redis.lrange(apps.STARTED, 0, -1)]


def test_queues_live_on_different_masters(cluster: RedisClusterSet) -> None:
    masters = {cluster.master_of(apps.app.keys.queue(q).wake).port for q in QUEUES}
    assert len(masters) == 3
    # Every key a queue's steps touch is in its slot: results, events, revocations, flags.
    qk = apps.app.keys.queue("q-a")
    keys = [*qk.ready, qk.delayed, qk.proc("c"), qk.result("t"), qk.state("t"), qk.events]
    keys += [qk.revoked, qk.terminate, qk.paused, qk.dead, qk.cap("x"), qk.chord("c")]
    assert len({cluster.master_of(k).port for k in keys}) == 1


def test_delay_get_and_events(start_worker: WorkerFactory) -> None:
    start_worker()
    results = [apps.echo.delay(i) for i in range(20)]
    results += apps.echo.delay_many([(i,) for i in range(20, 40)])
    assert [r.get(timeout=10) for r in results] == list(range(40))
    assert results[0].state == TaskState.SUCCESS
    again = apps.app.AsyncResult(results[1].id)  # the default queue: found by id alone
    assert again.get(timeout=1) == 1
    kinds = [e.kind for e in apps.app.events.replay() if e.task_id == results[0].id]
    assert kinds == ["task-sent", "task-received", "task-started", "task-succeeded"]
    assert any(e.kind == "worker-online" for e in apps.app.events.replay())


def test_priorities(start_worker: WorkerFactory) -> None:
    for tag, priority in (("low", 1), ("mid", 5), ("high", 9)):
        apps.record.apply_async(args=(tag,), priority=priority)
    last = apps.record.apply_async(args=("lowest",), priority=0)
    start_worker(concurrency=1)
    last.get(timeout=10)
    assert started() == ["high", "mid", "low", "lowest"]


def test_retries_and_dead_letters(start_worker: WorkerFactory) -> None:
    start_worker()
    assert apps.flaky.delay("x").get(timeout=10) == 3
    failed = apps.fail.delay("boom")
    with pytest.raises(ValueError, match="boom"):
        failed.get(timeout=10)
    letters = apps.app.dead_letters.list("default")
    assert [d.task_id for d in letters] == [failed.id]
    assert apps.app.dead_letters.requeue("default", letters[0].stream_id)
    wait_for(lambda: apps.app.dead_letters.count("default") == 0, what="the requeued letter")


def test_revoke_before_it_runs(start_worker: WorkerFactory) -> None:
    doomed = apps.record.apply_async(args=("doomed",), countdown=0.5)
    kept = apps.record.apply_async(args=("kept",), countdown=0.5)
    assert doomed.revoke()
    assert apps.app.control.revoke([kept.id + "-none"]) == [True]  # by id alone: every queue
    start_worker()
    assert kept.get(timeout=10) == "kept"
    assert doomed.state == TaskState.REVOKED
    assert started() == ["kept"]


def test_killed_child_is_redelivered(start_worker: WorkerFactory) -> None:
    worker = start_worker(concurrency=1)
    result = apps.record.delay("victim", 1.0)
    wait_for(lambda: len(started()) == 1, what="the task to start")
    (child,) = worker.children()
    os.kill(child, signal.SIGKILL)
    assert result.get(timeout=10) == "victim"
    assert started() == ["victim", "victim"]


def test_queues_on_every_master_at_once(start_worker: WorkerFactory) -> None:
    start_worker("-Q", ",".join(QUEUES), concurrency=2)
    start_worker("-Q", QUEUES[0])
    results = [task.delay(i) for i in range(15) for task in (apps.on_a, apps.on_b, apps.on_d)]
    assert {r.queue for r in results} == set(QUEUES)
    values = [r.get(timeout=15) for r in results]
    assert values == [f"{q}{i}" for i in range(15) for q in "abd"]
    # A result looked up by id names its queue; pausing acts on one queue's own flag.
    assert apps.app.AsyncResult(results[1].id, queue="q-b").get(timeout=1) == "b0"
    assert apps.app.control.pause_queue("q-b")
    assert apps.app.control.paused() == ["q-b"]
    held = apps.on_b.delay(99)
    time.sleep(0.5)
    assert held.state == TaskState.PENDING
    assert apps.app.control.resume_queue("q-b")
    assert held.get(timeout=10) == "b99"
    counts = apps.app.inspect.event_counts()
    assert sum(t["succeeded"] for t in counts.by_worker.values()) == len(results) + 1


def test_a_workflow_over_several_queues_is_refused() -> None:
    from omnitask import chain

    with pytest.raises(ConfigurationError, match="one queue"):
        chain(apps.on_a.s(1), apps.on_b.si(2)).delay()
    with pytest.raises(ConfigurationError, match="one queue"):
        apps.on_a.apply_async((1,), link=apps.on_b.s())
    # On one queue it goes through (nothing runs it here; it is only queued).
    chain(apps.echo.s(1), apps.echo.si(2)).delay()
    apps.on_a.apply_async((1,), link=apps.on_a.s())


def test_a_group_joined_mid_chain_runs_on_the_chain_queue(start_worker: WorkerFactory) -> None:
    from omnitask import chain, group

    # The join of the group is a built-in task on the workflow's queue: the step that starts
    # it stays in the queue's slot, and a worker of that queue alone finishes the chain.
    start_worker("-Q", "q-a")
    flow = chain(apps.add_a.s(1, 1), group(apps.add_a.s(10), apps.add_a.s(20)), apps.sum_a.s())
    assert flow.delay().get(timeout=15) == 34


def test_async_tasks_of_queues_on_two_masters(start_worker: WorkerFactory) -> None:
    start_worker("-Q", "q-a,q-b", concurrency=1)
    results = [t.delay(i) for i in range(30) for t in (apps.async_on_a, apps.async_on_b)]
    assert [r.get(timeout=15) for r in results] == [f"a{q}{i}" for i in range(30) for q in "ab"]
