"""The ``inspect``, ``control``, ``purge``, ``status`` and ``health`` commands.

They print aligned tables, or JSON with ``--json``; the work is done by
:class:`~omnitask.inspect.Inspector` and :class:`~omnitask.control.Control`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from omnitask.broker.client import Broker
from omnitask.config import mask_url
from omnitask.control import Control, ControlResult, WorkerStatus
from omnitask.inspect import ClaimedTask, Inspector
from omnitask.messages import now_ms

if TYPE_CHECKING:
    from omnitask.app import OmniTask

__all__ = ("COMMANDS", "add_parser", "ago", "duration", "run", "table")

COMMANDS = frozenset({"inspect", "control", "purge", "status", "health"})
"""The ``omnitask`` subcommands this module adds."""

VIEWS = ("active", "scheduled", "reserved", "registered", "stats", "queues")


class _CommandError(Exception):
    """The command could not do what was asked; ``usage``: the command line was wrong."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


# -- formatting (pure) ------------------------------------------------------------------------


def duration(seconds: float) -> str:
    """A short human duration: ``0.4s``, ``42s``, ``3m05s``, ``2h03m``, ``4d02h``."""
    seconds = max(seconds, 0.0)
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def ago(ms: int | None, now: int) -> str:
    """How long before ``now`` the unix time ``ms`` was (``-`` for None)."""
    return "-" if ms is None else f"{duration((now - ms) / 1000)} ago"


def until(ms: int, now: int) -> str:
    """When the unix time ``ms`` comes, relative to ``now``: ``in 4m02s`` or ``due 1.2s ago``."""
    return f"in {duration((ms - now) / 1000)}" if ms > now else f"due {ago(ms, now)}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns aligned on their widest cell, two spaces apart, no trailing spaces."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)
    title = "  ".join(c.ljust(w) for c, w in zip(header, widths, strict=True))
    return "\n".join(line.rstrip() for line in (title, *lines))


def by_priority(ready: Sequence[int]) -> str:
    """Non-empty priorities, highest first: ``9:3 5:120`` (``-`` when all are empty)."""
    cells = [f"{p}:{n}" for p, n in reversed(list(enumerate(ready))) if n]
    return " ".join(cells) or "-"


def _local(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000).astimezone().isoformat(timespec="seconds")


def _out(text: str) -> None:
    print(text, flush=True)  # noqa: T201


def _json(data: object) -> None:
    _out(json.dumps(data))


# -- parsers ----------------------------------------------------------------------------------


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``inspect``, ``control``, ``purge``, ``status`` and ``health`` commands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-A", "--app", required=True, help="the app: module or module:attribute")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    common.set_defaults(loglevel="warning")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return subparsers.add_parser(name, parents=[common], help=text, description=f"{text}.")

    inspect = command("inspect", "Show what workers run and what queues hold")
    inspect.add_argument("view", choices=VIEWS, help="what to show")
    inspect.add_argument(
        "--limit", type=_positive, default=100, help="scheduled: at most this many (default 100)"
    )

    # Options before the command, as in ``omnitask control -A app revoke ID``.
    control = subparsers.add_parser(
        "control",
        parents=[common],
        help="control workers and queues",
        description="Control workers and queues.",
    )
    control.add_argument(
        "--timeout", type=float, help="seconds to wait for workers' replies (or for --terminate)"
    )
    sub = control.add_subparsers(dest="control_command", required=True, metavar="COMMAND")
    # ... and after it too; SUPPRESS keeps an option given before from being reset.
    late = argparse.ArgumentParser(add_help=False)
    late.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    late.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help="as above")

    def action(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[late], help=text, description=f"{text}.")

    revoke = action("revoke", "Revoke tasks: they never run")
    revoke.add_argument("ids", nargs="+", metavar="ID", help="task ids")
    revoke.add_argument("--terminate", action="store_true", help="also stop them if running")
    shutdown = action("shutdown", "Warm shutdown of a worker (default: of every worker)")
    shutdown.add_argument("worker", nargs="?", help="worker name (see 'omnitask status')")
    for verb, text in (("grow", "Start N more child processes"), ("shrink", "Stop N children")):
        pool = action(f"pool-{verb}", text)
        pool.add_argument("n", type=_positive, metavar="N", help="how many processes")
        pool.add_argument("worker", nargs="?", help="worker name (default: every worker)")
    action("pause-queue", "Stop workers from taking tasks from a queue").add_argument(
        "queue", help="queue name"
    )
    action("resume-queue", "Let workers take tasks from a paused queue again").add_argument(
        "queue", help="queue name"
    )

    purge = command("purge", "Delete a queue's ready and delayed tasks (not running ones)")
    purge.add_argument("-Q", "--queue", required=True, help="queue name")
    purge.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")

    command("status", "One line per worker: alive, pid, processes, queues, heartbeat")

    health = command("health", "Exit 0 if Redis answers (and a worker's heartbeat is fresh)")
    health.add_argument("--worker", help="also require this worker's heartbeat to be fresh")
    health.add_argument(
        "--max-age",
        type=float,
        metavar="SECONDS",
        help="oldest acceptable heartbeat (default: 3 heartbeat intervals)",
    )


