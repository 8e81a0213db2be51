"""The generators: name -> runner. SAMMed Auto's choices and ``sammed propagate --generator`` come from here."""

from __future__ import annotations

from collections.abc import Callable

from .run import Context
from .sapnet import run_sapnet
from .sliding import run_sliding
from .threshold import run_threshold

GENERATORS: dict[str, Callable[[Context], None]] = {
    "sliding": run_sliding,
    "threshold": run_threshold,
    "sapnet": run_sapnet,
}
