"""The ``omnitask dashboard`` command: serve the web dashboard and ``/metrics`` with uvicorn."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from omnitask.dashboard.auth import Access, check_bind, is_loopback
from omnitask.errors import ConfigurationError

if TYPE_CHECKING:
    from omnitask.app import OmniTask

__all__ = ("TOKEN_ENV", "USER_ENV", "add_parser", "run")

TOKEN_ENV = "OMNITASK_DASHBOARD_TOKEN"
"""Environment variable read for the token when ``--token`` is not given."""
USER_ENV = "OMNITASK_DASHBOARD_BASIC_AUTH"
"""Environment variable read for ``user:password`` when ``--basic-auth`` is not given."""


def add_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add the ``dashboard`` command to ``omnitask``'s subcommands."""
    parser = subparsers.add_parser(
        "dashboard",
        help="serve the web dashboard, its JSON API and /metrics",
        description="Serve the web dashboard, its JSON API and Prometheus /metrics.",
    )
    parser.add_argument("-A", "--app", required=True, help="the app: module or module:attribute")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5555, help="port (default 5555)")
    parser.add_argument(
        "--token", help=f"require this bearer token (or set {TOKEN_ENV}, kept out of ps)"
    )
    parser.add_argument(
        "--basic-auth",
        metavar="USER:PASSWORD",
        help=f"require HTTP basic auth (or set {USER_ENV})",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --host without --token or --basic-auth",
    )
    parser.add_argument(
        "-l",
        "--loglevel",
        default="info",
        choices=["debug", "info", "warning", "error", "critical"],
        type=str.lower,
        help="log level (default: info)",
    )
    return parser


def run(app: OmniTask, args: argparse.Namespace) -> int:
    """Serve the dashboard until interrupted; return the exit code.

    Raises:
        ConfigurationError: The options are wrong (auth, or a public host without auth).
        BrokerConnectionError: Redis cannot be reached.
    """
    from omnitask.cli import ExitCode  # here, not at the top: cli.py imports this module

    try:
        import uvicorn

        from omnitask.dashboard.server import create_app
    except ImportError as exc:
        print(  # noqa: T201
            f"omnitask: error: the dashboard needs {exc.name}: pip install 'omnitask[dashboard]'",
            file=sys.stderr,
        )
        return ExitCode.ERROR
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    basic = args.basic_auth if args.basic_auth is not None else os.environ.get(USER_ENV) or None
    access = Access.from_options(token, basic)
    check_bind(args.host, access, insecure=args.insecure)
    if not 0 <= args.port <= 65535:
        raise ConfigurationError(f"--port must be from 0 to 65535, got {args.port}")
    # Tasks from include= tell async from sync, which splits active from reserved tasks.
    app.import_includes()
    app.connect()
    loopback = is_loopback(args.host)
    asgi = create_app(app, access=access, loopback_only=loopback)
    host = f"[{args.host}]" if ":" in args.host else args.host
    auth = "token" if access.token else "basic auth" if access.user else "no auth"
    print(  # noqa: T201
        f"omnitask dashboard for app {app.main} on http://{host}:{args.port}/ ({auth})",
        flush=True,
    )
    config = uvicorn.Config(
        asgi,
        host=args.host,
        port=args.port,
        log_level=args.loglevel,
        access_log=args.loglevel == "debug",
        lifespan="off",
        server_header=False,
        # Served directly, not behind a proxy: X-Forwarded-* from a client are not trusted.
        proxy_headers=False,
    )
    uvicorn.Server(config).run()
    return ExitCode.OK
