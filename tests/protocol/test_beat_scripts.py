"""The beat's scripts on the real Redis: the leader lease, fire's dedup and fencing, the store."""

from __future__ import annotations

import time
from collections.abc import Iterator

import msgspec
import pytest
import redis

from omnitask import OmniTask
from omnitask.beat import Beat
from omnitask.messages import decode_envelope, now_ms
from omnitask.periodic import Schedules
from omnitask.schedules import Every, Periodic, Run, run_id


@pytest.fixture
def app(redis_url: str) -> Iterator[OmniTask]:
    app = OmniTask("pbeat", broker=redis_url, beat_lease_s=3.0)

    @app.task(name="job", queue="jobs", priority=7)
    def job(i: int) -> int:
        return i

    yield app
    app.close()


def sent(app: OmniTask, r: redis.Redis, queue: str = "jobs", priority: int = 7) -> list[str]:
    bodies = r.lrange(app.keys.queue(queue).ready[priority], 0, -1)
    return [decode_envelope(body).id for body in bodies]


def stored(app: OmniTask, name: str) -> tuple[bytes, Periodic]:
    found, _ = Schedules(app).snapshot()
    return found[name].data, found[name].entry


def test_one_beat_holds_the_lease_at_a_time(app: OmniTask, r: redis.Redis) -> None:
    a, b = Beat(app, name="a"), Beat(app, name="b")
    a._lead()
    b._lead()
    assert a.leading and not b.leading
    assert r.get(app.keys.beat_leader) == b"a"
    assert 2900 < r.pttl(app.keys.beat_leader) <= 3000
    # The standby checks again when the lease would expire, or at its next renewal period.
    assert b._next_lead - time.monotonic() <= b.renew_s
    a._resign()
    assert r.get(app.keys.beat_leader) is None
    b._lead()
    assert b.leading and r.get(app.keys.beat_leader) == b"b"
    a._lead()
    assert not a.leading
    a._resign()  # not the holder: leaves the lease alone
    assert r.get(app.keys.beat_leader) == b"b"


def test_fire_sends_each_slot_once(app: OmniTask, r: redis.Redis) -> None:
    app.schedules.add("s", "job", 60, args=(5,))
    data, entry = stored(app, "s")
    beat = Beat(app, name="a")
    beat._lead()
    slot = entry.schedule.at_or_before(now_ms())
    assert beat._fire(entry, data, Run(slot, send=True, late=False)) == 1
    assert beat._fire(entry, data, Run(slot, send=True, late=False)) == 0
    assert beat._fire(entry, data, Run(slot - 60_000, send=True, late=False)) == 0
    assert sent(app, r) == [run_id("s", slot)]
    assert r.hget(app.keys.beat_fired, "s") == str(slot).encode()
    assert r.sismember(app.keys.queues, "jobs")
    assert r.llen(app.keys.queue("jobs").wake) == 1
    events = r.xrange(app.keys.queue("jobs").events)
    assert [e[1][b"e"] for e in events] == [b"task-sent"]
    assert events[0][1][b"i"] == run_id("s", slot).encode() and events[0][1][b"n"] == b"job"
    envelope = decode_envelope(r.lindex(app.keys.queue("jobs").ready[7], 0))
    assert (envelope.task, envelope.priority, envelope.eta_ms) == ("job", 7, None)


def test_a_skipped_slot_is_recorded_not_sent(app: OmniTask, r: redis.Redis) -> None:
    app.schedules.add("s", "job", 60, missed="skip")
    data, entry = stored(app, "s")
    beat = Beat(app, name="a")
    beat._lead()
    slot = entry.schedule.at_or_before(now_ms())
    assert beat._fire(entry, data, Run(slot, send=False, late=True)) == 2
    assert sent(app, r) == [] and r.hget(app.keys.beat_fired, "s") == str(slot).encode()
    assert beat._fire(entry, data, Run(slot, send=True, late=False)) == 0


def test_only_the_lease_holder_fires(app: OmniTask, r: redis.Redis) -> None:
    """Two beats that both believe they lead (a lease that expired during a pause)."""
    app.schedules.add("s", "job", 60)
    data, entry = stored(app, "s")
    a, b = Beat(app, name="a"), Beat(app, name="b")
    a._lead()
    r.delete(app.keys.beat_leader)  # a's lease lapses while a still believes it leads
    b._lead()
    assert a.leading and b.leading
    slot = entry.schedule.at_or_before(now_ms())
    assert a._fire(entry, data, Run(slot, send=True, late=False)) == -1
    assert b._fire(entry, data, Run(slot, send=True, late=False)) == 1
    assert sent(app, r) == [run_id("s", slot)]


