"""Control workers and queues: the control channel, the worker status hash, pause and purge.

Worker commands (shutdown, pool-grow, pool-shrink) travel through Redis, never a socket:

1. :meth:`Control.send` pushes a JSON command onto each target worker's list
   ``keys.control(worker)``, which expires with the sender's timeout.
2. Each supervisor reads and deletes its list inside the MULTI of its heartbeat (every
   ``heartbeat_interval_s``): no extra round trip and no polling loop of its own, at the cost
   of a latency of up to one heartbeat interval.
3. It acts and pushes a JSON reply onto ``keys.control_reply(id)`` (kept
   ``CONTROL_REPLY_TTL_S``), where the sender waits for it with BLPOP until every target has
   answered or its timeout passed.

Queue commands need no worker. Pausing sets the queue's ``paused`` flag, which
``lua/claim.lua`` checks in the same step as every claim, so no worker takes a task from it
once the pause returns; sends still land. Resuming deletes it and wakes idle workers. Purging
deletes a queue's ready and delayed tasks (never those in flight) in one MULTI.

The supervisor also keeps a status hash (:class:`WorkerStatus`, ``keys.worker_status``)
fresh with its heartbeats; ``omnitask.inspect`` reads it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from omnitask.broker.keys import CONTROL_REPLY_TTL_S, WAKE_TOKENS_MAX, Keyspace

if TYPE_CHECKING:
    from omnitask.app import OmniTask
    from omnitask.broker.commands import Command

__all__ = (
    "STATUS_TTL_HEARTBEATS",
    "Control",
    "ControlCommand",
    "ControlResult",
    "Purged",
    "Reply",
    "WorkerCommand",
    "WorkerStatus",
    "known_queues",
    "paused_queues",
    "read_workers",
)

WorkerCommand = Literal["shutdown", "pool-grow", "pool-shrink"]
"""The commands a worker acts on."""

WORKER_COMMANDS: tuple[WorkerCommand, ...] = ("shutdown", "pool-grow", "pool-shrink")

STATUS_TTL_HEARTBEATS = 3
"""A worker's status hash expires this many heartbeat intervals after its last heartbeat:
that is when tools stop counting the worker as alive."""


# -- the wire format ------------------------------------------------------------------------


@dataclass(frozen=True)
class ControlCommand:
    """One command for a worker, as it travels through its control list.

    Attributes:
        id: Names the reply list (``keys.control_reply(id)``).
        command: What to do.
        n: How many processes, for pool-grow and pool-shrink.
    """

    id: str
    command: WorkerCommand
    n: int = 0

    def encode(self) -> str:
        """The command as JSON."""
        return json.dumps({"id": self.id, "cmd": self.command, "n": self.n})

    @classmethod
    def decode(cls, raw: bytes | str) -> ControlCommand:
        """Read a command written by :meth:`encode`.

        Raises:
            ValueError: It is not one (bad JSON, an unknown command, a bad count).
        """
        data = json.loads(raw)
        command, n = data.get("cmd"), data.get("n", 0)
        if command not in WORKER_COMMANDS or not isinstance(n, int) or n < 0:
            raise ValueError(f"not a control command: {raw!r}")
        return cls(str(data["id"]), command, n)


@dataclass(frozen=True)
class Reply:
    """A worker's answer to a control command.

    Attributes:
        worker: The worker that answered.
        ok: Whether it did what was asked.
        detail: What it did, or why not.
        concurrency: Its number of child processes after the command.
    """

    worker: str
    ok: bool
    detail: str
    concurrency: int

    def encode(self) -> str:
        """The reply as JSON."""
        return json.dumps(self.as_dict())

    @classmethod
    def decode(cls, raw: bytes | str) -> Reply:
        """Read a reply written by :meth:`encode`."""
        data = json.loads(raw)
        return cls(str(data["worker"]), bool(data["ok"]), str(data["detail"]), data["concurrency"])

    def as_dict(self) -> dict[str, Any]:
        """The reply as a JSON-ready dict."""
        return {
            "worker": self.worker,
            "ok": self.ok,
            "detail": self.detail,
            "concurrency": self.concurrency,
        }


@dataclass(frozen=True)
class WorkerStatus:
    """What a worker publishes about itself in its status hash, refreshed by its heartbeats.

    A worker whose status hash expired (it stopped heart-beating: killed, or stuck) but that is
    still in the worker list has ``alive`` False and only ``name`` and ``heartbeat_ms`` set.

    Attributes:
        name: The worker name (``host:pid`` unless given with ``-n``).
        heartbeat_ms: Its last heartbeat (unix ms, its own clock).
        alive: Whether its status is fresh (at most :data:`STATUS_TTL_HEARTBEATS` old).
        pid: The supervisor's process id.
        host: The host it runs on.
        version: Its omnitask version.
        started_ms: When it started (unix ms).
        heartbeat_interval_s: Its heartbeat interval.
        concurrency: Child processes it keeps (changed by pool-grow and pool-shrink).
        processes: Child processes alive at its last heartbeat.
        spawned: Child processes it started, replacements included.
        queues: The queues it consumes.
        tasks: The names of the tasks it can run.
        running: Consumer (worker child) -> (id of the ordinary task it runs, when its
            supervisor first saw it running, unix ms). Async tasks are not in it.
    """

    name: str
    heartbeat_ms: int
    alive: bool = True
    pid: int = 0
    host: str = ""
    version: str = ""
    started_ms: int = 0
    heartbeat_interval_s: float = 0.0
    concurrency: int = 0
    processes: int = 0
    spawned: int = 0
    queues: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()
    running: Mapping[str, tuple[str, int]] = field(default_factory=dict)

    def fields(self, *, full: bool) -> dict[str, str | int | float]:
        """The hash fields: those that change at every heartbeat, and with ``full`` the rest."""
        out: dict[str, str | int | float] = {
            "hb": self.heartbeat_ms,
            "concurrency": self.concurrency,
            "processes": self.processes,
            "spawned": self.spawned,
            "running": json.dumps({c: list(run) for c, run in self.running.items()}),
        }
        if full:
            out |= {
                "pid": self.pid,
                "host": self.host,
                "version": self.version,
                "started": self.started_ms,
                "interval": self.heartbeat_interval_s,
                "queues": ",".join(self.queues),
                "tasks": json.dumps(list(self.tasks)),
            }
        return out

    @classmethod
    def from_hash(cls, name: str, heartbeat_ms: int, raw: Mapping[bytes, bytes]) -> WorkerStatus:
        """Read a status hash as redis-py returns it; an empty one means the worker went quiet."""
        if not raw:
            return cls(name, heartbeat_ms, alive=False)
        text = {k.decode(): v.decode(errors="replace") for k, v in raw.items()}
        running = json.loads(text.get("running") or "{}")
        return cls(
            name=name,
            heartbeat_ms=int(text.get("hb") or heartbeat_ms),
            pid=int(text.get("pid") or 0),
            host=text.get("host", ""),
            version=text.get("version", ""),
            started_ms=int(text.get("started") or 0),
            heartbeat_interval_s=float(text.get("interval") or 0.0),
            concurrency=int(text.get("concurrency") or 0),
            processes=int(text.get("processes") or 0),
            spawned=int(text.get("spawned") or 0),
            queues=tuple(q for q in text.get("queues", "").split(",") if q),
            tasks=tuple(json.loads(text.get("tasks") or "[]")),
            running={c: (str(run[0]), int(run[1])) for c, run in running.items()},
        )

    def as_dict(self) -> dict[str, Any]:
        """The status as a JSON-ready dict (times in unix ms)."""
        return {
            "name": self.name,
            "alive": self.alive,
            "heartbeat_ms": self.heartbeat_ms,
            "pid": self.pid,
            "host": self.host,
            "version": self.version,
            "started_ms": self.started_ms,
            "heartbeat_interval_s": self.heartbeat_interval_s,
            "concurrency": self.concurrency,
            "processes": self.processes,
            "spawned": self.spawned,
            "queues": list(self.queues),
            "running": {c: {"task_id": t, "since_ms": ms} for c, (t, ms) in self.running.items()},
        }


# -- Redis commands ---------------------------------------------------------------------------


def status_commands(
    keys: Keyspace, status: WorkerStatus, *, full: bool, ttl_ms: int
) -> list[Command]:
    """Commands that refresh a worker's status hash and its expiry.

    The first PEXPIRE replies 0 when the hash had expired (a long Redis outage): the caller
    then writes it ``full`` at the next heartbeat, since only the changing fields came back.
    """
    key = keys.worker_status(status.name)
    flat = [item for pair in status.fields(full=full).items() for item in pair]
    return [("PEXPIRE", key, ttl_ms), ("HSET", key, *flat), ("PEXPIRE", key, ttl_ms)]


def take_commands(keys: Keyspace, worker: str) -> list[Command]:
    """Commands that read and delete the control commands waiting for ``worker``."""
    key = keys.control(worker)
    return [("LRANGE", key, 0, -1), ("DEL", key)]


def reply_commands(keys: Keyspace, request_id: str, reply: Reply) -> list[Command]:
    """Commands that hand ``reply`` to the sender of command ``request_id``."""
    key = keys.control_reply(request_id)
    return [("RPUSH", key, reply.encode()), ("EXPIRE", key, CONTROL_REPLY_TTL_S)]


def read_workers(app: OmniTask) -> list[WorkerStatus]:
    """The workers in the app's worker list with their status, sorted by name.

    Workers that stopped heart-beating stay in the list (with ``alive`` False) until live
    workers prune them, some ten heartbeat intervals later.
    """
    redis = app.broker.redis
    members: Any = redis.zrange(app.keys.workers, 0, -1, withscores=True)
    pipe = redis.pipeline(transaction=False)
    for name, _ in members:
        pipe.hgetall(app.keys.worker_status(name.decode()))
    hashes = pipe.execute()
    workers = [
        WorkerStatus.from_hash(name.decode(), int(score), raw)
        for (name, score), raw in zip(members, hashes, strict=True)
    ]
    return sorted(workers, key=lambda w: w.name)


# -- the sender's side ------------------------------------------------------------------------


@dataclass(frozen=True)
class ControlResult:
    """What came of a worker command.

    Attributes:
        replies: The replies, in the order they came.
        silent: Workers that were sent the command and did not reply in time.
        unknown: A worker named in the command that is not alive.
    """

    replies: list[Reply]
    silent: list[str]
    unknown: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every worker that was asked replied, and did what was asked."""
        return not self.silent and not self.unknown and all(r.ok for r in self.replies)


