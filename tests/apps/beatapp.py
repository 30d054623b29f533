"""Periodic tasks for the beat tests. The broker URL comes from OMNITASK_BROKER_URL.

Each task counts its runs per task id (one id per schedule and slot) in the hash ``test:runs``.
"""

from __future__ import annotations

from typing import Any

import redis

from omnitask import OmniTask

app = OmniTask("tbeat")


def _count(task_id: str) -> None:
    redis.Redis.from_url(app.conf.broker_url).hincrby("test:runs", task_id, 1)


@app.task(bind=True)
def tick(self: Any, *args: object) -> None:
    """Scheduled at run time by the tests."""
    _count(self.request.id)


@app.periodic(every=1, name="code-every-second")
@app.task(bind=True)
def heartbeat(self: Any) -> None:
    """Declared in code: every beat of this app writes it to Redis when it starts."""
    _count(self.request.id)
