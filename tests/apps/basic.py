"""The tasks the worker tests run. The broker URL comes from OMNITASK_BROKER_URL."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime

import redis

from omnitask import OmniTask

app = OmniTask("tbasic")


def _redis() -> redis.Redis:
    return redis.Redis.from_url(app.conf.broker_url)


@dataclass
class Point:
    x: int
    y: int


class Boom(Exception):
    """A task's own exception type, rebuilt on the caller's side."""


class Unbuildable(Exception):
    """An exception whose constructor does not accept its own args."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}+{b}")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def echo(value: object) -> object:
    return value


@app.task
def shift(p: Point, when: datetime) -> tuple[Point, datetime]:
    return Point(p.x + 1, p.y + 1), when


@app.task
def fail(message: str) -> None:
    raise Boom(message)


@app.task
def fail_odd() -> None:
    raise Unbuildable(1, 2)


@app.task
def record(tag: str, seconds: float = 0.0) -> str:
    """Append ``tag`` to the list ``log`` (runs are counted there), after an optional sleep."""
    client = _redis()
    client.rpush("test:started", tag)
    if seconds:
        time.sleep(seconds)
    client.rpush("test:log", tag)
    return tag


@app.task(retries=2)
def flaky(tag: str) -> int:
    """Fails twice, then succeeds: counts its runs in ``test:flaky:<tag>``."""
    runs = int(_redis().incr(f"test:flaky:{tag}"))
    if runs < 3:
        raise RuntimeError(f"run {runs}")
    return runs


@app.task
def die(tag: str) -> None:
    """Kills its own process on every delivery (a poison pill)."""
    _redis().rpush("test:died", tag)
    os._exit(1)


@app.task(ignore_result=True)
def quiet(tag: str) -> None:
    _redis().rpush("test:log", tag)


@app.task(result_ttl=1)
def short_lived() -> str:
    return "soon gone"


@app.task(retries=3, retry_on=(KeyError,), retry_backoff=False)
def picky(kind: str) -> None:
    """Only KeyError is retried: counts runs in ``test:picky``."""
    _redis().incr("test:picky")
    raise KeyError(kind) if kind == "key" else ValueError(kind)


@app.task(retries=1, retry_backoff=False, retry_delay=0.8)
def fixed_delay(tag: str) -> str:
    """Fails once, then succeeds after a fixed 0.8 s wait that happens in Redis."""
    if _redis().incr(f"test:fixed:{tag}") == 1:
        raise RuntimeError("first run fails")
    return tag


@app.task(bind=True, retries=2)
def bound(self: object, tag: str) -> dict[str, object]:
    """Retries itself twice through self.retry(), recording each request."""
    from omnitask import Task

    assert isinstance(self, Task)
    req = self.request
    _redis().rpush("test:requests", f"{req.id}|{req.retries}|{req.delivery}|{req.queue}")
    if req.retries < 2:
        raise self.retry(countdown=0.1)
    return {"retries": req.retries, "args": list(req.args)}


@app.task(soft_time_limit=0.3)
def soft_limited() -> str:
    from omnitask import SoftTimeLimitExceeded

    try:
        time.sleep(5)
    except SoftTimeLimitExceeded:
        _redis().rpush("test:log", "cleaned up")
        return "stopped in time"
    return "not stopped"


@app.task(time_limit=0.5)
def hard_limited(tag: str) -> None:
    _redis().rpush("test:started", tag)
    time.sleep(30)


@app.task(time_limit=0.5, retries=1, retry_backoff=False)
def hard_limited_retry(tag: str) -> None:
    _redis().rpush("test:started", tag)
    time.sleep(30)


@app.task(serializer="cloudpickle")
def apply_fn(fn: object, x: int) -> object:
    """Runs a function sent by value (a lambda): only cloudpickle can carry it."""
    assert callable(fn)
    _redis().rpush("test:log", "pickled ran")
    return fn(x)


@app.task
def exit75(tag: str) -> None:
    """Exits with the code a recycled child uses: must still count as a crash."""
    _redis().rpush("test:died", tag)
    os._exit(75)


@app.task(bind=True)
def crunch(self: object, steps: int) -> int:
    """Reports progress after each step, then waits for the test to let it finish."""
    from omnitask import Task

    assert isinstance(self, Task)
    client = _redis()
    for step in range(1, steps + 1):
        self.progress(step, steps)
    self.update_state(meta={"phase": "waiting"})
    client.blpop(["test:go"], timeout=10)
    return steps
