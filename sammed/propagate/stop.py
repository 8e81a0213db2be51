"""Stop rules and prompt classification: is the target still present on this slice?

Every generator produces, per slice, a candidate mask with the model's predicted IoU. Before it is accepted the
candidate is compared with what is known about the target (the user's seed slices and the accepted neighbour):

- ``area``: at least ``min_area`` pixels and at least ``min_area_ratio`` x the seed's area;
- ``iou``: the model's predicted IoU at least ``min_iou``;
- ``neighbour``: the candidate overlaps the accepted neighbour mask (``min_overlap`` of the candidate lies inside
  the neighbour mask grown by ``overlap_grow`` pixels) and does not grow by more than ``max_growth`` x;
- ``intensity``: at least ``min_intensity_fraction`` of the candidate's pixels lie inside the target's intensity
  range (``intensity_quantiles``, widened by ``intensity_tolerance`` x the range), taken from the accepted
  neighbour slice (``intensity_reference="neighbour"``, a dynamic reference that follows MR bias fields) or from
  the seeds (``"seed"``);
- ``feature`` (prompt classification on SAM image features): the candidate's mean embedding is closer (cosine)
  to the seed's foreground prototype than to its background prototype (margin ``feature_margin``).

A slice that fails a rule is "stopped" (nothing is written) and the generator does not go further in that direction.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field

import numpy as np
from scipy import ndimage


@dataclass
class StopRules:
    """Thresholds of the stop rules (see the module docstring). Set a value to None to switch that rule off."""

    min_area: int | None = 10
    min_area_ratio: float | None = 0.01
    min_iou: float | None = 0.5
    min_overlap: float | None = 0.5
    overlap_grow: int = 2
    max_growth: float | None = 1.6
    intensity_quantiles: tuple[float, float] = (0.05, 0.95)
    intensity_tolerance: float = 0.25
    min_intensity_fraction: float | None = 0.6
    intensity_reference: str = "seed"
    feature_margin: float | None = 0.0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class TargetModel:
    """What the seed slices say about the target: area, intensity range, feature prototypes.

    Attributes:
        area: mean seed mask area in pixels.
        intensity_lo, intensity_hi: seed intensity range (raw voxel values), already widened by the tolerance.
        fg_proto, bg_proto: (C,) unit vectors, mean embedding inside / around the seed masks (None if unknown).
    """

    area: float
    intensity_lo: float
    intensity_hi: float
    fg_proto: np.ndarray | None = None
    bg_proto: np.ndarray | None = None
    extra: dict = field(default_factory=dict)


def resize_mask(mask_hw: np.ndarray, shape_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour (area-fraction >= 0.5) resize of a binary mask to ``shape_hw`` (float fractions returned)."""
    from scipy.ndimage import zoom

    m = np.asarray(mask_hw, dtype=np.float32)
    if m.shape == tuple(shape_hw):
        return m
    f = (shape_hw[0] / m.shape[0], shape_hw[1] / m.shape[1])
    out = zoom(m, f, order=1, grid_mode=True, mode="nearest")
    return np.clip(out[: shape_hw[0], : shape_hw[1]], 0.0, 1.0)


def _pooled(emb_chw: np.ndarray, weight_hw: np.ndarray) -> np.ndarray | None:
    s = float(weight_hw.sum())
    if s <= 1e-6:
        return None
    v = (emb_chw * weight_hw[None]).reshape(emb_chw.shape[0], -1).sum(axis=1) / s
    n = np.linalg.norm(v)
    return v / n if n > 0 else None


