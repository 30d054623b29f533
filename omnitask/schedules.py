"""When periodic tasks run: cron expressions in a time zone, fixed intervals, missed runs.

Pure: no I/O. A schedule names *slots*, the unix times (ms) at which a run is due; a slot is
the identity of one run, which is how the beat enqueues each run exactly once however many
beats run (``omnitask/beat.py``, ``lua/fire.lua``).

- :class:`Crontab`: a cron expression (five fields, or six with seconds first) read in a time
  zone by `cronsim <https://github.com/cuu508/cronsim>`_. Daylight saving time follows
  Debian's cron, as cronsim documents: a job at a fixed local time that falls in the hour
  skipped in spring runs at the first minute after the gap (``30 2 * * *`` runs at 03:00 that
  day), and one that falls in the hour repeated in autumn runs once, at its first occurrence.
  An expression with ``*`` in the minute or hour field runs on real time instead, so
  ``*/15 * * * *`` also runs four times in a repeated hour.
- :class:`Every`: a fixed interval. Slots are aligned on the unix epoch, so every beat agrees
  on them: ``every=timedelta(hours=1)`` runs on the hour (UTC), ``every=60`` on each minute.

A run is *missed* when no beat was leading at its time (see :func:`due_run`). The policy,
``once`` (the default) or ``skip``, says whether the latest missed run is made up when a beat
takes over. Earlier missed runs are never made up: there is never a burst.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Coroutine, Mapping
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, NamedTuple, ParamSpec, Protocol, TypeVar, overload
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from cronsim import CronSim, CronSimError

from omnitask.config import MISSED_POLICIES
from omnitask.errors import ConfigurationError
from omnitask.producer import check_priority, seconds

if TYPE_CHECKING:
    from omnitask.app import OmniTask
    from omnitask.task import AsyncTask, Task

__all__ = (
    "Crontab",
    "Every",
    "Periodic",
    "PeriodicDecorator",
    "Run",
    "Schedule",
    "ScheduleLike",
    "crontab",
    "decode_periodic",
    "due_run",
    "encode_periodic",
    "from_celery",
    "next_slot",
    "run_id",
    "to_schedule",
)

NAME_MAX = 150
"""Longest schedule name: it becomes a field in Redis and part of log lines."""

P = ParamSpec("P")
R = TypeVar("R")

CELERY_KEYS = ("task", "schedule", "args", "kwargs", "options", "missed")
"""Keys of one entry of a Celery-style ``beat_schedule`` (``missed`` is omnitask's own)."""

CELERY_OPTIONS = ("queue", "priority", "expires")
"""Keys of an entry's ``options`` that a periodic run takes."""


class Crontab(msgspec.Struct, frozen=True, tag="cron"):
    """A cron expression read in a time zone: ``Crontab("0 9 * * mon-fri", tz="Europe/Paris")``.

    Attributes:
        expr: Five fields (minute hour day-of-month month day-of-week), or six with seconds
            first; names (``MON``, ``JAN``), ranges, steps and lists as in Debian's cron.
        tz: An IANA time zone name, e.g. ``Europe/Paris``; default UTC.

    Raises:
        ConfigurationError: The expression or the time zone is not valid.
    """

    expr: str
    tz: str = "UTC"

    def __post_init__(self) -> None:
        """Check the expression and the zone now, not at the first run."""
        try:
            zone = ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigurationError(f"unknown time zone {self.tz!r}") from exc
        try:
            CronSim(self.expr, datetime(2000, 1, 1, tzinfo=zone))
        except CronSimError as exc:
            raise ConfigurationError(f"bad cron expression {self.expr!r}: {exc}") from exc

    def _local(self, ms: int) -> datetime:
        # cronsim skips its DST handling for timezone.utc only, not for ZoneInfo("UTC").
        zone = timezone.utc if self.tz == "UTC" else ZoneInfo(self.tz)
        return datetime.fromtimestamp(ms // 1000, tz=zone)

    def after(self, ms: int) -> int | None:
        """The first slot strictly after unix time ``ms``, or None if there is none."""
        try:
            return _ms(next(CronSim(self.expr, self._local(ms))))
        except StopIteration:  # no match in the next 50 years (cronsim's bound)
            return None

    def at_or_before(self, ms: int) -> int | None:
        """The latest slot at or before unix time ``ms``, or None if there is none."""
        # cronsim's reverse iteration starts one second before its start: start one after.
        # Added before converting: local time + timedelta would drop the fold of a time in
        # a repeated hour, and land an hour off.
        try:
            return _ms(next(CronSim(self.expr, self._local(ms + 1000), reverse=True)))
        except StopIteration:
            return None

    def describe(self) -> str:
        """``cron '<expr>' <tz>``, for listings and logs."""
        return f"cron '{self.expr}' {self.tz}"


class Every(msgspec.Struct, frozen=True, tag="every"):
    """A fixed interval of ``ms`` milliseconds; slots are its multiples since the unix epoch."""

    ms: int

    def __post_init__(self) -> None:
        """Refuse an interval shorter than a millisecond."""
        if self.ms < 1:
            raise ConfigurationError(f"an interval must be at least 1 ms, got {self.ms} ms")

    def after(self, ms: int) -> int:
        """The first slot strictly after unix time ``ms``."""
        return (ms // self.ms + 1) * self.ms

    def at_or_before(self, ms: int) -> int:
        """The latest slot at or before unix time ``ms``."""
        return ms // self.ms * self.ms

    def describe(self) -> str:
        """``every <seconds>s``, for listings and logs."""
        return f"every {self.ms / 1000:g}s"


Schedule = Crontab | Every
"""A schedule: a :class:`Crontab` or an :class:`Every`."""

ScheduleLike = Crontab | Every | timedelta | float | str
"""What a schedule may be given as: a schedule, an interval (timedelta or seconds), or a cron
expression string (read in UTC)."""


def _ms(dt: datetime) -> int:
    return int(dt.timestamp()) * 1000


def crontab(
    minute: str | int = "*",
    hour: str | int = "*",
    day_of_week: str | int = "*",
    day_of_month: str | int = "*",
    month_of_year: str | int = "*",
    *,
    tz: str = "UTC",
) -> Crontab:
    """A cron schedule from fields, in the order and with the names of Celery's ``crontab``.

    ``crontab(minute=0, hour=9, day_of_week="mon-fri", tz="Europe/Paris")`` is
    ``Crontab("0 9 * * mon-fri", tz="Europe/Paris")``.

    Raises:
        ConfigurationError: A field or the time zone is not valid.
    """
    return Crontab(f"{minute} {hour} {day_of_month} {month_of_year} {day_of_week}", tz=tz)


def to_schedule(value: object, tz: str | None = None) -> Schedule:
    """Read a schedule given as a schedule, a timedelta, seconds or a cron string.

    ``tz`` applies to a cron string only.

    Raises:
        ConfigurationError: ``value`` is none of these, or is not valid.
    """
    if isinstance(value, (Crontab, Every)):
        if tz is not None:
            raise ConfigurationError("tz= goes with a cron string; give Crontab(expr, tz=) here")
        return value
    if isinstance(value, str):
        return Crontab(value, tz=tz or "UTC")
    if tz is not None:
        raise ConfigurationError("tz= applies to cron schedules only, not to intervals")
    if isinstance(value, timedelta) or (
        isinstance(value, (int, float)) and not isinstance(value, bool)
    ):
        return Every(round(seconds("schedule", value) * 1000))
    raise ConfigurationError(
        f"a schedule is a crontab, a cron string, a timedelta or seconds, got {value!r}"
    )


class Periodic(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One periodic task: what to send, when, and with which options.

    Stored in Redis, encoded with :func:`encode_periodic`, under its name.

    Attributes:
        name: The schedule's name, unique in the app.
        task: The name of the task to send.
        schedule: When.
        args: Positional arguments of each run.
        kwargs: Keyword arguments of each run.
        queue: The queue of each run (None: the task's).
        priority: The priority of each run (None: the task's).
        expires_s: A run not started this many seconds after it was sent is revoked.
        missed: ``once`` or ``skip`` (see :func:`due_run`); None: the app's ``beat_missed``.
        origin: ``code`` (declared in the app, written by a starting beat) or ``runtime``.
        since_ms: When this definition was written (unix ms); earlier slots never run.
    """

    name: str
    task: str
    schedule: Schedule
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}
    queue: str | None = None
    priority: int | None = None
    expires_s: float | None = None
    missed: str | None = None
    origin: str = "runtime"
    since_ms: int = 0

    @classmethod
    def build(
        cls,
        app: OmniTask,
        name: str | None,
        task: Task[Any, Any] | str,
        schedule: ScheduleLike,
        *,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        queue: str | None = None,
        priority: int | None = None,
        expires: float | timedelta | None = None,
        missed: str | None = None,
        tz: str | None = None,
    ) -> Periodic:
        """Check a declaration and build the entry (``name`` None: the task's name).

        Raises:
            ConfigurationError: A value is not valid, or the arguments cannot be stored.
        """
        task_name = task if isinstance(task, str) else task.name
        name = task_name if name is None else name
        if not isinstance(name, str) or not name or len(name) > NAME_MAX:
            raise ConfigurationError(f"a schedule name is a str of 1 to {NAME_MAX} characters")
        if queue is not None:
            app.keys.queue(queue)  # checks the name
        if missed is not None and missed not in MISSED_POLICIES:
            raise ConfigurationError(f"missed must be one of {', '.join(MISSED_POLICIES)}")
        entry = cls(
            name=name,
            task=task_name,
            schedule=to_schedule(schedule, tz),
            args=tuple(args),
            kwargs=dict(kwargs or {}),
            queue=queue,
            priority=None if priority is None else check_priority(priority),
            expires_s=None if expires is None else seconds("expires", expires),
            missed=missed,
        )
        try:
            decode_periodic(encode_periodic(entry))
        except (TypeError, msgspec.MsgspecError) as exc:
            raise ConfigurationError(
                f"schedule {name!r}: its arguments must be msgpack values (str, numbers, "
                f"lists, dicts, bytes, datetimes): {exc}"
            ) from exc
        return entry

    def same_definition(self, other: Periodic) -> bool:
        """Whether ``other`` defines the same runs (``since_ms`` aside)."""
        return msgspec.structs.replace(other, since_ms=self.since_ms) == self


def from_celery(app: OmniTask, name: str, item: Mapping[str, Any]) -> Periodic:
    """The entry for one item of a Celery-style ``beat_schedule``.

    ``item`` has ``task`` (a name or a Task) and ``schedule``, and may have ``args``,
    ``kwargs``, ``options`` (``queue``, ``priority``, ``expires``) and ``missed``.

    Raises:
        ConfigurationError: A key is unknown or missing, or a value is not valid.
    """
    unknown = sorted(set(item) - set(CELERY_KEYS))
    options = item.get("options") or {}
    unknown += sorted(f"options.{k}" for k in set(options) - set(CELERY_OPTIONS))
    if unknown or "task" not in item or "schedule" not in item:
        raise ConfigurationError(
            f"beat_schedule entry {name!r}: needs 'task' and 'schedule'; may have "
            f"{', '.join(CELERY_KEYS[2:])} and options {', '.join(CELERY_OPTIONS)}"
            + (f"; unknown: {', '.join(unknown)}" if unknown else "")
        )
    return Periodic.build(
        app,
        name,
        item["task"],
        item["schedule"],
        args=item.get("args") or (),
        kwargs=item.get("kwargs"),
        queue=options.get("queue"),
        priority=options.get("priority"),
        expires=options.get("expires"),
        missed=item.get("missed"),
    )


class PeriodicDecorator(Protocol):
    """What ``@app.periodic(...)`` returns: registers a function as a task and schedules it.

    Given a Task (``@app.periodic`` above ``@app.task(...)``), it schedules that task.
    """

    @overload
    def __call__(self, fn: AsyncTask[P, R], /) -> AsyncTask[P, R]: ...

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> AsyncTask[P, R]: ...

    @overload
    def __call__(self, fn: Task[P, R], /) -> Task[P, R]: ...

    @overload
    def __call__(self, fn: Callable[P, R], /) -> Task[P, R]: ...


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Periodic)


def encode_periodic(entry: Periodic) -> bytes:
    """The bytes stored in Redis for ``entry``."""
    return _encoder.encode(entry)


def decode_periodic(data: bytes) -> Periodic:
    """The entry stored as ``data``.

    Raises:
        msgspec.ValidationError: The bytes are not an entry (a ValueError); also raised for
            an invalid cron expression or time zone written by another program.
        msgspec.DecodeError: The bytes are not msgpack.
    """
    return _decoder.decode(data)


def run_id(name: str, slot_ms: int) -> str:
    """The task id of the run of schedule ``name`` at ``slot_ms``: the same from every beat.

    A run enqueued twice (it cannot be: see ``lua/fire.lua``) would still have one result.
    """
    digest = hashlib.sha1(name.encode(), usedforsecurity=False).hexdigest()[:16]
    return f"beat-{digest}-{slot_ms}"


class Run(NamedTuple):
    """A slot that is due: send it (``send``), or record it as skipped; ``late``: missed."""

    slot_ms: int
    send: bool
    late: bool


def due_run(
    entry: Periodic,
    now_ms: int,
    last_ms: int | None,
    on_time_from_ms: int,
    default_missed: str,
) -> Run | None:
    """The run of ``entry`` that is due at ``now_ms``, if one is.

    Only the latest slot at or before ``now_ms`` is ever considered, so runs missed while no
    beat was leading are made up at most once (policy ``once``) or not at all (``skip``).

    Args:
        entry: The schedule.
        now_ms: The current unix time.
        last_ms: The latest slot already handled (sent or skipped), or None.
        on_time_from_ms: Slots from this time on are on time: when the deciding beat became
            leader, less the time a standby beat takes to notice a clean hand-over. An
            earlier slot was due while no beat was leading: it was missed.
        default_missed: The policy of entries that set none.
    """
    slot = entry.schedule.at_or_before(now_ms)
    if slot is None:
        return None
    floor = entry.since_ms - 1 if last_ms is None else max(last_ms, entry.since_ms - 1)
    if slot <= floor:
        return None
    if slot >= on_time_from_ms:
        return Run(slot, send=True, late=False)
    return Run(slot, send=(entry.missed or default_missed) == "once", late=True)


def next_slot(entries: Mapping[str, Periodic], now_ms: int) -> float:
    """The earliest slot of ``entries`` strictly after ``now_ms`` (``inf`` when none)."""
    slots = (entry.schedule.after(now_ms) for entry in entries.values())
    return min((s for s in slots if s is not None), default=math.inf)
