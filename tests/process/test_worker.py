"""The whole path through real worker processes started with the CLI."""

from __future__ import annotations

import builtins
import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
import redis

import omnitask
from omnitask import TaskFailed, TaskState
from tests.apps import basic, other
from tests.conftest import WorkerFactory, wait_for

pytestmark = pytest.mark.process


@pytest.fixture(autouse=True)
def _apps(redis_url: str) -> Iterator[None]:
    basic.app.configure(broker_url=redis_url)
    other.app.configure(broker_url=redis_url)
    yield
    basic.app.close()
    other.app.close()


def log(r: redis.Redis, key: str = "test:log") -> list[str]:
    return [v.decode() for v in r.lrange(key, 0, -1)]


def test_round_trip_and_states(start_worker: WorkerFactory) -> None:
    start_worker(concurrency=2)
    result = basic.add.delay(1, 2)
    assert result.get(timeout=5) == 3
    assert result.state == TaskState.SUCCESS and result.successful() and result.ready()
    assert isinstance(result.date_done, datetime) and result.date_done.tzinfo is not None
    fresh = basic.app.AsyncResult(result.id)
    assert (fresh.result, fresh.state) == (3, "SUCCESS")
    when = datetime(2030, 5, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    point, back = basic.shift.delay(basic.Point(1, 2), when).get(timeout=5)
    assert point == basic.Point(2, 3) and back == when
    assert basic.app.send_task("tests.apps.basic.add", (2, 3)).get(timeout=5) == 5
    at = basic.add.apply_at(time.time() + 0.2, 4, 5)
    assert at.get(timeout=5) == 9


def test_unknown_id_is_pending(redis_url: str) -> None:
    result = basic.app.AsyncResult("no-such-id")
    assert result.state == "PENDING" and result.result is None and not result.ready()


def test_failures_are_rebuilt(start_worker: WorkerFactory) -> None:
    start_worker()
    with pytest.raises(basic.Boom, match="bad input") as info:
        basic.fail.delay("bad input").get(timeout=5)
    assert any("Remote traceback" in note for note in getattr(info.value, "__notes__", []))
    with pytest.raises(TaskFailed) as failed:
        basic.fail_odd.delay().get(timeout=5)
    assert failed.value.type_name == "tests.apps.basic.Unbuildable"
    assert failed.value.message == "1+2" and "Unbuildable" in (failed.value.remote_traceback or "")
    result = basic.fail.delay("quiet")
    assert isinstance(result.get(timeout=5, propagate=False), basic.Boom)
    assert result.failed() and "raise Boom(message)" in (result.traceback or "")


def test_get_timeout_is_a_builtin_timeout(redis_url: str) -> None:
    result = basic.add.delay(1, 1)  # no worker is running
    start = time.monotonic()
    with pytest.raises(omnitask.TimeoutError):
        result.get(timeout=0.3)
    assert 0.25 < time.monotonic() - start < 2
    with pytest.raises(builtins.TimeoutError):
        result.get(timeout=0.05)


def test_strict_priority_with_one_process(start_worker: WorkerFactory, r: redis.Redis) -> None:
    sent = [("a", 5), ("b", 0), ("c", 9), ("d", 5), ("e", 9), ("f", 1), ("g", 7), ("h", 0)]
    for tag, priority in sent:
        basic.record.apply_async((tag,), priority=priority)
    start_worker(concurrency=1)
    wait_for(lambda: r.llen("test:log") == len(sent), what="all tasks")
    assert log(r) == ["c", "e", "g", "a", "d", "f", "b", "h"]


def test_countdown_runs_in_its_window(start_worker: WorkerFactory) -> None:
    start_worker()
    sent = time.time()
    result = basic.record.apply_async(("later",), countdown=1.0)
    assert result.get(timeout=5) == "later"
    done = result.date_done
    assert done is not None
    assert 1.0 <= done.timestamp() - sent < 2.0


def test_delayed_task_survives_worker_restart(start_worker: WorkerFactory, r: redis.Redis) -> None:
    worker = start_worker()
    result = basic.record.apply_async(("delayed",), countdown=1.0)
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    start_worker()
    assert result.get(timeout=5) == "delayed"
    assert log(r) == ["delayed"]


LEASE_ENV = {"OMNITASK_LEASE_S": "0.6"}


def test_long_task_under_short_lease_runs_once(start_worker: WorkerFactory, r: redis.Redis) -> None:
    start_worker(env=LEASE_ENV)
    start_worker(env=LEASE_ENV)
    result = basic.record.delay("long", 2.5)  # more than four lease periods
    assert result.get(timeout=10) == "long"
    time.sleep(1.0)  # a redelivery, if there were one, would start within this
    assert log(r, "test:started") == ["long"]


def test_killed_child_task_is_redelivered_promptly(
    start_worker: WorkerFactory, r: redis.Redis
) -> None:
    worker = start_worker(concurrency=1)
    result = basic.record.delay("victim", 1.0)
    wait_for(lambda: r.llen("test:started") == 1, what="task start")
    (child,) = worker.children()
    killed_at = time.monotonic()
    import os

    os.kill(child, signal.SIGKILL)
    wait_for(lambda: r.llen("test:started") == 2, timeout_s=5, what="redelivery")
    assert time.monotonic() - killed_at < 2.0  # the supervisor saw it die; no lease wait
    assert result.get(timeout=5) == "victim"
    assert log(r) == ["victim"]
    assert worker.proc.poll() is None
    assert "child died" in worker.output


def test_killed_worker_task_is_redelivered_after_lease(
    start_worker: WorkerFactory, r: redis.Redis
) -> None:
    doomed = start_worker(env={"OMNITASK_LEASE_S": "1"})
    result = basic.record.delay("orphan", 1.5)
    wait_for(lambda: r.llen("test:started") == 1, what="task start")
    doomed.kill()  # supervisor and children, at once
    killed_at = time.monotonic()
    start_worker(env={"OMNITASK_LEASE_S": "1"})
    ready_at = time.monotonic()  # a loaded machine may take a while to start the new worker
    assert result.get(timeout=10) == "orphan"
    # Taken again once the lease lapsed (or the new worker is up), then run (1.5 s) + slack.
    assert time.monotonic() < max(killed_at + 1, ready_at) + 1.5 + 1.5
    assert log(r, "test:started") == ["orphan", "orphan"] and log(r) == ["orphan"]


def test_children_die_with_a_killed_supervisor(start_worker: WorkerFactory) -> None:
    worker = start_worker(concurrency=2)
    children = worker.children()
    assert len(children) == 2
    worker.signal(signal.SIGKILL)
    worker.proc.wait(5)

    def gone() -> bool:
        import os

        alive = 0
        for pid in children:
            try:
                os.kill(pid, 0)
                alive += 1
            except ProcessLookupError:
                pass
        return alive == 0

    wait_for(gone, timeout_s=5, what="children to exit")


def test_warm_shutdown_finishes_running_keeps_queued(
    start_worker: WorkerFactory, r: redis.Redis
) -> None:
    worker = start_worker(concurrency=1)
    running = basic.record.delay("running", 1.0)
    wait_for(lambda: r.llen("test:started") == 1, what="task start")
    queued = [basic.record.delay(f"q{i}") for i in range(3)]
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    assert running.get(timeout=1) == "running"
    assert log(r) == ["running"]
    assert basic.app.broker.ready_count("default") == 3
    assert not r.keys("ot:{tbasic:default}:proc:*")
    start_worker()
    assert [q.get(timeout=5) for q in queued] == ["q0", "q1", "q2"]


def test_sigterm_to_the_process_group_is_a_warm_shutdown(
    start_worker: WorkerFactory, r: redis.Redis
) -> None:
    # What a service manager does (systemd's default KillMode): every process gets SIGTERM,
    # and a child may exit before its supervisor has handled its own.
    worker = start_worker("tests.apps.basic", "--prefetch", "4", concurrency=2)
    running = basic.record.delay("running", 0.5)
    wait_for(lambda: r.llen("test:started") == 1, what="task start")
    queued = basic.record.delay_many([(f"q{i}", 0.2) for i in range(8)])
    os.killpg(worker.proc.pid, signal.SIGTERM)
    assert worker.wait(15) == 0
    assert running.get(timeout=1) == "running"
    assert "child died" not in worker.output  # not a crash: no error, no delivery counted
    assert not r.hlen(basic.app.keys.queue("default").deliveries)
    assert not r.keys("ot:{tbasic:default}:proc:*")
    start_worker()
    assert sorted(q.get(timeout=10) for q in queued) == [f"q{i}" for i in range(8)]


def test_second_signal_hands_back_at_once(start_worker: WorkerFactory, r: redis.Redis) -> None:
    worker = start_worker(concurrency=1)
    result = basic.record.delay("interrupted", 30)
    wait_for(lambda: r.llen("test:started") == 1, what="task start")
    worker.signal(signal.SIGTERM)
    time.sleep(0.3)
    stopped_at = time.monotonic()
    worker.signal(signal.SIGINT)
    assert worker.wait(10) == 0
    assert time.monotonic() - stopped_at < 3
    assert basic.app.broker.ready_count("default") == 1
    assert result.state == "PENDING"
    assert "cold shutdown" in worker.output


def test_result_expires_after_its_ttl(start_worker: WorkerFactory) -> None:
    start_worker()
    result = basic.short_lived.delay()
    assert result.get(timeout=5) == "soon gone"
    assert basic.app.AsyncResult(result.id).state == "SUCCESS"
    time.sleep(1.2)
    assert basic.app.AsyncResult(result.id).state == "PENDING"


def test_bad_messages_are_moved_aside(start_worker: WorkerFactory, r: redis.Redis) -> None:
    worker = start_worker()
    qk = basic.app.keys.queue("default")
    unknown = basic.app.send_task("no.such.task", (1,))
    r.rpush(qk.ready[5], b"\x00garbage\xff")
    r.rpush(qk.ready[9], b'{"body": "a message of another framework"}')
    r.zadd(qk.delayed, {b"\x93\x01\x05truncated": 0})
    with pytest.raises(omnitask.TaskNotRegisteredError, match=r"no\.such\.task"):
        unknown.get(timeout=5)
    assert basic.add.delay(2, 2).get(timeout=5) == 4  # the worker carries on
    wait_for(lambda: r.xlen(qk.dead) == 4, what="four dead letters")
    reasons = sorted(fields[b"reason"].decode() for _, fields in r.xrange(qk.dead))
    assert reasons == ["malformed", "malformed", "malformed", "unknown-task"]
    bodies = {fields[b"msg"] for _, fields in r.xrange(qk.dead)}
    assert b"\x00garbage\xff" in bodies
    kinds = [e.kind for e in basic.app.events.replay()]
    assert kinds.count("task-rejected") == 4
    assert worker.proc.poll() is None


def test_retries_then_success(start_worker: WorkerFactory, r: redis.Redis) -> None:
    start_worker()
    result = basic.flaky.delay("f1")
    assert result.get(timeout=10) == 3
    retried = [e for e in basic.app.events.replay() if e.kind == "task-retried"]
    assert [e.fields and e.fields["retries"] for e in retried] == ["1", "2"]


def test_poison_pill_is_dead_lettered(start_worker: WorkerFactory, r: redis.Redis) -> None:
    worker = start_worker(env={"OMNITASK_MAX_DELIVERIES": "2"})
    result = basic.die.delay("pill")
    with pytest.raises(omnitask.WorkerLostError, match="died 2 times"):
        result.get(timeout=10)
    assert log(r, "test:died") == ["pill", "pill"]
    qk = basic.app.keys.queue("default")
    assert [f[b"reason"] for _, f in r.xrange(qk.dead)] == [b"max-deliveries"]
    assert basic.add.delay(1, 1).get(timeout=5) == 2
    assert worker.proc.poll() is None


def test_ignore_result(start_worker: WorkerFactory, r: redis.Redis) -> None:
    start_worker()
    result = basic.quiet.delay("shh")
    with pytest.raises(omnitask.ResultIgnoredError):
        result.get(timeout=1)
    wait_for(lambda: log(r) == ["shh"], what="the task to run")
    assert not r.exists(basic.app.keys.queue(result.queue).result(result.id))


def test_expired_task_is_revoked(start_worker: WorkerFactory, r: redis.Redis) -> None:
    result = basic.record.apply_async(("stale",), expires=0.2)
    time.sleep(0.3)
    start_worker()
    with pytest.raises(omnitask.TaskRevokedError, match="expired"):
        result.get(timeout=5)
    assert result.state == "REVOKED" and log(r) == []
    assert "task-revoked" in [e.kind for e in basic.app.events.replay()]


def test_event_sequence_of_one_task(start_worker: WorkerFactory) -> None:
    start_worker()
    result = basic.add.delay(2, 3)
    result.get(timeout=5)
    events = [e for e in basic.app.events.replay() if e.task_id == result.id]
    assert [e.kind for e in events] == [
        "task-sent",
        "task-received",
        "task-started",
        "task-succeeded",
    ]
    assert all(e.name == "tests.apps.basic.add" and e.queue == "default" for e in events)
    assert events[-1].runtime_s is not None and events[-1].worker
    times = [e.time for e in events]
    assert times == sorted(times)
    assert "worker-online" in [e.kind for e in basic.app.events.replay()]


def test_follow_events_live(start_worker: WorkerFactory) -> None:
    start_worker()
    stream = basic.app.events.follow(timeout_s=5)
    result = basic.add.delay(1, 1)
    kinds = []
    for event in stream:
        if event.task_id == result.id:
            kinds.append(event.kind)
        if event.kind == "task-succeeded":
            break
    assert kinds[0] == "task-sent" and kinds[-1] == "task-succeeded"


def test_two_apps_share_a_redis(start_worker: WorkerFactory, r: redis.Redis) -> None:
    start_worker("tests.apps.basic")
    mine = basic.add.delay(1, 2)
    theirs = other.add.delay(1, 2)
    assert mine.get(timeout=5) == 3
    with pytest.raises(omnitask.TimeoutError):
        theirs.get(timeout=0.5)  # nobody serves the other app yet
    start_worker("tests.apps.other")
    assert theirs.get(timeout=5) == 1003
    assert r.keys("ot:{tother:default}:*") and r.keys("ot:{tbasic:default}:*")


def test_dead_workers_are_pruned_from_the_worker_list(
    start_worker: WorkerFactory, r: redis.Redis
) -> None:
    fast = {"OMNITASK_HEARTBEAT_INTERVAL_S": "0.1"}
    dead = start_worker(env=fast)
    dead.kill()
    start_worker(env=fast)
    key = basic.app.keys.workers
    wait_for(lambda: r.zcard(key) == 1, timeout_s=5, what="the killed worker to be pruned")


def test_several_queues_keep_each_delayed_due_time(start_worker: WorkerFactory) -> None:
    start_worker("tests.apps.basic", "-Q", "a,b")
    sent = time.time()
    result = basic.add.apply_async((1, 1), queue="a", countdown=0.5)
    assert result.get(timeout=5) == 2
    assert result.date_done is not None and result.date_done.timestamp() - sent < 1.5


def test_redis_restart_is_survived(start_worker: WorkerFactory, tmp_path: object) -> None:
    from omnitask.testing import RedisServer

    with RedisServer(appendonly=True) as server:
        url = server.url
        basic.app.configure(broker_url=url)
        worker = start_worker(url=url, env={"OMNITASK_LEASE_S": "3"})
        before = [basic.add.delay(i, i) for i in range(20)]
        assert [r.get(timeout=5) for r in before] == [2 * i for i in range(20)]
        server.restart()  # the AOF brings the data back; the script cache is empty
        after = [basic.add.delay(i, 1) for i in range(20)]
        assert [r.get(timeout=10) for r in after] == [i + 1 for i in range(20)]
        assert worker.proc.poll() is None
        basic.app.close()
        worker.kill()


def test_payload_in_another_serializer_is_refused(
    start_worker: WorkerFactory, r: redis.Redis
) -> None:
    # A msgpack task must never unpickle: a cloudpickle payload is dead-lettered unread.
    from omnitask.messages import PROTOCOL_VERSION, Envelope, encode_envelope, now_ms
    from omnitask.serialization import encode_call, get_serializer

    start_worker()
    pickled = encode_call(get_serializer("cloudpickle"), "x", (1, 2), {})
    envelope = Envelope(PROTOCOL_VERSION, 5, "evil-1", "tests.apps.basic.add", pickled, 1, now_ms())
    r.rpush(basic.app.keys.queue("default").ready[5], encode_envelope(envelope))
    r.lpush(basic.app.keys.queue("default").wake, "1")  # as every enqueue does
    with pytest.raises(omnitask.SerializationError, match="unsigned cloudpickle"):
        basic.app.AsyncResult("evil-1").get(timeout=5)
    reasons = [f[b"reason"] for _, f in r.xrange(basic.app.keys.queue("default").dead)]
    assert reasons == [b"serializer-refused"]
