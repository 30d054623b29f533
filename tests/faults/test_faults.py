"""The fault suite: real workers, real Redis, real SIGKILLs; each test asserts its numbers.

The promise under test: a task that ``.delay()`` accepted runs to a recorded outcome (success,
failure, revoked/expired, or dead-lettered with a reason) whatever happens to workers, and is
never run twice while its worker lives. Each test prints a ``FAULT-FIGURES`` line (``-s``);
docs/reliability.md quotes them.
"""

from __future__ import annotations

import json
import random
import re
import signal
import threading
import time
from collections.abc import Iterator

import pytest
import redis

import omnitask
from omnitask.broker.keys import WAKE_TOKENS_MAX, QueueKeys
from omnitask.messages import (
    PROTOCOL_VERSION,
    Envelope,
    decode_envelope,
    encode_envelope,
    now_ms,
)
from omnitask.producer import Call
from omnitask.testing import RedisServer
from tests.conftest import WorkerFactory, WorkerProcess, wait_for
from tests.faults import apps
from tests.faults.helpers import (
    APP,
    kill_pid,
    lost,
    outcomes,
    report,
    runs,
    started,
    starts,
)

pytestmark = [pytest.mark.process]


@pytest.fixture(autouse=True)
def _app(redis_url: str) -> Iterator[None]:
    apps.app.configure(broker_url=redis_url)
    yield
    apps.app.close()


def queue_keys() -> QueueKeys:
    return apps.app.keys.queue("default")


# -- 1. crash storm ---------------------------------------------------------------------------

STORM_TASKS = 2000
STORM_TASK_S = 0.015  # long enough that the storm lasts a few seconds, short enough to fit
STORM_ENV = {"OMNITASK_LEASE_S": "1.5"}
QUICK_DEATH_S = 1.2  # victims are older than the supervisor's QUICK_DEATH_S (1 s): see below


def test_crash_storm(start_worker: WorkerFactory, r: redis.Redis) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    workers = [start_worker(APP, concurrency=2, env=STORM_ENV) for _ in range(2)]
    began = time.monotonic()
    results = apps.slow.delay_many([(i, STORM_TASK_S) for i in range(STORM_TASKS)])
    first_seen: dict[int, float] = {}
    doomed: WorkerProcess | None = None
    child_kills = worker_kills = 0
    deadline = began + 60
    while len(runs(r)) < STORM_TASKS:  # until every task has started at least once
        assert time.monotonic() < deadline, f"storm did not drain (seed {seed})"
        time.sleep(0.5)
        live = [w for w in workers if w.proc.poll() is None]
        if not worker_kills and started(r) >= STORM_TASKS // 3:
            doomed = rng.choice(live)
            doomed.kill()  # supervisor and children at once
            worker_kills += 1
            workers.append(start_worker(APP, concurrency=2, env=STORM_ENV, ready=False))
            continue
        # Only children past their start-up: a child dying young makes its supervisor wait
        # before the next spawn, and that wait is covered by its own test below.
        now = time.monotonic()
        victims = [
            pid
            for worker in live
            for pid in worker.children()
            if now - first_seen.setdefault(pid, now) >= QUICK_DEATH_S
        ]
        if victims and kill_pid(rng.choice(victims)):
            child_kills += 1
    drained_s = time.monotonic() - began

    final = outcomes(r, [res.id for res in results], timeout_s=20)
    counts = runs(r)
    duplicated = sum(1 for n in counts.values() if n > 1)
    extra_runs = sum(n - 1 for n in counts.values())
    bound = child_kills + 2 * worker_kills  # one task per child; a worker: its concurrency
    report(
        "crash-storm",
        sent=STORM_TASKS,
        lost=lost(final),
        duplicated=duplicated,
        extra_runs=extra_runs,
        bound=bound,
        child_kills=child_kills,
        worker_kills=worker_kills,
        drain_s=drained_s,
        seed=seed,
    )
    assert lost(final) == 0
    assert [res.get(timeout=1) for res in results] == list(range(STORM_TASKS))
    assert sorted(map(int, counts)) == list(range(STORM_TASKS))
    assert child_kills >= 5, "the storm should have killed children while they drained"
    assert extra_runs <= bound
    qk = queue_keys()
    assert r.xlen(qk.dead) == 0
    wait_for(lambda: not r.exists(qk.deliveries), timeout_s=5, what="delivery counts to clear")
    assert not r.keys(qk.proc("*")), "nothing is left in flight"
    assert doomed is not None
    assert all(w.proc.poll() is None for w in workers if w is not doomed)


