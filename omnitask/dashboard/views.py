"""What the dashboard's JSON API returns for workers, queues, the live chart and dead letters.

Plain functions of the app and the event window that return JSON-ready dicts; the HTTP layer
(``server.py``) only parses the request and calls one of them. Worker and queue state comes
from :class:`~omnitask.inspect.Inspector` (what ``omnitask inspect`` shows), dead letters from
:class:`~omnitask.deadletters.DeadLetters`, rates and the chart from the event window.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from omnitask.dashboard.window import event_ms, worker_of
from omnitask.deadletters import DeadLetter, DeadLetters
from omnitask.dlq_cli import _describe as describe_envelope
from omnitask.events import EventKind
from omnitask.inspect import Inspector

if TYPE_CHECKING:
    from omnitask.app import OmniTask
    from omnitask.dashboard.window import EventWindow

__all__ = (
    "RATE_WINDOW_S",
    "dead_letters",
    "overview",
    "percentile",
    "queues",
    "throughput",
    "workers",
)

RATE_WINDOW_S = 60
"""Queue rates are averaged over this many seconds of events."""

_SENT = EventKind.TASK_SENT.value
_STARTED = EventKind.TASK_STARTED.value
_SUCCEEDED = EventKind.TASK_SUCCEEDED.value
_FAILED = EventKind.TASK_FAILED.value
_RETRIED = EventKind.TASK_RETRIED.value
_OUTCOMES = {_SUCCEEDED: "succeeded", _FAILED: "failed", _RETRIED: "retried"}
# A retry goes back into its queue: it counts in, like a send.
_DIRECTION = {_SENT: "in", _RETRIED: "in", _STARTED: "out", _SUCCEEDED: "done", _FAILED: "done"}


def _age_s(ms: int | None, now_ms: int) -> float | None:
    return None if ms is None else round(max(0, now_ms - ms) / 1000, 3)


def workers(app: OmniTask, window: EventWindow) -> list[dict[str, Any]]:
    """Every worker in the worker list: its status, heartbeat age, current tasks, outcomes.

    Outcomes (succeeded, failed, retried) are counted over the event window.
    """
    inspector = Inspector(app)
    statuses = inspector.workers(include_stale=True)
    current: dict[str, list[dict[str, Any]]] = {}
    for task in inspector.active():
        current.setdefault(task.worker, []).append(task.as_dict())
    tally: dict[str, Counter[str]] = {}
    for event in window.events():
        outcome = _OUTCOMES.get(event.kind)
        if outcome is not None:
            tally.setdefault(worker_of(event.worker), Counter())[outcome] += 1
    now = window.now_ms
    out = []
    for status in statuses:
        counts = tally.get(status.name, Counter())
        out.append(
            {
                **status.as_dict(),
                "heartbeat_age_s": _age_s(status.heartbeat_ms, now),
                "current": current.get(status.name, []),
                **{k: counts[k] for k in _OUTCOMES.values()},
            }
        )
    return out


def _rates(window: EventWindow) -> dict[str, dict[str, float]]:
    """Queue -> tasks per second in (sent, retried), out (started) and done, lately."""
    since = window.now_ms - RATE_WINDOW_S * 1000
    counts: dict[str, Counter[str]] = {}
    for event in window.events(since_ms=since):
        if not event.queue:
            continue
        direction = _DIRECTION.get(event.kind)
        if direction is not None:
            counts.setdefault(event.queue, Counter())[direction] += 1
    return {
        queue: {f"{d}_per_s": round(c[d] / RATE_WINDOW_S, 3) for d in ("in", "out", "done")}
        for queue, c in counts.items()
    }


def queues(app: OmniTask, window: EventWindow) -> list[dict[str, Any]]:
    """Every queue: depth by priority, delayed, in flight, oldest age, paused, dead, rates."""
    rates = _rates(window)
    zero = {"in_per_s": 0.0, "out_per_s": 0.0, "done_per_s": 0.0}
    now = window.now_ms
    return [
        {
            **q.as_dict(),
            "oldest_age_s": _age_s(q.oldest_ms, now),
            **rates.get(q.name, zero),
        }
        for q in Inspector(app).queues()
    ]


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The ``fraction`` percentile of ``values`` (nearest rank), None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def throughput(window: EventWindow, *, seconds: int = 60) -> dict[str, Any]:
    """Per-second counts and runtimes over the last ``seconds``: what the live chart draws.

    ``t`` holds each second's start (unix ms, Redis clock). Per second: tasks sent,
    succeeded, failed and retried, and the 50th and 95th percentile of the runtimes of the
    tasks that finished in it (seconds; None in a second with none).
    """
    now = window.now_ms
    first = (now // 1000 - seconds + 1) * 1000
    counts = {name: [0] * seconds for name in ("sent", "succeeded", "failed", "retried")}
    runtimes: list[list[float]] = [[] for _ in range(seconds)]
    names = {_SENT: "sent", _SUCCEEDED: "succeeded", _FAILED: "failed", _RETRIED: "retried"}
    for event in window.events(since_ms=first):
        slot = (event_ms(event) - first) // 1000
        name = names.get(event.kind)
        if name is None or not 0 <= slot < seconds:
            continue
        counts[name][slot] += 1
        if event.runtime_s is not None:
            runtimes[slot].append(event.runtime_s)
    return {
        "t": [first + i * 1000 for i in range(seconds)],
        **counts,
        "runtime_p50": [percentile(r, 0.5) for r in runtimes],
        "runtime_p95": [percentile(r, 0.95) for r in runtimes],
        "now_ms": now,
    }


def _letter(letter: DeadLetter) -> dict[str, Any]:
    data = letter.as_dict()
    del data["message_base64"]  # its decoded envelope says it better, and it can be large
    envelope = letter.envelope
    data["requeueable"] = envelope is not None
    data["envelope"] = None if envelope is None else describe_envelope(envelope)
    data["ms"] = int(letter.stream_id.partition("-")[0])
    return data


def dead_letters(
    app: OmniTask,
    *,
    queue: str | None = None,
    reason: str | None = None,
    task: str | None = None,
    limit: int = 100,
) -> dict[str, Any]:
    """The newest dead letters that match, and how many each queue holds."""
    dead = DeadLetters(app)
    letters = dead.list(queue, reason=reason, task=task, limit=limit)
    per_queue = {name: dead.count(name) for name in dead.queues()}
    return {
        "letters": [_letter(d) for d in letters],
        "counts": per_queue,
        "total": sum(per_queue.values()),
    }


def _count_kinds(events: Iterable[Any]) -> Counter[str]:
    return Counter(e.kind for e in events)


def overview(app: OmniTask, window: EventWindow) -> dict[str, Any]:
    """The header line: workers alive, tasks waiting, in flight, dead letters, the window."""
    inspector = Inspector(app)
    alive = sum(1 for w in inspector.workers())
    stats = inspector.queues()
    kinds = _count_kinds(window.events())
    return {
        "app": app.main,
        "workers": alive,
        "queues": len(stats),
        "ready": sum(q.ready_total for q in stats),
        "delayed": sum(q.delayed for q in stats),
        "in_flight": sum(q.in_flight for q in stats),
        "dead": sum(q.dead for q in stats),
        "window": {
            "events": sum(kinds.values()),
            "span_s": round(window.span_ms() / 1000, 3),
            "succeeded": kinds[_SUCCEEDED],
            "failed": kinds[_FAILED],
        },
        "now_ms": window.now_ms,
    }
