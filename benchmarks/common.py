"""What every benchmark script shares: percentiles and writing its result (JSON file + the same on stdout)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def pct(values, q) -> float:
    """The ``q``-th percentile of ``values`` as a float."""
    return float(np.percentile(values, q))


def write_result(result: dict, out: str | Path) -> int:
    """Write ``result`` as JSON to ``out`` (folders made), print it, and return the exit code 0."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0
