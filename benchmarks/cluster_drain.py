"""Drain throughput on Redis Cluster with 1, 2 and 3 masters, queues spread over them.

    .venv/bin/python benchmarks/cluster_drain.py [--n 12000] [--masters 1,2,3] [--repeat 1]

For each size, a fresh cluster of that many masters (no replicas) on free loopback ports gets
``QUEUES`` queues whose names are picked so that they spread evenly over its masters, and N
no-op tasks spread evenly over the queues. Then ``WORKERS`` workers start (``-c 1`` each, each
consuming ``QUEUES / WORKERS`` of the queues that share a master when the cluster has enough
masters); the figure is tasks per second from the first task done to the last. The same
queues-per-worker layout at every size: only the number of masters changes. On a 2-core
machine the workers and the masters share the CPUs, so the ratio between sizes, not the
absolute rate, is the figure.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.cluster_app import app, done_key  # noqa: E402
from benchmarks.drain import time_drain  # noqa: E402
from omnitask.broker.connect import cluster_client  # noqa: E402
from omnitask.testing.cluster import RedisClusterSet  # noqa: E402

QUEUES = 6
WORKERS = 3


def spread_queues(cluster: RedisClusterSet, count: int) -> list[str]:
    """``count`` queue names, as evenly over the masters as they go, grouped by master."""
    per_master: dict[int, list[str]] = {m.port: [] for m in cluster.masters}
    quota = -(-count // len(per_master))
    i = 0
    while sum(map(len, per_master.values())) < count:
        name = f"q{i}"
        i += 1
        port = cluster.master_of(app.keys.queue(name).wake).port
        if len(per_master[port]) < quota:
            per_master[port].append(name)
    return [q for names in per_master.values() for q in names][:count]


def redis_cpu_s(cluster: RedisClusterSet) -> list[float]:
    """CPU seconds (user + system) each master has used so far."""
    out = []
    for master in cluster.masters:
        with master.client() as client:
            info = client.info("cpu")
        out.append(float(info["used_cpu_user"]) + float(info["used_cpu_sys"]))
    return out


def run_one(masters: int, n: int) -> tuple[float, float]:
    """Drain N tasks on a cluster of ``masters``.

    Returns tasks/s from the first task done to the last, and the busiest master's share of
    the Redis CPU the drain used.
    """
    with RedisClusterSet(masters) as cluster:
        queues = spread_queues(cluster, QUEUES)
        env = {**os.environ, "OMNITASK_BROKER_URL": cluster.url, "PYTHONPATH": str(ROOT)}
        fill = (
            "from benchmarks.cluster_app import app, noop\n"
            "from omnitask.producer import Call\n"
            f"queues = {queues!r}\n"
            "for q_index, queue in enumerate(queues):\n"
            f"    mine = range(q_index, {n}, len(queues))\n"
            "    for start in range(0, len(mine), 1000):\n"
            "        calls = [Call.build(app, noop, (i,), {}, {'queue': queue})\n"
            "                 for i in mine[start:start + 1000]]\n"
            "        app.broker.enqueue(queue, [c.item for c in calls])\n"
        )
        subprocess.run([sys.executable, "-c", fill], env=env, check=True, cwd=ROOT)
        client = cluster_client(cluster.url, connect_timeout_s=2.0)
        cpu_before = redis_cpu_s(cluster)
        per = QUEUES // WORKERS
        workers = []
        for w in range(WORKERS):
            mine = ",".join(queues[w * per : (w + 1) * per])
            command = [sys.executable, "-m", "omnitask", "worker", "-A", "benchmarks.cluster_app"]
            command += ["-c", "1", "-Q", mine, "-l", "warning"]
            workers.append(
                subprocess.Popen(
                    command,
                    env=env,
                    cwd=ROOT,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        try:

            def done() -> int:
                pipe: Any = client.pipeline(transaction=False)  # type: ignore[no-untyped-call, unused-ignore]
                for queue in queues:
                    pipe.get(done_key(queue))
                return sum(int(v or 0) for v in pipe.execute())

            rate, _ = time_drain(done, n, f"{masters} master(s)", poll_s=0.01)
            used = [b - a for a, b in zip(cpu_before, redis_cpu_s(cluster), strict=True)]
            return rate, max(used) / max(sum(used), 1e-9)
        finally:
            for worker in workers:
                os.killpg(worker.pid, signal.SIGTERM)
            for worker in workers:
                worker.wait(30)
            client.close()


def main() -> None:
    """Run every size ``--repeat`` times, interleaved, and print the medians and ratios."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=12_000)
    parser.add_argument("--masters", default="1,2,3")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    sizes = [int(m) for m in args.masters.split(",")]
    rows: dict[int, list[float]] = {m: [] for m in sizes}
    for _ in range(args.repeat):
        for masters in sizes:  # interleaved, so every size sees the same neighbours
            rate, busiest = run_one(masters, args.n)
            rows[masters].append(rate)
            print(
                f"{masters} master(s): {rate:9,.0f} tasks/s  "
                f"(busiest master: {busiest:.0%} of the Redis CPU)",
                flush=True,
            )
    median = {m: sorted(rates)[len(rates) // 2] for m, rates in rows.items()}
    base = median[sizes[0]]
    print(f"\nmedian of {args.repeat}, N={args.n}, {QUEUES} queues, {WORKERS} workers -c 1:")
    for masters, rate in median.items():
        print(f"{masters} master(s): {rate:9,.0f} tasks/s  {rate / base:.2f}x {sizes[0]} master(s)")


if __name__ == "__main__":
    main()