def run(app: OmniTask, args: argparse.Namespace) -> int:
    """Run the command :func:`add_parser` parsed; return the exit code."""
    from omnitask.cli import ExitCode  # here, not at the top: cli.py imports this module

    try:
        if args.command == "health":
            return _health(app, args)
        handlers: dict[str, Callable[[OmniTask, argparse.Namespace], int | None]] = {
            "inspect": _inspect,
            "control": _control,
            "purge": _purge,
            "status": _status,
        }
        return handlers[args.command](app, args) or ExitCode.OK
    except _CommandError as exc:
        print(f"omnitask: error: {exc}", file=sys.stderr)  # noqa: T201
        return ExitCode.USAGE if exc.usage else ExitCode.ERROR
    except RedisError as exc:
        url = mask_url(app.conf.broker_url)
        print(f"omnitask: error: Redis at {url}: {exc}", file=sys.stderr)  # noqa: T201
        return ExitCode.ERROR


# -- inspect ----------------------------------------------------------------------------------


def _inspect(app: OmniTask, args: argparse.Namespace) -> None:
    # Tasks from include= tell async from sync, which splits active from reserved.
    app.import_includes()
    inspector = Inspector(app)
    views: dict[str, Callable[[Inspector, argparse.Namespace], None]] = {
        "active": _active,
        "reserved": _reserved,
        "scheduled": _scheduled,
        "registered": _registered,
        "stats": _stats,
        "queues": _queues,
    }
    views[args.view](inspector, args)


def _claimed_rows(tasks: Sequence[ClaimedTask], *, started: bool) -> list[list[str]]:
    now = now_ms()
    rows = []
    for t in tasks:
        start = [ago(t.started_ms, now)] if started else []
        rows.append([t.worker, t.queue, t.task_id, t.name, *start, ago(t.sent_ms, now)])
    return rows


def _active(inspector: Inspector, args: argparse.Namespace) -> None:
    tasks = inspector.active()
    if args.json:
        _json([t.as_dict() for t in tasks])
    elif not tasks:
        _out("no active tasks")
    else:
        header = ("WORKER", "QUEUE", "TASK ID", "NAME", "STARTED", "SENT")
        _out(table(header, _claimed_rows(tasks, started=True)))


def _reserved(inspector: Inspector, args: argparse.Namespace) -> None:
    tasks = inspector.reserved()
    if args.json:
        _json([t.as_dict() for t in tasks])
    elif not tasks:
        _out("no reserved tasks")
    else:
        rows = _claimed_rows(tasks, started=False)
        _out(table(("WORKER", "QUEUE", "TASK ID", "NAME", "SENT"), rows))


def _scheduled(inspector: Inspector, args: argparse.Namespace) -> None:
    tasks, total = inspector.scheduled(limit=args.limit)
    if args.json:
        _json({"total": total, "tasks": [t.as_dict() for t in tasks]})
        return
    if not tasks:
        _out("no scheduled tasks")
        return
    now = now_ms()
    rows = [
        [_local(t.due_ms), until(t.due_ms, now), t.queue, t.task_id, t.name, str(t.retries)]
        for t in tasks
    ]
    _out(table(("DUE", "WHEN", "QUEUE", "TASK ID", "NAME", "RETRIES"), rows))
    if total > len(tasks):
        _out(f"({len(tasks)} of {total} shown, soonest first; see --limit)")


def _registered(inspector: Inspector, args: argparse.Namespace) -> None:
    registered = inspector.registered()
    if args.json:
        _json(registered)
        return
    if not registered:
        raise _CommandError("no live workers")
    for worker, names in registered.items():
        # As in the worker's banner: omnitask's own tasks (workflow steps) only in --json.
        names = [name for name in names if not name.startswith("omnitask.")]
        _out(f"{worker} ({len(names)} tasks)")
        for name in names:
            _out(f"  {name}")


