"""Async tasks beside sync ones, for the async worker tests. Broker from OMNITASK_BROKER_URL."""

from __future__ import annotations

import time
from typing import Any

import anyio
import anyio.lowlevel
import redis

from omnitask import OmniTask

app = OmniTask("taio")


def _log(value: str) -> None:
    redis.Redis.from_url(app.conf.broker_url).rpush("test:log", value)


@app.task
async def add(x: int, y: int) -> int:
    await anyio.lowlevel.checkpoint()
    return x + y


@app.task
async def nap(seconds: float, tag: str = "") -> str:
    """Sleeps without blocking the loop: many run at once in one child."""
    await anyio.sleep(seconds)
    if tag:
        _log(tag)
    return tag


@app.task
def block(seconds: float) -> str:
    """A sync task: runs in the child's main thread, never on the loop."""
    time.sleep(seconds)
    return "blocked"


@app.task
async def fail(message: str) -> None:
    await anyio.lowlevel.checkpoint()
    raise ValueError(message)


@app.task(retries=2, retry_delay=0.05, retry_backoff=False, retry_jitter=False)
async def flaky(key: str) -> int:
    attempts = redis.Redis.from_url(app.conf.broker_url).incr(key)
    if attempts < 3:
        raise ConnectionError(f"attempt {attempts}")
    return int(attempts)


@app.task(time_limit=0.5)
async def overrun() -> None:
    try:
        await anyio.sleep(30)
    finally:
        _log("cleaned-up")


@app.task(soft_time_limit=0.3, time_limit=5)
async def soft_overrun() -> None:
    await anyio.sleep(30)


@app.task
async def forever(tag: str) -> None:
    _log(f"started:{tag}")
    try:
        await anyio.sleep(60)
    finally:
        _log(f"cancelled:{tag}")


@app.task(bind=True)
async def report(self: Any, steps: int) -> int:
    for i in range(steps):
        self.progress(i + 1, steps)
        await anyio.sleep(0.05)
    return steps


@app.task
async def which_loop() -> str:
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return "trio"
    return "asyncio"


@app.task(time_limit=0.3)
async def stubborn() -> str:
    """Catches the cancellation at its limit and returns anyway: still a failed run."""
    try:
        await anyio.sleep(5)
    except anyio.get_cancelled_exc_class():
        return "ignored the limit"
    return "done"
