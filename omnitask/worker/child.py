"""A worker child: claims a task when it has a free slot, runs it, acknowledges it, repeats.

The child holds no state the supervisor cannot recover: whatever it has claimed sits in its
in-flight list in Redis, and the supervisor hands that list back to the queue whenever the
child exits, for whatever reason.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from types import FrameType
from typing import TYPE_CHECKING, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from omnitask.broker.client import refuses_writes
from omnitask.context import WorkerInfo
from omnitask.worker.aio import AsyncRunner
from omnitask.worker.execute import Executor
from omnitask.worker.limits import RunSlot

if TYPE_CHECKING:
    from omnitask.app import OmniTask
    from omnitask.broker.client import Claim

__all__ = ("CLAIM_BATCH_MAX", "IDLE_WAIT_MAX_S", "RECYCLE_EXIT", "Child")

logger = logging.getLogger(__name__)

T = TypeVar("T")

IDLE_WAIT_MAX_S = 5.0
"""Longest block on the wake list: a safety net only, since every enqueue wakes a waiter."""

CLAIM_BATCH_MAX = 64
"""Most tasks one claim takes for the event loop (only while the tasks claimed are async)."""

RECYCLE_EXIT = 75
"""Exit code of a child that stops because it has done its share (recycling), not a crash."""

_PR_SET_PDEATHSIG = 1

_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


class _Stop(BaseException):
    """Raised by the SIGTERM handler to leave a blocking wait when no task is running."""


def _die_with_parent() -> None:
    # If the supervisor is SIGKILLed, its children must not run on unsupervised: their leases
    # lapse and their tasks go to other workers, so running them here too would duplicate them.
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):  # pragma: no cover - exotic libc
            logger.debug("prctl(PR_SET_PDEATHSIG) unavailable")


class Child:
    """The consume loop of one worker child process."""

    def __init__(
        self,
        app: OmniTask,
        queues: Sequence[str],
        consumer: str,
        worker: str,
        parent_pid: int,
        slot: RunSlot | None = None,
    ) -> None:
        """Consume ``queues`` of ``app`` as ``consumer`` of worker ``worker``."""
        self.app = app
        self.slot = slot
        self._done = 0
        self.queues = tuple(queues)
        self.consumer = consumer
        self.worker = worker
        self.parent_pid = parent_pid
        self._stopping = False
        # Busy until the loop starts: a SIGTERM that comes while the child is still starting
        # (its supervisor stopping as it forked it) then ends it cleanly instead of raising
        # _Stop outside the loop.
        self._busy = True
        self._next_queue = 0

    def run(self) -> None:
        """Run until the supervisor asks this child to stop (SIGTERM) or dies."""
        _die_with_parent()
        if os.getppid() != self.parent_pid:  # the parent died before prctl took effect
            return
        # The supervisor forks with SIGTERM and SIGINT blocked, so none is lost before these
        # handlers exist; its wake-up fd is its own.
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
        signal.signal(signal.SIGTERM, self._on_term)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        self.app.after_fork()
        self.app.signals.worker_process_init.send(
            WorkerInfo(self.worker, self.queues, os.getpid(), self.consumer)
        )
        executor = Executor(self.app, self.consumer, self._retrying, self.slot)
        runner = executor.runner = self._async_runner(executor)
        try:
            with contextlib.suppress(_Stop):
                self._loop(executor)
        finally:
            self._busy = True  # a second SIGTERM must not interrupt what follows
            try:
                # Tasks of a prefetched batch that ran: acknowledged now, not run again.
                executor.flush_deferred()
            except Exception:  # a step that cannot succeed: the batch is handed back, rerun
                # (While Redis is unreachable it retries until the supervisor's shutdown
                # timeout stops this child.)
                logger.exception("acknowledging the prefetched batch failed")
            if runner is not None:
                # Warm shutdown: running async tasks get what is left of the supervisor's
                # shutdown timeout; those still running then are cancelled and handed back.
                runner.stop(max(self.app.conf.shutdown_timeout_s - 1.0, 0.5))
        logger.debug("child stopped consumer=%s", self.consumer)
        recycle = self._recycle_due()
        if self.slot is not None and (recycle or self._stopping):
            self.slot.mark_planned_exit()
        if recycle:
            raise SystemExit(RECYCLE_EXIT)

    def _async_runner(self, executor: Executor) -> AsyncRunner | None:
        """The event loop thread for async tasks, when the app has any (started on use)."""
        if not any(task.is_async for task in self.app.tasks.values()):
            return None
        conf = self.app.conf
        return AsyncRunner(
            conf.async_backend,
            conf.async_concurrency,
            partial(self.app.broker.to_terminate, queues=self.queues),
            executor.flush_acks,
        )

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True
        if not self._busy:
            raise _Stop

    def _loop(self, executor: Executor) -> None:
        claim: Claim | None = None
        queue = self.queues[0]
        runner = executor.runner
        prefetch = self._prefetch(executor)
        self._busy = False
        batch = 1  # tasks per claim: grows while they are async, back to 1 at a sync one
        while not self._stopping and not self._recycle_due():
            if runner is not None and not runner.reserved:
                # Whatever is claimed next may be async: claim only with room to run it.
                runner.reserve(batch)
                continue  # a SIGTERM may have come while waiting
            if claim is not None and not claim.tasks:
                # The ack's own claim found the queue empty (atomically): block right away
                # instead of asking again; anything sent since then has left a wake token.
                claim = self._idle(executor, claim, prefetch)
                continue
            if claim is None:
                n = min(batch, runner.reserved) if runner else prefetch
                n = min(n, self._quota())
                # A SIGTERM must not interrupt the acks a claim sends first (they would be
                # lost, and their tasks run again); it is seen before the next task runs.
                queue, claim = self._unstoppable(partial(self._claim_any, executor, n))
                if not claim.tasks:
                    claim = self._idle(executor, claim, prefetch)
                    continue
            tasks, claim = claim.tasks, None
            for i, claimed in enumerate(tasks):
                if self._stopping:
                    break  # the rest stay in flight and are handed back when this child exits
                reserved = runner.reserved if runner else 0
                self._busy = True
                try:
                    # Ack and the next claim travel together when there is one queue to serve
                    # and room for what it claims.
                    last = self._stopping or self._last_before_recycling()
                    more = i == len(tasks) - 1 and len(self.queues) == 1 and not last
                    claim_next = min(prefetch, self._quota() - 1) if more else 0
                    claim = executor.handle(queue, claimed, claim_next) or claim
                    self._done += 1
                finally:
                    self._busy = False
                if runner is not None:
                    ran_async = runner.reserved < reserved
                    batch = min(batch * 2, CLAIM_BATCH_MAX) if ran_async else 1
            if claim is None:  # the batch ended without a claim to carry its acks
                self._unstoppable(executor.flush_deferred)

    def _prefetch(self, executor: Executor) -> int:
        """How many sync tasks to claim at once; above 1, the executor defers quick acks."""
        # A child of an app with async tasks claims as its event loop has room instead.
        prefetch = self.app.conf.worker_prefetch if executor.runner is None else 1
        executor.defer_acks = prefetch > 1
        if executor.defer_acks:
            threading.Thread(
                target=executor.watch_deferred, name="omnitask-acks", daemon=True
            ).start()
        return prefetch

    def _unstoppable(self, step: Callable[[], T]) -> T:
        """Run ``step`` so that a SIGTERM does not interrupt it (the loop sees it after)."""
        self._busy = True
        try:
            return step()
        finally:
            self._busy = False

    def _quota(self) -> int:
        """Tasks this child may still claim before it is recycled."""
        limit = self.app.conf.max_tasks_per_child
        return max(limit - self._done, 1) if limit else CLAIM_BATCH_MAX

    def _last_before_recycling(self) -> bool:
        limit = self.app.conf.max_tasks_per_child
        return bool(limit) and self._done + 1 >= limit

    def _recycle_due(self) -> bool:
        """Whether this child has done its share (--max-tasks-per-child / -memory-per-child)."""
        conf = self.app.conf
        if conf.max_tasks_per_child and self._done >= conf.max_tasks_per_child:
            return True
        if conf.max_memory_per_child_kb and self._done:
            # Only after a task: a limit below a fresh child's own size must not make the
            # supervisor fork in a loop. ru_maxrss is KiB on Linux, bytes on macOS.
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            if sys.platform == "darwin":
                peak //= 1024
            if peak > conf.max_memory_per_child_kb:
                logger.info("child recycled: peak memory %d KiB", peak)
                return True
        return False

    def _claim_any(self, executor: Executor, n: int = 1) -> tuple[str, Claim]:
        """Claim from the queues in turn, starting after the last one served (fairness).

        With nothing to claim anywhere, the claim returned carries the earliest due time of
        every queue's delayed tasks, so the idle wait ends when the first of them is due.
        """
        count = len(self.queues)
        due: list[int] = []
        claim: Claim | None = None
        for i in range(count):
            queue = self.queues[(self._next_queue + i) % count]
            claim = self._retrying(partial(executor.claim, queue, n))
            if claim.tasks:
                self._next_queue = (self._next_queue + i + 1) % count
                return queue, claim
            if claim.next_due_ms is not None:
                due.append(claim.next_due_ms)
        assert claim is not None
        return self.queues[0], claim._replace(next_due_ms=min(due, default=None))

    def _idle(self, executor: Executor, claim: Claim, prefetch: int) -> Claim | None:
        """Wait for a wake token (or the first delayed task due); return the claim made then.

        A child with one queue and no async tasks claims in the same round trip as the wait
        (see ``Broker.wait_and_claim``); any other child returns None and claims after.
        """
        if self._stopping:
            return None  # a SIGTERM came while busy: the loop ends instead of blocking
        wait = IDLE_WAIT_MAX_S
        if claim.next_due_ms is not None:
            wait = min(wait, max(claim.next_due_ms - claim.now_ms, 1) / 1000)
        if len(self.queues) == 1 and executor.runner is None:
            n = min(prefetch, self._quota())
            tries = 0

            def step() -> Claim:
                nonlocal tries
                tries += 1
                if tries > 1:
                    # The failed try's claim may have applied with its reply lost: claim at
                    # once, which returns those tasks, instead of waiting for a token first.
                    return executor.claim(self.queues[0], n)
                return executor.wait_and_claim(self.queues[0], wait, n)

            return self._retrying(step)
        self._retrying(lambda: self.app.broker.wait_wake(self.queues, wait))
        return None

    def _retrying(self, step: Callable[[], T]) -> T:
        """Run ``step``, retrying with backoff while Redis is unreachable.

        A step that fails midway is safe to repeat: claims land in this child's in-flight list
        (handed back when it exits), and an ack that is applied twice stores the same record.
        """
        delay = 0.05
        warned = False
        while True:
            try:
                return step()
            except RedisError as exc:
                unreachable = isinstance(exc, (RedisConnectionError, RedisTimeoutError))
                if not (unreachable or refuses_writes(exc)):
                    # A server-side error (e.g. a wrong-type key) must not kill the child in a
                    # tight loop; log it and slow down.
                    logger.exception("redis error consumer=%s", self.consumer)
                    time.sleep(1.0)
                    continue
                # An outage, or a server that refuses writes for now (min-replicas-to-write,
                # a demoted master, maxmemory): warned about once, not with a traceback a second.
                if not warned:
                    logger.warning(
                        "redis %s, retrying consumer=%s error=%s",
                        "unreachable" if unreachable else "refuses writes",
                        self.consumer,
                        exc,
                    )
                    warned = True
                if os.getppid() != self.parent_pid:
                    raise _Stop from None
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
