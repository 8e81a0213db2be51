"""SAMassist's simulated prompts (points, jittered boxes, composites) from reference masks, and annotation checks.

numpy only. Prompts are sampled in slice pixels, as a user gives them; ``train.py`` maps them to the model input
with the same function inference uses (``ModelInputGeometry.prompts_to_input``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from .. import geometry
from ..prompts import Prompts
from .config import AssistConfig

if TYPE_CHECKING:
    from ..segmenter import Segmenter


class SliceSampler:
    """Samples prompts from one reference mask (HxW bool, slice frame); points are (x, y) = (column, row)."""

    def __init__(self, mask_hw: np.ndarray, cfg: AssistConfig) -> None:
        self.mask = mask_hw
        self.cfg = cfg
        inside = ndimage.distance_transform_edt(np.pad(mask_hw, 1))[1:-1, 1:-1]
        rows, cols = np.nonzero(mask_hw)
        self.fg_xy = np.stack([cols, rows], axis=1).astype(np.float64)
        d = inside[rows, cols]
        self.fg_weights = {
            "uniform": None,
            "center": _normalise(d**2),
            "boundary": _normalise(np.exp(-(d - 1.0) / 2.0)),
        }
        outside = ndimage.distance_transform_edt(~mask_hw)
        radius = max(4.0, 0.5 * math.sqrt(mask_hw.sum() / math.pi))
        ring = (~mask_hw) & (outside <= radius)
        if not ring.any():
            ring = ~mask_hw
        br, bc = np.nonzero(ring)
        self.bg_xy = np.stack([bc, br], axis=1).astype(np.float64)
        self.box = geometry.box_from_mask(mask_hw)

    def positives(self, n: int, rng: np.random.Generator) -> np.ndarray:
        scheme = self.cfg.sampling
        if scheme == "mixed":
            scheme = ("uniform", "center", "boundary")[rng.integers(3)]
        idx = rng.choice(len(self.fg_xy), size=n, replace=len(self.fg_xy) < n, p=self.fg_weights[scheme])
        return self.fg_xy[idx]

    def negatives(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if n == 0 or len(self.bg_xy) == 0:
            return np.zeros((0, 2))
        return self.bg_xy[rng.choice(len(self.bg_xy), size=n, replace=len(self.bg_xy) < n)]

    def jittered_box(self, rng: np.random.Generator) -> np.ndarray:
        """The tight box, jittered by [-d_in, d_out] pixels per side."""
        return geometry.jitter_box(self.box, self.mask.shape, rng, self.cfg.d_in, self.cfg.d_out)

    def point_counts(self, kind: str, rng: np.random.Generator) -> tuple[int, int]:
        """(positive, negative) point counts of one prompt of ``kind`` ("points" or "composite")."""
        cfg = self.cfg
        if kind == "points" and cfg.max_points > 0:
            # like a user's clicks: one positive click (probability p_single), or 2..max_points clicks of which
            # the first is positive and each later one positive or negative with equal probability
            total = 1 if rng.random() < cfg.p_single else int(rng.integers(2, max(cfg.max_points, 2) + 1))
            n_pos = 1 + int(rng.binomial(total - 1, 0.5))
            return n_pos, total - n_pos
        return int(rng.integers(1 if kind == "points" else 0, cfg.n_pt)), int(rng.integers(0, cfg.n_pt))

    def sample(self, kind: str, count: int, rng: np.random.Generator) -> list[Prompts]:
        """``count`` prompts of one kind, in slice pixels."""
        out = []
        for _ in range(count):
            if kind == "box":
                pos, neg = np.zeros((0, 2)), np.zeros((0, 2))
            else:
                n_pos, n_neg = self.point_counts(kind, rng)
                pos = self.positives(n_pos, rng) if n_pos else np.zeros((0, 2))
                neg = self.negatives(n_neg, rng)
            points = np.concatenate([pos, neg])
            labels = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))]).astype(np.int64)
            box = self.jittered_box(rng) if kind != "points" else None
            out.append(Prompts.make(box, points, labels))
        return out


def _normalise(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w, dtype=np.float64)
    s = w.sum()
    return np.full(len(w), 1.0 / len(w)) if s <= 0 or not np.isfinite(s) else w / s


def check_annotations(segmenter: Segmenter, masks: Mapping[int, np.ndarray], axis: int) -> dict[int, np.ndarray]:
    """The annotated slices as bool masks, checked against the segmenter's volume.

    Raises:
        ValueError: none given, a slice out of range, a mask of another shape, empty or full, an empty image slice.
    """
    if masks is None or len(masks) == 0:
        raise ValueError("No annotated slice was given; annotate the target on at least one slice first.")
    axis = geometry.check_axis(axis)
    shape = geometry.slice_shape(segmenter.volume.shape_kji, axis)
    out: dict[int, np.ndarray] = {}
    for index, mask in masks.items():
        index = geometry.check_index(segmenter.volume.shape_kji, axis, int(index))
        m = np.asarray(mask)
        if m.shape != tuple(shape):
            raise ValueError(
                f"The mask of slice {index} has shape {m.shape}, but slices on axis {axis} of this volume are "
                f"{tuple(shape)}: the annotation does not match the volume."
            )
        m = m.astype(bool)
        if not m.any():
            raise ValueError(f"The mask of slice {index} is empty; draw the target on that slice or leave it out.")
        if m.all():
            raise ValueError(f"The mask of slice {index} covers the whole slice; it needs some background too.")
        if segmenter.slice_is_empty(axis, index):
            raise ValueError(f"Slice {index} on axis {axis} has no image content (all voxels equal).")
        out[index] = m
    return out


def annotations_from_labels(
    labels_kji: np.ndarray, label: int, slices: Iterable[int] | None = None, axis: int = 0
) -> dict[int, np.ndarray]:
    """Per-slice masks of one label value from a KJI label map.

    Args:
        labels_kji: KxJxI integer label map on the image grid.
        label: the label value of the target.
        slices: slice indices to use; None = every slice on ``axis`` where the label is present.
        axis: array axis of the slices (0 = axial for usual volumes).

    Returns:
        {slice index: HxW bool mask in the ``extract_slice`` layout}.

    Raises:
        ValueError: the label is absent, or a requested slice is out of range.
    """
    labels_kji = np.asarray(labels_kji)
    axis = geometry.check_axis(axis)
    if slices is None:
        slices = geometry.foreground_slices(labels_kji == label, axis)
        if not slices:
            raise ValueError(f"Label {label} does not occur in the label map; no annotated slice was found.")
    out = {}
    for s in slices:
        s = geometry.check_index(labels_kji.shape, axis, int(s))
        out[s] = geometry.extract_slice(labels_kji, axis, s) == label
    return out
