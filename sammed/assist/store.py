"""SAMassist files: a learned prompt encoder saved as a small self-describing torch file, loaded back safely.

The file holds its format and version, the base model id and SHA256, the volume digest (``population`` for the
population encoder, ``population.py``), target, slices, the route of a box alone, the fit's settings and loss
history (JSON-compatible values) and the state dict; it is read with ``weights_only=True``.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

import numpy as np
import torch

from ..jobs import ProgressFn
from ..jobs import StopFn
from ..outputs import Outputs
from .config import AssistConfig
from .train import LearnedPromptEncoder
from .train import attach
from .train import check_backend
from .train import check_base
from .train import fit_prompt_encoder
from .train import frozen
from .train import new_routed

if TYPE_CHECKING:
    from ..segmenter import Segmenter


FORMAT = "sammed-assist"
FORMAT_VERSION = 1
LEARNED_SUFFIXES = (".pt",)


def default_path(folder: str | os.PathLike, volume_digest: str, target: str, model_id: str) -> Path:
    """Where the learned encoder of (volume, target, model) lives in ``folder``."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{target}__{model_id}")
    return Path(folder) / f"{volume_digest[:24]}__{safe}.pt"


def save_learned(learned: LearnedPromptEncoder, path: str | os.PathLike) -> Path:
    """Write ``learned`` as a self-describing torch file (atomic: temporary file, then rename).

    The file holds ``format``, ``format_version``, ``base_model_id``, ``base_model_sha256``, ``volume_digest``,
    ``target``, ``axis``, ``slices``, ``preprocessing_id``, ``config``, ``history``, ``seconds``, ``created``
    (JSON-compatible values) and ``state_dict`` (tensors).

    Raises:
        ValueError: not a ``.pt`` name, a folder that is missing or not writable (``outputs.Outputs``).
    """
    outputs = Outputs([])
    path = outputs.add(path, LEARNED_SUFFIXES, "learned prompt encoder")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "encoder_layout": "routed: points (no box) / boxes (box, with or without points)",
        "box_alone": "original" if getattr(learned.module, "original", None) is not None else "boxes",
        "base_model_id": learned.model_id,
        "base_model_sha256": learned.sha256,
        "volume_digest": learned.volume_digest,
        "target": learned.target,
        "axis": int(learned.axis),
        "slices": [int(s) for s in learned.slices],
        "preprocessing_id": learned.preprocessing_id,
        "config": learned.config,
        "history": [float(v) for v in learned.history],
        "seconds": float(learned.seconds),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "state_dict": {k: v.detach().cpu().clone() for k, v in learned.module.state_dict().items()},
    }
    with outputs.commit() as temps:
        torch.save(payload, temps[path])
    return path


def read_metadata(path: str | os.PathLike) -> dict:
    """The file's metadata (everything but the state dict), for listing without a model.

    Raises:
        ValueError: missing file, not a SAMassist file, or a newer format version.
    """
    payload = _read(path)
    return {k: v for k, v in payload.items() if k != "state_dict"}


def _read(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"No SAMassist file at '{path}'.")
    try:
        payload = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"Cannot read SAMassist file '{path}': {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "state_dict" not in payload:
        raise ValueError(f"'{path}' is not a SAMassist file.")
    if int(payload.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(
            f"'{path}' has SAMassist format version {payload['format_version']}; this sammed reads up to "
            f"{FORMAT_VERSION}. Update sammed."
        )
    return payload


def load_learned(path: str | os.PathLike, backend: Any) -> LearnedPromptEncoder:
    """Load a learned prompt encoder for ``backend``.

    Raises:
        ValueError: not a SAMassist file, or learned with another base model (id or SHA256 differ).
    """
    check_backend(backend)
    payload = _read(path)
    learned = LearnedPromptEncoder(
        module=None,  # type: ignore[arg-type]
        model_id=str(payload["base_model_id"]),
        sha256=str(payload["base_model_sha256"]),
        volume_digest=str(payload["volume_digest"]),
        target=str(payload["target"]),
        axis=int(payload["axis"]),
        slices=[int(s) for s in payload["slices"]],
        preprocessing_id=str(payload.get("preprocessing_id", "")),
        config=dict(payload.get("config", {})),
        history=[float(v) for v in payload.get("history", [])],
        seconds=float(payload.get("seconds", 0.0)),
    )
    check_base(learned, backend)
    module = new_routed(backend)
    try:
        module.load_state_dict(payload["state_dict"], strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ValueError(f"SAMassist file '{path}' does not fit this model: {str(exc).splitlines()[0]}") from None
    if payload.get("box_alone") == "original":  # a population encoder whose box copy was not better for boxes
        module.route_box_alone_to(backend.model.prompt_encoder)
    learned.module = frozen(module)
    return learned


def load_for(segmenter: Segmenter, target: str, folder: str | os.PathLike) -> LearnedPromptEncoder | None:
    """Load and attach the learned encoder of (this volume, ``target``, this model) from ``folder`` if present.

    Returns:
        the attached ``LearnedPromptEncoder``, or None when there is none (the segmenter is left unchanged).
    """
    path = default_path(folder, segmenter.volume.digest, target, segmenter.backend.model_id)
    if not path.is_file():
        return None
    learned = load_learned(path, segmenter.backend)
    attach(segmenter, learned)
    return learned


def fit_and_save(
    segmenter: Segmenter,
    masks: Mapping[int, np.ndarray],
    path: str | os.PathLike,
    axis: int = 0,
    target: str = "target",
    config: AssistConfig | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> LearnedPromptEncoder:
    """``fit_prompt_encoder`` then ``save_learned``; a cancelled or failed fit writes nothing."""
    path = Outputs([]).add(path, LEARNED_SUFFIXES, "learned prompt encoder")
    learned = fit_prompt_encoder(segmenter, masks, axis, target, config, progress, should_stop)
    save_learned(learned, path)
    return learned
