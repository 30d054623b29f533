"""Tasks for the inspect and control tests: ones that hold until told. Broker from the env."""

from __future__ import annotations

import anyio
import redis

from omnitask import OmniTask

app = OmniTask("tinspect")


def _redis() -> redis.Redis:
    return redis.Redis.from_url(app.conf.broker_url)


@app.task
def hold(tag: str, timeout_s: float = 15.0) -> str:
    """Pushes ``tag`` to ``test:started``, waits for ``test:go:<tag>``, then logs it."""
    client = _redis()
    client.rpush("test:started", tag)
    client.blpop([f"test:go:{tag}"], timeout=timeout_s)
    client.rpush("test:log", tag)
    return tag


@app.task
def add(x: int, y: int) -> int:
    _redis().rpush("test:log", f"add {x} {y}")
    return x + y


@app.task
async def nap(seconds: float, tag: str) -> str:
    """An async task: runs on the child's event loop."""
    await anyio.sleep(seconds)
    _redis().rpush("test:log", tag)
    return tag
