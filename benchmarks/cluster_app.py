"""The no-op task of benchmarks/cluster_drain.py: one INCR of its queue's own counter."""

from __future__ import annotations

from typing import Any

from omnitask import OmniTask

app = OmniTask("cdrain")


def done_key(queue: str) -> str:
    """The counter of tasks done on ``queue``, under the queue's hash tag (its master's)."""
    return f"bench:{{cdrain:{queue}}}:done"


@app.task(bind=True, ignore_result=True)
def noop(self: Any, i: int) -> None:
    """Count one more done on this task's queue, on the same master as the queue's keys."""
    app.broker.redis.incr(done_key(self.request.queue))
