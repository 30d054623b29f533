"""A master of the cluster SIGKILLed under load: the cluster promotes its replica, clients and
workers follow, and the tasks accepted are counted against those that ran.

Three masters with one replica each. A worker consumes the default queue; the test sends
``SENT`` tasks at ``RATE_HZ`` and, ``KILL_AT_S`` in, SIGKILLs the master that serves the
queue's slot. The cluster fails over after ``NODE_TIMEOUT_MS`` plus an election. Redis
replication is asynchronous, so a task that the old master acknowledged but had not yet sent
to its replica can be lost, as with Sentinel; the figures line says how many were.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis

from omnitask.errors import BrokerUnavailable
from omnitask.testing.cluster import RedisClusterSet
from tests.cluster import apps
from tests.cluster.conftest import WorkerFactory, running

pytestmark = pytest.mark.process

NODE_TIMEOUT_MS = 1000
SENT = 300
RATE_HZ = 100
KILL_AT_S = 1.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterSet]:
    """This module's own cluster: every master has a replica to fail over to."""
    yield from running(RedisClusterSet(3, replicas=1, node_timeout_ms=NODE_TIMEOUT_MS))


def _promoted(cluster: RedisClusterSet, old_port: int) -> bool:
    """Whether a live node now serves the queue's slot as master (not the killed one)."""
    key = apps.app.keys.queue("default").wake
    for node in cluster.nodes:
        if node.port == old_port:
            continue
        try:
            with node.client() as client:
                slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
                for first, last, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if first <= slot <= last:
                        return int(master[1]) != old_port
        except redis.RedisError:  # a node just killed, or not yet serving
            continue
    return False


def test_master_killed_under_load(cluster: RedisClusterSet, start_worker: WorkerFactory) -> None:
    apps.app.configure(enqueue_timeout_s=20.0)
    start_worker(concurrency=2)
    victim = cluster.master_of(apps.app.keys.queue("default").wake)
    events: dict[str, float] = {}

    def fail_master() -> None:
        time.sleep(KILL_AT_S)
        events["killed"] = time.monotonic()
        cluster.kill(victim)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _promoted(cluster, victim.port):
            time.sleep(0.05)
        events["promoted"] = time.monotonic()

    killer = threading.Thread(target=fail_master, daemon=True)
    accepted: dict[int, str] = {}
    sent_at: dict[int, float] = {}
    refused: list[str] = []
    unsure: list[str] = []
    began = time.monotonic()
    killer.start()
    for i in range(SENT):
        pause = began + i / RATE_HZ - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        start = time.monotonic()
        try:
            accepted[i] = apps.echo.delay(i).id
            sent_at[i] = start
        except BrokerUnavailable as exc:
            (unsure if "may or may not" in str(exc) else refused).append(str(exc))
    killer.join(40)
    assert "promoted" in events, "no failover"

    deadline = time.monotonic() + 30
    done: set[int] = set()
    while time.monotonic() < deadline and len(done) < len(accepted):
        for i, task_id in accepted.items():
            if i not in done and apps.app.AsyncResult(task_id).ready():
                done.add(i)
        time.sleep(0.2)
    lost = sorted(set(accepted) - done)
    after = [i for i in accepted if sent_at[i] >= events["promoted"]]
    print(
        f"\nCLUSTER-FIGURES crash: sent={SENT} accepted={len(accepted)} refused={len(refused)} "
        f"unsure={len(unsure)} completed={len(done)} lost={len(lost)} "
        f"failover_s={events['promoted'] - events['killed']:.3f}"
    )
    assert len(accepted) + len(refused) + len(unsure) == SENT
    assert after, "nothing was sent after the failover"
    assert not [i for i in after if i in lost], "tasks sent after the failover were lost"
