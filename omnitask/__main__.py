"""``python -m omnitask`` runs the ``omnitask`` command."""

import sys

from omnitask.cli import main

if __name__ == "__main__":
    sys.exit(main())
