"""What a running task knows about its own call, and what hooks receive."""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ("CURRENT_REQUEST", "Outcome", "Publishing", "Request", "WorkerInfo")


@dataclass(frozen=True)
class Request:
    """One delivery of a task, as the worker sees it.

    Attributes:
        id: The task id.
        task: The task name.
        args: Positional arguments.
        kwargs: Keyword arguments.
        queue: The queue it was claimed from.
        priority: Its priority (0-9).
        retries: Retries done before this run.
        delivery: 1 on the first delivery, more when a worker died while running it.
        eta: When it was due, for delayed tasks.
        worker: The consumer (worker child) running it.
        headers: What its sender's ``before_publish`` hooks attached (tracing context).
    """

    id: str
    task: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    queue: str
    priority: int
    retries: int = 0
    delivery: int = 1
    eta: datetime | None = None
    worker: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Publishing:
    """A task call about to be sent, passed to the ``before_publish`` hooks.

    Attributes:
        task: The task name.
        task_id: The task id.
        queue: The queue it goes to.
        headers: A hook adds string entries; the worker hands them to the run as
            ``Request.headers``.
    """

    task: str
    task_id: str
    queue: str
    headers: dict[str, str]


@dataclass(frozen=True)
class Outcome:
    """How one run of a task ended, passed to the ``task_postrun`` family of hooks.

    Attributes:
        request: The run's request.
        state: ``SUCCESS`` or ``FAILURE``.
        result: The return value, when it succeeded.
        exception: The exception, when it failed.
        traceback: The formatted traceback, when it failed.
        runtime_s: Seconds the task body ran.
    """

    request: Request
    state: str
    result: Any = None
    exception: BaseException | None = None
    traceback: str | None = None
    runtime_s: float = 0.0


@dataclass(frozen=True)
class WorkerInfo:
    """A worker (supervisor) or one of its child processes, passed to worker hooks.

    Attributes:
        name: The worker's name (``host:pid`` of the supervisor).
        queues: The queues it consumes.
        pid: The process id of the process running the hook.
        child: The consumer id when the hook runs in a child process, else None.
    """

    name: str
    queues: tuple[str, ...]
    pid: int
    child: str | None = None


CURRENT_REQUEST: ContextVar[Request | None] = ContextVar("omnitask_request", default=None)
"""The request of the task running in this context (read through ``Task.request``)."""
