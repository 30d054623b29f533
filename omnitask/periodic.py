"""The periodic schedules stored in Redis: add, change, remove and list them at run time.

Every beat reads its schedules from ``keys.beat_schedules`` (one entry per name, encoded by
``omnitask/schedules.py``), so a change made here, from any process, reaches the leading
beat at its next wake-up (at most a third of ``beat_lease_s`` later) without a restart. The
``omnitask beat list|add|remove`` commands call this module (``beat_cli.py``).

Schedules declared in code (``app.add_periodic``, ``@app.periodic``) are written by each
beat when it starts (:meth:`Schedules.sync`). For the names it declares, the code wins: a
runtime change to one of them lasts until the next beat start. A schedule written by an
earlier start and no longer declared is removed. Schedules added at run time under other
names are left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec

from omnitask.messages import now_ms
from omnitask.schedules import (
    Periodic,
    ScheduleLike,
    decode_periodic,
    encode_periodic,
)

if TYPE_CHECKING:
    from omnitask.app import OmniTask
    from omnitask.broker.client import Broker
    from omnitask.broker.commands import Command
    from omnitask.task import Task

__all__ = ("ScheduleState", "Schedules", "Stored", "SyncReport")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScheduleState:
    """A stored schedule and where it stands.

    Attributes:
        entry: The schedule.
        last_ms: The latest slot sent or skipped (unix ms), or None if none was yet.
        next_ms: Its next slot after now (unix ms), or None if it has none.
    """

    entry: Periodic
    last_ms: int | None
    next_ms: int | None


class Stored(NamedTuple):
    """A schedule as read from Redis: its bytes (which ``lua/fire.lua`` compares) and entry."""

    data: bytes
    entry: Periodic


@dataclass(frozen=True)
class SyncReport:
    """What :meth:`Schedules.sync` changed: names written anew, and names removed."""

    written: tuple[str, ...]
    removed: tuple[str, ...]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Schedules:
    """The app's periodic schedules in Redis (``app.schedules``).

    Args:
        app: The app.
        broker: The connection to use; default the app's (a beat passes its own).
    """

    def __init__(self, app: OmniTask, broker: Broker | None = None) -> None:
        """Work on ``app``'s schedules."""
        self._app = app
        self._given_broker = broker

    @property
    def _broker(self) -> Broker:
        return self._given_broker or self._app.broker

    def add(
        self,
        name: str,
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
        """Add a schedule, or replace the one of that name; running beats pick it up.

        The arguments are those of :meth:`OmniTask.add_periodic`. A slot due before now is
        never sent for the new definition.

        Raises:
            ConfigurationError: A value is not valid.
        """
        entry = Periodic.build(
            self._app,
            name,
            task,
            schedule,
            args=args,
            kwargs=kwargs,
            queue=queue,
            priority=priority,
            expires=expires,
            missed=missed,
            tz=tz,
        )
        return self.put(entry)

    def put(self, entry: Periodic) -> Periodic:
        """Store ``entry`` (built with :meth:`Periodic.build`) and return it as stored.

        When the stored entry of that name defines the same runs, it is kept as it is.
        """
        current = self.get(entry.name)
        if current is not None and current.same_definition(entry):
            return current
        stored = msgspec.structs.replace(entry, since_ms=now_ms())
        self._broker.run(
            [("HSET", self._app.keys.beat_schedules, entry.name, encode_periodic(stored))]
        )
        return stored

    def remove(self, name: str) -> bool:
        """Remove the schedule ``name``; return whether there was one."""
        keys = self._app.keys
        replies = self._broker.run(
            [("HDEL", keys.beat_schedules, name), ("HDEL", keys.beat_fired, name)]
        )
        return bool(replies[0])

    def get(self, name: str) -> Periodic | None:
        """The schedule ``name``, or None."""
        raw: Any = self._broker.redis.hget(self._app.keys.beat_schedules, name)
        return None if raw is None else _decode(name, raw)

    def list(self) -> list[ScheduleState]:
        """Every schedule, by name, with its last and next slots."""
        stored, last = self.snapshot()
        now = now_ms()
        return [
            ScheduleState(s.entry, last.get(name), s.entry.schedule.after(now))
            for name, s in sorted(stored.items())
        ]

    def snapshot(self) -> tuple[dict[str, Stored], dict[str, int]]:
        """Every readable schedule by name, and the latest slot handled of each, read at once.

        An entry that cannot be read (written by a newer omnitask, or not by omnitask) is
        logged and left out.
        """
        keys = self._app.keys
        raw, fired = self._broker.run(
            [("HGETALL", keys.beat_schedules), ("HGETALL", keys.beat_fired)]
        )
        stored = {}
        for key, data in _pairs(raw):
            name = _text(key)
            entry = _decode(name, data)
            if entry is not None:
                stored[name] = Stored(data, entry)
        return stored, {_text(k): int(v) for k, v in _pairs(fired)}

    def sync(self, declared: Mapping[str, Periodic]) -> SyncReport:
        """Write the schedules declared in code; remove code schedules no longer declared.

        Two beats starting at once may both write the same definitions, which is harmless:
        a running beat re-reads an entry whose bytes changed before it sends a run of it.
        """
        keys = self._app.keys
        stored = {
            _text(k): _decode(_text(k), v)
            for k, v in _pairs(self._broker.run([("HGETALL", keys.beat_schedules)])[0])
        }
        now = now_ms()
        commands: list[Command] = []
        written, removed = [], []
        for name, entry in declared.items():
            current = stored.get(name)
            wanted = msgspec.structs.replace(entry, origin="code", since_ms=now)
            if current is None or not current.same_definition(wanted):
                commands.append(("HSET", keys.beat_schedules, name, encode_periodic(wanted)))
                written.append(name)
        for name, old in stored.items():
            if old is not None and old.origin == "code" and name not in declared:
                commands += [("HDEL", keys.beat_schedules, name), ("HDEL", keys.beat_fired, name)]
                removed.append(name)
        if commands:
            self._broker.run(commands)
        return SyncReport(tuple(written), tuple(removed))


def _pairs(flat: Any) -> list[tuple[bytes, bytes]]:
    """A raw HGETALL reply (``[field, value, ...]``, or a dict) as pairs."""
    if isinstance(flat, dict):
        return list(flat.items())
    return list(zip(flat[::2], flat[1::2], strict=True))


def _decode(name: str, data: bytes) -> Periodic | None:
    try:
        return decode_periodic(data)
    except (msgspec.MsgspecError, ValueError) as exc:
        # Written by a newer omnitask, or not by omnitask: leave it, say so, go on.
        logger.warning("unreadable periodic schedule name=%s error=%s", name, exc)
        return None