@dataclass(frozen=True)
class Purged:
    """How many tasks a purge deleted from a queue.

    Attributes:
        queue: The queue.
        ready: Tasks that were ready to run.
        delayed: Tasks that were due later.
    """

    queue: str
    ready: int
    delayed: int


class Control:
    """Control an app's workers and queues: ``Control(app)``."""

    def __init__(self, app: OmniTask) -> None:
        """Control the workers and queues of ``app``."""
        self._app = app

    def default_timeout_s(self) -> float:
        """How long to wait for replies by default: two heartbeats and a margin."""
        return max(5.0, 2 * self._app.conf.heartbeat_interval_s + 1.0)

    def send(
        self,
        command: WorkerCommand,
        *,
        worker: str | None = None,
        n: int = 0,
        timeout_s: float | None = None,
    ) -> ControlResult:
        """Send ``command`` to ``worker`` (default: every live worker) and wait for replies.

        Workers act on it at their next heartbeat, so expect up to ``heartbeat_interval_s``.

        Args:
            command: What to do.
            worker: Only this worker.
            n: How many processes, for pool-grow and pool-shrink (at least 1).
            timeout_s: How long to wait for the replies (default :meth:`default_timeout_s`).

        Raises:
            ValueError: ``n`` is below 1 for a pool command.
        """
        if command != "shutdown" and n < 1:
            raise ValueError(f"{command} needs a number of processes of at least 1, got {n}")
        timeout = self.default_timeout_s() if timeout_s is None else timeout_s
        live = [w.name for w in read_workers(self._app) if w.alive]
        if worker is not None and worker not in live:
            return ControlResult([], [], [worker])
        targets = [worker] if worker is not None else live
        if not targets:
            return ControlResult([], [])
        message = ControlCommand(os.urandom(8).hex(), command, n)
        keys = self._app.keys
        commands: list[Command] = []
        for name in targets:
            # The list expires with our patience: a command nobody read in time is void.
            key = keys.control(name)
            commands += [("LPUSH", key, message.encode()), ("PEXPIRE", key, int(timeout * 1000))]
        self._app.broker.run(commands)
        replies = self._collect(message.id, len(targets), timeout)
        answered = {r.worker for r in replies}
        return ControlResult(replies, [t for t in targets if t not in answered])

    def _collect(self, request_id: str, count: int, timeout_s: float) -> list[Reply]:
        redis = self._app.broker.redis
        key = self._app.keys.control_reply(request_id)
        deadline = time.monotonic() + timeout_s
        replies: list[Reply] = []
        while len(replies) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            popped: Any = redis.blpop([key], timeout=max(remaining, 0.01))
            if popped is None:
                break
            replies.append(Reply.decode(popped[1]))
        redis.delete(key)
        return replies

    def shutdown(
        self, worker: str | None = None, *, timeout_s: float | None = None
    ) -> ControlResult:
        """Warm shutdown of ``worker`` (default: every live worker), as by SIGTERM."""
        return self.send("shutdown", worker=worker, timeout_s=timeout_s)

    def pool_grow(
        self, n: int, worker: str | None = None, *, timeout_s: float | None = None
    ) -> ControlResult:
        """Start ``n`` more child processes in ``worker`` (default: in every live worker).

        Raises:
            ValueError: ``n`` is below 1.
        """
        return self.send("pool-grow", worker=worker, n=n, timeout_s=timeout_s)

    def pool_shrink(
        self, n: int, worker: str | None = None, *, timeout_s: float | None = None
    ) -> ControlResult:
        """Stop ``n`` child processes of ``worker`` (default: of every live worker).

        Each finishes the task it runs (up to ``shutdown_timeout_s``, then it is killed and
        its task handed back), idle children first; a worker keeps at least one child.

        Raises:
            ValueError: ``n`` is below 1.
        """
        return self.send("pool-shrink", worker=worker, n=n, timeout_s=timeout_s)

    def pause_queue(self, queue: str) -> bool:
        """Stop every worker from taking tasks from ``queue``; sends still queue them.

        Returns:
            False when it was paused already.
        """
        qk = self._app.keys.queue(queue)
        self._app.broker.register_queues([qk.name])
        replies = self._app.broker.run([("SET", qk.paused, "1", "NX")])
        return replies[0] is not None

    def resume_queue(self, queue: str) -> bool:
        """Let workers take tasks from ``queue`` again, and wake the idle ones at once.

        Returns:
            False when it was not paused.
        """
        qk = self._app.keys.queue(queue)
        replies = self._app.broker.run(
            [
                ("DEL", qk.paused),
                ("LPUSH", qk.wake, *("1",) * WAKE_TOKENS_MAX),
                ("LTRIM", qk.wake, 0, WAKE_TOKENS_MAX - 1),
            ]
        )
        return bool(replies[0])

    def paused(self) -> list[str]:
        """The names of the paused queues, sorted."""
        return paused_queues(self._app)

    def purge(self, queue: str) -> Purged:
        """Delete ``queue``'s ready and delayed tasks in one atomic step; not those in flight.

        Their results stay PENDING: a caller blocked in ``get()`` waits until its timeout.
        """
        qk = self._app.keys.queue(queue)
        counts: list[Command] = [*(("LLEN", key) for key in qk.ready), ("ZCARD", qk.delayed)]
        # UNLINK frees a long list in the background instead of blocking Redis meanwhile.
        replies = self._app.broker.run([*counts, ("UNLINK", *qk.ready, qk.delayed)])
        return Purged(qk.name, sum(int(n) for n in replies[:-2]), int(replies[-2]))

    def revoke(
        self, task_ids: Sequence[str], *, terminate: bool = False, queue: str | None = None
    ) -> list[bool]:
        """Revoke tasks, as ``AsyncResult(id, queue=queue).revoke(terminate=...)`` does.

        Without ``queue``, a task's queue is not known: each id is revoked on every queue of
        the app that holds no final result for it (one script per queue, since each queue's
        revocations live under its own hash tag).

        Returns:
            For each task, False when it had already finished.
        """
        if queue is not None:
            return [
                self._app.AsyncResult(tid, queue=queue).revoke(terminate=terminate)
                for tid in task_ids
            ]
        queues = known_queues(self._app) or [self._app.conf.default_queue]
        out = []
        for tid in task_ids:
            pipe = self._app.broker.results.pipeline(transaction=False)
            for name in queues:
                pipe.exists(self._app.keys.queue(name).result(tid))
            if any(pipe.execute()):
                out.append(False)  # it finished on one of them (maybe revoked already)
                continue
            results = [
                self._app.AsyncResult(tid, queue=name).revoke(terminate=terminate)
                for name in queues
            ]
            out.append(all(results))
        return out


def known_queues(app: OmniTask) -> list[str]:
    """The app's queues (those sent to, consumed or paused), sorted."""
    members: Any = app.broker.redis.smembers(app.keys.queues)
    return sorted(m.decode() for m in members)


def paused_queues(app: OmniTask, queues: Sequence[str] | None = None) -> list[str]:
    """Those of ``queues`` (default: all the app's) that are paused, sorted.

    One read per queue, pipelined: each queue's flag has its own hash tag.
    """
    names = known_queues(app) if queues is None else sorted(queues)
    pipe = app.broker.redis.pipeline(transaction=False)
    for name in names:
        pipe.exists(app.keys.queue(name).paused)
    return [name for name, flag in zip(names, pipe.execute(), strict=True) if flag]
