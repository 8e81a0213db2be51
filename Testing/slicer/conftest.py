"""Tests of the Slicer-side Lib code against real MRML from the PyPI package ``slicer-core`` (no app, no Qt)."""

from __future__ import annotations

from support import require

require("slicer", "real MRML needs slicer-core: run bash scripts/test.sh (pip install slicer-core)")
