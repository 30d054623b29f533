"""The ``omnitask dlq`` command: list, show, requeue, purge and count dead letters."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from omnitask.deadletters import DeadLetters
from omnitask.errors import MessageError
from omnitask.messages import Envelope, ms_to_datetime
from omnitask.serialization import decode_call, get_serializer

if TYPE_CHECKING:
    from omnitask.app import OmniTask

__all__ = ("add_parser", "run")


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
        "sent": ms_to_datetime(envelope.sent_ms).isoformat(),
        **{k: ms_to_datetime(ms).isoformat() for k, ms in when.items() if ms is not None},
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
