"""The no-op tasks of benchmarks/extra.py: the same INCR, sync and async."""

from __future__ import annotations

from typing import Any

import redis

from omnitask import OmniTask

app = OmniTask("drain")
_counter: redis.Redis | None = None


def _incr() -> None:
    global _counter
    if _counter is None:
        _counter = redis.Redis.from_url(app.conf.broker_url)
    _counter.incr("bench:done")


@app.task
def noop(i: int) -> None:
    _incr()


@app.task
async def anoop(i: int) -> None:
    _incr()


_aclient: Any = None


@app.task
async def anoop_io(i: int) -> None:
    """The same INCR through redis-py's asyncio client: the loop runs other tasks meanwhile."""
    global _aclient
    if _aclient is None:
        import redis.asyncio

        _aclient = redis.asyncio.Redis.from_url(app.conf.broker_url)
    await _aclient.incr("bench:done")
