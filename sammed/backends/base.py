"""What every backend shares: the backend protocol, the decode result, and the one map slice <-> model input.

``ModelInputGeometry`` is the only place that knows how a slice becomes the model's input and back: the slice is
resampled to square pixels (``geometry.SliceGrid``), its longest side scaled to the model's ``image_size`` and the
image padded at the bottom/right to a square. Prompts (``prompts_to_input``), the encoder's resize, the crop of
the decoder's output, the part of an embedding that covers the slice (stop rules, SAP-Net) and SAMassist's
training targets all go through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from typing import Protocol
from typing import runtime_checkable

import numpy as np

from ..geometry import SliceGrid
from ..prompts import Prompts


@dataclass(frozen=True)
class ModelInputGeometry:
    """Slice pixels <-> the model's input for one slice grid.

    slice (H x W) -> ``grid.to_model_image`` -> model image (mh x mw, square pixels) -> scaled by ``scale`` to
    ``resized_shape_hw`` (nh x nw) -> zero-padded bottom/right to ``image_size`` x ``image_size``.

    Attributes:
        grid: the slice's grid (shape and pixel spacing).
        image_size: side of the model's square input (LiteMedSAM 256, SAM 1024); None when the model takes the
            model image as it is (the analytic fake backend).
    """

    grid: SliceGrid
    image_size: int | None

    @property
    def shape_hw(self) -> tuple[int, int]:
        """The slice's own (H, W): model outputs are mapped back to it."""
        return (int(self.grid.shape_hw[0]), int(self.grid.shape_hw[1]))

    @property
    def scale(self) -> float:
        """Model-image pixels -> input pixels."""
        return 1.0 if self.image_size is None else self.image_size / max(self.grid.model_shape_hw)

    @property
    def resized_shape_hw(self) -> tuple[int, int]:
        """(nh, nw): the part of the input the slice covers."""
        mh, mw = self.grid.model_shape_hw
        if self.image_size is None:
            return mh, mw
        s = self.scale
        return int(mh * s + 0.5), int(mw * s + 0.5)

    @property
    def input_shape_hw(self) -> tuple[int, int]:
        """(H, W) of the model input (square for SAM-family models)."""
        return self.resized_shape_hw if self.image_size is None else (self.image_size, self.image_size)

    def points_to_input(self, points_xy: np.ndarray) -> np.ndarray:
        """Nx2 (x, y) slice pixels -> input pixels (pixel centres, see ``SliceGrid.points_to_model``)."""
        return self.grid.points_to_model(points_xy) * self.scale

    def box_to_input(self, box_xyxy: np.ndarray) -> np.ndarray:
        """XYXY box of inclusive slice pixels -> input pixels through the outer pixel edges."""
        return self.grid.box_to_model(box_xyxy) * self.scale

    def prompts_to_input(self, prompts: Prompts) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """The one conversion of slice-pixel prompts to the model's input frame (inference and SAMassist training).

        Returns:
            (points Nx2 float32 or None, labels N int64 or None, box (4,) float32 or None), in input pixels.
        """
        points, labels, box = None, None, None
        if prompts.points_xy is not None and len(prompts.points_xy):
            points = self.points_to_input(prompts.points_xy).astype(np.float32)
            raw = prompts.point_labels if prompts.point_labels is not None else np.ones(len(points))
            labels = np.asarray(raw, dtype=np.int64)
        if prompts.box_xyxy is not None:
            box = self.box_to_input(prompts.box_xyxy).astype(np.float32)
        return points, labels, box

    def valid_cells(self, map_shape_hw: tuple[int, int]) -> tuple[int, int]:
        """(h, w): the top-left cells of a map over the whole input (an embedding, low-res logits) that cover the
        slice, for a map of ``map_shape_hw`` cells."""
        gh, gw = map_shape_hw
        nh, nw = self.resized_shape_hw
        ih, iw = self.input_shape_hw
        return max(1, round(gh * nh / ih)), max(1, round(gw * nw / iw))

    def crop_to_slice(self, map_chw: np.ndarray) -> np.ndarray:
        """The part of a C x h' x w' map over the whole input (e.g. an embedding) that covers the slice."""
        h, w = self.valid_cells(map_chw.shape[-2:])
        return map_chw[..., :h, :w]


def model_input_geometry(
    shape_hw: tuple[int, int], spacing_rc: tuple[float, float], image_size: int | None
) -> ModelInputGeometry:
    """The ``ModelInputGeometry`` of a slice of ``shape_hw`` with (row, column) pixel size ``spacing_rc`` in mm."""
    grid = SliceGrid((int(shape_hw[0]), int(shape_hw[1])), (float(spacing_rc[0]), float(spacing_rc[1])))
    return ModelInputGeometry(grid, image_size)


@dataclass
class DecodeResult:
    """Output of one decode.

    Attributes:
        logits_hw: HxW float32 mask logits on the slice grid (mask = logits > 0).
        iou: the model's predicted IoU of the chosen mask (nan if the model has no IoU head).
        low_res_logits: 256x256 float32 logits to feed back as ``Prompts.mask_input``.
    """

    logits_hw: np.ndarray
    iou: float
    low_res_logits: np.ndarray

    @property
    def mask_hw(self) -> np.ndarray:
        """HxW bool mask."""
        return self.logits_hw > 0


@runtime_checkable
class Backend(Protocol):
    """What the segmenter needs from a model.

    Attributes:
        model_id: registry id (part of the cache key).
        preprocessing_id: names the backend's own pre-processing (size, normalisation); part of the cache key.
        image_size: side of the square model input, or None (see ``ModelInputGeometry``).
        embedding_shape: shape of one embedding (C, h, w).
        weights_sha256: SHA256 of the loaded weights ("" for models without a file).
    """

    model_id: str
    preprocessing_id: str
    image_size: int | None
    embedding_shape: tuple[int, int, int]
    weights_sha256: str

    def encode(self, image_hw3: np.ndarray) -> np.ndarray:
        """Encode an HxWx3 uint8 model image (intensity-mapped, square pixels) to a CxHxW float32 embedding."""
        ...

    def decode(
        self,
        embedding: np.ndarray,
        prompts: Prompts,
        geometry: ModelInputGeometry,
        multimask: bool | None = None,
        prompt_encoder: Any = None,
    ) -> DecodeResult:
        """Decode checked slice-pixel ``prompts`` on the embedding of the slice that ``geometry`` describes."""
        ...
