"""The tasks the dashboard tests run. The broker URL comes from OMNITASK_BROKER_URL."""

from __future__ import annotations

import os
import time

import redis

from omnitask import OmniTask

app = OmniTask("tdash")

if os.environ.get("TEST_METRICS_PORT"):
    # A worker of this app serves its own metrics there (test_metrics.py).
    from omnitask.metrics import serve_worker_metrics

    serve_worker_metrics(app, int(os.environ["TEST_METRICS_PORT"]))


def _redis() -> redis.Redis:
    return redis.Redis.from_url(app.conf.broker_url)


class Broken(Exception):
    """What ``fragile`` raises until the test repairs it."""


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def fragile(tag: str) -> str:
    """Fails (and is dead-lettered) until the key ``test:repaired`` exists."""
    if not _redis().exists("test:repaired"):
        raise Broken(f"{tag} is broken")
    return f"{tag} ok"


@app.task
def hold(tag: str, timeout_s: float = 10.0) -> str:
    """Pushes ``tag`` to ``test:started``, then waits for ``test:go:<tag>``."""
    client = _redis()
    client.rpush("test:started", tag)
    # Short waits: redis-py's default socket timeout (5 s) would end a longer one with an error.
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not client.blpop([f"test:go:{tag}"], timeout=1):
        pass
    return tag


@app.task(retries=1, retry_backoff=False)
def retry_once(tag: str) -> str:
    """Fails its first run (retried at once), then succeeds: counts runs in ``test:runs:<tag>``."""
    if _redis().incr(f"test:runs:{tag}") == 1:
        raise Broken(f"{tag}: first run fails")
    return tag
