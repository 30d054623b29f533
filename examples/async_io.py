"""Async I/O tasks: 100 slow HTTP fetches on one worker child take about as long as one.

Start a worker with one child process, then this program, both in the examples folder:

    cd examples
    omnitask worker -A async_io -c 1
    python async_io.py

Both use the Redis at $OMNITASK_BROKER_URL (default redis://localhost:6379/0). The program
serves a tiny HTTP API on 127.0.0.1 whose every answer takes half a second, then, from an
asyncio program, sends the worker 100 ``fetch`` tasks for it and awaits their results. The
child runs async tasks on an event loop, up to ``--async-concurrency`` (100) at once, so the
fetches wait on their sockets together: about half a second in all, not 50.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import anyio

from omnitask import OmniTask

app = OmniTask("async_io")

DELAY_S = 0.5
"""How long the example API takes to answer."""


# A hung server is cancelled after 10 s (a time limit cancels an async task, it kills nothing);
# a refused or reset connection is tried again.
@app.task(time_limit=10, retries=2, retry_on=(OSError,))
async def fetch(url: str) -> str:
    """GET ``url`` over plain HTTP and return the body. Every wait is an ``await``."""
    parts = urlsplit(url)
    request = f"GET {parts.path or '/'} HTTP/1.0\r\nHost: {parts.netloc}\r\n\r\n"
    async with await anyio.connect_tcp(parts.hostname or "localhost", parts.port or 80) as stream:
        await stream.send(request.encode())
        response = b"".join([chunk async for chunk in stream])  # HTTP/1.0: until it closes
    head, _, body = response.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1].decode()
    if status != "200":
        raise RuntimeError(f"GET {url}: HTTP {status}")
    return body.decode()


# -- the client: an asyncio program ----------------------------------------------------------


async def main(base: str, count: int = 100) -> None:
    """Send fetches from asyncio code and await their results; the loop never blocks."""
    started = time.perf_counter()
    first = await fetch.delay_async(f"{base}/warm-up")  # the send runs in a thread
    page = await first  # the same as `await first.get_async()`
    print(f"1 fetch: {page!r} in {time.perf_counter() - started:.2f} s")

    started = time.perf_counter()
    results = await asyncio.gather(*(fetch.delay_async(f"{base}/item/{i}") for i in range(count)))
    pages = await asyncio.gather(*(result.get_async(timeout=30) for result in results))
    elapsed = time.perf_counter() - started
    assert pages == [f"page /item/{i}" for i in range(count)]
    print(f"{count} fetches: {elapsed:.2f} s on one child (one by one: {count * DELAY_S:g} s)")


# -- the slow HTTP API the tasks fetch from ----------------------------------------------------


class SlowHandler(BaseHTTPRequestHandler):
    """Answers every GET with ``page <path>`` after DELAY_S, like a slow API."""

    def do_GET(self) -> None:
        time.sleep(DELAY_S)
        body = f"page {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib's name
        """Log nothing."""


class SlowServer(ThreadingHTTPServer):
    """A thread per request, and room for a hundred connections arriving at once."""

    daemon_threads = True
    request_queue_size = 128


@contextmanager
def slow_api() -> Iterator[str]:
    """Serve the slow API on a free port of 127.0.0.1 in a thread; yield its URL."""
    with SlowServer(("127.0.0.1", 0), SlowHandler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_port}"
        finally:
            server.shutdown()
            thread.join()


if __name__ == "__main__":
    with slow_api() as base:
        asyncio.run(main(base))
    app.close()
