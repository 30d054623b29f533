"""--autoscale MAX,MIN[,IDLE]: the pool grows while tasks wait and shrinks when idle."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from omnitask import ConfigurationError
from omnitask.worker.autoscale import Autoscale, Autoscaler, parse_autoscale
from tests.apps import basic
from tests.conftest import WorkerFactory, wait_for


@pytest.fixture(autouse=True)
def _app(redis_url: str) -> Iterator[None]:
    basic.app.configure(broker_url=redis_url)
    yield
    basic.app.close()


def test_parse() -> None:
    assert parse_autoscale("10,3") == Autoscale(10, 3, 30.0)
    assert parse_autoscale(" 4 , 1 , 2.5 ") == Autoscale(4, 1, 2.5)
    for bad in ("3", "1,3", "3,0", "a,b", "3,1,x"):
        with pytest.raises(ConfigurationError, match="autoscale"):
            parse_autoscale(bad)


def test_decisions(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr("omnitask.worker.autoscale.time.monotonic", lambda: clock[0])
    scaler = Autoscaler(Autoscale(5, 1, 10.0))
    assert scaler.change(waiting=3, busy=1, processes=1) == 3  # the backlog at once
    assert scaler.change(waiting=30, busy=4, processes=4) == 1  # up to MAX
    assert scaler.change(waiting=3, busy=2, processes=5) == 0  # a child is free: wait
    assert scaler.change(waiting=0, busy=0, processes=5) == 0  # idle starts now
    clock[0] += 9.9
    assert scaler.change(waiting=0, busy=0, processes=5) == 0
    clock[0] += 0.2
    assert scaler.change(waiting=0, busy=0, processes=5) == -1  # idle long enough
    assert scaler.change(waiting=0, busy=0, processes=4) == -1  # one per heartbeat
    assert scaler.change(waiting=0, busy=0, processes=1) == 0  # never below MIN
    assert scaler.change(waiting=1, busy=0, processes=1) == 0  # work resets the idle clock
    assert scaler.change(waiting=0, busy=0, processes=2) == 0


@pytest.mark.process
def test_pool_follows_the_queue(start_worker: WorkerFactory) -> None:
    worker = start_worker(
        "tests.apps.basic",
        "--autoscale",
        "3,1,1",
        env={"OMNITASK_HEARTBEAT_INTERVAL_S": "0.3"},
    )
    assert len(worker.children()) == 1
    results = [basic.record.delay(f"t{i}", 0.6) for i in range(12)]
    wait_for(lambda: len(worker.children()) == 3, timeout_s=10, what="grown to MAX")
    for result in results:
        result.get(timeout=20)
    wait_for(lambda: len(worker.children()) == 1, timeout_s=10, what="shrunk to MIN")
    assert "autoscale: pool grown" in worker.output and "autoscale: pool shrunk" in worker.output
