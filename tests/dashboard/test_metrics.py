"""Prometheus metrics: the collector on its own (events written by hand), and /metrics served
by a real dashboard with a real worker, parsed with prometheus_client's text parser."""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterable

import pytest
import redis
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from omnitask import OmniTask
from omnitask.context import WorkerInfo
from omnitask.metrics import RUNTIME_BUCKETS, OmnitaskCollector, serve_worker_metrics
from tests.conftest import WorkerFactory, wait_for
from tests.dashboard import app as dash
from tests.dashboard.conftest import APP, WORKER_ENV, DashboardFactory, free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(families: Iterable[Metric]) -> Samples:
    """(sample name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def value(found: Samples, metric: str, **labels: str) -> float | None:
    return found.get((metric, tuple(sorted(labels.items()))))


def publish(r: redis.Redis, app: OmniTask, kind: str, *fields: str) -> None:
    """Write one event as a worker's script would."""
    pairs = dict(zip(fields[::2], fields[1::2], strict=True))
    r.xadd(app.keys.events, {"e": kind, **pairs})


def test_collector_counts_events_since_it_started_and_the_window(
    app: OmniTask, r: redis.Redis
) -> None:
    add = "tests.dashboard.app.add"
    publish(r, app, "task-sent", "i", "old", "n", add, "q", "default")
    publish(
        r, app, "task-succeeded", "i", "old", "n", add, "q", "default", "w", "w1/a.1", "rt", "0.2"
    )
    collector = OmnitaskCollector(app)
    first = samples(collector.collect())
    assert value(first, "omnitask_up") == 1
    assert value(first, "omnitask_tasks", name=add, state="SUCCESS") == 1  # the window
    # Counters start with the collector: events from before are not counted.
    assert value(first, "omnitask_task_events_total", name=add, kind="succeeded") is None

    for task_id, runtime in (("a", "0.003"), ("b", "0.2"), ("c", "7")):
        publish(r, app, "task-started", "i", task_id, "n", add, "q", "default", "w", "w1/a.1")
        publish(
            r,
            app,
            "task-succeeded",
            "i",
            task_id,
            "n",
            add,
            "q",
            "default",
            "w",
            "w2/b.1",
            "rt",
            runtime,
        )
    publish(r, app, "task-retried", "i", "d", "n", add, "q", "default", "w", "w1/a.1")
    found = samples(collector.collect())
    assert value(found, "omnitask_task_events_total", name=add, kind="succeeded") == 3
    assert value(found, "omnitask_task_events_total", name=add, kind="started") == 3
    assert value(found, "omnitask_task_events_total", name=add, kind="retried") == 1
    assert value(found, "omnitask_tasks", name=add, state="SUCCESS") == 4
    assert value(found, "omnitask_tasks", name=add, state="RETRY") == 1
    assert value(found, "omnitask_task_retries", name=add) == 1
    hist = "omnitask_task_runtime_seconds"
    assert value(found, f"{hist}_count", name=add) == 3
    assert value(found, f"{hist}_sum", name=add) == pytest.approx(7.203)
    assert value(found, f"{hist}_bucket", name=add, le="0.005") == 1
    assert value(found, f"{hist}_bucket", name=add, le="0.25") == 2
    assert value(found, f"{hist}_bucket", name=add, le="5.0") == 2
    assert value(found, f"{hist}_bucket", name=add, le="10.0") == 3
    assert value(found, f"{hist}_bucket", name=add, le="+Inf") == 3
    assert len([k for k in found if k[0] == f"{hist}_bucket"]) == len(RUNTIME_BUCKETS) + 1
    # A second scrape with nothing new counts nothing twice.
    again = samples(collector.collect())
    assert value(again, "omnitask_task_events_total", name=add, kind="succeeded") == 3

    # A worker's own exporter counts only that worker's runs, and leaves queues out.
    mine = OmnitaskCollector(app, worker="w2")
    samples(mine.collect())
    publish(r, app, "task-succeeded", "i", "e", "n", add, "q", "default", "w", "w2/b.1", "rt", "1")
    publish(r, app, "task-succeeded", "i", "f", "n", add, "q", "default", "w", "w1/a.1", "rt", "1")
    own = samples(mine.collect())
    assert value(own, "omnitask_task_events_total", name=add, kind="succeeded") == 1
    assert value(own, "omnitask_tasks", name=add, state="SUCCESS") == 4  # a, b, c and e ran on w2
    assert not [k for k in own if k[0].startswith("omnitask_queue_")]


def test_collector_counts_an_entry_that_lands_below_one_already_read(
    app: OmniTask, r: redis.Redis
) -> None:
    # Each queue's stream numbers its own entries: an entry can land in one stream with an id
    # below one already read from another (two clients in the same millisecond). The counters
    # follow what the window received, not stream ids, so it is counted.
    add = "tests.dashboard.app.add"
    fields = {"e": "task-succeeded", "n": add, "q": "a", "w": "w1/a.1", "rt": "0.1"}
    r.sadd(app.keys.queues, "a", "b")
    collector = OmnitaskCollector(app)
    samples(collector.collect())
    r.xadd(app.keys.queue("b").events, {**fields, "i": "first", "q": "b"}, id="2000000000000-5")
    samples(collector.collect())
    r.xadd(app.keys.queue("a").events, {**fields, "i": "late"}, id="2000000000000-3")
    found = samples(collector.collect())
    assert value(found, "omnitask_task_events_total", name=add, kind="succeeded") == 2


def test_collector_says_when_redis_is_down() -> None:
    app = OmniTask("tdown", broker=f"redis://127.0.0.1:{free_port()}/0", connect_timeout_s=0.2)
    found = samples(OmnitaskCollector(app).collect())
    assert found == {("omnitask_up", ()): 0.0}


