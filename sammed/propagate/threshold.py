"""Threshold prompt propagation (SAMMed "Algorithm 1", Wang et al. 2023, sections 3.2.2 and 4.3), our reading of it.

The algorithm box is not in the text we have; the text says: foreground points sampled on an annotated slice are
propagated recursively to the neighbouring slices by a dynamic thresholding rule based on intensity consistency;
propagation ends when no point satisfies the criterion; it runs once per annotated slice and the results are
ensembled. We implement exactly that:

1. On seed slice s, take the target's intensity mean ``mu`` and standard deviation ``sd`` inside the mask and
   sample ``n_points`` positive points uniformly inside the mask (eroded by one pixel when possible).
2. On the next slice, a carried point passes when ``|I(p) - mu| <= threshold_k * sd`` (intensity consistency).
   If fewer than ``min_points`` pass, propagation stops in this direction ("threshold").
3. SAM segments the slice from the passing points (all positive). An empty mask (or one under ``rules.min_area``)
   also stops it.
4. Dynamic threshold: ``mu`` and ``sd`` move towards the new mask's values with weight ``threshold_update``;
   new points are sampled inside the new mask and carried on.

Every annotated slice propagates up and down independently (to the range ends); a slice reached by several
propagations gets the majority vote of their masks (ties count as foreground).
"""

from __future__ import annotations

import numpy as np

from ..prompts import Prompts
from .refine import interior
from .run import Context
from .run import SliceRecord


def sample_points(mask_hw: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` (x, y) points drawn uniformly inside the mask (eroded by one pixel if that leaves something)."""
    rows, cols = np.nonzero(interior(mask_hw))
    if rows.size == 0:
        return np.zeros((0, 2))
    pick = rng.choice(rows.size, size=min(n, rows.size), replace=False)
    return np.stack([cols[pick], rows[pick]], axis=1).astype(np.float64)


def run_threshold(ctx: Context) -> None:
    """The threshold generator (see the module text)."""
    cfg = ctx.config
    rng = np.random.default_rng(cfg.seed)
    votes: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    first: dict[int, SliceRecord] = {}
    stopped: dict[int, SliceRecord] = {}
    for s in sorted(ctx.user):
        seed_mask = ctx.user[s]
        img = ctx.image(s).astype(np.float64)
        for direction in (1, -1):
            mu, sd = float(img[seed_mask].mean()), float(img[seed_mask].std()) + 1e-6
            pts = sample_points(seed_mask, cfg.n_points, rng)
            i = s + direction
            while ctx.lo <= i <= ctx.hi:
                if ctx.stop_requested():
                    _finish(ctx, votes, counts, first, stopped)
                    return
                if i in ctx.user or ctx.seg.slice_is_empty(ctx.axis, i):
                    break
                cur = ctx.image(i).astype(np.float64)
                vals = cur[pts[:, 1].astype(int), pts[:, 0].astype(int)] if len(pts) else np.zeros(0)
                ok = np.abs(vals - mu) <= cfg.threshold_k * sd
                prompt = {"points": pts[ok].tolist(), "labels": [1] * int(ok.sum())}
                if ok.sum() < max(1, cfg.min_points):
                    stopped.setdefault(i, SliceRecord(i, "stopped", prompt, float("nan"), 0, "threshold", direction))
                    break
                res = ctx.segment(i, Prompts.make(points_xy=pts[ok], point_labels=np.ones(int(ok.sum()), int)))
                m = res.mask_hw
                min_area = cfg.rules.min_area or 1
                if m.sum() < min_area:
                    stopped.setdefault(
                        i, SliceRecord(i, "empty", prompt, float(res.iou), int(m.sum()), "area", direction)
                    )
                    break
                votes[i] = votes.get(i, 0) + m.astype(np.int32)
                counts[i] = counts.get(i, 0) + 1
                first.setdefault(i, SliceRecord(i, "generated", prompt, float(res.iou), 0, "", direction))
                ctx.tick(i, direction)
                u = cfg.threshold_update
                mu = (1 - u) * mu + u * float(cur[m].mean())
                sd = (1 - u) * sd + u * (float(cur[m].std()) + 1e-6)
                pts = sample_points(m, cfg.n_points, rng)
                i += direction
    _finish(ctx, votes, counts, first, stopped)


def _finish(
    ctx: Context,
    votes: dict[int, np.ndarray],
    counts: dict[int, int],
    first: dict[int, SliceRecord],
    stopped: dict[int, SliceRecord],
) -> None:
    """Majority vote of the propagations per slice; write masks and records."""
    for i, v in votes.items():
        m = 2 * v >= counts[i]
        rec = first[i]
        rec.area = int(m.sum())
        if m.any():
            ctx.accept(rec, m)
        else:
            rec.status, rec.reason = "empty", "vote"
            ctx.record(rec)
    for i, rec in stopped.items():
        if i not in votes:
            ctx.record(rec)
