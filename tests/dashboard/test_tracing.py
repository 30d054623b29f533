"""OpenTelemetry propagation: a send span's context through message headers into the run span.

Uses the SDK's in-memory exporter and a tracer provider of the test's own (never the global).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

pytest.importorskip(
    "opentelemetry.sdk", reason="opentelemetry-sdk missing: pip install -e '.[dev]'"
)

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from omnitask import OmniTask
from omnitask.context import Outcome, Request
from omnitask.tracing import Tracing


@dataclass(frozen=True)
class HeadedRequest(Request):
    """A Request as the worker would build it once messages carry headers."""

    headers: dict[str, str] = field(default_factory=dict)


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def _tracing(provider: TracerProvider) -> Tracing:
    return Tracing(tracer_provider=provider, propagator=TraceContextTextMapPropagator())


def _by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {span.name: span for span in exporter.get_finished_spans()}


def _request(headers: dict[str, str] | None = None, retries: int = 0) -> Request:
    return HeadedRequest(
        id="t1",
        task="app.add",
        args=(1, 2),
        kwargs={},
        queue="default",
        priority=5,
        retries=retries,
        worker="w1/abc.1",
        headers=headers or {},
    )


def test_the_run_span_continues_the_trace_of_the_send(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    tracing = _tracing(provider)
    headers: dict[str, str] = {}
    tracer = provider.get_tracer("the caller")
    with tracer.start_as_current_span("handle request") as caller:
        tracing.inject("app.add", "t1", "default", headers)
    traceparent = headers["traceparent"]
    assert traceparent.startswith(f"00-{caller.get_span_context().trace_id:032x}-")

    # The worker side: the run span is current while the task body runs.
    request = _request(headers)
    tracing.start_run(request)
    with tracer.start_as_current_span("query inside the task"):
        pass
    tracing.end_run(Outcome(request, "SUCCESS", result=3, runtime_s=0.01))
    assert tracing.open_runs() == 0
    assert trace.get_current_span() is trace.INVALID_SPAN  # the run's context was detached

    found = _by_name(exporter)
    send, run = found["send app.add"], found["run app.add"]
    inner = found["query inside the task"]
    trace_id = caller.get_span_context().trace_id
    assert {s.context.trace_id for s in (send, run, inner)} == {trace_id}
    assert send.parent is not None and send.parent.span_id == caller.get_span_context().span_id
    assert run.parent is not None and run.parent.span_id == send.context.span_id
    assert inner.parent is not None and inner.parent.span_id == run.context.span_id
    assert (send.kind, run.kind) == (SpanKind.PRODUCER, SpanKind.CONSUMER)
    assert send.attributes is not None and run.attributes is not None
    assert send.attributes["messaging.destination.name"] == "default"
    assert run.attributes["messaging.message.id"] == "t1"
    assert run.attributes["omnitask.task.state"] == "SUCCESS"
    assert run.status.status_code == StatusCode.UNSET


def test_a_failure_and_a_retry_are_recorded(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    tracing = _tracing(provider)
    first = _request()
    tracing.start_run(first)
    tracing.end_run(Outcome(first, "RETRY", exception=ConnectionError("flaky"), runtime_s=0.1))
    second = _request(retries=1)
    tracing.start_run(second)
    tracing.end_run(Outcome(second, "FAILURE", exception=ValueError("bad"), runtime_s=0.1))
    retried, failed = exporter.get_finished_spans()
    assert retried.attributes is not None and retried.attributes["omnitask.task.state"] == "RETRY"
    assert retried.status.status_code == StatusCode.UNSET
    assert [e.name for e in retried.events] == ["exception"]
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.status.description == "ValueError: bad"
    assert failed.attributes is not None and failed.attributes["omnitask.task.retries"] == 1
    # Without headers (no trace context came with the message), a run is a root span.
    assert retried.parent is None and retried.context.trace_id != failed.context.trace_id


def test_install_hooks_the_app_signals(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    app = OmniTask("ttrace")
    tracing = _tracing(provider)
    tracing.install(app)
    headers: dict[str, str] = {}
    tracing.inject("app.add", "t1", "default", headers)
    request = _request(headers)
    app.signals.task_prerun.send(request)
    assert trace.get_current_span().get_span_context().trace_id == int(
        headers["traceparent"].split("-")[1], 16
    )
    app.signals.task_postrun.send(Outcome(request, "SUCCESS"))
    run = _by_name(exporter)["run app.add"]
    assert run.parent is not None and run.parent.span_id == int(
        headers["traceparent"].split("-")[2], 16
    )
    tracing.uninstall(app)
    app.signals.task_prerun.send(_request())
    assert tracing.open_runs() == 0


def test_a_run_ended_in_another_thread_is_not_detached_there(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    # An async task that fails is recorded from a worker thread: its span must still end.
    # Both in threads of their own, so that no context is left attached in the test's thread.
    provider, exporter = spans
    tracing = _tracing(provider)
    request = _request()
    for step in (
        lambda: tracing.start_run(request),
        lambda: tracing.end_run(Outcome(request, "FAILURE")),
    ):
        thread = threading.Thread(target=step)
        thread.start()
        thread.join(5)
    assert [s.name for s in exporter.get_finished_spans()] == ["run app.add"]
    assert tracing.open_runs() == 0
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_send_and_run_are_one_trace_through_the_message(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """End to end through a real envelope (eager mode: encoded and decoded as on a worker)."""
    provider, exporter = spans
    app = OmniTask("ttrace-e2e", eager=True)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    tracing = _tracing(provider)
    tracing.install(app)
    with provider.get_tracer("test").start_as_current_span("caller") as caller:
        assert add.delay(1, 2).get() == 3
    found = _by_name(exporter)
    run = found[f"run {add.name}"]
    assert run.context.trace_id == caller.get_span_context().trace_id
    assert run.parent is not None and run.parent.span_id != caller.get_span_context().span_id
    tracing.uninstall(app)
