"""The tasks of the Redis Cluster tests. The broker URL comes from OMNITASK_BROKER_URL.

Tasks record what they did in keys of the cluster itself (through the app's own cluster
client), so a test reads the same store the worker wrote.
"""

from __future__ import annotations

import time

from omnitask import OmniTask

app = OmniTask("tcluster")

STARTED = "test:started"
"""A list of the tags of every run, appended when the run starts."""


def _log(key: str, value: object) -> None:
    app.broker.redis.rpush(key, str(value))


@app.task
def echo(i: int) -> int:
    """Return ``i``: the result record is the proof the task ran."""
    return i


@app.task
def record(tag: str, seconds: float = 0.0) -> str:
    """Log ``tag`` as started, sleep, and return it."""
    _log(STARTED, tag)
    if seconds:
        time.sleep(seconds)
    return tag


@app.task(retries=2, retry_backoff=False, retry_delay=0.05)
def flaky(tag: str) -> int:
    """Fail twice, then succeed: counts its runs in ``test:flaky:<tag>``."""
    runs = int(app.broker.redis.incr(f"test:flaky:{tag}"))
    if runs < 3:
        raise RuntimeError(f"run {runs}")
    return runs


@app.task
def fail(message: str) -> None:
    """Fail for good (no retries): the message goes to the dead letters."""
    raise ValueError(message)


@app.task(queue="q-a")
def on_a(i: int) -> str:
    """A task routed to queue ``q-a``."""
    return f"a{i}"


@app.task(queue="q-b")
def on_b(i: int) -> str:
    """A task routed to queue ``q-b``."""
    return f"b{i}"


@app.task(queue="q-d")
def on_d(i: int) -> str:
    """A task routed to queue ``q-d``."""
    return f"d{i}"


@app.task(queue="q-a")
async def async_on_a(i: int) -> str:
    """An async task on ``q-a``: a child finishes several at once, in one step per queue."""
    return f"aa{i}"


@app.task(queue="q-b")
async def async_on_b(i: int) -> str:
    """An async task on ``q-b``."""
    return f"ab{i}"


@app.task(queue="q-a")
def add_a(x: int, y: int) -> int:
    return x + y


@app.task(queue="q-a")
def sum_a(values: list[int]) -> int:
    return sum(values)
