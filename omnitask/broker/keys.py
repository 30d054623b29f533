"""Every Redis key omnitask uses, built in one place.

This docstring is the key schema. ``P`` is the key prefix (``ot`` by default), ``A`` the app name,
``Q`` a queue name. Every key that a step of a task's life touches carries its queue's hash tag
``{A:Q}``: the ready lists, the in-flight lists, the task's result and state, the queue's event
stream, its revocations, its pause flag, its rate limits and caps. So each Lua script and each
MULTI of one queue touches one hash slot, which Redis Cluster requires, and queues spread over
the cluster's masters. Keys no step of a task touches (the worker registry, beat's schedules,
the list of queues) share the app's tag ``{A}``. The layout is the same on one Redis server,
through Sentinel and on Redis Cluster.

Keys of queue ``Q`` (hash tag ``{A:Q}``):

| key | type | holds | bound |
|---|---|---|---|
| ``P:{A:Q}:0`` .. ``P:{A:Q}:9`` | LIST | envelopes ready to run, one list per priority (9 runs first), FIFO within | consumed |
| ``P:{A:Q}:delayed`` | ZSET | envelopes due later, score = due time (unix ms) | consumed |
| ``P:{A:Q}:proc:<consumer>`` | LIST | envelopes a worker child has claimed and not yet acknowledged | its concurrency |
| ``P:{A:Q}:consumers`` | ZSET | consumer (worker child) ids, score = lease deadline (server ms) | one per live child |
| ``P:{A:Q}:deliveries`` | HASH | task id -> times it was handed back after its consumer died | deleted on ack |
| ``P:{A:Q}:wake`` | LIST | tokens that wake idle workers blocked in BLPOP | ``WAKE_TOKENS_MAX`` |
| ``P:{A:Q}:u:<key>`` | STRING / HASH | a unique task's id (throttle), or its id and pending envelope (debounce) (``lua/unique.lua``) | ``unique_for`` (twice it plus a minute for debounce) |
| ``P:{A:Q}:dead`` | STREAM | dead letters: ``msg`` (the bytes), ``reason``, ``detail``, ``w``, ``i``, ``n`` | ``dead_letter_maxlen`` and ``dead_letter_max_age_s`` (approx.) |
| ``P:{A:Q}:r:<task id>`` | LIST | the final result record of a task sent to ``Q`` (one element; ``get()`` waits on it) | result TTL |
| ``P:{A:Q}:s:<task id>`` | STRING | the latest non-final state (STARTED, RETRY) | result TTL |
| ``P:{A:Q}:events`` | STREAM | lifecycle events of the queue's tasks | ``events_maxlen`` (approx.) |
| ``P:{A:Q}:revoked`` | ZSET | revoked task ids, score = when the revocation lapses (server ms) | pruned on each revoke |
| ``P:{A:Q}:terminate`` | ZSET | revoked task ids whose running process must be killed, same scores | pruned on each revoke |
| ``P:{A:Q}:paused`` | STRING | present while the queue is paused: claim hands out none of its tasks (sends still land) | one |
| ``P:{A:Q}:chord:<id>`` | HASH | a chord whose callback runs on ``Q``: header size, the callback's envelope and queue, results so far (``lua/join.lua``) | result TTL, renewed by each header result; 5 minutes once the callback succeeded |
| ``P:{A:Q}:rl:<task>[:<key>]`` | STRING | a rate limit's theoretical arrival time, GCRA (``lua/admit.lua``), counted per queue | expires when the limit is idle |
| ``P:{A:Q}:rl:<task>[:<key>]:reserved`` | ZSET | tasks waiting for a reserved slot of the limit: task id -> slot (server ms) | the waiting tasks; expires an hour after the last slot |
| ``P:{A:Q}:cap:<task>[:<key>]`` | ZSET | task ids running under a concurrency cap on ``Q``, score = when the entry lapses | the cap; entries lapse, the ack removes its own |

Keys of the app (hash tag ``{A}``):

| key | type | holds | bound |
|---|---|---|---|
| ``P:{A}:events`` | STREAM | app-wide events: worker heartbeats, online and offline (task events go to their queue's stream) | ``events_maxlen`` (approx.) |
| ``P:{A}:queues`` | SET | names of the queues the app has used (each client adds a queue before its first send to it) | its queues |
| ``P:{A}:beat:schedules`` | HASH | periodic schedule name -> its entry (msgpack, ``omnitask/schedules.py``) | one per schedule |
| ``P:{A}:beat:fired`` | HASH | periodic schedule name -> the latest slot (unix ms) sent or skipped; a slot at or before it never runs again (``lua/fire.lua``) | one per schedule; deleted with it |
| ``P:{A}:beat:leader`` | STRING | the id of the beat that leads (``lua/lead.lua``, ``lua/resign.lua``) | ``beat_lease_s``, renewed by the leader |
| ``P:{A}:workers`` | ZSET | live worker names, score = last heartbeat (unix ms) | pruned by heartbeats |
| ``P:{A}:w:<worker>`` | HASH | a worker's status: pid, host, start time, concurrency, queues, registered task names, the sync task each child runs | expires 3 heartbeats after the last one; deleted when the worker stops |
| ``P:{A}:ctl:<worker>`` | LIST | control commands (JSON) waiting for a worker, which reads and deletes them with its heartbeat | expires with the sender's timeout; deleted when the worker starts |
| ``P:{A}:reply:<request id>`` | LIST | workers' replies (JSON) to one control command | ``CONTROL_REPLY_TTL_S`` |

A task's result lives under the tag of the queue it was sent to, because the step that finishes
the task writes it together with the task's removal from its in-flight list: ``AsyncResult``
knows its queue from the send, and ``app.AsyncResult(id, queue=...)`` names it (the app's
default queue when not given). Readers of events merge the app's stream with each queue's by
entry id (``omnitask/events.py``).

Envelopes sit inline in the ready lists (about 100 bytes of Redis memory each) instead of a
ZSET of ids plus a HASH of bodies (about 350 bytes), which is why priorities are ten lists.
"""

