"""omnitask: a typed, reliable task queue for Python on Redis.

Everything a user needs is importable from here; see the docs for the guide.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omnitask.app import OmniTask
    from omnitask.canvas import Chain, Chord, Group, GroupResult, Signature, chain, chord, group
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

# Names load on first use (PEP 562): importing omnitask, or one of its submodules such as the
# pytest plugin that pytest loads in every run, costs next to nothing until an app is made.
_WHERE = {
    "ArgumentTypeError": "omnitask.errors",
    "AsyncResult": "omnitask.result",
    "AsyncTask": "omnitask.task",
    "Chain": "omnitask.canvas",
    "Chord": "omnitask.canvas",
    "Group": "omnitask.canvas",
    "GroupResult": "omnitask.canvas",
    "Signature": "omnitask.canvas",
    "chain": "omnitask.canvas",
    "chord": "omnitask.canvas",
    "group": "omnitask.canvas",
    "BrokerConnectionError": "omnitask.errors",
    "BrokerUnavailable": "omnitask.errors",
    "ConfigurationError": "omnitask.errors",
    "Event": "omnitask.events",
    "EventKind": "omnitask.events",
    "MaxRetriesExceededError": "omnitask.errors",
    "MessageError": "omnitask.errors",
    "OmniTask": "omnitask.app",
    "OmnitaskError": "omnitask.errors",
    "Outcome": "omnitask.context",
    "Request": "omnitask.context",
    "ResultIgnoredError": "omnitask.errors",
    "Retry": "omnitask.retry",
    "RetryPolicy": "omnitask.retry",
    "SerializationError": "omnitask.errors",
    "SoftTimeLimitExceeded": "omnitask.errors",
    "Task": "omnitask.task",
    "TaskFailed": "omnitask.errors",
    "TaskNotRegisteredError": "omnitask.errors",
    "TaskRevokedError": "omnitask.errors",
    "TaskState": "omnitask.result",
    "TimeLimitExceeded": "omnitask.errors",
    "TimeoutError": "omnitask.errors",
    "WorkerInfo": "omnitask.context",
    "WorkerLostError": "omnitask.errors",
}

__version__ = "0.1.0"

__all__ = (
    "ArgumentTypeError",
    "AsyncResult",
    "AsyncTask",
    "BrokerConnectionError",
    "BrokerUnavailable",
    "Chain",
    "Chord",
    "ConfigurationError",
    "Event",
    "EventKind",
    "Group",
    "GroupResult",
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
    "Signature",
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
    "chain",
    "chord",
    "group",
)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'omnitask' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
