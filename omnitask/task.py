"""``Task[P, R]``: a registered function that can run here (``add(1, 2)``) or on a worker."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from omnitask import awaiting
from omnitask.arguments import Arguments
from omnitask.canvas import Signature
from omnitask.context import CURRENT_REQUEST, Request
from omnitask.errors import ConfigurationError
from omnitask.messages import ResultRecord, encode_result_record, now_ms
from omnitask.producer import Call, OptionsLike, check_priority, seconds
from omnitask.result import READY_STATES, AsyncResult
from omnitask.retry import Retry, RetryPolicy
from omnitask.serialization import encode_result, get_serializer

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from omnitask.app import OmniTask
    from omnitask.ratelimit import Limits
    from omnitask.unique import UniquePolicy

__all__ = ("AsyncTask", "Task")

P = ParamSpec("P")
R = TypeVar("R")


class Task(Generic[P, R]):
    """A function registered on an app under a name, with its options.

    Created by ``@app.task``; calling it runs the function here, ``delay()`` and friends send it
    to a worker. Pickling a Task pickles a reference to it (its module and name), so it can be
    passed to other processes and comes back as the same registered task.

    Attributes:
        name: The registered name, the same in every process.
        fn: The wrapped function.
        arguments: Its signature and annotations, which every call is checked against.
        retries: Automatic retries on an exception.
        ignore_result: True when results are not stored.
        is_async: True for an ``async def`` function, which workers run on an event loop.
        unique: How sends are kept unique (``unique_for``), or None.
        limits: Its rate limit and concurrency cap, or None.
    """

    def __init__(
        self,
        app: OmniTask,
        fn: Callable[P, R],
        *,
        name: str,
        queue: str | None,
        priority: int | None,
        retry: RetryPolicy,
        result_ttl: float | timedelta | None,
        ignore_result: bool,
        expires: float | timedelta | None,
        serializer: str | None,
        track_started: bool | None,
        bind: bool = False,
        time_limit: float | timedelta | None = None,
        soft_time_limit: float | timedelta | None = None,
        unique: UniquePolicy | None = None,
        limits: Limits | None = None,
    ) -> None:
        """Wrap ``fn``; options left None take the app's setting when they are used."""
        self.app = app
        self.fn = fn
        self.name = name
        self._queue = queue
        self._priority = None if priority is None else check_priority(priority)
        if retry.retries < 0:
            raise ConfigurationError(f"task {name!r}: retries must not be negative")
        self.retry_policy = retry
        self.bind = bind
        self.unique = unique
        self.limits = limits
        # Workers run coroutine functions on their event loop, the others in the main thread.
        self.is_async = inspect.iscoroutinefunction(fn)
        self.time_limit_s = None if time_limit is None else seconds("time_limit", time_limit)
        self.soft_time_limit_s = (
            None if soft_time_limit is None else seconds("soft_time_limit", soft_time_limit)
        )
        self._result_ttl_s = None if result_ttl is None else seconds("result_ttl", result_ttl)
        if self._result_ttl_s == 0:
            raise ConfigurationError(f"task {name!r}: result_ttl must be > 0 (or ignore_result)")
        self.ignore_result = ignore_result
        self._expires_s = None if expires is None else seconds("expires", expires)
        if serializer is not None:
            app.check_serializer(serializer)
        self._serializer = serializer
        self._track_started = track_started
        self.arguments = Arguments(name, fn, bind=bind)
        self.__doc__ = fn.__doc__
        self.__module__ = fn.__module__
        self.__qualname__ = getattr(fn, "__qualname__", name)
        self.__wrapped__ = fn

    # -- options resolved against the app's settings at use time ---------------------------

    @property
    def retries(self) -> int:
        """Automatic retries after the first run."""
        return self.retry_policy.retries

    @property
    def request(self) -> Request:
        """The request of the run in progress (id, args, retries, delivery ...).

        Meant for bound tasks (``bind=True``), which get the task as their first argument.

        Raises:
            RuntimeError: No run of this task is in progress in this context.
        """
        request = CURRENT_REQUEST.get()
        if request is None or request.task != self.name:
            raise RuntimeError(f"task {self.name!r} is not running here: no request")
        return request

    def retry(
        self,
        exc: BaseException | None = None,
        *,
        countdown: float | timedelta | None = None,
        eta: datetime | None = None,
        max_retries: int | None = None,
    ) -> Retry:
        """Ask for another run of the task in progress: ``raise self.retry(exc=exc)``.

        It raises :class:`~omnitask.retry.Retry` itself (returning it only to let callers
        write ``raise``, as in Celery). The retry waits in Redis like any delayed task: for
        ``countdown`` seconds, until ``eta``, or for the task's backoff delay.

        Args:
            exc: The exception behind the retry; raised as the task's failure when no retries
                are left (else ``MaxRetriesExceededError``).
            countdown: Seconds (or a timedelta) until the next run.
            eta: When to run next (an aware datetime).
            max_retries: Overrides the task's ``retries`` for this decision.
        """
        delay = None if countdown is None else seconds("countdown", countdown)
        if eta is not None and (eta.tzinfo is None or eta.utcoffset() is None):
            raise ConfigurationError("retry(eta=...) must be a timezone-aware datetime")
        raise Retry(exc, delay, eta, max_retries)

    def update_state(
        self, state: str = "PROGRESS", meta: Any = None, *, task_id: str | None = None
    ) -> None:
        """Record a custom state (``PROGRESS`` by default) with metadata, from a running task.

        ``AsyncResult.state`` then reads ``state`` and ``AsyncResult.info`` the metadata, until
        the task finishes; a ``task-progress`` event is published too. Meant for bound tasks:
        ``self.update_state(meta={"done": 3, "of": 10})``.

        Args:
            state: The state's name; not one of the final states.
            meta: Any value the task's serializer can encode.
            task_id: The task to update; default the run in progress.

        Raises:
            ConfigurationError: ``state`` is a final state.
            RuntimeError: No ``task_id`` was given and no run of this task is in progress.
            SerializationError: ``meta`` cannot be encoded.
        """
        if state in READY_STATES:
            raise ConfigurationError(f"{state} is a final state: a task reaches it by returning")
        request = CURRENT_REQUEST.get() if task_id is None else None
        tid = task_id or self.request.id
        queue = request.queue if request is not None else self.queue
        codec = get_serializer(self.serializer)
        record = ResultRecord(
            state,
            now_ms(),
            self.name,
            value=encode_result(codec, self.name, meta),
            serializer=codec.code,
            worker=request.worker if request else None,
        )
        signer = self.app.signer
        data = encode_result_record(signer.sign(record) if signer else record)
        if self.app.conf.eager:  # no Redis in eager mode: the EagerResult keeps the state
            from omnitask.testing.eager import record_progress

            record_progress(tid, data)
            return
        fields = ("i", tid, "n", self.name, "state", state)
        self.app.broker.progress(tid, queue, data, int(self.result_ttl_s * 1000), fields)

    def progress(self, current: float, total: float | None = None) -> None:
        """Report progress of the run in progress: ``self.progress(3, 10)``.

        Shorthand for ``update_state("PROGRESS", {"current": current, "total": total})``.
        """
        self.update_state("PROGRESS", {"current": current, "total": total})

    @property
    def queue(self) -> str:
        """The queue the task is sent to unless a call names another."""
        return self._queue or self.app.conf.default_queue

    @property
    def priority(self) -> int:
        """The priority (0-9, higher first) unless a call gives another."""
        return self.app.conf.default_priority if self._priority is None else self._priority

    @property
    def result_ttl_s(self) -> float:
        """Seconds the task's results are kept."""
        return self.app.conf.result_ttl_s if self._result_ttl_s is None else self._result_ttl_s

    @property
    def expires_s(self) -> float | None:
        """Seconds after sending when an unstarted call is revoked instead of run, or None."""
        return self._expires_s

    @property
    def serializer(self) -> str:
        """The serializer of the task's arguments and results."""
        return self._serializer or self.app.conf.serializer

    @property
    def track_started(self) -> bool:
        """Whether the STARTED state is recorded."""
        if self._track_started is None:
            return self.app.conf.track_started
        return self._track_started

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, (self.__module__, self.__qualname__, self.name))

    # -- calling ------------------------------------------------------------------------------

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here and now, without any queue."""
        if self.bind:
            return self.fn(self, *args, **kwargs)  # type: ignore[arg-type]
        return self.fn(*args, **kwargs)

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Send the task to a worker with these arguments and the task's options.

        Raises:
            TypeError: The arguments do not fit the function's signature.
            ArgumentTypeError: An argument does not match its annotation (a TypeError too).
            SerializationError: An argument cannot be serialized (the message names it).
        """
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
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
    ) -> AsyncResult[R]:
        """Send the task with per-call options.

        Args:
            args: Positional arguments.
            kwargs: Keyword arguments.
            countdown: Run no sooner than this many seconds from now.
            eta: Run no sooner than this time (aware datetime or unix timestamp).
            expires: Revoke instead of run if not started by then: seconds or timedelta from
                now, or an aware datetime.
            priority: 0 (lowest) to 9 (highest); the task's priority by default.
            queue: The queue to send to; the task's queue by default.
            task_id: Use this id instead of a new random one.
            time_limit: Hard time limit of this call (seconds), overriding the task's.
            soft_time_limit: Soft time limit of this call, overriding the task's.
            link: Signature(s) to run with the result when the task succeeds.
            link_error: Signature(s) to run with the task's id when it fails for good.

        Raises:
            ConfigurationError: An option has a bad value (both countdown and eta, a naive
                datetime, a priority outside 0-9 ...).
            TypeError: The arguments do not fit the function's signature.
            ArgumentTypeError: An argument does not match its annotation (a TypeError too).
            SerializationError: An argument cannot be serialized (the message names it).
        """
        call_args = tuple(args)
        call_kwargs = dict(kwargs or {})
        self.arguments.check(call_args, call_kwargs)
        # send_task finds this task by its name and applies its options.
        return self.app.send_task(
            self.name,
            call_args,
            call_kwargs,
            countdown=countdown,
            eta=eta,
            expires=expires,
            priority=priority,
            queue=queue,
            task_id=task_id,
            time_limit=time_limit,
            soft_time_limit=soft_time_limit,
            link=link,
            link_error=link_error,
        )

    def s(self, *args: Any, **kwargs: Any) -> Signature[R]:
        """A signature of this task for a workflow: in a chain, the previous result comes first.

        Its arguments are checked when the workflow is sent, with what comes before them.
        """
        return Signature(self, args, kwargs)

    def si(self, *args: P.args, **kwargs: P.kwargs) -> Signature[R]:
        """An immutable signature: in a workflow it runs with exactly these arguments."""
        return Signature(self, args, kwargs, immutable=True)

    async def delay_async(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """The awaitable form of :meth:`delay`, for asyncio and trio code.

        The send runs in a worker thread, so the event loop never waits on Redis (nor on the
        retries of a send while Redis is unreachable). Same errors as :meth:`delay`.
        """
        return await awaiting.in_thread(partial(self.apply_async, args, kwargs))

    async def send_async(
        self,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Unpack[OptionsLike],
    ) -> AsyncResult[R]:
        """The awaitable form of :meth:`apply_async`, with the same options and errors."""
        return await awaiting.in_thread(partial(self.apply_async, args, kwargs, **options))

    def apply_at(
        self, when: datetime | float, /, *args: P.args, **kwargs: P.kwargs
    ) -> AsyncResult[R]:
        """Send the task to run at ``when`` (an aware datetime or a unix timestamp)."""
        return self.apply_async(args, kwargs, eta=when)

    def delay_many(self, calls: Iterable[tuple[Any, ...]]) -> list[AsyncResult[R]]:
        """Send one task per tuple of positional arguments, in one round trip to Redis.

        Every call is checked and serialized before anything is sent, so a bad one sends none.
        """
        if self.unique is not None:  # each send checks its own key, in its own step
            return [self.apply_async(tuple(call_args)) for call_args in calls]
        checked = []
        for call_args in calls:
            args = tuple(call_args)
            self.arguments.check(args, {})
            checked.append(args)
        built = Call.build_many(self.app, self, checked)
        if self.app.conf.eager:
            from omnitask.testing.eager import run_eager

            return [run_eager(self.app, call) for call in built]
        by_queue: dict[str, list[Any]] = {}
        for call in built:
            by_queue.setdefault(call.queue, []).append(call.item)
        for queue, items in by_queue.items():
            self.app.broker.enqueue(queue, items)
        return [
            AsyncResult(c.task_id, self.app, queue=c.queue, ignored=self.ignore_result)
            for c in built
        ]


class AsyncTask(Task[P, R]):
    """A Task whose function is ``async def``: workers run it on their event loop.

    Everything of :class:`Task` applies; ``R`` is what the coroutine returns, so
    ``delay()`` gives an ``AsyncResult[R]``. Calling the task itself returns the coroutine,
    to await here and now.
    """

    def __call__(  # type: ignore[override]  # returns the coroutine, not R
        self, *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, R]:
        """Return the coroutine of the function, to await here, without any queue."""
        fn: Callable[..., Coroutine[Any, Any, R]] = self.fn  # type: ignore[assignment]
        return fn(self, *args, **kwargs) if self.bind else fn(*args, **kwargs)


def _restore(module: str, qualname: str, name: str) -> Task[Any, Any]:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, Task) or obj.name != name:
        raise TypeError(f"{module}:{qualname} is not the task {name!r}")
    return obj
