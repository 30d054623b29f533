"""The ``omnitask beat`` command: run a beat, or list, add and remove periodic schedules.

``omnitask beat -A app`` runs a beat (:class:`~omnitask.beat.Beat`); ``omnitask beat list``,
``add`` and ``remove`` change the schedules stored in Redis, which running beats pick up
(:class:`~omnitask.periodic.Schedules`). ``omnitask worker -B`` runs a beat beside a worker,
in a child process (:func:`start_embedded`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import sys
from collections.abc import Callable
from datetime import datetime
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from omnitask.config import MISSED_POLICIES
from omnitask.loader import load_app

if TYPE_CHECKING:
    from omnitask.app import OmniTask
    from omnitask.periodic import ScheduleState

__all__ = ("add_parser", "run", "start_embedded", "stop_embedded")

STOP_TIMEOUT_S = 10.0
"""How long ``worker -B`` waits for its beat to stop before killing it."""

_APP_HELP = "the app: module or module:attribute"


class _CommandError(Exception):
    """A beat command could not do what was asked; ``usage``: the command line was wrong."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


def add_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add the ``beat`` command and its ``list``, ``add`` and ``remove`` subcommands."""
    beat = subparsers.add_parser(
        "beat",
        help="run the periodic task scheduler, or manage its schedules",
        description="Run a beat: it sends periodic tasks when they are due. Several may run; "
        "one leads. With a subcommand, list, add or remove schedules instead.",
    )
    # -A is accepted before or after a subcommand, so it cannot be required by argparse.
    beat.add_argument("-A", "--app", help=_APP_HELP)
    beat.add_argument(
        "--lease", type=float, metavar="S", help="seconds of the leader lease (default: 10)"
    )
    beat.add_argument(
        "-l",
        "--loglevel",
        default="info",
        choices=["debug", "info", "warning", "error", "critical"],
        type=str.lower,
        help="log level (default: info)",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-A", "--app", default=argparse.SUPPRESS, help=_APP_HELP)
    common.set_defaults(loglevel="warning")
    sub = beat.add_subparsers(dest="beat_command", metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=text, description=f"{text}.")

    listing = command("list", "List the periodic schedules stored in Redis")
    listing.add_argument("--json", action="store_true", help="print one JSON document")
    add = command("add", "Add or replace a periodic schedule; running beats pick it up")
    add.add_argument("name", help="the schedule's name")
    add.add_argument("task", help="the name of the task to send")
    when = add.add_mutually_exclusive_group(required=True)
    when.add_argument("--every", type=float, metavar="S", help="every S seconds")
    when.add_argument("--cron", metavar="EXPR", help="a cron expression, e.g. '*/5 * * * *'")
    add.add_argument("--tz", help="the cron expression's time zone (default: UTC)")
    add.add_argument("--args", default="[]", help="positional arguments, a JSON list")
    add.add_argument("--kwargs", default="{}", help="keyword arguments, a JSON object")
    add.add_argument("-Q", "--queue", help="queue of each run (default: the task's)")
    add.add_argument("--priority", type=int, help="priority of each run, 0-9")
    add.add_argument("--expires", type=float, metavar="S", help="revoke a run not started in S s")
    add.add_argument("--missed", choices=MISSED_POLICIES, help="policy for missed runs")
    remove = command("remove", "Remove a periodic schedule")
    remove.add_argument("name", help="the schedule's name")
    return beat


def run(args: argparse.Namespace) -> int:
    """Run the ``beat`` command :func:`add_parser` parsed; return the exit code.

    It loads the app itself: ``-A`` may come before or after a subcommand.
    """
    from omnitask.cli import ExitCode  # here, not at the top: cli.py imports this module

    if args.app is None:
        print("omnitask beat: error: the -A/--app option is required", file=sys.stderr)  # noqa: T201
        return ExitCode.USAGE
    app = load_app(args.app)
    if args.beat_command is None:
        return _run_beat(app, args.lease)
    try:
        _COMMANDS[args.beat_command](app, args)
    except _CommandError as exc:
        print(f"omnitask: error: {exc}", file=sys.stderr)  # noqa: T201
        return ExitCode.USAGE if exc.usage else ExitCode.ERROR
    return ExitCode.OK


def _run_beat(app: OmniTask, lease_s: float | None) -> int:
    from omnitask.beat import Beat

    if lease_s is not None:
        app.configure(beat_lease_s=lease_s)
    app.import_includes()
    return Beat(app).run()


# -- worker -B ----------------------------------------------------------------------------------


def start_embedded(app: OmniTask) -> BaseProcess:
    """Start a beat in a child process beside a worker (``omnitask worker -B``).

    A process, not a thread: the worker forks its children, and forking a process in which
    another thread may hold a lock (a connection pool's, logging's) can deadlock the child.
    The beat stops by itself if the worker dies without stopping it.
    """
    ctx = multiprocessing.get_context("fork")
    process = ctx.Process(
        target=_embedded_main, args=(app, os.getpid()), name="omnitask-beat", daemon=False
    )
    process.start()
    return process


def _embedded_main(app: OmniTask, parent_pid: int) -> None:
    from omnitask.beat import Beat

    app.after_fork()  # the worker's connections stay the worker's
    app.import_includes()
    Beat(app, parent_pid=parent_pid).run()


def stop_embedded(process: BaseProcess | None) -> None:
    """Stop the beat :func:`start_embedded` started (warmly: it gives up its lease)."""
    if process is None:
        return
    if process.is_alive():
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        process.join(STOP_TIMEOUT_S)
        if process.is_alive():
            process.kill()
            process.join()


# -- list, add, remove --------------------------------------------------------------------------


def _out(text: str) -> None:
    print(text, flush=True)  # noqa: T201


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000).astimezone().isoformat(timespec="seconds")


def _as_dict(state: ScheduleState) -> dict[str, Any]:
    entry = state.entry
    return {
        "name": entry.name,
        "task": entry.task,
        "schedule": entry.schedule.describe(),
        "args": list(entry.args),
        "kwargs": entry.kwargs,
        "queue": entry.queue,
        "priority": entry.priority,
        "expires_s": entry.expires_s,
        "missed": entry.missed,
        "origin": entry.origin,
        "last_ms": state.last_ms,
        "next_ms": state.next_ms,
    }


def _list(app: OmniTask, args: argparse.Namespace) -> None:
    states = app.schedules.list()
    if args.json:
        _out(json.dumps([_as_dict(s) for s in states], default=str))
        return
    if not states:
        _out("no periodic schedules")
        return
    header = ("NAME", "TASK", "SCHEDULE", "ORIGIN", "MISSED", "LAST", "NEXT")
    rows = [
        (
            s.entry.name,
            s.entry.task,
            s.entry.schedule.describe(),
            s.entry.origin,
            s.entry.missed or app.conf.beat_missed,
            _when(s.last_ms),
            _when(s.next_ms),
        )
        for s in states
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        _out("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _json_arg(option: str, text: str, kind: type) -> Any:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise _CommandError(f"{option} is not valid JSON: {exc}", usage=True) from exc
    if not isinstance(value, kind):
        raise _CommandError(f"{option} must be a JSON {kind.__name__}", usage=True)
    return value


def _add(app: OmniTask, args: argparse.Namespace) -> None:
    schedule = args.cron if args.cron is not None else args.every
    entry = app.schedules.add(
        args.name,
        args.task,
        schedule,
        args=_json_arg("--args", args.args, list),
        kwargs=_json_arg("--kwargs", args.kwargs, dict),
        queue=args.queue,
        priority=args.priority,
        expires=args.expires,
        missed=args.missed,
        tz=args.tz,
    )
    _out(f"schedule {entry.name}: {entry.task} {entry.schedule.describe()}")


def _remove(app: OmniTask, args: argparse.Namespace) -> None:
    if not app.schedules.remove(args.name):
        raise _CommandError(f"no periodic schedule named {args.name!r}")
    _out(f"removed {args.name}")


_COMMANDS: dict[str, Callable[[OmniTask, argparse.Namespace], None]] = {
    "list": _list,
    "add": _add,
    "remove": _remove,
}
