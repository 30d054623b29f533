"""Async tasks in a worker child: an anyio event loop in a thread beside the consume loop.

The child's main thread keeps claiming and running ordinary (sync) tasks, so a sync task never
blocks the loop. It hands each claimed ``async def`` task to the loop and claims the next one
at once, as long as the loop has a free slot (``async_concurrency``). Time limits, revoke with
``terminate=True`` and the end of a warm shutdown reach async tasks through cancel scopes: no
process is killed for them.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import socket
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal

__all__ = ("AsyncRunner", "CancelReason")

logger = logging.getLogger(__name__)

TERMINATE_CHECK_S = 0.5
"""How often the loop asks Redis whether one of its running tasks was revoked to terminate."""


class CancelReason:
    """Why the runner cancelled a task's scope (the task itself only sees a cancellation)."""

    TERMINATED = "terminated"
    SHUTDOWN = "shutdown"


class AsyncRunner:
    """Runs async tasks on an anyio event loop in a thread, up to ``concurrency`` at once.

    Only the child's main thread calls :meth:`reserve`, :meth:`submit`, :meth:`unreserve` and
    :meth:`stop`; everything else runs on the loop.
    """

    def __init__(
        self,
        backend: str,
        concurrency: int,
        terminations: Callable[[Sequence[str]], list[str]],
        flush: Callable[[list[Any]], list[bool]],
    ) -> None:
        """Start no thread yet.

        ``terminations`` filters running task ids to those revoked with ``terminate=True``;
        ``flush`` acknowledges a batch of finished tasks in Redis (called in a worker thread)
        and says for each whether this consumer still held it.
        """
        self._backend = backend
        self._slots = threading.Condition()
        self._free = concurrency
        self._reserved = 0  # main thread only
        self._terminations = terminations
        self._flush = flush
        self._portal: BlockingPortal | None = None
        self._stack = contextlib.ExitStack()
        # Loop thread only:
        self._running: dict[str, anyio.CancelScope] = {}
        self._cancelled: dict[str, str] = {}  # task id -> CancelReason
        self._acks: list[tuple[Any, list[bool], anyio.Event]] = []
        self._acks_waiting: anyio.Event | None = None
        self._inbox: collections.deque[tuple[str, Callable[..., Awaitable[None]]]] = (
            collections.deque()
        )
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._wake_sent = False
        self._idle = threading.Event()
        self._idle.set()
        self._count = 0
        self._count_lock = threading.Lock()

    @property
    def reserved(self) -> int:
        """Free slots the main thread holds for the tasks it claims next."""
        return self._reserved

    def reserve(self, most: int) -> int:
        """Wait for a free slot, then hold up to ``most`` (at least one); return how many.

        Whatever is claimed next then has room to run.
        """
        with self._slots:
            while not self._free:
                self._slots.wait()
            taken = min(self._free, max(most, 1))
            self._free -= taken
        self._reserved += taken
        return taken

    def unreserve(self) -> None:
        """Give back the slots held by :meth:`reserve` and not used."""
        if self._reserved:
            with self._slots:
                self._free += self._reserved
                self._slots.notify()
            self._reserved = 0

    def submit(self, task_id: str, run: Callable[[anyio.CancelScope], Awaitable[None]]) -> None:
        """Run ``run(scope)`` on the loop in a slot reserved for it; return at once.

        ``run`` owns the task's cancel scope: the runner cancels it for a revoke with
        ``terminate=True`` or at the end of a warm shutdown (see :meth:`cancel_reason`).
        """
        assert self._reserved, "submit() needs a slot from reserve()"
        self._reserved -= 1
        with self._count_lock:
            self._count += 1
            self._idle.clear()
        self._started()
        self._inbox.append((task_id, run))
        if not self._wake_sent:
            # One byte wakes the loop's intake; it clears the flag before it empties the inbox,
            # so a task appended after that sends another. The main thread never waits on the
            # loop, however busy the loop is.
            self._wake_sent = True
            with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending anyway
                self._wake_w.send(b"\0")

    async def ack(self, item: Any) -> bool:
        """Acknowledge a finished task with others finishing about now, in one round trip.

        Returns whether this consumer still held it. While one batch is on its way to Redis,
        the next one gathers: the busier the loop, the larger the batches.
        """
        held: list[bool] = []
        done = anyio.Event()
        self._acks.append((item, held, done))
        if self._acks_waiting is not None:
            self._acks_waiting.set()
        await done.wait()
        return bool(held and held[0])

    def cancel_reason(self, task_id: str) -> str | None:
        """Why the runner cancelled ``task_id``'s scope, or None if it did not (a time limit)."""
        return self._cancelled.get(task_id)

    def stop(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for running tasks, cancel those left, and stop the loop.

        A task cancelled here is not acknowledged: it stays in the child's in-flight list,
        which the supervisor hands back to the queue when the child exits.
        """
        self.unreserve()
        if self._portal is None:
            return
        if not self._idle.wait(timeout_s):
            logger.warning(
                "shutdown: cancelling %d async task(s); they go back to the queue", self._count
            )
            self._portal.call(self._cancel_all)
            self._idle.wait(5.0)
        # Cancels what is left: the termination watcher (and a task that ignored its
        # cancellation, which is then handed back too).
        self._portal.call(self._portal.stop, True)
        self._stack.close()
        self._wake_r.close()
        self._wake_w.close()
        self._portal = None

    # -- on the loop ------------------------------------------------------------------------

    def _started(self) -> BlockingPortal:
        if self._portal is None:
            self._portal = self._stack.enter_context(
                start_blocking_portal(self._backend, name="omnitask-async")
            )
            self._portal.start_task_soon(self._intake)
        return self._portal

    async def _intake(self) -> None:
        """Start the tasks the main thread submits, and the runner's own two loops."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch_terminations)
            tg.start_soon(self._flush_acks)
            while True:
                await anyio.wait_readable(self._wake_r)
                with contextlib.suppress(BlockingIOError):
                    while self._wake_r.recv(4096):
                        pass
                self._wake_sent = False
                while self._inbox:
                    task_id, run = self._inbox.popleft()
                    tg.start_soon(self._guard, task_id, run)

    async def _guard(
        self, task_id: str, run: Callable[[anyio.CancelScope], Awaitable[None]]
    ) -> None:
        scope = anyio.CancelScope()
        self._running[task_id] = scope
        try:
            await run(scope)
        except Exception:
            # run() records every outcome of the task itself; what reaches here failed while
            # recording it (Redis gone for good). The message stays in flight and is handed
            # back when this child exits.
            logger.exception("async task not recorded id=%s", task_id)
        finally:
            del self._running[task_id]
            self._cancelled.pop(task_id, None)
            with self._slots:
                self._free += 1
                self._slots.notify()
            with self._count_lock:
                self._count -= 1
                if not self._count:
                    self._idle.set()

    async def _flush_acks(self) -> None:
        while True:
            if not self._acks:
                self._acks_waiting = anyio.Event()
                await self._acks_waiting.wait()
                continue
            batch, self._acks = self._acks, []
            try:
                held = await anyio.to_thread.run_sync(self._flush, [item for item, _, _ in batch])
            except Exception:
                # Not acknowledged: the tasks stay in flight and are handed back to the queue
                # when this child exits. (flush itself retries while Redis is unreachable.)
                logger.exception("acknowledging %d async task(s) failed", len(batch))
                held = []
            for (_, box, done), was_held in zip(batch, held or [False] * len(batch), strict=True):
                box.append(was_held)
                done.set()

    def _cancel_all(self) -> None:
        for task_id, scope in self._running.items():
            self._cancelled.setdefault(task_id, CancelReason.SHUTDOWN)
            scope.cancel()

    async def _watch_terminations(self) -> None:
        while True:
            await anyio.sleep(TERMINATE_CHECK_S)
            if not self._running:
                continue
            ids = list(self._running)
            try:
                doomed = await anyio.to_thread.run_sync(self._terminations, ids)
            except Exception as exc:  # noqa: BLE001 - Redis away: look again next time
                logger.debug("terminate check failed: %s", exc)
                continue
            for task_id in doomed:
                scope = self._running.get(task_id)
                if scope is not None and task_id not in self._cancelled:
                    self._cancelled[task_id] = CancelReason.TERMINATED
                    scope.cancel()


def run_coroutine_here(backend: str, fn: Callable[[], Awaitable[Any]]) -> Any:
    """Run an async function to completion on a new event loop in this thread."""
    return anyio.run(fn, backend=backend)
