"""Intensity refinement of a box-prompted mask (our addition; neither Slide-SAM nor SAMMed has it).

LiteMedSAM finds the organ a box points at, but on MR its outline is often off: it fills the box (spleen), segments
the bright renal sinus instead of the dark cortex around it, or stops half way (a kidney on the volume's edge slice).
The organ itself is usually the most uniform thing in the box. So the mask is redrawn inside the box from two
pieces of evidence added per pixel:

- the log-likelihood ratio of the pixel's intensity under the target's and the surroundings' histograms, learnt
  from the seed slice(s) (target = the seed mask's interior; surroundings = a ring outside it, or outside the
  user's tight box, which is background by definition);
- SAM's logit, clipped to +-10 and scaled by ``weight`` (0 = intensity only; large = SAM's mask unchanged).

Pixels with a positive sum inside the prompt box whose connected parts (after one opening, which cuts thin
bridges; the pixels it shaved off their edges come back) overlap SAM's mask, holes filled, make the new mask.
SAM decides *where* the organ is, intensity *where it ends*. A box seed may grow anywhere in the user's box; in the
sliding window a redrawn mask may only lose pixels (``PropagationConfig.refine_reach = 0``), because a mask grown
into a touching organ of the same density widens the next box and the error grows slice after slice; SAP-Net's
boxes come from each slice's own coarse mask, so there it may grow. Measurements: docs/propagation.md, "Intensity
refinement".
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from .. import geometry

if TYPE_CHECKING:
    from ..segmenter import Segmenter


LOGIT_CLIP = 10.0


@dataclass(frozen=True)
class IntensityModel:
    """Smoothed log-histograms of target and surroundings on ``bins`` bins over [lo, hi]."""

    lo: float
    hi: float
    log_fg: np.ndarray
    log_bg: np.ndarray

    def llr(self, image_hw: np.ndarray) -> np.ndarray:
        """log p(I | target) - log p(I | surroundings) per pixel (values outside [lo, hi] use the end bins)."""
        n = self.log_fg.size
        scaled = (np.asarray(image_hw, dtype=np.float64) - self.lo) / max(self.hi - self.lo, 1e-6) * n
        b = np.clip(scaled.astype(np.int64), 0, n - 1)
        return (self.log_fg - self.log_bg)[b]


def _log_hist(values: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
    h, _ = np.histogram(np.clip(values, lo, hi), bins=bins, range=(lo, hi))
    h = ndimage.gaussian_filter1d(h.astype(np.float64) + 0.5, 1.0)
    return np.log(h / h.sum())


def fit_intensity_model(
    samples: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], bins: int = 48
) -> IntensityModel | None:
    """Model from ``samples`` = [(image_hw, target_hw, surroundings_hw), ...]; None when either side is empty."""
    samples = list(samples)
    fg_parts = [np.asarray(img, dtype=np.float64)[t] for img, t, _ in samples if t.any()]
    bg_parts = [np.asarray(img, dtype=np.float64)[s] for img, _, s in samples if s.any()]
    if not fg_parts or not bg_parts:
        return None
    fg, bg = np.concatenate(fg_parts), np.concatenate(bg_parts)
    lo, hi = np.quantile(np.concatenate([fg, bg]), (0.005, 0.995))
    if hi <= lo:
        return None
    return IntensityModel(float(lo), float(hi), _log_hist(fg, lo, hi, bins), _log_hist(bg, lo, hi, bins))


def interior(mask_hw: np.ndarray, iterations: int = 1) -> np.ndarray:
    """The mask eroded by ``iterations`` pixels (the mask itself if that leaves nothing): no partial-volume rim."""
    inner = ndimage.binary_erosion(mask_hw, iterations=iterations)
    return inner if inner.any() else mask_hw


def ring(mask_hw: np.ndarray, inner: int = 1, outer: int = 4) -> np.ndarray:
    """Pixels more than ``inner`` and at most ``outer`` pixels outside the mask (its surroundings)."""
    return ndimage.binary_dilation(mask_hw, iterations=outer) & ~ndimage.binary_dilation(mask_hw, iterations=inner)


def box_region(shape_hw: tuple[int, int], box_xyxy: ArrayLike, grow: int = 0) -> np.ndarray:
    """Pixels whose centres lie in the XYXY box grown by ``grow`` pixels."""
    h, w = shape_hw
    x0, y0, x1, y1 = np.asarray(box_xyxy, dtype=np.float64)
    rows = np.arange(h)[:, None]
    cols = np.arange(w)[None, :]
    return (
        (rows >= np.ceil(y0 - grow))
        & (rows <= np.floor(y1 + grow))
        & (cols >= np.ceil(x0 - grow))
        & (cols <= np.floor(x1 + grow))
    )


def model_from_masks(masks: dict[int, np.ndarray], image_fn: Callable[[int], np.ndarray]) -> IntensityModel | None:
    """Model from annotated slices: each mask's interior against a ring around it (empty masks are skipped)."""
    return fit_intensity_model([(image_fn(i), interior(m), ring(m)) for i, m in masks.items() if m.any()])


