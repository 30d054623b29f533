"""A web app that starts reports on a worker and tells how far they got (stdlib WSGI).

Start a worker for the tasks of report.py, then the web app, both in the examples folder:

    cd examples
    omnitask worker -A report -c 2
    python webapp.py                    # http://127.0.0.1:8000 (--port 0: any free port)

    curl -i -X POST localhost:8000/reports -d '{"chunks": 20}'
        202 {"id": "9f1c...", "url": "/reports/9f1c..."}
    curl localhost:8000/reports/9f1c...
        200 {"id": "9f1c...", "state": "PROGRESS", "progress": {"current": 7, "total": 20}}
        200 {"id": "9f1c...", "state": "SUCCESS", "result": {"chunks": 20, "rows": 2000, ...}}

Both use the Redis at $OMNITASK_BROKER_URL (default redis://localhost:6379/0). A request only
sends the task or reads its state, one round trip to Redis each: the work happens on the
worker, and the web process answers at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import make_server

from report import app, build_report  # the tasks: report.py, next to this file

Environ = dict[str, Any]
StartResponse = Callable[[str, list[tuple[str, str]]], object]
Response = tuple[str, dict[str, Any]]


def application(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI app: POST /reports and GET /reports/<id>, JSON in and out."""
    method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
    if method == "POST" and path == "/reports":
        status, body = create_report(environ)
    elif method == "GET" and path.startswith("/reports/"):
        status, body = report_status(path.removeprefix("/reports/"))
    else:
        status, body = "404 Not Found", {"error": f"no route for {method} {path}"}
    payload = json.dumps(body).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
    if status.startswith("202"):
        headers.append(("Location", body["url"]))
    start_response(status, headers)
    return [payload]


def create_report(environ: Environ) -> Response:
    """Send ``build_report`` with the JSON body as its keyword arguments: 202 and the task id."""
    size = int(environ.get("CONTENT_LENGTH") or 0)
    try:
        options = json.loads(environ["wsgi.input"].read(size) or b"{}")
        # delay() checks the arguments against the function's signature and annotations:
        # {"chunks": "many"} raises ArgumentTypeError and {"pages": 3} TypeError (both
        # TypeErrors), and nothing is sent.
        result = build_report.delay(**options)
    except (ValueError, TypeError) as exc:
        return "400 Bad Request", {"error": str(exc)}
    return "202 Accepted", {"id": result.id, "url": f"/reports/{result.id}"}


def report_status(task_id: str) -> Response:
    """The task's state; its progress while it runs, its result or error once it is done."""
    state, info = app.AsyncResult(task_id).poll()  # both from one read: never out of step
    body: dict[str, Any] = {"id": task_id, "state": state}
    if state == "SUCCESS":
        body["result"] = info
    elif state in ("FAILURE", "REVOKED"):
        body["error"] = f"{type(info).__name__}: {info}"
    elif state == "PROGRESS":
        body["progress"] = info
    return "200 OK", body


def main() -> None:
    """Serve the app on 127.0.0.1 until Ctrl-C."""
    parser = argparse.ArgumentParser(description="Serve the reports API.")
    parser.add_argument("--port", type=int, default=8000, help="0: any free port")
    args = parser.parse_args()
    with make_server("127.0.0.1", args.port, application) as server:
        print(f"serving on http://127.0.0.1:{server.server_port}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
    app.close()


if __name__ == "__main__":
    main()
