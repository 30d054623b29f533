"""Lifecycle events: what they say, and reading them from the app's capped Redis streams.

Every state change publishes its event in the same atomic step as the change itself, so the
stream and the state never disagree. A task's events go to its queue's stream, the workers'
to the app's; readers merge them by entry id. Each stream keeps about ``events_maxlen``
entries; an event's time is its stream entry id (milliseconds), so it costs no field of its
own. A bulk send's task-sent events share entries of up to 20 tasks (:func:`events_of`
expands them), so the streams keep more events than entries.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from omnitask.messages import ms_to_datetime

if TYPE_CHECKING:
    from omnitask.app import OmniTask

__all__ = (
    "Event",
    "EventKind",
    "EventStream",
    "event_keys",
    "events_of",
    "read_after",
    "stream_order",
)


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
        stream_id: The entry's id in the Redis stream (resume reading after it); for an event
            of a shared task-sent entry but its last, the entry's id and ``#k`` (see
            :func:`events_of`), which only :meth:`EventStream.follow` understands.
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


def events_of(entry_id: bytes, raw: dict[bytes, bytes]) -> list[Event]:
    """The events one stream entry holds, as redis-py returns the entry.

    One, except for a bulk send's task-sent entry, which holds several tasks of one name,
    queue and eta: its field ``is`` is a JSON array of their ids, and each becomes an event of
    its own. Their ``stream_id`` is the entry's id with ``#k`` (k from 0) for every one but the
    last, which has the entry's id: so each is a position to resume after (``follow(after=)``).
    """
    ids = raw.get(b"is")
    try:
        task_ids = None if ids is None else json.loads(ids)
    except ValueError:
        task_ids = None  # not written by omnitask: kept as a field, as any unknown one
    if not isinstance(task_ids, list):
        return [Event.from_entry(entry_id, raw)]
    shared = Event.from_entry(entry_id, {k: v for k, v in raw.items() if k != b"is"})
    last = len(task_ids) - 1
    return [
        dataclasses.replace(
            shared,
            task_id=str(task_id),
            stream_id=shared.stream_id if k == last else f"{shared.stream_id}#{k}",
        )
        for k, task_id in enumerate(task_ids)
    ]


_WHOLE = 1 << 31
"""The place of an entry's own id among the ``#k`` positions of its events: after all of them."""


def stream_order(stream_id: str | bytes) -> tuple[int, int, int]:
    """A stream id (or an event's ``id#k``) as ``(ms, seq, k)``: the order of merged events.

    An entry's own id sorts after the ``#k`` positions of the events it holds, since resuming
    after it means after all of them.
    """
    text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    text, _, k = text.partition("#")
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0), int(k) if k else _WHOLE


def event_keys(app: OmniTask) -> list[str]:
    """The streams that hold the app's events: its own, then each known queue's, sorted.

    A task's events go to its queue's stream (each queue's keys share one hash slot); the
    app's stream has the workers' events. Readers merge them by entry id.
    """
    members: Any = app.broker.redis.smembers(app.keys.queues)
    names = sorted(m.decode() for m in members)
    return [app.keys.events, *(app.keys.queue(name).events for name in names)]


def read_after(
    redis: Any, last: dict[str, str], count: int
) -> list[tuple[str, bytes, dict[bytes, bytes]]]:
    """Up to ``count`` entries of each stream in ``last`` newer than its id there, merged.

    Returns ``(stream, entry id, fields)`` in id order, and moves each stream's id in
    ``last`` on. One XRANGE per stream, pipelined (a cluster refuses a read over several
    slots in one command).
    """
    keys = list(last)
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.xrange(key, min="(" + last[key], count=count)
    out: list[tuple[str, bytes, dict[bytes, bytes]]] = []
    for key, page in zip(keys, pipe.execute(), strict=True):
        if page:
            last[key] = page[-1][0].decode()
        out += ((key, entry_id, raw) for entry_id, raw in page)
    out.sort(key=lambda e: stream_order(e[1]))
    return out


