"""In-process hooks: functions an app runs at points of a task's and a worker's life.

Usage::

    @app.signals.task_failure.connect
    def report(outcome: Outcome) -> None:
        sentry.capture_exception(outcome.exception)

A hook that raises is logged and skipped: it never changes a task's outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from omnitask.context import Outcome, Publishing, Request, WorkerInfo

__all__ = ("Signal", "Signals")

logger = logging.getLogger(__name__)

T = TypeVar("T")
Receiver = Callable[[T], object]


class Signal(Generic[T]):
    """A named hook point; receivers get one argument of type ``T``."""

    def __init__(self, name: str) -> None:
        """Create an empty hook point called ``name``."""
        self.name = name
        self._receivers: list[Receiver[T]] = []

    def __repr__(self) -> str:
        return f"<Signal {self.name} receivers={len(self._receivers)}>"

    def connect(self, receiver: Receiver[T]) -> Receiver[T]:
        """Add ``receiver`` (usable as a decorator; returns it unchanged)."""
        if receiver not in self._receivers:
            self._receivers.append(receiver)
        return receiver

    def disconnect(self, receiver: Receiver[T]) -> None:
        """Remove ``receiver`` if it is connected."""
        if receiver in self._receivers:
            self._receivers.remove(receiver)

    @property
    def has_receivers(self) -> bool:
        """Whether any receiver is connected (spares building a payload nobody reads)."""
        return bool(self._receivers)

    def send(self, payload: T) -> None:
        """Call every receiver with ``payload``; a receiver that raises is logged, not raised."""
        for receiver in self._receivers:
            try:
                receiver(payload)
            except Exception:
                logger.exception("hook failed signal=%s receiver=%r", self.name, receiver)


class Signals:
    """The hook points of one app.

    Attributes:
        task_prerun: In the worker child, before the task body runs.
        task_postrun: After it ran, whatever the outcome.
        task_success: After it returned.
        task_failure: After it raised (and will not be retried).
        worker_process_init: In each worker child after it started, before any task (open
            per-process resources such as database connections here).
        worker_ready: In the worker's main process, when its children are started.
        worker_shutdown: In the worker's main process, when it stops.
        before_publish: In the sending process, before a call is encoded: a receiver may add
            message headers (tracing context), which the run finds in ``Request.headers``.
    """

    def __init__(self) -> None:
        """Create the hook points, with no receivers."""
        self.task_prerun: Signal[Request] = Signal("task_prerun")
        self.task_postrun: Signal[Outcome] = Signal("task_postrun")
        self.task_success: Signal[Outcome] = Signal("task_success")
        self.task_failure: Signal[Outcome] = Signal("task_failure")
        self.worker_process_init: Signal[WorkerInfo] = Signal("worker_process_init")
        self.worker_ready: Signal[WorkerInfo] = Signal("worker_ready")
        self.worker_shutdown: Signal[WorkerInfo] = Signal("worker_shutdown")
        self.before_publish: Signal[Publishing] = Signal("before_publish")
