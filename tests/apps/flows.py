"""Tasks for the workflow tests (chains, groups, chords). Broker from OMNITASK_BROKER_URL."""

from __future__ import annotations

import time

import redis

from omnitask import OmniTask

app = OmniTask("tflows")


def _redis() -> redis.Redis:
    return redis.Redis.from_url(app.conf.broker_url)


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def mul(x: int, y: int) -> int:
    return x * y


@app.task
def tsum(values: list[int]) -> int:
    return sum(values)


@app.task
def collect(values: list[int], tag: str) -> int:
    """A chord callback that counts its own runs: a chord must run it exactly once."""
    _redis().incr(f"test:callback:{tag}")
    return sum(values)


@app.task
def slow_add(x: int, y: int, delay: float) -> int:
    time.sleep(delay)
    return x + y


@app.task
def boom(x: int) -> int:
    raise ValueError(f"boom {x}")


@app.task
def note(task_id: str) -> None:
    """An error callback (link_error): records the failed task's id."""
    _redis().rpush("test:errbacks", task_id)
