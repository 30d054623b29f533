"""Settings: one frozen struct, every default defined here once.

Precedence, highest first: keywords given to ``OmniTask(...)`` or ``app.configure(...)`` (and
worker CLI flags, which are keywords too), then ``OMNITASK_<SETTING>`` environment variables,
then the defaults below. A bad value fails when the app is created, naming the setting.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec

from omnitask.broker.connect import (
    is_cluster_url,
    is_sentinel_url,
    parse_cluster_url,
    parse_sentinel_url,
)
from omnitask.broker.keys import check_name
from omnitask.errors import ConfigurationError
from omnitask.serialization import SERIALIZER_NAMES

__all__ = ("ENV_PREFIX", "MISSED_POLICIES", "Config", "load_config", "mask_url")

ENV_PREFIX = "OMNITASK_"

ASYNC_BACKENDS = ("asyncio", "trio")

MISSED_POLICIES = ("once", "skip")
"""What a beat does with a periodic run missed while no beat was leading (``beat_missed``)."""


# (settings, check, what the message says they must be); None always passes (it means "none").
_RULES: tuple[tuple[tuple[str, ...], Callable[[float], bool], str], ...] = (
    (
        (
            "result_ttl_s",
            "lease_s",
            "heartbeat_interval_s",
            "connect_timeout_s",
            "revoke_ttl_s",
            "dead_letter_max_age_s",
            "time_limit_s",
            "soft_time_limit_s",
            "beat_lease_s",
        ),
        lambda v: v > 0,
        "be greater than 0",
    ),
    (
        (
            "max_deliveries",
            "events_maxlen",
            "dead_letter_maxlen",
            "async_concurrency",
            "worker_prefetch",
        ),
        lambda v: v >= 1,
        "be at least 1",
    ),
    (
        (
            "worker_concurrency",
            "shutdown_timeout_s",
            "enqueue_timeout_s",
            "max_tasks_per_child",
            "max_memory_per_child_kb",
        ),
        lambda v: v >= 0,
        "not be negative",
    ),
)


class Config(msgspec.Struct, frozen=True, kw_only=True):
    """Every setting of an app, with its default.

    Attributes:
        broker_url: Redis URL of the broker (``redis://``, ``rediss://`` or ``unix://``), or
            of its sentinels (``redis+sentinel://s1:26379,s2:26379/<master name>``), or nodes
            of a Redis Cluster (``redis+cluster://h1:7000,h2:7001/``).
        result_backend: Redis URL for results; None stores them in the broker's Redis.
        key_prefix: First part of every Redis key; apps with different names never collide.
        default_queue: Queue of tasks that name none.
        default_priority: Priority (0-9, higher first) of tasks that give none.
        serializer: Serializer of arguments and results: ``msgpack`` or ``cloudpickle``.
        result_ttl_s: Seconds a result is kept after the task finished.
        track_started: Record the STARTED state when a task starts (one more write per task).
        lease_s: Seconds a worker's claim on its running tasks lasts without renewal; a worker
            that dies has its tasks delivered again after at most this long. Renewed every
            ``lease_s / 3`` while the worker lives.
        max_deliveries: A task whose worker process died this many times while running it is
            dead-lettered instead of delivered again (a poison pill).
        events: Publish lifecycle events to the event stream.
        events_maxlen: Approximate number of entries kept in each event stream (a bulk
            send's task-sent entry holds up to 20 tasks).
        dead_letter_maxlen: Approximate number of dead letters kept per queue.
        dead_letter_max_age_s: Dead letters older than this are dropped when new ones arrive.
        worker_concurrency: Child processes per worker; 0 means one per CPU.
        worker_prefetch: Ordinary (sync) tasks a worker child claims at once. Above 1, the
            acknowledgements of quick successes (under 10 ms each) wait and travel with the
            next claim, one round trip per batch: more throughput for short tasks, at a price.
            Every prefetched task stays leased to the child (none is lost), but a child that
            dies hands its whole batch back, so tasks that already succeeded run again, and a
            result appears when its batch is acknowledged (at most 100 ms later). 1 (the
            default) claims one task at a time and acknowledges each as it ends.
        shutdown_timeout_s: On SIGTERM, seconds running tasks get to finish before they are
            stopped and handed back to the queue.
        heartbeat_interval_s: Seconds between worker heartbeats (events and the worker list).
        connect_timeout_s: Seconds to wait for a TCP connection to Redis.
        enqueue_timeout_s: Seconds ``.delay()`` keeps retrying while Redis is unreachable
            before it raises BrokerUnavailable.
        time_limit_s: Default hard time limit of every task (None: none).
        soft_time_limit_s: Default soft time limit of every task (None: none).
        max_tasks_per_child: A child is replaced after running this many tasks (0: never).
        max_memory_per_child_kb: A child is replaced after a task that leaves its peak
            resident memory above this many KiB (0: never).
        revoke_ttl_s: Seconds a revocation is remembered: a delayed task revoked now and due
            later than this would run after all.
        secret_key: Signs every message and result (HMAC-SHA256); workers run only messages,
            and clients read only results, whose signature checks. Same key everywhere.
        unsigned_pickle: Accept cloudpickle payloads and results without a signature. Off:
            cloudpickle needs a ``secret_key``, since unpickling runs code. Turn on only where
            everything that can write to Redis is trusted.
        async_concurrency: ``async def`` tasks each worker child runs at once on its event
            loop, beside the one ordinary (sync) task it may be running.
        async_backend: The event loop of async tasks in worker children: ``asyncio`` or
            ``trio``.
        eager: Run tasks in the calling process at ``.delay()`` (for unit tests), with the
            arguments and the result still encoded and decoded by the task's serializer.
        beat_lease_s: Seconds the leading beat's lease lasts; it renews it every third of
            that. A standby beat takes over at most this long after the leader died.
        beat_missed: What the beat that takes over does with a periodic run missed while no
            beat was leading: ``once`` (send the latest missed run once) or ``skip``. A
            schedule may set its own.
    """

    broker_url: str = "redis://localhost:6379/0"
    result_backend: str | None = None
    key_prefix: str = "ot"
    default_queue: str = "default"
    default_priority: int = 5
    serializer: str = "msgpack"
    result_ttl_s: float = 86_400.0
    track_started: bool = False
    lease_s: float = 30.0
    max_deliveries: int = 5
    events: bool = True
    events_maxlen: int = 10_000
    dead_letter_maxlen: int = 10_000
    dead_letter_max_age_s: float = 30 * 86_400.0
    worker_concurrency: int = 0
    worker_prefetch: int = 1
    shutdown_timeout_s: float = 30.0
    heartbeat_interval_s: float = 2.0
    connect_timeout_s: float = 5.0
    enqueue_timeout_s: float = 10.0
    time_limit_s: float | None = None
    soft_time_limit_s: float | None = None
    max_tasks_per_child: int = 0
    max_memory_per_child_kb: int = 0
    revoke_ttl_s: float = 7 * 86_400.0
    secret_key: str | None = None
    unsigned_pickle: bool = False
    async_concurrency: int = 100
    async_backend: str = "asyncio"
    eager: bool = False
    beat_lease_s: float = 10.0
    beat_missed: str = "once"

    def __post_init__(self) -> None:
        """Check values that a type alone cannot (msgspec reports these with the field name)."""
        _check_url("broker_url", self.broker_url)
        if self.result_backend is not None:
            _check_url("result_backend", self.result_backend)
        check_name("key_prefix", self.key_prefix)
        check_name("default_queue", self.default_queue)
        if not 0 <= self.default_priority <= 9:
            raise ValueError("default_priority must be between 0 and 9")
        if self.secret_key is not None and not self.secret_key:
            raise ValueError("secret_key must not be empty (None: no signing)")
        if self.async_backend not in ASYNC_BACKENDS:
            raise ValueError(f"async_backend must be one of {', '.join(ASYNC_BACKENDS)}")
        if self.beat_missed not in MISSED_POLICIES:
            raise ValueError(f"beat_missed must be one of {', '.join(MISSED_POLICIES)}")
        if self.serializer not in SERIALIZER_NAMES:
            raise ValueError(f"serializer must be one of {', '.join(SERIALIZER_NAMES)}")
        for names, ok, rule in _RULES:
            for name in names:
                value = getattr(self, name)
                if value is not None and not ok(value):
                    raise ValueError(f"{name} must {rule}")

    @property
    def result_url(self) -> str:
        """The Redis URL results are stored in."""
        return self.result_backend or self.broker_url

    @property
    def concurrency(self) -> int:
        """Child processes per worker, with 0 resolved to the number of CPUs."""
        return self.worker_concurrency or os.cpu_count() or 1


_FIELDS = frozenset(Config.__struct_fields__)


def _check_url(name: str, url: str) -> None:
    parse = (
        parse_sentinel_url
        if is_sentinel_url(url)
        else parse_cluster_url
        if is_cluster_url(url)
        else None
    )
    if parse is not None:
        try:
            parse(url)
        except ValueError as exc:
            raise ValueError(f"{name} {mask_url(url)!r}: {exc}") from None
        return
    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(
            f"{name} {mask_url(url)!r} is not a redis://, rediss://, unix://, "
            "redis+sentinel:// or redis+cluster:// URL"
        )


def load_config(settings: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Config:
    """Build a Config from explicit ``settings`` over ``OMNITASK_*`` variables over defaults.

    Raises:
        ConfigurationError: A setting is unknown or has a bad value; the message names it and,
            for a value read from the environment, the variable.
    """
    env = os.environ if environ is None else environ
    unknown = sorted(set(settings) - _FIELDS)
    if unknown:
        raise ConfigurationError(
            f"unknown setting(s) {', '.join(unknown)}; known settings: {', '.join(sorted(_FIELDS))}"
        )
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name in Config.__struct_fields__:
        var = ENV_PREFIX + name.upper()
        if name in settings and settings[name] is not None:
            merged[name] = settings[name]
        elif var in env:
            merged[name] = env[var]
            origin[name] = var
    try:
        return msgspec.convert(merged, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigurationError(_explain(str(exc), origin)) from None


def _explain(message: str, origin: Mapping[str, str]) -> str:
    # msgspec says "... - at `$.lease_s`"; turn that into the setting's name and source.
    text, _, where = message.rpartition(" - at `$.")
    name = where.rstrip("`")
    if not text or name not in _FIELDS:
        # Checks in Config.__post_init__ name their setting themselves.
        return f"invalid setting: {message}"
    source = f" (from environment variable {origin[name]})" if name in origin else ""
    return f"invalid setting {name}{source}: {text}"


def mask_url(url: str) -> str:
    """Return ``url`` with its password replaced by ``***`` (for logs and banners)."""
    parts = urlsplit(url)
    query = re.sub(r"((?:^|&)(?:ssl_|sentinel_)?password=)[^&]*", r"\1***", parts.query)
    parts = parts._replace(query=query)
    if parts.password is None:
        return urlunsplit(parts)
    user, _, _ = parts.netloc.rpartition("@")[0].partition(":")
    host = parts.netloc.rpartition("@")[2]  # keeps the port and an IPv6 host's brackets
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
