"""Drain throughput of async no-op tasks against sync ones, with real workers.

    .venv/bin/python benchmarks/drain_async.py [--n 20000] [--concurrency 2] [--repeat 1]

For each kind, a fresh redis-server on a free loopback port gets N tasks queued first, then
``omnitask worker -c 2`` starts; the figure is tasks per second from the first task done to the
last, as in the shared harness's drain workload. ``sync`` (``def``) and ``async`` (``async
def``) have the same body, one ``INCR`` through a sync redis-py client (the harness's no-op,
which blocks the event loop while it waits), so their difference is the worker's path, not the
task's. ``async-io`` does the INCR through redis-py's asyncio client, as an async task should,
so the loop runs other tasks while it waits. Ratios from one run are what matter: the
machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from omnitask.testing.server import RedisServer  # noqa: E402

APP = "benchmarks.drain_app"
KINDS = {"sync": "noop", "async": "anoop", "async-io": "anoop_io"}


def run_one(kind: str, n: int, concurrency: int) -> tuple[float, float]:
    """Return (tasks/s from first done to last, seconds from worker start to first done)."""
    with RedisServer() as server:
        env = {**os.environ, "OMNITASK_BROKER_URL": server.url, "PYTHONPATH": str(ROOT)}
        fill = (
            "from benchmarks.drain_app import anoop, anoop_io, noop\n"
            f"task = {KINDS[kind]}\n"
            f"for start in range(0, {n}, 1000):\n"
            f"    task.delay_many([(i,) for i in range(start, min({n}, start + 1000))])\n"
        )
        subprocess.run([sys.executable, "-c", fill], env=env, check=True, cwd=ROOT)
        r = redis.Redis.from_url(server.url)
        started = time.monotonic()
        worker = subprocess.Popen(
            [sys.executable, "-m", "omnitask", "worker", "-A", APP, "-c", str(concurrency),
             "-l", "warning"],
            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            first = last = None
            deadline = started + 300
            while time.monotonic() < deadline:
                done = int(r.get("bench:done") or 0)
                now = time.monotonic()
                if done and first is None:
                    first = (now, done)
                if done >= n:
                    last = now
                    break
                time.sleep(0.005)
            if first is None or last is None:
                raise RuntimeError(f"{kind}: drain did not finish")
            rate = (n - first[1]) / max(last - first[0], 1e-9)
            return rate, first[0] - started
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    rows: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for _ in range(args.repeat):
        for kind in rows:  # interleaved, so both see the same neighbours
            rate, startup = run_one(kind, args.n, args.concurrency)
            rows[kind].append(rate)
            print(f"{kind:>8}: {rate:9,.0f} tasks/s  (start-up {startup:.2f} s)", flush=True)
    median = {kind: sorted(rates)[len(rates) // 2] for kind, rates in rows.items()}
    print(f"\nmedian of {args.repeat}, N={args.n}, -c {args.concurrency}:")
    for kind, rate in median.items():
        print(f"{kind:>8}: {rate:9,.0f} tasks/s  {rate / median['sync']:.2f}x sync")


if __name__ == "__main__":
    main()
