"""The async no-op tasks of benchmarks/extra.py: the harness's INCR, blocking and awaited."""

from __future__ import annotations

from typing import Any

from benchmarks.drain_app import incr
from omnitask import OmniTask

app = OmniTask("drain")


@app.task
async def anoop(i: int) -> None:
    """The harness's body as it is: a sync INCR, which blocks the event loop while it waits."""
    incr()


_aclient: Any = None


@app.task
async def anoop_io(i: int) -> None:
    """The same INCR through redis-py's asyncio client: the loop runs other tasks meanwhile."""
    global _aclient
    if _aclient is None:
        import redis.asyncio

        _aclient = redis.asyncio.Redis.from_url(app.conf.broker_url)
    await _aclient.incr("bench:done")
