"""Sliding window propagation (Slide-SAM, Quan et al. 2023, section 3.3), one slice at a time.

From each seed slice the generator walks up and down. On slice i it takes the accepted mask of slice i -/+ 1,
denoises it with a morphological opening, prompts slice i with that mask's box grown by ``margin`` pixels, keeps
the parts of the new mask that touch the previous one, trims it to the target's intensity (``trim_to_core``), and
asks the stop rules (``stop.py``) whether the target is still there. It stops at the first rejected slice, at the
volume/range end, or half way to the next seed.

Trimming is our addition to Slide-SAM: a box prompt makes LiteMedSAM fill the box, so when the model over-segments
(the MR liver here, by ~30 %), the box carried from that mask never shrinks as the organ does, and the error grows
slice after slice. Removing the parts whose intensity is not the seeds' lets the next box shrink.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from .. import geometry
from ..prompts import Prompts
from .refine import interior
from .refine import model_from_masks
from .refine import refine_in_box
from .run import Context
from .run import SliceRecord
from .stop import StopRules
from .stop import TargetModel
from .stop import build_target
from .stop import evidence
from .stop import intensity_fraction
from .stop import intensity_range
from .stop import judge
from .stop import widened_range


def seed_target(ctx: Context, seeds: dict[int, np.ndarray]) -> TargetModel:
    """Target model (area, intensity range, feature prototypes) from the seed slices."""
    use_feature = ctx.config.rules.feature_margin is not None
    items = []
    for i, m in seeds.items():
        emb = ctx.slice_embedding(i) if use_feature and m.any() else None
        items.append((ctx.image(i), m, emb))
    return build_target(items, ctx.config.rules)


def box_prompt(prev_hw: np.ndarray, opening: int, margin: float) -> np.ndarray:
    """Box (XYXY, slice pixels) of the previous mask after an opening; the raw mask's box if the opening empties it."""
    m = prev_hw
    if opening > 0:
        opened = ndimage.binary_opening(prev_hw, iterations=opening)
        if opened.any():
            m = opened
    return geometry.box_from_mask(m, margin)


def core_range(
    seeds: dict[int, np.ndarray], image_fn: Callable[[int], np.ndarray], rules: StopRules, erode: int = 1
) -> tuple[float, float]:
    """Intensity range (the stop rules' quantiles and tolerance) of the interior of the seed masks.

    The seed mask's rim mixes partial-volume pixels and whatever the model over-segmented, so the range is taken
    from the masks eroded by ``erode`` pixels (the whole mask where erosion leaves nothing).
    """
    vals = []
    for i, m in seeds.items():
        if not m.any():
            continue
        vals.append(image_fn(i)[interior(m, erode) if erode else m].ravel())
    return widened_range(np.concatenate(vals), rules.intensity_quantiles, rules.intensity_tolerance)


def trim_to_core(
    mask_hw: np.ndarray, image_hw: np.ndarray, rng: tuple[float, float], opening: int, core_radius: float
) -> np.ndarray:
    """The candidate without the parts whose intensity is not the target's.

    Large candidates (equivalent radius >= ``core_radius`` pixels) keep only their pixels inside ``rng``, opened
    (``opening`` iterations), which also cuts thin bridges to neighbouring structures. Small candidates (vessels,
    small organs, where the partial-volume rim is a large part of the area) lose only out-of-range regions that
    survive an opening, so the rim and single noisy pixels stay. Holes closed inside the core are given back
    (vessels inside an organ are part of it). Then parts smaller than a tenth of the largest remaining part are
    dropped.
    """
    outside = mask_hw & ((image_hw < rng[0]) | (image_hw > rng[1]))
    if np.sqrt(mask_hw.sum() / np.pi) >= core_radius:
        core = mask_hw & ~outside
        if opening:
            core = ndimage.binary_opening(core, iterations=opening)
    else:
        if opening:
            outside = ndimage.binary_opening(outside, iterations=opening)
        core = mask_hw & ~outside
    core = ndimage.binary_fill_holes(core) & mask_hw
    lab, n = ndimage.label(core)
    if n == 0:
        return core
    sizes = ndimage.sum(core, lab, index=np.arange(1, n + 1))
    keep = np.flatnonzero(sizes >= 0.1 * sizes.max()) + 1
    return np.isin(lab, keep)


def keep_touching(mask_hw: np.ndarray, prev_hw: np.ndarray, grow: int = 2) -> np.ndarray:
    """Connected parts of ``mask_hw`` that touch ``prev_hw`` grown by ``grow`` pixels (all of it if none does)."""
    lab, n = ndimage.label(mask_hw)
    if n <= 1:
        return mask_hw
    near = ndimage.binary_dilation(prev_hw, iterations=grow) if grow else prev_hw
    keep = np.unique(lab[near & mask_hw])
    keep = keep[keep > 0]
    if keep.size == 0:
        return mask_hw
    return np.isin(lab, keep)


