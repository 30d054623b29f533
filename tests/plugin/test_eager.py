"""Eager mode: tasks run at .delay() in this process, through the serializer, without Redis.

The app below points at a Unix socket that does not exist: anything that reached for Redis
would fail at once, so every passing test here also shows that eager mode never does.
"""

from __future__ import annotations

import threading
import time
from collections import namedtuple
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from omnitask import (
    MaxRetriesExceededError,
    OmniTask,
    Outcome,
    Request,
    ResultIgnoredError,
    SerializationError,
    TaskFailed,
    TaskNotRegisteredError,
    TaskRevokedError,
    TaskState,
)
from omnitask import TimeoutError as ResultTimeoutError
from omnitask.context import CURRENT_REQUEST
from omnitask.testing import EagerResult
from omnitask.testing.eager import EAGER_WORKER

NO_REDIS = "unix:///nonexistent/omnitask-eager-tests.sock"

app = OmniTask("teager", broker=NO_REDIS, eager=True, enqueue_timeout_s=0.5)

Pair = namedtuple("Pair", "left right")

calls: list[Any] = []


@pytest.fixture(autouse=True)
def _clear() -> Iterator[None]:
    calls.clear()
    yield
    calls.clear()


@dataclass
class Point:
    x: int
    y: int


class Boom(Exception):
    pass


class Unbuildable(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}+{b}")


@app.task
def inspect_args(when: datetime, point: Point, items: tuple[int, ...]) -> Pair:
    calls.append((when, point, items))
    return Pair(point.x, when)


@app.task
def echo(value: object) -> object:
    return value


@app.task
def make_lock() -> object:
    return threading.Lock()


@app.task
def fail(message: str) -> None:
    raise Boom(message)


@app.task
def fail_unbuildable() -> None:
    raise Unbuildable(1, 2)


@app.task(retries=3, retry_backoff=30.0)
def flaky(failures: int) -> int:
    calls.append(CURRENT_REQUEST.get())
    if len(calls) <= failures:
        raise ValueError(f"attempt {len(calls)}")
    return len(calls)


@app.task(bind=True, retries=5)
def asks_retry(self: Any, until: int, max_retries: int | None = None) -> int:
    calls.append(self.request.retries)
    if self.request.retries < until:
        raise self.retry(countdown=60, max_retries=max_retries)
    return int(self.request.retries)


@app.task(bind=True, retries=1)
def asks_retry_with(self: Any) -> None:
    raise self.retry(exc=KeyError("missing"))


@app.task(bind=True)
def whoami(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    request: Request = self.request
    return {
        "id": request.id,
        "task": request.task,
        "args": request.args,
        "kwargs": request.kwargs,
        "queue": request.queue,
        "priority": request.priority,
        "worker": request.worker,
        "same_task": self is whoami,
    }


@app.task
async def add_async(x: int, y: int) -> int:
    await anyio.lowlevel.checkpoint()
    return x + y


@app.task(bind=True)
async def request_id_async(self: Any) -> str:
    await anyio.lowlevel.checkpoint()
    return str(self.request.id)


@app.task(ignore_result=True)
def side_effect(value: int) -> int:
    calls.append(value)
    return value


@app.task(bind=True, track_started=True)
def reports(self: Any) -> str:
    self.progress(1, 2)
    self.update_state("CUSTOM", {"step": "two"})
    return "done"


@app.task
def outer(x: int) -> int:
    return int(echo.delay(x).get()) + 1


def test_arguments_and_result_round_trip_like_a_worker() -> None:
    when = datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)
    result = inspect_args.delay(when, Point(1, 2), (3, 4))
    assert isinstance(result, EagerResult)
    [(got_when, got_point, got_items)] = calls
    assert type(got_when) is datetime and got_when == when
    assert got_point == Point(1, 2) and type(got_point) is Point
    assert type(got_items) is tuple
    value = result.get()
    # A namedtuple travels as a plain tuple, as it would from a worker.
    assert type(value) is tuple and value == (1, when)
    assert result.state == TaskState.SUCCESS == result.status
    assert result.ready() and result.successful() and not result.failed()
    assert result.result == (1, when) and result.traceback is None
    assert result.date_done is not None and result.date_done.tzinfo is not None
    assert inspect_args(when, Point(1, 2), (3, 4)) == Pair(1, when)  # direct call: unchanged


def test_unserializable_argument_raises_at_delay() -> None:
    with pytest.raises(SerializationError, match="index 0"):
        echo.delay(lambda: 1)
    with pytest.raises(SerializationError, match="'value'"):
        echo.apply_async(kwargs={"value": threading.Lock()})


def test_unserializable_result_fails_like_a_worker() -> None:
    result = make_lock.delay()
    assert result.failed() and result.state == TaskState.FAILURE
    assert isinstance(result.result, SerializationError)
    with pytest.raises(SerializationError, match="result of task"):
        result.get()


def test_get_reraises_the_task_exception() -> None:
    result = fail.delay("bad input")
    with pytest.raises(Boom) as info:
        result.get(timeout=1)
    assert info.value.args == ("bad input",)
    returned = result.get(propagate=False)
    assert isinstance(returned, Boom) and returned is not info.value  # rebuilt, not shared
    assert result.traceback is not None and "Boom: bad input" in result.traceback
    with pytest.raises(TaskFailed, match="Unbuildable"):
        fail_unbuildable.delay().get()


