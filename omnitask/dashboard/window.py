"""The recent lifecycle events, held in memory and topped up from the app's capped streams.

The dashboard, its live chart and ``/metrics`` all read the same events: re-reading the whole
stream (``events_maxlen``, 10,000 by default) on every poll would cost each open browser
tab a full scan per second. :class:`EventWindow` reads it once, then only the entries added
since the last read, and forgets the entries that Redis has trimmed, so that it holds what
the streams hold: "the event window" everywhere in the dashboard and the metrics. The app's
stream and each queue's are read side by side and merged by entry id.

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

from omnitask.events import Event, event_keys, events_of, read_after, stream_order

if TYPE_CHECKING:
    from omnitask.app import OmniTask

__all__ = ("EventWindow", "event_ms", "worker_of")

logger = logging.getLogger(__name__)

_PAGE = 1000
# A burst of more than this many events between two refreshes is read over several: each
# refresh stays short, and the rest is read at the next one.
_READ_MAX = 50_000


_order = stream_order


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
        self._ids: list[tuple[int, int, int]] = []
        self._sources: list[str] = []  # the stream of each event
        # Each event's number in the order the window received it (from 1): an entry may land
        # in one stream with an id below one already read from another, so "newer than a
        # stream id" is not "received since".
        self._arrivals: list[int] = []
        self._received = 0
        self._first_received: int | None = None
        self._last: dict[str, str] = {}  # stream -> the newest id read from it
        self._refreshed = -1.0
        self._now_ms = 0

    @property
    def now_ms(self) -> int:
        """The Redis server's time at the last refresh (unix ms)."""
        return self._now_ms

    @property
    def first_refresh_received(self) -> int | None:
        """How many events the first refresh read: those received later are new since."""
        return self._first_received

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
            seconds, micros = redis.time()
            self._now_ms = int(seconds) * 1000 + int(micros) // 1000
            for key in event_keys(self._app):
                self._last.setdefault(key, "0-0")
            self._append(self._read_new(redis))
            self._trim(redis)
            if self._first_received is None:
                self._first_received = self._received
            self._refreshed = started

    def _read_new(self, redis: Any) -> list[tuple[str, Event]]:
        new: list[tuple[str, Event]] = []
        while len(new) < _READ_MAX:
            page = read_after(redis, self._last, _PAGE)
            new += (
                (key, event) for key, entry_id, raw in page for event in events_of(entry_id, raw)
            )
            if len(page) < _PAGE:
                break
        return new

    def _append(self, new: Sequence[tuple[str, Event]]) -> None:
        if not new:
            return
        behind = self._ids and _order(new[0][1].stream_id) < self._ids[-1]
        self._events.extend(e for _, e in new)
        self._ids.extend(_order(e.stream_id) for _, e in new)
        self._sources.extend(key for key, _ in new)
        self._arrivals.extend(range(self._received + 1, self._received + len(new) + 1))
        self._received += len(new)
        if behind:
            # Streams on several servers (a cluster) may deliver an entry older than one
            # held: keep the window in id order, which every reader's bisect relies on.
            rows = sorted(
                zip(self._ids, self._events, self._sources, self._arrivals, strict=True),
                key=lambda row: row[0],
            )
            self._ids = [i for i, _, _, _ in rows]
            self._events = [e for _, e, _, _ in rows]
            self._sources = [k for _, _, k, _ in rows]
            self._arrivals = [a for _, _, _, a in rows]

    def _trim(self, redis: Any) -> None:
        keys = list(self._last)
        pipe = redis.pipeline(transaction=False)
        for key in keys:
            pipe.xrange(key, count=1)
        oldest = {
            key: _order(page[0][0].decode()) if page else None
            for key, page in zip(keys, pipe.execute(), strict=True)
        }
        keep = [
            i
            for i, (key, order) in enumerate(zip(self._sources, self._ids, strict=True))
            # By entry, (ms, seq): the events of the oldest entry still kept all stay.
            if (first := oldest.get(key)) is not None and order[:2] >= first[:2]
        ]
        if len(keep) < len(self._ids):
            self._events = [self._events[i] for i in keep]
            self._ids = [self._ids[i] for i in keep]
            self._sources = [self._sources[i] for i in keep]
            self._arrivals = [self._arrivals[i] for i in keep]

    def events(self, *, since_ms: int | None = None) -> list[Event]:
        """The events held, oldest first (only those at or after ``since_ms`` if given)."""
        with self._lock:
            if since_ms is None:
                return list(self._events)
            return self._events[bisect.bisect_left(self._ids, (since_ms, 0)) :]

    def received_after(self, received: int) -> tuple[list[Event], int]:
        """The events held that the window received after its first ``received`` ones.

        Returns them in id order, and how many it has received in all (pass that next time).
        """
        with self._lock:
            new = [e for e, n in zip(self._events, self._arrivals, strict=True) if n > received]
            return new, self._received

    def span_ms(self) -> int:
        """How far back the window reaches from :attr:`now_ms` (0 when it is empty)."""
        with self._lock:
            return self._now_ms - self._ids[0][0] if self._ids else 0
