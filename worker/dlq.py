"""``python -m worker.dlq`` (and ``autopilot-dlq``): the parking-lot tool. It reads and moves
messages on the broker only, so it lives in ``shared.dlq``, where the console reads it too."""

from __future__ import annotations

import sys

from shared.dlq import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
