"""The only code that talks to Redis: runs the scripts and MULTI blocks of the protocol."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, TypeVar

import redis
from redis.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    MovedError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    TryAgainError,
)
from redis.sentinel import MasterNotFoundError

from omnitask.broker import commands as cmd
from omnitask.broker.connect import cluster_client, is_cluster_url, sync_client
from omnitask.broker.keys import WAKE_TOKENS_MAX, Keyspace, QueueKeys
from omnitask.broker.scripts import (
    ADMIT,
    BURY,
    CLAIM,
    ENQUEUE,
    RENEW,
    REQUEUE,
    RETRY,
    REVOKE,
    SCRIPTS,
    SETTLE,
    UNIQUE,
    Script,
)
from omnitask.config import Config, mask_url
from omnitask.errors import BrokerConnectionError, BrokerUnavailable
from omnitask.messages import now_ms

__all__ = ("Ack", "Broker", "Claim", "Claimed", "Client", "Server")

T = TypeVar("T")

_pack: Callable[[cmd.Command], bytes] | None
try:
    from hiredis import pack_command as _pack  # type: ignore[assignment]
except ImportError:  # pragma: no cover - hiredis is a dependency, but optional in redis-py
    _pack = None

logger = logging.getLogger(__name__)

Server = redis.Redis
"""A client of one Redis server: a plain one, the master Sentinel names, or a cluster's master."""
Client = redis.Redis | RedisCluster
"""A client of one Redis server or of a Redis Cluster."""

SLOTS_REFUSED = (MovedError, AskError, ClusterDownError, TryAgainError)
"""A cluster's refusals of a command it did not run: the slot moved, or has no master yet."""

_REFUSAL_CLASSES = (ReadOnlyError, OutOfMemoryError, MasterDownError, BusyLoadingError)

REFUSALS = ("NOREPLICAS", "READONLY", "OOM", "MASTERDOWN", "MISCONF", "BUSY", "LOADING")
"""Error codes of a server that is up but refuses writes for now (too few replicas in sync,
a demoted master, maxmemory, a failed save, a long script, a load): nothing of the command
applied, and waiting is the cure."""


def refuses_writes(exc: Exception) -> bool:
    """Whether ``exc`` is a server's refusal of a write for now (see :data:`REFUSALS`)."""
    # redis-py strips the code from the message of the errors it has classes for (READONLY,
    # OOM, MASTERDOWN ...) and keeps it in status_code; the others keep it in the message.
    code = getattr(exc, "status_code", None) or str(exc).partition(" ")[0]
    return code in REFUSALS or isinstance(exc, _REFUSAL_CLASSES)


SLOTS_REFRESH_S = 0.5
"""Shortest time between two reads of a cluster's slot map after errors."""

WAKE_SLICE_S = 0.05
"""Longest wait on one queue's wake list when a cluster worker waits on queues in turn."""

PROMOTE_MAX = 1000
"""Delayed envelopes promoted per claim at most (Lua's unpack() has a stack limit near 8000)."""


class Claimed(NamedTuple):
    """One claimed envelope, its deliveries after worker deaths, and whether it was revoked."""

    body: bytes
    deliveries: int
    revoked: bool = False


class Claim(NamedTuple):
    """What a claim returned: the server time, the next delayed due time, the envelopes."""

    now_ms: int
    next_due_ms: int | None
    tasks: list[Claimed]


class Ack(NamedTuple):
    """One task to finish in :meth:`Broker.ack_many`: what :meth:`Broker.ack` takes."""

    queue: str
    body: bytes
    task_id: str
    result: tuple[bytes, int] | None
    event: cmd.Command | None
    extra: Sequence[cmd.Command] = ()


def _run_pipelined(client: redis.Redis, commands: Sequence[cmd.Command]) -> list[Any]:
    """Send ``commands`` in one write; return their replies, an error reply as its exception.

    redis-py's Pipeline does the same with a parse step and callbacks per reply, and packs
    every argument in Python (type checks per argument): on the worker's hot path that cost
    more than Redis itself (profiled: about half of an ack), and a third of the client's time
    per enqueue. hiredis packs in C when it is installed. Every reply is read, also after an
    error reply, so the connection stays in step; a connection that failed midway is closed,
    so that no half-read reply is left on it.
    """
    pool = client.connection_pool
    # redis-py leaves these connection methods unannotated; Any keeps mypy --strict honest
    # about that instead of sprinkling ignores.
    conn: Any = pool.get_connection()
    try:
        conn.send_packed_command(
            [b"".join(map(_pack, commands))] if _pack else conn.pack_commands(commands)
        )
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(conn.read_response())
            except redis.ResponseError as exc:
                replies.append(exc)
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)
    return replies


def _run_one(client: redis.Redis, command: cmd.Command) -> Any:
    """Send one command and return its reply (see :func:`_run_pipelined`); raise an error."""
    reply = _run_pipelined(client, [command])[0]
    if isinstance(reply, Exception):
        raise reply
    return reply


