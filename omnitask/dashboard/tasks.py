"""Tasks as the dashboard shows them: found in the event window, detailed from Redis.

A task's state in the list is the one its newest event implies (``task-sent`` PENDING,
``task-started`` STARTED, ``task-succeeded`` SUCCESS ...; ``task-rejected``, a message that
was dead-lettered without running, is REJECTED). A task's detail adds what Redis still holds
of it: its result record (result, exception, traceback), and its message when the message is
still in a queue, in flight or among the dead letters (its arguments are in no event).
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from omnitask.broker.keys import PRIORITY_LEVELS
from omnitask.dashboard.window import event_ms, worker_of
from omnitask.deadletters import DeadLetters
from omnitask.dlq_cli import _describe as describe_envelope
from omnitask.errors import MessageError
from omnitask.events import Event, EventKind
from omnitask.messages import decode_envelope, decode_result
from omnitask.serialization import get_serializer

if TYPE_CHECKING:
    from omnitask.app import OmniTask
    from omnitask.dashboard.window import EventWindow

__all__ = ("STATES", "TaskSummary", "find_message", "search", "summarize", "task_detail")

STATE_OF_EVENT = {
    EventKind.TASK_SENT.value: "PENDING",
    EventKind.TASK_RECEIVED.value: "STARTED",
    EventKind.TASK_STARTED.value: "STARTED",
    EventKind.TASK_PROGRESS.value: "STARTED",
    EventKind.TASK_SUCCEEDED.value: "SUCCESS",
    EventKind.TASK_FAILED.value: "FAILURE",
    EventKind.TASK_RETRIED.value: "RETRY",
    EventKind.TASK_REVOKED.value: "REVOKED",
    EventKind.TASK_REJECTED.value: "REJECTED",
}

STATES = ("PENDING", "STARTED", "SUCCESS", "FAILURE", "RETRY", "REVOKED", "REJECTED")
"""The states a task can have in the dashboard's task list."""

# How far into each list or set a message is looked for: a queue can hold millions.
_SCAN = 1000
_TEXT_MAX = 4000


@dataclass
class TaskSummary:
    """One task as its events in the window describe it.

    Attributes:
        id: The task id.
        name: The task name.
        queue: Its queue.
        state: What its newest event implies (see the module docstring).
        worker: The worker child that ran it last.
        sent_ms: Its task-sent event (unix ms, Redis clock), when the window holds it.
        started_ms: Its newest task-started event.
        finished_ms: Its task-succeeded, task-failed, task-revoked or task-rejected event.
        runtime_s: Seconds it ran (task-succeeded, task-failed).
        retries: task-retried events seen.
        exception: The last exception summary (task-failed, task-retried) or rejection reason.
        last_ms: Its newest event.
        events: How many of its events the window holds.
    """

    id: str
    name: str = ""
    queue: str = ""
    state: str = "PENDING"
    worker: str = ""
    sent_ms: int | None = None
    started_ms: int | None = None
    finished_ms: int | None = None
    runtime_s: float | None = None
    retries: int = 0
    exception: str | None = None
    last_ms: int = 0
    events: int = 0

    def add(self, event: Event) -> None:
        """Fold in one more of the task's events (events come oldest first)."""
        ms = event_ms(event)
        kind = event.kind
        self.name = event.name or self.name
        self.queue = event.queue or self.queue
        self.worker = event.worker or self.worker
        self.state = STATE_OF_EVENT.get(kind, self.state)
        self.last_ms = ms
        self.events += 1
        extra = event.fields or {}
        if kind == EventKind.TASK_SENT:
            self.sent_ms = ms
        elif kind == EventKind.TASK_STARTED:
            self.started_ms = ms
        elif kind == EventKind.TASK_RETRIED:
            self.retries += 1
            self.exception = extra.get("exception", self.exception)
        elif kind in _FINAL:
            self.finished_ms = ms
            self.runtime_s = event.runtime_s
            self.exception = extra.get("exception") or extra.get("detail") or self.exception

    def as_dict(self) -> dict[str, Any]:
        """The summary as a JSON-ready dict (times in unix ms)."""
        return {
            "id": self.id,
            "name": self.name,
            "queue": self.queue,
            "state": self.state,
            "worker": self.worker,
            "sent_ms": self.sent_ms,
            "started_ms": self.started_ms,
            "finished_ms": self.finished_ms,
            "runtime_s": self.runtime_s,
            "retries": self.retries,
            "exception": self.exception,
            "last_ms": self.last_ms,
            "events": self.events,
        }


_FINAL = {
    EventKind.TASK_SUCCEEDED.value,
    EventKind.TASK_FAILED.value,
    EventKind.TASK_REVOKED.value,
    EventKind.TASK_REJECTED.value,
}


def summarize(events: Iterable[Event]) -> dict[str, TaskSummary]:
    """Task id -> its summary, from task events in stream order."""
    tasks: dict[str, TaskSummary] = {}
    for event in events:
        if event.task_id:
            tasks.setdefault(event.task_id, TaskSummary(event.task_id)).add(event)
    return tasks


