"""Tests of the Slicer-side Lib code against real MRML from the PyPI package ``slicer-core`` (no app, no Qt)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
from support import require

require("slicer", "real MRML needs slicer-core: run bash scripts/test.sh (pip install slicer-core)")

ROOT = Path(__file__).resolve().parents[2]


class FakeTimer:
    """``qt.QTimer`` as far as the effect uses it: started or not; tests call the connected slot themselves."""

    def __init__(self) -> None:
        self.active, self.slot = False, None

    def setInterval(self, ms: int) -> None:
        self.interval = ms

    def connect(self, signal: str, slot) -> None:
        self.slot = slot

    def start(self) -> None:
        self.active = True

    def stop(self) -> None:
        self.active = False


@pytest.fixture
def app_stubs(monkeypatch):
    """The app-only modules the effect file imports (Qt, the editor's base class, translations), as stubs."""

    class AbstractScriptedSegmentEditorEffect:
        def __init__(self, scriptedEffect=None):
            self.scriptedEffect = scriptedEffect

    qt = types.ModuleType("qt")
    qt.QTimer = FakeTimer
    monkeypatch.setitem(sys.modules, "qt", qt)
    effects = types.ModuleType("SegmentEditorEffects")
    effects.AbstractScriptedSegmentEditorEffect = AbstractScriptedSegmentEditorEffect
    monkeypatch.setitem(sys.modules, "SegmentEditorEffects", effects)
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    monkeypatch.setitem(sys.modules, "slicer.i18n", i18n)
    for name in [m for m in sys.modules if m.startswith("SegmentEditorSAMMedLib")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(ROOT))
    yield
    for name in [m for m in sys.modules if m.startswith("SegmentEditorSAMMedLib")]:
        del sys.modules[name]  # imported against the stubs: not for other tests
