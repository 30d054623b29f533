"""Eager mode: a task runs in the calling process at ``.delay()``, as a worker would run it.

Celery's eager mode calls the function with the caller's own objects, so a test passes with an
argument that no worker could ever receive. Here the call still goes through the wire format:
the envelope that ``.delay()`` built is decoded, the arguments are decoded by the task's
serializer, and the return value is encoded and decoded again. An argument or a result that
cannot travel fails in a test exactly as in production, and what comes back has the types a
worker's result would have (a namedtuple comes back as a tuple).

Nothing here needs Redis. What differs from a worker: the task runs at once (a countdown or an
eta is not waited for), a retry runs again inline without its delay, time limits are not
enforced, and the outcome lives in the returned :class:`EagerResult`, not in Redis.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import sys
import time
from collections.abc import Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from omnitask import failure
from omnitask.context import CURRENT_REQUEST, Outcome, Request
from omnitask.errors import (
    ArgumentTypeError,
    MaxRetriesExceededError,
    ResultIgnoredError,
    SerializationError,
)
from omnitask.errors import TimeoutError as ResultTimeoutError
from omnitask.messages import (
    Envelope,
    ResultRecord,
    decode_envelope,
    decode_result,
    encode_result_record,
    ms_to_datetime,
    now_ms,
)
from omnitask.result import AsyncResult, TaskState
from omnitask.retry import Retry
from omnitask.serialization import decode_call, encode_result, get_serializer

if TYPE_CHECKING:
    from omnitask.app import OmniTask
    from omnitask.producer import Call
    from omnitask.task import Task

__all__ = ("EAGER_WORKER", "EagerResult", "record_progress", "run_eager")

logger = logging.getLogger(__name__)

R = TypeVar("R")

EAGER_WORKER = "eager"
"""The worker name of eager runs: ``self.request.worker`` reads it inside the task."""

# The states recorded by the eager runs in progress in this context, by task id. A task that
# sends another one in eager mode nests a run, which adds its own list to a copy of the map.
_STATES: ContextVar[Mapping[str, list[ResultRecord]] | None] = ContextVar(
    "omnitask_eager_states", default=None
)


class EagerResult(AsyncResult[R]):
    """The outcome of a task run in eager mode, held in memory: nothing here reads Redis.

    It answers as an :class:`~omnitask.AsyncResult` answers once a worker has finished the task:
    ``get()`` returns the value decoded from its encoded form, or raises the task's exception
    rebuilt from its failure record (or returns it, with ``propagate=False``); ``state``,
    ``result``, ``traceback`` and ``date_done`` read that record. A task declared with
    ``ignore_result`` reads ``PENDING`` and ``get()`` raises ResultIgnoredError, as it would
    with a worker.
    """

    def __init__(
        self,
        task_id: str,
        app: OmniTask,
        *,
        record: ResultRecord | None,
        states: list[ResultRecord],
        ignored: bool = False,
    ) -> None:
        """Hold the final ``record`` (None when the result is ignored) and the run's states."""
        super().__init__(task_id, app, ignored=ignored)
        self._final = record
        self._states = states

    def __repr__(self) -> str:
        return f"<EagerResult {self.id} {self.state}>"

    # Every read of AsyncResult (state, result, traceback, date_done ...) goes through
    # _record(); answering it from memory is the one seam that keeps Redis out.
    def _record(self) -> ResultRecord | None:
        return self._final

    @property
    def updates(self) -> list[tuple[str, Any]]:
        """The states the run went through before its final one, in order.

        Pairs of ``(state, info)``: ``("STARTED", None)`` for tasks with ``track_started``,
        ``("RETRY", exception)`` before each inline retry, and the custom states the task
        recorded with ``update_state()`` or ``progress()`` with their metadata, e.g.
        ``("PROGRESS", {"current": 3, "total": 10})``.
        """
        return [(record.state, _info(record)) for record in self._states]

    @overload
    def get(self, timeout: float | None = None, *, propagate: Literal[True] = True) -> R: ...

    @overload
    def get(self, timeout: float | None = None, *, propagate: bool) -> R | BaseException: ...

    def get(self, timeout: float | None = None, *, propagate: bool = True) -> R | BaseException:
        """Return the task's result at once: the task has already run.

        Args:
            timeout: Accepted for AsyncResult's signature; nothing is waited for.
            propagate: Raise the task's exception when it failed (else return it).

        Raises:
            ResultIgnoredError: The task is declared with ``ignore_result=True``.
            TimeoutError: The result was forgotten (``forget()``): it would never arrive.
            TaskRevokedError: The call had expired (``expires``) before it ran.
            Exception: The task's own exception, rebuilt as its type, or
                :class:`~omnitask.TaskFailed` when the type cannot be rebuilt.
        """
        if self._ignored:
            raise ResultIgnoredError(f"task {self.id} was sent with ignore_result=True")
        if self._final is None:
            raise ResultTimeoutError(f"no result for task {self.id}: it was forgotten")
        # With the final record held, AsyncResult.get decodes it and asks Redis nothing.
        return super().get(timeout, propagate=propagate)

    @overload
    async def get_async(
        self, timeout: float | None = None, *, propagate: Literal[True] = True
    ) -> R: ...

    @overload
    async def get_async(
        self, timeout: float | None = None, *, propagate: bool
    ) -> R | BaseException: ...

    async def get_async(
        self, timeout: float | None = None, *, propagate: bool = True
    ) -> R | BaseException:
        """The awaitable form of :meth:`get`: the result is already here, nothing is awaited."""
        return self.get(timeout, propagate=propagate)

    def revoke(self, *, terminate: bool = False) -> bool:
        """Do nothing: the task has already run. Returns False, as for any finished task."""
        return False

    def forget(self) -> None:
        """Drop the result; the state reads PENDING afterwards."""
        self._final = None


