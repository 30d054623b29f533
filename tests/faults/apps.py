"""The tasks of the fault suite. Each counts its runs per argument in the hash ``faults:runs``.

The broker URL comes from OMNITASK_BROKER_URL (the worker's environment).
"""

from __future__ import annotations

import os
import time

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from omnitask import OmniTask

app = OmniTask("tfaults")

RUNS = "faults:runs"
"""HASH with one field ``<i>/<run token>`` per start of a task body with argument ``i``.

A field per run rather than HINCRBY: the task's Redis client retries a command whose reply was
lost to a Redis restart, and setting the same field twice still counts one run.
"""

STARTS = "faults:starts"
"""LIST of ``i:unix time:supervisor pid:child pid:run token``, one per start of a ``slow`` task."""

_clients: dict[int, redis.Redis] = {}


def _redis() -> redis.Redis:
    # One connection per worker child (keyed by pid: children are forked), not one per task:
    # tens of thousands of short-lived connections would fill the loopback port range. The
    # counting rides out a Redis restart (about 10 s of retries), so a task body fails only
    # when the test means it to.
    client = _clients.get(os.getpid())
    if client is None:
        retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), 30)
        client = redis.Redis.from_url(app.conf.broker_url, retry=retry)
        _clients[os.getpid()] = client
    return client


def _count(run: str) -> str:
    token = os.urandom(6).hex()
    _redis().hset(RUNS, f"{run}/{token}", 1)
    return token


@app.task
def count(i: int) -> int:
    """Count one run of ``i`` and return it."""
    _count(str(i))
    return i


@app.task
def slow(i: int, seconds: float) -> int:
    """Count one run of ``i`` (and note when and under which supervisor), then sleep."""
    token = _count(str(i))
    _redis().rpush(STARTS, f"{i}:{time.time():.3f}:{os.getppid()}:{os.getpid()}:{token}")
    time.sleep(seconds)
    return i


@app.task(queue="pills")
def crash(i: int) -> None:
    """Count one run of ``i``, then kill the worker child running it (a poison pill)."""
    _count(f"crash-{i}")
    os._exit(1)
