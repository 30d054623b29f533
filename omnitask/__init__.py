"""omnitask: a typed, reliable task queue for Python on Redis.

Everything a user needs is importable from here; see the docs for the guide.
"""

from omnitask.app import OmniTask
from omnitask.context import Outcome, Request, WorkerInfo
from omnitask.errors import (
    BrokerConnectionError,
    ConfigurationError,
    MessageError,
    OmnitaskError,
    ResultIgnoredError,
    SerializationError,
    TaskFailed,
    TaskNotRegisteredError,
    TaskRevokedError,
    TimeoutError,  # noqa: A004 - omnitask.TimeoutError subclasses the built-in
    WorkerLostError,
)
from omnitask.events import Event, EventKind
from omnitask.result import AsyncResult, TaskState
from omnitask.task import Task

__version__ = "0.1.0"

__all__ = (
    "AsyncResult",
    "BrokerConnectionError",
    "ConfigurationError",
    "Event",
    "EventKind",
    "MessageError",
    "OmniTask",
    "OmnitaskError",
    "Outcome",
    "Request",
    "ResultIgnoredError",
    "SerializationError",
    "Task",
    "TaskFailed",
    "TaskNotRegisteredError",
    "TaskRevokedError",
    "TaskState",
    "TimeoutError",
    "WorkerInfo",
    "WorkerLostError",
    "__version__",
)
