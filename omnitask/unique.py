"""Unique tasks: ``unique_for`` keeps one task per unique key within a window.

The check and the send are one Lua step (``lua/unique.lua``), so two clients racing with the
same key get one task between them. Two modes:

- throttle (the default): the first send of a window is queued; later sends within
  ``unique_for`` of it return the first one's result and queue nothing.
- debounce: the task runs once, ``unique_for`` after the last send, with the last send's
  arguments; every send of the cycle returns the same result.

The unique key is the task name and all the arguments, hashed, unless the task gives a
``unique_key`` function of its arguments. Workflows (``task.s()`` in a chain, group or chord)
and eager mode do not apply it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from omnitask.errors import ConfigurationError
from omnitask.producer import Call, OptionsLike, new_task_id, seconds
from omnitask.result import AsyncResult
from omnitask.serialization import get_serializer

if TYPE_CHECKING:
    from omnitask.app import OmniTask
    from omnitask.task import Task

__all__ = ("UniquePolicy", "send_unique")

MODES = ("throttle", "debounce")
_REBUILDS = 5  # debounce: rebuilt with the pending id; more only if the key keeps changing


class UniquePolicy(NamedTuple):
    """How a task is kept unique: for how long, by which key, throttled or debounced."""

    window_s: float
    key: Callable[..., str] | None
    debounce: bool

    @classmethod
    def build(
        cls,
        unique_for: float | timedelta | None,
        unique_key: Callable[..., str] | None,
        mode: str,
    ) -> UniquePolicy | None:
        """The policy of the task options, or None when the task is not unique.

        Raises:
            ConfigurationError: An option has a bad value, or ``unique_key`` (or a mode)
                comes without ``unique_for``.
        """
        if mode not in MODES:
            raise ConfigurationError(f"unique_mode must be one of {', '.join(MODES)}: {mode!r}")
        if unique_for is None:
            if unique_key is not None or mode != "throttle":
                raise ConfigurationError("unique_key and unique_mode need unique_for")
            return None
        window = seconds("unique_for", unique_for)
        if window <= 0:
            raise ConfigurationError("unique_for must be greater than 0")
        if unique_key is not None and not callable(unique_key):
            raise ConfigurationError("unique_key must be a function of the task's arguments")
        return cls(window, unique_key, mode == "debounce")

    def key_for(self, task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The unique key of a call (hashed: any string or arguments make a safe key name).

        Raises:
            TypeError: ``unique_key`` did not return a str.
        """
        if self.key is not None:
            raw = self.key(*args, **kwargs)
            if not isinstance(raw, str):
                raise TypeError(
                    f"task {task.name!r}: unique_key returned {type(raw).__name__}, not str"
                )
            data = raw.encode()
        else:
            codec = get_serializer(task.serializer)
            data = codec.encode([list(args), sorted(kwargs.items())])
        return hashlib.sha256(task.name.encode() + b"\0" + data).hexdigest()[:40]


def send_unique(
    app: OmniTask,
    task: Task[Any, Any],
    call: Call,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: OptionsLike,
    canvas: bytes | None,
) -> AsyncResult[Any]:
    """Send ``call`` of a unique task; the result is of the task that stands for its key."""
    policy = task.unique
    assert policy is not None
    key = policy.key_for(task, args, kwargs)
    window_ms = int(policy.window_s * 1000)
    for _ in range(_REBUILDS):
        queued, task_id = app.broker.enqueue_unique(
            call.queue, call.item, key, window_ms, debounce=policy.debounce
        )
        if queued or not policy.debounce:
            break
        # Debounce found a pending task: send these arguments under its id instead (or, when
        # that one was promoted meanwhile, under a fresh id: a new cycle).
        fresh = task_id or new_task_id()
        call = Call.build(app, task, args, kwargs, {**options, "task_id": fresh}, canvas)
    return AsyncResult(task_id, app, queue=call.queue, ignored=task.ignore_result)