# -- 2. Redis restart with AOF -----------------------------------------------------------------

RESTART_TASKS = 1000


@pytest.mark.parametrize("how", ["restart", "sigkill"])
def test_redis_restart_with_aof(how: str, start_worker: WorkerFactory, redis_url: str) -> None:
    server = RedisServer(appendonly=True, extra_args=["--appendfsync", "always"]).start()
    client = redis.Redis.from_url(server.url)
    worker: WorkerProcess | None = None
    try:
        apps.app.configure(broker_url=server.url)
        worker = start_worker(APP, concurrency=2, url=server.url, env={"OMNITASK_LEASE_S": "2"})
        accepted = {}
        for i in range(RESTART_TASKS // 2):
            accepted[i] = apps.slow.delay(i, 0.004)
        wait_for(lambda: started(client) >= RESTART_TASKS // 4, what="a quarter to run")

        took: list[float] = []

        def bounce() -> None:
            began = time.monotonic()
            if how == "restart":
                server.restart()  # SIGTERM: Redis writes what it has, then starts from the AOF
            else:
                server.kill()  # a crash: only what was fsynced survives
                server.start()
            took.append(time.monotonic() - began)

        bouncer = threading.Thread(target=bounce)
        ran_before = started(client)
        bouncer.start()
        refused = ambiguous = 0
        i = RESTART_TASKS // 2
        while i < RESTART_TASKS:  # the producer carries on; a refused send is sent again
            try:
                accepted[i] = apps.slow.delay(i, 0.004)
            except omnitask.BrokerUnavailable as exc:
                refused += 1
                # The connection broke after the send: "may or may not be queued". Sent
                # again, this i may run twice (under two task ids).
                ambiguous += "may or may not" in str(exc)
                continue
            i += 1
        bouncer.join(20)
        assert not bouncer.is_alive() and took, "Redis did not come back"
        sent_at = time.monotonic()
        final = outcomes(client, [res.id for res in accepted.values()], timeout_s=30)
        counts = runs(client)
        duplicated = sum(1 for n in counts.values() if n > 1)
        report(
            f"redis-{how}",
            sent=RESTART_TASKS,
            refused=refused,
            ambiguous=ambiguous,
            lost=lost(final),
            duplicated=duplicated,
            ran_before_bounce=ran_before,
            bounce_s=took[0],
            drained_after_last_send_s=time.monotonic() - sent_at,
        )
        assert lost(final) == 0
        assert {i: res.get(timeout=1) for i, res in accepted.items()} == {
            i: i for i in range(RESTART_TASKS)
        }
        assert sorted(map(int, counts)) == list(range(RESTART_TASKS))  # at least once, each
        assert duplicated <= ambiguous  # only an ambiguous send can have been queued twice
        assert worker.proc.poll() is None, "the worker reconnected by itself"
    finally:
        client.close()
        apps.app.close()
        if worker is not None:
            worker.kill()
        server.cleanup()
        apps.app.configure(broker_url=redis_url)


# -- 3. long tasks under short leases ----------------------------------------------------------

LEASE_S = 0.6
LEASE_ENV = {"OMNITASK_LEASE_S": str(LEASE_S)}


def starts_of(r: redis.Redis, i: int) -> list[tuple[int, float, int, int]]:
    return [s for s in starts(r) if s[0] == i]


def test_long_task_runs_once_then_moves_when_its_worker_dies(
    start_worker: WorkerFactory, r: redis.Redis
) -> None:
    # Both start now: a supervisor reclaims expired leases only after it has itself been
    # connected for a whole lease, and the survivor must be past that when the other dies.
    pair = [start_worker(APP, env=LEASE_ENV), start_worker(APP, env=LEASE_ENV)]
    assert apps.slow.delay(1, 2.5).get(timeout=10) == 1  # more than four leases long
    time.sleep(2 * LEASE_S)  # a redelivery, had there been one, would have started by now
    assert runs(r) == {"1": 1}

    result = apps.slow.delay(2, 2.5)
    wait_for(lambda: starts_of(r, 2), what="task 2 to start")
    ((_, _, ppid, _),) = starts_of(r, 2)
    (doomed,) = [w for w in pair if w.proc.pid == ppid]
    (survivor,) = [w for w in pair if w is not doomed]
    killed_at = time.time()
    doomed.kill()  # the supervisor and its child, at once
    wait_for(lambda: len(starts_of(r, 2)) == 2, timeout_s=5, what="the redelivery")
    _, again_at, again_ppid, _ = starts_of(r, 2)[1]
    delay_s = again_at - killed_at
    assert result.get(timeout=5) == 2
    report("worker-sigkill", lease_s=LEASE_S, redelivery_s=delay_s, runs_of_live_task=1)
    assert again_ppid == survivor.proc.pid
    assert runs(r) == {"1": 1, "2": 2}
    # Not before the lease could have lapsed (renewed every lease/3), and within a lease plus
    # one renewal period plus scheduling slack.
    assert LEASE_S / 3 <= delay_s <= LEASE_S + LEASE_S / 3 + 0.5


def test_killed_child_task_is_handed_back_at_once(
    start_worker: WorkerFactory, r: redis.Redis
) -> None:
    worker = start_worker(APP, concurrency=2)  # the default 30 s lease: no lease wait here
    result = apps.slow.delay(3, 1.0)
    wait_for(lambda: starts_of(r, 3), what="task 3 to start")
    ((_, _, _, child),) = starts_of(r, 3)
    killed_at = time.time()
    assert kill_pid(child)
    wait_for(lambda: len(starts_of(r, 3)) == 2, timeout_s=5, what="the redelivery")
    delay_s = starts_of(r, 3)[1][1] - killed_at
    assert result.get(timeout=5) == 3
    report("child-sigkill", lease_s=30.0, redelivery_s=delay_s)
    assert delay_s < 1.0
    assert runs(r) == {"3": 2}
    assert worker.proc.poll() is None and "child died" in worker.output


def test_crash_looping_child_does_not_let_sibling_leases_lapse(
    start_worker: WorkerFactory, r: redis.Redis
) -> None:
    # One child runs a long task; its sibling takes a poison pill that kills it on every
    # delivery (max_deliveries=5 deaths in a row, each soon after the child started).
    victim = start_worker(APP, "-Q", "default,pills", concurrency=2, env=LEASE_ENV)
    long = apps.slow.delay(4, 3.0)
    wait_for(lambda: starts_of(r, 4), what="the long task to start")
    rescuer = start_worker(APP, env=LEASE_ENV)  # would take over an expired lease
    pill = apps.crash.delay(1)
    with pytest.raises(omnitask.WorkerLostError):
        pill.get(timeout=15)
    assert long.get(timeout=10) == 4
    counts = runs(r)
    report("crash-loop", pill_deaths=counts.get("crash-1"), long_task_runs=counts.get("4"))
    assert victim.proc.poll() is None and rescuer.proc.poll() is None
    assert counts["crash-1"] == 5
    assert counts["4"] == 1, "the long task ran twice while its worker lived"


# -- 4. garbage everywhere -------------------------------------------------------------------


def celery_message(tag: str) -> bytes:
    """A message as Celery (protocol 2, JSON) would put it in Redis."""
    return json.dumps(
        {
            "body": "W1syLCAyXSwge30sIHt9XQ==",
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"lang": "py", "task": "tasks.add", "id": f"celery-{tag}", "retries": 0},
            "properties": {"delivery_tag": tag, "priority": 0, "body_encoding": "base64"},
        }
    ).encode()


def envelope(task_id: str, task: str, payload: bytes, serializer: int = 0) -> bytes:
    return encode_envelope(
        Envelope(PROTOCOL_VERSION, 5, task_id, task, payload, serializer, now_ms())
    )


def decode_body(body: bytes) -> bytes:
    return decode_envelope(body).payload


def test_garbage_everywhere(start_worker: WorkerFactory, r: redis.Redis) -> None:
    worker = start_worker(APP)
    qk = queue_keys()
    valid_payload = decode_body(Call.build(apps.app, apps.count, (7,), {}, {}).item[0])
    truncated = Call.build(apps.app, apps.count, (8,), {}, {}).item[0]
    bad: list[bytes] = []
    for p in range(10):
        # Header intact but cut short; raw bytes; a foreign framework's message.
        for body in (truncated[:-4], b"\x00garbage\xff" + bytes([p]), celery_message(f"p{p}")):
            r.rpush(qk.ready[p], body)
            bad.append(body)
    big = b"\xff" * 300_000
    r.rpush(qk.ready[0], big)
    delayed = [b"\x93\x01\x05", truncated[:20], celery_message("delayed")]
    r.zadd(qk.delayed, dict.fromkeys(delayed, 0))
    undecodable = envelope("undecodable-1", apps.count.name, b"\xc1\xc1\xc1")
    unknown = envelope("unknown-1", "no.such.task", valid_payload)
    pickled = envelope("pickled-1", apps.count.name, valid_payload, serializer=1)
    r.rpush(qk.ready[5], undecodable, unknown, pickled)
    bad += [big, *delayed, undecodable, unknown, pickled]
    r.lpush(qk.wake, b"\x00not a token", celery_message("wake"), b"")  # wakes the worker too
    result = apps.count.delay(1)

    assert result.get(timeout=10) == 1
    wait_for(lambda: r.xlen(qk.dead) == len(bad), timeout_s=10, what="every dead letter")
    letters = [fields for _, fields in r.xrange(qk.dead)]
    assert sorted(f[b"msg"] for f in letters) == sorted(bad)
    reasons = [f[b"reason"].decode() for f in letters]
    assert all(f[b"detail"] for f in letters)
    assert sorted(reasons) == sorted(
        ["malformed"] * (len(bad) - 3) + ["undecodable", "unknown-task", "serializer-refused"]
    )
    with pytest.raises(omnitask.SerializationError):
        apps.app.AsyncResult("undecodable-1").get(timeout=1)
    with pytest.raises(omnitask.TaskNotRegisteredError):
        apps.app.AsyncResult("unknown-1").get(timeout=1)
    with pytest.raises(omnitask.SerializationError):
        apps.app.AsyncResult("pickled-1").get(timeout=1)
    rejected = [e for e in apps.app.events.replay() if e.kind == "task-rejected"]
    report("garbage", bad_messages=len(bad), dead_letters=len(letters), rejected=len(rejected))
    assert len(rejected) == len(bad)
    assert runs(r) == {"1": 1}
    assert apps.app.broker.ready_count("default") == 0 and not r.exists(qk.delayed)
    assert r.llen(qk.wake) <= WAKE_TOKENS_MAX
    assert apps.count.delay(2).get(timeout=5) == 2
    assert worker.proc.poll() is None


@pytest.mark.parametrize("which", ["events", "deliveries"])
def test_wrong_type_key_never_drops_a_task(
    which: str, start_worker: WorkerFactory, r: redis.Redis
) -> None:
    worker = start_worker(APP)
    qk = queue_keys()
    key = qk.events if which == "events" else qk.deliveries
    r.delete(key)
    r.set(key, f"a string where a {which} key belongs")
    result = apps.count.delay(5)  # the enqueue itself applies (its event is not essential)
    stalled_since = time.monotonic()
    while time.monotonic() - stalled_since < 1.5:
        pipe = r.pipeline(transaction=True)  # one snapshot: ready, in flight, ran
        for ready in qk.ready:
            pipe.llen(ready)
        pipe.keys(qk.proc("*")).hlen(apps.RUNS)
        *ready_lengths, in_flight, ran = pipe.execute()
        held = sum(ready_lengths) + len(in_flight)  # one child: at most one task in flight
        assert held == 1 or ran == 1, "the task left Redis without running"
        time.sleep(0.1)
    served = runs(r) == {"5": 1}
    errors_logged = worker.output.count("WRONGTYPE")
    assert worker.proc.poll() is None
    r.delete(key)  # repaired: whatever waited now runs
    assert result.get(timeout=5) == 5
    report(
        f"wrong-type-{which}",
        served_while_wrong=served,
        errors_logged_in_1_5_s=errors_logged,
        ran_after_repair=runs(r)["5"],
    )
    assert runs(r) == {"5": 1}
    assert apps.count.delay(6).get(timeout=5) == 6


# -- 5. ten thousand tasks due in the same second ----------------------------------------------

ETA_TASKS = 10_000
ETA_EXPIRING = 500


def test_ten_thousand_due_in_the_same_second(start_worker: WorkerFactory, r: redis.Redis) -> None:
    for _ in range(2):
        start_worker(APP, concurrency=2)
    due = time.time() + 2.0
    on_time = [Call.build(apps.app, apps.count, (i,), {}, {"eta": due}) for i in range(ETA_TASKS)]
    # Due with the others, but expired a second before: they must be revoked, never run.
    expiring = [
        Call.build(apps.app, apps.count, (ETA_TASKS + j,), {}, {"eta": due, "expires": 1.0})
        for j in range(ETA_EXPIRING)
    ]
    apps.app.broker.enqueue("default", [c.item for c in on_time + expiring])
    qk = queue_keys()
    assert r.zcard(qk.delayed) == ETA_TASKS + ETA_EXPIRING and time.time() < due
    time.sleep(max(0.0, due - time.time()))
    final = outcomes(r, [c.task_id for c in on_time + expiring], timeout_s=40)
    states = [getattr(final[c.task_id], "state", None) for c in on_time]
    revoked = [final[c.task_id] for c in expiring]
    done_ms = [rec.date_ms for rec in final.values() if rec is not None]
    counts = runs(r)
    report(
        "eta-burst",
        sent=ETA_TASKS + ETA_EXPIRING,
        lost=lost({c.task_id: final[c.task_id] for c in on_time}),
        ran=len(counts),
        duplicated=sum(1 for n in counts.values() if n > 1),
        revoked=sum(1 for rec in revoked if rec is not None and rec.state == "REVOKED"),
        drained_after_due_s=(max(done_ms) - int(due * 1000)) / 1000,
    )
    assert states == ["SUCCESS"] * ETA_TASKS
    assert counts == {str(i): 1 for i in range(ETA_TASKS)}  # exactly once; no expired one ran
    assert all(rec is not None and rec.state == "REVOKED" for rec in revoked)
    assert min(done_ms) >= int(due * 1000), "nothing ran before it was due"
    with pytest.raises(omnitask.TaskRevokedError, match="expired"):
        apps.app.AsyncResult(expiring[0].task_id).get(timeout=1)
    assert not r.exists(qk.delayed) and apps.app.broker.ready_count("default") == 0


# -- 6. bounded keys and memory ----------------------------------------------------------------

BOUNDED_TASKS = 20_000
BOUNDED_RATE = 2_000  # tasks sent per second, in batches: a steady stream for ten seconds
WARM_UP_TASKS = 3_000  # enough events to fill the capped stream before the memory baseline
RESULT_TTL_S = 2.0
EXPIRY_LAG_S = 1.5  # Redis reclaims expired keys in a sampling background cycle, not at once
STALE_SHARE = 0.1  # ... which leaves up to about 10 % of them expired but not yet reclaimed
KEY_SLACK = 20  # app keys, a ready list, in-flight lists and tasks in flight


def scan_keys(r: redis.Redis) -> list[str]:
    return [k.decode() for k in r.scan_iter(count=1000)]


def settled_memory(r: redis.Redis) -> int:
    """used_memory without our own counting hash (it grows with every task, by design)."""
    own = r.memory_usage(apps.RUNS, samples=0) or 0
    return int(r.info("memory")["used_memory"]) - int(own)


def test_keys_and_memory_stay_bounded(start_worker: WorkerFactory, r: redis.Redis) -> None:
    env = {"OMNITASK_RESULT_TTL_S": str(RESULT_TTL_S)}
    for _ in range(2):
        start_worker(APP, concurrency=2, env=env)
    keys, qk = apps.app.keys, queue_keys()
    fixed = {keys.events, qk.events, keys.queues, keys.workers, qk.consumers, qk.wake, apps.RUNS}
    fixed |= {keys.worker_status(w.decode()) for w in r.zrange(keys.workers, 0, -1)}  # 1 each
    result_key = re.compile(re.escape(qk.result("")) + "[A-Za-z0-9_-]{22}$")

    def settle() -> int:
        wait_for(lambda: r.dbsize() <= len(fixed), RESULT_TTL_S + 5, "the results to expire")
        assert set(scan_keys(r)) <= fixed
        return settled_memory(r)

    apps.count.delay_many([(-1 - i,) for i in range(WARM_UP_TASKS)])
    wait_for(lambda: started(r) >= WARM_UP_TASKS, 20, "the warm-up")
    baseline = settle()

    samples: list[tuple[float, int, int]] = []  # (time, DBSIZE, task bodies started)
    peak_memory = sent = 0
    total = WARM_UP_TASKS + BOUNDED_TASKS
    batch = BOUNDED_RATE // 10
    next_batch = time.monotonic()
    deadline = next_batch + 60
    while True:
        if sent < BOUNDED_TASKS and time.monotonic() >= next_batch:
            apps.count.delay_many([(i,) for i in range(sent, sent + batch)])
            sent += batch
            next_batch += 0.1
        pipe = r.pipeline(transaction=True)
        pipe.dbsize().hlen(apps.RUNS).info("memory")
        size, done, memory = pipe.execute()
        samples.append((time.monotonic(), size, done))
        peak_memory = max(peak_memory, int(memory["used_memory"]))
        if done >= total:
            break
        assert time.monotonic() < deadline, "the stream did not drain"
        time.sleep(0.05)
    wait_for(lambda: not r.keys(qk.proc("*")), 5, "the last tasks to finish")
    # Just drained: every key is a result of the last few seconds or one of a fixed few.
    found = scan_keys(r)
    assert {k for k in found if not result_key.match(k)} <= fixed
    ttls = [r.pttl(k) for k in found[:500] if result_key.match(k)]
    # Each has its TTL (-1 would be none; -2 is a key that expired meanwhile).
    assert all(t == -2 or 0 <= t <= RESULT_TTL_S * 1000 for t in ttls)
    settled = settle()
    events = r.xlen(qk.events)

    # At every instant, the keys were the results stored within about one TTL, plus a few.
    worst = 0
    for at, size, done in samples:
        older = [d for t, _, d in samples if t <= at - RESULT_TTL_S - EXPIRY_LAG_S]
        recent = done - (older[-1] if older else WARM_UP_TASKS)
        worst = max(worst, size - int(recent * (1 + STALE_SHARE)) - KEY_SLACK)
    peak = max(size for _, size, _ in samples)
    report(
        "bounded-keys",
        tasks=BOUNDED_TASKS,
        rate_per_s=BOUNDED_RATE,
        peak_dbsize=peak,
        settled_dbsize=r.dbsize(),
        events_len=events,
        baseline_kb=baseline // 1024,
        peak_kb=peak_memory // 1024,
        settled_kb=settled // 1024,
    )
    assert worst <= 0, f"DBSIZE exceeded the results of one TTL by {worst}"
    assert peak < BOUNDED_TASKS / 2, "keys piled up instead of expiring"
    assert events <= apps.app.conf.events_maxlen + 100  # trimmed a whole node at a time
    # Twenty thousand more tasks, the same memory: a leak of 25 bytes a task would show.
    assert abs(settled - baseline) < 512 * 1024


# -- 7. SIGTERM with tasks running and queued --------------------------------------------------


def test_sigterm_with_running_and_queued(start_worker: WorkerFactory, r: redis.Redis) -> None:
    worker = start_worker(APP, concurrency=2)
    running = [apps.slow.delay(i, 1.5) for i in (0, 1)]
    wait_for(lambda: len(starts(r)) == 2, what="both children to be busy")
    queued = apps.count.delay_many([(i,) for i in range(100, 120)])
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0  # warm: the running finish, the queued stay
    assert [res.get(timeout=1) for res in running] == [0, 1]
    assert apps.app.broker.ready_count("default") == 20
    assert runs(r) == {"0": 1, "1": 1}
    qk = queue_keys()
    assert not r.keys(qk.proc("*")) and not r.exists(qk.deliveries)

    # Two long tasks ahead of the twenty; a second signal hands the running ones back.
    interrupted = [apps.slow.apply_async((i, 2.0), priority=9) for i in (2, 3)]
    worker = start_worker(APP, concurrency=2)
    wait_for(lambda: len(starts(r)) == 4, what="the long tasks to start")
    worker.signal(signal.SIGTERM)
    time.sleep(0.3)
    signalled_at = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    cold_s = time.monotonic() - signalled_at
    assert apps.app.broker.ready_count("default") == 22  # handed back, none lost
    assert all(res.state == "PENDING" for res in interrupted)
    assert not r.keys(qk.proc("*")) and not r.exists(qk.deliveries)  # not counted as crashes

    start_worker(APP, concurrency=2)
    assert [res.get(timeout=10) for res in interrupted] == [2, 3]
    assert [res.get(timeout=10) for res in queued] == list(range(100, 120))
    counts = runs(r)
    report("sigterm", running=2, queued=20, lost=0, cold_shutdown_s=cold_s, reruns_after_cold=2)
    assert counts == {"0": 1, "1": 1, "2": 2, "3": 2, **{str(i): 1 for i in range(100, 120)}}
