"""How a drain is timed, the same way by every benchmark here and by the shared harness."""

from __future__ import annotations

import time
from collections.abc import Callable


def time_drain(
    done: Callable[[], int],
    n: int,
    what: str,
    *,
    started: float | None = None,
    poll_s: float = 0.005,
    deadline_s: float = 300.0,
) -> tuple[float, float]:
    """Poll ``done()`` (tasks finished so far) until it reaches ``n``.

    Returns tasks per second from the first task done to the last, and the seconds from
    ``started`` (``time.monotonic()``, when the workers were started; default: now) to the
    first task done: the workers' start-up.

    Raises:
        RuntimeError: ``n`` tasks were not done within ``deadline_s`` (``what`` says which).
    """
    started = time.monotonic() if started is None else started
    first: tuple[float, int] | None = None
    while time.monotonic() < started + deadline_s:
        count = done()
        now = time.monotonic()
        if count and first is None:
            first = (now, count)
        if count >= n:
            assert first is not None
            return (n - first[1]) / max(now - first[0], 1e-9), first[0] - started
        time.sleep(poll_s)
    raise RuntimeError(f"{what}: the drain did not finish")
