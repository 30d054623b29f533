"""Every Redis key omnitask uses, built in one place.

This docstring is the key schema. ``P`` is the key prefix (``ot`` by default), ``A`` the app name,
``Q`` a queue name. Keys of one queue share the hash tag ``{A:Q}`` and app-wide keys the tag
``{A}``, so that queues can later be spread over Redis Cluster slots. (Today a claim or an ack
touches both tags in one step, which needs a single Redis server; Cluster is not supported.)

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
| ``P:{A}:r:<task id>`` | LIST | the final result record (one element; ``get()`` waits on it) | result TTL |
| ``P:{A}:s:<task id>`` | STRING | the latest non-final state (STARTED, RETRY) | result TTL |
| ``P:{A}:events`` | STREAM | lifecycle events | ``events_maxlen`` (approx.) |
| ``P:{A}:queues`` | SET | names of the queues the app has used | its queues |
| ``P:{A}:revoked`` | ZSET | revoked task ids, score = when the revocation lapses (server ms) | pruned on each revoke |
| ``P:{A}:terminate`` | ZSET | revoked task ids whose running process must be killed, same scores | pruned on each revoke |
| ``P:{A}:chord:<id>`` | HASH | a chord: header size, its callback's envelope and queue, results so far (``lua/join.lua``) | result TTL, renewed by each header result; 5 minutes once the callback succeeded |
| ``P:{A}:beat:schedules`` | HASH | periodic schedule name -> its entry (msgpack, ``omnitask/schedules.py``) | one per schedule |
| ``P:{A}:beat:fired`` | HASH | periodic schedule name -> the latest slot (unix ms) sent or skipped; a slot at or before it never runs again (``lua/fire.lua``) | one per schedule; deleted with it |
| ``P:{A}:beat:leader`` | STRING | the id of the beat that leads (``lua/lead.lua``, ``lua/resign.lua``) | ``beat_lease_s``, renewed by the leader |
| ``P:{A}:rl:<task>[:<key>]`` | STRING | a rate limit's theoretical arrival time, GCRA (``lua/admit.lua``) | expires when the limit is idle |
| ``P:{A}:rl:<task>[:<key>]:reserved`` | ZSET | tasks waiting for a reserved slot of the limit: task id -> slot (server ms) | the waiting tasks; expires an hour after the last slot |
| ``P:{A}:cap:<task>[:<key>]`` | ZSET | task ids running under a concurrency cap, score = when the entry lapses | the cap; entries lapse, the ack removes its own |
| ``P:{A}:workers`` | ZSET | live worker names, score = last heartbeat (unix ms) | pruned by heartbeats |
| ``P:{A}:w:<worker>`` | HASH | a worker's status: pid, host, start time, concurrency, queues, registered task names, the sync task each child runs | expires 3 heartbeats after the last one; deleted when the worker stops |
| ``P:{A}:ctl:<worker>`` | LIST | control commands (JSON) waiting for a worker, which reads and deletes them with its heartbeat | expires with the sender's timeout; deleted when the worker starts |
| ``P:{A}:reply:<request id>`` | LIST | workers' replies (JSON) to one control command | ``CONTROL_REPLY_TTL_S`` |
| ``P:{A}:paused`` | SET | names of paused queues: claim hands out none of their tasks (sends still land) | its queues |

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
    """The keys of one queue; every script that changes a queue's state gets them from here."""

    __slots__ = (
        "_base",
        "consumers",
        "dead",
        "delayed",
        "deliveries",
        "name",
        "ready",
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

    def proc(self, consumer: str) -> str:
        """The in-flight list of one consumer (a worker child) on this queue."""
        return f"{self._base}:proc:{consumer}"

    def unique(self, key: str) -> str:
        """The lock of a unique task (``unique_for``) with unique key ``key`` on this queue."""
        return f"{self._base}:u:{key}"


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
        self.revoked = f"{self._app_base}:revoked"
        self.terminate = f"{self._app_base}:terminate"
        self.paused = f"{self._app_base}:paused"
        self._queues: dict[str, QueueKeys] = {}

    def queue(self, name: str) -> QueueKeys:
        """The keys of queue ``name``."""
        keys = self._queues.get(name)
        if keys is None:
            check_name("queue name", name)
            keys = self._queues[name] = QueueKeys(f"{self.prefix}:{{{self.app}:{name}}}", name)
        return keys

    def result(self, task_id: str) -> str:
        """The list that holds a task's final result record."""
        return f"{self._app_base}:r:{task_id}"

    def state(self, task_id: str) -> str:
        """The string that holds a task's latest non-final state."""
        return f"{self._app_base}:s:{task_id}"

    def rate(self, limit: str) -> str:
        """The GCRA state of a rate limit (a task name, or name and key hash)."""
        return f"{self._app_base}:rl:{limit}"

    def cap(self, limit: str) -> str:
        """The running tasks under a concurrency cap (a task name, or name and key hash)."""
        return f"{self._app_base}:cap:{limit}"

    def chord(self, chord_id: str) -> str:
        """The hash where a chord's header results gather (see ``lua/join.lua``)."""
        return f"{self._app_base}:chord:{chord_id}"

    def worker_status(self, worker: str) -> str:
        """The hash in which worker ``worker`` publishes its status with each heartbeat."""
        return f"{self._app_base}:w:{worker}"

    def control(self, worker: str) -> str:
        """The list of control commands waiting for worker ``worker``."""
        return f"{self._app_base}:ctl:{worker}"

    def control_reply(self, request_id: str) -> str:
        """The list that collects the workers' replies to control command ``request_id``."""
        return f"{self._app_base}:reply:{request_id}"
