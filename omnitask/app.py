"""``OmniTask``, the app: settings, the task registry, the broker connection and the hooks."""

from __future__ import annotations

import difflib
import importlib
import inspect
import sys
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Literal,
    ParamSpec,
    Protocol,
    TypedDict,
    TypeVar,
    overload,
)

import msgspec
import redis

from omnitask import awaiting
from omnitask.broker.client import Broker
from omnitask.broker.keys import Keyspace, check_name
from omnitask.canvas import GATHER_TASK, Signature, check_links, gather, links
from omnitask.config import Config, load_config, mask_url
from omnitask.deadletters import DeadLetters
from omnitask.errors import BrokerConnectionError, ConfigurationError, TaskNotRegisteredError
from omnitask.events import EventStream
from omnitask.producer import Call, OptionsLike, seconds
from omnitask.ratelimit import Limits
from omnitask.result import AsyncResult
from omnitask.retry import RetryPolicy
from omnitask.serialization import SERIALIZER_NAMES, get_serializer
from omnitask.signals import Signals
from omnitask.signing import Signer
from omnitask.task import AsyncTask, Task
from omnitask.unique import UniquePolicy, send_unique

if TYPE_CHECKING:
    from typing_extensions import Never, Unpack

    from omnitask.control import Control
    from omnitask.inspect import Inspector
    from omnitask.periodic import Schedules
    from omnitask.schedules import Periodic, PeriodicDecorator, ScheduleLike

__all__ = ("OmniTask", "Settings")

P = ParamSpec("P")
R = TypeVar("R")

_TASK_OPTIONS = (
    "name",
    "queue",
    "priority",
    "retries",
    "retry_on",
    "retry_backoff",
    "retry_backoff_max",
    "retry_jitter",
    "retry_delay",
    "time_limit",
    "soft_time_limit",
    "bind",
    "result_ttl",
    "ignore_result",
    "expires",
    "serializer",
    "track_started",
)


class Settings(TypedDict, total=False):
    """Settings accepted as keywords by ``OmniTask(...)`` and ``app.configure(...)``.

    Each is described on :class:`~omnitask.config.Config`.
    """

    key_prefix: str
    default_queue: str
    default_priority: int
    serializer: str
    result_ttl_s: float
    track_started: bool
    lease_s: float
    max_deliveries: int
    events: bool
    events_maxlen: int
    dead_letter_maxlen: int
    dead_letter_max_age_s: float
    worker_concurrency: int
    worker_prefetch: int
    shutdown_timeout_s: float
    heartbeat_interval_s: float
    connect_timeout_s: float
    enqueue_timeout_s: float
    time_limit_s: float | None
    soft_time_limit_s: float | None
    max_tasks_per_child: int
    max_memory_per_child_kb: int
    revoke_ttl_s: float
    secret_key: str | None
    unsigned_pickle: bool
    async_concurrency: int
    async_backend: str
    eager: bool
    beat_lease_s: float
    beat_missed: str


class TaskDecorator(Protocol):
    """What ``@app.task(...)`` returns: registers a function as a Task (AsyncTask if async)."""

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> AsyncTask[P, R]: ...

    @overload
    def __call__(self, fn: Callable[P, R], /) -> Task[P, R]: ...


class BoundTaskDecorator(Protocol):
    """What ``@app.task(bind=True, ...)`` returns: the function's first argument is the task."""

    @overload
    def __call__(
        self, fn: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]], /
    ) -> AsyncTask[P, R]: ...

    @overload
    def __call__(self, fn: Callable[Concatenate[Any, P], R], /) -> Task[P, R]: ...


