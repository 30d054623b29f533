"""The beat: sends the runs of periodic tasks when they are due, from one leader at a time.

Several beats may run for high availability. Each tries to hold the leader lease
(``keys.beat_leader``, ``lua/lead.lua``); the holder renews it every third of ``beat_lease_s``
and is the one that sends runs. A standby beat checks again when the lease would expire, so a
leader that died is replaced within one lease; a beat that stops cleanly gives the lease up
(``lua/resign.lua``) and a standby takes over at its next check.

The leader sleeps until the next slot of any schedule, or until its next renewal, whichever
comes first: no polling. Each wake-up re-reads the schedules from Redis (runtime changes take
effect there) and sends every due run with ``lua/fire.lua``, which records the slot and queues
the run in one step, refuses a slot already handled and refuses a beat that no longer holds
the lease. Each run is sent exactly once, even when two beats both believe they lead.

Times are the Redis server's (measured at each renewal), so beats on hosts whose clocks
disagree still agree on what is due.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from omnitask.broker.client import Broker
from omnitask.broker.keys import WAKE_TOKENS_MAX
from omnitask.broker.scripts import FIRE, LEAD, RESIGN
from omnitask.errors import ConfigurationError, OmnitaskError
from omnitask.periodic import Schedules
from omnitask.producer import Call
from omnitask.schedules import Periodic, Run, due_run, next_slot, run_id

if TYPE_CHECKING:
    from omnitask.app import OmniTask

__all__ = ("Beat",)

logger = logging.getLogger(__name__)

HANDOVER_MARGIN_S = 0.01
"""A standby beat checks this long after the leader's lease would expire."""

RETRY_S = 1.0
"""After a Redis error, the beat tries again this soon (or at its next renewal, if sooner)."""

_FIRE_CODES = {1: "sent", 2: "skipped", 0: "already handled"}


