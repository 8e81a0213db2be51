"""Simulated users: boxes and clicks derived from a reference mask.

Clicks follow Algorithm 1 of "SAM for medical image analysis: an experimental study" (Mazurowski et al.): the first
click is the foreground point farthest from the background; each next click is the point farthest from the boundary
of the current error region (the largest connected error component, as the issue asks), positive if that region is
missed foreground, negative if it is false positive. Ties are broken by a seeded random choice.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..geometry import box_from_mask
from ..geometry import jitter_box


def farthest_point(region_hw: np.ndarray, rng: np.random.Generator | None = None) -> tuple[float, float] | None:
    """(x, y) of the pixel of ``region_hw`` farthest from its outside (distance transform with a zero border)."""
    region = np.asarray(region_hw, bool)
    if not region.any():
        return None
    padded = np.pad(region, 1)
    dist = ndimage.distance_transform_edt(padded)[1:-1, 1:-1]
    best = np.argwhere(dist == dist.max())
    r, c = best[rng.integers(len(best))] if (rng is not None and len(best) > 1) else best[0]
    return float(c), float(r)


def first_click(ref_hw: np.ndarray, rng: np.random.Generator | None = None) -> tuple[float, float] | None:
    """The positive click farthest from the background (Algorithm 1, step 1)."""
    return farthest_point(ref_hw, rng)


def next_click(
    pred_hw: np.ndarray, ref_hw: np.ndarray, rng: np.random.Generator | None = None
) -> tuple[tuple[float, float], int] | None:
    """((x, y), label) of the next corrective click, or None when the prediction is perfect.

    The error region is split into connected components; the click goes to the largest one, at its point farthest
    from the component boundary; label 1 if it is missed foreground (FN), 0 if it is false positive (FP).
    """
    pred, ref = np.asarray(pred_hw, bool), np.asarray(ref_hw, bool)
    err = pred ^ ref
    if not err.any():
        return None
    comps, n = ndimage.label(err)
    sizes = ndimage.sum(err, comps, index=np.arange(1, n + 1))
    largest = comps == (int(np.argmax(sizes)) + 1)
    xy = farthest_point(largest, rng)
    if xy is None:  # pragma: no cover - the largest error component is never empty
        return None
    r, c = int(xy[1]), int(xy[0])
    return xy, int(ref[r, c])


def jittered_box(ref_hw: np.ndarray, rng: np.random.Generator, d_in: float = 0.0, d_out: float = 5.0) -> np.ndarray:
    """Tight box of ``ref_hw`` with each side moved by a random offset in [-d_in, d_out] pixels (outward > 0).

    As the SAMMed paper's box jitter: the jittered box lies between an inner box (tight box shrunk by ``d_in``)
    and an outer box (grown by ``d_out``).
    """
    return jitter_box(box_from_mask(ref_hw), ref_hw.shape, rng, d_in, d_out)
