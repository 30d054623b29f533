"""The ``omnitask`` command: parses arguments, builds settings, and calls one function."""

from __future__ import annotations

import argparse
import enum
import json
import logging
import sys
from collections.abc import Sequence

from omnitask import __version__, beat_cli, dashboard_cli, dlq_cli, inspect_cli
from omnitask.app import OmniTask
from omnitask.config import mask_url
from omnitask.errors import OmnitaskError
from omnitask.loader import load_app

__all__ = ("ExitCode", "main")


class ExitCode(enum.IntEnum):
    """Exit codes of the ``omnitask`` command."""

    OK = 0
    ERROR = 1
    USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omnitask", description="omnitask task queue")
    parser.add_argument("--version", action="version", version=f"omnitask {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = sub.add_parser("worker", help="run a worker", description="Run a worker.")
    _app_arg(worker)
    worker.add_argument(
        "-c", "--concurrency", type=int, help="child processes (default: one per CPU)"
    )
    worker.add_argument(
        "-Q", "--queues", help="comma-separated queues to consume (default: the default queue)"
    )
    worker.add_argument("-n", "--hostname", help="worker name (default: host:pid)")
    worker.add_argument(
        "--shutdown-timeout", type=float, help="seconds running tasks get on SIGTERM"
    )
    worker.add_argument("--time-limit", type=float, help="default hard time limit, seconds")
    worker.add_argument("--soft-time-limit", type=float, help="default soft time limit, seconds")
    worker.add_argument(
        "--max-tasks-per-child", type=int, help="replace a child after this many tasks"
    )
    worker.add_argument(
        "--max-memory-per-child",
        type=int,
        metavar="KIB",
        help="replace a child after a task leaves its peak memory above this many KiB",
    )
    worker.add_argument(
        "--prefetch",
        type=int,
        metavar="N",
        help="sync tasks each child claims at once; above 1, quick successes are acknowledged "
        "in batches (faster; a crashed child reruns its batch; default: 1)",
    )
    worker.add_argument(
        "--async-concurrency",
        type=int,
        metavar="N",
        help="async tasks each child runs at once on its event loop (default: 100)",
    )
    worker.add_argument(
        "--async-backend",
        choices=["asyncio", "trio"],
        help="event loop of async tasks (default: asyncio)",
    )
    worker.add_argument(
        "--autoscale",
        metavar="MAX,MIN[,IDLE]",
        help="grow the pool up to MAX processes while tasks wait, shrink to MIN after IDLE "
        "seconds (30) without work; overrides -c",
    )
    worker.add_argument(
        "--lease",
        type=float,
        help="seconds a crashed worker's tasks wait before redelivery (see the workers guide)",
    )
    worker.add_argument(
        "--reload",
        action="store_true",
        help="restart the worker when the app's Python files change (development only)",
    )
    worker.add_argument(
        "-B", "--beat", action="store_true", help="also run a beat (periodic tasks; development)"
    )
    worker.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve this worker's Prometheus metrics on 127.0.0.1:PORT (omnitask[metrics])",
    )
    _log_arg(worker)

    events = sub.add_parser(
        "events", help="print lifecycle events", description="Print lifecycle events live."
    )
    _app_arg(events)
    events.add_argument("--replay", action="store_true", help="start with the kept events")
    events.add_argument("--json", action="store_true", help="one JSON object per line")
    events.add_argument("--timeout", type=float, help="stop after this many seconds without events")
    _log_arg(events)
    dlq_cli.add_parser(sub)
    beat_cli.add_parser(sub)
    inspect_cli.add_parser(sub)
    dashboard_cli.add_parser(sub)
    return parser


def _app_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-A", "--app", required=True, help="the app: module or module:attribute")


