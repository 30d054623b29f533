#!/usr/bin/env bash
# One command for a fresh clone: make .venv (first run only), install omnitask into it, and
# run the quickstart: a real worker running the example tasks end to end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import omnitask" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e .
fi
exec .venv/bin/python examples/quickstart.py "$@"
