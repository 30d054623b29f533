"""The master SIGKILLed under load: how many sent tasks complete, and how many are lost.

A worker runs; the test sends ``SENT`` tasks at ``RATE_HZ``; a thread SIGKILLs the master
``KILL_AT_S`` into the run and Sentinel promotes the replica. In the ``lagging`` runs the
replica's link to the master is cut ``LAG_S`` before the kill (and it cannot sync again): the
replica falls behind, as it does after a network blip or during a resync, and what the master
acknowledged in that window exists only on the master that dies.

A task is *lost* when ``.delay()`` returned but no result ever arrives. A ``.delay()`` that
raised BrokerUnavailable is *known*: the caller was told. With ``min-replicas-to-write 1`` on
the master, nothing may be lost. Each run prints a ``SENTINEL-FIGURES`` line (``-s``);
docs/scaling.md quotes them.
"""

from __future__ import annotations

import threading
import time
from typing import NamedTuple

import pytest
import redis

from omnitask.broker.connect import sync_client
from omnitask.errors import BrokerUnavailable
from omnitask.testing.sentinel import SentinelSet
from tests.sentinel import apps
from tests.sentinel.conftest import SentinelFactory, WorkerFactory

pytestmark = [pytest.mark.process]

SENT = 300
RATE_HZ = 100.0
KILL_AT_S = 1.0
LAG_S = 0.3
QUIET_S = 2.0
MIN_REPLICAS = ("--min-replicas-to-write", "1", "--min-replicas-max-lag", "10")


class Failure(NamedTuple):
    """When the master died and when the sentinels agreed on the promoted replica."""

    killed_at: float
    promoted_at: float


def _fail_master(sentinels: SentinelSet, lag_s: float, out: list[Failure]) -> None:
    time.sleep(KILL_AT_S - lag_s)
    master, replica = sentinels.master, sentinels.replica
    assert master is not None and replica is not None
    if lag_s:
        with redis.Redis("127.0.0.1", replica.port) as client:
            # The master asks no password, so any masterauth makes the replica's next sync
            # fail: it stays behind until the master is gone.
            client.config_set("masterauth", "not-the-password")
        with redis.Redis("127.0.0.1", master.port) as client:
            client.client_kill_filter(_type="replica")
        time.sleep(lag_s)
    old = sentinels.kill_master()
    killed_at = time.monotonic()
    sentinels.wait_failover(old, timeout_s=30)
    out.append(Failure(killed_at, time.monotonic()))


def _results(url: str, task_ids: dict[int, str], timeout_s: float) -> dict[int, bool]:
    """Wait until every task has a result record, or the queue is drained and quiet.

    Lost tasks never get one: once nothing is ready and no result arrived for ``QUIET_S``,
    what has none is lost (bounded by ``timeout_s`` in any case).
    """
    reader = sync_client(url, connect_timeout_s=2.0, socket_timeout_s=5.0)
    deadline = time.monotonic() + timeout_s
    count, changed = -1, time.monotonic()
    try:
        while True:
            pipe = reader.pipeline(transaction=False)
            for task_id in task_ids.values():
                pipe.exists(apps.app.keys.queue("default").result(task_id))
            arrived = dict(zip(task_ids, map(bool, pipe.execute()), strict=True))
            now = time.monotonic()
            if sum(arrived.values()) != count:
                count, changed = sum(arrived.values()), now
            quiet = now - changed > QUIET_S and apps.app.broker.ready_count("default") == 0
            if count == len(arrived) or quiet or now > deadline:
                return arrived
            time.sleep(0.2)
    finally:
        reader.close()


@pytest.mark.parametrize("lagging", [False, True], ids=["crash", "lagging"])
@pytest.mark.parametrize("min_replicas", [0, 1], ids=["async", "min-replicas"])
def test_master_killed_under_load(
    lagging: bool, min_replicas: int, start_sentinels: SentinelFactory, start_worker: WorkerFactory
) -> None:
    sentinels = start_sentinels(master_args=MIN_REPLICAS if min_replicas else ())
    apps.app.configure(broker_url=sentinels.url, enqueue_timeout_s=20.0)
    start_worker(sentinels.url, concurrency=2)

    failures: list[Failure] = []
    killer = threading.Thread(
        target=_fail_master, args=(sentinels, LAG_S if lagging else 0.0, failures), daemon=True
    )
    accepted: dict[int, str] = {}
    sent_at: dict[int, float] = {}
    returned_at: dict[int, float] = {}
    refused: list[str] = []  # BrokerUnavailable: not queued
    unsure: list[str] = []  # BrokerUnavailable: may or may not be queued
    longest_s = 0.0
    began = time.monotonic()
    killer.start()
    for i in range(SENT):
        pause = began + i / RATE_HZ - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        start = time.monotonic()
        try:
            accepted[i] = apps.echo.delay(i).id
            sent_at[i], returned_at[i] = start, time.monotonic()
        except BrokerUnavailable as exc:
            (unsure if "may or may not" in str(exc) else refused).append(str(exc))
        longest_s = max(longest_s, time.monotonic() - start)
    killer.join(40)
    assert failures, "no failover"
    killed_at, promoted_at = failures[0]

    arrived = _results(sentinels.url, accepted, timeout_s=20)
    lost = [i for i, ok in arrived.items() if not ok]
    after = [i for i in accepted if sent_at[i] >= promoted_at]
    # The first send that started after the kill and went through: when clients recovered.
    recovered_at = min(returned_at[i] for i in accepted if sent_at[i] >= killed_at)
    print(
        f"\nSENTINEL-FIGURES {'lagging' if lagging else 'crash'} min_replicas={min_replicas}: "
        f"sent={SENT} accepted={len(accepted)} refused={len(refused)} unsure={len(unsure)} "
        f"completed={len(accepted) - len(lost)} lost={len(lost)} "
        f"failover_s={promoted_at - killed_at:.3f} "
        f"client_recovered_s={recovered_at - killed_at:.3f} longest_delay_s={longest_s:.3f}"
    )
    assert len(accepted) + len(refused) + len(unsure) == SENT
    assert after, "nothing was sent after the failover"
    assert not [i for i in after if not arrived[i]], "tasks sent after the failover were lost"
    if min_replicas:
        assert not lost, f"accepted but lost: {lost}"
        if lagging:
            assert refused, "the master accepted writes with no replica in sync"
    elif lagging:
        assert lost, "the lagging replica lost nothing: the test no longer opens the window"
