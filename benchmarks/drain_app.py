"""The sync no-op task of benchmarks/extra.py (an app without async tasks, so that
``--prefetch`` applies: children of apps with async tasks claim for their event loop)."""

from __future__ import annotations

import redis

from omnitask import OmniTask

app = OmniTask("drain")
_counter: redis.Redis | None = None


def incr() -> None:
    """The harness's no-op body: one INCR through a sync redis-py client."""
    global _counter
    if _counter is None:
        _counter = redis.Redis.from_url(app.conf.broker_url)
    _counter.incr("bench:done")


@app.task
def noop(i: int) -> None:
    incr()
