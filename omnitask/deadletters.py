"""Dead letters: inspect, requeue and purge the messages that workers moved aside.

A worker moves a message it must not run, or a task that failed for good, to its queue's
dead-letter stream ``keys.queue(q).dead`` with the reason (``lua/bury.lua``, or the ack of a
final failure). :class:`DeadLetters` reads those streams, puts messages back on their queue
(``lua/revive.lua``) and deletes them; :func:`add_parser` and :func:`run` are the
``omnitask dlq`` command.
"""

from __future__ import annotations

import argparse
import base64
import builtins
import itertools
import json
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import cached_property
from typing import TYPE_CHECKING, Any

from omnitask.broker.keys import WAKE_TOKENS_MAX
from omnitask.broker.scripts import REVIVE
from omnitask.errors import MessageError
from omnitask.messages import Envelope, decode_envelope
from omnitask.serialization import decode_call, get_serializer

if TYPE_CHECKING:
    from omnitask.app import OmniTask

__all__ = ("DeadLetter", "DeadLetters", "add_parser", "run")

_STREAM_ID = re.compile(r"^\d+-\d+$")
# Entries per XRANGE page and ids per revive call: keeps replies and the Lua stack small.
_PAGE = 500


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def _order(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter: a message a worker moved aside, and why.

    Attributes:
        stream_id: Its entry id in the queue's dead-letter stream.
        queue: The queue it was taken from.
        time: When it was dead-lettered (UTC, millisecond precision; read from ``stream_id``).
        reason: Why, e.g. ``malformed``, ``unknown-task``, ``max-deliveries`` or ``failed``.
        detail: A sentence explaining the reason.
        task_id: The task id, when the message could be read.
        task_name: The task name, when the message could be read.
        worker: The worker child that moved it aside.
        message: The message, byte for byte as it was last queued.
        fields: Every other field the worker recorded (for ``failed``: ``attempts`` and
            ``traceback``).
    """

    stream_id: str
    queue: str
    time: datetime
    reason: str
    detail: str
    task_id: str | None
    task_name: str | None
    worker: str | None
    message: bytes = field(repr=False)
    fields: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_entry(cls, queue: str, entry_id: bytes, raw: dict[bytes, bytes]) -> DeadLetter:
        """Build a dead letter from a stream entry as redis-py returns it."""
        text = {k.decode(): v.decode(errors="replace") for k, v in raw.items() if k != b"msg"}
        stream_id = entry_id.decode()
        known = ("reason", "detail", "i", "n", "w")
        return cls(
            stream_id=stream_id,
            queue=queue,
            time=_utc(_order(stream_id)[0]),
            reason=text.get("reason", ""),
            detail=text.get("detail", ""),
            task_id=text.get("i") or None,
            task_name=text.get("n") or None,
            worker=text.get("w") or None,
            message=raw.get(b"msg", b""),
            fields={k: v for k, v in text.items() if k not in known},
        )

    @cached_property
    def envelope(self) -> Envelope | None:
        """The decoded message, or None when it is not a valid envelope (it cannot be requeued)."""
        try:
            return decode_envelope(self.message)
        except MessageError:
            return None

    def as_dict(self) -> dict[str, Any]:
        """The dead letter as a JSON-ready dict (time in ISO 8601, the message in base64)."""
        return {
            "queue": self.queue,
            "id": self.stream_id,
            "time": self.time.isoformat(),
            "reason": self.reason,
            "detail": self.detail,
            "task_id": self.task_id,
            "task": self.task_name,
            "worker": self.worker,
            **self.fields,
            "message_base64": base64.b64encode(self.message).decode(),
        }


class DeadLetters:
    """Inspect, requeue and purge the dead letters of an app: ``DeadLetters(app)``.

    ``queue=None`` means every queue of the app (every queue a task was sent to) that holds
    dead letters.
    """

    def __init__(self, app: OmniTask) -> None:
        """Work on the dead letters of ``app``."""
        self._app = app

    def _lengths(self) -> dict[str, int]:
        redis = self._app.broker.redis
        members: Any = redis.smembers(self._app.keys.queues)
        names = sorted(m.decode() for m in members)
        pipe = redis.pipeline(transaction=False)
        for name in names:
            pipe.xlen(self._app.keys.queue(name).dead)
        return {n: int(length) for n, length in zip(names, pipe.execute(), strict=True) if length}

    def queues(self) -> builtins.list[str]:
        """The names of the app's queues that hold dead letters, sorted."""
        return builtins.list(self._lengths())

    def _names(self, queue: str | None) -> builtins.list[str]:
        return self.queues() if queue is None else [self._app.keys.queue(queue).name]

    def count(self, queue: str | None = None) -> int:
        """How many dead letters ``queue`` holds (default: every queue)."""
        if queue is None:
            return sum(self._lengths().values())
        return int(self._app.broker.redis.xlen(self._app.keys.queue(queue).dead))

    def _scan(
        self, queue: str, reason: str | None, task: str | None, *, newest_first: bool = False
    ) -> Iterator[DeadLetter]:
        redis = self._app.broker.redis
        key = self._app.keys.queue(queue).dead
        bound = "+" if newest_first else "-"
        while True:
            page: Any = (
                redis.xrevrange(key, max=bound, count=_PAGE)
                if newest_first
                else redis.xrange(key, min=bound, count=_PAGE)
            )
            for entry_id, raw in page:
                letter = DeadLetter.from_entry(queue, entry_id, raw)
                if reason in (None, letter.reason) and task in (None, letter.task_name):
                    yield letter
            if len(page) < _PAGE:
                return
            bound = "(" + page[-1][0].decode()  # exclusive: after the last entry read

    def list(
        self,
        queue: str | None = None,
        *,
        reason: str | None = None,
        task: str | None = None,
        limit: int = 100,
    ) -> builtins.list[DeadLetter]:
        """Dead letters, newest first.

        Args:
            queue: Only this queue's (default: every queue's).
            reason: Only those dead-lettered for this reason.
            task: Only messages of the task with this name.
            limit: At most this many.
        """
        found: builtins.list[DeadLetter] = []
        for name in self._names(queue):
            found += itertools.islice(self._scan(name, reason, task, newest_first=True), limit)
        found.sort(key=lambda letter: _order(letter.stream_id), reverse=True)
        return found[:limit]

    def get(self, queue: str, stream_id: str) -> DeadLetter | None:
        """The dead letter ``stream_id`` of ``queue``, or None when there is none."""
        if not _STREAM_ID.match(stream_id):
            return None
        key = self._app.keys.queue(queue).dead
        entries: Any = self._app.broker.redis.xrange(key, stream_id, stream_id)
        return DeadLetter.from_entry(queue, *entries[0]) if entries else None

    def _revive(self, queue: str, stream_ids: Sequence[str]) -> builtins.list[int]:
        qk = self._app.keys.queue(queue)
        keys = [qk.dead, qk.deliveries, qk.wake, *qk.ready]
        reply = self._app.broker._eval(REVIVE, keys, [WAKE_TOKENS_MAX, *stream_ids])
        return [int(code) for code in reply]

    def requeue(self, queue: str, stream_id: str) -> bool:
        """Put one dead letter back at the end of its queue, to run again.

        In one atomic step the message goes to the tail of its priority's ready list, exactly
        as it was (same task id, arguments and retry count), its delivery count is reset so it
        has a fresh ``max_deliveries`` budget, and its dead letter is deleted. Its result
        record is left alone until the new run replaces it, so ``AsyncResult.get()`` may still
        return the FAILURE recorded when it was dead-lettered.

        Returns:
            True when it was requeued; False when ``queue`` has no dead letter ``stream_id``.

        Raises:
            MessageError: The message is not a valid envelope, so no worker could run it. It
                is left in place (delete it with :meth:`purge`).
        """
        letter = self.get(queue, stream_id)
        if letter is None:
            return False
        # The script checks the header again: it is what decides, atomically.
        code = -1 if letter.envelope is None else self._revive(queue, [stream_id])[0]
        if code < 0:
            raise MessageError(f"dead letter {stream_id} is not a valid omnitask message")
        return code == 1

    def requeue_many(
        self, queue: str | None = None, *, reason: str | None = None, task: str | None = None
    ) -> int:
        """Requeue every dead letter that matches, oldest first (all of them without a filter).

        Each is requeued as by :meth:`requeue`; messages that are not valid envelopes are
        skipped and left in place. Returns how many were requeued.
        """
        total = 0
        for name in self._names(queue):
            # Collect first: one that a worker buries again meanwhile must not be found again.
            ids = [d.stream_id for d in self._scan(name, reason, task) if d.envelope is not None]
            for start in range(0, len(ids), _PAGE):
                codes = self._revive(name, ids[start : start + _PAGE])
                total += sum(1 for code in codes if code == 1)
        return total

    def purge(
        self, queue: str | None = None, *, reason: str | None = None, task: str | None = None
    ) -> int:
        """Delete the dead letters that match (all of them without a filter); return how many."""
        total = 0
        for name in self._names(queue):
            key = self._app.keys.queue(name).dead
            if reason is None and task is None:
                # One MULTI, so the count is exactly what was deleted.
                total += int(self._app.broker.run([("XLEN", key), ("DEL", key)])[0])
                continue
            ids = [d.stream_id for d in self._scan(name, reason, task)]
            for start in range(0, len(ids), _PAGE):
                total += int(self._app.broker.redis.xdel(key, *ids[start : start + _PAGE]))
        return total

    def trim_older_than(self, queue: str, age_s: float | timedelta) -> int:
        """Delete ``queue``'s dead letters older than ``age_s`` seconds; return how many.

        This bounds dead letters by age, on the Redis server's clock (which stamped them).
        Their number is bounded when they are written: each queue keeps about
        ``dead_letter_maxlen`` of them, dropping the oldest.

        Raises:
            ValueError: ``age_s`` is negative.
        """
        seconds = age_s.total_seconds() if isinstance(age_s, timedelta) else float(age_s)
        if seconds < 0:
            raise ValueError(f"age_s must not be negative, got {seconds}")
        redis = self._app.broker.redis
        now: Any = redis.time()
        cutoff_ms = max(0, int(now[0]) * 1000 + int(now[1]) // 1000 - int(seconds * 1000))
        key = self._app.keys.queue(queue).dead
        return int(redis.xtrim(key, minid=f"{cutoff_ms}-0", approximate=False))


# -- the ``omnitask dlq`` command ---------------------------------------------------------------


class _CommandError(Exception):
    """A dlq command could not do what was asked; ``usage``: the command line was wrong."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


def add_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add the ``dlq`` command and its subcommands to ``omnitask``'s subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-A", "--app", required=True, help="the app: module or module:attribute")
    dlq = subparsers.add_parser(
        "dlq", help="inspect, requeue and purge dead letters", description="Manage dead letters."
    )
    dlq.set_defaults(loglevel="warning")
    sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=text, description=f"{text}.")

    def filters(parser: argparse.ArgumentParser, queue_help: str) -> None:
        parser.add_argument("-Q", "--queue", help=queue_help)
        parser.add_argument("--reason", help="only those dead-lettered for this reason")
        parser.add_argument("--task", help="only messages of the task with this name")

    listing = command("list", "List dead letters, newest first")
    filters(listing, "only this queue (default: every queue)")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    listing.add_argument("--json", action="store_true", help="print one JSON document")
    show = command("show", "Show one dead letter and its decoded message")
    show.add_argument("queue", help="its queue")
    show.add_argument("id", help="its id (from 'dlq list')")
    show.add_argument("--json", action="store_true", help="print one JSON document")
    requeue = command("requeue", "Put dead letters back on their queue to run again")
    filters(requeue, "the queue (default: every queue; the default queue for IDs)")
    requeue.add_argument("ids", nargs="*", metavar="ID", help="ids of the dead letters")
    requeue.add_argument("--all", action="store_true", help="every dead letter")
    purge = command("purge", "Delete dead letters")
    filters(purge, "only this queue (default: every queue)")
    purge.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
    count = command("count", "Print how many dead letters there are")
    count.add_argument("-Q", "--queue", help="only this queue (default: every queue)")
    return dlq


def run(app: OmniTask, args: argparse.Namespace) -> int:
    """Run the ``dlq`` subcommand that :func:`add_parser` parsed; return the exit code."""
    from omnitask.cli import ExitCode  # here, not at the top: cli.py imports this module

    try:
        _COMMANDS[args.dlq_command](DeadLetters(app), app, args)
    except _CommandError as exc:
        print(f"omnitask: error: {exc}", file=sys.stderr)  # noqa: T201
        return ExitCode.USAGE if exc.usage else ExitCode.ERROR
    return ExitCode.OK


def _out(text: str) -> None:
    print(text, flush=True)  # noqa: T201


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)
    title = "  ".join(c.ljust(w) for c, w in zip(header, widths, strict=True))
    return "\n".join(line.rstrip() for line in (title, *lines))


def _list(dead: DeadLetters, app: OmniTask, args: argparse.Namespace) -> None:
    letters = dead.list(args.queue, reason=args.reason, task=args.task, limit=args.limit)
    if args.json:
        _out(json.dumps([letter.as_dict() for letter in letters]))
        return
    if not letters:
        _out("no dead letters")
        return
    header = ("QUEUE", "ID", "TIME", "REASON", "TASK", "TASK ID", "DETAIL")
    rows = [
        (
            d.queue,
            d.stream_id,
            d.time.isoformat(timespec="seconds"),
            d.reason,
            d.task_name or "-",
            d.task_id or "-",
            d.detail if len(d.detail) <= 60 else d.detail[:57] + "...",
        )
        for d in letters
    ]
    _out(_table(header, rows))


def _serializer_name(code: int) -> str:
    try:
        return get_serializer(code).name
    except ValueError:
        return f"unknown (code {code})"


def _arguments(envelope: Envelope) -> tuple[str, str]:
    """``args`` and ``kwargs`` as reprs, or a note saying why they are not shown."""
    try:
        serializer = get_serializer(envelope.serializer)
    except ValueError:
        note = f"<unknown serializer code {envelope.serializer}>"
        return note, note
    if serializer.name != "msgpack":
        # Unpickling runs code, and a refused payload is exactly what must not run.
        note = f"<{len(envelope.payload)} bytes of {serializer.name}, not decoded>"
        return note, note
    try:
        args, kwargs = decode_call(serializer, envelope.payload)
    except Exception as exc:  # noqa: BLE001 - a dead letter may hold anything
        note = f"<cannot decode: {type(exc).__name__}: {exc}>"
        return note, note
    return repr(args), repr(kwargs)


def _describe(envelope: Envelope) -> dict[str, Any]:
    args, kwargs = _arguments(envelope)
    when = {"eta": envelope.eta_ms, "expires": envelope.expires_ms}
    return {
        "task": envelope.task,
        "id": envelope.id,
        "args": args,
        "kwargs": kwargs,
        "priority": envelope.priority,
        "retries": envelope.retries,
        "sent": _utc(envelope.sent_ms).isoformat(),
        **{k: _utc(ms).isoformat() for k, ms in when.items() if ms is not None},
        "serializer": _serializer_name(envelope.serializer),
    }


def _field(key: str, value: object, indent: str = "") -> str:
    text = str(value)
    if "\n" in text:  # a traceback: under its name, indented
        return f"{indent}{key}:\n" + "\n".join(f"{indent}  {line}" for line in text.splitlines())
    return f"{indent}{key + ':':<11} {text}"


def _show(dead: DeadLetters, app: OmniTask, args: argparse.Namespace) -> None:
    letter = dead.get(args.queue, args.id)
    if letter is None:
        raise _CommandError(f"queue {args.queue!r} has no dead letter {args.id!r}")
    data = letter.as_dict()
    envelope = None if letter.envelope is None else _describe(letter.envelope)
    if args.json:
        _out(json.dumps({**data, "envelope": envelope}))
        return
    del data["message_base64"]
    data["message"] = f"{len(letter.message)} bytes"
    if envelope is None:
        data["message"] += f": {letter.message[:200]!r} (not a valid message: cannot requeue)"
    lines = [_field(key, value) for key, value in data.items() if value is not None]
    if envelope is not None:
        lines += ["envelope:", *(_field(key, value, "  ") for key, value in envelope.items())]
    _out("\n".join(lines))


def _requeue(dead: DeadLetters, app: OmniTask, args: argparse.Namespace) -> None:
    filtered = args.reason is not None or args.task is not None
    if [bool(args.ids), args.all, filtered].count(True) != 1:
        raise _CommandError("give dead-letter IDs, --all, or --reason/--task", usage=True)
    if not args.ids:
        count = dead.requeue_many(args.queue, reason=args.reason, task=args.task)
        _out(f"requeued {count} dead letter(s)")
        return
    queue = args.queue or app.conf.default_queue
    errors = []
    for stream_id in args.ids:
        try:
            if not dead.requeue(queue, stream_id):
                errors.append(f"queue {queue!r} has no dead letter {stream_id!r}")
                continue
        except MessageError as exc:
            errors.append(f"{exc}; it was left in place")
            continue
        _out(f"requeued {stream_id}")
    if errors:
        raise _CommandError("; ".join(errors))


def _purge(dead: DeadLetters, app: OmniTask, args: argparse.Namespace) -> None:
    if not args.force:
        if not sys.stdin.isatty():
            raise _CommandError("not deleting without --force: standard input is not a terminal")
        if args.reason is None and args.task is None:
            count = dead.count(args.queue)
        else:
            matching = dead.list(args.queue, reason=args.reason, task=args.task, limit=sys.maxsize)
            count = len(matching)
        where = f"queue {args.queue!r}" if args.queue else "every queue"
        answer = input(f"Delete {count} dead letter(s) from {where}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            _out("nothing deleted")
            return
    count = dead.purge(args.queue, reason=args.reason, task=args.task)
    _out(f"deleted {count} dead letter(s)")


def _count(dead: DeadLetters, app: OmniTask, args: argparse.Namespace) -> None:
    _out(str(dead.count(args.queue)))


_COMMANDS: dict[str, Callable[[DeadLetters, OmniTask, argparse.Namespace], None]] = {
    "list": _list,
    "show": _show,
    "requeue": _requeue,
    "purge": _purge,
    "count": _count,
}