@pytest.mark.process
def test_metrics_endpoint(
    app: OmniTask, start_worker: WorkerFactory, start_dashboard: DashboardFactory, r: redis.Redis
) -> None:
    start_worker(APP, "-n", "dash-w1", env=WORKER_ENV)
    board = start_dashboard()
    board.get("/metrics")  # the collector starts counting here
    for i in range(3):
        assert dash.add.delay(i, 1).get(timeout=10) == i + 1
    assert dash.retry_once.delay("r").get(timeout=10) == "r"
    failed = dash.fragile.delay("x")
    wait_for(lambda: app.dead_letters.count() == 1, what="a dead letter")
    dash.add.apply_async((1, 1), queue="slow", priority=3)
    wait_for(lambda: failed.state == "FAILURE", what="the failure")

    reply = board.get("/metrics")
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain")
    families = list(text_string_to_metric_families(reply.text))
    types = {f.name: f.type for f in families}
    assert types["omnitask_task_events"] == "counter"
    assert types["omnitask_task_runtime_seconds"] == "histogram"
    assert types["omnitask_queue_depth"] == "gauge"
    found = samples(families)
    add, retry_once = "tests.dashboard.app.add", "tests.dashboard.app.retry_once"
    fragile = "tests.dashboard.app.fragile"
    assert value(found, "omnitask_up") == 1
    assert value(found, "omnitask_worker_up", worker="dash-w1") == 1
    assert value(found, "omnitask_worker_concurrency", worker="dash-w1") == 1
    assert value(found, "omnitask_worker_heartbeat_age_seconds", worker="dash-w1") < 5
    assert value(found, "omnitask_queue_depth", queue="slow") == 1
    assert value(found, "omnitask_queue_ready", queue="slow", priority="3") == 1
    assert value(found, "omnitask_queue_ready", queue="slow", priority="9") == 0
    assert value(found, "omnitask_queue_oldest_age_seconds", queue="slow") >= 0
    assert value(found, "omnitask_queue_consumers", queue="default") == 1
    assert value(found, "omnitask_queue_paused", queue="default") == 0
    assert value(found, "omnitask_dead_letters", queue="default") == 1
    assert value(found, "omnitask_tasks", name=add, state="SUCCESS") == 3
    assert value(found, "omnitask_tasks", name=add, state="PENDING") == 1
    assert value(found, "omnitask_tasks", name=fragile, state="FAILURE") == 1
    assert value(found, "omnitask_tasks", name=retry_once, state="SUCCESS") == 1
    assert value(found, "omnitask_task_retries", name=retry_once) == 1
    assert value(found, "omnitask_task_events_total", name=add, kind="succeeded") == 3
    assert value(found, "omnitask_task_events_total", name=add, kind="sent") == 4
    assert value(found, "omnitask_task_events_total", name=retry_once, kind="retried") == 1
    assert value(found, "omnitask_task_events_total", name=fragile, kind="failed") == 1
    assert value(found, "omnitask_task_runtime_seconds_count", name=add) == 3
    assert value(found, "omnitask_task_runtime_seconds_count", name=retry_once) == 1
    assert value(found, "omnitask_events_window_seconds") > 0


def test_a_worker_serves_its_own_metrics_once_ready(app: OmniTask, r: redis.Redis) -> None:
    port = free_port()
    stop = serve_worker_metrics(app, port)
    try:
        publish(
            r, app, "task-succeeded", "i", "a", "n", "t", "q", "default", "w", "w9/x.1", "rt", "1"
        )
        app.signals.worker_ready.send(WorkerInfo("w9", ("default",), os.getpid()))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            found = samples(text_string_to_metric_families(reply.read().decode()))
    finally:
        stop()
    assert value(found, "omnitask_up") == 1
    assert value(found, "omnitask_tasks", name="t", state="SUCCESS") == 1
    assert not [k for k in found if k[0].startswith("omnitask_queue_")]


@pytest.mark.process
def test_a_real_worker_serves_its_own_metrics(app: OmniTask, start_worker: WorkerFactory) -> None:
    port = free_port()
    start_worker(APP, "-n", "own-w1", concurrency=2, env={"TEST_METRICS_PORT": str(port)})
    assert dash.add.delay(1, 1).get(timeout=10) == 2
    assert dash.add.delay(2, 2).get(timeout=10) == 4

    def scrape() -> Samples:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            return samples(text_string_to_metric_families(reply.read().decode()))

    found = scrape()
    assert value(found, "omnitask_worker_up", worker="own-w1") == 1
    assert value(found, "omnitask_worker_processes", worker="own-w1") == 2
    assert value(found, "omnitask_tasks", name="tests.dashboard.app.add", state="SUCCESS") == 2
    assert dash.add.delay(3, 3).get(timeout=10) == 6
    wait_for(
        lambda: (
            value(
                scrape(),
                "omnitask_task_events_total",
                name="tests.dashboard.app.add",
                kind="succeeded",
            )
            == 1
        ),
        what="the run after the first scrape to be counted",
    )


@pytest.mark.process
def test_worker_metrics_port_flag(start_worker: WorkerFactory) -> None:
    port = free_port()
    start_worker("tests.apps.basic", "--metrics-port", str(port), "-n", "metered@host")
    url = f"http://127.0.0.1:{port}/metrics"

    def scraped() -> Samples | None:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return samples(text_string_to_metric_families(response.read().decode()))
        except OSError:
            return None

    wait_for(lambda: scraped() is not None, what="the worker's /metrics")
    found = scraped()
    assert found is not None
    assert value(found, "omnitask_worker_up", worker="metered@host") == 1.0
