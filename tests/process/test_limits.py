"""Rate limits and concurrency caps held across workers, with tasks waiting in Redis."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
import redis

from omnitask import ConfigurationError, OmniTask
from omnitask.ratelimit import parse_rate
from tests.apps import limited
from tests.conftest import WorkerFactory, wait_for

APP = "tests.apps.limited"


@pytest.fixture(autouse=True)
def _app(redis_url: str) -> Iterator[None]:
    limited.app.configure(broker_url=redis_url)
    yield
    limited.app.close()


def times(r: redis.Redis, key: str) -> list[float]:
    return sorted(float(v) for v in r.lrange(key, 0, -1))


@pytest.mark.process
def test_global_rate_limit_across_two_workers(start_worker: WorkerFactory, r: redis.Redis) -> None:
    start_worker(APP, concurrency=2)
    start_worker(APP, concurrency=2)
    n = 55
    limited.tick.delay_many([(i,) for i in range(n)])
    wait_for(lambda: r.llen("test:ticks") == n, timeout_s=20, what="every tick")
    runs = times(r, "test:ticks")
    rate = (n - 1) / (runs[-1] - runs[0])
    print(f"measured {rate:.2f} runs/s against a limit of 10/s")
    assert 8.0 <= rate <= 12.0, rate  # 10/s within 20%, over about 5 s
    # Spread evenly, not in bursts: no second holds more than the limit (plus one edge).
    for start in runs:
        assert sum(1 for t in runs if start <= t < start + 1.0) <= 11
    # A waiting task reserved its slot: claimed once on arrival and once at its slot, not at
    # every free slot of the limit.
    claims = Counter(e.task_id for e in limited.app.events.replay() if e.kind == "task-started")
    assert len(claims) == n and max(claims.values()) <= 2, claims.most_common(3)


@pytest.mark.process
def test_keyed_limits_are_independent(start_worker: WorkerFactory, r: redis.Redis) -> None:
    start_worker(APP, concurrency=2)
    for i in range(8):
        limited.per_user.delay("a", i)
        limited.per_user.delay("b", i)
    wait_for(
        lambda: r.llen("test:user:a") == 8 and r.llen("test:user:b") == 8,
        timeout_s=10,
        what="both users",
    )
    a, b = times(r, "test:user:a"), times(r, "test:user:b")
    for runs in (a, b):
        rate = 7 / (runs[-1] - runs[0])
        assert 4.0 <= rate <= 6.5, rate  # 5/s each ...
    assert abs(a[-1] - b[-1]) < 0.6  # ... at the same time: one key never waits for the other


@pytest.mark.process
def test_concurrency_cap_across_workers(start_worker: WorkerFactory, r: redis.Redis) -> None:
    start_worker(APP, concurrency=2)
    start_worker(APP, concurrency=2)
    results = [limited.capped.delay(i) for i in range(10)]
    for result in results:
        result.get(timeout=15)
    seen = [int(v) for v in r.lrange("test:concurrent", 0, -1)]
    assert len(seen) == 10 and max(seen) == 2  # four slots, never more than two at once
    assert not r.zcard(
        limited.app.keys.queue(limited.capped.queue).cap("tests.apps.limited.capped")
    )  # all released


def test_options_are_checked() -> None:
    assert parse_rate("100/m") == (100, 60.0)
    assert parse_rate("10/5s") == (10, 5.0)
    app = OmniTask("tlimits-check")
    for bad in ("fast", "0/s", "10/w", "10/0s"):
        with pytest.raises(ConfigurationError, match="rate_limit"):
            app.task(rate_limit=bad)
    with pytest.raises(ConfigurationError, match="concurrency_limit"):
        app.task(concurrency_limit=0)
    with pytest.raises(ConfigurationError, match="limit_key needs"):
        app.task(limit_key=str)
