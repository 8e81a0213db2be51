"""``python -m sammed.worker``: a worker process speaking the protocol on stdin/stdout (see ``sammed.worker``)."""

from __future__ import annotations

import sys

from .process import main

if __name__ == "__main__":
    sys.exit(main())
