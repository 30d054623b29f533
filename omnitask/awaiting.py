"""Awaitable forms of sending tasks and waiting for results, for asyncio and trio callers.

Nothing here blocks the caller's event loop. Sending runs the ordinary (fast, sync) send in a
worker thread, so that a Redis outage, during which a send retries for up to
``enqueue_timeout_s``, stalls only that send. Waiting for a result is a native ``BLMOVE`` on
asyncio (redis-py's asyncio client: no thread is held while waiting); on trio, which redis-py
does not support, it waits in a worker thread in short slices, so a cancelled wait frees its
thread within a slice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from omnitask.broker.connect import async_client, async_cluster_client, is_cluster_url

if TYPE_CHECKING:
    from omnitask.app import OmniTask

__all__ = ("in_thread", "wait_result")

T = TypeVar("T")

WAIT_SLICE_S = 2.0
"""Longest single wait of a trio caller's thread: bounds how long a cancelled wait holds it."""

_waiters: anyio.CapacityLimiter | None = None


async def in_thread(fn: Callable[[], T]) -> T:
    """Run a short blocking step (a send) in a worker thread; the loop keeps running."""
    return await anyio.to_thread.run_sync(fn)


async def wait_result(
    app: OmniTask, task_id: str, queue: str, timeout_s: float | None
) -> bytes | None:
    """Wait for the final result record of a task sent to ``queue``; None on timeout."""
    if _on_asyncio():
        return await _wait_asyncio(app, task_id, queue, timeout_s)
    return await _wait_in_threads(app, task_id, queue, timeout_s)


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False  # another event loop (trio) is running this coroutine
    return True


async def _wait_asyncio(
    app: OmniTask, task_id: str, queue: str, timeout_s: float | None
) -> bytes | None:
    # A client per wait: connections of redis-py's asyncio client belong to one event loop,
    # and a wait is long next to the connect.
    url, connect_timeout_s = app.conf.result_url, app.conf.connect_timeout_s
    client: Any = (
        async_cluster_client(url, connect_timeout_s=connect_timeout_s)
        if is_cluster_url(url)
        else async_client(url, connect_timeout_s=connect_timeout_s)
    )
    key = app.keys.queue(queue).result(task_id)
    timeout = 0.0 if timeout_s is None else max(timeout_s, 0.001)
    try:
        # The record stays in place (a move onto itself): any number of waiters wake.
        reply: Any = await client.blmove(key, key, timeout, "RIGHT", "LEFT")
        return reply  # type: ignore[no-any-return]
    finally:
        await client.aclose()


async def _wait_in_threads(
    app: OmniTask, task_id: str, queue: str, timeout_s: float | None
) -> bytes | None:
    global _waiters
    if _waiters is None:
        # Waiting threads only sleep in Redis; many may wait at once without starving the
        # default limiter that other to_thread calls share.
        _waiters = anyio.CapacityLimiter(256)
    deadline = None if timeout_s is None else anyio.current_time() + timeout_s
    while True:
        slice_s = WAIT_SLICE_S
        if deadline is not None:
            slice_s = min(slice_s, deadline - anyio.current_time())
            if slice_s <= 0:
                return None
        wait = partial(app.broker.wait_result, task_id, queue, slice_s)
        data = await anyio.to_thread.run_sync(wait, abandon_on_cancel=True, limiter=_waiters)
        if data is not None:
            return data
