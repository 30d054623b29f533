"""Dead letters: inspect, requeue and purge the messages that workers moved aside.

A worker moves a message it must not run, or a task that failed for good, to its queue's
dead-letter stream ``keys.queue(q).dead`` with the reason (``lua/bury.lua``, or the ack of a
final failure). :class:`DeadLetters` reads those streams, puts messages back on their queue
(``lua/revive.lua``) and deletes them. The ``omnitask dlq`` command is in ``dlq_cli.py``.
"""

from __future__ import annotations

import base64
import builtins
import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from omnitask.broker.keys import WAKE_TOKENS_MAX
from omnitask.broker.scripts import REVIVE
from omnitask.errors import MessageError
from omnitask.messages import Envelope, decode_envelope, ms_to_datetime

if TYPE_CHECKING:
    from omnitask.app import OmniTask

__all__ = ("DeadLetter", "DeadLetters")

_STREAM_ID = re.compile(r"^\d+-\d+$")
# Entries per XRANGE page and ids per revive call: keeps replies and the Lua stack small.
_PAGE = 500


def _order(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter: a message a worker moved aside, and why.

    Attributes:
        stream_id: Its entry id in the queue's dead-letter stream.
        queue: The queue it was taken from.
        time: When it was dead-lettered (UTC, millisecond precision; read from ``stream_id``).
        reason: Why, e.g. ``malformed``, ``unknown-task``, ``max-deliveries`` or ``failed``.
        detail: A sentence explaining the reason.
        task_id: The task id, when the message could be read.
        task_name: The task name, when the message could be read.
        worker: The worker child that moved it aside.
        message: The message, byte for byte as it was last queued.
        fields: Every other field the worker recorded (for ``failed``: ``attempts`` and
            ``traceback``).
    """

    stream_id: str
    queue: str
    time: datetime
    reason: str
    detail: str
    task_id: str | None
    task_name: str | None
    worker: str | None
    message: bytes = field(repr=False)
    fields: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_entry(cls, queue: str, entry_id: bytes, raw: dict[bytes, bytes]) -> DeadLetter:
        """Build a dead letter from a stream entry as redis-py returns it."""
        text = {k.decode(): v.decode(errors="replace") for k, v in raw.items() if k != b"msg"}
        stream_id = entry_id.decode()
        known = ("reason", "detail", "i", "n", "w")
        return cls(
            stream_id=stream_id,
            queue=queue,
            time=ms_to_datetime(_order(stream_id)[0]),
            reason=text.get("reason", ""),
            detail=text.get("detail", ""),
            task_id=text.get("i") or None,
            task_name=text.get("n") or None,
            worker=text.get("w") or None,
            message=raw.get(b"msg", b""),
            fields={k: v for k, v in text.items() if k not in known},
        )

    @cached_property
    def envelope(self) -> Envelope | None:
        """The decoded message, or None when it is not a valid envelope (it cannot be requeued)."""
        try:
            return decode_envelope(self.message)
        except MessageError:
            return None

    def as_dict(self) -> dict[str, Any]:
        """The dead letter as a JSON-ready dict (time in ISO 8601, the message in base64)."""
        return {
            "queue": self.queue,
            "id": self.stream_id,
            "time": self.time.isoformat(),
            "reason": self.reason,
            "detail": self.detail,
            "task_id": self.task_id,
            "task": self.task_name,
            "worker": self.worker,
            **self.fields,
            "message_base64": base64.b64encode(self.message).decode(),
        }


class DeadLetters:
    """Inspect, requeue and purge the dead letters of an app: ``DeadLetters(app)``.

    ``queue=None`` means every queue of the app (every queue a task was sent to) that holds
    dead letters.
    """

    def __init__(self, app: OmniTask) -> None:
        """Work on the dead letters of ``app``."""
        self._app = app

    def _lengths(self) -> dict[str, int]:
        redis = self._app.broker.redis
        members: Any = redis.smembers(self._app.keys.queues)
        names = sorted(m.decode() for m in members)
        pipe = redis.pipeline(transaction=False)
        for name in names:
            pipe.xlen(self._app.keys.queue(name).dead)
        return {n: int(length) for n, length in zip(names, pipe.execute(), strict=True) if length}

    def queues(self) -> builtins.list[str]:
        """The names of the app's queues that hold dead letters, sorted."""
        return builtins.list(self._lengths())

    def _names(self, queue: str | None) -> builtins.list[str]:
        return self.queues() if queue is None else [self._app.keys.queue(queue).name]

    def count(self, queue: str | None = None) -> int:
        """How many dead letters ``queue`` holds (default: every queue)."""
        if queue is None:
            return sum(self._lengths().values())
        return int(self._app.broker.redis.xlen(self._app.keys.queue(queue).dead))

    def _scan(
        self, queue: str, reason: str | None, task: str | None, *, newest_first: bool = False
    ) -> Iterator[DeadLetter]:
        redis = self._app.broker.redis
        key = self._app.keys.queue(queue).dead
        bound = "+" if newest_first else "-"
        while True:
            page: Any = (
                redis.xrevrange(key, max=bound, count=_PAGE)
                if newest_first
                else redis.xrange(key, min=bound, count=_PAGE)
            )
            for entry_id, raw in page:
                letter = DeadLetter.from_entry(queue, entry_id, raw)
                if reason in (None, letter.reason) and task in (None, letter.task_name):
                    yield letter
            if len(page) < _PAGE:
                return
            bound = "(" + page[-1][0].decode()  # exclusive: after the last entry read

    def list(
        self,
        queue: str | None = None,
        *,
        reason: str | None = None,
        task: str | None = None,
        limit: int = 100,
    ) -> builtins.list[DeadLetter]:
        """Dead letters, newest first.

        Args:
            queue: Only this queue's (default: every queue's).
            reason: Only those dead-lettered for this reason.
            task: Only messages of the task with this name.
            limit: At most this many.
        """
        found: builtins.list[DeadLetter] = []
        for name in self._names(queue):
            found += itertools.islice(self._scan(name, reason, task, newest_first=True), limit)
        found.sort(key=lambda letter: _order(letter.stream_id), reverse=True)
        return found[:limit]

    def get(self, queue: str, stream_id: str) -> DeadLetter | None:
        """The dead letter ``stream_id`` of ``queue``, or None when there is none."""
        if not _STREAM_ID.match(stream_id):
            return None
        key = self._app.keys.queue(queue).dead
        entries: Any = self._app.broker.redis.xrange(key, stream_id, stream_id)
        return DeadLetter.from_entry(queue, *entries[0]) if entries else None

    def _revive(self, queue: str, stream_ids: Sequence[str]) -> builtins.list[int]:
        qk = self._app.keys.queue(queue)
        keys = [qk.dead, qk.deliveries, qk.wake, *qk.ready]
        reply = self._app.broker._eval(REVIVE, keys, [WAKE_TOKENS_MAX, *stream_ids])
        return [int(code) for code in reply]

    def requeue(self, queue: str, stream_id: str) -> bool:
        """Put one dead letter back at the end of its queue, to run again.

        In one atomic step the message goes to the tail of its priority's ready list, exactly
        as it was (same task id, arguments and retry count), its delivery count is reset so it
        has a fresh ``max_deliveries`` budget, and its dead letter is deleted. Its result
        record is left alone until the new run replaces it, so ``AsyncResult.get()`` may still
        return the FAILURE recorded when it was dead-lettered.

        Returns:
            True when it was requeued; False when ``queue`` has no dead letter ``stream_id``.

        Raises:
            MessageError: The message is not a valid envelope, so no worker could run it. It
                is left in place (delete it with :meth:`purge`).
        """
        letter = self.get(queue, stream_id)
        if letter is None:
            return False
        # The script checks the header again: it is what decides, atomically.
        code = -1 if letter.envelope is None else self._revive(queue, [stream_id])[0]
        if code < 0:
            raise MessageError(f"dead letter {stream_id} is not a valid omnitask message")
        return code == 1

    def requeue_many(
        self, queue: str | None = None, *, reason: str | None = None, task: str | None = None
    ) -> int:
        """Requeue every dead letter that matches, oldest first (all of them without a filter).

        Each is requeued as by :meth:`requeue`; messages that are not valid envelopes are
        skipped and left in place. Returns how many were requeued.
        """
        total = 0
        for name in self._names(queue):
            # Collect first: one that a worker buries again meanwhile must not be found again.
            ids = [d.stream_id for d in self._scan(name, reason, task) if d.envelope is not None]
            for start in range(0, len(ids), _PAGE):
                codes = self._revive(name, ids[start : start + _PAGE])
                total += sum(1 for code in codes if code == 1)
        return total

    def purge(
        self, queue: str | None = None, *, reason: str | None = None, task: str | None = None
    ) -> int:
        """Delete the dead letters that match (all of them without a filter); return how many."""
        total = 0
        for name in self._names(queue):
            key = self._app.keys.queue(name).dead
            if reason is None and task is None:
                # One MULTI, so the count is exactly what was deleted.
                total += int(self._app.broker.run([("XLEN", key), ("DEL", key)])[0])
                continue
            ids = [d.stream_id for d in self._scan(name, reason, task)]
            for start in range(0, len(ids), _PAGE):
                total += int(self._app.broker.redis.xdel(key, *ids[start : start + _PAGE]))
        return total

    def trim_older_than(self, queue: str, age_s: float | timedelta) -> int:
        """Delete ``queue``'s dead letters older than ``age_s`` seconds; return how many.

        This bounds dead letters by age, on the Redis server's clock (which stamped them).
        Their number is bounded when they are written: each queue keeps about
        ``dead_letter_maxlen`` of them, dropping the oldest.

        Raises:
            ValueError: ``age_s`` is negative.
        """
        seconds = age_s.total_seconds() if isinstance(age_s, timedelta) else float(age_s)
        if seconds < 0:
            raise ValueError(f"age_s must not be negative, got {seconds}")
        redis = self._app.broker.redis
        now: Any = redis.time()
        cutoff_ms = max(0, int(now[0]) * 1000 + int(now[1]) // 1000 - int(seconds * 1000))
        key = self._app.keys.queue(queue).dead
        return int(redis.xtrim(key, minid=f"{cutoff_ms}-0", approximate=False))
