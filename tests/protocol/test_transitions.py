"""Each transition of the protocol, run on the real Redis, with its exact effect on the keys."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from omnitask import OmniTask
from omnitask.broker import commands as cmd
from omnitask.broker.client import Ack, Broker
from omnitask.broker.keys import QueueKeys
from omnitask.messages import decode_envelope
from omnitask.producer import Call


@pytest.fixture
def app(redis_url: str) -> Iterator[OmniTask]:
    app = OmniTask("proto", broker=redis_url, lease_s=1.0)

    @app.task(name="job")
    def job(i: int) -> int:
        return i

    yield app
    app.close()


def default_keys(app: OmniTask) -> QueueKeys:
    return app.keys.queue("default")


def send(app: OmniTask, i: int, **options: object) -> str:
    call = Call.build(app, app.tasks["job"], (i,), {}, options)  # type: ignore[arg-type]
    app.broker.enqueue(call.queue, [call.item])
    return call.task_id


def claim_args(broker: Broker, consumer: str, n: int = 1, held: int = 0) -> list[int]:
    claim = broker.claim("default", consumer, n, held)
    return [int(decode_envelope(t.body).payload[2]) for t in claim.tasks]


def test_strict_priority_then_fifo(app: OmniTask) -> None:
    order = [(1, 5), (2, 0), (3, 9), (4, 5), (5, 9), (6, 0), (7, 7)]
    for i, priority in order:
        send(app, i, priority=priority)
    claimed = [claim_args(app.broker, "c1", held=held)[0] for held in range(len(order))]
    assert claimed == [3, 5, 7, 1, 4, 2, 6]
    assert app.broker.claim("default", "c1", held=len(order)).tasks == []


def test_claim_moves_into_proc_atomically(app: OmniTask, r: redis.Redis) -> None:
    send(app, 1)
    qk = app.keys.queue("default")
    assert r.llen(qk.ready[5]) == 1
    claim = app.broker.claim("default", "c1")
    assert r.llen(qk.ready[5]) == 0
    assert r.lrange(qk.proc("c1"), 0, -1) == [claim.tasks[0].body]
    deadline = r.zscore(qk.consumers, "c1")
    assert deadline is not None and abs(deadline - claim.now_ms - 1000) < 5


def test_claim_many(app: OmniTask) -> None:
    for i in range(5):
        send(app, i)
    assert claim_args(app.broker, "c1", n=3) == [0, 1, 2]
    assert claim_args(app.broker, "c2", n=10) == [3, 4]


def test_ack_removes_and_stores_result(app: OmniTask, r: redis.Redis) -> None:
    task_id = send(app, 1)
    claimed = app.broker.claim("default", "c1").tasks[0]
    send(app, 2)
    held, nxt = app.broker.ack("default", "c1", claimed.body, task_id, (b"rec", 60_000), None, 1)
    qk = app.keys.queue("default")
    assert held is True
    assert nxt is not None and len(nxt.tasks) == 1  # the next task was claimed in the same step
    assert r.lrange(qk.proc("c1"), 0, -1) == [nxt.tasks[0].body]
    assert r.lrange(app.keys.queue("default").result(task_id), 0, -1) == [b"rec"]
    assert 59_000 < r.pttl(app.keys.queue("default").result(task_id)) <= 60_000
    # Acking again (a retried round trip) is harmless and says the task is no longer held.
    held, _ = app.broker.ack("default", "c1", claimed.body, task_id, (b"rec", 60_000), None)
    assert held is False and r.llen(app.keys.queue("default").result(task_id)) == 1


def test_ack_and_claim_publishes_the_final_event(app: OmniTask, r: redis.Redis) -> None:
    task_id = send(app, 1)
    claimed = app.broker.claim("default", "c1").tasks[0]
    event = cmd.event(default_keys(app).events, 100, "task-succeeded", "i", task_id, "rt", "0.5")
    held, nxt = app.broker.ack("default", "c1", claimed.body, task_id, None, event, 1)
    assert held is True and nxt is not None and nxt.tasks == []
    kinds = [fields[b"e"] for _, fields in r.xrange(default_keys(app).events)]
    assert kinds[-1] == b"task-succeeded"
    assert r.xrevrange(default_keys(app).events, count=1)[0][1][b"rt"] == b"0.5"
    assert not r.exists(default_keys(app).result(task_id))  # ignore_result: no record kept


def test_ack_and_claim_of_a_task_no_longer_held(app: OmniTask, r: redis.Redis) -> None:
    task_id = send(app, 1)
    claimed = app.broker.claim("default", "c1").tasks[0]
    r.delete(app.keys.queue("default").proc("c1"))  # its lease lapsed; another worker has it
    held, nxt = app.broker.ack("default", "c1", claimed.body, task_id, (b"rec", 60_000), None, 1)
    assert held is False and nxt is not None
    assert r.lrange(default_keys(app).result(task_id), 0, -1) == [b"rec"]


def test_ack_and_claim_applies_the_ack_when_a_later_step_fails(
    app: OmniTask, r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    task_id = send(app, 1)
    claimed = app.broker.claim("default", "c1").tasks[0]
    send(app, 2)
    r.set(default_keys(app).revoked, "not a zset")  # the claim's ZSCORE fails
    held, nxt = app.broker.ack("default", "c1", claimed.body, task_id, (b"rec", 60_000), None, 1)
    assert held is True and nxt is None  # acked; the caller claims again on its own
    assert r.lrange(default_keys(app).result(task_id), 0, -1) == [b"rec"]
    assert r.llen(app.keys.queue("default").proc("c1")) == 0
    assert "WRONGTYPE" in caplog.text
    r.delete(default_keys(app).revoked)
    assert claim_args(app.broker, "c1") == [2]


def test_ack_many_in_one_step(app: OmniTask, r: redis.Redis) -> None:
    ids = [send(app, i) for i in range(3)]
    claimed = app.broker.claim("default", "c1", 3).tasks
    r.lrem(app.keys.queue("default").proc("c1"), 1, claimed[2].body)  # its lease lapsed
    acks = [
        Ack("default", claimed[0].body, ids[0], (b"r0", 60_000), None),
        Ack(
            "default",
            claimed[1].body,
            ids[1],
            None,
            cmd.event(default_keys(app).events, 100, "x", "i", ids[1]),
        ),
        Ack("default", claimed[2].body, ids[2], (b"r2", 60_000), None),
    ]
    assert app.broker.ack_many("c1", acks) == [True, True, False]
    assert r.llen(app.keys.queue("default").proc("c1")) == 0
    assert r.lrange(default_keys(app).result(ids[0]), 0, -1) == [b"r0"]
    assert not r.exists(default_keys(app).result(ids[1]))
    assert r.lrange(default_keys(app).result(ids[2]), 0, -1) == [b"r2"]
    last = r.xrevrange(default_keys(app).events, count=1)[0][1]
    assert last[b"e"] == b"x" and last[b"i"] == ids[1].encode()


def test_bulk_enqueue_in_one_step(
    app: OmniTask, r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    job = app.tasks["job"]
    qk = app.keys.queue("default")
    r.set(
        qk.wake, "not a list"
    )  # a step after the RPUSHes fails: the tasks are queued all the same
    calls = [Call.build(app, job, (i,), {}, {"priority": 9 if i % 2 else 0}) for i in range(2500)]
    later = Call.build(app, job, (-1,), {}, {"countdown": 60})
    app.broker.enqueue("default", [c.item for c in calls] + [later.item])
    assert r.llen(qk.ready[9]) == 1250 and r.llen(qk.ready[0]) == 1250
    assert r.zcard(qk.delayed) == 1
    first = decode_envelope(r.lindex(qk.ready[0], 0) or b"")
    assert int(first.payload[2]) == 0  # FIFO within a priority, across the script's chunks
    sent = [f for _, f in r.xrange(default_keys(app).events) if f[b"e"] == b"task-sent"]
    # Tasks of one name and eta share entries of up to 20 ids; a lone one has its own.
    assert len(sent) == 126 and b"eta" in sent[-1] and sent[-1][b"i"] == later.task_id.encode()
    events = [e for e in app.events.replay() if e.kind == "task-sent"]
    assert [e.task_id for e in events] == [c.task_id for c in [*calls, later]]
    assert {(e.name, e.queue) for e in events} == {("job", "default")}
    assert [e.fields for e in events[-2:]] == [None, {"eta": str(later.item[2])}]
    assert "WRONGTYPE" in caplog.text
    assert r.sismember(app.keys.queues, "default")


def test_delayed_is_promoted_when_due(app: OmniTask, r: redis.Redis) -> None:
    send(app, 1, countdown=0.3)
    qk = app.keys.queue("default")
    assert r.zcard(qk.delayed) == 1
    early = app.broker.claim("default", "c1")
    assert early.tasks == [] and early.next_due_ms is not None
    assert 0 < early.next_due_ms - early.now_ms <= 300
    time.sleep(0.35)
    assert claim_args(app.broker, "c1") == [1]
    assert r.zcard(qk.delayed) == 0


def test_thousands_due_at_once_are_all_promoted(app: OmniTask, r: redis.Redis) -> None:
    job = app.tasks["job"]
    past = time.time() - 1
    calls = [Call.build(app, job, (i,), {}, {}) for i in range(3000)]
    items = [(body, p, int(past * 1000), tid, n) for body, p, _, tid, n in (c.item for c in calls)]
    app.broker.enqueue("default", items)
    seen = 0
    while True:
        claim = app.broker.claim("default", "c1", 500)
        if not claim.tasks:
            break
        seen += len(claim.tasks)
        r.delete(app.keys.queue("default").proc("c1"))
    assert seen == 3000


def test_requeue_hands_back_in_order_and_counts(app: OmniTask, r: redis.Redis) -> None:
    ids = [send(app, i) for i in range(3)]
    send(app, 99, priority=9)
    app.broker.claim("default", "c1", 4)
    assert app.broker.requeue("default", "c1", count_delivery=True) == 4
    qk = app.keys.queue("default")
    assert r.llen(qk.proc("c1")) == 0 and r.zscore(qk.consumers, "c1") is None
    claim = app.broker.claim("default", "c2", 4)
    assert [int(decode_envelope(t.body).payload[2]) for t in claim.tasks] == [99, 0, 1, 2]
    assert [t.deliveries for t in claim.tasks] == [1, 1, 1, 1]
    assert r.hget(qk.deliveries, ids[0]) == b"1"


def test_graceful_hand_back_does_not_count(app: OmniTask) -> None:
    send(app, 1)
    app.broker.claim("default", "c1")
    app.broker.requeue("default", "c1", count_delivery=False)
    assert app.broker.claim("default", "c2").tasks[0].deliveries == 0


def test_expired_lease_is_reclaimed_only_when_expired(app: OmniTask, r: redis.Redis) -> None:
    send(app, 1)
    app.broker.claim("default", "c1")
    assert app.broker.renew("default", ["c2"]) == []
    assert app.broker.requeue("default", "c1", count_delivery=True, only_if_expired=True) == -1
    time.sleep(1.1)
    assert app.broker.renew("default", ["c2"]) == ["c1"]
    assert app.broker.requeue("default", "c1", count_delivery=True, only_if_expired=True) == 1
    assert claim_args(app.broker, "c2") == [1]


def test_renewal_keeps_a_lease_alive(app: OmniTask) -> None:
    send(app, 1)
    app.broker.claim("default", "c1")
    for _ in range(4):
        time.sleep(0.4)
        assert app.broker.renew("default", ["c1"]) == []
    assert app.broker.requeue("default", "c1", count_delivery=True, only_if_expired=True) == -1


def test_garbage_in_delayed_and_ready_is_delivered_not_dropped(
    app: OmniTask, r: redis.Redis
) -> None:
    qk = app.keys.queue("default")
    r.zadd(qk.delayed, {b"\xff\x00garbage": 0})
    r.rpush(qk.ready[3], b"more garbage")
    bodies = [t.body for t in app.broker.claim("default", "c1", 5).tasks]
    assert sorted(bodies) == sorted([b"\xff\x00garbage", b"more garbage"])


def test_scripts_reload_after_script_flush(app: OmniTask, r: redis.Redis) -> None:
    send(app, 1)
    r.script_flush()
    assert claim_args(app.broker, "c1") == [1]


def test_enqueue_wakes_a_waiter(app: OmniTask) -> None:
    assert app.broker.wait_wake(["default"], 0.05) is False
    send(app, 1)
    assert app.broker.wait_wake(["default"], 0.05) is True


def test_separate_result_backend(redis_server: object, redis_url: str, r: redis.Redis) -> None:
    results_url = redis_url.rsplit("/", 1)[0] + "/3"
    app = OmniTask("split", broker=redis_url, result_backend=results_url)
    app.task(name="t")(lambda: None)
    call = Call.build(app, "t", (), {}, {})
    app.broker.enqueue(call.queue, [call.item])
    claimed = app.broker.claim("default", "c1").tasks[0]
    app.broker.ack("default", "c1", claimed.body, call.task_id, (b"rec", 10_000), None, 1)
    with redis.Redis.from_url(results_url) as results:
        assert results.lrange(app.keys.queue("default").result(call.task_id), 0, -1) == [b"rec"]
    assert not r.exists(app.keys.queue("default").result(call.task_id))
    app.close()


def test_lost_claim_reply_returns_the_orphan(app: OmniTask, r: redis.Redis) -> None:
    send(app, 1)
    send(app, 2)
    app.broker.claim("default", "c1")  # suppose this reply never arrived
    assert claim_args(app.broker, "c1") == [1]  # the same task again, not a second one
    assert r.llen(app.keys.queue("default").proc("c1")) == 1


def test_retry_only_while_held(app: OmniTask, r: redis.Redis) -> None:
    task_id = send(app, 1)
    body = app.broker.claim("default", "c1").tasks[0].body
    state = (b"retry-record", 10_000)
    assert app.broker.retry("default", "c1", body, b"new", 5, None, task_id, state, ["i", task_id])
    qk = app.keys.queue("default")
    assert r.lrange(qk.ready[5], 0, -1) == [b"new"] and r.llen(qk.proc("c1")) == 0
    assert r.get(app.keys.queue("default").state(task_id)) == b"retry-record"
    # Run again (a lost reply) or after the lease expired: no second copy.
    assert not app.broker.retry("default", "c1", body, b"new", 5, None, task_id, state, [])
    assert r.llen(qk.ready[5]) == 1


def test_bury_only_while_held(app: OmniTask, r: redis.Redis) -> None:
    send(app, 1)
    body = app.broker.claim("default", "c1").tasks[0].body
    app.broker.requeue("default", "c1", count_delivery=False)  # lease lost meanwhile
    assert not app.broker.bury("default", "c1", body, ["reason", "x"], None, None, [])
    assert r.xlen(app.keys.queue("default").dead) == 0


def test_errors_abort_before_anything_moves(app: OmniTask, r: redis.Redis) -> None:
    qk = app.keys.queue("default")
    send(app, 1)
    r.delete(app.keys.queue("default").events)
    r.set(app.keys.queue("default").events, "not a stream")  # e.g. another tool sharing the prefix
    with pytest.raises(redis.ResponseError):
        app.broker.claim("default", "c1")
    assert r.llen(qk.ready[5]) == 1 and r.llen(qk.proc("c1")) == 0
    r.delete(app.keys.queue("default").events)
    body = app.broker.claim("default", "c1").tasks[0].body
    r.set(qk.dead, "not a stream")
    with pytest.raises(redis.ResponseError):
        app.broker.bury("default", "c1", body, ["reason", "x"], None, None, [])
    assert r.lrange(qk.proc("c1"), 0, -1) == [body]  # still held, not dropped
    r.set(qk.deliveries, "not a hash")
    with pytest.raises(redis.ResponseError):
        app.broker.requeue("default", "c1", count_delivery=True)
    assert r.lrange(qk.proc("c1"), 0, -1) == [body]


def test_dead_letters_are_bounded_by_age(app: OmniTask, r: redis.Redis) -> None:
    qk = app.keys.queue("default")
    r.xadd(qk.dead, {"msg": b"ancient"}, id="1000-0")  # written in 1970
    send(app, 1)
    body = app.broker.claim("default", "c1").tasks[0].body
    assert app.broker.bury("default", "c1", body, ["reason", "x"], None, None, [])
    assert [f[b"msg"] for _, f in r.xrange(qk.dead)] == [body]


def test_lapsed_revocation_no_longer_applies(app: OmniTask) -> None:
    app.configure(revoke_ttl_s=0.05)
    task_id = send(app, 1, countdown=0.2)
    assert app.broker.revoke(
        task_id, "default", terminate=False, record=b"r", result_ttl_ms=1000, event_fields=[]
    )
    app.broker.forget(task_id, "default")
    time.sleep(0.3)  # due now, and the revocation has lapsed
    claim = app.broker.claim("default", "c1")
    assert len(claim.tasks) == 1 and claim.tasks[0].revoked is False


def test_outside_outcome_only_for_the_stopped_run(app: OmniTask, r: redis.Redis) -> None:
    from omnitask.errors import TimeLimitExceeded
    from omnitask.worker.execute import Executor

    stopped, nxt = send(app, 1), send(app, 2)
    bodies = [t.body for t in app.broker.claim("default", "c1", 2).tasks]
    executor = Executor(app, "c1")
    exc = TimeLimitExceeded("killed")
    assert not executor.finish_outside("default", bodies[1], exc, revoked=True, task_id=stopped)
    assert executor.finish_outside("default", bodies[0], exc, revoked=True, task_id=stopped)
    assert app.AsyncResult(stopped).state == "REVOKED"
    assert app.AsyncResult(nxt).state == "PENDING"
    assert r.lrange(app.keys.queue("default").proc("c1"), 0, -1) == [bodies[1]]


def test_revoke_on_a_separate_result_backend(redis_url: str, r: redis.Redis) -> None:
    results_url = redis_url.rsplit("/", 1)[0] + "/4"
    app = OmniTask("split2", broker=redis_url, result_backend=results_url)
    app.task(name="t")(lambda: None)
    done, pending = Call.build(app, "t", (), {}, {}), Call.build(app, "t", (), {}, {})
    app.broker.enqueue("default", [done.item, pending.item])
    body = app.broker.claim("default", "c1").tasks[0].body
    app.broker.ack("default", "c1", body, done.task_id, (b"success", 60_000), None)
    assert app.broker.revoke(
        done.task_id, "default", terminate=False, record=b"revoked", result_ttl_ms=60_000,
        event_fields=[],
    ) is False  # fmt: skip
    assert app.broker.revoke(
        pending.task_id, "default", terminate=False, record=b"revoked", result_ttl_ms=60_000,
        event_fields=[],
    ) is True  # fmt: skip
    with redis.Redis.from_url(results_url) as results:
        assert results.lrange(app.keys.queue("default").result(done.task_id), 0, -1) == [b"success"]
        assert results.lrange(app.keys.queue("default").result(pending.task_id), 0, -1) == [
            b"revoked"
        ]
    app.close()


def test_wait_and_claim_claims_as_the_wake_token_lands(app: OmniTask, r: redis.Redis) -> None:
    import threading

    sender = threading.Timer(0.2, send, (app, 7))
    sender.start()
    started = time.monotonic()
    claim = app.broker.wait_and_claim("default", "c1", timeout_s=5.0)
    sender.join()
    assert 0.15 < time.monotonic() - started < 2.0
    assert [int(decode_envelope(t.body).payload[2]) for t in claim.tasks] == [7]
    assert r.llen(default_keys(app).proc("c1")) == 1


def test_wait_and_claim_on_timeout_is_a_plain_claim(app: OmniTask, r: redis.Redis) -> None:
    later = send(app, 1, countdown=30)
    r.delete(default_keys(app).wake)  # its wake token: no task is ready
    r.script_flush()  # as after a restart: the pipelined claim loads the script again
    started = time.monotonic()
    claim = app.broker.wait_and_claim("default", "c1", timeout_s=0.1)
    assert 0.09 < time.monotonic() - started < 1.0
    assert claim.tasks == [] and claim.next_due_ms is not None
    assert 29_000 < claim.next_due_ms - claim.now_ms <= 30_000
    assert r.zscore(default_keys(app).consumers, "c1") is not None  # the lease was refreshed
    assert later  # still delayed, not claimed


def test_wait_and_claim_keeps_a_claim_made_after_a_refused_wait(
    app: OmniTask, r: redis.Redis
) -> None:
    qk = default_keys(app)
    r.set(qk.wake, "not a list")  # the BLPOP fails at once; the claim behind it runs anyway
    r.script_flush()  # and the claim script may have to be loaded first: the same holds
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        app.broker.wait_and_claim("default", "c1", timeout_s=0.1)  # nothing claimed: raised
    send(app, 3)
    claim = app.broker.wait_and_claim("default", "c1", timeout_s=0.1)
    assert [int(decode_envelope(t.body).payload[2]) for t in claim.tasks] == [3]
    assert r.llen(qk.proc("c1")) == 1


def test_every_event_of_a_shared_entry_is_a_position_to_resume_after(app: OmniTask) -> None:
    job = app.tasks["job"]
    ids = [r.id for r in job.delay_many([(i,) for i in range(45)])]  # entries of 20, 20, 5
    events = app.events.replay()
    assert [e.task_id for e in events] == ids
    assert len({e.stream_id for e in events}) == 45  # "entry#k", the last one the entry's id
    for at in (0, 4, 19, 20, 39, 44):
        resumed = app.events.follow(after=events[at].stream_id, timeout_s=0.2)
        assert [e.task_id for e in resumed] == ids[at + 1 :], at