def _info(record: ResultRecord) -> Any:
    if record.state == TaskState.RETRY:
        return failure.rebuild(
            record.exc_type or "builtins:Exception",
            record.exc_message or "",
            record.exc_args,
            record.serializer,
            record.traceback,
        )
    return None if record.value is None else get_serializer(record.serializer).decode(record.value)


def run_eager(app: OmniTask, call: Call) -> EagerResult[Any]:
    """Run ``call`` here and now as a worker would run its message, and return the outcome.

    ``send_task`` (so ``delay``, ``apply_async`` and ``apply_at``) and ``delay_many`` call it
    instead of sending, when the app's ``eager`` setting is on.

    Raises:
        TaskNotRegisteredError: No task of the call's name is registered on this app (eager
            mode can only run the app's own tasks).
        RuntimeError: The task is an ``async def`` function and an event loop is already
            running in this thread.
    """
    envelope = decode_envelope(call.item[0])
    task = app.get_task(envelope.task)
    if inspect.iscoroutinefunction(task.fn) and _event_loop_running():
        raise RuntimeError(
            f"task {task.name!r} is an async function and an event loop is already running in "
            "this thread, so eager mode cannot run it to completion here: await the function "
            f"itself ('await {task.fn.__name__}.fn(...)') or run the test with a real worker "
            "(the omnitask_worker fixture)"
        )
    states: list[ResultRecord] = []
    token = _STATES.set({**(_STATES.get() or {}), envelope.id: states})
    try:
        record = _run(app, task, envelope, call.queue, states)
    finally:
        _STATES.reset(token)
    final = None if task.ignore_result else _as_stored(app, record)
    return EagerResult(envelope.id, app, record=final, states=states, ignored=task.ignore_result)


def record_progress(task_id: str, record: bytes) -> None:
    """Keep a state that a task records in eager mode, where a worker would write it to Redis.

    ``Task.update_state`` (and so ``progress``) calls it when the app's ``eager`` setting is
    on, with the encoded record. The state joins the ``updates`` of the EagerResult of the run
    in progress; one for a task id that is not running eagerly in this context is dropped.
    """
    states = (_STATES.get() or {}).get(task_id)
    if states is None:
        logger.debug("eager mode: state of a task not running here dropped id=%s", task_id)
        return
    states.append(decode_result(record))


def _event_loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return True
    trio = sys.modules.get("trio")  # only a program that imported trio can be inside its loop
    if trio is None:
        return False
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return False
    return True


def _as_stored(app: OmniTask, record: ResultRecord) -> ResultRecord:
    """The record as a client reads it back from Redis: signed, encoded and decoded."""
    signer = app.signer
    return decode_result(encode_result_record(signer.sign(record) if signer else record))


