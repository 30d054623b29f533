"""Running one claimed message: decode, check, call, classify, and finish it atomically.

Every path ends in exactly one transition of the protocol: ack (SUCCESS, FAILURE, REVOKED),
retry, or bury (a message that must not run: malformed, unknown task, poison pill).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import anyio
import msgspec

from omnitask import canvas, failure
from omnitask.broker import commands as cmd
from omnitask.broker.client import Ack, Claimed
from omnitask.context import CURRENT_REQUEST, Outcome, Request
from omnitask.errors import (
    MaxRetriesExceededError,
    MessageError,
    SoftTimeLimitExceeded,
    TimeLimitExceeded,
)
from omnitask.messages import (
    Envelope,
    ResultRecord,
    decode_envelope,
    decode_result,
    encode_envelope,
    encode_envelope_full,
    encode_result_record,
    ms_to_datetime,
    now_ms,
)
from omnitask.ratelimit import CAP_ENTRY_DEFAULT_S, CAP_RECHECK_MS
from omnitask.result import TaskState
from omnitask.result import _value as result_value
from omnitask.retry import Retry
from omnitask.serialization import decode_call, encode_result, get_serializer
from omnitask.worker.aio import AsyncRunner, CancelReason, run_coroutine_here
from omnitask.worker.limits import RunSlot, soft_time_limit

if TYPE_CHECKING:
    from omnitask.app import OmniTask
    from omnitask.broker.client import Broker, Claim
    from omnitask.task import Task

__all__ = ("Executor",)

logger = logging.getLogger(__name__)

T = TypeVar("T")

ACK_DEFER_RUNTIME_MAX_S = 0.01
"""With prefetch, only the acks of runs shorter than this wait for their batch: a slow task's
result is not held back, and its ack's round trip is small beside its run."""

ACK_DEFER_MAX_S = 0.1
"""With prefetch, the longest an ack waits for the rest of its batch."""


def _direct(step: Callable[[], T]) -> T:
    return step()


class _Abandoned(Exception):  # noqa: N818 - a signal between two methods, never raised out
    """An async run cancelled by the end of a warm shutdown: it is handed back, not recorded."""


class _Terminated(Exception):  # noqa: N818
    """An async run cancelled by a revoke with ``terminate=True``."""


class _Run(NamedTuple):
    """One message being handled: where it came from, as claimed, decoded, and its task."""

    queue: str
    body: bytes
    envelope: Envelope
    task: Task[Any, Any]