def step(
    ctx: Context, index: int, prev_hw: np.ndarray, target: TargetModel, direction: int
) -> tuple[SliceRecord, np.ndarray | None]:
    """Prompt slice ``index`` from the neighbour mask; returns the record and the accepted mask (None if rejected)."""
    cfg = ctx.config
    if ctx.seg.slice_is_empty(ctx.axis, index):
        return SliceRecord(index, "skipped", {}, float("nan"), 0, "blank slice", direction), None
    box = box_prompt(prev_hw, cfg.opening, cfg.margin)
    prompts = Prompts(box_xyxy=box)
    res = ctx.segment(index, prompts)
    raw = res.mask_hw
    if cfg.keep_connected and raw.any():
        raw = keep_touching(raw, prev_hw)
    mask = raw
    model = target.extra.get("intensity_model")
    if model is not None and raw.any():
        mask = refine_in_box(raw, res.logits_hw, ctx.image(index), model, box, cfg.refine or 0.0, cfg.refine_reach)
        if cfg.keep_connected:
            mask = keep_touching(mask, prev_hw)
    trimmed = 0
    if cfg.trim is not None and mask.any():
        core = trim_to_core(mask, ctx.image(index), target.extra["core_range"], cfg.opening, cfg.trim_core_radius)
        if core.any() and core.sum() < (1.0 - cfg.trim) * mask.sum():
            trimmed = int(mask.sum() - core.sum())
            mask = keep_touching(core, prev_hw) if cfg.keep_connected else core
    target.extra["neighbour_range"] = intensity_range(ctx.image(index - direction), prev_hw, cfg.rules)
    emb = ctx.slice_embedding(index) if cfg.rules.feature_margin is not None and mask.any() else None
    ev = evidence(mask, res.iou, ctx.image(index), target, prev_hw, emb, cfg.rules)
    if mask is not raw:
        # The intensity rule judges what the model found, not the refined mask (consistent by construction).
        ev["intensity_fraction"] = intensity_fraction(raw, ctx.image(index), target, cfg.rules)
        ev["model_area"] = int(raw.sum())
    if trimmed:
        ev["trimmed"] = trimmed
    ctx.info.setdefault("evidence", {})[int(index)] = {
        k: (round(v, 4) if isinstance(v, float) else v) for k, v in ev.items()
    }
    reason = judge(ev, cfg.rules)
    prompt = prompts.to_json()
    if reason is not None:
        status = "empty" if reason in ("empty", "area") else "stopped"
        return SliceRecord(index, status, prompt, float(res.iou), int(mask.sum()), reason, direction), None
    return SliceRecord(index, "generated", prompt, float(res.iou), int(mask.sum()), "", direction), mask


def walk(ctx: Context, start: int, first_mask: np.ndarray, direction: int, limit: int, target: TargetModel) -> None:
    """Walk from slice ``start`` (mask known) in ``direction`` up to slice ``limit`` inclusive."""
    prev = first_mask
    i = start + direction
    while i <= limit if direction > 0 else i >= limit:
        if ctx.stop_requested():
            return
        if i in ctx.user:
            return
        rec, mask = step(ctx, i, prev, target, direction)
        if mask is None:
            ctx.record(rec)
            ctx.tick(i, direction)
            return
        ctx.accept(rec, mask)
        ctx.tick(i, direction)
        prev = mask
        i += direction


def run_sliding(ctx: Context) -> None:
    """The sliding-window generator (see the module text)."""
    seeds = sorted(ctx.user)
    target = seed_target(ctx, ctx.user)
    if ctx.config.trim is not None:
        target.extra["core_range"] = core_range(ctx.user, ctx.image, ctx.config.rules)
    if ctx.config.refine is not None:
        target.extra["intensity_model"] = model_from_masks(ctx.user, ctx.image)
    ctx.info["target"] = {"area": target.area, "intensity": [target.intensity_lo, target.intensity_hi]}
    for n, s in enumerate(seeds):
        nxt = seeds[n + 1] if n + 1 < len(seeds) else None
        prv = seeds[n - 1] if n > 0 else None
        up_limit = ctx.hi if nxt is None else min(ctx.hi, (s + nxt) // 2)
        down_limit = ctx.lo if prv is None else max(ctx.lo, (prv + s) // 2 + 1)
        for direction, limit in ((1, up_limit), (-1, down_limit)):
            if ctx.stop_requested():
                return
            walk(ctx, s, ctx.user[s], direction, limit, target)
