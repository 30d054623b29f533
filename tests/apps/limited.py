"""Rate-limited and capped tasks for tests/process/test_limits.py. Broker from the env."""

from __future__ import annotations

import time

import redis

from omnitask import OmniTask

app = OmniTask("tlimits")


def _redis() -> redis.Redis:
    return redis.Redis.from_url(app.conf.broker_url)


@app.task(rate_limit="10/s")
def tick(i: int) -> None:
    _redis().rpush("test:ticks", f"{time.time():.6f}")


@app.task(rate_limit="5/s", limit_key=lambda user, i: f"user-{user}")
def per_user(user: str, i: int) -> None:
    _redis().rpush(f"test:user:{user}", f"{time.time():.6f}")


@app.task(concurrency_limit=2)
def capped(i: int) -> None:
    r = _redis()
    running = r.incr("test:running")
    r.rpush("test:concurrent", running)
    time.sleep(0.15)
    r.decr("test:running")
