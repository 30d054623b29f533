"""What the fault tests share: reading the run counts, results in bulk, and the figures."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Iterable

import redis

from omnitask.messages import ResultRecord, decode_result
from tests.faults import apps

APP = "tests.faults.apps"
"""The ``-A`` argument of every worker in the fault suite."""


def runs(r: redis.Redis) -> dict[str, int]:
    """How many times each task body started, by its argument (``faults:runs``)."""
    return dict(Counter(field.decode().partition("/")[0] for field in r.hkeys(apps.RUNS)))


def started(r: redis.Redis) -> int:
    """How many task bodies started, in all."""
    return int(r.hlen(apps.RUNS))


def starts(r: redis.Redis) -> list[tuple[int, float, int, int]]:
    """Every start of a ``slow`` task: ``(i, unix time, supervisor pid, child pid)``."""
    out = []
    seen = set()
    for raw in r.lrange(apps.STARTS, 0, -1):
        i, at, ppid, pid, token = raw.decode().split(":")
        if token not in seen:  # a push retried after a lost reply is the same start
            seen.add(token)
            out.append((int(i), float(at), int(ppid), int(pid)))
    return out


def records(r: redis.Redis, task_ids: Iterable[str]) -> dict[str, ResultRecord | None]:
    """The final result record of each task (None when there is none), in one pipeline."""
    ids = list(task_ids)
    pipe = r.pipeline(transaction=False)
    for task_id in ids:
        pipe.lindex(apps.app.keys.queue("default").result(task_id), 0)
    raw = pipe.execute()
    return {
        i: (None if data is None else decode_result(data)) for i, data in zip(ids, raw, strict=True)
    }


def outcomes(
    r: redis.Redis, task_ids: Iterable[str], timeout_s: float
) -> dict[str, ResultRecord | None]:
    """Wait (bounded) until every task has a final result record; return what there is then.

    Does not raise on timeout: the caller reports the missing ones as lost, then asserts.
    """
    ids = list(task_ids)
    deadline = time.monotonic() + timeout_s
    while True:
        final = records(r, ids)
        if all(rec is not None for rec in final.values()) or time.monotonic() > deadline:
            return final
        time.sleep(0.1)


def lost(final: dict[str, ResultRecord | None], state: str = "SUCCESS") -> int:
    """How many tasks have no final record in ``state``."""
    return sum(1 for rec in final.values() if rec is None or rec.state != state)


def kill_pid(pid: int) -> bool:
    """SIGKILL one process; False when it was already gone."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def report(name: str, **figures: object) -> None:
    """Print one line of figures (run with ``-s`` to see them; docs/reliability.md quotes them)."""
    text = " ".join(
        f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()
    )
    print(f"\nFAULT-FIGURES {name}: {text}")
