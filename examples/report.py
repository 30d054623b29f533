"""A long report job that reports its progress, and a client that draws a progress bar.

Start a worker, then this program, both in the examples folder:

    cd examples
    omnitask worker -A report -c 2
    python report.py [--chunks 20]

Both use the Redis at $OMNITASK_BROKER_URL (default redis://localhost:6379/0). The task
``build_report`` works through its chunks (0.3 s each: 6 s for the default 20), reports its
progress after each with ``self.progress(done, total)``, writes the report to a CSV file and
returns a summary. The client polls ``result.poll()`` (state and info from one read) until
the task is done.
webapp.py serves the same task over HTTP.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path
from typing import TypedDict

from omnitask import AsyncResult, OmniTask, Task

app = OmniTask("reports")

CHUNK_S = 0.3
"""The pretend work of one chunk, in seconds."""


class Summary(TypedDict):
    """What a report returns: a dict on the wire, typed here."""

    chunks: int
    rows: int
    path: str


def crunch(chunk: int) -> list[tuple[int, int]]:
    """Stand-in for the real work on one chunk (a query, some maths): its rows."""
    time.sleep(CHUNK_S)
    return [(chunk, chunk * 1000 + i) for i in range(100)]


@app.task(bind=True, time_limit=600)
def build_report(self: Task[[int], Summary], chunks: int = 20) -> Summary:
    """Build the report chunk by chunk, telling callers how far it got."""
    path = Path(tempfile.gettempdir()) / f"report-{self.request.id}.csv"
    rows = 0
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["chunk", "value"])
        self.progress(0, chunks)  # started: the state leaves PENDING at once
        for done in range(1, chunks + 1):
            batch = crunch(done)
            writer.writerows(batch)
            rows += len(batch)
            self.progress(done, chunks)  # state PROGRESS, info {"current": done, "total": chunks}
    return {"chunks": chunks, "rows": rows, "path": str(path)}


# -- the client ------------------------------------------------------------------------------


def bar(current: float, total: float, width: int = 30) -> str:
    """``[#########.....] 9/20``."""
    filled = round(width * current / total) if total else 0
    return f"[{'#' * filled}{'.' * (width - filled)}] {current:g}/{total:g}"


def follow(result: AsyncResult[Summary], every_s: float = 0.2) -> Summary:
    """Draw the task's progress until it is done; return its summary (or raise its error)."""
    while True:
        # PENDING (queued), PROGRESS, then SUCCESS or FAILURE; both from one read.
        state, info = result.poll()
        if state in ("SUCCESS", "FAILURE", "REVOKED"):
            break
        line = bar(info["current"], info["total"]) if state == "PROGRESS" and info else state
        print(f"\r{line:<45}", end="", flush=True)
        time.sleep(every_s)
    print(f"\r{state:<45}")
    return result.get(timeout=5)


def main() -> None:
    """Send a report to a worker and follow it to the end."""
    parser = argparse.ArgumentParser(description="Run a report on a worker, with progress.")
    parser.add_argument("--chunks", type=int, default=20, help="chunks to process (0.3 s each)")
    args = parser.parse_args()
    started = time.perf_counter()
    result = build_report.delay(args.chunks)
    print(f"report {result.id} sent")
    summary = follow(result)
    elapsed = time.perf_counter() - started
    print(f"{summary['rows']} rows written to {summary['path']} in {elapsed:.1f} s")
    app.close()


if __name__ == "__main__":
    main()