class EventStream:
    """Reads an app's lifecycle events (``app.events``), merged from its streams."""

    def __init__(self, app: OmniTask) -> None:
        """Read the events of ``app``."""
        self._app = app

    def replay(self, count: int | None = None) -> list[Event]:
        """The events still kept in the streams, oldest first (the last ``count`` if given)."""
        redis = self._app.broker.redis
        pipe = redis.pipeline(transaction=False)
        for key in event_keys(self._app):
            if count is None:
                pipe.xrange(key)
            else:
                pipe.xrevrange(key, count=count)
        entries = [entry for page in pipe.execute() for entry in page]
        entries.sort(key=lambda e: stream_order(e[0]))
        if count is not None:
            entries = entries[-count:] if count else []
        events = [event for eid, fields in entries for event in events_of(eid, fields)]
        return events if count is None else events[len(events) - count :]

    def follow(
        self, *, replay: bool = False, timeout_s: float | None = None, after: str | None = None
    ) -> Iterator[Event]:
        """Yield events as they are published, waiting in Redis between them.

        "From now" means from this call, not from the first ``next()``: events published
        between the two are not missed. Queues first used meanwhile are followed too.

        Args:
            replay: Start with the events still kept in the streams instead of from now.
            timeout_s: Stop after this many seconds without a new event (None: never stop).
            after: Resume after this stream id (an :attr:`Event.stream_id`).
        """
        skip = None
        if after is None:
            last = dict.fromkeys(event_keys(self._app), "0-0") if replay else self._newest()
        elif "#" in after:
            # Within a shared entry: read that entry again and skip its events up to `after`.
            skip = stream_order(after)
            ms, seq, _ = skip
            before = f"{ms}-{seq - 1}" if seq else f"{ms - 1}-{(1 << 64) - 1}"
            last = dict.fromkeys(event_keys(self._app), before)
        else:
            last = dict.fromkeys(event_keys(self._app), after)
        return self._follow(last, timeout_s, skip)

    def _newest(self) -> dict[str, str]:
        keys = event_keys(self._app)
        pipe = self._app.broker.redis.pipeline(transaction=False)
        for key in keys:
            pipe.xrevrange(key, count=1)
        return {
            key: newest[0][0].decode() if newest else "0-0"
            for key, newest in zip(keys, pipe.execute(), strict=True)
        }

    def _follow(
        self, last: dict[str, str], timeout_s: float | None, skip: tuple[int, int, int] | None
    ) -> Iterator[Event]:
        quiet_since = time.monotonic()
        while True:
            left = None if timeout_s is None else timeout_s - (time.monotonic() - quiet_since)
            entries = self._read(last, left)
            for _, eid, raw in entries:
                for event in events_of(eid, raw):
                    if skip is not None and stream_order(event.stream_id) <= skip:
                        continue
                    yield event
            if entries:
                quiet_since = time.monotonic()
            elif timeout_s is not None and time.monotonic() - quiet_since >= timeout_s:
                return

    def _read(
        self, last: dict[str, str], left_s: float | None
    ) -> list[tuple[str, bytes, dict[bytes, bytes]]]:
        """The next entries after ``last`` (moved on), waiting at most a slice for them."""
        redis = self._app.broker.redis
        for key in event_keys(self._app):
            last.setdefault(key, "0-0")  # a queue first used since: all of it is new
        if not self._app.broker.same_slot(list(last)):
            entries = read_after(redis, last, 500)
            if not entries:
                time.sleep(POLL_S)
            return entries
        # One server: one XREAD blocks on every stream at once.
        block = FOLLOW_SLICE_MS if left_s is None else max(1, int(min(left_s, 1.0) * 1000))
        streams: Any = dict(last)
        reply: Any = redis.xread(streams, count=500, block=block)
        entries = sorted(
            ((k.decode(), eid, raw) for k, page in reply or () for eid, raw in page),
            key=lambda e: stream_order(e[1]),
        )
        for key, eid, _ in entries:
            last[key] = eid.decode()
        return entries


FOLLOW_SLICE_MS = 1000
"""Longest single wait of a follower in Redis: it then looks for queues first used since."""

POLL_S = 0.1
"""How often a follower on a Redis Cluster reads its streams while they are quiet."""