class Executor:
    """Runs claimed messages for one consumer (a worker child)."""

    def __init__(
        self,
        app: OmniTask,
        consumer: str,
        io: Callable[[Callable[[], Any]], Any] = _direct,
        slot: RunSlot | None = None,
        broker: Broker | None = None,
        runner: AsyncRunner | None = None,
    ) -> None:
        """Run tasks of ``app`` as ``consumer``.

        ``io`` runs each Redis step (the child passes one that retries while Redis is away);
        only the Redis steps are retried, never the task body. Async tasks go to ``runner``
        (the child's event loop); without one they run to completion here.
        """
        self.runner = runner
        # Async tasks finish in other threads while the main thread claims. A claim tells
        # Redis how many tasks this consumer holds (to find envelopes of a claim whose reply
        # was lost), so claims and the steps that finish async tasks take turns, and the
        # count is exact whenever a claim runs.
        self.lock = threading.Lock()
        self._held: dict[str, int] = {}  # queue -> async tasks claimed and not yet finished
        self._capped: dict[str, str] = {}  # task id -> the cap it runs under
        self.app = app
        self.consumer = consumer
        self._io = io
        # Only a worker child has a slot; it arms the time limits of the runs it makes.
        self.slot = slot
        self.broker = broker or app.broker
        conf = app.conf
        # A prefetching child defers the acks of quick successes (see worker_prefetch). None
        # may wait while anything claims: the claim would take them for envelopes whose
        # reply was lost and hand them out again, so every claim sends them first.
        self.defer_acks = False
        self._deferred: list[Ack] = []
        self._deferred_since = 0.0
        self._defer_lock = threading.Lock()
        self._maxlen = conf.events_maxlen if conf.events else 0

    def _event(self, queue: str, kind: str, *fields: str) -> cmd.Command | None:
        if not self._maxlen:
            return None
        return cmd.event(self.app.keys.queue(queue).events, self._maxlen, kind, *fields)

    def claim(self, queue: str, n: int = 1) -> Claim:
        """Claim the next ``n`` tasks of ``queue`` for this consumer."""
        self.flush_deferred()
        with self.lock:
            return self.broker.claim(queue, self.consumer, n, self._held.get(queue, 0))

    def wait_and_claim(self, queue: str, timeout_s: float, n: int = 1) -> Claim:
        """Wait for a wake token of ``queue`` (at most ``timeout_s``), then claim ``n`` tasks.

        For a child without async tasks, whose in-flight count is known while it is idle.
        """
        self.flush_deferred()
        return self.broker.wait_and_claim(queue, self.consumer, timeout_s, n)

    def handle(self, queue: str, claimed: Claimed, claim_next: int) -> Claim | None:
        """Run one claimed message to its outcome; return the next claim if one was made."""
        try:
            envelope = decode_envelope(claimed.body)
        except MessageError as exc:
            self._bury(queue, claimed.body, "malformed", str(exc), None, None)
            return None
        if not self._trusted(queue, claimed.body, envelope):
            return None
        task = self._task(queue, claimed.body, envelope)
        if task is None:
            return None
        if claimed.revoked:
            return self._revoke(_Run(queue, claimed.body, envelope, task), "revoked", claim_next)
        if claimed.deliveries >= self.app.conf.max_deliveries:
            reason = (
                f"its worker process died {claimed.deliveries} times while running it "
                f"(max_deliveries={self.app.conf.max_deliveries})"
            )
            self._bury(queue, claimed.body, "max-deliveries", reason, envelope, task)
            return None
        if envelope.expires_ms is not None and now_ms() > envelope.expires_ms:
            return self._revoke(_Run(queue, claimed.body, envelope, task), "expired", claim_next)
        request = self._request(queue, claimed, envelope, task)
        if request is None:
            return None
        if task.limits is not None and not self._admit(_Run(queue, claimed.body, envelope, task),
                                                       request):  # fmt: skip
            return None  # waits in Redis until it may run
        if task.is_async:
            self._submit(_Run(queue, claimed.body, envelope, task), request)
            return None
        return self._run(_Run(queue, claimed.body, envelope, task), request, claim_next)

    def finish_outside(
        self, queue: str, body: bytes, exc: Exception, *, revoked: bool, task_id: str
    ) -> bool:
        """Record the outcome of a run that the supervisor stopped by killing its child.

        A run past its hard time limit fails with ``exc`` (or is retried if its policy says
        so); a run revoked with ``terminate=True`` is recorded as REVOKED.

        Only the run that was stopped (``task_id``) gets that outcome; returns False for any
        other message the child held (it claimed it with its last ack), which the caller hands
        back untouched.
        """
        try:
            envelope = decode_envelope(body)
        except MessageError:
            return False
        if envelope.id != task_id or not self._trusted(queue, body, envelope):
            return False
        task = self._task(queue, body, envelope)
        if task is None:
            return True
        request = self._request(queue, Claimed(body, 0, False), envelope, task)
        if request is None:
            return True
        limits = task.limits
        if limits is not None and limits.cap:
            # The killed run held a place under its cap: the outcome's ack frees it.
            with contextlib.suppress(Exception):  # a limit_key that fails: the place lapses
                limit = task.name + limits.suffix(task, request.args, request.kwargs)
                self._capped[task_id] = self.app.keys.queue(queue).cap(limit)
        if revoked:
            self._revoke(_Run(queue, body, envelope, task), "terminated", 0)
            return True
        hard = self._limits(task, envelope)[0] or 0.0
        self._failed(_Run(queue, body, envelope, task), request, exc, hard, 0)
        return True

    def _record_bytes(self, record: ResultRecord) -> bytes:
        signer = self.app.signer
        return encode_result_record(signer.sign(record) if signer else record)

    def _trusted(self, queue: str, body: bytes, envelope: Envelope) -> bool:
        """Check the signature (with a secret_key) and that a pickled payload may be read."""
        signer = self.app.signer
        # The signature covers the decoded values; demanding the canonical bytes too stops a
        # re-encoded message (same values, other bytes) from passing with a valid signature.
        # Either encoding: trimmed (encode_envelope), or with every field, as senders before
        # the trimming wrote it; the signature covers the full one either way.
        if signer is not None and not (
            signer.verify(envelope)
            and body in (encode_envelope(envelope), encode_envelope_full(envelope))
        ):
            what = (
                "is not signed" if envelope.sig is None else "has a signature that does not match"
            )
            self._bury(queue, body, "bad-signature", f"message {what}; not run", envelope, None)
            return False
        pickled = envelope.serializer == _PICKLE.code
        if pickled and signer is None and not self.app.conf.unsigned_pickle:
            detail = "unsigned cloudpickle payload (set secret_key, or unsigned_pickle=True)"
            self._bury(queue, body, "serializer-refused", detail, envelope, None)
            return False
        return True

    def _task(self, queue: str, body: bytes, envelope: Envelope) -> Task[Any, Any] | None:
        task = self.app.tasks.get(envelope.task)
        if task is None:
            reason = f"no task named {envelope.task!r} is registered on this worker"
            self._bury(queue, body, "unknown-task", reason, envelope, None)
        return task

    def _request(
        self, queue: str, claimed: Claimed, envelope: Envelope, task: Task[Any, Any]
    ) -> Request | None:
        """Decode the arguments into a Request, or dead-letter a message that must not run."""
        if envelope.serializer not in (_MSGPACK.code, get_serializer(task.serializer).code):
            # Unpickling runs code: a payload in a serializer the task does not use is refused.
            detail = f"payload serializer {envelope.serializer} is not accepted by this task"
            self._bury(queue, claimed.body, "serializer-refused", detail, envelope, task)
            return None
        try:
            args, kwargs = decode_call(get_serializer(envelope.serializer), envelope.payload)
        except Exception as exc:  # noqa: BLE001 - any decoder error means the same thing here
            detail = f"{type(exc).__name__}: {exc}"
            self._bury(queue, claimed.body, "undecodable", detail, envelope, task)
            return None
        if envelope.canvas is not None:
            gathered = self._gather(queue, claimed.body, envelope, task)
            if gathered is None:
                return None
            args = (*gathered, *args)
        try:
            args, kwargs = task.arguments.convert(args, kwargs)
        except TypeError as exc:  # ArgumentTypeError too: this message cannot run, ever
            self._bury(queue, claimed.body, "bad-arguments", str(exc), envelope, task)
            return None
        return Request(
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
            headers=envelope.headers or {},
        )

    def _admit(self, run: _Run, request: Request) -> bool:
        """Whether a task with a rate limit or cap may run now; if not, it went back to wait."""
        task = run.task
        limits = task.limits
        assert limits is not None
        try:
            limit = task.name + limits.suffix(task, request.args, request.kwargs)
        except Exception as exc:  # noqa: BLE001 - a failing limit_key: this call cannot run
            self._bury(run.queue, run.body, "bad-arguments", f"limit_key: {exc}", run.envelope,
                       task)  # fmt: skip
            return False
        hard = self._limits(task, run.envelope)[0]
        lifetime_ms = int((hard or CAP_ENTRY_DEFAULT_S) * 1000) + 1000
        due = self._io(
            lambda: self.broker.admit(
                run.queue, self.consumer, run.body, request.id, limit, limits.interval_ms,
                limits.cap or 0, lifetime_ms, CAP_RECHECK_MS,
            )
        )  # fmt: skip
        if due == 0:
            if limits.cap:
                self._capped[request.id] = self.app.keys.queue(run.queue).cap(limit)
            return True
        if due < 0:
            _warn_not_held(request.id)
        else:
            logger.debug("task waits for its limit task=%s id=%s", task.name, request.id)
        return False

    def _release(self, task_id: str) -> list[cmd.Command]:
        """The command that frees a finished task's place under its concurrency cap."""
        key = self._capped.pop(task_id, None)
        return [] if key is None else [("ZREM", key, task_id)]

    def _gather(
        self, queue: str, body: bytes, envelope: Envelope, task: Task[Any, Any]
    ) -> tuple[Any, ...] | None:
        """What a chord's callback gets before its own arguments: the header's results.

        An empty tuple for other tasks (and immutable callbacks); None when the results are
        gone (the chord outlived the result TTL), after dead-lettering the message.
        """
        plan = canvas.gather_plan(self.app, envelope, queue)
        if plan is None:
            return ()
        key, fields, immutable = plan
        if immutable:
            return ()
        records: list[bytes | None] = self._io(lambda: self.broker.redis.hmget(key, fields))
        if any(r is None for r in records):
            detail = "the chord's header results are gone (older than the result TTL?)"
            self._bury(queue, body, "chord-expired", detail, envelope, task)
            return None
        return ([result_value(decode_result(r), self.app) for r in records if r is not None],)

    def _run(self, run: _Run, request: Request, claim_next: int) -> Claim | None:
        self._begin(run, request)
        start = time.perf_counter()
        try:
            value = self._call(run.task, request, run.envelope)
        except Exception as exc:  # noqa: BLE001 - the task's failure is data, not our error
            return self._failed(run, request, exc, time.perf_counter() - start, claim_next)
        return self._succeeded(run, request, value, time.perf_counter() - start, claim_next)

    def _begin(self, run: _Run, request: Request) -> None:
        task = run.task
        if task.track_started:
            started = ResultRecord(
                TaskState.STARTED.value, now_ms(), task.name, worker=self.consumer
            )
            data = self._record_bytes(started)
            ttl_ms = int(task.result_ttl_s * 1000)
            self._io(lambda: self.broker.set_state(run.envelope.id, run.queue, data, ttl_ms))
        self.app.signals.task_prerun.send(request)

    def _succeeded(
        self, run: _Run, request: Request, value: Any, runtime: float, claim_next: int
    ) -> Claim | None:
        try:
            ack = self._success_ack(run, value, runtime)
        except Exception as exc:  # noqa: BLE001 - unencodable result, or workflow step
            # The body ran and its side effects happened: running it again cannot help.
            return self._fail(run, request, exc, runtime, claim_next)
        if self.defer_acks and not ack.extra and runtime < ACK_DEFER_RUNTIME_MAX_S:
            with self._defer_lock:
                if not self._deferred:
                    self._deferred_since = time.monotonic()
                self._deferred.append(ack)
            claim = None
            if claim_next or time.monotonic() - self._deferred_since > ACK_DEFER_MAX_S:
                claim = self.flush_deferred(claim_next)
        else:
            claim = self._ack(
                run.queue, run.body, ack.task_id, ack.result, ack.event, claim_next,
                follow=(ack.extra, ()),
            )  # fmt: skip
        self._success_signals(request, value, runtime)
        return claim

    def watch_deferred(self) -> None:
        """Send waiting acks once the oldest has waited ``ACK_DEFER_MAX_S`` (a thread's loop).

        While a long task runs, the acks of the quick ones before it would wait for its end;
        and if its child were killed (hard time limit, terminate), their tasks would be
        handed back and run again. Started by a prefetching child; never returns.
        """
        while True:
            time.sleep(ACK_DEFER_MAX_S / 4)
            if self._deferred and time.monotonic() - self._deferred_since > ACK_DEFER_MAX_S:
                try:
                    self.flush_deferred()
                except Exception:  # the main thread sends them next time
                    logger.exception("sending the acks of a prefetched batch failed")

    def flush_deferred(self, claim_next: int = 0) -> Claim | None:
        """Send the deferred acks of a prefetched batch, with a claim of ``claim_next``.

        Returns the claim, if one was made.
        """
        if not self._deferred:
            return None  # every claim and ack asks: without prefetch, nothing to lock
        with self._defer_lock:
            acks, self._deferred = self._deferred, []
        if not acks:
            return None
        queue = acks[0].queue

        def send(pending: list[Ack]) -> tuple[list[bool], Claim | None]:
            with self.lock:  # it claims too: see __init__
                held = self._held.get(queue, 0)
                return self.broker.ack_batch(queue, self.consumer, pending, claim_next, held)

        held, claim = self._ack_once(acks, send)
        for ack, was_held in zip(acks, held, strict=True):
            if not was_held:
                _warn_not_held(ack.task_id)
        return claim

    def _ack_once(
        self, acks: list[Ack], send: Callable[[list[Ack]], tuple[list[bool], Claim | None]]
    ) -> tuple[list[bool], Claim | None]:
        """``send(acks)``, retried while Redis is unreachable, never acknowledging one twice.

        A try whose reply was lost may have applied: the next one sends only the acks whose
        envelope the consumer still holds (the rest are done, or went elsewhere when their
        lease lapsed), so nothing that follows a task is queued twice. Returns, per ack,
        whether it was still held (True for one a lost try had done), and ``send``'s claim.
        """
        tries = 0

        def step() -> tuple[list[bool], Claim | None]:
            nonlocal tries
            tries += 1
            if tries == 1:
                return send(acks)
            held = [self.broker.holds(a.queue, self.consumer, a.body) for a in acks]
            done, claim = send([a for a, h in zip(acks, held, strict=True) if h])
            was = iter(done)
            return [next(was) if h else True for h in held], claim

        return self._io(step)  # type: ignore[no-any-return]

    def _success_ack(self, run: _Run, value: Any, runtime: float) -> Ack:
        """What acknowledges a successful run: its result record and task-succeeded event.

        Raises:
            SerializationError: The return value cannot be encoded.
        """
        queue, body, envelope, task = run
        codec = get_serializer(task.serializer)
        encoded = None if task.ignore_result else encode_result(codec, task.name, value)
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
            queue, "task-succeeded", *self._fields(envelope, queue), "rt", f"{runtime:.6f}"
        )
        ttl_ms = int(task.result_ttl_s * 1000)
        data = self._record_bytes(record)
        result = None if task.ignore_result else (data, ttl_ms)
        extra = canvas.on_success(self.app, envelope, queue, value, data) if envelope.canvas else []
        return Ack(queue, body, envelope.id, result, event, [*extra, *self._release(envelope.id)])

    def _success_signals(self, request: Request, value: Any, runtime: float) -> None:
        signals = self.app.signals
        if not (signals.task_success.has_receivers or signals.task_postrun.has_receivers):
            return  # the common case: no Outcome to build per task
        outcome = Outcome(request, TaskState.SUCCESS.value, result=value, runtime_s=runtime)
        signals.task_success.send(outcome)
        signals.task_postrun.send(outcome)

    def _limits(self, task: Task[Any, Any], envelope: Envelope) -> tuple[float | None, ...]:
        """The hard and soft time limits of a run: per call, else the task's, else the app's."""
        conf = self.app.conf
        hard = _ms_to_s(envelope.time_limit_ms) or task.time_limit_s or conf.time_limit_s
        soft = (
            _ms_to_s(envelope.soft_time_limit_ms)
            or task.soft_time_limit_s
            or conf.soft_time_limit_s
        )
        return hard, soft

    def _call(self, task: Task[Any, Any], request: Request, envelope: Envelope) -> Any:
        """Call the task's function with its request current and its time limits armed."""
        hard, soft = self._limits(task, envelope)
        args = (task, *request.args) if task.bind else request.args
        token = CURRENT_REQUEST.set(request)
        if self.slot is not None:
            self.slot.begin(request.id, hard)
        returned = False
        try:
            with soft_time_limit(soft if self.slot is not None else None):
                value = task.fn(*args, **request.kwargs)
                if inspect.iscoroutine(value):
                    # A coroutine from a function that does not look async (a sync wrapper):
                    # run it here, in the main thread, where the time limits apply.
                    value = run_coroutine_here(self.app.conf.async_backend, lambda: value)
                returned = True
            return value
        except SoftTimeLimitExceeded:
            if returned:  # the alarm fired after the task had returned: it succeeded
                return value
            raise
        finally:
            if self.slot is not None:
                self.slot.end()
            CURRENT_REQUEST.reset(token)

    # -- async tasks ------------------------------------------------------------------------

    def _submit(self, run: _Run, request: Request) -> None:
        """Hand an async task to the child's event loop, or run it here without one."""
        with self.lock:
            self._held[run.queue] = self._held.get(run.queue, 0) + 1
        if self.runner is None:
            run_coroutine_here(
                self.app.conf.async_backend,
                lambda: self._run_async(run, request, anyio.CancelScope()),
            )
            return
        self.runner.submit(request.id, partial(self._run_async, run, request))

    def _finish_async(self, queue: str, step: Callable[[], object]) -> None:
        """Run the step that takes an async task out of flight; in a thread, not on the loop."""
        with self.lock:
            try:
                step()
            finally:
                self._held[queue] -= 1

    async def _run_async(self, run: _Run, request: Request, scope: anyio.CancelScope) -> None:
        """Run an async task on the event loop; record its outcome from a thread.

        Redis steps run in a thread, so that a slow or unreachable Redis stalls only this
        task, never the loop or the time limits of the other tasks on it.
        """
        if run.task.track_started:
            await anyio.to_thread.run_sync(self._begin, run, request)
        else:
            self.app.signals.task_prerun.send(request)
        start = time.perf_counter()
        try:
            value = await self._call_async(run, request, scope)
        except _Abandoned:
            return  # left in flight: handed back to the queue when the child exits
        except _Terminated:
            step = partial(self._revoke, run, "terminated", 0)
        except Exception as exc:  # noqa: BLE001 - the task's failure is data, not our error
            step = partial(self._failed, run, request, exc, time.perf_counter() - start, 0)
        else:
            runtime = time.perf_counter() - start
            if self.runner is not None:
                try:
                    ack = self._success_ack(run, value, runtime)
                except Exception as exc:  # noqa: BLE001 - as in _succeeded
                    step = partial(self._fail, run, request, exc, runtime, 0)
                else:
                    # The hot path: acknowledged in a batch with other tasks of this loop.
                    if not await self.runner.ack(ack):
                        _warn_not_held(ack.task_id)
                    self._success_signals(request, value, runtime)
                    return
            else:
                step = partial(self._succeeded, run, request, value, runtime, 0)
        await anyio.to_thread.run_sync(self._finish_async, run.queue, step)

    def flush_acks(self, acks: list[Ack]) -> list[bool]:
        """Acknowledge finished async tasks in one step (from a worker thread)."""

        def send(pending: list[Ack]) -> tuple[list[bool], None]:
            return (self.broker.ack_many(self.consumer, pending) if pending else []), None

        with self.lock:
            try:
                return self._ack_once(acks, send)[0]
            finally:
                for ack in acks:
                    self._held[ack.queue] -= 1

    async def _call_async(self, run: _Run, request: Request, scope: anyio.CancelScope) -> Any:
        """Await the task's coroutine inside ``scope``, with the time limits as its deadline.

        An async task is stopped by cancellation at its first limit: it can clean up in
        ``finally`` (or catch the cancellation), and the run ends with SoftTimeLimitExceeded
        or TimeLimitExceeded, whichever limit came first.
        """
        task = run.task
        hard, soft = self._limits(task, run.envelope)
        limit = min(x for x in (hard, soft, math.inf) if x)
        if limit < math.inf:
            scope.deadline = anyio.current_time() + limit
        args = (task, *request.args) if task.bind else request.args
        token = CURRENT_REQUEST.set(request)
        try:
            with scope:
                value = await task.fn(*args, **request.kwargs)
            if not scope.cancel_called:
                return value
        finally:
            CURRENT_REQUEST.reset(token)
        # Cancelled: the scope swallowed the cancellation, or the task caught it and returned
        # anyway (a run past its limit still fails). Say which cancellation it was.
        reason = self.runner.cancel_reason(request.id) if self.runner else None
        if reason == CancelReason.SHUTDOWN:
            raise _Abandoned
        if reason == CancelReason.TERMINATED:
            raise _Terminated
        if soft and limit == soft:
            raise SoftTimeLimitExceeded(
                f"soft time limit ({soft:g} s) exceeded; the task was cancelled"
            )
        raise TimeLimitExceeded(f"time limit ({limit:g} s) exceeded; the task was cancelled")

    def _failed(
        self,
        run: _Run,
        request: Request,
        exc: Exception,
        runtime: float,
        claim_next: int,
    ) -> Claim | None:
        """A run raised ``exc``: retry it if the policy (or ``self.retry()``) says so, else fail."""
        envelope, task = run.envelope, run.task
        policy = task.retry_policy
        if isinstance(exc, Retry):
            limit = task.retries if exc.max_retries is None else exc.max_retries
            cause = exc.exc if isinstance(exc.exc, Exception) else exc
            if envelope.retries >= limit:
                final = (
                    exc.exc
                    if isinstance(exc.exc, Exception)
                    else MaxRetriesExceededError(
                        f"task {task.name!r} asked for retry {envelope.retries + 1} of {limit}"
                    )
                )
                return self._fail(run, request, final, runtime, claim_next)
            delay = exc.countdown_s
            if delay is None and exc.eta is not None:
                delay = max(0.0, exc.eta.timestamp() - time.time())
            if delay is None:
                delay = policy.delay(envelope.retries)
        elif policy.should_retry(exc, envelope.retries):
            cause, delay = exc, policy.delay(envelope.retries)
        else:
            return self._fail(run, request, exc, runtime, claim_next)
        self._retry(run, cause, int(task.result_ttl_s * 1000), delay)
        outcome = Outcome(request, TaskState.RETRY.value, exception=cause, runtime_s=runtime)
        self.app.signals.task_postrun.send(outcome)
        return None

    def _ack(
        self,
        queue: str,
        body: bytes,
        task_id: str,
        result: tuple[bytes, int] | None,
        event: cmd.Command | None,
        claim_next: int,
        dead_fields: list[str | bytes] | None = None,
        follow: tuple[Sequence[cmd.Command], Sequence[cmd.Command]] = ((), ()),
    ) -> Claim | None:
        """Acknowledge a task; ``follow`` is what its workflow does next (broker, results)."""
        self.flush_deferred()  # acks stay in the order their tasks ended; see __init__
        release = self._release(task_id)
        if release:
            follow = ([*follow[0], *release], follow[1])

        tries = 0

        def step() -> tuple[bool, Claim | None]:
            nonlocal tries
            tries += 1
            if tries > 1 and not self.broker.holds(queue, self.consumer, body):
                # A try before this one lost its reply: the MULTI applied (or the lease lapsed
                # and the task went elsewhere). Sending it again would queue what follows the
                # task twice.
                return True, None

            def ack(held: int) -> tuple[bool, Claim | None]:
                return self.broker.ack(
                    queue,
                    self.consumer,
                    body,
                    task_id,
                    result,
                    event,
                    claim_next,
                    dead_fields,
                    held,
                    *follow,
                )

            if not claim_next:
                return ack(0)
            with self.lock:  # it claims too: see __init__
                return ack(self._held.get(queue, 0))

        held, claim = self._io(step)
        if not held:
            _warn_not_held(task_id)
        return claim  # type: ignore[no-any-return]

    def _fields(self, envelope: Envelope, queue: str) -> tuple[str, ...]:
        return ("i", envelope.id, "n", envelope.task, "q", queue, "w", self.consumer)

    def _error_record(
        self, state: str, task: Task[Any, Any], exc: Exception, retries: int, runtime: float | None
    ) -> tuple[ResultRecord, str]:
        """The FAILURE or RETRY record of ``exc``, and its one-line summary for events."""
        codec = get_serializer(task.serializer)
        record = failure.error_record(
            state, task.name, codec, exc, retries=retries, runtime_s=runtime, worker=self.consumer
        )
        name = (record.exc_type or "").replace(":", ".")
        return record, f"{name}: {record.exc_message}"[:1000]

    def _fail(
        self,
        run: _Run,
        request: Request,
        exc: Exception,
        runtime: float,
        claim_next: int,
    ) -> Claim | None:
        queue, body, envelope, task = run
        state = TaskState.FAILURE.value
        record, summary = self._error_record(state, task, exc, envelope.retries, runtime)
        logger.info("task failed task=%s id=%s error=%s", task.name, envelope.id, summary)
        event = self._event(
            queue,
            "task-failed",
            *self._fields(envelope, queue),
            "rt",
            f"{runtime:.6f}",
            "exception",
            summary,
        )
        ttl_ms = int(task.result_ttl_s * 1000)
        data = self._record_bytes(record)
        result = None if task.ignore_result else (data, ttl_ms)
        dead: list[str | bytes] = ["reason", "failed", "detail", summary, "w", self.consumer]
        dead += ["i", envelope.id, "n", envelope.task, "attempts", str(envelope.retries + 1)]
        dead += ["traceback", (record.traceback or "")[-8000:]]
        follow = self._doom(envelope, data, ttl_ms)
        claim = self._ack(queue, body, envelope.id, result, event, claim_next, dead, follow)
        outcome = Outcome(
            request, state, exception=exc, traceback=record.traceback, runtime_s=runtime
        )
        self.app.signals.task_failure.send(outcome)
        self.app.signals.task_postrun.send(outcome)
        return claim

    def _retry(
        self,
        run: _Run,
        exc: Exception,
        ttl_ms: int,
        delay_s: float,
    ) -> None:
        queue, body, envelope, task = run
        retries = envelope.retries + 1
        due_ms = now_ms() + int(delay_s * 1000) if delay_s > 0 else None
        record, summary = self._error_record(TaskState.RETRY.value, task, exc, retries, None)
        logger.info(
            "task retry task=%s id=%s retry=%d/%d error=%s",
            task.name,
            envelope.id,
            retries,
            task.retries,
            summary,
        )
        retried = msgspec.structs.replace(envelope, retries=retries)
        signer = self.app.signer
        new_body = encode_envelope(signer.sign(retried) if signer else retried)
        event_fields = (
            *self._fields(envelope, queue),
            "retries",
            str(retries),
            "exception",
            summary,
        )
        state = (self._record_bytes(record), ttl_ms)
        self._io(
            lambda: self.broker.retry(
                queue,
                self.consumer,
                body,
                new_body,
                envelope.priority,
                due_ms,
                envelope.id,
                state,
                event_fields,
            )
        )
        release = self._release(envelope.id)
        if release:  # its next run is admitted afresh; a crash before this frees it at lapse
            self._io(lambda: self.broker.run(release))

    def _revoke(
        self,
        run: _Run,
        reason: str,
        claim_next: int,
    ) -> Claim | None:
        queue, body, envelope, task = run
        logger.info("task revoked task=%s id=%s reason=%s", task.name, envelope.id, reason)
        record = ResultRecord(
            TaskState.REVOKED.value, now_ms(), task.name, exc_message=reason, worker=self.consumer
        )
        event = self._event(queue, "task-revoked", *self._fields(envelope, queue), "reason", reason)
        ttl_ms = int(task.result_ttl_s * 1000)
        data = self._record_bytes(record)
        result = None if task.ignore_result else (data, ttl_ms)
        follow = self._doom(envelope, data, ttl_ms)
        return self._ack(queue, body, envelope.id, result, event, claim_next, None, follow)

    def _doom(
        self, envelope: Envelope, record: bytes, ttl_ms: int
    ) -> tuple[Sequence[cmd.Command], Sequence[cmd.Command]]:
        """What fails the rest of a workflow whose task ends with ``record`` (not SUCCESS)."""
        if envelope.canvas is None:
            return (), ()
        return canvas.on_failure(self.app, envelope, record, ttl_ms)

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
            ttl_ms = int((task.result_ttl_s if task else self.app.conf.result_ttl_s) * 1000)
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
            data = self._record_bytes(record)
            if task is None or not task.ignore_result:
                result = (data, ttl_ms)
        tries = 0

        def bury() -> bool:
            nonlocal tries
            tries += 1
            buried = self.broker.bury(
                queue, self.consumer, body, fields, task_id, result, event_fields
            )
            # Not held on a retry: most likely the first try applied and lost its reply.
            return bool(buried or tries > 1)

        if self._io(bury) and envelope is not None and envelope.canvas is not None:
            # What would have followed it in a workflow fails with it. A step of its own: a
            # script takes no extra commands (a crash in between leaves them waiting).
            follow = canvas.on_failure(self.app, envelope, data, ttl_ms)
            self._io(lambda: self.broker.run_with_results(*follow))


# Results of dead-lettered tasks fail with a type the caller can catch by name.
_ERROR_FOR_REASON = {
    "unknown-task": "TaskNotRegisteredError",
    "undecodable": "SerializationError",
    "serializer-refused": "SerializationError",
    "max-deliveries": "WorkerLostError",
    "bad-arguments": "ArgumentTypeError",
}


_MSGPACK = get_serializer("msgpack")
_PICKLE = get_serializer("cloudpickle")


def _warn_not_held(task_id: str) -> None:
    logger.warning(
        "task finished after its lease expired; it may run again elsewhere id=%s", task_id
    )


def _ms_to_s(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000


def _datetime(ms: int | None) -> datetime | None:
    return None if ms is None else ms_to_datetime(ms)
