"""A task's exception, turned into fields of a result record and rebuilt from them."""

from __future__ import annotations

import importlib
import logging
import traceback as tb

from omnitask.errors import TaskFailed
from omnitask.messages import ResultRecord, now_ms
from omnitask.serialization import Serializer, get_serializer

__all__ = ("describe", "rebuild", "type_name")

logger = logging.getLogger(__name__)


def type_name(exc: BaseException) -> str:
    """The importable name of an exception's type, ``module:qualname``."""
    cls = type(exc)
    return f"{cls.__module__}:{cls.__qualname__}"


def describe(exc: BaseException, serializer: Serializer) -> tuple[str, str, bytes | None, str]:
    """Return the type name, message, encoded args (None if not encodable) and traceback."""
    try:
        args: bytes | None = serializer.encode(list(exc.args))
    except Exception:  # noqa: BLE001 - any encoder failure just means "not rebuildable"
        args = None
    text = "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
    return type_name(exc), str(exc), args, text


def error_record(
    state: str,
    task_name: str,
    serializer: Serializer,
    exc: BaseException,
    *,
    retries: int,
    runtime_s: float | None,
    worker: str,
) -> ResultRecord:
    """The FAILURE or RETRY record of ``exc``, raised by a run of ``task_name``."""
    name, message, exc_args, trace = describe(exc, serializer)
    return ResultRecord(
        state,
        now_ms(),
        task_name,
        serializer=serializer.code,
        exc_type=name,
        exc_message=message,
        exc_args=exc_args,
        traceback=trace,
        worker=worker,
        runtime_s=runtime_s,
        retries=retries,
    )


def rebuild(
    name: str, message: str, args: bytes | None, serializer_code: int, traceback: str | None
) -> Exception:
    """Rebuild a remote exception as its own type, or as :class:`TaskFailed` when it cannot be.

    Only subclasses of :class:`Exception` are rebuilt (never ``SystemExit`` and the like, which
    would stop the caller's process), and only by calling the class with the remote ``args``.
    """
    exc = _rebuild(name, args, serializer_code)
    if exc is None:
        return TaskFailed(name.replace(":", "."), message, traceback)
    add_note = getattr(exc, "add_note", None)  # Python 3.11+
    if traceback and add_note is not None:
        add_note(f"Remote traceback (omnitask worker):\n{traceback}")
    return exc


def _rebuild(name: str, args: bytes | None, serializer_code: int) -> Exception | None:
    module_name, _, qualname = name.partition(":")
    if args is None or not qualname:
        return None
    try:
        obj: object = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        if not (isinstance(obj, type) and issubclass(obj, Exception)):
            return None
        values = get_serializer(serializer_code).decode(args)
        exc = obj(*values)
    except Exception:
        logger.debug("cannot rebuild exception type=%s", name, exc_info=True)
        return None
    return exc
