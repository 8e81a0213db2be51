"""Overlap metrics on binary masks (any shape)."""

from __future__ import annotations

import numpy as np


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient; 1.0 when both masks are empty."""
    p, r = np.asarray(pred, bool), np.asarray(ref, bool)
    s = p.sum() + r.sum()
    return 1.0 if s == 0 else float(2.0 * np.logical_and(p, r).sum() / s)


def iou(pred: np.ndarray, ref: np.ndarray) -> float:
    """Intersection over union; 1.0 when both masks are empty."""
    p, r = np.asarray(pred, bool), np.asarray(ref, bool)
    u = np.logical_or(p, r).sum()
    return 1.0 if u == 0 else float(np.logical_and(p, r).sum() / u)


def hd95(pred: np.ndarray, ref: np.ndarray, spacing=None) -> float:
    """95th percentile symmetric surface distance (in mm if ``spacing`` is given); nan if a mask is empty."""
    from scipy import ndimage

    p, r = np.asarray(pred, bool), np.asarray(ref, bool)
    if not p.any() or not r.any():
        return float("nan")
    spacing = spacing if spacing is not None else (1.0,) * p.ndim
    sp = p & ~ndimage.binary_erosion(p)
    sr = r & ~ndimage.binary_erosion(r)
    dr = ndimage.distance_transform_edt(~sr, sampling=spacing)
    dp = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return float(np.percentile(np.concatenate([dr[sp], dp[sr]]), 95))
