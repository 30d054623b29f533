"""Retries, dead letters for failures, time limits, revoke, recycling, broker outages."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest
import redis

import omnitask
from omnitask import OmniTask
from omnitask.retry import RetryPolicy
from tests.apps import basic
from tests.conftest import WorkerFactory, wait_for

pytestmark = pytest.mark.process


@pytest.fixture(autouse=True)
def _app(redis_url: str) -> Iterator[None]:
    basic.app.configure(broker_url=redis_url)
    yield
    basic.app.close()


def strs(r: redis.Redis, key: str) -> list[str]:
    return [v.decode() for v in r.lrange(key, 0, -1)]


def dead(r: redis.Redis) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in r.xrange(basic.app.keys.queue("default").dead)]


def test_backoff_policy_is_exponential_with_full_jitter() -> None:
    policy = RetryPolicy(retries=5, backoff_s=1.0, backoff_max_s=10.0)
    samples = [policy.delay(3) for _ in range(2000)]
    assert 0 <= min(samples) < 0.5 and 7.5 < max(samples) <= 8.0
    assert max(policy.delay(10) for _ in range(200)) <= 10.0
    assert RetryPolicy(backoff_s=2.0, jitter=False).delay(2) == 8.0
    assert RetryPolicy(backoff_s=0, delay_s=3.0).delay(7) == 3.0
    assert not RetryPolicy(retries=2, retry_on=(KeyError,)).should_retry(ValueError(), 0)
    assert not RetryPolicy(retries=2).should_retry(ValueError(), 2)


def test_only_listed_exceptions_are_retried(start_worker: WorkerFactory, r: redis.Redis) -> None:
    start_worker()
    with pytest.raises(KeyError):
        basic.picky.delay("key").get(timeout=10)
    assert r.get("test:picky") == b"4"  # the first run and 3 retries
    r.delete("test:picky")
    with pytest.raises(ValueError, match="value"):
        basic.picky.delay("value").get(timeout=5)
    assert r.get("test:picky") == b"1"  # not retried


def test_retry_waits_in_redis_and_failure_is_dead_lettered(
    start_worker: WorkerFactory, r: redis.Redis
) -> None:
    start_worker()
    result = basic.fixed_delay.delay("x")
    wait_for(lambda: result.state == "RETRY", what="RETRY state")
    assert r.zcard(basic.app.keys.queue("default").delayed) == 1  # waiting in Redis
    sent = time.monotonic()
    assert result.get(timeout=5) == "x"
    assert 0.4 < time.monotonic() - sent < 2.0
    with pytest.raises(KeyError):
        basic.picky.delay("key").get(timeout=10)
    (letter,) = dead(r)
    assert letter[b"reason"] == b"failed" and letter[b"attempts"] == b"4"
    assert letter[b"n"] == b"tests.apps.basic.picky" and b"KeyError" in letter[b"traceback"]


def test_bound_task_retries_itself_and_sees_its_request(
    start_worker: WorkerFactory, r: redis.Redis
) -> None:
    start_worker()
    result = basic.bound.delay("b")
    assert result.get(timeout=10) == {"retries": 2, "args": ["b"]}
    seen = strs(r, "test:requests")
    assert seen == [f"{result.id}|{n}|1|default" for n in range(3)]
    retried = [e for e in basic.app.events.replay() if e.kind == "task-retried"]
    assert len(retried) == 2


def test_soft_time_limit_lets_the_task_clean_up(
    start_worker: WorkerFactory, r: redis.Redis
) -> None:
    start_worker()
    assert basic.soft_limited.delay().get(timeout=5) == "stopped in time"
    assert strs(r, "test:log") == ["cleaned up"]


def test_hard_time_limit_kills_and_fails(start_worker: WorkerFactory, r: redis.Redis) -> None:
    worker = start_worker()
    started = time.monotonic()
    with pytest.raises(omnitask.TimeLimitExceeded):
        basic.hard_limited.delay("h").get(timeout=10)
    assert time.monotonic() - started < 3.0
    assert basic.add.delay(1, 2).get(timeout=5) == 3  # a fresh child serves the next task
    assert worker.proc.poll() is None and "time limit exceeded" in worker.output
    with pytest.raises(omnitask.TimeLimitExceeded):
        basic.hard_limited_retry.delay("hr").get(timeout=15)
    assert strs(r, "test:started") == ["h", "hr", "hr"]  # retried once, then failed
    assert [d[b"reason"] for d in dead(r)] == [b"failed", b"failed"]


def test_per_call_time_limit(start_worker: WorkerFactory) -> None:
    start_worker()
    result = basic.record.apply_async(("slow", 30), time_limit=0.5)
    with pytest.raises(omnitask.TimeLimitExceeded):
        result.get(timeout=10)


def test_revoked_pending_task_never_runs(start_worker: WorkerFactory, r: redis.Redis) -> None:
    result = basic.record.apply_async(("never",), countdown=0.5)
    assert result.revoke() is True
    assert result.state == "REVOKED"
    start_worker()
    kept = basic.record.delay("kept")
    assert kept.get(timeout=5) == "kept"
    time.sleep(0.8)  # past the revoked task's due time
    assert strs(r, "test:log") == ["kept"]
    with pytest.raises(omnitask.TaskRevokedError):
        result.get(timeout=1)
    assert kept.revoke() is False  # finished: its result stays
    assert kept.get(timeout=1) == "kept"


def test_revoke_terminate_stops_a_running_task(start_worker: WorkerFactory, r: redis.Redis) -> None:
    worker = start_worker()
    result = basic.record.delay("long", 30)
    wait_for(lambda: r.llen("test:started") == 1, what="task start")
    result.revoke(terminate=True)
    wait_for(lambda: "terminated revoked" in worker.output, timeout_s=5, what="terminate")
    assert result.state == "REVOKED" and strs(r, "test:log") == []
    assert basic.add.delay(2, 2).get(timeout=5) == 4
    assert worker.proc.poll() is None


def test_children_are_recycled_after_max_tasks(start_worker: WorkerFactory) -> None:
    start_worker(env={"OMNITASK_MAX_TASKS_PER_CHILD": "2"})
    results = [basic.add.delay(i, i) for i in range(6)]
    assert [x.get(timeout=10) for x in results] == [0, 2, 4, 6, 8, 10]
    workers = {e.worker for e in basic.app.events.replay() if e.kind == "task-succeeded"}
    assert len(workers) == 3  # three children, two tasks each


def test_delay_while_redis_is_down_raises_broker_unavailable() -> None:
    from omnitask.testing import RedisServer

    with RedisServer(appendonly=True, extra_args=["--appendfsync", "always"]) as server:
        app = OmniTask("outage", broker=server.url, enqueue_timeout_s=1.0)
        app.task(name="t")(lambda: None)
        app.send_task("t")
        server.stop()
        started = time.monotonic()
        with pytest.raises(omnitask.BrokerUnavailable, match="unreachable: gave up after 1 s"):
            app.send_task("t")
        assert 0.9 < time.monotonic() - started < 3.0
        server.start()
        app.send_task("t")  # works again once Redis is back
        assert app.broker.ready_count("default") == 2
        app.close()


def test_warm_shutdown_keeps_the_lease_of_a_long_task(
    start_worker: WorkerFactory, r: redis.Redis
) -> None:
    env = {"OMNITASK_LEASE_S": "0.6"}
    stopping = start_worker(env=env, concurrency=1)
    result = basic.record.delay("finishing", 2.0)  # more than three leases
    wait_for(lambda: r.llen("test:started") == 1, what="task start")
    start_worker(env=env, concurrency=1)  # would take the task if its lease lapsed
    stopping.signal(__import__("signal").SIGTERM)
    assert stopping.wait(15) == 0
    assert result.get(timeout=5) == "finishing"
    time.sleep(1.0)
    assert strs(r, "test:started") == ["finishing"]  # ran once


def test_a_task_exiting_with_the_recycle_code_is_still_a_crash(
    start_worker: WorkerFactory, r: redis.Redis
) -> None:
    start_worker(env={"OMNITASK_MAX_DELIVERIES": "2"})
    with pytest.raises(omnitask.WorkerLostError):
        basic.exit75.delay("e").get(timeout=10)
    assert strs(r, "test:died") == ["e", "e"]


def test_progress_is_readable_and_published(start_worker: WorkerFactory, r: redis.Redis) -> None:
    start_worker()
    result = basic.crunch.delay(3)
    wait_for(lambda: result.info == {"phase": "waiting"}, what="the last progress")
    assert result.state == "PROGRESS" and not result.ready()
    r.rpush("test:go", "1")
    assert result.get(timeout=5) == 3 and result.state == "SUCCESS"
    progress = [e for e in basic.app.events.replay() if e.kind == "task-progress"]
    assert len(progress) == 4 and all(e.task_id == result.id for e in progress)


def test_final_states_cannot_be_set_by_hand() -> None:
    with pytest.raises(omnitask.ConfigurationError, match="final state"):
        basic.crunch.update_state("SUCCESS", task_id="x")
    with pytest.raises(RuntimeError, match="not running here"):
        basic.crunch.progress(1, 2)


@pytest.mark.parametrize("refusal", ["NOREPLICAS", "OOM", "READONLY"])
def test_a_server_refusing_writes_is_waited_out_quietly(
    refusal: str, start_worker: WorkerFactory
) -> None:
    # A server that is up but refuses every write: min-replicas-to-write with no replica,
    # maxmemory below what it holds, a replica. The child warns once and retries with backoff
    # (it used to log a traceback every second), then runs tasks once writes go through.
    from omnitask.testing import RedisServer

    with contextlib.ExitStack() as stack:
        args = {"NOREPLICAS": ["--min-replicas-to-write", "1"], "OOM": ["--maxmemory", "1"]}
        if refusal == "READONLY":
            master = stack.enter_context(RedisServer())
            args["READONLY"] = ["--replicaof", "127.0.0.1", str(master.port)]
        server = stack.enter_context(RedisServer(extra_args=args[refusal]))
        worker = start_worker(url=server.url, ready=False)
        wait_for(lambda: "refuses writes, retrying" in worker.output, what="the child's warning")
        time.sleep(1.5)
        admin = redis.Redis.from_url(server.url)
        if refusal == "READONLY":
            admin.replicaof("NO", "ONE")
        else:
            admin.config_set(
                {"NOREPLICAS": "min-replicas-to-write", "OOM": "maxmemory"}[refusal], 0
            )
        basic.app.close()
        basic.app.configure(broker_url=server.url)
        assert basic.add.delay(1, 2).get(timeout=10) == 3
        assert worker.output.count("refuses writes, retrying") == 1, worker.output
        assert "Traceback" not in worker.output, worker.output