class Beat:
    """One beat process (or thread): follows, or leads and sends periodic runs.

    Args:
        app: The app, whose code-declared schedules (``app.beat_schedule``) are written to
            Redis when the beat starts.
        name: The beat's id in the leader lease; default ``host:pid:random``.
        parent_pid: Stop when this process is no longer the parent (``worker -B``).
    """

    def __init__(
        self, app: OmniTask, *, name: str | None = None, parent_pid: int | None = None
    ) -> None:
        """Prepare a beat; nothing connects or starts until :meth:`run`."""
        self.app = app
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{os.urandom(2).hex()}"
        self.parent_pid = parent_pid
        self.lease_s = app.conf.beat_lease_s
        self.renew_s = self.lease_s / 3
        self.leading_since_ms: int | None = None
        self._stopping = False
        self._asked_lease = False
        self._wake_r = self._wake_w = -1
        self._lease_until = 0.0  # monotonic time until which this beat surely holds the lease
        self._next_lead = 0.0  # monotonic time of the next lease take or renewal
        self._offset_ms = 0.0  # the Redis server's clock minus ours
        self._broker: Broker | None = None

    @property
    def broker(self) -> Broker:
        """The beat's own connection, with a socket timeout shorter than a renewal period."""
        if self._broker is None:
            timeout = max(self.renew_s, 0.5)
            self._broker = Broker(self.app.conf, self.app.keys, socket_timeout_s=timeout)
        return self._broker

    @property
    def leading(self) -> bool:
        """Whether this beat holds the leader lease (as far as it knows)."""
        return time.monotonic() < self._lease_until

    # -- life cycle ---------------------------------------------------------------------------

    def run(self) -> int:
        """Write the code schedules, then follow or lead until stopped; return 0.

        In the main thread, SIGTERM and SIGINT stop it; elsewhere, call :meth:`stop`.

        Raises:
            BrokerConnectionError: Redis cannot be reached at start.
            ConfigurationError: The broker is a Redis Cluster.
        """
        if self.app.broker.is_cluster:
            # fire.lua checks the lease and the schedule (the app's slot) and queues the run
            # (the queue's) in one step, which a cluster cannot do across two slots.
            raise ConfigurationError(
                "periodic tasks (beat) do not run on Redis Cluster yet: run beat against a "
                "single Redis or Sentinel"
            )
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, self._on_signal)
        try:
            self.app.connect()
            report = Schedules(self.app).sync(self.app.beat_schedule)
            logger.info(
                "beat schedules synced written=%s removed=%s",
                ",".join(report.written) or "-",
                ",".join(report.removed) or "-",
            )
            logger.info("beat ready name=%s lease_s=%g", self.name, self.lease_s)
            print(f"omnitask beat {self.name} ready", flush=True)  # noqa: T201 - readiness
            while not self._stopping:
                self._sleep(self._step())
        finally:
            self._resign()
            self.broker.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
        logger.info("beat stopped name=%s", self.name)
        return 0

    def stop(self) -> None:
        """Ask the beat to stop (safe from a signal handler or another thread)."""
        self._stopping = True
        with contextlib.suppress(OSError):  # not started, already stopped, or pipe full
            os.write(self._wake_w, b"x")

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop()

    def _sleep(self, timeout_s: float) -> None:
        if self._stopping or timeout_s <= 0:
            return
        ready, _, _ = select.select([self._wake_r], [], [], timeout_s)
        if ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 64)

    def _step(self) -> float:
        """Take or renew the lease when it is time, send what is due; return the sleep."""
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            logger.warning("beat parent process is gone; stopping name=%s", self.name)
            self._stopping = True
            return 0.0
        if time.monotonic() >= self._next_lead:
            self._lead()
        wake = self._next_lead
        if self.leading:
            try:
                due_in_s = self._fire_due()
            except RedisError as exc:
                logger.warning("beat cannot reach Redis: %s", exc)
                due_in_s = RETRY_S
            wake = min(wake, time.monotonic() + due_in_s)
        return wake - time.monotonic()

    # -- the lease ----------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(time.time() * 1000 + self._offset_ms)

    def _lead(self) -> None:
        was_leading = self.leading
        self._asked_lease = True
        started, sent = time.monotonic(), time.time()
        try:
            code, server_ms, left_ms = self.broker._eval(
                LEAD, [self.app.keys.beat_leader], [self.name, int(self.lease_s * 1000)]
            )
        except RedisError as exc:
            logger.warning("beat cannot reach Redis to renew its lease: %s", exc)
            self._next_lead = time.monotonic() + min(RETRY_S, self.renew_s)
            return
        self._offset_ms = int(server_ms) - (sent + time.time()) / 2 * 1000
        if code:
            # Counted from before the request was sent: never later than Redis's expiry.
            self._lease_until = started + self.lease_s
            self._next_lead = started + self.renew_s
            if not was_leading:
                self.leading_since_ms = int(server_ms)
                logger.info("beat leading name=%s since_ms=%s", self.name, server_ms)
            return
        if was_leading:
            logger.warning("beat lost the lead name=%s", self.name)
        self._lease_until = 0.0
        self.leading_since_ms = None
        # Check again when the holder's lease would expire, if it is not renewed by then.
        self._next_lead = time.monotonic() + min(
            self.renew_s, max(int(left_ms), 0) / 1000 + HANDOVER_MARGIN_S
        )

    def _step_down(self) -> None:
        self._lease_until = 0.0
        self.leading_since_ms = None
        self._next_lead = time.monotonic()

    def _resign(self) -> None:
        # Also when this beat does not believe it leads: a renewal whose reply was lost may
        # have given it the lease. The script leaves another beat's lease alone.
        if not self._asked_lease:
            return
        try:
            self.broker._eval(RESIGN, [self.app.keys.beat_leader], [self.name])
        except RedisError as exc:
            logger.warning("beat could not give up its lease (it expires by itself): %s", exc)
        self._lease_until = 0.0

    # -- sending runs -------------------------------------------------------------------------

    def _fire_due(self) -> float:
        """Send every due run; return the seconds until the next slot (or ``inf``)."""
        found, fired = Schedules(self.app, self.broker).snapshot()
        now = self._now_ms()
        since = self.leading_since_ms if self.leading_since_ms is not None else now
        on_time_from = since - int(self.renew_s * 1000)
        default = self.app.conf.beat_missed
        for name, (data, entry) in found.items():
            run = due_run(entry, now, fired.get(name), on_time_from, default)
            if run is None:
                continue
            code = self._fire(entry, data, run)
            if code == -1:
                logger.warning("beat no longer leads; not sending name=%s", self.name)
                self._step_down()
                return 0.0
            if code == -2:
                return 0.0  # changed while we read it: read again now
        entries = {name: stored.entry for name, stored in found.items()}
        return (next_slot(entries, now) - now) / 1000

    def _fire(self, entry: Periodic, data: bytes, run: Run) -> int:
        """Send (or record as skipped) one run with ``lua/fire.lua``; return its code."""
        task_id = run_id(entry.name, run.slot_ms)
        task = self.app.tasks.get(entry.task) or entry.task
        queue = entry.queue or (
            self.app.conf.default_queue if isinstance(task, str) else task.queue
        )
        envelope, priority = b"", 0
        if run.send:
            try:
                call = Call.build(
                    self.app,
                    task,
                    entry.args,
                    dict(entry.kwargs),
                    {
                        "task_id": task_id,
                        "queue": entry.queue,
                        "priority": entry.priority,
                        "expires": entry.expires_s,
                    },
                )
            except OmnitaskError as exc:
                # The same error would come back at every slot; record the slot, say why.
                logger.error("periodic run not sent schedule=%s error=%s", entry.name, exc)
            else:
                envelope, priority, queue = call.item[0], call.item[1], call.queue
        qk = self.app.keys.queue(queue)
        keys = self.app.keys
        maxlen = self.app.conf.events_maxlen if self.app.conf.events else 0
        code = int(
            self.broker._eval(
                FIRE,
                [
                    *(keys.beat_leader, keys.beat_schedules, keys.beat_fired, qk.events),
                    *(keys.queues, qk.wake, *qk.ready),
                ],
                [
                    *(self.name, entry.name, data, run.slot_ms, envelope, priority, task_id),
                    *(entry.task, qk.name, maxlen, WAKE_TOKENS_MAX),
                ],
            )
        )
        if code in _FIRE_CODES:
            log = logger.warning if run.late and code == 2 else logger.info
            log(
                "periodic run %s schedule=%s slot_ms=%s task_id=%s late=%s",
                _FIRE_CODES[code],
                entry.name,
                run.slot_ms,
                task_id,
                run.late,
            )
        return code
