"""SAMassist: per-case prompt-encoder learning from a few annotated slices.

``config`` (settings) and ``sampling`` (simulated prompts) are numpy only; ``train`` (the fit and the engine hook)
and ``store`` (save/load) import torch. The names below load their submodule on first use, so ``import
sammed.assist`` and ``AssistConfig`` do not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING
from typing import Any

_EXPORTS = {
    "PROMPT_KINDS": "config",
    "SAMPLING_SCHEMES": "config",
    "AssistConfig": "config",
    "annotations_from_labels": "sampling",
    "FORMAT": "store",
    "FORMAT_VERSION": "store",
    "default_path": "store",
    "fit_and_save": "store",
    "load_for": "store",
    "load_learned": "store",
    "read_metadata": "store",
    "save_learned": "store",
    "LearnedPromptEncoder": "train",
    "RoutedPromptEncoder": "train",
    "attach": "train",
    "detach": "train",
    "fit_prompt_encoder": "train",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .config import PROMPT_KINDS as PROMPT_KINDS
    from .config import SAMPLING_SCHEMES as SAMPLING_SCHEMES
    from .config import AssistConfig as AssistConfig
    from .sampling import annotations_from_labels as annotations_from_labels
    from .store import FORMAT as FORMAT
    from .store import FORMAT_VERSION as FORMAT_VERSION
    from .store import default_path as default_path
    from .store import fit_and_save as fit_and_save
    from .store import load_for as load_for
    from .store import load_learned as load_learned
    from .store import read_metadata as read_metadata
    from .store import save_learned as save_learned
    from .train import LearnedPromptEncoder as LearnedPromptEncoder
    from .train import RoutedPromptEncoder as RoutedPromptEncoder
    from .train import attach as attach
    from .train import detach as detach
    from .train import fit_prompt_encoder as fit_prompt_encoder


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sammed.assist' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
