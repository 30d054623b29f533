"""Unique tasks for tests/process/test_unique.py. Broker from OMNITASK_BROKER_URL."""

from __future__ import annotations

import redis

from omnitask import OmniTask

app = OmniTask("tuniq")


def _log(value: str) -> None:
    redis.Redis.from_url(app.conf.broker_url).rpush("test:runs", value)


@app.task(unique_for=2)
def refresh(account: int) -> int:
    _log(f"refresh:{account}")
    return account


@app.task(unique_for=2, unique_key=lambda user, note="": f"user-{user}")
def notify(user: int, note: str = "") -> str:
    _log(f"notify:{user}:{note}")
    return note


@app.task(unique_for=0.5, unique_mode="debounce", unique_key=lambda doc, version: doc)
def reindex(doc: str, version: int) -> int:
    _log(f"reindex:{doc}:{version}")
    return version