def _run_multi(client: redis.Redis, commands: Sequence[cmd.Command]) -> list[Any]:
    """Send MULTI, ``commands``, EXEC in one write and return EXEC's replies, raw.

    Errors of single commands come back in the list as exception objects; an error of the
    whole transaction (a command refused when queued, EXECABORT) or of the connection is
    raised.
    """
    replies = _run_pipelined(client, [("MULTI",), *commands, ("EXEC",)])
    refused = next((reply for reply in replies if isinstance(reply, Exception)), None)
    if refused is not None:
        raise refused
    executed: list[Any] = replies[-1]
    return executed


def _failed_to_connect(exc: Exception) -> bool:
    """Whether redis-py failed while opening the connection, so nothing was sent (or applied).

    redis-py words these errors "Error <errno> connecting to <host>" and "Timeout connecting
    to server"; every error after a command was sent is worded otherwise. Through Sentinel,
    no sentinel naming a master that is up (MasterNotFoundError) is raised while connecting,
    and "The previous master is now a slave" stands for a READONLY reply: the server was
    demoted and refused the write (a replica applies none), so a MULTI was discarded.
    """
    if isinstance(exc, MasterNotFoundError):
        return True
    text = str(exc)
    return (
        "connecting to" in text
        or text.startswith("Timeout connecting")
        or text == "The previous master is now a slave"
    )


def _first_key(commands: Sequence[cmd.Command]) -> str:
    """The key of a step's first command: where it runs on a cluster (EVAL's keys follow 2)."""
    first = commands[0]
    key = first[3] if first[0] in ("EVAL", "EVALSHA") else first[1]
    return key.decode() if isinstance(key, bytes) else str(key)


def _parse_claim(reply: Sequence[Any]) -> Claim:
    due = int(reply[1])
    tasks = [
        Claimed(reply[i], int(reply[i + 1]), reply[i + 2] == 1) for i in range(2, len(reply), 3)
    ]
    return Claim(int(reply[0]), None if due < 0 else due, tasks)


