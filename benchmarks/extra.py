"""The workloads the shared harness lacks, each beside a bare redis-py loop in the same run.

    .venv/bin/python benchmarks/extra.py [--n 20000] [--memory-n 100000] [--concurrency 1,2,4]

- drain: N no-op tasks queued first, then ``omnitask worker -c C`` starts; tasks per second
  from the first task done to the last (as the harness's drain), for C in ``--concurrency``
  (the scaling curve), for sync tasks with the defaults, sync tasks with ``--prefetch 10``,
  async tasks whose body blocks the loop (the harness's INCR through a sync client) and async
  tasks that await an asyncio INCR. The raw row is C plain processes running the shared
  harness's raw loop (BRPOP, decode the JSON, INCR).
- start-up: seconds from starting the worker to its first task done (the sync rows).
- memory: Redis ``used_memory`` growth per queued task with ``--memory-n`` tasks queued, no
  worker (omnitask through ``delay_many``; raw: the harness's JSON through LPUSH).
- worker memory: resident memory (VmRSS) of each child and of the supervisor after a drain.

Every run gets a fresh redis-server on a free loopback port. The machine is shared and noisy:
read the ratios within one run. ``--json FILE`` keeps the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.drain import time_drain  # noqa: E402
from omnitask.testing.server import RedisServer  # noqa: E402

# kind -> (app module, task, worker flags)
KINDS = {
    "sync": ("benchmarks.drain_app", "noop", ()),
    "sync --prefetch 10": ("benchmarks.drain_app", "noop", ("--prefetch", "10")),
    "async": ("benchmarks.drain_async_app", "anoop", ()),
    "async-io": ("benchmarks.drain_async_app", "anoop_io", ()),
}
# The shared harness's raw worker, the same loop: BRPOP with a timeout, decode the JSON, INCR.
RAW_WORKER = (
    "import json, os, redis\n"
    "r = redis.Redis.from_url(os.environ['OMNITASK_BROKER_URL'])\n"
    "while True:\n"
    "    item = r.brpop('raw:q', timeout=1)\n"
    "    if item is not None and json.loads(item[1])['f'] == 'noop':\n"
    "        r.incr('bench:done')\n"
)


def _env(url: str) -> dict[str, str]:
    return {**os.environ, "OMNITASK_BROKER_URL": url, "PYTHONPATH": str(ROOT)}


def _fill(url: str, module: str, task: str, n: int) -> None:
    """Queue ``n`` calls of ``task`` (raw: JSON through LPUSH) in batches of 1000."""
    if task == "raw":
        r = redis.Redis.from_url(url)
        for start in range(0, n, 1000):
            batch = range(start, min(n, start + 1000))
            r.lpush("raw:q", *[json.dumps({"f": "noop", "a": [i], "id": None}) for i in batch])
        r.close()
        return
    code = (
        f"from {module} import {task} as task\n"
        f"for start in range(0, {n}, 1000):\n"
        f"    task.delay_many([(i,) for i in range(start, min({n}, start + 1000))])\n"
    )
    subprocess.run([sys.executable, "-c", code], env=_env(url), check=True, cwd=ROOT)


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def drain(kind: str, n: int, concurrency: int) -> dict[str, Any]:
    """One drain run: its rate, start-up and (for a worker) resident memory."""
    with RedisServer() as server:
        module, task, flags = ("", "raw", ()) if kind == "raw" else KINDS[kind]
        _fill(server.url, module, task, n)
        r = redis.Redis.from_url(server.url)
        started = time.monotonic()
        if kind == "raw":
            procs = [
                subprocess.Popen([sys.executable, "-c", RAW_WORKER], env=_env(server.url),
                                 start_new_session=True)
                for _ in range(concurrency)
            ]  # fmt: skip
        else:
            command = [sys.executable, "-m", "omnitask", "worker", "-A", module,
                       "-c", str(concurrency), "-l", "warning", *flags]  # fmt: skip
            procs = [
                subprocess.Popen(command, env=_env(server.url), cwd=ROOT,
                                 stdout=subprocess.DEVNULL, start_new_session=True)
            ]  # fmt: skip
        try:
            rate, startup = time_drain(
                lambda: int(r.get("bench:done") or 0), n, f"{kind} -c {concurrency}",
                started=started,
            )  # fmt: skip
            row: dict[str, Any] = {
                "kind": kind,
                "concurrency": concurrency,
                "rate": rate,
                "startup_s": startup,
            }
            if kind != "raw":
                supervisor = procs[0].pid
                row["rss_children_kib"] = [_rss_kib(p) for p in _children(supervisor)]
                row["rss_supervisor_kib"] = _rss_kib(supervisor)
            return row
        finally:
            for proc in procs:
                os.killpg(proc.pid, signal.SIGTERM)
            for proc in procs:
                proc.wait(30)
            r.close()


def memory(n: int) -> dict[str, float]:
    """Bytes of Redis memory per queued task, for omnitask and for raw."""
    out = {}
    for kind, task in (("omnitask", "noop"), ("raw", "raw")):
        with RedisServer() as server:
            r = redis.Redis.from_url(server.url)
            before = int(r.info("memory")["used_memory"])
            _fill(server.url, "benchmarks.drain_app", task, n)
            out[kind] = (int(r.info("memory")["used_memory"]) - before) / n
            r.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="tasks per drain run")
    parser.add_argument("--memory-n", type=int, default=100_000, help="tasks for memory")
    parser.add_argument("--concurrency", default="1,2,4", help="worker processes per run")
    parser.add_argument("--kinds", default=",".join(["raw", *KINDS]), help="drain rows")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    kinds = [k.strip() for k in args.kinds.split(",")]
    rows = []
    for c in levels:
        for kind in kinds:  # interleaved, so every row of a level sees the same neighbours
            row = drain(kind, args.n, c)
            rows.append(row)
            print(f"{kind:>20} -c {c}: {row['rate']:9,.0f} tasks/s  start-up "
                  f"{row['startup_s']:.2f} s", file=sys.stderr, flush=True)  # fmt: skip
    mem = memory(args.memory_n)
    raw = {row["concurrency"]: row["rate"] for row in rows if row["kind"] == "raw"}
    print(f"\n### drain, N = {args.n:,} no-op tasks (tasks/s after the first; vs raw)\n")
    print("| row | " + " | ".join(f"-c {c}" for c in levels) + " | start-up s |")
    print("|---|" + "---:|" * (len(levels) + 1))
    for kind in kinds:
        cells = []
        for c in levels:
            row = next(r for r in rows if r["kind"] == kind and r["concurrency"] == c)
            ratio = f" ({row['rate'] / raw[c]:.2f}x)" if c in raw and kind != "raw" else ""
            cells.append(f"{row['rate']:,.0f}{ratio}")
        startups = sorted(r["startup_s"] for r in rows if r["kind"] == kind)
        print(f"| {kind} | " + " | ".join(cells) + f" | {startups[len(startups) // 2]:.2f} |")
    print(f"\n### memory, {args.memory_n:,} tasks queued (bytes per task)\n")
    print(f"| omnitask | raw | ratio |\n|---:|---:|---:|\n| {mem['omnitask']:.0f} | "
          f"{mem['raw']:.0f} | {mem['omnitask'] / mem['raw']:.2f}x |")  # fmt: skip
    sync = [r for r in rows if r["kind"] == "sync"]
    if sync:
        print("\n### worker resident memory after a sync drain (KiB)\n")
        print("| -c | supervisor | each child |\n|---:|---:|---|")
        for row in sync:
            children = ", ".join(f"{k:,}" for k in row["rss_children_kib"])
            print(f"| {row['concurrency']} | {row['rss_supervisor_kib']:,} | {children} |")
    if args.json:
        args.json.write_text(json.dumps({"drain": rows, "memory": mem}, indent=2))


if __name__ == "__main__":
    main()
