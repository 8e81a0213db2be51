"""Sliding window propagation (Slide-SAM, 003 section 3.3), one slice at a time.

From each seed slice the generator walks up and down. On slice i it takes the accepted mask of slice i -/+ 1,
denoises it with a morphological opening, prompts slice i with that mask's box grown by ``margin`` pixels, keeps
the parts of the new mask that touch the previous one, and asks the stop rules (``stop.py``) whether the target is
still there. It stops at the first rejected slice, at the volume/range end, or half way to the next seed.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .. import geometry
from .api import Context
from .api import SliceRecord
from .stop import build_target
from .stop import embedding_on_slice
from .stop import evidence
from .stop import intensity_range
from .stop import judge


def slice_embedding(ctx: Context, index: int) -> np.ndarray:
    """The slice's embedding cropped to the slice's own field of view (Cxhxw float32)."""
    shape = geometry.slice_shape(ctx.seg.volume.shape_kji, ctx.axis)
    return embedding_on_slice(ctx.embedding(index), ctx.seg.grid(ctx.axis), shape)


def seed_target(ctx: Context, seeds: dict[int, np.ndarray]):
    """Target model (area, intensity range, feature prototypes) from the seed slices."""
    use_feature = ctx.config.rules.feature_margin is not None
    items = []
    for i, m in seeds.items():
        emb = slice_embedding(ctx, i) if use_feature and m.any() else None
        items.append((ctx.image(i), m, emb))
    return build_target(items, ctx.config.rules)


def box_prompt(prev_hw: np.ndarray, opening: int, margin: float) -> np.ndarray | None:
    """Box (XYXY, slice pixels) of the previous mask after an opening; the raw mask's box if the opening empties it."""
    m = prev_hw
    if opening > 0:
        opened = ndimage.binary_opening(prev_hw, iterations=opening)
        if opened.any():
            m = opened
    return geometry.box_from_mask(m, margin)


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


def step(ctx: Context, index: int, prev_hw: np.ndarray, target, direction: int,
         box=None) -> tuple[SliceRecord, np.ndarray | None]:
    """Prompt slice ``index`` from the neighbour mask; returns the record and the accepted mask (None if rejected)."""
    cfg = ctx.config
    if ctx.seg.slice_is_empty(ctx.axis, index):
        return SliceRecord(index, "skipped", {}, float("nan"), 0, "blank slice", direction), None
    if box is None:
        box = box_prompt(prev_hw, cfg.opening, cfg.margin)
    ctx.embedding(index)  # counts an encode if it was not cached
    res = ctx.seg.segment(ctx.axis, index, box_xyxy=box)
    mask = res.mask_hw
    if cfg.keep_connected and mask.any():
        mask = keep_touching(mask, prev_hw)
    target.extra["neighbour_range"] = intensity_range(ctx.image(index - direction), prev_hw, cfg.rules)
    emb = slice_embedding(ctx, index) if cfg.rules.feature_margin is not None and mask.any() else None
    ev = evidence(mask, res.iou, ctx.image(index), target, prev_hw, emb, cfg.rules)
    ctx.info.setdefault("evidence", {})[int(index)] = {k: (round(v, 4) if isinstance(v, float) else v)
                                                       for k, v in ev.items()}
    reason = judge(ev, cfg.rules)
    prompt = {"box": [round(float(v), 2) for v in box]}
    if reason is not None:
        status = "empty" if reason in ("empty", "area") else "stopped"
        return SliceRecord(index, status, prompt, float(res.iou), int(mask.sum()), reason, direction), None
    return SliceRecord(index, "generated", prompt, float(res.iou), int(mask.sum()), "", direction), mask


def walk(ctx: Context, start: int, first_mask: np.ndarray, direction: int, limit: int, target) -> None:
    """Walk from slice ``start`` (mask known) in ``direction`` up to slice ``limit`` inclusive."""
    prev = first_mask
    i = start + direction
    while (i <= limit if direction > 0 else i >= limit):
        if ctx.stop_requested():
            return
        if i in ctx.user:
            return
        rec, mask = step(ctx, i, prev, target, direction)
        ctx.record(rec)
        ctx.tick(i, direction)
        if mask is None:
            return
        ctx.write(i, mask)
        prev = mask
        i += direction


def run_sliding(ctx: Context) -> None:
    seeds = sorted(ctx.user)
    target = seed_target(ctx, ctx.user)
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