def _stats(inspector: Inspector, args: argparse.Namespace) -> None:
    workers = inspector.workers()
    counts = inspector.event_counts()
    if args.json:
        window = {"since_ms": counts.since_ms, "events": counts.events}
        _json(
            {
                "workers": [{**w.as_dict(), **counts.of(w.name)} for w in workers],
                "counted_over": window,
            }
        )
        return
    if not workers:
        raise _CommandError("no live workers")
    now = now_ms()
    header = ["WORKER", "PID", "PROCS", "QUEUES", "UPTIME", "HEARTBEAT", "SPAWNED"]
    header += ["SUCCEEDED", "FAILED", "RETRIED"]
    rows = []
    for w in workers:
        tally = counts.of(w.name)
        rows.append(
            [
                w.name,
                str(w.pid),
                f"{w.processes}/{w.concurrency}",
                ",".join(w.queues),
                duration((now - w.started_ms) / 1000),
                ago(w.heartbeat_ms, now),
                str(w.spawned),
                *(str(tally[k]) for k in ("succeeded", "failed", "retried")),
            ]
        )
    _out(table(header, rows))
    since = "-" if counts.since_ms is None else _local(counts.since_ms)
    _out(
        "PROCS: child processes alive/wanted; SPAWNED: child processes started in all.\n"
        f"Task counts: over the {counts.events} events the stream holds (since {since})."
    )


def _queues(inspector: Inspector, args: argparse.Namespace) -> None:
    stats = inspector.queues()
    if args.json:
        _json([q.as_dict() for q in stats])
        return
    if not stats:
        _out("no queues")
        return
    now = now_ms()
    header = ("QUEUE", "READY", "BY PRIORITY", "DELAYED", "IN FLIGHT", "CONSUMERS", "DEAD")
    rows = [
        [
            q.name,
            str(q.ready_total),
            by_priority(q.ready),
            str(q.delayed),
            str(q.in_flight),
            str(q.consumers),
            str(q.dead),
            ago(q.oldest_ms, now),
            "paused" if q.paused else "",
        ]
        for q in stats
    ]
    _out(table((*header, "OLDEST", "STATE"), rows))


# -- control and purge ------------------------------------------------------------------------


def _control(app: OmniTask, args: argparse.Namespace) -> int | None:
    control = Control(app)
    which = args.control_command
    if which == "revoke":
        return _revoke(app, control, args)
    if which in ("pause-queue", "resume-queue"):
        pausing = which == "pause-queue"
        changed = control.pause_queue(args.queue) if pausing else control.resume_queue(args.queue)
        state = "paused" if pausing else "resumed"
        if args.json:
            _json({"queue": args.queue, "state": state, "changed": changed})
        elif changed:
            _out(f"{state} queue {args.queue!r}")
        else:
            _out(f"queue {args.queue!r} was {'paused' if pausing else 'not paused'} already")
        return None
    if which == "shutdown":
        result = control.shutdown(args.worker, timeout_s=args.timeout)
    elif which == "pool-grow":
        result = control.pool_grow(args.n, args.worker, timeout_s=args.timeout)
    else:
        result = control.pool_shrink(args.n, args.worker, timeout_s=args.timeout)
    return _report(result, args, control.default_timeout_s())


def _report(result: ControlResult, args: argparse.Namespace, default_timeout_s: float) -> int:
    if args.json:
        _json(
            {
                "ok": result.ok,
                "replies": [r.as_dict() for r in result.replies],
                "no_reply": result.silent,
                "unknown": result.unknown,
            }
        )
    elif result.replies:
        rows = [[r.worker, "ok" if r.ok else "refused", r.detail] for r in result.replies]
        _out(table(("WORKER", "RESULT", "DETAIL"), rows))
    if not args.json:
        timeout = default_timeout_s if args.timeout is None else args.timeout
        for name in result.unknown:
            print(f"omnitask: error: no live worker named {name!r}", file=sys.stderr)  # noqa: T201
        for name in result.silent:
            print(f"omnitask: error: no reply from {name} in {timeout:g} s", file=sys.stderr)  # noqa: T201
        if not (result.replies or result.silent or result.unknown):
            print("omnitask: error: no live workers", file=sys.stderr)  # noqa: T201
    acted = result.ok and bool(result.replies)
    return 0 if acted else 1


def _revoke(app: OmniTask, control: Control, args: argparse.Namespace) -> int:
    inspector = Inspector(app)
    running = {t.task_id: t.worker for t in inspector.active()}
    revoked = control.revoke(args.ids, terminate=args.terminate)
    stopped: dict[str, bool] = {}
    if args.terminate:
        stopped = _wait_stopped(inspector, [i for i in args.ids if i in running], args.timeout)
    results = []
    for task_id, ok in zip(args.ids, revoked, strict=True):
        where = running.get(task_id)
        results.append({"id": task_id, "revoked": ok, "running_on": where, "stopped": None})
        if where is not None and args.terminate:
            results[-1]["stopped"] = stopped[task_id]
    if args.json:
        _json(results)
    else:
        for r in results:
            _out(_revoke_line(r, args.terminate))
    return 0 if all(r["stopped"] is not False for r in results) else 1


