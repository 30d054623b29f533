"""Round trips through Sentinel with a real worker, before and after a failover."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from omnitask.broker.scripts import CLAIM
from tests.sentinel import apps
from tests.sentinel.conftest import SentinelFactory, WorkerFactory

pytestmark = [pytest.mark.process]


async def _await_echo(i: int) -> int:
    return await apps.echo.delay(i).get_async(timeout=10)


def test_round_trip_and_failover(
    start_sentinels: SentinelFactory, start_worker: WorkerFactory
) -> None:
    sentinels = start_sentinels()
    apps.app.configure(broker_url=sentinels.url)
    worker = start_worker(sentinels.url)
    assert apps.echo.delay(1).get(timeout=10) == 1
    assert asyncio.run(_await_echo(2)) == 2  # the asyncio wait's own client

    old = sentinels.kill_master()
    killed = time.monotonic()
    new = sentinels.wait_failover(old)
    # The same client and the same worker, neither restarted: the next connection of each
    # asks the sentinels, finds the promoted replica, and loads the scripts it lacks.
    assert apps.echo.delay(3).get(timeout=20) == 3
    recovered_s = time.monotonic() - killed
    assert asyncio.run(_await_echo(4)) == 4
    with redis.Redis("127.0.0.1", new.port) as client:
        assert client.script_exists(CLAIM.sha) == [True]
    assert worker.proc.poll() is None
    print(f"\nSENTINEL-FIGURES round-trip: recovered_s={recovered_s:.3f}")
