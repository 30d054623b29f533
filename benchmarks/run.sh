#!/usr/bin/env bash
# Run the shared benchmark harness (../shared/bench, or $BENCH_DIR) for omnitask beside its
# peers, in one run, with the interpreter of this repo's .venv. Extra arguments go to bench.py.
#
#   bash benchmarks/run.sh                               # omnitask, celery, raw; all workloads
#   bash benchmarks/run.sh --peer omnitask,celery,rq,dramatiq,huey,raw --repeat 3
#
# Peer venvs come from "bash ../shared/bench/setup-peers.sh" (once). Results land in
# bench-out/ (git-ignored) as JSON and Markdown.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bench="${BENCH_DIR:-../shared/bench}"
if [ ! -f "$bench/bench.py" ]; then
  echo "benchmarks: no harness at $bench (set BENCH_DIR)" >&2
  exit 2
fi
mkdir -p bench-out
stamp=$(date -u +%Y%m%dT%H%M%SZ)
peers=(--peer omnitask,celery,raw)
for arg in "$@"; do
  if [ "$arg" = "--peer" ] || [[ "$arg" == --peer=* ]]; then peers=(); fi
done
export OMNITASK_BENCH_PYTHON="${OMNITASK_BENCH_PYTHON:-$PWD/.venv/bin/python}"
exec "$OMNITASK_BENCH_PYTHON" "$bench/bench.py" "${peers[@]}" \
  --json "bench-out/bench-$stamp.json" --markdown "bench-out/bench-$stamp.md" "$@"
