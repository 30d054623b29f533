"""Task states and :class:`AsyncResult`, the handle ``.delay()`` returns."""

from __future__ import annotations

import enum
from collections.abc import Generator
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

from omnitask import awaiting, failure
from omnitask.errors import ResultIgnoredError, SerializationError, TaskRevokedError
from omnitask.errors import TimeoutError as ResultTimeoutError
from omnitask.messages import (
    ResultRecord,
    decode_result,
    encode_result_record,
    ms_to_datetime,
    now_ms,
)
from omnitask.serialization import get_serializer

if TYPE_CHECKING:
    from omnitask.app import OmniTask

__all__ = ("READY_STATES", "AsyncResult", "TaskState")

R = TypeVar("R")


class TaskState(str, enum.Enum):
    """The states of a task, with Celery's names.

    ``PENDING`` means omnitask knows nothing of the task id: the task is waiting in a queue or
    delayed, or it is running and ``track_started`` is off, or the id was never sent, or its
    result expired, was forgotten, or is not stored (``ignore_result``).
    """

    PENDING = "PENDING"
    STARTED = "STARTED"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    RETRY = "RETRY"
    REVOKED = "REVOKED"

    def __str__(self) -> str:
        return self.value


_PICKLE_CODE = get_serializer("cloudpickle").code

READY_STATES = frozenset({TaskState.SUCCESS, TaskState.FAILURE, TaskState.REVOKED})
"""States after which a task never changes again."""


