#!/usr/bin/env bash
# Run the shared benchmark harness (../shared/bench, or $BENCH_DIR) for omnitask beside its
# peers, in one run, with the interpreter of this repo's .venv; then this repository's own
# workloads (benchmarks/extra.py: drain scaling and prefetch, async drain, start-up, memory
# at 100,000 queued, worker resident memory). Extra arguments go to bench.py.
#
#   bash benchmarks/run.sh                               # omnitask, celery, raw; every workload
#   bash benchmarks/run.sh --peer omnitask,celery,rq,dramatiq,huey,raw --repeat 3
#   OMNITASK_BENCH_EXTRA=0 bash benchmarks/run.sh ...    # the harness only
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
"$OMNITASK_BENCH_PYTHON" "$bench/bench.py" "${peers[@]}" \
  --json "bench-out/bench-$stamp.json" --markdown "bench-out/bench-$stamp.md" "$@"
if [ "${OMNITASK_BENCH_EXTRA:-1}" != 0 ]; then
  "$OMNITASK_BENCH_PYTHON" benchmarks/extra.py --json "bench-out/extra-$stamp.json" \
    | tee "bench-out/extra-$stamp.md"
fi
