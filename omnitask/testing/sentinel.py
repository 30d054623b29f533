"""A private Sentinel set: a master, a replica and three sentinels, on free loopback ports.

Every process is started from the ``redis-server`` binary (a sentinel is ``redis-server
<config> --sentinel``) in one temporary directory, and stopped by its PID. Used by omnitask's
Sentinel tests; it never touches a Redis it did not start.
"""

from __future__ import annotations

import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import redis

from omnitask.testing.server import RedisServer, TempProcesses, _free_port, find_redis_server

__all__ = ("SentinelSet", "SentinelUnavailable")

# A replica's first sync waits repl-diskless-sync-delay (5 s by default) for more replicas.
_SERVER_ARGS = ("--repl-diskless-sync-delay", "0")


class SentinelUnavailable(RuntimeError):  # noqa: N818 - reads better than ...Error here
    """The ``redis-server`` binary did not run as a sentinel (``--sentinel``)."""


class _Sentinel:
    """One ``redis-server <config> --sentinel`` process."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port = port
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.directory / f"sentinel-{self.port}.log"

    def start(self, binary: str, lines: Sequence[str]) -> None:
        config = self.directory / f"sentinel-{self.port}.conf"
        head = [
            f"port {self.port}",
            "bind 127.0.0.1",
            "daemonize no",
            f'logfile "{self.log}"',
            f'dir "{self.directory}"',
        ]
        config.write_text("\n".join([*head, *lines]) + "\n")
        self.process = subprocess.Popen(
            [binary, str(config), "--sentinel"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )

    def client(self) -> redis.Redis:
        return redis.Redis("127.0.0.1", self.port, socket_timeout=1.0, socket_connect_timeout=1.0)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


class SentinelSet(TempProcesses):
    """A master, one replica and three sentinels watching them. Use as a context manager.

    The sentinels fail over when the master has not answered for ``down_after_ms``; two of
    the three must agree. ``master_args`` and ``replica_args`` go to each server's command line
    (e.g. ``("--min-replicas-to-write", "1")``).

    Attributes:
        service_name: The master's name in the sentinels' ``sentinel monitor`` line.
        master: The server started as the master (a replica after a failover, if it is back).
        replica: The server started as the replica.
        sentinels: The sentinel processes.
    """

    def __init__(
        self,
        *,
        service_name: str = "omnitask",
        master_args: Sequence[str] = (),
        replica_args: Sequence[str] = (),
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        sentinels: int = 3,
    ) -> None:
        """Describe the set; nothing starts until :meth:`start`."""
        self.service_name = service_name
        self.master_args = tuple(master_args)
        self.replica_args = tuple(replica_args)
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.sentinel_count = sentinels
        self.master: RedisServer | None = None
        self.replica: RedisServer | None = None
        self.sentinels: list[_Sentinel] = []
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        """``redis+sentinel://`` URL of the set, database 0."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service_name}/0"

    @property
    def servers(self) -> list[RedisServer]:
        """The master and the replica, as started."""
        return [s for s in (self.master, self.replica) if s is not None]

    def start(self, timeout_s: float = 20.0) -> SentinelSet:
        """Start every process and wait until the sentinels know the replica and each other.

        Raises:
            RedisServerNotFound: No redis-server binary is installed.
            SentinelUnavailable: The binary does not run as a sentinel (its log is in the
                message).
            RuntimeError: The set did not come up in time.
        """
        binary = find_redis_server()
        self._tmp = tempfile.TemporaryDirectory(prefix="omnitask-sentinel-")
        root = Path(self._tmp.name)
        try:
            self.master = self._server(root / "master", self.master_args).start()
            follow = ("--replicaof", "127.0.0.1", str(self.master.port))
            self.replica = self._server(root / "replica", (*follow, *self.replica_args)).start()
            monitor = [
                f"sentinel monitor {self.service_name} 127.0.0.1 {self.master.port} 2",
                f"sentinel down-after-milliseconds {self.service_name} {self.down_after_ms}",
                f"sentinel failover-timeout {self.service_name} {self.failover_timeout_ms}",
                f"sentinel parallel-syncs {self.service_name} 1",
            ]
            for _ in range(self.sentinel_count):
                sentinel = _Sentinel(_free_port(), root)
                self.sentinels.append(sentinel)
                sentinel.start(binary, monitor)
            self._wait_ready(timeout_s)
        except BaseException:
            self.cleanup()
            raise
        return self

    def _server(self, directory: Path, args: Sequence[str]) -> RedisServer:
        directory.mkdir()
        return RedisServer(extra_args=(*_SERVER_ARGS, *args), directory=str(directory))

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for sentinel in self.sentinels:
                if sentinel.process is not None and sentinel.process.poll() is not None:
                    text = sentinel.log.read_text(errors="replace")[-2000:]
                    raise SentinelUnavailable(
                        f"redis-server --sentinel exited at start (code "
                        f"{sentinel.process.returncode}):\n{text}"
                    )
            if all(self._sees_all(s) for s in self.sentinels):
                return
            time.sleep(0.05)
        raise RuntimeError(f"the Sentinel set did not come up in {timeout_s:g} s")

    def _sees_all(self, sentinel: _Sentinel) -> bool:
        try:
            with sentinel.client() as client:
                state = client.sentinel_master(self.service_name)
        except redis.RedisError:
            return False
        others = self.sentinel_count - 1
        return bool(state["num-slaves"] >= 1 and state["num-other-sentinels"] >= others)

    def master_address(self) -> tuple[str, int] | None:
        """The master's address as the first sentinel that answers names it."""
        for sentinel in self.sentinels:
            try:
                with sentinel.client() as client:
                    reply = client.sentinel_get_master_addr_by_name(self.service_name)
            except redis.RedisError:
                continue
            if reply:
                host, port = reply
                return (host.decode() if isinstance(host, bytes) else host), int(port)
        return None

    def current_master(self) -> RedisServer:
        """The server the sentinels name as the master now.

        Raises:
            RuntimeError: No sentinel answers, or they name a server this set did not start.
        """
        address = self.master_address()
        for server in self.servers:
            if address is not None and server.port == address[1]:
                return server
        raise RuntimeError(f"the sentinels name no server of this set: {address}")

    def kill_master(self) -> RedisServer:
        """SIGKILL the current master, as a crash would; return it (its process is gone)."""
        server = self.current_master()
        server.stop(signal.SIGKILL)
        return server

    def wait_failover(self, old: RedisServer, timeout_s: float = 30.0) -> RedisServer:
        """Wait until every sentinel names a master other than ``old`` and it acts as one.

        Raises:
            RuntimeError: No failover in time.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            addresses = set()
            for sentinel in self.sentinels:
                try:
                    with sentinel.client() as client:
                        reply = client.sentinel_get_master_addr_by_name(self.service_name)
                except redis.RedisError:
                    reply = None
                addresses.add(int(reply[1]) if reply else None)
            if len(addresses) == 1 and (port := addresses.pop()) not in (None, old.port):
                new = next(s for s in self.servers if s.port == port)
                if _role(new) == "master":
                    return new
            time.sleep(0.05)
        raise RuntimeError(f"no failover from port {old.port} within {timeout_s:g} s")

    def stop(self) -> None:
        """Stop every process by its PID (sentinels first, so that none fails over)."""
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.stop()

    def __enter__(self) -> SentinelSet:
        return self.start()


def _role(server: RedisServer) -> str | None:
    try:
        with redis.Redis("127.0.0.1", server.port, socket_timeout=1.0) as client:
            info = client.info("replication")
    except redis.RedisError:
        return None
    return str(info.get("role"))
