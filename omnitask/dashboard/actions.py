"""The dashboard's two writes, requeue and purge of dead letters, each confirmed first.

A request without ``"confirm": true`` changes nothing and answers what it would do (how many
dead letters), which is what the page's confirmation dialog shows; the same request with
``"confirm": true`` does it. So a click that was not confirmed, or a script that forgot to
ask, never requeues or deletes anything.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from omnitask.deadletters import DeadLetters
from omnitask.errors import ConfigurationError, MessageError

if TYPE_CHECKING:
    from omnitask.app import OmniTask

__all__ = ("ActionError", "purge", "requeue")

_IDS_MAX = 1000


class ActionError(Exception):
    """A request the action cannot carry out; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        """Say why, with the HTTP status."""
        super().__init__(message)
        self.status = status


def _text(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ActionError(f"{key} must be a string")
    return value


def _queue(app: OmniTask, body: Mapping[str, Any]) -> str | None:
    queue = _text(body, "queue")
    if queue is not None:
        try:
            app.keys.queue(queue)
        except ConfigurationError as exc:
            raise ActionError(str(exc)) from None
    return queue


def _ids(body: Mapping[str, Any]) -> list[str]:
    ids = body.get("ids", [])
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ActionError("ids must be a list of dead-letter ids (strings)")
    if len(ids) > _IDS_MAX:
        raise ActionError(f"at most {_IDS_MAX} ids at once")
    return ids


def _where(queue: str | None) -> str:
    return f"queue {queue!r}" if queue else "every queue"


def _matching(dead: DeadLetters, queue: str | None, reason: str | None, task: str | None) -> int:
    if reason is None and task is None:
        return dead.count(queue)
    return len(dead.list(queue, reason=reason, task=task, limit=sys.maxsize))


def requeue(app: OmniTask, body: Mapping[str, Any]) -> dict[str, Any]:
    """Requeue dead letters: ``{"queue", "ids": [...]}`` or ``{"all": true, ...filters}``.

    Filters: ``queue``, ``reason``, ``task``. Without ``"confirm": true``, only counts.

    Raises:
        ActionError: The body asks for nothing, or something malformed.
    """
    dead = DeadLetters(app)
    queue, ids = _queue(app, body), _ids(body)
    reason, task = _text(body, "reason"), _text(body, "task")
    confirmed = body.get("confirm") is True
    if ids:
        if queue is None:
            raise ActionError("requeueing by id needs the queue")
        found = [i for i in ids if dead.get(queue, i) is not None]
        if not confirmed:
            return _ask("requeue", len(found), f"queue {queue!r}")
        done, errors = 0, []
        for stream_id in ids:
            try:
                if dead.requeue(queue, stream_id):
                    done += 1
                else:
                    errors.append(f"queue {queue!r} has no dead letter {stream_id!r}")
            except MessageError as exc:
                errors.append(f"{exc}; it was left in place")
        return {"done": True, "requeued": done, "errors": errors}
    if body.get("all") is not True:
        raise ActionError('give "ids" (with "queue"), or "all": true with optional filters')
    if not confirmed:
        return _ask("requeue", _matching(dead, queue, reason, task), _where(queue))
    count = dead.requeue_many(queue, reason=reason, task=task)
    return {"done": True, "requeued": count, "errors": []}


def purge(app: OmniTask, body: Mapping[str, Any]) -> dict[str, Any]:
    """Delete the dead letters that match ``queue``, ``reason`` and ``task`` (all: every one).

    Without ``"confirm": true``, only counts.

    Raises:
        ActionError: A filter is malformed.
    """
    dead = DeadLetters(app)
    queue, reason, task = _queue(app, body), _text(body, "reason"), _text(body, "task")
    if body.get("confirm") is not True:
        return _ask("delete", _matching(dead, queue, reason, task), _where(queue))
    return {"done": True, "deleted": dead.purge(queue, reason=reason, task=task)}


def _ask(verb: str, count: int, where: str) -> dict[str, Any]:
    return {
        "done": False,
        "count": count,
        "confirm": f"{verb.capitalize()} {count} dead letter(s) from {where}?",
        "hint": 'nothing was done: send the same request with "confirm": true',
    }
