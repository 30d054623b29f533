"""omnitask: a typed, reliable task queue for Python on Redis.

Everything a user needs is importable from here; see the docs for the guide.
"""

from omnitask.app import OmniTask
from omnitask.context import Outcome, Request, WorkerInfo
from omnitask.errors import (
    ArgumentTypeError,
    BrokerConnectionError,
    BrokerUnavailable,
    ConfigurationError,
    MaxRetriesExceededError,
    MessageError,
    OmnitaskError,
    ResultIgnoredError,
    SerializationError,
    SoftTimeLimitExceeded,
    TaskFailed,
    TaskNotRegisteredError,
    TaskRevokedError,
    TimeLimitExceeded,
    TimeoutError,  # noqa: A004 - omnitask.TimeoutError subclasses the built-in
    WorkerLostError,
)
from omnitask.events import Event, EventKind
from omnitask.result import AsyncResult, TaskState
from omnitask.retry import Retry, RetryPolicy
from omnitask.task import AsyncTask, Task

__version__ = "0.1.0"

__all__ = (
    "ArgumentTypeError",
    "AsyncResult",
    "AsyncTask",
    "BrokerConnectionError",
    "BrokerUnavailable",
    "ConfigurationError",
    "Event",
    "EventKind",
    "MaxRetriesExceededError",
    "MessageError",
    "OmniTask",
    "OmnitaskError",
    "Outcome",
    "Request",
    "ResultIgnoredError",
    "Retry",
    "RetryPolicy",
    "SerializationError",
    "SoftTimeLimitExceeded",
    "Task",
    "TaskFailed",
    "TaskNotRegisteredError",
    "TaskRevokedError",
    "TaskState",
    "TimeLimitExceeded",
    "TimeoutError",
    "WorkerInfo",
    "WorkerLostError",
    "__version__",
)
