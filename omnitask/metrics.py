"""Prometheus metrics of an app, read from Redis on each scrape: ``OmnitaskCollector(app)``.

Needs ``omnitask[metrics]`` (prometheus-client). Nothing is counted in the workers: each
scrape reads what Redis holds anyway (the queues, the worker list and status hashes, the
dead-letter streams) and the events added to the event stream since the previous scrape.

Gauges, as Redis holds them now:

| metric | labels | what |
|---|---|---|
| ``omnitask_up`` | | 1 when Redis answered this scrape (else the only metric) |
| ``omnitask_worker_up`` | worker | 1 for a live worker, 0 for one whose heartbeats stopped lately |
| ``omnitask_worker_processes`` | worker | child processes alive at its last heartbeat |
| ``omnitask_worker_concurrency`` | worker | child processes it keeps |
| ``omnitask_worker_heartbeat_age_seconds`` | worker | since its last heartbeat |
| ``omnitask_queue_depth`` | queue | tasks ready to run |
| ``omnitask_queue_ready`` | queue, priority | tasks ready to run, per priority (0-9) |
| ``omnitask_queue_delayed`` | queue | tasks due later (ETA, countdown, retry delay) |
| ``omnitask_queue_in_flight`` | queue | tasks claimed by workers and not finished |
| ``omnitask_queue_consumers`` | queue | worker children consuming it |
| ``omnitask_queue_oldest_age_seconds`` | queue | the longest wait of a ready task (0: none) |
| ``omnitask_queue_paused`` | queue | 1 while the queue is paused |
| ``omnitask_dead_letters`` | queue | dead letters held |

Over the event window (the events the capped stream holds, ``events_maxlen``):

| metric | labels | what |
|---|---|---|
| ``omnitask_tasks`` | name, state | tasks by the state their newest event implies |
| ``omnitask_task_retries`` | name | task-retried events |
| ``omnitask_events_window_seconds`` | | how far back the window reaches |

Counted since the collector started, for ``rate()`` (kinds: sent, started, succeeded, failed,
retried, revoked, rejected; runtimes: the ``rt`` field of task-succeeded events):

| metric | labels | what |
|---|---|---|
| ``omnitask_task_events_total`` | name, kind | task events (kind: sent, started, succeeded ...) |
| ``omnitask_task_runtime_seconds`` | name | histogram: runtimes of successful runs |

With ``worker=`` (one worker's own exporter), task metrics count only the runs of that worker,
the worker metrics are its own, and the queue metrics are left out (every worker would
report the same numbers). :func:`serve_worker_metrics` serves that from a worker's own
process, started with the worker.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from redis.exceptions import RedisError

from omnitask.broker.keys import PRIORITY_LEVELS
from omnitask.control import WorkerStatus, read_workers
from omnitask.dashboard.tasks import summarize
from omnitask.dashboard.window import EventWindow, worker_of
from omnitask.events import Event, EventKind
from omnitask.inspect import Inspector, QueueStats

if TYPE_CHECKING:
    from omnitask.app import OmniTask
    from omnitask.context import WorkerInfo

__all__ = ("RUNTIME_BUCKETS", "OmnitaskCollector", "serve_worker_metrics")

logger = logging.getLogger(__name__)

RUNTIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Upper bounds (seconds) of the runtime histogram's buckets; +Inf is added."""

_KINDS = {
    EventKind.TASK_SENT.value: "sent",
    EventKind.TASK_STARTED.value: "started",
    EventKind.TASK_SUCCEEDED.value: "succeeded",
    EventKind.TASK_FAILED.value: "failed",
    EventKind.TASK_RETRIED.value: "retried",
    EventKind.TASK_REVOKED.value: "revoked",
    EventKind.TASK_REJECTED.value: "rejected",
}


