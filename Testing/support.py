"""Small helpers the tests share."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest


def require(module: str, hint: str) -> ModuleType:
    """Import ``module`` or fail loudly with ``hint``: the test command installs every test dependency, so a
    missing one is an error to fix, never a reason to skip tests quietly."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pytest.fail(f"{module} is missing ({exc}); {hint}", pytrace=False)