def prototypes(emb_chw: np.ndarray, mask_hw: np.ndarray, ring: int = 3) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Foreground prototype (masked average) and a background prototype from a ring around the mask."""
    h, w = emb_chw.shape[1:]
    fg = resize_mask(mask_hw, (h, w))
    grown = ndimage.binary_dilation(fg > 0.05, iterations=ring)
    bg = (grown & (fg < 0.05)).astype(np.float32)
    return _pooled(emb_chw, fg), _pooled(emb_chw, bg)


def build_target(seeds: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]], rules: StopRules) -> TargetModel:
    """Target model from seed slices.

    Args:
        seeds: list of (image_hw raw intensities, mask_hw bool, embedding on the slice Cxhxw or None).
        rules: for the intensity quantiles and tolerance.
    """
    areas = [float(m.sum()) for _, m, _ in seeds if m.any()]
    values = np.concatenate([img[m].ravel() for img, m, _ in seeds if m.any()])
    lo, hi = widened_range(values, rules.intensity_quantiles, rules.intensity_tolerance)
    fgs, bgs = [], []
    for _, m, emb in seeds:
        if emb is None or not m.any():
            continue
        f, b = prototypes(emb, m)
        if f is not None:
            fgs.append(f)
        if b is not None:
            bgs.append(b)
    fg = _unit(np.mean(fgs, axis=0)) if fgs else None
    bg = _unit(np.mean(bgs, axis=0)) if bgs else None
    return TargetModel(float(np.mean(areas)), lo, hi, fg, bg)


def intensity_range(image_hw: np.ndarray, mask_hw: np.ndarray, rules: StopRules) -> tuple[float, float]:
    """Intensity range of the target on one slice (quantiles widened by the tolerance)."""
    return widened_range(image_hw[mask_hw], rules.intensity_quantiles, rules.intensity_tolerance)


def widened_range(values: np.ndarray, quantiles: tuple[float, float], tolerance: float) -> tuple[float, float]:
    """The ``quantiles`` of ``values``, each side moved out by ``tolerance`` x the distance between them."""
    lo, hi = np.quantile(np.asarray(values, dtype=np.float64), quantiles)
    pad = tolerance * max(hi - lo, 1e-6)
    return float(lo - pad), float(hi + pad)


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def intensity_fraction(mask_hw: np.ndarray, image_hw: np.ndarray, target: TargetModel, rules: StopRules) -> float:
    """Fraction of the (non-empty) mask's pixels inside the target's intensity range (seed or neighbour reference)."""
    lo, hi = target.intensity_lo, target.intensity_hi
    if rules.intensity_reference == "neighbour" and "neighbour_range" in target.extra:
        lo, hi = target.extra["neighbour_range"]
    vals = image_hw[mask_hw]
    return float(np.mean((vals >= lo) & (vals <= hi)))


def evidence(
    mask_hw: np.ndarray,
    iou: float,
    image_hw: np.ndarray,
    target: TargetModel,
    neighbour_hw: np.ndarray | None,
    emb_chw: np.ndarray | None,
    rules: StopRules,
) -> dict:
    """Measurements of a candidate mask used by ``judge`` (all JSON-able floats)."""
    area = int(mask_hw.sum())
    ev: dict = {"area": area, "iou": float(iou)}
    if area == 0:
        return ev
    ev["area_ratio_seed"] = area / max(target.area, 1.0)
    ev["intensity_fraction"] = intensity_fraction(mask_hw, image_hw, target, rules)
    if neighbour_hw is not None and neighbour_hw.any():
        grown = neighbour_hw
        if rules.overlap_grow:
            grown = ndimage.binary_dilation(neighbour_hw, iterations=rules.overlap_grow)
        ev["overlap"] = float((mask_hw & grown).sum() / area)
        ev["growth"] = float(area / max(int(neighbour_hw.sum()), 1))
    if emb_chw is not None and target.fg_proto is not None and target.bg_proto is not None:
        f = _pooled(emb_chw, resize_mask(mask_hw, emb_chw.shape[1:]))
        if f is not None:
            ev["feature_fg"] = float(f @ target.fg_proto)
            ev["feature_bg"] = float(f @ target.bg_proto)
    return ev


def judge(ev: dict, rules: StopRules) -> str | None:
    """None if the candidate is accepted, else the name of the first rule it fails."""
    if ev["area"] == 0:
        return "empty"
    if rules.min_area is not None and ev["area"] < rules.min_area:
        return "area"
    if rules.min_area_ratio is not None and ev.get("area_ratio_seed", 1.0) < rules.min_area_ratio:
        return "area"
    if rules.min_iou is not None and np.isfinite(ev["iou"]) and ev["iou"] < rules.min_iou:
        return "iou"
    if rules.min_overlap is not None and ev.get("overlap", 1.0) < rules.min_overlap:
        return "neighbour"
    if rules.max_growth is not None and ev.get("growth", 1.0) > rules.max_growth:
        return "growth"
    if rules.min_intensity_fraction is not None and ev.get("intensity_fraction", 1.0) < rules.min_intensity_fraction:
        return "intensity"
    margin = rules.feature_margin
    if margin is not None and "feature_fg" in ev and ev["feature_fg"] - ev["feature_bg"] < margin:
        return "feature"
    return None
