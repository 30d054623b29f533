#!/usr/bin/env bash
# One command for a fresh clone: make .venv (first run only), install omnitask into it, and
# run the quickstart: a real worker running the example tasks end to end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# Checked from / : in the repository root, "import omnitask" finds the source folder even when
# nothing is installed, and the demo would then fail on its first third-party import.
if ! (cd / && "$repo/.venv/bin/python" -c "import omnitask, redis, msgspec" 2>/dev/null); then
  # pip older than 21.3 cannot install a pyproject-only project in editable mode: upgrade it
  # then, and only then. A failing install stops here, with pip's own message.
  install() { .venv/bin/python -m pip install --quiet "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }
  install -e . || { install --upgrade pip && install -e .; }
fi
exec .venv/bin/python examples/quickstart.py "$@"