class OmniTask:
    """An omnitask app: declare tasks on it, send them, read their results.

    Example::

        app = OmniTask("myapp", broker="redis://localhost:6379/0")

        @app.task
        def add(x: int, y: int) -> int:
            return x + y

        add.delay(1, 2).get(timeout=5)  # 3

    Args:
        main: The app's name. It prefixes every Redis key, so apps with different names share
            a Redis without seeing each other's tasks.
        broker: Redis URL; default ``OMNITASK_BROKER_URL``, else ``redis://localhost:6379/0``.
        result_backend: Redis URL for results; default: the broker's Redis.
        include: Modules a worker imports to register their tasks.
        **settings: Any other setting of :class:`~omnitask.config.Config`.

    Raises:
        ConfigurationError: A setting is unknown or has a bad value (message names it).
    """

    def __init__(
        self,
        main: str,
        *,
        broker: str | None = None,
        result_backend: str | None = None,
        include: Sequence[str] = (),
        **settings: Unpack[Settings],
    ) -> None:
        """Create the app; nothing connects until first use."""
        self.main = check_name("app name", main)
        self.include = tuple(include)
        self._settings: dict[str, Any] = dict(settings)
        # broker= and result_backend= are the documented spellings; broker_url= works too.
        if broker is not None or "broker_url" not in settings:
            self._settings["broker_url"] = broker
        if result_backend is not None or "result_backend" not in settings:
            self._settings["result_backend"] = result_backend
        self.conf: Config = load_config(self._settings)
        self.tasks: dict[str, Task[Any, Any]] = {}
        # Periodic tasks declared in code (add_periodic, @periodic); a beat writes them to Redis.
        self.beat_schedule: dict[str, Periodic] = {}
        # A chord whose body is not a single task joins through this one (see omnitask.canvas).
        self.task(name=GATHER_TASK)(gather)
        self.signals = Signals()
        self.events = EventStream(self)
        self._broker: Broker | None = None
        self._keys: Keyspace | None = None
        self._signer: tuple[str, Signer] | None = None

    def __repr__(self) -> str:
        return f"<OmniTask {self.main}>"

    # -- settings and connections -------------------------------------------------------------

    def configure(self, **settings: Any) -> None:
        """Change settings (same names and precedence as the constructor's keywords).

        Raises:
            ConfigurationError: A setting is unknown or has a bad value.
        """
        merged = {**self._settings, **settings}
        self.conf = load_config(merged)
        self._settings = merged
        self.close()
        self._broker = None
        self._keys = None

    @property
    def keys(self) -> Keyspace:
        """The app's Redis key schema."""
        if self._keys is None:
            self._keys = Keyspace(self.conf.key_prefix, self.main)
        return self._keys

    @property
    def broker(self) -> Broker:
        """The app's connection to Redis (created on first use)."""
        if self._broker is None:
            self._broker = Broker(self.conf, self.keys)
        return self._broker

    def connect(self) -> None:
        """Connect now and check Redis answers (otherwise the first call connects).

        Raises:
            BrokerConnectionError: Redis cannot be reached (the message names the URL, with
                its password masked).
        """
        try:
            self.broker.ping()
            self.broker.load_scripts()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BrokerConnectionError(
                f"cannot reach Redis at {mask_url(self.conf.broker_url)}: {exc}"
            ) from exc

    def after_fork(self) -> None:
        """Forget connections inherited from a parent process without closing them.

        Closing would shut the sockets the parent still uses; the next call opens new ones.
        """
        self._broker = None

    def close(self) -> None:
        """Close the app's connections to Redis."""
        if self._broker is not None:
            self._broker.close()

    def check_serializer(self, name: str) -> None:
        """Raise ConfigurationError unless ``name`` is a known serializer."""
        if name not in SERIALIZER_NAMES:
            raise ConfigurationError(
                f"unknown serializer {name!r}; use one of {', '.join(SERIALIZER_NAMES)}"
            )

    # -- tasks --------------------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> AsyncTask[P, R]: ...

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        *,
        name: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        retries: int = 0,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        retry_backoff: float | bool = True,
        retry_backoff_max: float = 600.0,
        retry_jitter: bool = True,
        retry_delay: float | timedelta = 0.0,
        result_ttl: float | timedelta | None = None,
        ignore_result: bool = False,
        expires: float | timedelta | None = None,
        serializer: str | None = None,
        track_started: bool | None = None,
        time_limit: float | timedelta | None = None,
        soft_time_limit: float | timedelta | None = None,
        unique_for: float | timedelta | None = None,
        unique_key: Callable[..., str] | None = None,
        unique_mode: Literal["throttle", "debounce"] = "throttle",
        rate_limit: str | None = None,
        concurrency_limit: int | None = None,
        limit_key: Callable[..., str] | None = None,
        bind: Literal[False] = False,
        **unknown: Never,
    ) -> TaskDecorator: ...

    @overload
    def task(
        self,
        *,
        name: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        retries: int = 0,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        retry_backoff: float | bool = True,
        retry_backoff_max: float = 600.0,
        retry_jitter: bool = True,
        retry_delay: float | timedelta = 0.0,
        result_ttl: float | timedelta | None = None,
        ignore_result: bool = False,
        expires: float | timedelta | None = None,
        serializer: str | None = None,
        track_started: bool | None = None,
        time_limit: float | timedelta | None = None,
        soft_time_limit: float | timedelta | None = None,
        unique_for: float | timedelta | None = None,
        unique_key: Callable[..., str] | None = None,
        unique_mode: Literal["throttle", "debounce"] = "throttle",
        rate_limit: str | None = None,
        concurrency_limit: int | None = None,
        limit_key: Callable[..., str] | None = None,
        bind: Literal[True],
        **unknown: Never,
    ) -> BoundTaskDecorator: ...

    # mypy reports the implementation as not matching the keyword-only overloads whenever a
    # ParamSpec appears only in an overload's return type, even for an implementation taking
    # **Any (minimal repro checked with mypy 2.4); the overloads are what callers see.
    def task(  # type: ignore[misc]
        self,
        fn: Callable[P, R] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        retries: int = 0,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        retry_backoff: float | bool = True,
        retry_backoff_max: float = 600.0,
        retry_jitter: bool = True,
        retry_delay: float | timedelta = 0.0,
        result_ttl: float | timedelta | None = None,
        ignore_result: bool = False,
        expires: float | timedelta | None = None,
        serializer: str | None = None,
        track_started: bool | None = None,
        time_limit: float | timedelta | None = None,
        soft_time_limit: float | timedelta | None = None,
        unique_for: float | timedelta | None = None,
        unique_key: Callable[..., str] | None = None,
        unique_mode: Literal["throttle", "debounce"] = "throttle",
        rate_limit: str | None = None,
        concurrency_limit: int | None = None,
        limit_key: Callable[..., str] | None = None,
        bind: bool = False,
        **unknown: Never,
    ) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
        """Register a function as a task: ``@app.task`` or ``@app.task(option=...)``.

        Args:
            fn: The function (when used without parentheses).
            name: The task's name; default ``module.function``.
            queue: Its queue; default the app's ``default_queue``.
            priority: 0 (lowest) to 9 (highest); default the app's ``default_priority``.
            retries: Automatic retries when it raises one of ``retry_on``.
            retry_on: Exception types that are retried; others fail at once.
            retry_backoff: Base in seconds of the exponential backoff between retries (True:
                1 s; attempt n waits up to base * 2**n); False: a fixed ``retry_delay``.
            retry_backoff_max: Cap of the backoff, in seconds.
            retry_jitter: Wait a random time between 0 and the backoff (full jitter).
            retry_delay: The fixed delay between retries when ``retry_backoff`` is False.
            result_ttl: Seconds (or timedelta) its results are kept; default ``result_ttl_s``.
            ignore_result: Store no result (``get()`` then raises ResultIgnoredError).
            expires: Revoke a call not started this long after it was sent.
            serializer: ``msgpack`` or ``cloudpickle``; default the app's ``serializer``.
            track_started: Record the STARTED state; default the app's ``track_started``.
            time_limit: Hard limit in seconds: the worker process running it is killed and
                replaced, and the run fails with TimeLimitExceeded (retried if it may be).
            soft_time_limit: Soft limit: SoftTimeLimitExceeded is raised inside the task.
            unique_for: Seconds (or timedelta) during which a second send with the same
                arguments (or ``unique_key``) returns the first one's result instead of
                queuing another task.
            unique_key: Computes the unique key from the call's arguments (default: the task
                name and all the arguments).
            unique_mode: ``"throttle"`` keeps the first call of a window; ``"debounce"`` runs
                the task once, ``unique_for`` after the last call, with its arguments.
            rate_limit: At most this many runs per period across every worker, e.g.
                ``"100/m"`` (per ``s``, ``m``, ``h`` or ``d``), spread evenly; tasks over the
                limit wait in Redis.
            concurrency_limit: At most this many runs at once across every worker.
            limit_key: Splits the rate limit and the cap by a key computed from the
                call's arguments (one limit per tenant, say).
            bind: Pass the task itself as the first argument (for ``self.request`` and
                ``self.retry()``).
            **unknown: Not accepted: any other keyword is reported as an unknown option.

        Raises:
            ConfigurationError: An option is unknown (with a suggestion) or has a bad value, or
                another task already has this name.
        """
        if unknown:
            raise ConfigurationError(_unknown_options(unknown))
        policy = _retry_policy(
            retries, retry_on, retry_backoff, retry_backoff_max, retry_jitter, retry_delay
        )
        unique = UniquePolicy.build(unique_for, unique_key, unique_mode)
        limits = Limits.build(rate_limit, concurrency_limit, limit_key)
        for option, value in (("time_limit", time_limit), ("soft_time_limit", soft_time_limit)):
            if value is not None and seconds(option, value) == 0:
                raise ConfigurationError(f"{option} must be greater than 0 (None: no limit)")
        if (
            time_limit is not None
            and soft_time_limit is not None
            and seconds("soft_time_limit", soft_time_limit) >= seconds("time_limit", time_limit)
        ):
            raise ConfigurationError("soft_time_limit must be shorter than time_limit")

        def register(func: Callable[P, R]) -> Task[P, R]:
            kind = AsyncTask if inspect.iscoroutinefunction(func) else Task
            task = kind(
                self,
                func,
                name=name or _default_name(func),
                queue=queue,
                priority=priority,
                retry=policy,
                result_ttl=result_ttl,
                ignore_result=ignore_result,
                expires=expires,
                serializer=serializer,
                track_started=track_started,
                bind=bind,
                time_limit=time_limit,
                soft_time_limit=soft_time_limit,
                unique=unique,
                limits=limits,
            )
            if queue is not None:
                self.keys.queue(queue)  # checks the name now, not at the first delay()
            existing = self.tasks.get(task.name)
            if existing is not None and existing.fn is not func:
                raise ConfigurationError(f"a task named {task.name!r} is already registered")
            self.tasks[task.name] = task
            return task

        return register if fn is None else register(fn)

    def get_task(self, name: str) -> Task[Any, Any]:
        """The registered task called ``name``.

        Raises:
            TaskNotRegisteredError: No task has this name.
        """
        try:
            return self.tasks[name]
        except KeyError:
            raise TaskNotRegisteredError(f"no task named {name!r} is registered") from None

    def send_task(
        self,
        name: str,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        countdown: float | timedelta | None = None,
        eta: datetime | float | None = None,
        expires: float | timedelta | datetime | None = None,
        priority: int | None = None,
        queue: str | None = None,
        task_id: str | None = None,
        time_limit: float | timedelta | None = None,
        soft_time_limit: float | timedelta | None = None,
        link: Signature[Any] | Sequence[Signature[Any]] | None = None,
        link_error: Signature[Any] | Sequence[Signature[Any]] | None = None,
    ) -> AsyncResult[Any]:
        """Send a task by name, without importing its function.

        When the task is registered here, its options (queue, priority, serializer ...) apply;
        otherwise the app's defaults do. The options are those of ``Task.apply_async``.
        """
        opts: OptionsLike = {
            "countdown": countdown,
            "eta": eta,
            "expires": expires,
            "priority": priority,
            "queue": queue,
            "task_id": task_id,
            "time_limit": time_limit,
            "soft_time_limit": soft_time_limit,
        }
        task = self.tasks.get(name)
        follow = links(link, link_error) if link is not None or link_error is not None else None
        call_args, call_kwargs = tuple(args), dict(kwargs or {})
        call = Call.build(self, task or name, call_args, call_kwargs, opts, follow)
        if follow is not None:
            check_links(self, call.queue, link, link_error)
        if self.conf.eager:
            from omnitask.testing.eager import run_eager  # only eager apps pay for the import

            return run_eager(self, call)
        if task is not None and task.unique is not None:
            return send_unique(self, task, call, call_args, call_kwargs, opts, follow)
        self.broker.enqueue(call.queue, [call.item])
        ignored = bool(task and task.ignore_result)
        return AsyncResult(call.task_id, self, queue=call.queue, ignored=ignored)

    async def send_task_async(
        self,
        name: str,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Unpack[OptionsLike],
    ) -> AsyncResult[Any]:
        """The awaitable form of :meth:`send_task`: the event loop never waits on Redis."""
        return await awaiting.in_thread(partial(self.send_task, name, args, kwargs, **options))

    def AsyncResult(  # noqa: N802 - Celery's name
        self, task_id: str, *, queue: str | None = None
    ) -> AsyncResult[Any]:
        """A handle on the result of task ``task_id``, sent to ``queue``.

        A result is kept beside its task, under its queue's keys: name the queue the task was
        sent to when it was not the app's default one.
        """
        return AsyncResult(task_id, self, queue=queue)

    @property
    def dead_letters(self) -> DeadLetters:
        """Inspect, requeue and purge the app's dead letters."""
        return DeadLetters(self)

    @property
    def inspect(self) -> Inspector:
        """Read what the app's workers run and what its queues hold (``omnitask inspect``)."""
        from omnitask.inspect import Inspector  # the CLI's module: loaded only when used

        return Inspector(self)

    @property
    def control(self) -> Control:
        """Send commands to the app's workers, pause queues, purge (``omnitask control``)."""
        from omnitask.control import Control

        return Control(self)

    # -- periodic tasks (omnitask/schedules.py, omnitask/periodic.py, omnitask/beat.py) -------

    def add_periodic(
        self,
        name: str,
        task: Task[Any, Any] | str,
        schedule: ScheduleLike,
        *,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        queue: str | None = None,
        priority: int | None = None,
        expires: float | timedelta | None = None,
        missed: str | None = None,
        tz: str | None = None,
    ) -> Periodic:
        """Declare a periodic task in code; each beat writes it to Redis when it starts.

        Args:
            name: The schedule's name, unique in the app.
            task: The task, or its name.
            schedule: A ``crontab(...)``, a ``Crontab(expr, tz=)``, a cron string, or an
                interval (timedelta or seconds).
            args: Positional arguments of each run (msgpack values).
            kwargs: Keyword arguments of each run (msgpack values).
            queue: Queue of each run; default the task's.
            priority: Priority of each run; default the task's.
            expires: A run not started this long after it was sent is revoked.
            missed: ``once`` or ``skip``: what a beat that takes over does with a run missed
                while no beat was leading; default the app's ``beat_missed``.
            tz: The time zone of a cron string (default UTC).

        Raises:
            ConfigurationError: A value is not valid.
        """
        from omnitask.schedules import Periodic

        entry = Periodic.build(
            self,
            name,
            task,
            schedule,
            args=args,
            kwargs=kwargs,
            queue=queue,
            priority=priority,
            expires=expires,
            missed=missed,
            tz=tz,
        )
        self.beat_schedule[entry.name] = entry
        return entry

    def add_beat_schedule(self, beat_schedule: Mapping[str, Mapping[str, Any]]) -> None:
        """Declare periodic tasks given as Celery's ``beat_schedule`` setting.

        Each item maps a name to ``{"task": ..., "schedule": ..., "args": ..., "kwargs": ...,
        "options": {"queue": ..., "priority": ..., "expires": ...}}``.

        Raises:
            ConfigurationError: An item has an unknown key, or a value is not valid.
        """
        from omnitask.schedules import from_celery

        for name, item in beat_schedule.items():
            self.beat_schedule[name] = from_celery(self, name, item)

    def periodic(
        self,
        cron: str | None = None,
        *,
        every: float | timedelta | None = None,
        tz: str | None = None,
        name: str | None = None,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        queue: str | None = None,
        priority: int | None = None,
        expires: float | timedelta | None = None,
        missed: str | None = None,
    ) -> PeriodicDecorator:
        """Register a function as a task and run it periodically.

        ``@app.periodic(cron="*/5 * * * *", tz="Europe/Paris")`` or
        ``@app.periodic(every=timedelta(seconds=10))``; above ``@app.task(...)``, it
        schedules that task. ``name`` is the schedule's (default: the task's name); the
        other arguments are those of :meth:`add_periodic`.

        Raises:
            ConfigurationError: Neither or both of ``cron`` and ``every``, or a bad value.
        """
        schedule: ScheduleLike
        if cron is not None and every is None:
            schedule = cron
        elif every is not None and cron is None:
            schedule = every
        else:
            raise ConfigurationError("give either cron= or every=")

        def decorate(fn: Any) -> Any:
            task = fn if isinstance(fn, Task) else self.task(fn)
            self.add_periodic(
                name or task.name,
                task,
                schedule,
                args=args,
                kwargs=kwargs,
                queue=queue,
                priority=priority,
                expires=expires,
                missed=missed,
                tz=tz,
            )
            return task

        return decorate

    @property
    def schedules(self) -> Schedules:
        """Add, change, remove and list the periodic schedules stored in Redis at run time."""
        from omnitask.periodic import Schedules

        return Schedules(self)

    @property
    def signer(self) -> Signer | None:
        """Signs and checks messages and results, when the app has a ``secret_key``."""
        key = self.conf.secret_key
        if key is None:
            return None
        if self._signer is None or self._signer[0] != key:
            self._signer = (key, Signer(key))
        return self._signer[1]

    @property
    def accepted_serializers(self) -> frozenset[int]:
        """Wire codes of the serializers this app decodes results and errors with.

        msgpack always; cloudpickle only when the app or one of its tasks uses it, since
        unpickling runs code.
        """
        names = {"msgpack", self.conf.serializer, *(t.serializer for t in self.tasks.values())}
        return frozenset(get_serializer(name).code for name in names)

    def import_includes(self) -> None:
        """Import the modules named in ``include`` (workers do, to register their tasks)."""
        for module in self.include:
            importlib.import_module(module)

    def describe(self) -> dict[str, Any]:
        """Settings as a plain dict (the broker password masked), for banners and debugging."""
        data: dict[str, Any] = msgspec.structs.asdict(self.conf)
        data["broker_url"] = mask_url(self.conf.broker_url)
        if self.conf.secret_key:
            data["secret_key"] = "***"
        if self.conf.result_backend:
            data["result_backend"] = mask_url(self.conf.result_backend)
        return data


