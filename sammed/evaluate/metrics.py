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
