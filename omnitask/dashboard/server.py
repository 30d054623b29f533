"""The dashboard's web app: its pages, its JSON API and ``/metrics`` (starlette).

Every handler parses its request and calls one function of ``views.py`` or ``tasks.py``;
they read Redis with the app's ordinary (blocking) client, so they are plain ``def``
functions, which starlette runs in its thread pool. Handlers share one
:class:`~omnitask.dashboard.window.EventWindow`, refreshed at most four times a second.

The JSON API (documented in docs/guide/dashboard.md):

| method and path | returns |
|---|---|
| ``GET /api/overview`` | workers alive, tasks ready, delayed, in flight, dead letters, window |
| ``GET /api/workers`` | every worker: status, heartbeat age, current tasks, outcomes |
| ``GET /api/queues`` | every queue: depth by priority, delayed, in flight, oldest, rates |
| ``GET /api/tasks?id=&name=&state=&limit=`` | tasks in the event window, newest first |
| ``GET /api/tasks/{id}`` | one task: summary, message and arguments, result, timeline |
| ``GET /api/throughput?seconds=`` | per-second counts and runtimes, for the live chart |
| ``GET /api/dead-letters?queue=&reason=&task=&limit=`` | dead letters, newest first |
| ``POST /api/dead-letters/requeue`` | requeue some; 428 and the count until confirmed |
| ``POST /api/dead-letters/purge`` | delete some; 428 and the count until confirmed |
| ``GET /metrics`` | Prometheus metrics (``omnitask[metrics]``) |
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from omnitask.config import mask_url
from omnitask.dashboard import tasks, views
from omnitask.dashboard.actions import ActionError, purge, requeue
from omnitask.dashboard.auth import Access, AuthMiddleware
from omnitask.dashboard.window import EventWindow

if TYPE_CHECKING:
    from omnitask.app import OmniTask

__all__ = ("create_app",)

logger = logging.getLogger(__name__)

# Scripts and styles from the dashboard itself only; no framing (clickjacking).
_SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
_LIMIT_MAX = 1000


class _BadRequest(Exception):  # noqa: N818 - a 400 answer, not an error of ours
    """The query string or body is not what the endpoint takes."""


def _int_param(request: Request, name: str, default: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _BadRequest(f"{name} must be an integer, got {raw!r}") from None
    if not 1 <= value <= high:
        raise _BadRequest(f"{name} must be from 1 to {high}, got {value}")
    return value


def _text_param(request: Request, name: str) -> str | None:
    return request.query_params.get(name) or None


class _Handlers:
    """The request handlers, bound to one app and its event window."""

    def __init__(self, app: OmniTask, window: EventWindow) -> None:
        self.app = app
        self.window = window

    def _fresh(self) -> EventWindow:
        self.window.refresh()
        return self.window

    def overview(self, request: Request) -> Response:
        return JSONResponse(views.overview(self.app, self._fresh()))

    def workers(self, request: Request) -> Response:
        return JSONResponse(views.workers(self.app, self._fresh()))

    def queues(self, request: Request) -> Response:
        return JSONResponse(views.queues(self.app, self._fresh()))

    def throughput(self, request: Request) -> Response:
        seconds = _int_param(request, "seconds", 60, 600)
        return JSONResponse(views.throughput(self._fresh(), seconds=seconds))

    def task_list(self, request: Request) -> Response:
        state = _text_param(request, "state")
        if state is not None and state.upper() not in tasks.STATES:
            raise _BadRequest(f"state must be one of {', '.join(tasks.STATES)}")
        found, total = tasks.search(
            self._fresh(),
            task_id=_text_param(request, "id"),
            name=_text_param(request, "name"),
            state=state.upper() if state else None,
            limit=_int_param(request, "limit", 100, _LIMIT_MAX),
        )
        return JSONResponse(
            {
                "tasks": [t.as_dict() for t in found],
                "total": total,
                "window_s": round(self.window.span_ms() / 1000, 3),
            }
        )

    def task(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        detail = tasks.task_detail(self.app, self._fresh(), task_id)
        if detail is None:
            return JSONResponse({"error": f"no task {task_id!r} in Redis or the events"}, 404)
        return JSONResponse(detail)

    def dead_letters(self, request: Request) -> Response:
        data = views.dead_letters(
            self.app,
            queue=_text_param(request, "queue"),
            reason=_text_param(request, "reason"),
            task=_text_param(request, "task"),
            limit=_int_param(request, "limit", 100, _LIMIT_MAX),
        )
        return JSONResponse(data)

    async def requeue(self, request: Request) -> Response:
        return await self._action(request, requeue)

    async def purge(self, request: Request) -> Response:
        return await self._action(request, purge)

    async def _action(
        self, request: Request, action: Callable[[OmniTask, dict[str, Any]], dict[str, Any]]
    ) -> Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _BadRequest("the body must be a JSON object") from None
        if not isinstance(body, dict):
            raise _BadRequest("the body must be a JSON object")
        try:
            result = await run_in_threadpool(action, self.app, body)
        except ActionError as exc:
            return JSONResponse({"error": str(exc)}, exc.status)
        # Until confirmed, nothing was done: 428 says so, with what would be done.
        return JSONResponse(result, 200 if result.get("done") else 428)


def _metrics_route(app: OmniTask, window: EventWindow) -> Callable[[Request], Response]:
    try:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        from omnitask.metrics import OmnitaskCollector
    except ImportError:

        def missing(request: Request) -> Response:
            text = "/metrics needs prometheus-client: pip install 'omnitask[metrics]'"
            return PlainTextResponse(text, 404)

        return missing
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OmnitaskCollector(app, window=window))

    def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return metrics


def _index(request: Request) -> Response:
    page = resources.files("omnitask.dashboard") / "static" / "index.html"
    return HTMLResponse(page.read_text(encoding="utf-8"))


def _errors(app: OmniTask) -> dict[Any, Callable[[Request, Exception], Awaitable[Response]]]:
    async def bad_request(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": str(exc)}, 400)

    async def redis_down(request: Request, exc: Exception) -> Response:
        url = mask_url(app.conf.broker_url)
        logger.warning("dashboard: Redis error url=%s error=%s", url, exc)
        return JSONResponse({"error": f"Redis at {url}: {exc}"}, 503)

    return {_BadRequest: bad_request, RedisError: redis_down}


class _SecurityHeaders:
    """Adds :data:`_SECURITY_HEADERS` to every HTTP response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def create_app(
    app: OmniTask,
    *,
    access: Access | None = None,
    loopback_only: bool = True,
    window: EventWindow | None = None,
) -> Starlette:
    """The dashboard of ``app`` as an ASGI app (serve it with uvicorn or any ASGI server).

    Args:
        app: The omnitask app to show.
        access: The credentials to ask for (default: none).
        loopback_only: It is served on loopback only: without credentials, requests must then
            name a loopback host (see ``omnitask.dashboard.auth``).
        window: The event window to read (default: a new one).
    """
    handlers = _Handlers(app, window if window is not None else EventWindow(app))
    routes = [
        Route("/", _index),
        Route("/api/overview", handlers.overview),
        Route("/api/workers", handlers.workers),
        Route("/api/queues", handlers.queues),
        Route("/api/tasks", handlers.task_list),
        Route("/api/tasks/{task_id:path}", handlers.task),  # ids may hold "/"
        Route("/api/throughput", handlers.throughput),
        Route("/api/dead-letters", handlers.dead_letters),
        Route("/api/dead-letters/requeue", handlers.requeue, methods=["POST"]),
        Route("/api/dead-letters/purge", handlers.purge, methods=["POST"]),
        Route("/metrics", _metrics_route(app, handlers.window)),
        Mount("/static", StaticFiles(packages=[("omnitask.dashboard", "static")])),
    ]
    middleware = [
        Middleware(_SecurityHeaders),
        Middleware(AuthMiddleware, access=access or Access(), loopback_only=loopback_only),
    ]
    return Starlette(routes=routes, middleware=middleware, exception_handlers=_errors(app))