class Broker:
    """A synchronous connection to an app's Redis (and result backend), speaking the protocol.

    Creating one opens nothing; connections are made on first use. Safe to use from one thread
    at a time per method call (redis-py's pool hands each call its own connection).
    """

    def __init__(
        self, config: Config, keys: Keyspace, *, socket_timeout_s: float | None = None
    ) -> None:
        """Prepare clients for ``config.broker_url`` and ``config.result_url``.

        ``socket_timeout_s`` bounds every reply wait; leave it None for clients that block in
        Redis (``get()``, idle workers), set it where a half-open connection must not hang
        (the supervisor renewing leases).
        """
        self.config = config
        self.keys = keys
        self.socket_timeout_s = socket_timeout_s
        self.shared_results = config.result_url == config.broker_url
        self._redis: Client | None = None
        self._results: Client | None = None
        self._known_queues: set[str] = set()
        self._slots_read: dict[int, float] = {}  # id of a cluster client -> when read
        self._on_cluster = is_cluster_url(config.broker_url)

    @property
    def redis(self) -> Client:
        """The broker's client (made on first use: a cluster client connects when made)."""
        if self._redis is None:
            self._redis = self._client(self.config.broker_url)
        return self._redis

    @property
    def results(self) -> Client:
        """The client of the Redis where results live: the broker's, or the result backend's."""
        if self.shared_results:
            return self.redis
        if self._results is None:
            self._results = self._client(self.config.result_url)
        return self._results

    @property
    def is_cluster(self) -> bool:
        """Whether the broker is a Redis Cluster (each queue's keys on the master of its slot)."""
        return self._on_cluster

    def _client(self, url: str) -> Client:
        # Never re-sends a command by itself: see sync_client.
        make = cluster_client if is_cluster_url(url) else sync_client
        return make(
            url,
            connect_timeout_s=self.config.connect_timeout_s,
            socket_timeout_s=self.socket_timeout_s,
        )

    def node(self, key: str, client: Client | None = None) -> Server:
        """The client of the server that holds ``key``: on a Redis Cluster, its slot's master.

        Scripts and MULTI blocks go there directly: each touches the keys of one hash tag, so
        one slot, and redis-py's cluster pipeline has no MULTI of its own to offer.
        """
        if client is None:
            if not self._on_cluster and self._redis is not None:
                return self._redis  # type: ignore[return-value]  # not a cluster: one server
            client = self.redis
        target = client
        if isinstance(target, RedisCluster):
            node = target.get_node_from_key(key)  # type: ignore[no-untyped-call, unused-ignore]
            return target.get_redis_connection(node)
        return target

    def refresh_slots(self) -> None:
        """Read a cluster's map of slots to masters again (at most every ``SLOTS_REFRESH_S``).

        Called after an error of a script or MULTI sent to a master directly: the master may
        have died and a replica taken its slots over, or the slot moved. redis-py's own
        commands do this by themselves; those sent past it must ask.
        """
        now = time.monotonic()
        # The broker's, and the result backend's when it is another cluster.
        for client in {id(c): c for c in (self._redis, self._results) if c is not None}.values():
            if not isinstance(client, RedisCluster):
                continue
            if now - self._slots_read.get(id(client), 0.0) < SLOTS_REFRESH_S:
                continue
            self._slots_read[id(client)] = now
            try:
                client.nodes_manager.initialize()
            except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
                logger.warning("could not read the cluster's slots error=%s", exc)

    @contextlib.contextmanager
    def _following_slots(self) -> Iterator[None]:
        """Read the slot map again when a step sent to a master directly failed, and re-raise."""
        try:
            yield
        except (*SLOTS_REFUSED, redis.ConnectionError, redis.TimeoutError):
            self.refresh_slots()
            raise

    def same_slot(self, queues: Sequence[str]) -> bool:
        """Whether one step may touch the keys of all of ``queues`` (always, off a cluster)."""
        return not self.is_cluster or len(set(queues)) <= 1

    def close(self) -> None:
        """Close every connection (they reopen on next use)."""
        if self._redis is not None:
            self._redis.close()
            if isinstance(self._redis, RedisCluster):
                self._redis = None  # a closed cluster client keeps no slot map: make a new one
        if self._results is not None:
            self._results.close()
            if isinstance(self._results, RedisCluster):
                self._results = None

    def ping(self) -> None:
        """Round trip to the broker (and result backend), raising if either is unreachable."""
        self.redis.ping()
        if not self.shared_results:
            self.results.ping()

    # -- running scripts and MULTI blocks -------------------------------------------------

    def _eval(
        self,
        script: Script,
        keys: Sequence[str],
        args: Sequence[Any],
        client: Client | None = None,
    ) -> Any:
        target = self.node(keys[0], client)
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        with self._following_slots():
            try:
                return _run_one(target, command)
            except NoScriptError:
                # First use on this server (a promoted replica has none), or it restarted and
                # forgot its script cache.
                target.script_load(script.source)
                return _run_one(target, command)

    def load_scripts(self) -> None:
        """Load every script into the broker's script cache (each master's, on a cluster)."""
        client = self.redis
        servers = (
            [client.get_redis_connection(n) for n in client.get_primaries()]  # type: ignore[no-untyped-call, unused-ignore]
            if isinstance(client, RedisCluster)
            else [client]
        )
        for server in servers:
            for script in SCRIPTS:
                server.script_load(script.source)

    def run(self, commands: Sequence[cmd.Command]) -> list[Any]:
        """Run ``commands`` on the broker in one MULTI (one atomic step).

        On a cluster they go to the master of their first key, and must all share its slot.
        """
        return self._multi(self.node(_first_key(commands)), commands)

    def run_with_results(
        self, commands: Sequence[cmd.Command], results: Sequence[cmd.Command] = ()
    ) -> None:
        """Run ``commands`` on the broker and ``results`` where results live.

        One step when they share a Redis; else results first, as an ack does.
        """
        self._write(list(results), list(commands), essential=0)

    def _multi(
        self, client: Server, commands: Sequence[cmd.Command], essential: int | None = None
    ) -> list[Any]:
        """Run ``commands`` in one MULTI and return their replies.

        A command inside MULTI can fail at run time (a key of the wrong type) while the others
        apply. When one of the first ``essential`` commands failed, the step did not happen:
        raise. When only a later one failed (an event not published), the step happened:
        log it rather than raise, since running the step again would repeat what applied.
        """
        with self._following_slots():
            replies = _run_multi(client, commands)
        limit = len(replies) if essential is None else essential
        for i, reply in enumerate(replies):
            if isinstance(reply, Exception):
                if i < limit:
                    raise reply
                logger.error("redis command failed command=%s error=%s", commands[i][0], reply)
        return replies

    def _write(
        self, result: list[cmd.Command], commands: list[cmd.Command], essential: int
    ) -> list[Any]:
        """Run ``commands`` and ``result`` in one MULTI, or result first on a separate backend."""
        if self.shared_results:
            both = commands + result
            return self._multi(self.node(_first_key(both)), both, essential) if both else []
        if result:
            self._multi(self.node(_first_key(result), self.results), result)
        return self._multi(self.node(_first_key(commands)), commands, essential) if commands else []

    # -- transitions ------------------------------------------------------------------------

    def enqueue(
        self, queue: str, envelopes: Sequence[tuple[bytes, int, int | None, str, str]]
    ) -> None:
        """Queue envelopes (``bytes, priority, due ms or None, id, name``) in one step.

        One script call (``lua/enqueue.lua``), packed by hiredis, whatever their number.

        Raises:
            BrokerUnavailable: Redis could not be reached (see ``enqueue_timeout_s``).
        """
        qk = self.keys.queue(queue)
        ids = [e[3] for e in envelopes]
        if queue not in self._known_queues:
            self.register_queues([queue], ids)
        keys: list[str] = [qk.delayed, qk.wake, qk.events]
        slots: dict[int, int] = {}  # priority -> index of its ready list in KEYS (from 1)
        args: list[Any] = [queue, self._events_maxlen, WAKE_TOKENS_MAX]
        # Runs of consecutive tasks that go to the same place under the same name (see
        # enqueue.lua): a bulk send is one run, two arguments per task.
        run: tuple[Any, ...] = ()
        pairs: list[Any] = []
        for body, priority, due_ms, task_id, name in envelopes:
            if due_ms is None:
                slot = slots.get(priority)
                if slot is None:
                    keys.append(qk.ready[priority])
                    slot = slots[priority] = len(keys)
                where: tuple[Any, ...] = (slot, "", name)
            else:
                where = ("", due_ms, name)
            if where != run:
                if pairs:
                    args += (*run, len(pairs) // 2, *pairs)
                run, pairs = where, []
            pairs += (body, task_id)
        if pairs:
            args += (*run, len(pairs) // 2, *pairs)
        self._send(lambda: self._enqueue(keys, args), ids)

    def _enqueue(self, keys: Sequence[str], args: Sequence[Any]) -> None:
        errors = self._eval(ENQUEUE, keys, args)
        for error in errors:  # queued all the same: an event or wake-up did not apply
            logger.error("redis command failed on enqueue error=%s", error)

    def register_queues(self, queues: Sequence[str], task_ids: Sequence[str] = ()) -> None:
        """Add ``queues`` to the app's set of queues, once per client, before sending to them.

        A step of its own, not part of the send: the set has the app's hash tag, a queue's
        tasks the queue's. Added first, so a reader never finds tasks of a queue it does not
        list; a send that then fails leaves only a name.
        """
        new = [q for q in queues if q not in self._known_queues]
        if new:
            self._send(lambda: self.redis.sadd(self.keys.queues, *new), task_ids)
            self._known_queues.update(new)

    def send_commands(
        self, commands: Sequence[cmd.Command], task_ids: Sequence[str], queues: Sequence[str]
    ) -> None:
        """Run the commands that queue ``task_ids`` (a workflow) on ``queues`` in one MULTI.

        Raises:
            BrokerUnavailable: As :meth:`enqueue`.
        """
        self.register_queues(queues, task_ids)
        self._send(lambda: self._multi(self.node(_first_key(commands)), commands), task_ids)

    def enqueue_unique(
        self,
        queue: str,
        envelope: tuple[bytes, int, int | None, str, str],
        key: str,
        window_ms: int,
        *,
        debounce: bool,
    ) -> tuple[bool, str]:
        """Queue a unique task unless its unique key holds another (see ``lua/unique.lua``).

        Returns whether it was queued, and the id of the task that stands for the key: this
        one, or the one already there.
        """
        qk = self.keys.queue(queue)
        body, priority, due_ms, task_id, name = envelope
        keys = [qk.unique(key), qk.ready[priority], qk.delayed, qk.wake, qk.events]
        self.register_queues([queue], [task_id])
        args = [body, task_id, name, window_ms, "" if due_ms is None else due_ms]
        args += [int(debounce), self._events_maxlen, queue]
        reply = self._send(lambda: self._eval(UNIQUE, keys, args), [task_id])
        stood = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
        return bool(reply[0]), stood

    def _send(self, step: Callable[[], T], task_ids: Sequence[str]) -> T:
        """Run a sending step, waiting for Redis while it refuses connections.

        Raises:
            BrokerConnectionError: Redis refused the credentials; nothing was queued.
            BrokerUnavailable: Redis stayed unreachable for ``enqueue_timeout_s`` or refused
                the write for want of replicas in sync (nothing was queued), or the connection
                broke after the step was sent (it may or may not have applied: the message
                names the tasks).
        """
        refused_until = time.monotonic() + self.config.enqueue_timeout_s
        while True:
            try:
                return step()
            except redis.AuthenticationError as exc:
                # Raised while the connection was set up: nothing was sent.
                raise BrokerConnectionError(
                    f"Redis at {mask_url(self.config.broker_url)} refused the credentials; "
                    f"{len(task_ids)} task(s) not queued ({exc})"
                ) from exc
            except SLOTS_REFUSED as exc:
                # The cluster ran nothing (a MULTI with a refused command is discarded whole):
                # try again once the slot's new master is known, within the same timeout.
                if time.monotonic() >= refused_until:
                    raise BrokerUnavailable(
                        f"the Redis Cluster at {mask_url(self.config.broker_url)} has no master "
                        f"for the slot; {len(task_ids)} task(s) not queued ({exc})"
                    ) from exc
                time.sleep(SLOTS_REFRESH_S / 2)
                self.refresh_slots()
            except redis.ResponseError as exc:
                if not str(exc).startswith("NOREPLICAS"):
                    raise
                # The master's min-replicas-to-write: fewer replicas in sync than it asks for,
                # so it refused every write of the step (a MULTI is discarded whole).
                raise BrokerUnavailable(
                    f"Redis at {mask_url(self.config.broker_url)} refused the write: too few "
                    f"replicas in sync (min-replicas-to-write); {len(task_ids)} task(s) not "
                    f"queued ({exc})"
                ) from exc
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if not _failed_to_connect(exc):
                    # Sent, but no reply: the tasks may be queued. Sending again could queue
                    # them twice, so say so instead (naming them) and let the caller decide.
                    ids = ", ".join(task_ids[:5])
                    raise BrokerUnavailable(
                        f"the connection to Redis broke while sending task(s) {ids}"
                        f"{' ...' if len(task_ids) > 5 else ''}: they may or may not be "
                        f"queued ({exc})"
                    ) from exc
                self._wait_for_connection(len(task_ids))

    def _wait_for_connection(self, count: int) -> None:
        """Wait (with backoff, up to ``enqueue_timeout_s``) until Redis accepts a connection.

        Until then nothing has been sent, so waiting and trying again can never queue a task
        twice.

        Raises:
            BrokerUnavailable: Redis did not accept a connection in time; nothing was queued.
        """
        deadline = time.monotonic() + self.config.enqueue_timeout_s
        delay = 0.05
        while True:
            try:
                for pool in self._pools():
                    pool.release(pool.get_connection())
                return
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BrokerUnavailable(
                        f"Redis at {mask_url(self.config.broker_url)} is unreachable: gave up "
                        f"after {self.config.enqueue_timeout_s:g} s; {count} task(s) not "
                        f"queued ({exc})"
                    ) from exc
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, 1.0)

    def _pools(self) -> list[Any]:
        """The connection pools a send may use: the server's, or each master's of a cluster."""
        client = self.redis
        if not isinstance(client, RedisCluster):
            return [client.connection_pool]
        self.refresh_slots()  # a master that died may have handed its slots to a replica
        primaries = client.get_primaries()  # type: ignore[no-untyped-call, unused-ignore]
        return [client.get_redis_connection(n).connection_pool for n in primaries]

    @property
    def _events_maxlen(self) -> int:
        return self.config.events_maxlen if self.config.events else 0

    def _claim_args(
        self, qk: QueueKeys, consumer: str, n: int, held: int = 0
    ) -> tuple[list[str], list[Any]]:
        keys = [qk.delayed, qk.proc(consumer), qk.consumers, qk.deliveries, qk.wake]
        keys += [qk.events, *qk.ready, qk.revoked, qk.paused]
        args = [
            n,
            consumer,
            int(self.config.lease_s * 1000),
            self._events_maxlen,
            qk.name,
            self.config.default_priority,
            PROMOTE_MAX,
            WAKE_TOKENS_MAX,
            held,
        ]
        return keys, args

    def claim(self, queue: str, consumer: str, n: int = 1, held: int = 0) -> Claim:
        """Claim up to ``n`` tasks of ``queue`` for ``consumer`` (highest priority first).

        ``held`` is how many tasks the consumer knows it holds; any more in its in-flight list
        were claimed by a call whose reply was lost, and are returned again.
        """
        keys, args = self._claim_args(self.keys.queue(queue), consumer, n, held)
        return _parse_claim(self._eval(CLAIM, keys, args))

    def wait_and_claim(
        self, queue: str, consumer: str, timeout_s: float, n: int = 1, held: int = 0
    ) -> Claim:
        """Block until a wake token of ``queue`` arrives or ``timeout_s`` passes, then claim.

        One round trip: the claim is pipelined behind the BLPOP, and Redis runs a blocked
        client's next command as soon as the BLPOP returns, so a task sent to an idle worker
        is claimed the moment the worker wakes instead of one round trip later. The claim is
        the one :meth:`claim` makes, also on a timeout (then it promotes due delayed tasks,
        as the claim after an idle wait always did). A claim whose reply is lost (the
        connection broke, or a stop signal interrupted the wait) is returned again by the
        next one, from ``held`` on, or handed back when the consumer's process exits.
        """
        qk = self.keys.queue(queue)
        keys, args = self._claim_args(qk, consumer, n, held)
        commands: list[cmd.Command] = [
            ("BLPOP", qk.wake, max(timeout_s, 0.001)),
            ("EVALSHA", CLAIM.sha, len(keys), *keys, *args),
        ]
        with self._following_slots():
            woke, claimed = _run_pipelined(self.node(qk.wake), commands)
            if isinstance(claimed, NoScriptError):  # a restarted or promoted server: load it
                claim = self.claim(queue, consumer, n, held)
            elif isinstance(claimed, Exception):
                raise woke if isinstance(woke, Exception) else claimed
            else:
                claim = _parse_claim(claimed)
        if isinstance(woke, Exception):
            if not claim.tasks:
                raise woke  # the caller slows down, as for a failed claim
            # The claim ran all the same: what it took is this consumer's now, so it is
            # returned, not left in the in-flight list until the process exits.
            logger.warning("redis refused the wait for a wake token error=%s", woke)
        return claim

    def ack(
        self,
        queue: str,
        consumer: str,
        body: bytes,
        task_id: str,
        result: tuple[bytes, int] | None,
        final_event: cmd.Command | None,
        claim_next: int = 0,
        dead_fields: Sequence[str | bytes] | None = None,
        still_held: int = 0,
        extra: Sequence[cmd.Command] = (),
        extra_results: Sequence[cmd.Command] = (),
    ) -> tuple[bool, Claim | None]:
        """Finish a task (store its result record with a TTL in ms) and claim the next ones.

        Returns whether the consumer still held the task (False: its lease expired and the task
        went to another worker) and, when ``claim_next`` > 0, the claim made in the same step.
        ``still_held`` is how many other tasks of ``queue`` the consumer holds (see claim).
        ``extra`` commands (what follows the task in a workflow) and ``extra_results`` (results
        it decides) join the same step.
        """
        qk = self.keys.queue(queue)
        result_cmds = [*self._result_commands(qk, task_id, result), *extra_results]
        dead = None
        if dead_fields is not None:
            oldest_ms = now_ms() - int(self.config.dead_letter_max_age_s * 1000)
            dead = (self.config.dead_letter_maxlen, oldest_ms, dead_fields)
        if claim_next and self.shared_results and not (dead or extra or extra_results):
            ack = Ack(queue, body, task_id, result, final_event)
            was_held, next_claim = self._ack_and_claim(qk, consumer, [ack], claim_next, still_held)
            return was_held[0], next_claim
        commands = [*cmd.ack(qk, consumer, body, task_id, final_event, dead), *extra]
        if not (claim_next and self.shared_results):
            held = bool(self._write(result_cmds, commands, essential=1)[0])
            return held, (
                self.claim(queue, consumer, claim_next, still_held) if claim_next else None
            )
        keys, args = self._claim_args(qk, consumer, claim_next, still_held)
        claim: cmd.Command = ("EVALSHA", CLAIM.sha, len(keys), *keys, *args)
        # One MULTI: the ack and the next claim are one atomic step and one round trip.
        replies = self._multi(self.node(qk.wake), [*commands, *result_cmds, claim], essential=1)
        held, reply = bool(replies[0]), replies[-1]
        if isinstance(reply, NoScriptError):
            # Redis restarted and forgot its scripts; the ack itself applied.
            return held, self.claim(queue, consumer, claim_next, still_held)
        if isinstance(reply, Exception):
            return held, None  # logged by _multi; the caller claims on its own next
        return held, _parse_claim(reply)

    def _ack_and_claim(
        self, qk: QueueKeys, consumer: str, acks: Sequence[Ack], claim_next: int, still_held: int
    ) -> tuple[list[bool], Claim | None]:
        """Finish ``acks`` (nothing follows them) and claim the next tasks, in one script call.

        The hot path of a worker: one command to pack and one reply to read (see claim.lua).
        Returns, per ack, whether the consumer still held the task, and the claim (None when
        it failed; the acks applied all the same). A claim of 0 only refreshes the lease.
        """
        keys, args = self._claim_args(qk, consumer, claim_next, still_held)
        args.append(len(acks))
        for a in acks:
            keys += [qk.result(a.task_id), qk.state(a.task_id)]
            record, ttl_ms = a.result if a.result is not None else (b"", 0)
            event = cmd.event_body(a.event) if a.event is not None else ()
            args += [a.body, a.task_id, record, ttl_ms, len(event), *event]
        held, errors, reply = self._eval(CLAIM, keys, args)
        for error in errors:
            # The acks applied: running them again would repeat them (see _multi).
            logger.error("redis command failed in an ack command=EVALSHA error=%s", error)
        # A claim of 0 claimed nothing: it must not read as "the queue is empty" to a caller.
        claim = _parse_claim(reply) if reply is not None and claim_next else None
        return [bool(h) for h in held], claim

    def ack_batch(
        self, queue: str, consumer: str, acks: Sequence[Ack], claim_next: int, still_held: int
    ) -> tuple[list[bool], Claim | None]:
        """Finish ``acks`` as :meth:`ack_many` does and claim up to ``claim_next`` of ``queue``.

        One script call when results share the broker's Redis and the acks are plain ones of
        ``queue``; else the acks, then the claim. ``still_held`` is as in :meth:`ack`.
        """
        plain = all(a.queue == queue and not a.extra for a in acks)
        if acks and plain and self.shared_results:
            qk = self.keys.queue(queue)
            return self._ack_and_claim(qk, consumer, acks, claim_next, still_held)
        held = self.ack_many(consumer, acks) if acks else []
        claim = self.claim(queue, consumer, claim_next, still_held) if claim_next else None
        return held, claim

    def ack_many(self, consumer: str, acks: Sequence[Ack]) -> list[bool]:
        """Finish several tasks in one MULTI, each as :meth:`ack` would (without a claim).

        On a cluster, one MULTI per queue (each queue's keys are in its own slot). Returns,
        for each, whether the consumer still held it.
        """
        if not self.same_slot([a.queue for a in acks]):
            held: dict[int, bool] = {}
            for queue in dict.fromkeys(a.queue for a in acks):
                batch = [a for a in acks if a.queue == queue]
                held.update(zip(map(id, batch), self.ack_many(consumer, batch), strict=True))
            return [held[id(a)] for a in acks]
        if (
            self.shared_results
            and len({a.queue for a in acks}) == 1
            and not any(a.extra for a in acks)
        ):
            # The common case, one script call (see _ack_and_claim); the claim of 0 only
            # refreshes the lease.
            return self._ack_and_claim(self.keys.queue(acks[0].queue), consumer, acks, 0, 0)[0]
        removals: list[cmd.Command] = []
        commands: list[cmd.Command] = []
        results: list[cmd.Command] = []
        for a in acks:
            qk = self.keys.queue(a.queue)
            ack = cmd.ack(qk, consumer, a.body, a.task_id, a.event)
            removals.append(ack[0])  # its LREM, whose reply says whether it was held
            commands += ack[1:]
            commands += a.extra
            results += self._result_commands(qk, a.task_id, a.result)
        # The removals first, and only they essential (as in ack): a failing event or
        # follow-up is logged, never a reason to send the whole batch again.
        replies = self._write(results, removals + commands, essential=len(removals))
        return [bool(replies[i]) for i in range(len(removals))]

    def holds(self, queue: str, consumer: str, body: bytes) -> bool:
        """Whether ``consumer`` still holds the envelope ``body`` in flight."""
        proc = self.keys.queue(queue).proc(consumer)
        return self.redis.lpos(proc, body) is not None  # type: ignore[arg-type]

    @staticmethod
    def _result_commands(
        qk: QueueKeys, task_id: str, result: tuple[bytes, int] | None
    ) -> list[cmd.Command]:
        if result is None:
            return [("DEL", qk.state(task_id))]
        record, ttl_ms = result
        return cmd.store_result(qk.result(task_id), qk.state(task_id), record, ttl_ms)

    def bury(
        self,
        queue: str,
        consumer: str | None,
        body: bytes,
        fields: Sequence[str | bytes],
        task_id: str | None,
        result: tuple[bytes, int] | None,
        event_fields: Sequence[str],
    ) -> bool:
        """Move a message to the queue's dead letters; with a result, record its failure.

        Returns False when ``consumer`` no longer held it (see ``lua/bury.lua``).
        """
        qk = self.keys.queue(queue)
        tid = task_id or ""
        record, ttl_ms = result if result is not None else (b"", 0)
        if result is not None and not self.shared_results:
            self._multi(
                self.node(qk.result(tid), self.results), self._result_commands(qk, tid, result)
            )
            record = b""
        keys = [
            qk.proc(consumer or ""),
            qk.dead,
            qk.deliveries,
            qk.events,
            qk.result(tid),
            qk.state(tid),
        ]
        args = [
            body,
            int(consumer is not None),
            self.config.dead_letter_maxlen,
            tid,
            record,
            ttl_ms,
            self._events_maxlen,
            int(self.config.dead_letter_max_age_s * 1000),
            len(fields),
            *fields,
            *event_fields,
        ]
        return bool(self._eval(BURY, keys, args))

    def admit(
        self,
        queue: str,
        consumer: str,
        body: bytes,
        task_id: str,
        limit: str,
        interval_ms: int,
        cap: int,
        cap_lifetime_ms: int,
        recheck_ms: int,
    ) -> int:
        """Admit a claimed task under its limits, or put it back to wait (``lua/admit.lua``).

        Returns 0 when it may run, else the due time it waits for (server ms), or -1 when
        the consumer no longer holds it.
        """
        qk = self.keys.queue(queue)
        rate = qk.rate(limit)
        keys = [qk.proc(consumer), qk.delayed, rate, qk.cap(limit), f"{rate}:reserved"]
        args = [body, task_id, interval_ms, 0, cap, cap_lifetime_ms, recheck_ms]
        return int(self._eval(ADMIT, keys, args))

    def retry(
        self,
        queue: str,
        consumer: str,
        body: bytes,
        new_body: bytes,
        priority: int,
        due_ms: int | None,
        task_id: str,
        state: tuple[bytes, int],
        event_fields: Sequence[str],
    ) -> bool:
        """Put a failed task back (now or at ``due_ms``) and record its RETRY state.

        Returns False when ``consumer`` no longer held it (see ``lua/retry.lua``).
        """
        qk = self.keys.queue(queue)
        record, ttl_ms = state
        if not self.shared_results:
            self.set_state(task_id, queue, record, ttl_ms)
            record = b""
        keys = [
            qk.proc(consumer),
            qk.deliveries,
            qk.ready[priority],
            qk.delayed,
            qk.wake,
            qk.events,
            qk.state(task_id),
        ]
        args = [
            body,
            new_body,
            "" if due_ms is None else due_ms,
            task_id,
            record,
            ttl_ms,
            self._events_maxlen,
            WAKE_TOKENS_MAX,
            *event_fields,
        ]
        return bool(self._eval(RETRY, keys, args))

    def revoke(
        self,
        task_id: str,
        queue: str,
        *,
        terminate: bool,
        record: bytes,
        result_ttl_ms: int,
        event_fields: Sequence[str],
    ) -> bool:
        """Revoke a task of ``queue`` that has not finished; see ``lua/revoke.lua``."""
        qk = self.keys.queue(queue)
        if not self.shared_results:
            # Check and write in one step on the result backend: a finished task keeps its
            # result. Written first: a task revoked too late shows REVOKED, then its result.
            result_keys = [qk.result(task_id), qk.state(task_id)]
            if not self._eval(SETTLE, result_keys, [record, result_ttl_ms], self.results):
                return False
            record = b""
        keys = [qk.revoked, qk.terminate, qk.result(task_id), qk.state(task_id), qk.events]
        args = [
            task_id,
            int(self.config.revoke_ttl_s * 1000),
            int(terminate),
            record,
            result_ttl_ms,
            self._events_maxlen,
            *event_fields,
        ]
        return bool(self._eval(REVOKE, keys, args))

    def to_terminate(self, task_ids: Sequence[str], queues: Sequence[str]) -> list[str]:
        """Those of ``task_ids`` (running now, from ``queues``) revoked with ``terminate=True``."""
        if not task_ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for queue in queues:
            pipe.zmscore(self.keys.queue(queue).terminate, list(task_ids))
        now = now_ms()  # a lapsed revocation (score in the past) no longer applies
        doomed: set[str] = set()
        for scores in pipe.execute():
            doomed.update(
                tid
                for tid, score in zip(task_ids, scores, strict=False)
                if score is not None and score > now
            )
        return [tid for tid in task_ids if tid in doomed]

    def progress(
        self, task_id: str, queue: str, record: bytes, ttl_ms: int, event_fields: Sequence[str]
    ) -> None:
        """Record a running task's custom state and publish task-progress, in one step."""
        qk = self.keys.queue(queue)
        state = cmd.set_state(qk.state(task_id), record, ttl_ms)
        events: list[cmd.Command] = []
        if self._events_maxlen:
            events.append(cmd.event(qk.events, self._events_maxlen, "task-progress", *event_fields))
        if self.shared_results:
            self._multi(self.node(qk.events), state + events, essential=1)
        else:
            self._multi(self.node(qk.state(task_id), self.results), state)
            if events:
                self._multi(self.node(qk.events), events)

    def set_state(self, task_id: str, queue: str, record: bytes, ttl_ms: int) -> None:
        """Record a non-final state (STARTED, RETRY, progress) of a task of ``queue``."""
        key = self.keys.queue(queue).state(task_id)
        self._multi(self.node(key, self.results), cmd.set_state(key, record, ttl_ms))

    def requeue(
        self, queue: str, consumer: str, *, count_delivery: bool, only_if_expired: bool = False
    ) -> int:
        """Hand ``consumer``'s in-flight tasks on ``queue`` back; see ``lua/requeue.lua``."""
        qk = self.keys.queue(queue)
        keys = [qk.proc(consumer), qk.consumers, qk.deliveries, qk.wake, *qk.ready]
        args = [
            consumer,
            int(count_delivery),
            int(only_if_expired),
            self.config.default_priority,
            WAKE_TOKENS_MAX,
        ]
        return int(self._eval(REQUEUE, keys, args))

    def renew(self, queue: str, consumers: Sequence[str], expired_max: int = 16) -> list[str]:
        """Extend ``consumers``' leases on ``queue``; return consumers whose lease expired."""
        qk = self.keys.queue(queue)
        args = [int(self.config.lease_s * 1000), expired_max, *consumers]
        return [c.decode() for c in self._eval(RENEW, [qk.consumers], args)]

    def held(self, queue: str, consumer: str) -> list[bytes]:
        """The envelopes ``consumer`` holds in flight on ``queue``."""
        bodies: list[bytes] = self.redis.lrange(self.keys.queue(queue).proc(consumer), 0, -1)  # type: ignore[assignment]
        return bodies

    def wait_wake(self, queues: Sequence[str], timeout_s: float) -> bool:
        """Block until a wake token arrives on one of ``queues`` or ``timeout_s`` passes."""
        wake = [self.keys.queue(q).wake for q in queues]
        if self.same_slot(queues):
            return self.redis.blpop(wake, timeout=max(timeout_s, 0.001)) is not None
        # A cluster refuses a BLPOP over several slots: wait on each queue in turn, in short
        # slices, so a token on any of them is seen within one slice.
        deadline = time.monotonic() + timeout_s
        while True:
            for key in wake:
                left = deadline - time.monotonic()
                if self.redis.blpop([key], timeout=min(max(left, 0.001), WAKE_SLICE_S)):
                    return True
            if deadline - time.monotonic() <= 0:
                return False

    # -- results ----------------------------------------------------------------------------

    def read_state(self, task_id: str, queue: str) -> tuple[bytes | None, bytes | None]:
        """Return the final result record and the latest non-final state record, if any."""
        qk = self.keys.queue(queue)
        with self._following_slots():
            pipe = self.node(qk.result(task_id), self.results).pipeline(transaction=False)
            pipe.lindex(qk.result(task_id), 0)
            pipe.get(qk.state(task_id))
            final, state = pipe.execute()
        return final, state

    def wait_result(self, task_id: str, queue: str, timeout_s: float | None) -> bytes | None:
        """Wait for the final result record without polling: BLMOVE of the list onto itself.

        The record stays in place, so any number of waiters wake when it lands. Returns None
        on timeout. While Redis is unreachable (a restart, a Sentinel failover) the wait goes
        on within the same timeout, reconnecting with backoff: a wait changes nothing, so
        repeating it is always safe.
        """
        key = self.keys.queue(queue).result(task_id)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        delay = 0.05
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            timeout = 0.0 if left is None else max(left, 0.001)
            try:
                # Fractional seconds: Redis takes them since 6.0.
                server = self.node(key, self.results)
                reply = _run_one(server, ("BLMOVE", key, key, "RIGHT", "LEFT", timeout))
                return reply  # type: ignore[no-any-return]
            except redis.AuthenticationError:
                raise
            except (*SLOTS_REFUSED, redis.ConnectionError, redis.TimeoutError):
                self.refresh_slots()  # a cluster's master may have failed over
                if left is not None and left <= delay:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def forget(self, task_id: str, queue: str) -> None:
        """Delete a task's result and state records."""
        qk = self.keys.queue(queue)
        with self._following_slots():
            server = self.node(qk.result(task_id), self.results)
            server.delete(qk.result(task_id), qk.state(task_id))

    def queue_lengths(self, queue: str) -> list[int]:
        """Ready tasks of ``queue`` per priority, index = priority."""
        pipe = self.redis.pipeline(transaction=False)
        for key in self.keys.queue(queue).ready:
            pipe.llen(key)
        return [int(n) for n in pipe.execute()]

    def ready_count(self, queue: str) -> int:
        """Ready tasks of ``queue`` over every priority."""
        return sum(self.queue_lengths(queue))
