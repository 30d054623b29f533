"""A private Redis Cluster: masters (and optional replicas) on free loopback ports.

Every node is a ``redis-server --cluster-enabled yes`` process in its own temporary
directory, started from the binary and stopped by its PID. The slots are split evenly over the
masters by hand (``CLUSTER ADDSLOTSRANGE``, then ``CLUSTER MEET``), so neither ``redis-cli`` nor
a network beyond loopback is needed. Used by omnitask's cluster tests and benchmark; it never
touches a Redis it did not start.
"""

from __future__ import annotations

import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from omnitask.testing.server import RedisServer, TempProcesses, _free_port

__all__ = ("ClusterNodeServer", "RedisClusterSet")


class ClusterNodeServer(RedisServer):
    """One node of a :class:`RedisClusterSet`: a redis-server with cluster mode on.

    Attributes:
        bus_port: The port of its cluster bus (chosen free, not port + 10000).
        slots: The slot range ``(first, last)`` it serves as a master, or None for a replica.
    """

    def __init__(self, directory: Path, node_timeout_ms: int, slots: tuple[int, int] | None):
        """Describe the node; nothing starts until :meth:`start`."""
        self.bus_port = _free_port()
        self.slots = slots
        directory.mkdir()
        super().__init__(
            directory=str(directory),
            extra_args=(
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(directory / "nodes.conf"),
                "--cluster-node-timeout", str(node_timeout_ms),
                "--cluster-port", str(self.bus_port),
                # A replica's first sync otherwise waits 5 s for more replicas.
                "--repl-diskless-sync-delay", "0",
            ),
        )  # fmt: skip

    def client(self) -> redis.Redis:
        """A plain client of this one node (cluster commands, INFO, DEBUG ...)."""
        return redis.Redis("127.0.0.1", self.port, socket_timeout=2.0, socket_connect_timeout=2.0)

    def node_id(self) -> str:
        """The node's cluster id."""
        with self.client() as client:
            return str(client.execute_command("CLUSTER", "MYID").decode())


class RedisClusterSet(TempProcesses):
    """A Redis Cluster of ``masters`` masters, each with ``replicas`` replicas.

    Use as a context manager, or :meth:`start` and :meth:`cleanup`.

    Attributes:
        masters: The master nodes, in slot order.
        replicas: The replica nodes (``replicas`` per master, in the masters' order).
    """

    def __init__(self, masters: int = 3, *, replicas: int = 0, node_timeout_ms: int = 2000):
        """Describe the cluster; nothing starts until :meth:`start`."""
        if masters < 1:
            raise ValueError("a cluster needs at least one master")
        self.master_count = masters
        self.replica_count = replicas
        self.node_timeout_ms = node_timeout_ms
        self.masters: list[ClusterNodeServer] = []
        self.replicas: list[ClusterNodeServer] = []
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        """``redis+cluster://`` URL naming every master."""
        hosts = ",".join(f"127.0.0.1:{m.port}" for m in self.masters)
        return f"redis+cluster://{hosts}/"

    @property
    def nodes(self) -> list[ClusterNodeServer]:
        """Every node, masters first."""
        return [*self.masters, *self.replicas]

    def start(self, timeout_s: float = 30.0) -> RedisClusterSet:
        """Start every node, assign the slots, join the nodes and wait until the cluster is ok.

        Raises:
            RedisServerNotFound: No redis-server binary is installed.
            RuntimeError: A node did not start, or the cluster did not form in time.
        """
        self._tmp = tempfile.TemporaryDirectory(prefix="omnitask-cluster-")
        root = Path(self._tmp.name)
        try:
            per = REDIS_CLUSTER_HASH_SLOTS // self.master_count
            for i in range(self.master_count):
                last = (
                    REDIS_CLUSTER_HASH_SLOTS - 1
                    if i == self.master_count - 1
                    else (i + 1) * per - 1
                )
                node = ClusterNodeServer(root / f"m{i}", self.node_timeout_ms, (i * per, last))
                node.start()
                self.masters.append(node)
            for i in range(self.master_count * self.replica_count):
                node = ClusterNodeServer(root / f"r{i}", self.node_timeout_ms, None)
                node.start()
                self.replicas.append(node)
            self._form(timeout_s)
        except BaseException:
            self.cleanup()
            raise
        return self

    def _form(self, timeout_s: float) -> None:
        first = self.masters[0]
        for master in self.masters:
            assert master.slots is not None
            with master.client() as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", *master.slots)
        with first.client() as client:
            for node in self.nodes[1:]:
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, node.bus_port)
        deadline = time.monotonic() + timeout_s
        self._wait(lambda: all(self._knows_all(n) for n in self.nodes), deadline, "join")
        for i, replica in enumerate(self.replicas):
            master_id = self.masters[i // self.replica_count].node_id()
            with replica.client() as client:
                client.execute_command("CLUSTER", "REPLICATE", master_id)
        self._wait(lambda: all(_state_ok(n) for n in self.nodes), deadline, "come up")
        self._wait(lambda: all(self._synced(r) for r in self.replicas), deadline, "sync")

    def _knows_all(self, node: ClusterNodeServer) -> bool:
        try:
            with node.client() as client:
                listed = client.execute_command("CLUSTER", "NODES").decode().splitlines()
        except redis.RedisError:
            return False
        return len(listed) == len(self.nodes) and not any("handshake" in n for n in listed)

    @staticmethod
    def _synced(replica: ClusterNodeServer) -> bool:
        try:
            with replica.client() as client:
                info = client.info("replication")
        except redis.RedisError:
            return False
        return bool(info.get("master_link_status") == "up")

    @staticmethod
    def _wait(ready: Callable[[], bool], deadline: float, what: str) -> None:
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.05)
        raise RuntimeError(f"the Redis Cluster did not {what} in time")

    def master_of(self, key: str) -> ClusterNodeServer:
        """The master (as started) that serves ``key``'s hash slot."""
        slot = key_slot(key.encode())
        for master in self.masters:
            assert master.slots is not None
            if master.slots[0] <= slot <= master.slots[1]:
                return master
        raise LookupError(slot)  # pragma: no cover - the ranges cover every slot

    def kill(self, node: ClusterNodeServer) -> None:
        """SIGKILL ``node``, as a crash would."""
        node.stop(signal.SIGKILL)

    def stop(self) -> None:
        """Stop every node by its PID."""
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> RedisClusterSet:
        return self.start()


def _state_ok(node: ClusterNodeServer) -> bool:
    try:
        with node.client() as client:
            info = client.execute_command("CLUSTER", "INFO").decode()
    except redis.RedisError:
        return False
    return "cluster_state:ok" in info