class AsyncResult(Generic[R]):
    """A handle on a task's outcome, by task id. Cheap to create: it reads Redis only when asked.

    A result lives beside its task, under its queue's keys (so that the step that finishes the
    task stores it): the handle a send returns knows the queue; one made from an id alone
    looks in the app's default queue unless told another.

    Attributes:
        id: The task id.
        queue: The queue the task was sent to.
    """

    def __init__(
        self, task_id: str, app: OmniTask, *, queue: str | None = None, ignored: bool = False
    ) -> None:
        """Refer to task ``task_id`` of ``app`` sent to ``queue`` (default: the default queue).

        ``ignored`` marks tasks that store no result.
        """
        self.id = task_id
        self.app = app
        self.queue = queue or app.conf.default_queue
        self._ignored = ignored
        self._final: ResultRecord | None = None

    def __repr__(self) -> str:
        return f"<AsyncResult {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def _record(self) -> ResultRecord | None:
        if self._final is not None:
            return self._final
        final, state = self.app.broker.read_state(self.id, self.queue)
        if final is not None:
            self._final = decode_result(final)
            return self._final
        return decode_result(state) if state is not None else None

    @property
    def state(self) -> str:
        """The current state: a :class:`TaskState` value, or a custom one such as PROGRESS."""
        record = self._record()
        return TaskState.PENDING.value if record is None else record.state

    status = state

    def ready(self) -> bool:
        """Whether the task has finished (SUCCESS, FAILURE or REVOKED)."""
        return self.state in READY_STATES

    def successful(self) -> bool:
        """Whether the task finished successfully."""
        return self.state == TaskState.SUCCESS

    def failed(self) -> bool:
        """Whether the task finished with an exception."""
        return self.state == TaskState.FAILURE

    @property
    def result(self) -> Any:
        """The outcome so far: the return value, the exception, progress metadata, or None.

        SUCCESS gives the return value; FAILURE and REVOKED the exception; other states their
        metadata; PENDING None.
        """
        record = self._record()
        return None if record is None else _value(record, self.app)

    info = result

    def poll(self) -> tuple[str, Any]:
        """The state and the info (as :attr:`result` gives it) from one read, consistent.

        Reading ``state`` and then ``info`` is two reads, between which a running task may
        move on (PROGRESS, then SUCCESS): a status page wants both of the same moment.
        """
        record = self._record()
        if record is None:
            return TaskState.PENDING.value, None
        return record.state, _value(record, self.app)

    @property
    def traceback(self) -> str | None:
        """The formatted remote traceback of a failed task, else None."""
        record = self._record()
        return None if record is None else record.traceback

    @property
    def date_done(self) -> datetime | None:
        """When the task finished (timezone-aware, UTC), or None while it has not."""
        record = self._record()
        if record is None or record.state not in READY_STATES:
            return None
        return ms_to_datetime(record.date_ms)

    @overload
    def get(self, timeout: float | None = None, *, propagate: Literal[True] = True) -> R: ...

    @overload
    def get(self, timeout: float | None = None, *, propagate: bool) -> R | BaseException: ...

    def get(self, timeout: float | None = None, *, propagate: bool = True) -> R | BaseException:
        """Wait for the task to finish and return its result.

        Waiting blocks in Redis (no polling): it returns as soon as the result lands.

        Args:
            timeout: Seconds to wait at most; None waits for as long as it takes.
            propagate: Raise the task's exception when it failed (else return it).

        Raises:
            TimeoutError: The result did not arrive within ``timeout`` (a subclass of the
                built-in TimeoutError).
            ResultIgnoredError: The task is declared with ``ignore_result=True``.
            TaskRevokedError: The task was revoked or expired before it ran.
            Exception: The task's own exception, rebuilt as its type, or
                :class:`~omnitask.TaskFailed` when the type cannot be rebuilt here.
        """
        self._check_stored()
        if self._final is None:
            self._arrived(self.app.broker.wait_result(self.id, self.queue, timeout), timeout)
        return self._outcome(propagate)

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
        """Await the task's result without blocking the event loop (asyncio or trio).

        The awaitable form of :meth:`get`, with the same arguments and errors; ``await
        result`` is the same as ``await result.get_async()``.
        """
        self._check_stored()
        if self._final is None:
            self._arrived(
                await awaiting.wait_result(self.app, self.id, self.queue, timeout), timeout
            )
        return self._outcome(propagate)

    def __await__(self) -> Generator[Any, None, R]:
        return self.get_async().__await__()

    def _check_stored(self) -> None:
        if self._ignored:
            raise ResultIgnoredError(f"task {self.id} was sent with ignore_result=True")

    def _arrived(self, data: bytes | None, timeout: float | None) -> None:
        if data is None:
            raise ResultTimeoutError(f"no result for task {self.id} within {timeout} s")
        self._final = decode_result(data)

    def _outcome(self, propagate: bool) -> R | BaseException:
        assert self._final is not None
        value = _value(self._final, self.app)
        if isinstance(value, BaseException) and propagate:
            raise value
        return value  # type: ignore[no-any-return]

    def revoke(self, *, terminate: bool = False) -> bool:
        """Make sure the task never runs; with ``terminate``, stop it if it is running.

        A pending or delayed task is skipped by every worker (the revocation lives in Redis for
        ``revoke_ttl_s``, across worker restarts) and its state reads REVOKED at once. A
        running task finishes unless ``terminate`` is true: then, within about half a second,
        a sync task's worker process is killed and replaced, and an async task is cancelled
        (its process and the other tasks on its event loop go on).

        Returns:
            False when the task had already finished (its result is kept), else True.
        """
        record = ResultRecord(TaskState.REVOKED.value, now_ms(), "", exc_message="revoked")
        ttl_ms = int(self.app.conf.result_ttl_s * 1000)
        fields = ["i", self.id, "reason", "terminated" if terminate else "revoked"]
        signer = self.app.signer
        self._final = None
        return self.app.broker.revoke(
            self.id,
            self.queue,
            terminate=terminate,
            record=encode_result_record(signer.sign(record) if signer else record),
            result_ttl_ms=ttl_ms,
            event_fields=fields,
        )

    def forget(self) -> None:
        """Delete the stored result; the state reads PENDING afterwards."""
        self._final = None
        self.app.broker.forget(self.id, self.queue)


def _value(record: ResultRecord, app: OmniTask) -> Any:
    signer = app.signer
    if signer is not None and not signer.verify(record):
        raise SerializationError(
            f"the {record.state} record of this task is not signed with this app's secret_key"
        )
    accepted = set(app.accepted_serializers)
    if signer is None and not app.conf.unsigned_pickle:
        accepted.discard(_PICKLE_CODE)  # unpickling an unsigned record could run any code
    if record.state == TaskState.FAILURE:
        return failure.rebuild(
            record.exc_type or "builtins:Exception",
            record.exc_message or "",
            # Only decoded with a serializer this app accepts; else the type name, message and
            # traceback still arrive, as TaskFailed.
            record.exc_args if record.serializer in accepted else None,
            record.serializer,
            record.traceback,
        )
    if record.state == TaskState.REVOKED:
        return TaskRevokedError(f"task was revoked: {record.exc_message or 'revoked'}")
    if record.value is None:
        return None
    if record.serializer not in accepted:
        raise SerializationError(
            f"result serialized with code {record.serializer}, which this app does not accept "
            "(declare a task or the app with that serializer to accept it)"
        )
    return get_serializer(record.serializer).decode(record.value)