def _run(
    app: OmniTask,
    task: Task[Any, Any],
    envelope: Envelope,
    queue: str,
    states: list[ResultRecord],
) -> ResultRecord:
    """Run the message to its final record, retrying inline."""
    if envelope.expires_ms is not None and now_ms() > envelope.expires_ms:
        return ResultRecord(
            TaskState.REVOKED.value, now_ms(), task.name, exc_message="expired", worker=EAGER_WORKER
        )
    retries = envelope.retries
    while True:
        try:
            # Decoded again for every run, as each delivery of a retried message is.
            args, kwargs = decode_call(get_serializer(envelope.serializer), envelope.payload)
            # As on a worker: each argument as its annotated type, or refused.
            args, kwargs = task.arguments.convert(args, kwargs)
        except (SerializationError, ArgumentTypeError) as exc:
            # A worker dead-letters such a message and fails its result with this error.
            return _error_record(TaskState.FAILURE.value, task, exc, retries, None)
        request = Request(
            id=envelope.id,
            task=envelope.task,
            args=args,
            kwargs=kwargs,
            queue=queue,
            priority=envelope.priority,
            retries=retries,
            eta=None if envelope.eta_ms is None else ms_to_datetime(envelope.eta_ms),
            worker=EAGER_WORKER,
            headers=envelope.headers or {},
        )
        record = _attempt(app, task, request, states)
        if record is not None:
            return record
        retries += 1


def _attempt(
    app: OmniTask, task: Task[Any, Any], request: Request, states: list[ResultRecord]
) -> ResultRecord | None:
    """Run the task once; return its final record, or None when it is to run again."""
    if task.track_started:
        states.append(ResultRecord(TaskState.STARTED.value, now_ms(), task.name))
    app.signals.task_prerun.send(request)
    start = time.perf_counter()
    try:
        value = _call(app, task, request)
    except Exception as exc:  # noqa: BLE001 - the task's failure is its outcome, as in a worker
        runtime = time.perf_counter() - start
        cause, again = _retry_decision(task, exc, request.retries)
        if not again:
            return _failed(app, task, request, cause, runtime)
        states.append(_error_record(TaskState.RETRY.value, task, cause, request.retries + 1, None))
        outcome = Outcome(request, TaskState.RETRY.value, exception=cause, runtime_s=runtime)
        app.signals.task_postrun.send(outcome)
        return None
    runtime = time.perf_counter() - start
    codec = get_serializer(task.serializer)
    try:
        encoded = None if task.ignore_result else encode_result(codec, task.name, value)
    except SerializationError as exc:
        return _failed(app, task, request, exc, runtime)
    outcome = Outcome(request, TaskState.SUCCESS.value, result=value, runtime_s=runtime)
    app.signals.task_success.send(outcome)
    app.signals.task_postrun.send(outcome)
    return ResultRecord(
        TaskState.SUCCESS.value,
        now_ms(),
        task.name,
        value=encoded,
        serializer=codec.code,
        worker=EAGER_WORKER,
        runtime_s=runtime,
        retries=request.retries,
    )


def _call(app: OmniTask, task: Task[Any, Any], request: Request) -> Any:
    """Call the task's function with its request current, as the worker's executor does."""
    args = (task, *request.args) if task.bind else request.args
    token = CURRENT_REQUEST.set(request)
    try:
        if inspect.iscoroutinefunction(task.fn):
            import anyio  # only eager async tasks pay for the import

            # The event loop's main task runs in a copy of this context: it sees the request.
            call = functools.partial(task.fn, *args, **request.kwargs)
            return anyio.run(call, backend=app.conf.async_backend)
        return task.fn(*args, **request.kwargs)
    finally:
        CURRENT_REQUEST.reset(token)


def _retry_decision(task: Task[Any, Any], exc: Exception, retries: int) -> tuple[Exception, bool]:
    """The exception to record, and whether the task runs again (the worker's rules)."""
    if isinstance(exc, Retry):
        limit = task.retries if exc.max_retries is None else exc.max_retries
        cause = exc.exc if isinstance(exc.exc, Exception) else None
        if retries >= limit:
            return cause or MaxRetriesExceededError(
                f"task {task.name!r} asked for retry {retries + 1} of {limit}"
            ), False
        return cause or exc, True
    return exc, task.retry_policy.should_retry(exc, retries)


def _failed(
    app: OmniTask, task: Task[Any, Any], request: Request, exc: Exception, runtime: float
) -> ResultRecord:
    record = _error_record(TaskState.FAILURE.value, task, exc, request.retries, runtime)
    logger.info("eager task failed task=%s id=%s error=%r", task.name, request.id, exc)
    outcome = Outcome(
        request,
        TaskState.FAILURE.value,
        exception=exc,
        traceback=record.traceback,
        runtime_s=runtime,
    )
    app.signals.task_failure.send(outcome)
    app.signals.task_postrun.send(outcome)
    return record


def _error_record(
    state: str, task: Task[Any, Any], exc: Exception, retries: int, runtime: float | None
) -> ResultRecord:
    return failure.error_record(
        state,
        task.name,
        get_serializer(task.serializer),
        exc,
        retries=retries,
        runtime_s=runtime,
        worker=EAGER_WORKER,
    )
