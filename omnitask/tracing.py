"""OpenTelemetry: the trace context of ``.delay()`` carried into the task's span (otel extra).

Usage, in the module that defines the app (so that both senders and workers run it)::

    from omnitask.tracing import Tracing

    Tracing().install(app)

Then:

- **Sending** (``.delay()``, ``apply_async``): a short ``send <task>`` span of kind PRODUCER,
  a child of whatever span is current, is started and ended, and its context is written into
  the message's headers as W3C ``traceparent`` (and ``tracestate``), with the propagator the
  application configured (``opentelemetry.propagate``; W3C trace context by default).
- **Running**: a ``run <task>`` span of kind CONSUMER, a child of the context read back from
  those headers, covers the run and is current while the task body runs, so the spans the
  task makes (HTTP calls, SQL ...) join the caller's trace. A failure is recorded on it as an
  exception with an ERROR status; a retry as an exception with the ``omnitask.task.state``
  attribute ``RETRY``.

The sending side hooks ``before_publish``, whose headers travel in the message's ``headers``
field and reach the run as ``Request.headers``; the worker side hooks ``task_prerun`` and
``task_postrun`` (``omnitask.signals``).
:meth:`Tracing.inject` and :meth:`Tracing.start_run` are the two halves, callable directly.

Only ``opentelemetry-api`` is needed; the application picks and configures the SDK.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, MutableMapping
from contextvars import Token
from typing import TYPE_CHECKING, Any, NamedTuple

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import SpanKind, Status, StatusCode

from omnitask.context import Outcome, Request

if TYPE_CHECKING:
    from omnitask.app import OmniTask

__all__ = ("OPEN_RUNS_MAX", "Tracing")

logger = logging.getLogger(__name__)

OPEN_RUNS_MAX = 10_000
"""Runs whose span is open at once, at most. A run that never reports its end (a process
killed by a time limit or a revoke) would otherwise hold its span for ever; past this many,
the oldest open span is ended."""

_SYSTEM = "omnitask"


class _Open(NamedTuple):
    """A run's span, the token that made it current, and the thread that did."""

    span: trace.Span
    token: Token[Context]
    thread: int


def _run_key(request: Request) -> tuple[str, int, int, str]:
    return (request.id, request.retries, request.delivery, request.worker)


def _headers_of(request: Request) -> Mapping[str, str]:
    return request.headers


class Tracing:
    """Trace sends and runs of an app's tasks with OpenTelemetry (see the module docstring).

    Args:
        tracer_provider: Where spans go (default: the global one).
        propagator: How the context is written to headers (default: the global one, W3C
            trace context unless configured otherwise).
    """

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        propagator: TextMapPropagator | None = None,
    ) -> None:
        """Trace nothing until :meth:`install`, :meth:`inject` or :meth:`start_run`."""
        self._tracer = trace.get_tracer("omnitask", tracer_provider=tracer_provider)
        self._propagator = propagator
        self._open: dict[tuple[str, int, int, str], _Open] = {}
        self._lock = threading.Lock()

    def _textmap(self) -> TextMapPropagator:
        return self._propagator or propagate.get_global_textmap()

    # -- sending --------------------------------------------------------------------------------

    def inject(
        self, task: str, task_id: str, queue: str, headers: MutableMapping[str, str]
    ) -> None:
        """Record the send of a task and write its trace context into ``headers``.

        Args:
            task: The task name.
            task_id: The task id.
            queue: The queue it is sent to.
            headers: The message's headers; ``traceparent`` (and ``tracestate``) are added.
        """
        attributes = {
            "messaging.system": _SYSTEM,
            "messaging.operation.type": "send",
            "messaging.destination.name": queue,
            "messaging.message.id": task_id,
            "omnitask.task.name": task,
        }
        span = self._tracer.start_span(
            f"send {task}", kind=SpanKind.PRODUCER, attributes=attributes
        )
        # The send itself is the enqueue that follows, a millisecond: the span marks the
        # point in the caller's trace that the run continues from.
        span.end()
        self._textmap().inject(headers, context=trace.set_span_in_context(span))

    # -- running --------------------------------------------------------------------------------

    def start_run(self, request: Request, headers: Mapping[str, str] | None = None) -> None:
        """Open the span of one run, a child of the context in ``headers``, and make it current.

        Args:
            request: The run's request.
            headers: The message's headers (default: the request's, when it has them).
        """
        carrier = dict(headers if headers is not None else _headers_of(request))
        parent = self._textmap().extract(carrier)
        attributes: dict[str, str | int] = {
            "messaging.system": _SYSTEM,
            "messaging.operation.type": "process",
            "messaging.destination.name": request.queue,
            "messaging.message.id": request.id,
            "omnitask.task.name": request.task,
            "omnitask.task.retries": request.retries,
            "omnitask.task.delivery": request.delivery,
            "omnitask.worker": request.worker,
        }
        span = self._tracer.start_span(
            f"run {request.task}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        stale: list[_Open] = []
        with self._lock:
            self._open[_run_key(request)] = _Open(span, token, threading.get_ident())
            while len(self._open) > OPEN_RUNS_MAX:
                stale.append(self._open.pop(next(iter(self._open))))
        for run in stale:
            run.span.set_attribute("omnitask.task.state", "UNKNOWN")
            run.span.end()

    def end_run(self, outcome: Outcome) -> None:
        """Close the span of the run that ``outcome`` ends, with its state and exception."""
        with self._lock:
            run = self._open.pop(_run_key(outcome.request), None)
        if run is None:
            return
        span = run.span
        span.set_attribute("omnitask.task.state", outcome.state)
        span.set_attribute("omnitask.task.runtime_s", outcome.runtime_s)
        if outcome.exception is not None:
            span.record_exception(outcome.exception)
            if outcome.state != "RETRY":
                text = f"{type(outcome.exception).__name__}: {outcome.exception}"
                span.set_status(Status(StatusCode.ERROR, text))
        span.end()
        # Only where it was made current: an async task's failure ends in a worker thread,
        # whose context is a copy (and is thrown away with the task's anyway).
        if run.thread == threading.get_ident() and trace.get_current_span() is span:
            otel_context.detach(run.token)

    def open_runs(self) -> int:
        """How many runs have an open span now."""
        with self._lock:
            return len(self._open)

    # -- hooks ----------------------------------------------------------------------------------

    def _on_prerun(self, request: Request) -> None:
        self.start_run(request)

    def _on_publish(self, publishing: Any) -> None:
        self.inject(publishing.task, publishing.task_id, publishing.queue, publishing.headers)

    def install(self, app: OmniTask) -> None:
        """Trace ``app``'s sends and runs."""
        app.signals.task_prerun.connect(self._on_prerun)
        app.signals.task_postrun.connect(self.end_run)
        app.signals.before_publish.connect(self._on_publish)

    def uninstall(self, app: OmniTask) -> None:
        """Stop tracing ``app`` (open spans are left to end with their runs)."""
        app.signals.task_prerun.disconnect(self._on_prerun)
        app.signals.task_postrun.disconnect(self.end_run)
        app.signals.before_publish.disconnect(self._on_publish)