def test_retries_run_inline_without_waiting() -> None:
    started = time.monotonic()
    result = flaky.delay(2)
    assert time.monotonic() - started < 5  # the 30 s backoff is not waited for
    assert result.get() == 3
    assert [request.retries for request in calls] == [0, 1, 2]
    assert [state for state, _ in result.updates] == ["RETRY", "RETRY"]
    assert [str(info) for _, info in result.updates] == ["attempt 1", "attempt 2"]


def test_retries_exhausted_fail_with_the_last_exception() -> None:
    result = flaky.delay(10)
    with pytest.raises(ValueError, match="attempt 4"):
        result.get()
    assert len(calls) == 4


def test_self_retry() -> None:
    assert asks_retry.delay(2).get() == 2
    assert calls == [0, 1, 2]
    calls.clear()
    with pytest.raises(MaxRetriesExceededError, match="retry 2 of 1"):
        asks_retry.delay(5, max_retries=1).get()
    assert calls == [0, 1]
    with pytest.raises(KeyError, match="missing"):
        asks_retry_with.delay().get()


def test_bound_task_sees_its_request() -> None:
    result = whoami.apply_async((1, "a"), {"k": [2]}, task_id="my-id", queue="q2", priority=7)
    assert result.id == "my-id"
    assert result.get() == {
        "id": "my-id",
        "task": whoami.name,
        "args": (1, "a"),
        "kwargs": {"k": [2]},
        "queue": "q2",
        "priority": 7,
        "worker": EAGER_WORKER,
        "same_task": True,
    }
    assert CURRENT_REQUEST.get() is None


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_async_task(backend: str) -> None:
    app.configure(async_backend=backend)
    try:
        assert add_async.delay(2, 3).get() == 5
        result = request_id_async.delay()
        assert result.get() == result.id
    finally:
        app.configure(async_backend="asyncio")


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_async_task_inside_a_running_event_loop_is_refused(backend: str) -> None:
    async def main() -> None:
        with pytest.raises(RuntimeError, match="await"):
            add_async.delay(1, 2)
        # Sync tasks still run eagerly there.
        assert echo.delay(1).get() == 1

    anyio.run(main, backend=backend)


def test_delay_many() -> None:
    results = echo.delay_many([(1,), ((2, 3),), ({"a": 1},)])
    assert all(isinstance(result, EagerResult) for result in results)
    assert [result.get() for result in results] == [1, (2, 3), {"a": 1}]
    assert len({result.id for result in results}) == 3


def test_unknown_task_name() -> None:
    with pytest.raises(TaskNotRegisteredError, match="no-such-task"):
        app.send_task("no-such-task", (1,))


def test_ignored_result_runs_and_reads_like_a_worker() -> None:
    result = side_effect.delay(7)
    assert calls == [7]
    assert result.state == TaskState.PENDING
    with pytest.raises(ResultIgnoredError):
        result.get()


def test_expired_call_is_revoked() -> None:
    result = echo.apply_async((1,), expires=datetime.now(timezone.utc) - timedelta(seconds=1))
    assert result.state == TaskState.REVOKED
    with pytest.raises(TaskRevokedError):
        result.get()


def test_forget_and_revoke_stay_in_memory() -> None:
    result = echo.delay(1)
    assert result.revoke() is False and result.get() == 1
    result.forget()
    assert result.state == TaskState.PENDING
    with pytest.raises(ResultTimeoutError):
        result.get()


def test_signals_are_sent() -> None:
    seen: list[str] = []

    def prerun(request: Request) -> None:
        seen.append(f"prerun {request.task}")

    def postrun(outcome: Outcome) -> None:
        seen.append(f"postrun {outcome.state}")

    app.signals.task_prerun.connect(prerun)
    app.signals.task_postrun.connect(postrun)
    try:
        flaky.delay(1).get()
    finally:
        app.signals.task_prerun.disconnect(prerun)
        app.signals.task_postrun.disconnect(postrun)
    assert seen == [
        f"prerun {flaky.name}",
        "postrun RETRY",
        f"prerun {flaky.name}",
        "postrun SUCCESS",
    ]


def test_nested_eager_calls() -> None:
    assert outer.delay(1).get() == 2


def test_signed_app_and_cloudpickle() -> None:
    signed = OmniTask("teager-signed", broker=NO_REDIS, eager=True, secret_key="k" * 32)

    @signed.task(serializer="cloudpickle")
    def apply(fn: Any, value: int) -> Any:
        return fn(value)

    assert apply.delay(lambda v: v * 2, 21).get() == 42


def test_progress_is_kept_in_memory() -> None:
    result = reports.delay()
    assert result.get() == "done"
    assert result.updates == [
        ("STARTED", None),
        ("PROGRESS", {"current": 1, "total": 2}),
        ("CUSTOM", {"step": "two"}),
    ]


def test_get_async_answers_from_memory() -> None:
    result = echo.delay(5)
    assert anyio.run(result.get_async) == 5