def refine_mask(
    mask_hw: np.ndarray,
    logits_hw: np.ndarray,
    image_hw: np.ndarray,
    model: IntensityModel,
    region_hw: np.ndarray,
    weight: float,
    reach: int | None = None,
) -> np.ndarray:
    """SAM's mask redrawn from intensity and SAM's logits inside ``region_hw`` (see the module text).

    Returns ``mask_hw`` unchanged when it is empty or nothing of the redrawn mask overlaps it.
    """
    if not mask_hw.any():
        return mask_hw
    score = model.llr(image_hw) + weight * np.clip(logits_hw, -LOGIT_CLIP, LOGIT_CLIP)
    cand = (score > 0) & region_hw
    if reach is not None:
        cand &= ndimage.binary_dilation(mask_hw, iterations=reach) if reach > 0 else mask_hw
    opened = ndimage.binary_opening(cand)
    base = opened if opened.any() else cand
    lab, n = ndimage.label(base)
    keep = np.unique(lab[mask_hw & base])
    keep = keep[keep > 0]
    if n == 0 or keep.size == 0:
        return mask_hw
    # the opening cuts thin bridges to other structures; what it shaved off the kept parts' edges comes back
    kept = cand & ndimage.binary_dilation(np.isin(lab, keep))
    return ndimage.binary_fill_holes(kept)


def refine_in_box(
    mask_hw: np.ndarray,
    logits_hw: np.ndarray,
    image_hw: np.ndarray,
    model: IntensityModel,
    box_xyxy: ArrayLike,
    weight: float,
    reach: int | None,
) -> np.ndarray:
    """``refine_mask`` inside a prompt box grown by 1 pixel (the generators' boxes are not tight)."""
    return refine_mask(mask_hw, logits_hw, image_hw, model, box_region(mask_hw.shape, box_xyxy, grow=1), weight, reach)


def seed_from_box(
    segmenter: Segmenter, axis: int, index: int, box_xyxy: ArrayLike, weight: float | None = 0.25
) -> tuple[np.ndarray, Any]:
    """Seed mask for propagation from a tight box on one slice: SAM's mask, refined (``weight`` None: not).

    Everything outside a tight box is background, so the surroundings' histogram comes from a ring of 4 pixels
    outside the box and the target's from SAM's mask interior.

    Returns:
        (mask_hw, SliceResult of the model).
    """
    res = segmenter.segment(axis, index, box_xyxy=box_xyxy)
    if weight is None or not res.mask_hw.any():
        return res.mask_hw, res
    image = geometry.extract_slice(segmenter.volume.array_kji, axis, index)
    inside = box_region(res.mask_hw.shape, box_xyxy)
    outside = box_region(res.mask_hw.shape, box_xyxy, grow=4) & ~inside
    model = fit_intensity_model([(image, interior(res.mask_hw), outside)])
    if model is None:
        return res.mask_hw, res
    return refine_mask(res.mask_hw, res.logits_hw, image, model, inside, weight), res
