"""Running one claimed message: decode, check, call, classify, and finish it atomically.

Every path ends in exactly one transition of the protocol: ack (SUCCESS, FAILURE, REVOKED),
retry, or bury (a message that must not run: malformed, unknown task, poison pill).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from omnitask import failure
from omnitask.broker import commands as cmd
from omnitask.context import Outcome, Request
from omnitask.errors import MessageError, SerializationError
from omnitask.messages import (
    Envelope,
    ResultRecord,
    decode_envelope,
    encode_envelope,
    encode_result_record,
    now_ms,
)
from omnitask.result import TaskState
from omnitask.serialization import decode_call, encode_result, get_serializer

if TYPE_CHECKING:
    from omnitask.app import OmniTask
    from omnitask.broker.client import Claim, Claimed
    from omnitask.task import Task

__all__ = ("Executor",)

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _direct(step: Callable[[], T]) -> T:
    return step()


class Executor:
    """Runs claimed messages for one consumer (a worker child)."""

    def __init__(
        self, app: OmniTask, consumer: str, io: Callable[[Callable[[], Any]], Any] = _direct
    ) -> None:
        """Run tasks of ``app`` as ``consumer``.

        ``io`` runs each Redis step (the child passes one that retries while Redis is away);
        only the Redis steps are retried, never the task body.
        """
        self.app = app
        self.consumer = consumer
        self._io = io
        self.broker = app.broker
        conf = app.conf
        self._events_key = app.keys.events
        self._maxlen = conf.events_maxlen if conf.events else 0

    def _event(self, kind: str, *fields: str) -> cmd.Command | None:
        return cmd.event(self._events_key, self._maxlen, kind, *fields) if self._maxlen else None

    def handle(self, queue: str, claimed: Claimed, claim_next: int) -> Claim | None:
        """Run one claimed message to its outcome; return the next claim if one was made."""
        try:
            envelope = decode_envelope(claimed.body)
        except MessageError as exc:
            self._bury(queue, claimed.body, "malformed", str(exc), None, None)
            return None
        task = self.app.tasks.get(envelope.task)
        if task is None:
            reason = f"no task named {envelope.task!r} is registered on this worker"
            self._bury(queue, claimed.body, "unknown-task", reason, envelope, None)
            return None
        if claimed.deliveries >= self.app.conf.max_deliveries:
            reason = (
                f"its worker process died {claimed.deliveries} times while running it "
                f"(max_deliveries={self.app.conf.max_deliveries})"
            )
            self._bury(queue, claimed.body, "max-deliveries", reason, envelope, task)
            return None
        now = now_ms()
        if envelope.expires_ms is not None and now > envelope.expires_ms:
            return self._revoke(queue, claimed.body, envelope, task, "expired", claim_next)
        if envelope.serializer not in (_MSGPACK.code, get_serializer(task.serializer).code):
            # Unpickling runs code: a payload in a serializer the task does not use is refused.
            detail = f"payload serializer {envelope.serializer} is not accepted by this task"
            self._bury(queue, claimed.body, "serializer-refused", detail, envelope, task)
            return None
        try:
            args, kwargs = decode_call(get_serializer(envelope.serializer), envelope.payload)
        except Exception as exc:  # noqa: BLE001 - any decoder error means the same thing here
            self._bury(
                queue, claimed.body, "undecodable", f"{type(exc).__name__}: {exc}", envelope, task
            )
            return None
        request = Request(
            id=envelope.id,
            task=envelope.task,
            args=args,
            kwargs=kwargs,
            queue=queue,
            priority=envelope.priority,
            retries=envelope.retries,
            delivery=claimed.deliveries + 1,
            eta=_datetime(envelope.eta_ms),
            worker=self.consumer,
        )
        return self._run(queue, claimed.body, envelope, task, request, claim_next)

    def _run(
        self,
        queue: str,
        body: bytes,
        envelope: Envelope,
        task: Task[Any, Any],
        request: Request,
        claim_next: int,
    ) -> Claim | None:
        codec = get_serializer(task.serializer)
        ttl_ms = int(task.result_ttl_s * 1000)
        if task.track_started:
            started = ResultRecord(
                TaskState.STARTED.value, now_ms(), task.name, worker=self.consumer
            )
            data = encode_result_record(started)
            self._io(lambda: self.broker.set_state(envelope.id, data, ttl_ms))
        self.app.signals.task_prerun.send(request)
        start = time.perf_counter()
        try:
            value = task.fn(*request.args, **request.kwargs)
        except Exception as exc:  # noqa: BLE001 - the task's failure is data, not our error
            runtime = time.perf_counter() - start
            if envelope.retries < task.retries:
                self._retry(queue, body, envelope, task, exc, ttl_ms)
                outcome = Outcome(request, TaskState.RETRY.value, exception=exc, runtime_s=runtime)
                self.app.signals.task_postrun.send(outcome)
                return None
            return self._fail(queue, body, envelope, task, request, exc, runtime, claim_next)
        runtime = time.perf_counter() - start
        try:
            encoded = None if task.ignore_result else encode_result(codec, task.name, value)
        except SerializationError as exc:
            # The body ran and its side effects happened: running it again cannot help.
            return self._fail(queue, body, envelope, task, request, exc, runtime, claim_next)
        record = ResultRecord(
            TaskState.SUCCESS.value,
            now_ms(),
            task.name,
            value=encoded,
            serializer=codec.code,
            worker=self.consumer,
            runtime_s=runtime,
            retries=envelope.retries,
        )
        event = self._event(
            "task-succeeded", *self._fields(envelope, queue), "rt", f"{runtime:.6f}"
        )
        result = None if task.ignore_result else (encode_result_record(record), ttl_ms)
        claim = self._ack(queue, body, envelope.id, result, event, claim_next)
        outcome = Outcome(request, TaskState.SUCCESS.value, result=value, runtime_s=runtime)
        self.app.signals.task_success.send(outcome)
        self.app.signals.task_postrun.send(outcome)
        return claim

    def _ack(
        self,
        queue: str,
        body: bytes,
        task_id: str,
        result: tuple[bytes, int] | None,
        event: cmd.Command | None,
        claim_next: int,
    ) -> Claim | None:
        held, claim = self._io(
            lambda: self.broker.ack(queue, self.consumer, body, task_id, result, event, claim_next)
        )
        if not held:
            logger.warning(
                "task finished after its lease expired; it may run again elsewhere id=%s", task_id
            )
        return claim  # type: ignore[no-any-return]

    def _fields(self, envelope: Envelope, queue: str) -> tuple[str, ...]:
        return ("i", envelope.id, "n", envelope.task, "q", queue, "w", self.consumer)

    def _error_record(
        self, state: str, task: Task[Any, Any], exc: Exception, retries: int, runtime: float | None
    ) -> tuple[ResultRecord, str]:
        """The FAILURE or RETRY record of ``exc``, and its one-line summary for events."""
        codec = get_serializer(task.serializer)
        name, message, exc_args, trace = failure.describe(exc, codec)
        record = ResultRecord(
            state,
            now_ms(),
            task.name,
            serializer=codec.code,
            exc_type=name,
            exc_message=message,
            exc_args=exc_args,
            traceback=trace,
            worker=self.consumer,
            runtime_s=runtime,
            retries=retries,
        )
        return record, f"{name.replace(':', '.')}: {message}"[:1000]

    def _fail(
        self,
        queue: str,
        body: bytes,
        envelope: Envelope,
        task: Task[Any, Any],
        request: Request,
        exc: Exception,
        runtime: float,
        claim_next: int,
    ) -> Claim | None:
        state = TaskState.FAILURE.value
        record, summary = self._error_record(state, task, exc, envelope.retries, runtime)
        logger.info("task failed task=%s id=%s error=%s", task.name, envelope.id, summary)
        event = self._event(
            "task-failed",
            *self._fields(envelope, queue),
            "rt",
            f"{runtime:.6f}",
            "exception",
            summary,
        )
        ttl_ms = int(task.result_ttl_s * 1000)
        result = None if task.ignore_result else (encode_result_record(record), ttl_ms)
        claim = self._ack(queue, body, envelope.id, result, event, claim_next)
        outcome = Outcome(
            request, state, exception=exc, traceback=record.traceback, runtime_s=runtime
        )
        self.app.signals.task_failure.send(outcome)
        self.app.signals.task_postrun.send(outcome)
        return claim

    def _retry(
        self,
        queue: str,
        body: bytes,
        envelope: Envelope,
        task: Task[Any, Any],
        exc: Exception,
        ttl_ms: int,
    ) -> None:
        retries = envelope.retries + 1
        record, summary = self._error_record(TaskState.RETRY.value, task, exc, retries, None)
        logger.info(
            "task retry task=%s id=%s retry=%d/%d error=%s",
            task.name,
            envelope.id,
            retries,
            task.retries,
            summary,
        )
        new_body = encode_envelope(msgspec.structs.replace(envelope, retries=retries))
        event_fields = (
            *self._fields(envelope, queue),
            "retries",
            str(retries),
            "exception",
            summary,
        )
        state = (encode_result_record(record), ttl_ms)
        self._io(
            lambda: self.broker.retry(
                queue,
                self.consumer,
                body,
                new_body,
                envelope.priority,
                None,
                envelope.id,
                state,
                event_fields,
            )
        )

    def _revoke(
        self,
        queue: str,
        body: bytes,
        envelope: Envelope,
        task: Task[Any, Any],
        reason: str,
        claim_next: int,
    ) -> Claim | None:
        logger.info("task revoked task=%s id=%s reason=%s", task.name, envelope.id, reason)
        record = ResultRecord(
            TaskState.REVOKED.value, now_ms(), task.name, exc_message=reason, worker=self.consumer
        )
        event = self._event("task-revoked", *self._fields(envelope, queue), "reason", reason)
        result = (
            None
            if task.ignore_result
            else (encode_result_record(record), int(task.result_ttl_s * 1000))
        )
        return self._ack(queue, body, envelope.id, result, event, claim_next)

    def _bury(
        self,
        queue: str,
        body: bytes,
        reason: str,
        detail: str,
        envelope: Envelope | None,
        task: Task[Any, Any] | None,
    ) -> None:
        """Move a message that must not run to the dead letters; fail its result if it has one."""
        logger.warning(
            "message dead-lettered queue=%s reason=%s id=%s detail=%s",
            queue,
            reason,
            envelope.id if envelope else "?",
            detail,
        )
        fields: list[str | bytes] = ["reason", reason, "detail", detail, "w", self.consumer]
        task_id = None
        result = None
        event_fields = ["q", queue, "w", self.consumer, "reason", reason, "detail", detail[:1000]]
        if envelope is not None:
            task_id = envelope.id
            fields += ["i", envelope.id, "n", envelope.task]
            event_fields += ["i", envelope.id, "n", envelope.task]
            if task is None or not task.ignore_result:
                ttl_s = task.result_ttl_s if task else self.app.conf.result_ttl_s
                record = ResultRecord(
                    TaskState.FAILURE.value,
                    now_ms(),
                    envelope.task,
                    exc_type=f"omnitask.errors:{_ERROR_FOR_REASON.get(reason, 'MessageError')}",
                    exc_message=detail,
                    exc_args=_MSGPACK.encode([detail]),
                    worker=self.consumer,
                    retries=envelope.retries,
                )
                result = (encode_result_record(record), int(ttl_s * 1000))
        self._io(
            lambda: self.broker.bury(
                queue, self.consumer, body, fields, task_id, result, event_fields
            )
        )


# Results of dead-lettered tasks fail with a type the caller can catch by name.
_ERROR_FOR_REASON = {
    "unknown-task": "TaskNotRegisteredError",
    "undecodable": "SerializationError",
    "serializer-refused": "SerializationError",
    "max-deliveries": "WorkerLostError",
}


_MSGPACK = get_serializer("msgpack")


def _datetime(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
