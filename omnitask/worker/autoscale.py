"""``--autoscale MAX,MIN[,IDLE]``: how many child processes a worker should run now.

Looked at with every heartbeat. A worker grows when every child is busy and tasks wait in its
queues: by as many as wait, up to MAX, at once (a backlog should not wait for one child per
heartbeat). It shrinks by one child per heartbeat, down to MIN, once its queues have been
empty and a child idle for IDLE seconds (30 by default), so a short lull does not cost a
fork when work comes back. A child busy with an async task counts as idle here: the event
loop already runs many tasks in one process.
"""

from __future__ import annotations

import re
import time
from typing import NamedTuple

from omnitask.errors import ConfigurationError

__all__ = ("Autoscaler", "parse_autoscale")

IDLE_DEFAULT_S = 30.0

_SPEC = re.compile(r"^\s*(\d+)\s*,\s*(\d+)\s*(?:,\s*(\d+(?:\.\d+)?)\s*)?$")


class Autoscale(NamedTuple):
    """The bounds of ``--autoscale``."""

    most: int
    least: int
    idle_s: float


def parse_autoscale(text: str) -> Autoscale:
    """``"10,3"`` (or ``"10,3,60"``: 60 s idle before shrinking) as bounds.

    Raises:
        ConfigurationError: Not of that form, MIN below 1, or MAX below MIN.
    """
    match = _SPEC.match(text)
    if match is None:
        raise ConfigurationError(f"--autoscale takes MAX,MIN[,IDLE_SECONDS], got {text!r}")
    most, least = int(match.group(1)), int(match.group(2))
    if least < 1 or most < least:
        raise ConfigurationError(f"--autoscale needs MAX >= MIN >= 1, got {text!r}")
    idle = float(match.group(3)) if match.group(3) else IDLE_DEFAULT_S
    return Autoscale(most, least, idle)


class Autoscaler:
    """Decides, from queue depth and busy children, by how many to grow or shrink."""

    def __init__(self, bounds: Autoscale) -> None:
        """Scale within ``bounds``."""
        self.bounds = bounds
        self._idle_since: float | None = None

    def change(self, *, waiting: int, busy: int, processes: int) -> int:
        """How many children to add (> 0) or stop (< 0) now; 0 to stay.

        Args:
            waiting: Tasks ready to run in the worker's queues.
            busy: Children running a (sync) task now.
            processes: Children the worker runs now.
        """
        now = time.monotonic()
        if waiting and busy >= processes:
            self._idle_since = None
            return min(waiting, self.bounds.most - processes)
        if waiting or busy >= processes:
            self._idle_since = None
            return 0
        if self._idle_since is None:
            self._idle_since = now
            return 0
        if processes > self.bounds.least and now - self._idle_since >= self.bounds.idle_s:
            return -1
        return 0
