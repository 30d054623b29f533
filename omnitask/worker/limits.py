"""Time limits: what a child shares with its supervisor, and the soft limit inside a child.

The hard limit is enforced from outside (a task stuck in C code cannot be interrupted from
within): the child writes the deadline and the task id of its current run into shared memory,
and the supervisor kills it when the deadline passes. The soft limit is a SIGALRM in the
child that raises :class:`~omnitask.errors.SoftTimeLimitExceeded` inside the task.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.context import BaseContext
from types import FrameType

from omnitask.errors import SoftTimeLimitExceeded

__all__ = ("RunSlot", "soft_time_limit")

TASK_ID_BYTES = 1024  # a task id is at most 200 characters, of up to 4 bytes each in UTF-8
LOCK_TIMEOUT_S = 1.0


class RunSlot:
    """The current run of one child, in memory shared with the supervisor (fork inherits it).

    The child updates it under a lock, and the supervisor kills the child under the same lock
    after checking that the run it means to stop is still the one running, so a kill can never
    land on the task the child started next.
    """

    def __init__(self, ctx: BaseContext) -> None:
        """Allocate the shared memory; create it in the supervisor, before the fork."""
        self._deadline = ctx.RawValue("d", 0.0)
        self._task_id = ctx.RawArray("c", TASK_ID_BYTES)
        self._planned = ctx.RawValue("b", 0)
        self.lock = ctx.Lock()

    def begin(self, task_id: str, hard_limit_s: float | None) -> None:
        """Record that ``task_id`` starts now, with a hard limit (None: no limit)."""
        with self.lock:
            self._task_id.value = task_id.encode()[: TASK_ID_BYTES - 1]
            self._deadline.value = time.monotonic() + hard_limit_s if hard_limit_s else 0.0

    def end(self) -> None:
        """Record that the run ended."""
        with self.lock:
            self._deadline.value = 0.0
            self._task_id.value = b""

    @property
    def task_id(self) -> str:
        """The id of the task running now, or ''."""
        return bytes(self._task_id.value).decode(errors="replace")

    def overdue(self, now: float) -> bool:
        """Whether the run in progress has passed its hard deadline."""
        deadline = float(self._deadline.value)
        return 0.0 < deadline <= now

    def mark_planned_exit(self) -> None:
        """Say that the child exits on purpose, not in a crash.

        It has done its share (recycling), or it was sent SIGTERM itself: a service manager
        stopping the worker signals its whole process group, children included, and they may
        exit before the supervisor has seen its own signal.
        """
        self._planned.value = 1

    @property
    def planned_exit(self) -> bool:
        """Whether the child said it exits on purpose."""
        return bool(self._planned.value)


def _raise_soft(signum: int, frame: FrameType | None) -> None:
    raise SoftTimeLimitExceeded("soft time limit exceeded")


@contextmanager
def soft_time_limit(seconds: float | None) -> Iterator[None]:
    """Raise SoftTimeLimitExceeded in this (main) thread after ``seconds``; None: no limit."""
    if not seconds:
        yield
        return
    previous = signal.signal(signal.SIGALRM, _raise_soft)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
        finally:
            signal.signal(signal.SIGALRM, previous)