def _log_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-l",
        "--loglevel",
        default="info",
        choices=["debug", "info", "warning", "error", "critical"],
        type=str.lower,
        help="log level (default: info)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``omnitask`` command with ``argv`` and return its exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.loglevel.upper(),
        format="[%(asctime)s %(levelname)s %(processName)s] %(name)s: %(message)s",
    )
    try:
        if args.command == "worker" and args.reload:
            # Before load_app: the reloader must never import the app, which may be broken.
            return _reload(args.app, sys.argv[1:] if argv is None else argv)
        if args.command == "beat":
            return beat_cli.run(args)  # loads the app itself
        app = load_app(args.app)
        if args.command == "worker":
            return _worker(app, args)
        if args.command == "dlq":
            return dlq_cli.run(app, args)
        if args.command == "dashboard":
            return dashboard_cli.run(app, args)
        if args.command in inspect_cli.COMMANDS:
            return inspect_cli.run(app, args)
        return _events(app, args)
    except OmnitaskError as exc:
        print(f"omnitask: error: {exc}", file=sys.stderr)  # noqa: T201
        return ExitCode.ERROR
    except KeyboardInterrupt:
        return ExitCode.OK


def _worker(app: OmniTask, args: argparse.Namespace) -> int:
    from omnitask.worker.autoscale import parse_autoscale
    from omnitask.worker.supervisor import Supervisor

    flags = {
        "worker_concurrency": args.concurrency,
        "worker_prefetch": args.prefetch,
        "shutdown_timeout_s": args.shutdown_timeout,
        "lease_s": args.lease,
        "time_limit_s": args.time_limit,
        "soft_time_limit_s": args.soft_time_limit,
        "max_tasks_per_child": args.max_tasks_per_child,
        "max_memory_per_child_kb": args.max_memory_per_child,
        "async_concurrency": args.async_concurrency,
        "async_backend": args.async_backend,
    }
    settings = {name: value for name, value in flags.items() if value is not None}
    if settings:
        app.configure(**settings)
    app.import_includes()
    queues = [q.strip() for q in (args.queues or app.conf.default_queue).split(",") if q.strip()]
    for queue in queues:
        app.keys.queue(queue)
    app.connect()
    if args.metrics_port is not None:
        from omnitask.metrics import serve_worker_metrics  # needs the metrics extra

        serve_worker_metrics(app, args.metrics_port)
    autoscale = parse_autoscale(args.autoscale) if args.autoscale else None
    concurrency = autoscale.least if autoscale else app.conf.concurrency
    supervisor = Supervisor(app, queues, concurrency, name=args.hostname, autoscale=autoscale)
    size = f"{autoscale.least} to {autoscale.most}" if autoscale else str(concurrency)
    print(_banner(app, supervisor.name, queues, size), flush=True)  # noqa: T201
    beat = beat_cli.start_embedded(app) if args.beat else None
    try:
        return supervisor.run()
    finally:
        beat_cli.stop_embedded(beat)


def _reload(app_spec: str, argv: Sequence[str]) -> int:
    from omnitask.worker.reload import Reloader

    return Reloader(app_spec, argv).run()


def _banner(app: OmniTask, name: str, queues: Sequence[str], concurrency: int | str) -> str:
    conf = app.conf
    results = "same Redis as broker" if conf.result_backend is None else mask_url(conf.result_url)
    lines = [
        f"omnitask {__version__} worker {name}",
        f"  app:         {app.main}",
        f"  broker:      {mask_url(conf.broker_url)}",
        f"  results:     {results} (ttl {conf.result_ttl_s:g} s)",
        f"  queues:      {', '.join(queues)}",
        f"  concurrency: {concurrency} processes",
        *(
            [f"  async:       {conf.async_concurrency} tasks per process on {conf.async_backend}"]
            if any(task.is_async for task in app.tasks.values())
            else []
        ),
        f"  lease:       {conf.lease_s:g} s",
        "  tasks:",
        *(f"    . {name}" for name in sorted(app.tasks) if not name.startswith("omnitask.")),
    ]
    if not any(not name.startswith("omnitask.") for name in app.tasks):
        lines.append("    (none registered: check -A and include=)")
    return "\n".join(lines)


def _events(app: OmniTask, args: argparse.Namespace) -> int:
    for event in app.events.follow(replay=args.replay, timeout_s=args.timeout):
        if args.json:
            line = json.dumps(event.as_dict())
        else:
            who = " ".join(
                f"{k}={v}" for k, v in event.as_dict().items() if k not in ("kind", "time")
            )
            line = f"{event.time.isoformat(timespec='milliseconds')} {event.kind:<16} {who}"
        print(line, flush=True)  # noqa: T201
    return ExitCode.OK