class _Runtimes:
    """One task's runtime histogram: counts per bucket, and the sum."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def add(self, bounds: Sequence[float], seconds: float) -> None:
        self.counts[bisect.bisect_left(bounds, seconds)] += 1
        self.total += seconds

    def buckets(self, bounds: Sequence[float]) -> list[tuple[str, float]]:
        running = 0
        out: list[tuple[str, float]] = []
        for bound, count in zip([*map(str, bounds), "+Inf"], self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


class OmnitaskCollector(Collector):
    """A Prometheus collector of an app's queues, workers and tasks (see the module docstring).

    Register it with a registry and serve that registry::

        registry = CollectorRegistry()
        registry.register(OmnitaskCollector(app))
        start_http_server(9808, registry=registry)

    Args:
        app: The app.
        window: The event window to read task events from (the dashboard shares its own);
            default: a new one.
        worker: Only this worker's runs and status (a worker's own exporter).
        buckets: Upper bounds of the runtime histogram's buckets, in seconds.
    """

    def __init__(
        self,
        app: OmniTask,
        *,
        window: EventWindow | None = None,
        worker: str | None = None,
        buckets: Sequence[float] = RUNTIME_BUCKETS,
    ) -> None:
        """Collect nothing yet: the first scrape reads Redis."""
        self._app = app
        self._window = window if window is not None else EventWindow(app, min_interval_s=0)
        self._worker = worker
        self._bounds = sorted(buckets)
        self._lock = threading.Lock()
        self._counted: int | None = None  # events of the window counted (its arrivals)
        self._events: Counter[tuple[str, str]] = Counter()
        self._runtimes: dict[str, _Runtimes] = {}

    def describe(self) -> Iterable[Metric]:
        """Nothing: registering the collector must not read Redis."""
        return ()

    def collect(self) -> Iterator[Metric]:
        """Read Redis and yield every metric of the module docstring."""
        try:
            self._window.refresh(force=True)
            workers = read_workers(self._app)
            queues = [] if self._worker else Inspector(self._app).queues()
        except RedisError as exc:
            logger.warning("metrics: Redis did not answer error=%s", exc)
            yield _gauge("omnitask_up", "1 when Redis answered this scrape.", 0)
            return
        yield _gauge("omnitask_up", "1 when Redis answered this scrape.", 1)
        now = self._window.now_ms
        yield from self._worker_metrics([w for w in workers if self._mine(w.name)], now)
        yield from _queue_metrics(queues, now)
        events = [e for e in self._window.events() if self._mine(worker_of(e.worker), e.kind)]
        yield from self._window_metrics(events)
        yield from self._counted_metrics()

    def _mine(self, worker: str, kind: str = "") -> bool:
        # task-sent has no worker: a worker's own exporter cannot tell whose it is.
        if self._worker is None:
            return True
        return worker == self._worker and kind != EventKind.TASK_SENT.value

    def _worker_metrics(self, workers: Sequence[WorkerStatus], now: int) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "omnitask_worker_up", "1 for a live worker, 0 for one gone quiet.", labels=["worker"]
        )
        procs = GaugeMetricFamily(
            "omnitask_worker_processes", "Child processes alive.", labels=["worker"]
        )
        wanted = GaugeMetricFamily(
            "omnitask_worker_concurrency", "Child processes kept.", labels=["worker"]
        )
        age = GaugeMetricFamily(
            "omnitask_worker_heartbeat_age_seconds",
            "Seconds since the worker's last heartbeat.",
            labels=["worker"],
        )
        for w in workers:
            name = w.name
            up.add_metric([name], 1 if w.alive else 0)
            procs.add_metric([name], w.processes)
            wanted.add_metric([name], w.concurrency)
            age.add_metric([name], max(0, now - w.heartbeat_ms) / 1000)
        yield from (up, procs, wanted, age)

    def _window_metrics(self, events: Sequence[Event]) -> Iterator[Metric]:
        tasks = GaugeMetricFamily(
            "omnitask_tasks",
            "Tasks in the event window, by the state their newest event implies.",
            labels=["name", "state"],
        )
        by_state = Counter((t.name, t.state) for t in summarize(events).values())
        for (name, state), n in sorted(by_state.items()):
            tasks.add_metric([name, state], n)
        retries = GaugeMetricFamily(
            "omnitask_task_retries", "task-retried events in the event window.", labels=["name"]
        )
        retried = Counter(e.name or "" for e in events if e.kind == EventKind.TASK_RETRIED)
        for name, n in sorted(retried.items()):
            retries.add_metric([name], n)
        span = GaugeMetricFamily(
            "omnitask_events_window_seconds", "How far back the event window reaches."
        )
        span.add_metric([], self._window.span_ms() / 1000)
        yield from (tasks, retries, span)

    def _count_new(self) -> None:
        start = self._counted
        if start is None:
            start = self._window.first_refresh_received or 0
        new, self._counted = self._window.received_after(start)
        for event in new:
            kind = _KINDS.get(event.kind)
            if kind is None or not self._mine(worker_of(event.worker), event.kind):
                continue
            name = event.name or ""
            self._events[name, kind] += 1
            if kind == "succeeded" and event.runtime_s is not None:
                runtimes = self._runtimes.setdefault(name, _Runtimes(self._bounds))
                runtimes.add(self._bounds, event.runtime_s)

    def _counted_metrics(self) -> Iterator[Metric]:
        with self._lock:  # two scrapes at once must not count the same events twice
            self._count_new()
            events = CounterMetricFamily(
                "omnitask_task_events",
                "Task events since the collector started, by task name and kind.",
                labels=["name", "kind"],
            )
            for (name, kind), n in sorted(self._events.items()):
                events.add_metric([name, kind], n)
            runtime = HistogramMetricFamily(
                "omnitask_task_runtime_seconds",
                "Runtimes of successful runs since the collector started.",
                labels=["name"],
            )
            for name, hist in sorted(self._runtimes.items()):
                runtime.add_metric([name], hist.buckets(self._bounds), hist.total)
        yield from (events, runtime)


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=value)


def _queue_metrics(queues: Sequence[QueueStats], now: int) -> Iterator[Metric]:
    families = {
        "depth": GaugeMetricFamily("omnitask_queue_depth", "Tasks ready to run.", labels=["queue"]),
        "delayed": GaugeMetricFamily(
            "omnitask_queue_delayed", "Tasks due later.", labels=["queue"]
        ),
        "in_flight": GaugeMetricFamily(
            "omnitask_queue_in_flight", "Tasks claimed and not finished.", labels=["queue"]
        ),
        "consumers": GaugeMetricFamily(
            "omnitask_queue_consumers", "Worker children consuming the queue.", labels=["queue"]
        ),
        "oldest": GaugeMetricFamily(
            "omnitask_queue_oldest_age_seconds",
            "How long the longest-waiting ready task has waited (0 when none).",
            labels=["queue"],
        ),
        "paused": GaugeMetricFamily(
            "omnitask_queue_paused", "1 while the queue is paused.", labels=["queue"]
        ),
        "dead": GaugeMetricFamily("omnitask_dead_letters", "Dead letters held.", labels=["queue"]),
    }
    ready = GaugeMetricFamily(
        "omnitask_queue_ready", "Tasks ready to run, per priority.", labels=["queue", "priority"]
    )
    for q in queues:
        name = [q.name]
        oldest = q.oldest_ms
        families["depth"].add_metric(name, q.ready_total)
        families["delayed"].add_metric(name, q.delayed)
        families["in_flight"].add_metric(name, q.in_flight)
        families["consumers"].add_metric(name, q.consumers)
        families["oldest"].add_metric(name, 0 if oldest is None else max(0, now - oldest) / 1000)
        families["paused"].add_metric(name, 1 if q.paused else 0)
        families["dead"].add_metric(name, q.dead)
        for priority in range(PRIORITY_LEVELS):
            ready.add_metric([*name, str(priority)], q.ready[priority])
    yield from families.values()
    yield ready


def serve_worker_metrics(
    app: OmniTask, port: int, *, host: str = "127.0.0.1"
) -> Callable[[], None]:
    """Serve each worker's own metrics on ``host:port`` from its main process, once it is ready.

    Hooks ``worker_ready``: the worker that starts serves ``/metrics`` (any path, in fact)
    with an :class:`OmnitaskCollector` for itself (``worker=`` its name), from a thread of
    its supervisor. Call it where the app is defined, or from the worker command.

    Returns:
        A function that stops the server, if it started, and removes the hook.
    """
    servers: list[Any] = []

    def start(info: WorkerInfo) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(OmnitaskCollector(app, worker=info.name))
        server, _thread = start_http_server(port, addr=host, registry=registry)
        servers.append(server)
        logger.info("metrics: serving worker=%s host=%s port=%s", info.name, host, port)

    def stop() -> None:
        app.signals.worker_ready.disconnect(start)
        for server in servers:
            server.shutdown()
            server.server_close()

    app.signals.worker_ready.connect(start)
    return stop
