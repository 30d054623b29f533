"""The example tasks. The broker comes from OMNITASK_BROKER_URL (default: local Redis)."""

from __future__ import annotations

import time

from omnitask import OmniTask

app = OmniTask("quickstart")


@app.task
def add(x: int, y: int) -> int:
    """Add two numbers."""
    return x + y


@app.task(priority=9)
def urgent(tag: str) -> str:
    """A task that jumps the queue: priority 9 runs before the default 5."""
    return f"urgent {tag}"


@app.task
def report(rows: int) -> dict[str, float]:
    """Pretend to crunch ``rows`` rows for a while."""
    time.sleep(rows / 1000)
    return {"rows": rows, "total": rows * (rows + 1) / 2}


class InvalidEmailError(ValueError):
    """Raised for an address without an @."""


@app.task(retries=2)
def send_email(to: str) -> str:
    """Fail for bad input: the caller gets InvalidEmailError back from get()."""
    if "@" not in to:
        raise InvalidEmailError(f"not an email address: {to!r}")
    return f"sent to {to}"