def search(
    window: EventWindow,
    *,
    task_id: str | None = None,
    name: str | None = None,
    state: str | None = None,
    limit: int = 100,
) -> tuple[builtins.list[TaskSummary], int]:
    """The tasks in the window that match, newest first, and how many matched in all.

    Args:
        window: The event window.
        task_id: Part of the task id.
        name: Part of the task name (case-insensitive).
        state: One of :data:`STATES`.
        limit: At most this many.
    """
    wanted_name = name.lower() if name else None
    found = [
        t
        for t in summarize(window.events()).values()
        if (not task_id or task_id in t.id)
        and (not wanted_name or wanted_name in t.name.lower())
        and (not state or t.state == state)
    ]
    found.sort(key=lambda t: t.last_ms, reverse=True)
    return found[:limit], len(found)


def _text(value: str) -> str:
    return value if len(value) <= _TEXT_MAX else value[:_TEXT_MAX] + " ..."


def _result(app: OmniTask, task_id: str, queue: str | None) -> dict[str, Any] | None:
    """The task's stored result or state record, as shown (never unpickled).

    A result lives under its task's queue: the one the events name, else the first queue of
    the app that holds one.
    """
    data: bytes | None = None
    final: bytes | None = None
    queues = [queue] if queue else sorted(m.decode() for m in _queue_names(app))
    for name in queues:
        final, latest = app.broker.read_state(task_id, name)
        data = final if final is not None else latest
        if data is not None:
            break
    if data is None:
        return None
    try:
        record = decode_result(data)
    except MessageError as exc:
        return {"state": "?", "error": str(exc)}
    out: dict[str, Any] = {
        "state": record.state,
        "final": final is not None,
        "date_ms": record.date_ms,
        "worker": record.worker,
        "runtime_s": record.runtime_s,
        "retries": record.retries,
        "exception_type": (record.exc_type or "").replace(":", ".") or None,
        "exception": record.exc_message,
        "traceback": record.traceback,
        "result": None,
    }
    if record.value is not None:
        out["result"] = _value_text(record.value, record.serializer)
    return out


def _value_text(value: bytes, code: int) -> str:
    try:
        serializer = get_serializer(code)
    except ValueError:
        return f"<{len(value)} bytes, unknown serializer code {code}>"
    if serializer.name != "msgpack":
        # Unpickling runs code: a dashboard only ever shows what it can read safely.
        return f"<{len(value)} bytes of {serializer.name}, not decoded>"
    try:
        return _text(repr(serializer.decode(value)))
    except Exception as exc:  # noqa: BLE001 - a stored value may be anything
        return f"<cannot decode: {type(exc).__name__}: {exc}>"


def _queue_bodies(app: OmniTask, queue: str) -> Iterator[tuple[str, bytes]]:
    """(where, message) for the messages of ``queue`` worth looking at, nearest first."""
    redis = app.broker.redis
    qk = app.keys.queue(queue)
    consumers: Any = redis.zrange(qk.consumers, 0, -1)
    pipe = redis.pipeline(transaction=False)
    for consumer in consumers:
        pipe.lrange(qk.proc(consumer.decode()), 0, _SCAN - 1)
    pipe.zrange(qk.delayed, 0, _SCAN - 1)
    for key in qk.ready:
        pipe.lrange(key, 0, _SCAN - 1)
    replies = pipe.execute()
    for consumer, held in zip(consumers, replies, strict=False):
        yield from ((f"in flight ({consumer.decode()})", body) for body in held)
    yield from (("delayed", body) for body in replies[len(consumers)])
    for priority in range(PRIORITY_LEVELS - 1, -1, -1):
        ready = replies[len(consumers) + 1 + priority]
        yield from ((f"ready (priority {priority})", body) for body in ready)


def find_message(app: OmniTask, task_id: str, queue: str | None) -> dict[str, Any] | None:
    """The task's message if Redis still holds it, decoded, and where it is.

    Looked for in ``queue`` (every queue when None): in flight, among the first ``_SCAN``
    delayed and ready messages, then among its newest dead letters.
    """
    needle = task_id.encode()
    members: Any = [] if queue else _queue_names(app)
    queues = [queue] if queue else sorted(m.decode() for m in members)
    for name in queues:
        for where, body in _queue_bodies(app, name):
            if needle in body:  # cheap: most messages are not it, and need no decoding
                try:
                    envelope = decode_envelope(body)
                except MessageError:
                    continue
                if envelope.id == task_id:
                    return {"where": where, "queue": name, **describe_envelope(envelope)}
        for letter in DeadLetters(app).list(name, limit=_SCAN):
            if letter.task_id == task_id and letter.envelope is not None:
                where = f"dead letter {letter.stream_id} ({letter.reason})"
                return {"where": where, "queue": name, **describe_envelope(letter.envelope)}
    return None


def _queue_names(app: OmniTask) -> Any:
    return app.broker.redis.smembers(app.keys.queues)


def task_detail(app: OmniTask, window: EventWindow, task_id: str) -> dict[str, Any] | None:
    """Everything known of one task, or None when neither the window nor Redis knows it."""
    timeline = [e for e in window.events() if e.task_id == task_id]
    summary = summarize(timeline).get(task_id)
    result = _result(app, task_id, summary.queue if summary else None)
    message = find_message(app, task_id, summary.queue if summary else None)
    if summary is None and result is None and message is None:
        return None
    return {
        "id": task_id,
        "summary": summary.as_dict() if summary else None,
        "message": message,
        "result": result,
        "timeline": [
            {"ms": event_ms(e), **e.as_dict(), "worker_name": worker_of(e.worker)} for e in timeline
        ],
    }