from __future__ import annotations

import re

from omnitask.errors import ConfigurationError

__all__ = (
    "CONTROL_REPLY_TTL_S",
    "PRIORITY_LEVELS",
    "WAKE_TOKENS_MAX",
    "Keyspace",
    "QueueKeys",
    "check_name",
)

PRIORITY_LEVELS = 10
"""Priorities are the integers ``0 .. PRIORITY_LEVELS - 1``; higher runs first."""

WAKE_TOKENS_MAX = 64
"""How many wake tokens a queue keeps at most: enough to wake every idle child of a large pool
at once, small enough that stale tokens cost idle workers only a few empty claims."""

CONTROL_REPLY_TTL_S = 60
"""Seconds the replies to a control command are kept: long past any sender's timeout."""

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


def check_name(kind: str, value: str) -> str:
    """Return ``value`` if it is a valid app, queue or prefix name.

    Names are restricted so that they can never break the hash tags or the ``:`` separators.

    Raises:
        ConfigurationError: It is not (a ValueError too).
    """
    if not _NAME.match(value):
        raise ConfigurationError(
            f"{kind} {value!r} is not valid: use letters, digits, '_', '.' and '-' only"
        )
    return value


class QueueKeys:
    """The keys of one queue, all under its hash tag: every step of its tasks gets them here."""

    __slots__ = (
        "_base",
        "consumers",
        "dead",
        "delayed",
        "deliveries",
        "events",
        "name",
        "paused",
        "ready",
        "revoked",
        "terminate",
        "wake",
    )

    def __init__(self, base: str, name: str) -> None:
        """Build the key names of queue ``name`` under ``base`` (``P:{A:Q}``)."""
        self.name = name
        self._base = base
        self.ready: tuple[str, ...] = tuple(f"{base}:{p}" for p in range(PRIORITY_LEVELS))
        self.delayed = f"{base}:delayed"
        self.consumers = f"{base}:consumers"
        self.deliveries = f"{base}:deliveries"
        self.wake = f"{base}:wake"
        self.dead = f"{base}:dead"
        self.events = f"{base}:events"
        self.revoked = f"{base}:revoked"
        self.terminate = f"{base}:terminate"
        self.paused = f"{base}:paused"

    def proc(self, consumer: str) -> str:
        """The in-flight list of one consumer (a worker child) on this queue."""
        return f"{self._base}:proc:{consumer}"

    def unique(self, key: str) -> str:
        """The lock of a unique task (``unique_for``) with unique key ``key`` on this queue."""
        return f"{self._base}:u:{key}"

    def result(self, task_id: str) -> str:
        """The list that holds the final result record of a task sent to this queue."""
        return f"{self._base}:r:{task_id}"

    def state(self, task_id: str) -> str:
        """The string that holds the latest non-final state of a task sent to this queue."""
        return f"{self._base}:s:{task_id}"

    def rate(self, limit: str) -> str:
        """The GCRA state of a rate limit (a task name, or name and key hash) on this queue."""
        return f"{self._base}:rl:{limit}"

    def cap(self, limit: str) -> str:
        """The tasks running under a concurrency cap (a task name, or name and key hash)."""
        return f"{self._base}:cap:{limit}"

    def chord(self, chord_id: str) -> str:
        """The hash where the header results of a chord whose callback runs here gather."""
        return f"{self._base}:chord:{chord_id}"


class Keyspace:
    """Builds every key of one app. Construct it once per app; it caches per-queue key sets."""

    def __init__(self, prefix: str, app: str) -> None:
        """Use ``prefix`` and the app name ``app`` (both checked with :func:`check_name`)."""
        self.prefix = check_name("key prefix", prefix)
        self.app = check_name("app name", app)
        self._app_base = f"{prefix}:{{{app}}}"
        self.events = f"{self._app_base}:events"
        self.beat_schedules = f"{self._app_base}:beat:schedules"
        self.beat_fired = f"{self._app_base}:beat:fired"
        self.beat_leader = f"{self._app_base}:beat:leader"
        self.queues = f"{self._app_base}:queues"
        self.workers = f"{self._app_base}:workers"
        self._queues: dict[str, QueueKeys] = {}

    def queue(self, name: str) -> QueueKeys:
        """The keys of queue ``name``."""
        keys = self._queues.get(name)
        if keys is None:
            check_name("queue name", name)
            keys = self._queues[name] = QueueKeys(f"{self.prefix}:{{{self.app}:{name}}}", name)
        return keys

    def worker_status(self, worker: str) -> str:
        """The hash in which worker ``worker`` publishes its status with each heartbeat."""
        return f"{self._app_base}:w:{worker}"

    def control(self, worker: str) -> str:
        """The list of control commands waiting for worker ``worker``."""
        return f"{self._app_base}:ctl:{worker}"

    def control_reply(self, request_id: str) -> str:
        """The list that collects the workers' replies to control command ``request_id``."""
        return f"{self._app_base}:reply:{request_id}"
