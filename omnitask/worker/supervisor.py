"""The worker's main process: starts the children, watches them, renews their leases.

- A child that dies is replaced at once, and its in-flight tasks are handed back to their
  queues at once (counted as a delivery, so a task that keeps killing its process ends in the
  dead letters).
- Every ``lease_s / 3`` it renews its children's leases and hands back the tasks of consumers
  whose lease expired: those of workers that died whole.
- SIGTERM / SIGINT: warm shutdown. Children finish the task they run (up to
  ``shutdown_timeout_s``) and take no new one; whatever is left is handed back; exit 0.
  A second signal: cold shutdown, running tasks are stopped and handed back at once.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import select
import signal
import socket
import time
from collections.abc import Callable, Sequence
from functools import partial
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import TYPE_CHECKING, TypeVar

from redis.exceptions import RedisError

from omnitask.broker import commands as cmd
from omnitask.context import WorkerInfo
from omnitask.messages import now_ms
from omnitask.worker.child import Child

if TYPE_CHECKING:
    from omnitask.app import OmniTask

__all__ = ("Supervisor",)

logger = logging.getLogger(__name__)

T = TypeVar("T")

TICK_S = 0.5
"""Longest the supervisor sleeps between checks of its children and its timers."""

COLD_KILL_GRACE_S = 5.0


def _child_main(
    app: OmniTask, queues: Sequence[str], consumer: str, worker: str, ppid: int
) -> None:
    Child(app, queues, consumer, worker, ppid).run()


class Supervisor:
    """Runs a worker: ``concurrency`` children consuming ``queues`` of ``app``."""

    def __init__(
        self,
        app: OmniTask,
        queues: Sequence[str],
        concurrency: int,
        *,
        name: str | None = None,
        app_spec: str = "",
    ) -> None:
        """Prepare the worker; nothing starts until :meth:`run`."""
        self.app = app
        self.queues = tuple(queues)
        self.concurrency = concurrency
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.app_spec = app_spec
        self.children: dict[str, BaseProcess] = {}
        self._signals: list[int] = []
        self._spawned = 0
        # Consumer ids must never repeat, even when a restarted worker gets the same pid (a
        # container's pid 1): a stale lease under the same id would be renewed, not reclaimed.
        self._nonce = os.urandom(3).hex()
        self._wake_r, self._wake_w = -1, -1

    # -- life cycle ---------------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped by a signal; return the process exit code."""
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(signum, self._on_signal)
        ctx = multiprocessing.get_context("fork")
        for _ in range(self.concurrency):
            self._spawn(ctx)
        info = WorkerInfo(self.name, self.queues, os.getpid())
        self._publish("worker-online")
        self.app.signals.worker_ready.send(info)
        logger.info("worker ready name=%s concurrency=%d", self.name, self.concurrency)
        print(f"omnitask worker {self.name} ready", flush=True)  # noqa: T201 - a readiness line
        try:
            self._supervise(ctx)
        finally:
            self.app.signals.worker_shutdown.send(info)
            self._publish("worker-offline")
            self.app.close()
        logger.info("worker stopped name=%s", self.name)
        return 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)

    def _spawn(self, ctx: multiprocessing.context.BaseContext) -> None:
        # The consumer id names the child's in-flight lists; a replacement child gets a new one.
        self._spawned += 1
        consumer = f"{self.name}/{self._nonce}.{self._spawned}"
        process = ctx.Process(  # type: ignore[attr-defined]
            target=_child_main,
            args=(self.app, self.queues, consumer, self.name, os.getpid()),
            name=f"omnitask-child {consumer}",
            daemon=False,
        )
        process.start()
        self.children[consumer] = process
        logger.debug("child started consumer=%s pid=%s", consumer, process.pid)

    def _supervise(self, ctx: multiprocessing.context.BaseContext) -> None:
        renew_every = self.app.conf.lease_s / 3
        heartbeat_every = self.app.conf.heartbeat_interval_s
        next_renew = next_heartbeat = 0.0
        while True:
            self._reap(respawn=ctx)
            if self._signals:
                self._shutdown()
                return
            now = time.monotonic()
            if now >= next_renew:
                self._renew()
                next_renew = now + renew_every
            if now >= next_heartbeat:
                self._publish("worker-heartbeat")
                next_heartbeat = now + heartbeat_every
            timeout = max(0.0, min(next_renew, next_heartbeat) - time.monotonic(), 0)
            sentinels = [p.sentinel for p in self.children.values()]
            wait([*sentinels, self._wake_r], timeout=min(timeout, TICK_S))
            self._drain_wakeup()

    def _drain_wakeup(self) -> None:
        while select.select([self._wake_r], [], [], 0)[0]:
            if not os.read(self._wake_r, 512):
                break

    def _reap(self, respawn: multiprocessing.context.BaseContext | None) -> None:
        for consumer, process in list(self.children.items()):
            if process.is_alive():
                continue
            process.join()
            del self.children[consumer]
            crashed = respawn is not None
            if crashed:
                logger.error(
                    "child died consumer=%s pid=%s exitcode=%s; its tasks go back to the queue",
                    consumer,
                    process.pid,
                    process.exitcode,
                )
            self._hand_back(consumer, count_delivery=crashed)
            if respawn is not None:
                self._spawn(respawn)

    def _hand_back(self, consumer: str, *, count_delivery: bool) -> None:
        for queue in self.queues:
            self._redis_step(
                partial(self.app.broker.requeue, queue, consumer, count_delivery=count_delivery),
                what="hand back",
                retry_for_s=10.0,
            )

    def _renew(self) -> None:
        consumers = list(self.children)
        for queue in self.queues:
            expired = self._redis_step(
                partial(self.app.broker.renew, queue, consumers), what="renew leases"
            )
            for dead in expired or ():
                moved = self._redis_step(
                    partial(
                        self.app.broker.requeue,
                        queue,
                        dead,
                        count_delivery=True,
                        only_if_expired=True,
                    ),
                    what="reclaim",
                )
                if moved:
                    logger.warning(
                        "lease expired consumer=%s queue=%s: %s task(s) handed back",
                        dead,
                        queue,
                        moved,
                    )

    def _redis_step(
        self, step: Callable[[], T], *, what: str, retry_for_s: float = 0.0
    ) -> T | None:
        """Run a Redis step; on failure retry for ``retry_for_s``, then log and give up.

        The supervisor must outlive a Redis outage: a renewal missed now is made next tick.
        """
        deadline = time.monotonic() + retry_for_s
        while True:
            try:
                return step()
            except RedisError as exc:
                if time.monotonic() >= deadline:
                    logger.warning("redis step failed step=%s error=%s", what, exc)
                    return None
                time.sleep(0.2)

    def _publish(self, kind: str) -> None:
        conf = self.app.conf
        keys = self.app.keys
        commands: list[cmd.Command] = []
        if kind == "worker-offline":
            commands.append(("ZREM", keys.workers, self.name))
        else:
            commands.append(("ZADD", keys.workers, now_ms(), self.name))
        if conf.events:
            commands.append(
                cmd.event(
                    keys.events,
                    conf.events_maxlen,
                    kind,
                    "w",
                    self.name,
                    "pid",
                    str(os.getpid()),
                    "concurrency",
                    str(self.concurrency),
                    "queues",
                    ",".join(self.queues),
                )
            )
        self._redis_step(lambda: self.app.broker.run(commands), what=kind)

    # -- shutdown -----------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Warm shutdown; a second signal while it runs makes it cold."""
        first = self._signals.pop(0)
        cold = first == signal.SIGQUIT
        logger.info(
            "%s shutdown name=%s (signal %s)",
            "cold" if cold else "warm",
            self.name,
            signal.Signals(first).name,
        )
        for process in self.children.values():
            self._kill(process, signal.SIGTERM)
        deadline = time.monotonic() + self.app.conf.shutdown_timeout_s
        while self.children and not cold:
            self._reap(respawn=None)
            if self._signals:
                logger.warning("second signal: cold shutdown, running tasks are handed back")
                cold = True
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                logger.warning("shutdown timeout: running tasks are stopped and handed back")
                break
            sentinels = [p.sentinel for p in self.children.values()]
            wait([*sentinels, self._wake_r], timeout=min(remaining, TICK_S))
            self._drain_wakeup()
        for process in self.children.values():
            self._kill(process, signal.SIGKILL)
        for process in self.children.values():
            process.join(COLD_KILL_GRACE_S)
        self._reap(respawn=None)

    @staticmethod
    def _kill(process: BaseProcess, signum: int) -> None:
        if process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signum)
