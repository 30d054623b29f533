"""Schedules without Redis: slots, time zones, DST, the missed-run policy, declarations."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest

from omnitask import ConfigurationError, OmniTask
from omnitask.app import Settings
from omnitask.cli import _parser
from omnitask.config import Config, load_config
from omnitask.schedules import (
    Crontab,
    Every,
    Periodic,
    Run,
    crontab,
    decode_periodic,
    due_run,
    encode_periodic,
    from_celery,
    next_slot,
    run_id,
    to_schedule,
)

UTC = timezone.utc
PARIS = ZoneInfo("Europe/Paris")


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def utc(ms_: int) -> datetime:
    return datetime.fromtimestamp(ms_ / 1000, tz=UTC)


def make_app() -> OmniTask:
    return OmniTask("tsched", broker="redis://127.0.0.1:1/0")


def entry(schedule: Any, *, since: datetime | None = None, missed: str | None = None) -> Periodic:
    built = Periodic.build(make_app(), "s", "t", schedule, missed=missed)
    return msgspec.structs.replace(built, since_ms=ms(since) if since else 0)


def simulate(e: Periodic, start: datetime, end: datetime, step: timedelta) -> list[datetime]:
    """A beat waking every ``step`` from ``start`` to ``end``: the slots it sends."""
    e = msgspec.structs.replace(e, since_ms=ms(start))
    sent: list[datetime] = []
    last = None
    t = start
    while t <= end:
        run = due_run(e, ms(t), last, on_time_from_ms=0, default_missed="once")
        if run is not None:
            last = run.slot_ms
            if run.send:
                sent.append(utc(run.slot_ms))
        t += step
    return sent


# -- intervals ------------------------------------------------------------------------------------


def test_every_slots_are_aligned_on_the_epoch() -> None:
    every = Every(10_000)
    assert every.at_or_before(1_000_009_999) == 1_000_000_000
    assert every.at_or_before(1_000_000_000) == 1_000_000_000
    assert every.after(1_000_000_000) == 1_000_010_000
    assert every.describe() == "every 10s"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (timedelta(minutes=5), Every(300_000)),
        (1, Every(1000)),
        (0.25, Every(250)),
        ("*/5 * * * *", Crontab("*/5 * * * *")),
        (Crontab("0 9 * * *", tz="Europe/Paris"), Crontab("0 9 * * *", tz="Europe/Paris")),
    ],
)
def test_to_schedule(value: Any, expected: Any) -> None:
    assert to_schedule(value) == expected


@pytest.mark.parametrize(
    ("value", "tz", "match"),
    [
        (0, None, "at least 1 ms"),
        (-1, None, "schedule must be a finite number"),
        (True, None, "a schedule is"),
        (object(), None, "a schedule is"),
        (10, "Europe/Paris", "cron schedules only"),
        (Crontab("* * * * *"), "Europe/Paris", "tz= goes with a cron string"),
        ("61 * * * *", None, "bad cron expression"),
        ("* * * *", None, "bad cron expression"),
        ("* * * * *", "Mars/Olympus", "unknown time zone"),
    ],
)
def test_bad_schedules_are_refused(value: Any, tz: str | None, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        to_schedule(value, tz)


# -- cron, time zones and DST -------------------------------------------------------------------


def test_crontab_takes_celery_fields() -> None:
    cron = crontab(minute=0, hour=9, day_of_week="mon-fri", tz="Europe/Paris")
    assert cron == Crontab("0 9 * * mon-fri", tz="Europe/Paris")
    assert crontab() == Crontab("* * * * *")
    assert cron.describe() == "cron '0 9 * * mon-fri' Europe/Paris"


def test_cron_runs_in_its_time_zone() -> None:
    nine = Crontab("0 9 * * *", tz="America/New_York")
    # 09:00 in New York is 14:00 UTC in winter (EST) and 13:00 UTC in summer (EDT).
    assert utc(nine.after(ms(datetime(2025, 1, 15, tzinfo=UTC)))) == datetime(
        2025, 1, 15, 14, tzinfo=UTC
    )
    assert utc(nine.after(ms(datetime(2025, 7, 15, tzinfo=UTC)))) == datetime(
        2025, 7, 15, 13, tzinfo=UTC
    )
    at = ms(datetime(2025, 7, 15, 13, 0, 30, tzinfo=UTC))
    assert utc(nine.at_or_before(at)) == datetime(2025, 7, 15, 13, tzinfo=UTC)
    assert nine.at_or_before(ms(datetime(2025, 7, 15, 13, tzinfo=UTC))) == ms(
        datetime(2025, 7, 15, 13, tzinfo=UTC)
    )


def test_cron_with_seconds() -> None:
    every_ten = Crontab("*/10 * * * * *")
    assert every_ten.after(ms(datetime(2025, 1, 1, 0, 0, 5, tzinfo=UTC))) == ms(
        datetime(2025, 1, 1, 0, 0, 10, tzinfo=UTC)
    )


def test_spring_forward_gap_moves_a_fixed_time_run_after_the_gap() -> None:
    # Paris, 2025-03-30: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that night.
    half_past_two = Crontab("30 2 * * *", tz="Europe/Paris")
    sent = simulate(
        entry(half_past_two),
        datetime(2025, 3, 29, 22, tzinfo=UTC),
        datetime(2025, 3, 31, 4, tzinfo=UTC),
        timedelta(minutes=1),
    )
    assert [s.astimezone(PARIS).isoformat() for s in sent] == [
        "2025-03-30T03:00:00+02:00",  # moved to the first minute after the gap (Debian cron)
        "2025-03-31T02:30:00+02:00",
    ]


def test_fall_back_repeated_hour_runs_a_fixed_time_run_once() -> None:
    # Paris, 2025-10-26: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
    half_past_two = Crontab("30 2 * * *", tz="Europe/Paris")
    sent = simulate(
        entry(half_past_two),
        datetime(2025, 10, 25, 22, tzinfo=UTC),
        datetime(2025, 10, 27, 4, tzinfo=UTC),
        timedelta(minutes=1),
    )
    assert [s.astimezone(PARIS).isoformat() for s in sent] == [
        "2025-10-26T02:30:00+02:00",  # the first 02:30 only
        "2025-10-27T02:30:00+01:00",
    ]


def test_fall_back_wildcard_runs_on_real_time() -> None:
    # "*/30 * * * *" is an interval job: it keeps running every 30 real minutes through the
    # repeated hour (02:00 to 03:00 local happens twice: four runs), never twice at one instant.
    sent = simulate(
        entry(Crontab("*/30 * * * *", tz="Europe/Paris")),
        datetime(2025, 10, 25, 23, 45, tzinfo=UTC),
        datetime(2025, 10, 26, 2, 10, tzinfo=UTC),
        timedelta(minutes=1),
    )
    assert [s.strftime("%H:%M") for s in sent] == ["00:00", "00:30", "01:00", "01:30", "02:00"]
    assert [s.astimezone(PARIS).strftime("%H:%M%z") for s in sent] == [
        "02:00+0200",
        "02:30+0200",
        "02:00+0100",
        "02:30+0100",
        "03:00+0100",
    ]


def test_a_cron_that_never_matches_has_no_slots() -> None:
    # 30 February: cronsim refuses it at once when day-of-month and month must both match.
    with pytest.raises(ConfigurationError):
        Crontab("0 0 30 2 *")
    never = Crontab("0 0 31 2 mon")  # day 31 OR a Monday in February: does match
    assert never.after(0) is not None


# -- the missed-run policy ------------------------------------------------------------------------


def test_on_time_slot_is_sent_once() -> None:
    e = entry(Every(1000))
    now = 10_500
    assert due_run(e, now, None, on_time_from_ms=0, default_missed="once") == Run(
        10_000, True, False
    )
    assert due_run(e, now, 10_000, on_time_from_ms=0, default_missed="once") is None
    assert due_run(e, 11_000, 10_000, on_time_from_ms=0, default_missed="once") == Run(
        11_000, True, False
    )


def test_slots_before_the_definition_never_run() -> None:
    e = entry(Every(1000), since=utc(10_500))
    assert due_run(e, 10_900, None, on_time_from_ms=0, default_missed="once") is None
    assert due_run(e, 11_000, None, on_time_from_ms=0, default_missed="once") == Run(
        11_000, True, False
    )


def test_missed_runs_are_made_up_once_never_in_a_burst() -> None:
    e = entry(Every(1000))
    # Last sent at 10 s; the beat that takes over leads from 20 s: 11..20 s were missed.
    run = due_run(e, 20_300, 10_000, on_time_from_ms=20_100, default_missed="once")
    assert run == Run(20_000, send=True, late=True)  # the latest missed slot only
    assert due_run(e, 20_400, 20_000, on_time_from_ms=20_100, default_missed="once") is None


def test_missed_runs_are_skipped_under_skip() -> None:
    e = entry(Every(1000), missed="skip")
    run = due_run(e, 20_300, 10_000, on_time_from_ms=20_100, default_missed="once")
    assert run == Run(20_000, send=False, late=True)  # recorded, not sent
    # An entry without its own policy follows the app's.
    plain = entry(Every(1000))
    assert due_run(plain, 20_300, 10_000, 20_100, "skip") == Run(20_000, send=False, late=True)


def test_next_slot() -> None:
    entries = {"a": entry(Every(3000)), "b": entry(Every(2000))}
    assert next_slot(entries, 4500) == 6000
    assert next_slot({}, 4500) == float("inf")


def test_run_id_is_deterministic_per_schedule_and_slot() -> None:
    assert run_id("report", 1000) == run_id("report", 1000)
    assert run_id("report", 1000) != run_id("report", 2000)
    assert run_id("report", 1000) != run_id("other", 1000)
    assert run_id("report", 1000).endswith("-1000") and len(run_id("x" * 150, 10**13)) < 200


# -- declarations ---------------------------------------------------------------------------------


def test_periodic_entries_round_trip() -> None:
    app = make_app()
    e = Periodic.build(
        app,
        "nightly",
        "reports.build",
        crontab(minute=0, hour=3, tz="Europe/Paris"),
        args=[1, "x"],
        kwargs={"full": True},
        queue="reports",
        priority=7,
        expires=timedelta(hours=1),
        missed="skip",
    )
    back = decode_periodic(encode_periodic(e))
    assert back == e and back.args == (1, "x") and back.expires_s == 3600
    assert e.same_definition(msgspec.structs.replace(e, since_ms=123))
    assert not e.same_definition(msgspec.structs.replace(e, args=(2,)))
    assert not e.same_definition(msgspec.structs.replace(e, origin="code"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": ""}, "schedule name"),
        ({"name": "x" * 151}, "schedule name"),
        ({"queue": "bad queue"}, "queue name"),
        ({"priority": 10}, "priority"),
        ({"missed": "burst"}, "missed must be one of once, skip"),
        ({"args": (object(),)}, "msgpack values"),
        ({"expires": -1}, "expires"),
    ],
)
def test_bad_declarations_are_refused(kwargs: dict[str, Any], match: str) -> None:
    options: dict[str, Any] = {"name": "n", **kwargs}
    name = options.pop("name")
    with pytest.raises(ConfigurationError, match=match):
        Periodic.build(make_app(), name, "t", 10, **options)


def test_periodic_decorator_registers_and_schedules() -> None:
    app = make_app()

    @app.periodic(cron="*/5 * * * *", tz="Europe/Paris")
    def report() -> int:
        return 1

    @app.periodic(every=timedelta(seconds=10), name="ten", args=(1, 2))
    @app.task(name="adder", retries=3)
    def add(x: int, y: int) -> int:
        return x + y

    @app.periodic(every=30)
    async def poll() -> None: ...

    assert report() == 1 and add(1, 2) == 3
    assert app.tasks["adder"].retries == 3
    assert set(app.beat_schedule) == {report.name, "ten", poll.name}
    assert app.beat_schedule[report.name].schedule == Crontab("*/5 * * * *", tz="Europe/Paris")
    assert app.beat_schedule["ten"].schedule == Every(10_000)
    assert app.beat_schedule["ten"].args == (1, 2) and app.beat_schedule["ten"].task == "adder"
    assert poll.is_async
    with pytest.raises(ConfigurationError, match="either cron= or every="):
        app.periodic(cron="* * * * *", every=1)
    with pytest.raises(ConfigurationError, match="either cron= or every="):
        app.periodic()


def test_add_periodic_and_celery_beat_schedule() -> None:
    app = make_app()
    app.add_periodic("every-minute", "tasks.ping", 60, queue="pings")
    app.add_beat_schedule(
        {
            "add every 30 seconds": {
                "task": "tasks.add",
                "schedule": timedelta(seconds=30),
                "args": (16, 16),
                "options": {"priority": 9, "expires": 20},
            },
            "morning": {"task": "tasks.report", "schedule": crontab(minute=0, hour=7)},
        }
    )
    assert set(app.beat_schedule) == {"every-minute", "add every 30 seconds", "morning"}
    added = app.beat_schedule["add every 30 seconds"]
    assert (added.args, added.priority, added.expires_s) == ((16, 16), 9, 20.0)
    with pytest.raises(ConfigurationError, match=r"unknown: relative, options\.countdown"):
        from_celery(
            app, "x", {"task": "t", "schedule": 1, "relative": True, "options": {"countdown": 1}}
        )
    with pytest.raises(ConfigurationError, match="needs 'task' and 'schedule'"):
        from_celery(app, "x", {"task": "t"})


def test_beat_settings() -> None:
    assert {"beat_lease_s", "beat_missed"} <= set(Settings.__annotations__)
    conf = load_config({}, environ={"OMNITASK_BEAT_LEASE_S": "2.5", "OMNITASK_BEAT_MISSED": "skip"})
    assert (conf.beat_lease_s, conf.beat_missed) == (2.5, "skip")
    assert (Config().beat_lease_s, Config().beat_missed) == (10.0, "once")
    with pytest.raises(ConfigurationError, match="beat_missed must be one of once, skip"):
        load_config({"beat_missed": "all"}, environ={})
    with pytest.raises(ConfigurationError, match="beat_lease_s"):
        load_config({"beat_lease_s": 0}, environ={})


# -- the command line ------------------------------------------------------------------------------


def test_beat_command_line() -> None:
    parse = _parser().parse_args
    run = parse(["beat", "-A", "app", "--lease", "2"])
    assert (run.app, run.beat_command, run.lease, run.loglevel) == ("app", None, 2.0, "info")
    listing = parse(["beat", "list", "-A", "app", "--json"])
    assert (listing.app, listing.beat_command, listing.json) == ("app", "list", True)
    before = parse(["beat", "-A", "app", "remove", "nightly"])
    assert (before.app, before.beat_command, before.name) == ("app", "remove", "nightly")
    add = parse(["beat", "add", "-A", "a", "n", "t", "--cron", "0 * * * *", "--tz", "UTC"])
    assert (add.cron, add.every, add.tz, add.args, add.kwargs) == (
        "0 * * * *",
        None,
        "UTC",
        "[]",
        "{}",
    )
    assert parse(["worker", "-A", "app", "-B"]).beat is True
    with pytest.raises(SystemExit):
        parse(["beat", "add", "-A", "a", "n", "t"])  # --every or --cron is required
