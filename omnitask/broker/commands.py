"""The write-only transitions (enqueue, ack), as Redis commands a client runs in one MULTI.

Used where a step carries more than the plain case: a workflow's sends and the acks of its
tasks, dead letters, a separate result backend. The plain send and ack are script calls
(``lua/enqueue.lua``, ``lua/claim.lua``) doing the same. Pure functions, no I/O: the sync and
async clients both execute what these return, so the protocol is written once. Each list is
one atomic step: a crash either applies all of it or none of it. A final result
(:func:`store_result`) joins the same MULTI as the ack when results live in the broker's
Redis; with a separate result backend it is written first, so a crash in between can only
deliver the task again, never lose its outcome.
"""

from __future__ import annotations

from collections.abc import Sequence

from omnitask.broker.keys import WAKE_TOKENS_MAX, QueueKeys

__all__ = ("Command", "ack", "enqueue", "event", "event_body", "set_state", "store_result")

Command = tuple[str | bytes | int | float, ...]
"""One Redis command and its arguments."""


def event(stream: str, maxlen: int, kind: str, *fields: str | bytes) -> Command:
    """XADD one lifecycle event (its time is the stream entry's id) to a capped stream."""
    return ("XADD", stream, "MAXLEN", "~", maxlen, "*", "e", kind, *fields)


def event_body(command: Command) -> Command:
    """The kind and fields of an :func:`event` command, for a script that publishes it."""
    return command[7:]


def enqueue(
    queue: QueueKeys,
    envelopes: Sequence[tuple[bytes, int, int | None, str, str]],
    events_key: str,
    events_maxlen: int,
) -> list[Command]:
    """Commands that queue ``envelopes`` and wake idle workers.

    Args:
        queue: The target queue's keys.
        envelopes: ``(bytes, priority, due_ms or None, task id, task name)`` for each task.
        events_key: The event stream, where a task-sent event goes per task.
        events_maxlen: The stream's cap; 0 publishes no events.
    """
    commands: list[Command] = []
    ready: dict[int, list[bytes]] = {}
    delayed: list[bytes | int] = []
    for body, priority, due_ms, _, _ in envelopes:
        if due_ms is None:
            ready.setdefault(priority, []).append(body)
        else:
            delayed += (due_ms, body)
    # One RPUSH per priority keeps bulk enqueue to a handful of commands.
    commands.extend(("RPUSH", queue.ready[p], *bodies) for p, bodies in ready.items())
    if delayed:
        commands.append(("ZADD", queue.delayed, *delayed))
    tokens = min(len(envelopes), WAKE_TOKENS_MAX)
    commands.append(("LPUSH", queue.wake, *("1",) * tokens))
    commands.append(("LTRIM", queue.wake, 0, WAKE_TOKENS_MAX - 1))
    if events_maxlen:
        for _, _, due_ms, task_id, name in envelopes:
            fields: tuple[str, ...] = ("i", task_id, "n", name, "q", queue.name)
            if due_ms is not None:
                fields += ("eta", str(due_ms))
            commands.append(event(events_key, events_maxlen, "task-sent", *fields))
    return commands


def store_result(result_key: str, state_key: str, record: bytes, ttl_ms: int) -> list[Command]:
    """Commands that store a final result record where ``get()`` waits for it."""
    # A task delivered twice replaces the earlier record rather than appending to it.
    return [
        ("DEL", state_key, result_key),
        ("RPUSH", result_key, record),
        ("PEXPIRE", result_key, ttl_ms),
    ]


def set_state(state_key: str, record: bytes, ttl_ms: int) -> list[Command]:
    """Commands that record a non-final state (STARTED, RETRY, progress)."""
    return [("SET", state_key, record, "PX", ttl_ms)]


def ack(
    queue: QueueKeys,
    consumer: str,
    body: bytes,
    task_id: str,
    final_event: Command | None,
    dead_letter: tuple[int, int, Sequence[str | bytes]] | None = None,
) -> list[Command]:
    """Commands that finish a claimed task: drop it from in-flight and store its outcome.

    Args:
        queue: The queue it was claimed from.
        consumer: The consumer holding it.
        body: The envelope exactly as claimed (removed from the in-flight list by value).
        task_id: The task id.
        final_event: The task-succeeded / task-failed event, or None.
        dead_letter: ``(maxlen, oldest ms, fields)`` to also keep the message in the queue's
            dead letters (a task that failed after its last retry), trimming those older than
            ``oldest ms``; or None.

    The first command's reply (LREM) is 1 when the consumer still held the task and 0 when its
    lease had expired and the task was handed to another worker meanwhile.
    """
    commands: list[Command] = [
        ("LREM", queue.proc(consumer), 1, body),
        ("HDEL", queue.deliveries, task_id),
    ]
    if dead_letter is not None:
        maxlen, oldest_ms, fields = dead_letter
        commands.append(("XADD", queue.dead, "MAXLEN", "~", maxlen, "*", "msg", body, *fields))
        commands.append(("XTRIM", queue.dead, "MINID", oldest_ms))  # exact: see bury.lua
    if final_event is not None:
        commands.append(final_event)
    return commands
