"""The one prompt type: a box, positive/negative points and an earlier mask on one slice, in slice pixels.

Every caller (CLI, Slicer modules, propagation, SAMassist, evaluation) builds a ``Prompts`` in the slice's own pixel
frame (``geometry.extract_slice`` layout, points ``(x, y) = (column, row)``, boxes XYXY of inclusive pixels).
``Segmenter.segment`` validates it once against the slice (``checked``); the backends map it to their model input
with ``backends.base.ModelInputGeometry.prompts_to_input``, which SAMassist's training uses too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from . import geometry

NO_PROMPT = "Give a box or at least one point to segment."


@dataclass(frozen=True, eq=False)
class Prompts:
    """Prompts on one slice.

    Attributes:
        box_xyxy: (4,) float64 XYXY box of inclusive slice pixels, or None.
        points_xy: Nx2 float64 (x = column, y = row) slice pixels, or None.
        point_labels: N int64, 1 positive / 0 negative, or None (with ``points_xy``: all positive).
        mask_input: 256x256 float32 low-res logits of an earlier result on this slice (``SliceResult.low_res_logits``),
            or None.
    """

    box_xyxy: np.ndarray | None = None
    points_xy: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    mask_input: np.ndarray | None = None

    @classmethod
    def make(
        cls,
        box_xyxy: ArrayLike | None = None,
        points_xy: ArrayLike | None = None,
        point_labels: ArrayLike | None = None,
        mask_input: ArrayLike | None = None,
    ) -> Prompts:
        """Prompts from array-likes; points without labels are positive, an empty point list means no points.

        Raises:
            ValueError: a box, points or mask_input that are not numbers.
        """
        box = None if box_xyxy is None else _numbers(box_xyxy, np.float64, "A box").reshape(-1)
        pts, labels = None, None
        if points_xy is not None and np.size(points_xy):
            pts = _numbers(points_xy, np.float64, "Points")
            pts = pts.reshape(-1, 2) if pts.size % 2 == 0 else pts.reshape(-1)
            labels = np.ones(len(pts), np.int64) if point_labels is None else np.asarray(point_labels).reshape(-1)
        mask = None if mask_input is None else _numbers(mask_input, np.float32, "mask_input")
        return cls(box, pts, labels, mask)

    @property
    def empty(self) -> bool:
        """True when there is neither a box nor a point."""
        return self.box_xyxy is None and self.points_xy is None

    def checked(self, shape_hw: tuple[int, int]) -> Prompts:
        """These prompts validated against a slice of ``shape_hw``; the box clipped to the slice.

        Raises:
            ValueError: no prompt, a box of the wrong length, with zero area or outside the slice, points outside it
                or with labels other than 0/1, a ``mask_input`` that is not 256x256 finite logits.
        """
        if self.empty:
            raise ValueError(NO_PROMPT)
        box = None if self.box_xyxy is None else geometry.check_box(self.box_xyxy, shape_hw)
        pts, labels = None, None
        if self.points_xy is not None:
            labels_in = np.ones(len(self.points_xy)) if self.point_labels is None else self.point_labels
            pts, labels = geometry.check_points(self.points_xy, labels_in, shape_hw)
        mask = self.mask_input
        if mask is not None and (mask.shape[-2:] != (256, 256) or mask.size != 256 * 256):
            raise ValueError(
                f"mask_input has shape {mask.shape}; it must be the 256x256 low_res_logits of an earlier result."
            )
        if mask is not None and not np.isfinite(mask).all():
            raise ValueError("mask_input has NaN or infinite values; pass the low_res_logits of an earlier result.")
        return Prompts(box, pts, labels, mask)

    def to_json(self) -> dict:
        """``{"box": [...]}`` and/or ``{"points": [[x, y], ...], "labels": [...]}`` (rounded slice pixels)."""
        out: dict = {}
        if self.box_xyxy is not None:
            out["box"] = [round(float(v), 2) for v in self.box_xyxy]
        if self.points_xy is not None:
            out["points"] = [[round(float(x), 2), round(float(y), 2)] for x, y in self.points_xy]
            labels = self.point_labels if self.point_labels is not None else np.ones(len(self.points_xy))
            out["labels"] = [int(v) for v in labels]
        return out


def _numbers(values: ArrayLike, dtype: type, what: str) -> np.ndarray:
    """``values`` as a numeric array.

    Raises:
        ValueError: values that are not numbers.
    """
    try:
        return np.asarray(values, dtype=dtype)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be numbers; got {geometry.plain_list(values)}.") from None
