"""The recent lifecycle events, held in memory and topped up from the app's capped stream.

The dashboard, its live chart and ``/metrics`` all read the same events: re-reading the whole
stream (``events_maxlen``, 10,000 by default) on every poll would cost each open browser
tab a full scan per second. :class:`EventWindow` reads it once, then only the entries added
since the last read, and forgets the entries that Redis has trimmed, so that it holds what
the stream holds: "the event window" everywhere in the dashboard and the metrics.

Times are the stream entry ids' milliseconds, stamped by the Redis server's clock, and
:attr:`EventWindow.now_ms` is that same clock, read with each refresh: ages and rates never
mix two machines' clocks.

No third-party import here: ``omnitask.metrics`` uses the window without the dashboard extra.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from omnitask.events import Event

if TYPE_CHECKING:
    from omnitask.app import OmniTask

__all__ = ("EventWindow", "event_ms", "worker_of")

logger = logging.getLogger(__name__)

_PAGE = 1000
# A burst of more than this many events between two refreshes is read over several: each
# refresh stays short, and the rest is read at the next one.
_READ_MAX = 50_000


def _order(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def event_ms(event: Event) -> int:
    """When ``event`` was published: its stream id's milliseconds (Redis server clock)."""
    return _order(event.stream_id)[0]


def worker_of(consumer: str | None) -> str:
    """The worker that a consumer id (``<worker name>/<nonce>.<n>``) belongs to."""
    if not consumer:
        return ""
    return consumer.rpartition("/")[0] or consumer


class EventWindow:
    """The events the app's capped stream holds, kept in memory: ``EventWindow(app)``.

    Thread-safe: the dashboard's request handlers share one window.

    Args:
        app: The app whose events to read.
        min_interval_s: A refresh sooner than this after the previous one reads nothing, so
            that many requests at once cost Redis one read.
    """

    def __init__(self, app: OmniTask, *, min_interval_s: float = 0.25) -> None:
        """Read nothing yet: the first :meth:`refresh` reads the whole stream."""
        self._app = app
        self._min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._events: list[Event] = []
        self._ids: list[tuple[int, int]] = []
        self._last_id = "0-0"
        self._refreshed = -1.0
        self._now_ms = 0
        self._first_refresh_id: str | None = None

    @property
    def now_ms(self) -> int:
        """The Redis server's time at the last refresh (unix ms)."""
        return self._now_ms

    @property
    def first_refresh_id(self) -> str | None:
        """The newest stream id read by the first refresh: later events arrived since."""
        return self._first_refresh_id

    def refresh(self, *, force: bool = False) -> None:
        """Read the events added since the last refresh and drop those Redis trimmed.

        Args:
            force: Read even when the last refresh was less than ``min_interval_s`` ago.

        Raises:
            redis.RedisError: Redis could not be read (the window keeps what it had).
        """
        with self._lock:
            started = time.monotonic()
            if not force and started - self._refreshed < self._min_interval_s:
                return
            redis = self._app.broker.redis
            key = self._app.keys.events
            seconds, micros = redis.time()
            self._now_ms = int(seconds) * 1000 + int(micros) // 1000
            self._append(self._read_new(redis, key))
            self._trim(redis, key)
            if self._first_refresh_id is None:
                self._first_refresh_id = self._last_id
            self._refreshed = started

    def _read_new(self, redis: Any, key: str) -> list[Event]:
        new: list[Event] = []
        while len(new) < _READ_MAX:
            page: Any = redis.xrange(key, min="(" + self._last_id, count=_PAGE)
            new += (Event.from_entry(entry_id, raw) for entry_id, raw in page)
            if page:
                self._last_id = page[-1][0].decode()
            if len(page) < _PAGE:
                break
        return new

    def _append(self, new: Sequence[Event]) -> None:
        self._events.extend(new)
        self._ids.extend(_order(e.stream_id) for e in new)

    def _trim(self, redis: Any, key: str) -> None:
        oldest: Any = redis.xrange(key, count=1)
        if not oldest:
            self._events.clear()
            self._ids.clear()
            return
        cut = bisect.bisect_left(self._ids, _order(oldest[0][0].decode()))
        if cut:
            del self._events[:cut]
            del self._ids[:cut]

    def events(self, *, since_ms: int | None = None) -> list[Event]:
        """The events held, oldest first (only those at or after ``since_ms`` if given)."""
        with self._lock:
            if since_ms is None:
                return list(self._events)
            return self._events[bisect.bisect_left(self._ids, (since_ms, 0)) :]

    def events_after(self, stream_id: str) -> list[Event]:
        """The events held that are newer than ``stream_id``, oldest first."""
        with self._lock:
            return self._events[bisect.bisect_right(self._ids, _order(stream_id)) :]

    def span_ms(self) -> int:
        """How far back the window reaches from :attr:`now_ms` (0 when it is empty)."""
        with self._lock:
            return self._now_ms - self._ids[0][0] if self._ids else 0
