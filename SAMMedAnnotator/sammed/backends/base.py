"""The backend protocol shared by real models and the analytic fake used in tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol
from typing import runtime_checkable

import numpy as np


@dataclass
class Prompts:
    """Prompts on one slice, in that slice's model-image pixel frame.

    Attributes:
        points_xy: Nx2 float (x = column, y = row) or None.
        point_labels: N int, 1 positive / 0 negative, or None.
        box_xyxy: (4,) float XYXY or None.
        mask_input: 256x256 float32 low-res logits from an earlier decode on the same slice, or None.
    """

    points_xy: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    box_xyxy: np.ndarray | None = None
    mask_input: np.ndarray | None = None

    @property
    def empty(self) -> bool:
        return self.box_xyxy is None and (self.points_xy is None or len(self.points_xy) == 0)


@dataclass
class DecodeResult:
    """Output of one decode.

    Attributes:
        logits_hw: HxW float32 mask logits on the requested output grid (mask = logits > 0).
        iou: the model's predicted IoU of the chosen mask (nan if the model has no IoU head).
        low_res_logits: 256x256 float32 logits to feed back as ``Prompts.mask_input``.
    """

    logits_hw: np.ndarray
    iou: float
    low_res_logits: np.ndarray

    @property
    def mask_hw(self) -> np.ndarray:
        return self.logits_hw > 0


@runtime_checkable
class Backend(Protocol):
    """What the segmenter needs from a model.

    Attributes:
        model_id: registry id (part of the cache key).
        preprocessing_id: names the backend's own pre-processing (size, normalisation); part of the cache key.
        embedding_shape: shape of one embedding (C, h, w).
        weights_sha256: SHA256 of the loaded weights ("" for models without a file).
    """

    model_id: str
    preprocessing_id: str
    embedding_shape: tuple[int, int, int]
    weights_sha256: str

    def encode(self, image_hw3: np.ndarray) -> np.ndarray:
        """Encode an HxWx3 uint8 image (already intensity-mapped, square pixels) to a CxHxW float32 embedding."""

    def decode(
        self,
        embedding: np.ndarray,
        prompts: Prompts,
        image_shape_hw: tuple[int, int],
        output_shape_hw: tuple[int, int],
        multimask: bool | None = None,
        prompt_encoder=None,
    ) -> DecodeResult:
        """Decode prompts on an embedding of an ``image_shape_hw`` image; logits resized to ``output_shape_hw``."""