def _retry_policy(
    retries: int,
    retry_on: object,
    backoff: float | bool,
    backoff_max: float,
    jitter: bool,
    delay: float | timedelta,
) -> RetryPolicy:
    """Check the retry options of a task and build its policy.

    Raises:
        ConfigurationError: One of them has a bad value.
    """
    kinds = retry_on if isinstance(retry_on, tuple) else (retry_on,)
    if not kinds or not all(isinstance(k, type) and issubclass(k, BaseException) for k in kinds):
        raise ConfigurationError(f"retry_on must be exception types, got {retry_on!r}")
    if type(retries) is not int or retries < 0:
        raise ConfigurationError(f"retries must be an int >= 0, got {retries!r}")
    base = 1.0 if backoff is True else float(backoff or 0.0)
    if base < 0 or backoff_max < 0:
        raise ConfigurationError("retry_backoff and retry_backoff_max must not be negative")
    return RetryPolicy(
        retries=retries,
        retry_on=kinds,
        backoff_s=base,
        backoff_max_s=float(backoff_max),
        jitter=bool(jitter),
        delay_s=seconds("retry_delay", delay),
    )


def _default_name(func: Callable[..., Any]) -> str:
    module = func.__module__
    if module == "__main__":
        # A script run directly: name its tasks as the module a worker would import.
        main = sys.modules["__main__"]
        spec = getattr(main, "__spec__", None)
        if spec is not None and spec.name:
            module = spec.name
        else:
            path = getattr(main, "__file__", None) or "__main__"
            module = path.rsplit("/", 1)[-1].removesuffix(".py")
    return f"{module}.{getattr(func, '__qualname__', func.__name__)}"


def _unknown_options(unknown: Mapping[str, object]) -> str:
    parts = []
    for key in sorted(unknown):
        close = difflib.get_close_matches(key, _TASK_OPTIONS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        parts.append(f"{key!r}{hint}")
    return f"unknown task option(s) {', '.join(parts)}; options are: {', '.join(_TASK_OPTIONS)}"