def test_a_changed_or_removed_entry_is_not_fired_from_a_stale_copy(
    app: OmniTask, r: redis.Redis
) -> None:
    app.schedules.add("s", "job", 60)
    data, entry = stored(app, "s")
    beat = Beat(app, name="a")
    beat._lead()
    slot = entry.schedule.at_or_before(now_ms())
    app.schedules.add("s", "job", 60, args=(2,))
    assert beat._fire(entry, data, Run(slot, send=True, late=False)) == -2
    assert app.schedules.remove("s") and not app.schedules.remove("s")
    assert beat._fire(entry, data, Run(slot, send=True, late=False)) == -2
    assert sent(app, r) == [] and r.hget(app.keys.beat_fired, "s") is None


def test_fire_due_sends_what_is_due_and_says_when_the_next_is(
    app: OmniTask, r: redis.Redis
) -> None:
    app.schedules.add("fast", "job", 1, args=(1,))
    # Defined 5 s ago: the latest slot is due, the four before it are never made up.
    raw = r.hget(app.keys.beat_schedules, "fast")
    old = msgspec.structs.replace(
        msgspec.msgpack.decode(raw, type=Periodic), since_ms=now_ms() - 5000
    )
    r.hset(app.keys.beat_schedules, "fast", msgspec.msgpack.encode(old))
    beat = Beat(app, name="a")
    beat._lead()
    wait_s = beat._fire_due()
    assert 0 < wait_s <= 1.0
    assert len(sent(app, r)) == 1
    assert beat._fire_due() > 0 and len(sent(app, r)) == 1


def test_store_add_list_remove(app: OmniTask) -> None:
    first = app.schedules.add("a", "job", 10)
    again = app.schedules.add("a", "job", 10)
    assert again.since_ms == first.since_ms  # the same definition is kept as it was
    app.schedules.add("b", "other.task", "0 9 * * *", tz="Europe/Paris", queue="q")
    states = app.schedules.list()
    assert [s.entry.name for s in states] == ["a", "b"]
    assert states[0].entry.schedule == Every(10_000) and states[0].last_ms is None
    assert states[0].next_ms is not None and states[0].next_ms > now_ms()
    assert app.schedules.get("b") is not None and app.schedules.get("zz") is None
    assert app.schedules.remove("a")
    assert [s.entry.name for s in app.schedules.list()] == ["b"]


def test_sync_code_wins_for_its_names_and_drops_what_code_no_longer_declares(
    app: OmniTask, r: redis.Redis
) -> None:
    app.add_periodic("code-a", "job", 10)
    app.add_periodic("code-b", "job", 20)
    app.schedules.add("runtime", "job", 30)
    app.schedules.add("code-a", "job", 99)  # a runtime change of a code schedule
    report = Schedules(app).sync(app.beat_schedule)
    assert report.written == ("code-a", "code-b") and report.removed == ()
    assert app.schedules.get("code-a").schedule == Every(10_000)  # type: ignore[union-attr]
    since = app.schedules.get("code-b").since_ms  # type: ignore[union-attr]
    assert Schedules(app).sync(app.beat_schedule).written == ()  # unchanged: kept as is
    assert app.schedules.get("code-b").since_ms == since  # type: ignore[union-attr]
    r.hset(app.keys.beat_fired, "code-b", 1)
    del app.beat_schedule["code-b"]
    report = Schedules(app).sync(app.beat_schedule)
    assert report.written == () and report.removed == ("code-b",)
    assert sorted(s.entry.name for s in app.schedules.list()) == ["code-a", "runtime"]
    assert r.hget(app.keys.beat_fired, "code-b") is None


def test_an_unreadable_entry_is_left_out(app: OmniTask, r: redis.Redis) -> None:
    app.schedules.add("good", "job", 10)
    r.hset(app.keys.beat_schedules, "bad", b"\x00not msgpack")
    assert [s.entry.name for s in app.schedules.list()] == ["good"]
