"""The worker's main process: starts the children, watches them, renews their leases.

- A child that dies is replaced, and its in-flight tasks are handed back to their queues at
  once (counted as a delivery, so a task that keeps killing its process ends in the dead
  letters). A child that keeps dying at start-up is replaced with a growing delay.
- Every ``lease_s / 3`` it renews its children's leases (at once again after a failure) and
  hands back the tasks of consumers whose lease expired: those of workers that died whole.
  It does so only once it has itself been connected to Redis for a whole lease: after an
  outage every lease looks expired, and live workers must get the time to renew theirs.
- With each heartbeat it refreshes its status hash and reads its control commands
  (``omnitask/control.py``): shutdown, pool-grow, pool-shrink.
- SIGTERM / SIGINT: warm shutdown. Children finish the task they run (up to
  ``shutdown_timeout_s``) and take no new one; whatever is left is handed back; exit 0.
  A second signal (or SIGQUIT): cold shutdown, running tasks are stopped and handed back.
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
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

from redis.exceptions import RedisError

from omnitask import __version__, control
from omnitask.broker import commands as cmd
from omnitask.broker.client import Broker, refuses_writes
from omnitask.context import WorkerInfo
from omnitask.errors import TimeLimitExceeded
from omnitask.messages import now_ms
from omnitask.worker.autoscale import Autoscale, Autoscaler
from omnitask.worker.child import Child
from omnitask.worker.execute import Executor
from omnitask.worker.limits import LOCK_TIMEOUT_S, RunSlot

if TYPE_CHECKING:
    from omnitask.app import OmniTask

__all__ = ("Supervisor",)

logger = logging.getLogger(__name__)

T = TypeVar("T")

TICK_S = 0.5
"""Longest the supervisor sleeps between checks of its children and its timers."""

COLD_KILL_GRACE_S = 5.0

STALE_HEARTBEATS = 10
"""A worker silent for this many heartbeat intervals is dropped from the worker list."""

QUICK_DEATH_S = 1.0
"""A child that dies sooner than this after its start delays its replacement (backoff)."""

_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _processes(n: int) -> str:
    return f"{n} process" if n == 1 else f"{n} processes"


def _child_main(
    app: OmniTask, queues: Sequence[str], consumer: str, worker: str, ppid: int, slot: RunSlot
) -> None:
    Child(app, queues, consumer, worker, ppid, slot).run()


class Supervisor:
    """Runs a worker: ``concurrency`` children consuming ``queues`` of ``app``."""

    def __init__(
        self,
        app: OmniTask,
        queues: Sequence[str],
        concurrency: int,
        *,
        name: str | None = None,
        autoscale: Autoscale | None = None,
    ) -> None:
        """Prepare the worker; nothing starts until :meth:`run`.

        With ``autoscale``, ``concurrency`` is where the pool starts (its MIN).
        """
        self._autoscaler = None if autoscale is None else Autoscaler(autoscale)
        self.app = app
        self.queues = tuple(queues)
        self.concurrency = concurrency
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.children: dict[str, BaseProcess] = {}
        self._started: dict[str, float] = {}
        self._killed: set[str] = set()
        self._slots: dict[str, RunSlot] = {}
        # Children killed for their run (past its hard time limit, or revoked with terminate):
        # consumer -> (revoked, task id); that run's outcome is recorded, not handed back.
        self._stopped: dict[str, tuple[bool, str]] = {}
        self._signals: list[int] = []
        self._spawned = 0
        # Consumer ids must never repeat, even when a restarted worker gets the same pid (a
        # container's pid 1): a stale lease under the same id would be renewed, not reclaimed.
        self._nonce = os.urandom(3).hex()
        self._wake_r = -1
        self._healthy_since: float | None = None
        self._respawn_delay = 0.0
        self._spawn_at: list[float] = []  # when to start replacements of dead children
        self._broker: Broker | None = None
        # Status and control (omnitask/control.py): pool-shrunk children on their way out
        # (consumer -> when to kill them), the sync task each child runs (consumer -> task id,
        # first seen ms), when the worker started, whether Redis holds the whole status hash.
        self._retiring: dict[str, float] = {}
        self._runs: dict[str, tuple[str, int]] = {}
        self._started_ms = 0
        self._status_full = False

    @property
    def broker(self) -> Broker:
        """The supervisor's own connection to Redis, with a socket timeout.

        A half-open connection must not stall lease renewal for longer than a third of a lease.
        """
        if self._broker is None:
            timeout = max(self.app.conf.lease_s / 3, 1.0)
            self._broker = Broker(self.app.conf, self.app.keys, socket_timeout_s=timeout)
        return self._broker

    # -- life cycle ---------------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped by a signal; return the process exit code."""
        self._wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for signum in (*_STOP_SIGNALS, signal.SIGQUIT):
            signal.signal(signum, self._on_signal)
        ctx = multiprocessing.get_context("fork")
        info = WorkerInfo(self.name, self.queues, os.getpid())
        try:
            for _ in range(self.concurrency):
                self._spawn(ctx)
            self._publish("worker-online")
            self.app.signals.worker_ready.send(info)
            logger.info("worker ready name=%s concurrency=%d", self.name, self.concurrency)
            print(f"omnitask worker {self.name} ready", flush=True)  # noqa: T201 - readiness
            self._supervise(ctx)
        finally:
            # Also on an unexpected error: children must not outlive a supervisor that no
            # longer renews their leases, and what they held goes back to the queue.
            self._stop_children(signal.SIGKILL)
            self.app.signals.worker_shutdown.send(info)
            self._publish("worker-offline")
            self.broker.close()
            self.app.close()
        logger.info("worker stopped name=%s", self.name)
        return 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)

    def _spawn(self, ctx: BaseContext) -> None:
        # The consumer id names the child's in-flight lists; a replacement child gets a new one.
        self._spawned += 1
        consumer = f"{self.name}/{self._nonce}.{self._spawned}"
        slot = self._slots[consumer] = RunSlot(ctx)
        process = ctx.Process(  # type: ignore[attr-defined]
            target=_child_main,
            args=(self.app, self.queues, consumer, self.name, os.getpid(), slot),
            name=f"omnitask-child {consumer}",
            daemon=False,
        )
        # Blocked across the fork, so a SIGTERM arriving before the child has installed its
        # own handler waits for it instead of hitting the supervisor's handler in the child.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        self.children[consumer] = process
        self._started[consumer] = time.monotonic()
        logger.debug("child started consumer=%s pid=%s", consumer, process.pid)

    def _supervise(self, ctx: BaseContext) -> None:
        renew_every = self.app.conf.lease_s / 3
        heartbeat_every = self.app.conf.heartbeat_interval_s
        next_renew = next_heartbeat = 0.0
        while True:
            self._enforce()
            self._note_runs()
            self._reap(respawn=ctx)
            if self._signals:  # before any respawn: no child is forked to be stopped at once
                self._shutdown()
                return
            self._spawn_due(ctx)
            now = time.monotonic()
            if now >= next_renew:
                # A failed renewal is tried again next tick, not a third of a lease later.
                next_renew = now + (renew_every if self._renew() else TICK_S)
            if now >= next_heartbeat:
                self._obey(ctx, self._publish("worker-heartbeat"))
                self._autoscale(ctx)
                next_heartbeat = now + heartbeat_every
            wake_at = min(next_renew, next_heartbeat, *self._spawn_at)
            self._wait(min(max(0.0, wake_at - time.monotonic()), TICK_S))

    def _enforce(self) -> None:
        """Kill children whose run passed its hard time limit or was revoked to terminate."""
        now = time.monotonic()
        running: dict[str, str] = {}
        for consumer, slot in self._slots.items():
            if consumer in self._stopped or consumer not in self.children:
                continue
            task_id = slot.task_id
            if slot.overdue(now) and self._stop_run(consumer, task_id, revoked=False):
                logger.warning("time limit exceeded consumer=%s task=%s", consumer, task_id)
            elif task_id:
                running[task_id] = consumer
        if running:
            doomed = self._redis_step(
                partial(self.broker.to_terminate, list(running), self.queues), what="revoked"
            )
            for task_id in doomed or ():
                if self._stop_run(running[task_id], task_id, revoked=True):
                    logger.warning("terminated revoked task=%s", task_id)

    def _stop_run(self, consumer: str, task_id: str, *, revoked: bool) -> bool:
        """Kill a child for its run of ``task_id``, if that run is still the one it runs.

        Checked and killed under the slot's lock, which the child takes to start and end a
        run: the kill can never land on the task it started next.
        """
        slot = self._slots[consumer]
        if not slot.lock.acquire(timeout=LOCK_TIMEOUT_S):
            return False  # the child is between runs right now; look again next tick
        try:
            if slot.task_id != task_id or (not revoked and not slot.overdue(time.monotonic())):
                return False
            self._stopped[consumer] = (revoked, task_id)
            self._kill(self.children[consumer], signal.SIGKILL)
            return True
        finally:
            slot.lock.release()

    def _finish_stopped(self, consumer: str, revoked: bool, task_id: str) -> None:
        """Record the outcome of the run a killed child was stopped for.

        Anything else it held (claimed with its last ack) is handed back by the caller.
        """
        executor = Executor(self.app, consumer, broker=self.broker)
        exc = TimeLimitExceeded("the task ran past its hard time limit and was killed")
        for queue in self.queues:
            bodies = self._redis_step(
                partial(self.broker.held, queue, consumer), what="read", retry_for_s=10.0
            )
            for body in bodies or ():
                self._redis_step(
                    partial(
                        executor.finish_outside,
                        queue,
                        body,
                        exc,
                        revoked=revoked,
                        task_id=task_id,
                    ),
                    what="record outcome",
                    retry_for_s=10.0,
                )

    def _wait(self, timeout_s: float) -> None:
        wait([*(p.sentinel for p in self.children.values()), self._wake_r], timeout=timeout_s)
        while select.select([self._wake_r], [], [], 0)[0]:
            if not os.read(self._wake_r, 512):
                break

    def _reap(self, respawn: BaseContext | None) -> None:
        for consumer, process in list(self.children.items()):
            if process.is_alive():
                continue
            process.join()
            del self.children[consumer]
            started = self._started.pop(consumer)
            slot = self._slots.pop(consumer, None)
            # Only the child's own word counts as a planned exit (recycling, or a SIGTERM sent
            # to it directly): a task could exit with any code.
            recycled = slot is not None and slot.planned_exit
            stopped = consumer in self._stopped
            if stopped:
                self._finish_stopped(consumer, *self._stopped.pop(consumer))
            # Our own kills (shutdown, limits, terminate), recycling, and clean exits after
            # SIGTERM are not the task's fault: they do not count as deliveries.
            ours = (
                stopped
                or consumer in self._killed
                or recycled
                or (respawn is None and process.exitcode == 0)
            )
            self._killed.discard(consumer)
            # pool-shrink: not replaced; a clean exit after its SIGTERM is not the task's fault.
            retired = self._retiring.pop(consumer, None) is not None
            ours = ours or (retired and process.exitcode == 0)
            if not ours:
                logger.error(
                    "child died consumer=%s pid=%s exitcode=%s; its tasks go back to the queue",
                    consumer,
                    process.pid,
                    process.exitcode,
                )
            self._hand_back(consumer, count_delivery=not ours)
            if respawn is not None and not retired:
                lived = time.monotonic() - started
                planned = recycled or stopped  # replaced at once, no crash backoff
                self._spawn_at.append(time.monotonic() if planned else self._backoff(lived))

    def _backoff(self, lived_s: float) -> float:
        """When to start the replacement of a child that lived ``lived_s`` seconds.

        A child dying at start-up (a broken import, no memory) must not make the supervisor
        fork in a loop, so its replacement waits, longer each time. The wait is scheduled, not
        slept: the supervisor keeps renewing the other children's leases meanwhile.
        """
        if lived_s >= QUICK_DEATH_S:
            self._respawn_delay = 0.0
        else:
            self._respawn_delay = min(max(self._respawn_delay * 2, 0.1), 5.0)
            logger.warning("child died at start-up; next one in %.1f s", self._respawn_delay)
        return time.monotonic() + self._respawn_delay

    def _spawn_due(self, ctx: BaseContext) -> None:
        now = time.monotonic()
        for when in [t for t in self._spawn_at if t <= now]:
            self._spawn_at.remove(when)
            self._spawn(ctx)

    def _hand_back(self, consumer: str, *, count_delivery: bool) -> None:
        for queue in self.queues:
            self._redis_step(
                partial(self.broker.requeue, queue, consumer, count_delivery=count_delivery),
                what="hand back",
                retry_for_s=10.0,
            )

    def _renew(self) -> bool:
        consumers = list(self.children)
        renewed = True
        for queue in self.queues:
            expired = self._redis_step(partial(self.broker.renew, queue, consumers), what="renew")
            renewed = renewed and expired is not None
            if expired and self._may_reclaim():
                for dead in expired:
                    self._reclaim(queue, dead)
        return renewed

    def _may_reclaim(self) -> bool:
        since = self._healthy_since
        return since is not None and time.monotonic() - since >= self.app.conf.lease_s

    def _reclaim(self, queue: str, consumer: str) -> None:
        moved = self._redis_step(
            partial(
                self.broker.requeue, queue, consumer, count_delivery=True, only_if_expired=True
            ),
            what="reclaim",
        )
        if moved:
            logger.warning(
                "lease expired consumer=%s queue=%s: %s task(s) handed back", consumer, queue, moved
            )

    def _redis_step(
        self, step: Callable[[], T], *, what: str, retry_for_s: float = 0.0
    ) -> T | None:
        """Run a Redis step; on failure retry for ``retry_for_s``, then log and give up.

        The supervisor must outlive a Redis outage: what fails now is done again later (a
        renewal next tick; a hand-back by lease expiry).
        """
        deadline = time.monotonic() + retry_for_s
        while True:
            try:
                result = step()
            except RedisError as exc:
                if self._healthy_since is not None:
                    state = "refuses writes" if refuses_writes(exc) else "unreachable"
                    logger.warning("redis %s step=%s error=%s", state, what, exc)
                self._healthy_since = None
                if time.monotonic() >= deadline:
                    return None
                time.sleep(0.2)
            else:
                if self._healthy_since is None:
                    self._healthy_since = time.monotonic()
                return result

    def _publish(self, kind: str) -> list[Any] | None:
        conf = self.app.conf
        keys = self.app.keys
        commands: list[cmd.Command] = []
        now = now_ms()
        if kind == "worker-online":
            # So that tools find the queues a worker serves even if this app never sent to them.
            commands.append(("SADD", keys.queues, *self.queues))
        if kind == "worker-offline":
            commands.append(("ZREM", keys.workers, self.name))
        else:
            commands.append(("ZADD", keys.workers, now, self.name))
            # Workers that were killed never say goodbye; the living prune them, so the set
            # stays bounded by the workers seen in the last few heartbeats.
            stale = now - int(STALE_HEARTBEATS * conf.heartbeat_interval_s * 1000)
            commands.append(("ZREMRANGEBYSCORE", keys.workers, "-inf", stale))
        if conf.events:
            fields: tuple[str, ...] = ("w", self.name, "pid", str(os.getpid()))
            fields += ("concurrency", str(self.concurrency))
            fields += ("queues", ",".join(self.queues))
            commands.append(cmd.event(keys.events, conf.events_maxlen, kind, *fields))
        status, full = self._status_commands(kind)
        replies = self._redis_step(partial(self.broker.run, commands + status), what=kind)
        mine = None if replies is None else replies[len(commands) :]
        # The first PEXPIRE says 0 when the hash was gone before a partial write, which then
        # left a partial hash; a failed step may have left anything. Write it whole next time.
        self._status_full = mine is not None and (full or mine[0] == 1)
        return mine

    # -- status and control (omnitask/control.py) -------------------------------------------

    def _status_commands(self, kind: str) -> tuple[list[cmd.Command], bool]:
        """Commands that refresh the status hash (whole or not) and take control commands."""
        keys = self.app.keys
        if kind == "worker-offline":
            return [("DEL", keys.worker_status(self.name), keys.control(self.name))], True
        if kind == "worker-online":
            self._started_ms = now_ms()
            self._status_full = False
        conf = self.app.conf
        status = control.WorkerStatus(
            name=self.name,
            heartbeat_ms=now_ms(),
            pid=os.getpid(),
            host=socket.gethostname(),
            version=__version__,
            started_ms=self._started_ms,
            heartbeat_interval_s=conf.heartbeat_interval_s,
            concurrency=self.concurrency,
            processes=len(self.children),
            spawned=self._spawned,
            queues=self.queues,
            tasks=tuple(sorted(self.app.tasks)),
            running=self._runs,
        )
        ttl_ms = int(control.STATUS_TTL_HEARTBEATS * conf.heartbeat_interval_s * 1000)
        # The whole hash is written once, then only what changes (the task names can be long).
        full = not self._status_full
        commands = control.status_commands(keys, status, full=full, ttl_ms=ttl_ms)
        if kind == "worker-online":
            # A command left for an earlier worker of the same name is not for this one.
            return [*commands, ("DEL", keys.control(self.name))], full
        return commands + control.take_commands(keys, self.name), full

    def _note_runs(self) -> None:
        """Remember when each child's current sync task was first seen (within a tick)."""
        runs: dict[str, tuple[str, int]] = {}
        for consumer, slot in self._slots.items():
            task_id = slot.task_id
            if task_id:
                seen = self._runs.get(consumer)
                runs[consumer] = seen if seen and seen[0] == task_id else (task_id, now_ms())
        self._runs = runs

    def _obey(self, ctx: BaseContext, replies: list[Any] | None) -> None:
        """Act on the control commands a heartbeat took, and reply to each."""
        self._stop_overdue()
        for raw in replies[-2] if replies else ():  # the LRANGE of control.take_commands
            try:
                command = control.ControlCommand.decode(raw)
            except (ValueError, KeyError, TypeError):
                logger.warning("ignored a malformed control command: %r", raw)
                continue
            logger.info("control command=%s n=%d id=%s", command.command, command.n, command.id)
            ok, detail = self._control(ctx, command)
            reply = control.Reply(self.name, ok, detail, self.concurrency)
            self._redis_step(
                partial(self.broker.run, control.reply_commands(self.app.keys, command.id, reply)),
                what="control reply",
            )

    def _control(self, ctx: BaseContext, command: control.ControlCommand) -> tuple[bool, str]:
        if command.command == "shutdown":
            self._signals.append(signal.SIGTERM)
            return True, "warm shutdown started"
        if command.command == "pool-grow":
            return self._grow(ctx, command.n)
        return self._shrink(command.n)

    def _grow(self, ctx: BaseContext, n: int) -> tuple[bool, str]:
        for _ in range(n):
            self._spawn(ctx)
        self.concurrency += n
        return True, f"pool grown by {n} to {_processes(self.concurrency)}"

    def _autoscale(self, ctx: BaseContext) -> None:
        """Grow or shrink the pool with the queues' depth (``--autoscale``)."""
        if self._autoscaler is None:
            return
        waiting = self._redis_step(
            lambda: sum(self.broker.ready_count(q) for q in self.queues), what="queue depth"
        )
        if waiting is None:
            return
        busy = sum(
            1
            for consumer, slot in self._slots.items()
            if consumer in self.children and consumer not in self._retiring and slot.task_id
        )
        change = self._autoscaler.change(waiting=waiting, busy=busy, processes=self.concurrency)
        if change:
            _, detail = self._grow(ctx, change) if change > 0 else self._shrink(-change)
            logger.info("autoscale: %s (waiting=%d busy=%d)", detail, waiting, busy)

    def _shrink(self, n: int) -> tuple[bool, str]:
        """Stop ``n`` children warmly, idle ones first, keeping at least one."""
        count = min(n, self.concurrency - 1)
        if count <= 0:
            return False, f"pool not shrunk: {_processes(self.concurrency)} is the minimum"
        self.concurrency -= count
        # Replacements not started yet go first: nothing to stop.
        pending = min(count, len(self._spawn_at))
        del self._spawn_at[len(self._spawn_at) - pending :]
        candidates = [c for c in self.children if c not in self._retiring]
        candidates.sort(key=lambda c: bool(self._slots[c].task_id))  # idle first (stable)
        deadline = time.monotonic() + self.app.conf.shutdown_timeout_s
        for consumer in candidates[: count - pending]:
            self._retiring[consumer] = deadline
            self._kill(self.children[consumer], signal.SIGTERM)
        note = "" if count == n else f" ({n} asked; at least one process stays)"
        return True, f"pool shrunk by {count} to {_processes(self.concurrency)}{note}"

    def _stop_overdue(self) -> None:
        """Kill pool-shrunk children still running past ``shutdown_timeout_s``."""
        now = time.monotonic()
        for consumer, deadline in self._retiring.items():
            process = self.children.get(consumer)
            if process is not None and now >= deadline and consumer not in self._killed:
                logger.warning("pool-shrink: child overdue, stopped consumer=%s", consumer)
                self._killed.add(consumer)  # its task goes back without counting a delivery
                self._kill(process, signal.SIGKILL)

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
        running = sum(1 for slot in self._slots.values() if slot.task_id)
        if running and not cold:
            logger.info(
                "waiting up to %g s for %d running task(s); signal again to stop them now",
                self.app.conf.shutdown_timeout_s,
                running,
            )
        deadline = time.monotonic() + self.app.conf.shutdown_timeout_s
        next_renew = 0.0
        while self.children and not cold:
            # The running tasks keep their leases (and their time limits) while they finish:
            # a lapsed lease would let another worker run them at the same time.
            now = time.monotonic()
            if now >= next_renew:
                next_renew = now + (self.app.conf.lease_s / 3 if self._renew() else TICK_S)
            self._enforce()
            self._reap(respawn=None)
            if self._signals:
                logger.warning("second signal: cold shutdown, running tasks are handed back")
                cold = True
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                logger.warning("shutdown timeout: running tasks are stopped and handed back")
                break
            self._wait(min(remaining, TICK_S))

    def _stop_children(self, signum: int) -> None:
        for consumer, process in self.children.items():
            self._killed.add(consumer)
            self._kill(process, signum)
        for process in self.children.values():
            process.join(COLD_KILL_GRACE_S)
        self._reap(respawn=None)

    @staticmethod
    def _kill(process: BaseProcess, signum: int) -> None:
        if process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signum)
