"""Inspect an app's workers and queues from outside: ``Inspector(app)``.

Everything is read from what the protocol keeps in Redis anyway, plus the status hash each
worker refreshes with its heartbeats (``omnitask/control.py``); inspecting never asks a worker
anything and costs workers nothing.

- Claimed tasks come from the in-flight lists (``proc``) of the consumers (worker children)
  whose lease is current. A child runs one ordinary (sync) task at a time on its main thread
  and its ``async def`` tasks on its event loop as soon as they are claimed; it claims several
  tasks at once only for its event loop, and an ordinary task among them holds up the ones
  claimed after it. So, in each in-flight list, the tasks up to and including the first
  ordinary one are *active* and the rest are *reserved* (waiting for the main thread). A
  worker that runs only ordinary tasks has reserved tasks only with ``worker_prefetch`` above
  1; then the first ordinary task in flight may also be one that finished and whose ack waits
  for its batch (at most 100 ms).
- A task's start is the time of its ``task-started`` event (published when it was claimed)
  while the capped event stream still holds it, else when its worker's supervisor first saw
  it running (ordinary tasks, to within half a second, published with the next heartbeat),
  else unknown (None).
- Workers' done/failed counts are not kept anywhere (that would cost a write per task):
  :meth:`Inspector.stats` counts the task events still in the capped event stream instead,
  and says since when.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from omnitask.broker.keys import PRIORITY_LEVELS
from omnitask.control import WorkerStatus, known_queues, read_workers
from omnitask.errors import MessageError
from omnitask.events import event_keys
from omnitask.messages import Envelope, decode_envelope

if TYPE_CHECKING:
    from omnitask.app import OmniTask

__all__ = ("ClaimedTask", "EventCounts", "Inspector", "QueueStats", "ScheduledTask")

_EVENT_PAGE = 1000
_STARTED_SCAN = 2000  # newest events searched for the claim times of active tasks


def _worker_of(consumer: str) -> str:
    """The worker a consumer id (``<worker name>/<nonce>.<n>``) belongs to."""
    return consumer.rpartition("/")[0] or consumer


def _envelope(body: bytes) -> Envelope | None:
    try:
        return decode_envelope(body)
    except MessageError:
        return None


@dataclass(frozen=True)
class ClaimedTask:
    """A task a worker child has claimed: running (active) or waiting to run (reserved).

    Attributes:
        task_id: The task id ('?' when the message cannot be read).
        name: The task name ('?' likewise).
        queue: The queue it was claimed from.
        worker: The worker.
        consumer: The worker child (``<worker>/<nonce>.<n>``).
        priority: Its priority.
        sent_ms: When it was sent (unix ms).
        eta_ms: When it was due, for a delayed task (unix ms).
        started_ms: When it started (see the module docstring), or None when unknown.
        retries: Retries so far.
    """

    task_id: str
    name: str
    queue: str
    worker: str
    consumer: str
    priority: int
    sent_ms: int
    eta_ms: int | None
    started_ms: int | None
    retries: int

    def as_dict(self) -> dict[str, Any]:
        """The task as a JSON-ready dict (times in unix ms)."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class ScheduledTask:
    """A task waiting for its due time (an ETA, a countdown or a retry delay).

    Attributes:
        task_id: The task id.
        name: The task name.
        queue: Its queue.
        due_ms: When it is due (unix ms, as scored in Redis).
        priority: Its priority.
        sent_ms: When it was sent (unix ms).
        retries: Retries so far (a retry waiting for its delay has at least 1).
    """

    task_id: str
    name: str
    queue: str
    due_ms: int
    priority: int
    sent_ms: int
    retries: int

    def as_dict(self) -> dict[str, Any]:
        """The task as a JSON-ready dict (times in unix ms)."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class QueueStats:
    """The state of one queue.

    Attributes:
        name: The queue.
        ready: Tasks ready to run, per priority (index = priority; 9 runs first).
        delayed: Tasks due later.
        in_flight: Tasks claimed by workers and not finished, including those of consumers
            whose lease expired and that are waiting to be handed back.
        consumers: Worker children consuming it now (lease current).
        dead: Dead letters.
        oldest_ms: When the longest-waiting ready task became ready (sent, or due when it was
            delayed; unix ms), or None when none is ready.
        paused: Whether workers are kept from claiming its tasks.
    """

    name: str
    ready: Sequence[int]
    delayed: int
    in_flight: int
    consumers: int
    dead: int
    oldest_ms: int | None
    paused: bool

    @property
    def ready_total(self) -> int:
        """Ready tasks over every priority."""
        return sum(self.ready)

    def as_dict(self) -> dict[str, Any]:
        """The stats as a JSON-ready dict (times in unix ms)."""
        return {
            "name": self.name,
            "ready": self.ready_total,
            "ready_by_priority": {str(p): n for p, n in enumerate(self.ready) if n},
            "delayed": self.delayed,
            "in_flight": self.in_flight,
            "consumers": self.consumers,
            "dead": self.dead,
            "oldest_ms": self.oldest_ms,
            "paused": self.paused,
        }


@dataclass(frozen=True)
class EventCounts:
    """Task outcomes per worker, counted over the events the capped stream still holds.

    Attributes:
        since_ms: Time of the oldest event still held (unix ms), or None when there is none.
        events: How many events were read.
        by_worker: Worker name -> {"succeeded": n, "failed": n, "retried": n}.
    """

    since_ms: int | None
    events: int
    by_worker: dict[str, dict[str, int]] = field(default_factory=dict)

    def of(self, worker: str) -> dict[str, int]:
        """The counts of ``worker`` (zeros when it has none)."""
        return self.by_worker.get(worker, dict.fromkeys(_OUTCOMES.values(), 0))


_OUTCOMES = {b"task-succeeded": "succeeded", b"task-failed": "failed", b"task-retried": "retried"}


class Inspector:
    """Reads what an app's workers do and what its queues hold: ``Inspector(app)``."""

    def __init__(self, app: OmniTask) -> None:
        """Inspect ``app`` (nothing is read until a method is called)."""
        self._app = app

    @property
    def _redis(self) -> Any:
        return self._app.broker.redis

    def queue_names(self) -> builtins.list[str]:
        """The app's queues (those sent to, consumed or paused), sorted."""
        return known_queues(self._app)

    def _server_ms(self) -> int:
        seconds, micros = self._redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    # -- workers ------------------------------------------------------------------------------

    def workers(self, *, include_stale: bool = False) -> builtins.list[WorkerStatus]:
        """The live workers and their status, sorted by name.

        Args:
            include_stale: Also those whose heartbeats stopped recently (``alive`` False).
        """
        return [w for w in read_workers(self._app) if w.alive or include_stale]

    def registered(self) -> dict[str, builtins.list[str]]:
        """Worker name -> the names of the tasks it can run, for each live worker."""
        return {w.name: builtins.list(w.tasks) for w in self.workers()}

    def event_counts(self) -> EventCounts:
        """Succeeded, failed and retried tasks per worker, over the events still kept."""
        since_ms: int | None = None
        read = 0
        by_worker: dict[str, dict[str, int]] = {}
        for key in event_keys(self._app):
            lowest = "-"
            while True:
                page: Any = self._redis.xrange(key, min=lowest, count=_EVENT_PAGE)
                if page:
                    first = int(page[0][0].split(b"-")[0])
                    since_ms = first if since_ms is None else min(since_ms, first)
                for _, raw in page:
                    outcome = _OUTCOMES.get(raw.get(b"e", b""))
                    if outcome is not None:
                        worker = _worker_of(raw.get(b"w", b"").decode(errors="replace"))
                        tally = by_worker.setdefault(worker, dict.fromkeys(_OUTCOMES.values(), 0))
                        tally[outcome] += 1
                read += len(page)
                if len(page) < _EVENT_PAGE:
                    break
                lowest = "(" + page[-1][0].decode()
        return EventCounts(since_ms, read, by_worker)

    # -- claimed tasks ------------------------------------------------------------------------

    def _claimed(self) -> tuple[builtins.list[ClaimedTask], builtins.list[ClaimedTask]]:
        """(active, reserved): see the module docstring."""
        redis = self._redis
        now = self._server_ms()
        queues = self.queue_names()
        pipe = redis.pipeline(transaction=False)
        for queue in queues:
            pipe.zrangebyscore(self._app.keys.queue(queue).consumers, now, "+inf")
        lists = [
            (queue, consumer.decode())
            for queue, consumers in zip(queues, pipe.execute(), strict=True)
            for consumer in consumers
        ]
        for queue, consumer in lists:
            pipe.lrange(self._app.keys.queue(queue).proc(consumer), 0, -1)
        bodies = pipe.execute()
        active: builtins.list[ClaimedTask] = []
        reserved: builtins.list[ClaimedTask] = []
        for (queue, consumer), held in zip(lists, bodies, strict=True):
            running = True
            for body in held:
                target = active if running else reserved
                target.append(self._claimed_task(queue, consumer, body))
                if running and not self._is_async(target[-1].name):
                    running = False  # the main thread is busy with this one
        return self._with_starts(active), reserved

    def _is_async(self, name: str) -> bool:
        task = self._app.tasks.get(name)
        return task is not None and task.is_async

    @staticmethod
    def _claimed_task(queue: str, consumer: str, body: bytes) -> ClaimedTask:
        env = _envelope(body)
        worker = _worker_of(consumer)
        if env is None:
            return ClaimedTask("?", "?", queue, worker, consumer, 0, 0, None, None, 0)
        return ClaimedTask(
            env.id,
            env.task,
            queue,
            worker,
            consumer,
            env.priority,
            env.sent_ms,
            env.eta_ms,
            None,
            env.retries,
        )

    def _with_starts(self, tasks: builtins.list[ClaimedTask]) -> builtins.list[ClaimedTask]:
        if not tasks:
            return tasks
        starts = self._seen_running()
        wanted = {(t.task_id, t.consumer) for t in tasks}
        # Claim times: the newest events only, one read per queue of the tasks, since a busy
        # stream turns over fast.
        pipe = self._redis.pipeline(transaction=False)
        for queue in {t.queue for t in tasks}:
            pipe.xrevrange(self._app.keys.queue(queue).events, count=_STARTED_SCAN)
        entries: Any = [entry for page in pipe.execute() for entry in page]
        for entry_id, raw in entries:
            if raw.get(b"e") != b"task-started":
                continue
            key = (raw.get(b"i", b"").decode(), raw.get(b"w", b"").decode())
            if key in wanted:
                starts[key] = int(entry_id.split(b"-")[0])
                wanted.discard(key)
        return [
            ClaimedTask(**{**t.__dict__, "started_ms": starts.get((t.task_id, t.consumer))})
            for t in tasks
        ]

    def _seen_running(self) -> dict[tuple[str, str], int]:
        """(task id, consumer) -> when its supervisor first saw it running."""
        return {
            (task_id, consumer): since_ms
            for worker in self.workers()
            for consumer, (task_id, since_ms) in worker.running.items()
        }

    def active(self) -> builtins.list[ClaimedTask]:
        """The tasks workers run now (see the module docstring for what counts)."""
        return self._claimed()[0]

    def reserved(self) -> builtins.list[ClaimedTask]:
        """The tasks workers have claimed and not started (see the module docstring)."""
        return self._claimed()[1]

    # -- queues -------------------------------------------------------------------------------

    def scheduled(self, *, limit: int = 100) -> tuple[builtins.list[ScheduledTask], int]:
        """The delayed tasks due soonest over every queue, and how many there are in all.

        Args:
            limit: At most this many.
        """
        redis = self._redis
        queues = self.queue_names()
        pipe = redis.pipeline(transaction=False)
        for queue in queues:
            delayed = self._app.keys.queue(queue).delayed
            pipe.zrange(delayed, 0, max(limit - 1, 0), withscores=True)
            pipe.zcard(delayed)
        replies = pipe.execute()
        found: builtins.list[ScheduledTask] = []
        total = 0
        for i, queue in enumerate(queues):
            total += int(replies[2 * i + 1])
            found += self._scheduled(queue, replies[2 * i])
        found.sort(key=lambda t: t.due_ms)
        return found[:limit], total

    @staticmethod
    def _scheduled(queue: str, members: Sequence[tuple[bytes, float]]) -> Iterator[ScheduledTask]:
        for body, score in members:
            env = _envelope(body)
            if env is None:
                yield ScheduledTask("?", "?", queue, int(score), 0, 0, 0)
            else:
                yield ScheduledTask(
                    env.id, env.task, queue, int(score), env.priority, env.sent_ms, env.retries
                )

    def queues(self) -> builtins.list[QueueStats]:
        """Every queue's depth per priority, delayed, in-flight and dead counts, oldest task."""
        redis = self._redis
        now = self._server_ms()
        names = self.queue_names()
        pipe = redis.pipeline(transaction=False)
        for name in names:
            qk = self._app.keys.queue(name)
            for key in qk.ready:
                pipe.llen(key)
            for key in qk.ready:
                pipe.lindex(key, 0)
            pipe.zcard(qk.delayed)
            pipe.xlen(qk.dead)
            pipe.zrange(qk.consumers, 0, -1, withscores=True)
            pipe.exists(qk.paused)
        replies = pipe.execute()
        per = 2 * PRIORITY_LEVELS + 4
        paused = {name for i, name in enumerate(names) if replies[i * per + per - 1]}
        replies = [r for i, r in enumerate(replies) if i % per != per - 1]
        per -= 1
        rows = [replies[i * per : (i + 1) * per] for i in range(len(names))]
        # Every consumer's list counts, expired leases too: those tasks are not lost, only
        # waiting for a live worker to hand them back.
        for name, row in zip(names, rows, strict=True):
            for consumer, _ in row[-1]:
                pipe.llen(self._app.keys.queue(name).proc(consumer.decode()))
        in_flight = iter(pipe.execute())
        stats = []
        for name, row in zip(names, rows, strict=True):
            heads = [_envelope(b) for b in row[PRIORITY_LEVELS : 2 * PRIORITY_LEVELS] if b]
            since = [max(e.sent_ms, e.eta_ms or 0) for e in heads if e is not None]
            consumers = row[-1]
            stats.append(
                QueueStats(
                    name=name,
                    ready=[int(n) for n in row[:PRIORITY_LEVELS]],
                    delayed=int(row[-3]),
                    in_flight=sum(int(next(in_flight)) for _ in consumers),
                    consumers=sum(1 for _, deadline in consumers if deadline > now),
                    dead=int(row[-2]),
                    oldest_ms=min(since, default=None),
                    paused=name in paused,
                )
            )
        return stats