def _revoke_line(r: dict[str, Any], terminate: bool) -> str:
    if not r["revoked"]:
        return f"{r['id']}: already finished, not revoked"
    where = r["running_on"]
    if where is None:
        return f"{r['id']}: revoked (it will not run)"
    if not terminate:
        return f"{r['id']}: revoked; it runs on {where} and finishes (--terminate stops it)"
    if r["stopped"]:
        return f"{r['id']}: revoked and stopped on {where}"
    return f"{r['id']}: revoked; still running on {where} (it is stopped within a second)"


def _wait_stopped(
    inspector: Inspector, task_ids: Sequence[str], timeout_s: float | None
) -> dict[str, bool]:
    """Wait (bounded) until the running ``task_ids`` left the in-flight lists."""
    deadline = time.monotonic() + (5.0 if timeout_s is None else timeout_s)
    left = set(task_ids)
    while left and time.monotonic() < deadline:
        # A supervisor looks for runs to terminate every half second: check a bit faster.
        time.sleep(0.2)
        left &= {t.task_id for t in inspector.active()}
    return {task_id: task_id not in left for task_id in task_ids}


def _purge(app: OmniTask, args: argparse.Namespace) -> None:
    control = Control(app)
    if not args.force:
        if not sys.stdin.isatty():
            raise _CommandError("not deleting without --force: standard input is not a terminal")
        stats = {q.name: q for q in Inspector(app).queues()}.get(args.queue)
        ready, delayed = (stats.ready_total, stats.delayed) if stats else (0, 0)
        answer = input(
            f"Delete {ready} ready and {delayed} delayed task(s) from queue {args.queue!r}? [y/N] "
        )
        if answer.strip().lower() not in ("y", "yes"):
            _out("nothing deleted")
            return
    purged = control.purge(args.queue)
    if args.json:
        _json({"queue": purged.queue, "ready": purged.ready, "delayed": purged.delayed})
    else:
        _out(
            f"purged {purged.ready} ready and {purged.delayed} delayed task(s) "
            f"from queue {purged.queue!r}"
        )


# -- status and health ------------------------------------------------------------------------


def _status(app: OmniTask, args: argparse.Namespace) -> int:
    workers = Inspector(app).workers(include_stale=True)
    if args.json:
        _json([w.as_dict() for w in workers])
        return 0 if any(w.alive for w in workers) else 1
    now = now_ms()
    if workers:
        header = ("WORKER", "STATE", "PID", "PROCS", "QUEUES", "UP", "HEARTBEAT")
        _out(table(header, [_status_row(w, now) for w in workers]))
    alive = sum(1 for w in workers if w.alive)
    stale = len(workers) - alive
    _out(f"{alive} worker(s) online" + (f", {stale} not heard from" if stale else ""))
    return 0 if alive else 1


def _status_row(w: WorkerStatus, now: int) -> list[str]:
    if not w.alive:
        return [w.name, "stale", "-", "-", "-", "-", ago(w.heartbeat_ms, now)]
    return [
        w.name,
        "online",
        str(w.pid),
        f"{w.processes}/{w.concurrency}",
        ",".join(w.queues),
        duration((now - w.started_ms) / 1000),
        ago(w.heartbeat_ms, now),
    ]


def _health(app: OmniTask, args: argparse.Namespace) -> int:
    if args.max_age is not None and args.worker is None:
        raise _CommandError("--max-age needs --worker", usage=True)
    conf = app.conf
    # Its own connection with a reply timeout: a probe must fail, not hang, on a stuck Redis.
    broker = Broker(conf, app.keys, socket_timeout_s=conf.connect_timeout_s)
    report: dict[str, Any] = {"ok": False, "redis": False, "worker": args.worker}
    try:
        broker.ping()
        report["redis"] = True
        if args.worker is not None:
            max_age = conf.heartbeat_interval_s * 3 if args.max_age is None else args.max_age
            score: Any = broker.redis.zscore(app.keys.workers, args.worker)
            report["max_age_s"] = max_age
            if score is None:
                report["reason"] = f"worker {args.worker!r} has no heartbeat in Redis"
            else:
                age = (now_ms() - int(score)) / 1000
                report["heartbeat_age_s"] = round(age, 3)
                if age > max_age:
                    report["reason"] = (
                        f"worker {args.worker!r}: last heartbeat {age:.1f} s ago "
                        f"(max {max_age:g} s)"
                    )
    except RedisError as exc:
        report["reason"] = f"Redis at {mask_url(conf.broker_url)} does not answer: {exc}"
    finally:
        broker.close()
    report["ok"] = "reason" not in report
    if args.json:
        _json(report)
    elif report["ok"]:
        seen = report.get("heartbeat_age_s")
        _out("ok" if seen is None else f"ok: heartbeat {seen:.1f} s ago")
    else:
        print(f"unhealthy: {report['reason']}", file=sys.stderr)  # noqa: T201
    return 0 if report["ok"] else 1
