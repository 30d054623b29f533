"""The exception tree of omnitask.

Every error omnitask raises derives from :class:`OmnitaskError`, so one ``except`` clause catches
them all::

    OmnitaskError
    ├── ConfigurationError          a setting or a task option has a bad value
    ├── ArgumentTypeError           an argument does not match the function's annotation
    ├── SerializationError          an argument or result cannot be encoded (raised at .delay())
    ├── TaskNotRegisteredError      no task of that name is registered on the app
    ├── BrokerConnectionError       Redis could not be reached in time
    │   └── BrokerUnavailable       .delay() gave up after retrying for enqueue_timeout_s
    ├── MessageError                bytes in Redis that are not a valid omnitask message
    ├── TaskFailed                  a task raised an exception that cannot be rebuilt here
    ├── TaskRevokedError            .get() on a task that was revoked or expired before it ran
    ├── WorkerLostError             its worker process died too often (poison pill)
    ├── MaxRetriesExceededError     self.retry() with no retries left and no exception to raise
    ├── TimeLimitExceeded           the task ran past its hard time_limit and was killed
    ├── SoftTimeLimitExceeded       raised inside a task at its soft_time_limit, to clean up
    ├── ResultIgnoredError          .get() on a task declared with ignore_result=True
    └── TimeoutError                .get() waited too long (also a builtins.TimeoutError)
"""

from __future__ import annotations

import builtins

__all__ = (
    "ArgumentTypeError",
    "BrokerConnectionError",
    "BrokerUnavailable",
    "ConfigurationError",
    "MaxRetriesExceededError",
    "MessageError",
    "OmnitaskError",
    "ResultIgnoredError",
    "SerializationError",
    "SoftTimeLimitExceeded",
    "TaskFailed",
    "TaskNotRegisteredError",
    "TaskRevokedError",
    "TimeLimitExceeded",
    "TimeoutError",
    "WorkerLostError",
)


class OmnitaskError(Exception):
    """Root of every exception raised by omnitask."""


class ConfigurationError(OmnitaskError, ValueError):
    """A setting, a task option or a call option has a value omnitask cannot use.

    The message names the setting (and, for settings read from the environment, the variable).
    """


class SerializationError(OmnitaskError, TypeError):
    """A task argument or result cannot be encoded by the task's serializer.

    Raised by ``.delay()`` / ``.apply_async()`` before anything reaches Redis, naming the task and
    the argument, so the caller can fix the call.
    """


class TaskNotRegisteredError(OmnitaskError, KeyError):
    """No task with this name is registered on the app."""

    def __str__(self) -> str:
        # KeyError quotes its argument; a sentence reads better.
        return str(self.args[0]) if self.args else "task not registered"


class BrokerConnectionError(OmnitaskError, ConnectionError):
    """Redis could not be reached within the configured time."""


class MessageError(OmnitaskError):
    """Bytes read from Redis are not a valid omnitask message (garbage, truncated or foreign)."""


class ResultIgnoredError(OmnitaskError):
    """``.get()`` was called for a task whose results are not stored (``ignore_result=True``)."""


class TaskFailed(OmnitaskError):  # noqa: N818 - the Celery-familiar name matters more here
    """A task raised an exception whose type cannot be rebuilt in this process.

    Attributes:
        type_name: The dotted name of the remote exception type, e.g. ``"myapp.errors.Boom"``.
        message: ``str()`` of the remote exception.
        remote_traceback: The formatted traceback from the worker.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str | None = None) -> None:
        """Build the error from the remote exception's type name, message and traceback."""
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback


class TaskRevokedError(OmnitaskError):
    """The task was revoked, or expired (``expires=``) before a worker started it."""


class TimeoutError(OmnitaskError, builtins.TimeoutError):  # noqa: A001 - Celery's name, on purpose
    """Waiting for a result took longer than the timeout given to ``.get()``.

    It subclasses the built-in :class:`TimeoutError`, so ``except TimeoutError`` catches it.
    """


class WorkerLostError(OmnitaskError):
    """The worker process running the task died ``max_deliveries`` times: it was dead-lettered."""


class BrokerUnavailable(BrokerConnectionError):  # noqa: N818 - the name users look for
    """``.delay()`` could not reach Redis within ``enqueue_timeout_s``: nothing was queued.

    When the connection broke after the task was sent (so it may have been queued), the
    message says so and names the task id instead of sending it again.
    """


class MaxRetriesExceededError(OmnitaskError):
    """``self.retry()`` was called with no retries left and no exception to re-raise."""


class TimeLimitExceeded(OmnitaskError):  # noqa: N818 - Celery's name, on purpose
    """The task ran past its hard ``time_limit``: its worker process was killed and replaced."""


class SoftTimeLimitExceeded(OmnitaskError):  # noqa: N818 - Celery's name, on purpose
    """Raised inside a running task at its ``soft_time_limit``, so that it can clean up."""


class ArgumentTypeError(OmnitaskError, TypeError):
    """An argument does not match the type the task's function annotates for it.

    Raised by ``.delay()`` (nothing is sent); on a worker, a message whose arguments cannot be
    converted to the annotated types is dead-lettered and its result fails with this type.
    """
