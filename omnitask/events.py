"""Lifecycle events: what they say, and reading them from the app's capped Redis stream.

Every state change publishes its event in the same atomic step as the change itself, so the
stream and the state never disagree. The stream keeps about ``events_maxlen`` entries; an
event's time is its stream entry id (milliseconds), so it costs no field of its own.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from omnitask.messages import ms_to_datetime

if TYPE_CHECKING:
    from omnitask.app import OmniTask

__all__ = ("Event", "EventKind", "EventStream")


class EventKind(str, enum.Enum):
    """The kinds of lifecycle events."""

    TASK_SENT = "task-sent"
    TASK_RECEIVED = "task-received"
    TASK_STARTED = "task-started"
    TASK_SUCCEEDED = "task-succeeded"
    TASK_FAILED = "task-failed"
    TASK_RETRIED = "task-retried"
    TASK_PROGRESS = "task-progress"
    TASK_REVOKED = "task-revoked"
    TASK_REJECTED = "task-rejected"
    WORKER_ONLINE = "worker-online"
    WORKER_HEARTBEAT = "worker-heartbeat"
    WORKER_OFFLINE = "worker-offline"

    def __str__(self) -> str:
        return self.value


# Short field names keep each stream entry small; Event spells them out.
_SHORT = {"i": "task_id", "n": "name", "q": "queue", "w": "worker", "rt": "runtime_s"}


@dataclass(frozen=True)
class Event:
    """One lifecycle event.

    Attributes:
        kind: What happened (an :class:`EventKind` value).
        time: When (timezone-aware, UTC; millisecond precision).
        stream_id: The entry's id in the Redis stream (resume reading after it).
        task_id: The task, for task events.
        name: The task name, for task events.
        queue: The queue involved.
        worker: The worker or worker child involved.
        runtime_s: Seconds the task ran (task-succeeded, task-failed).
        fields: Every other field (``exception``, ``reason``, ``eta``, ``concurrency`` ...).
    """

    kind: str
    time: datetime
    stream_id: str
    task_id: str | None = None
    name: str | None = None
    queue: str | None = None
    worker: str | None = None
    runtime_s: float | None = None
    fields: dict[str, str] | None = None

    @classmethod
    def from_entry(cls, entry_id: bytes, raw: dict[bytes, bytes]) -> Event:
        """Build an event from a stream entry as redis-py returns it."""
        stream_id = entry_id.decode()
        known: dict[str, Any] = {}
        extra: dict[str, str] = {}
        kind = ""
        for key, value in raw.items():
            k, v = key.decode(), value.decode(errors="replace")
            if k == "e":
                kind = v
            elif k == "rt":
                known["runtime_s"] = float(v)
            elif k in _SHORT:
                known[_SHORT[k]] = v or None
            else:
                extra[k] = v
        ms = int(stream_id.partition("-")[0])
        time = ms_to_datetime(ms)
        return cls(kind, time, stream_id, fields=extra or None, **known)

    def as_dict(self) -> dict[str, Any]:
        """The event as a JSON-ready dict (time as ISO 8601)."""
        out: dict[str, Any] = {"kind": self.kind, "time": self.time.isoformat()}
        for key in ("task_id", "name", "queue", "worker", "runtime_s"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.fields:
            out.update(self.fields)
        return out


class EventStream:
    """Reads an app's lifecycle events (``app.events``)."""

    def __init__(self, app: OmniTask) -> None:
        """Read the events of ``app``."""
        self._app = app

    def replay(self, count: int | None = None) -> list[Event]:
        """The events still kept in the stream, oldest first (the last ``count`` if given)."""
        redis = self._app.broker.redis
        key = self._app.keys.events
        entries: list[tuple[bytes, dict[bytes, bytes]]]
        if count is None:
            entries = redis.xrange(key)  # type: ignore[assignment]
        else:
            entries = list(reversed(redis.xrevrange(key, count=count)))  # type: ignore[arg-type]
        return [Event.from_entry(eid, fields) for eid, fields in entries]

    def follow(
        self, *, replay: bool = False, timeout_s: float | None = None, after: str | None = None
    ) -> Iterator[Event]:
        """Yield events as they are published, blocking in Redis between them.

        "From now" means from this call, not from the first ``next()``: events published
        between the two are not missed.

        Args:
            replay: Start with the events still kept in the stream instead of from now.
            timeout_s: Stop after this many seconds without a new event (None: never stop).
            after: Resume after this stream id (an :attr:`Event.stream_id`).
        """
        if after is None:
            after = "0-0" if replay else self._last_id()
        block_ms = 0 if timeout_s is None else max(1, int(timeout_s * 1000))
        return self._follow(after, block_ms)

    def _last_id(self) -> str:
        newest: Any = self._app.broker.redis.xrevrange(self._app.keys.events, count=1)
        return newest[0][0].decode() if newest else "0-0"

    def _follow(self, last: str, block_ms: int) -> Iterator[Event]:
        redis = self._app.broker.redis
        key = self._app.keys.events
        while True:
            reply: Any = redis.xread({key: last}, count=500, block=block_ms)
            if not reply:
                return
            for entry_id, fields in reply[0][1]:
                last = entry_id.decode()
                yield Event.from_entry(entry_id, fields)
