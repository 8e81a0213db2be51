"""Interactive protocol: simulated users on labelled volumes, per label and per slice.

Prompts per slice (fixed seeds):
- ``box``: tight box of the reference mask; ``box_jitter``: each side moved by U(-d_in, d_out) pixels;
- ``click_N`` (N = 1, 3, 5, 10): Algorithm 1 of Mazurowski et al. (first click farthest from the background,
  each next click farthest from the boundary of the largest error region, with all clicks so far as prompts);
- ``box+clicks``: SAMMed's composite protocol: a box, then up to 5 clicks on FN/FP regions with the previous
  low-res logits as mask input; the best Dice is kept.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np

from .. import geometry
from ..jobs import ProgressFn
from ..jobs import StopFn
from ..jobs import check_stop
from ..segmenter import Segmenter
from . import clicks
from .metrics import dice
from .metrics import iou

CLICK_COUNTS = (1, 3, 5, 10)
COMPOSITE_CLICKS = 5


def pick_slices(mask_kji: np.ndarray, axis: int, count: int | None) -> list[int]:
    """The largest slice plus evenly spread foreground slices (``count`` in all; None = every one)."""
    fg = geometry.foreground_slices(mask_kji, axis)
    if count is None or count >= len(fg):
        return fg
    largest = geometry.largest_slice(mask_kji, axis)
    # the largest slice, then count-1 slices spread over the inner range (first and last slices of a label are
    # the least reliable in the reference labels)
    inner = fg[1:-1] if len(fg) > 4 else fg
    spread: Iterable[int] = np.linspace(0, len(inner) - 1, num=count + 1)[1:-1].round().astype(int) if count > 1 else []
    return sorted({largest, *(int(inner[i]) for i in spread)})


def simulate_clicks(
    segmenter: Segmenter, axis: int, index: int, ref_hw: np.ndarray, max_clicks: int, rng: np.random.Generator
) -> dict[int, dict]:
    """Algorithm 1 clicks; returns {n_clicks: {dice, iou, pred_iou}} for every n up to ``max_clicks``."""
    out = {}
    xy = clicks.first_click(ref_hw, rng)
    pts, labels = [xy], [1]
    for n in range(1, max_clicks + 1):
        res = segmenter.segment(axis, index, points_xy=np.array(pts), point_labels=np.array(labels))
        out[n] = {"dice": dice(res.mask_hw, ref_hw), "iou": iou(res.mask_hw, ref_hw), "pred_iou": res.iou}
        if n == max_clicks:
            break
        nxt = clicks.next_click(res.mask_hw, ref_hw, rng)
        if nxt is None:  # perfect: later click counts keep this result
            for m in range(n + 1, max_clicks + 1):
                out[m] = dict(out[n])
            break
        pts.append(nxt[0])
        labels.append(nxt[1])
    return out


def composite(
    segmenter: Segmenter,
    axis: int,
    index: int,
    ref_hw: np.ndarray,
    box_xyxy: np.ndarray,
    rng: np.random.Generator,
    max_clicks: int = COMPOSITE_CLICKS,
) -> tuple[float, int]:
    """Box, then up to ``max_clicks`` corrective clicks (with mask input); best Dice and the clicks it needed."""
    res = segmenter.segment(axis, index, box_xyxy=box_xyxy)
    best, best_n = dice(res.mask_hw, ref_hw), 0
    pts, labels = [], []
    for n in range(1, max_clicks + 1):
        nxt = clicks.next_click(res.mask_hw, ref_hw, rng)
        if nxt is None:
            break
        pts.append(nxt[0])
        labels.append(nxt[1])
        res = segmenter.segment(
            axis,
            index,
            box_xyxy=box_xyxy,
            points_xy=np.array(pts),
            point_labels=np.array(labels),
            mask_input=res.low_res_logits,
        )
        d = dice(res.mask_hw, ref_hw)
        if d > best:
            best, best_n = d, n
    return best, best_n


def evaluate_slice(
    segmenter: Segmenter, axis: int, index: int, ref_hw: np.ndarray, seed: int, d_in: float = 0.0, d_out: float = 5.0
) -> dict[str, float]:
    """All prompt protocols on one slice; returns {protocol: dice} plus ``iou_*`` entries."""
    rng = np.random.default_rng(seed)
    row: dict[str, float] = {}
    box = geometry.box_from_mask(ref_hw)
    res = segmenter.segment(axis, index, box_xyxy=box)
    row["box"], row["iou_box"], row["pred_iou_box"] = dice(res.mask_hw, ref_hw), iou(res.mask_hw, ref_hw), res.iou
    jbox = clicks.jittered_box(ref_hw, rng, d_in, d_out)
    res = segmenter.segment(axis, index, box_xyxy=jbox)
    row["box_jitter"], row["iou_box_jitter"] = dice(res.mask_hw, ref_hw), iou(res.mask_hw, ref_hw)
    sim = simulate_clicks(segmenter, axis, index, ref_hw, max(CLICK_COUNTS), rng)
    for n in CLICK_COUNTS:
        row[f"click_{n}"], row[f"iou_click_{n}"] = sim[n]["dice"], sim[n]["iou"]
    row["box+clicks"], row["box+clicks_n"] = composite(segmenter, axis, index, ref_hw, box, rng)
    return row


DICE_COLUMNS = ("box", "box_jitter", "click_1", "click_3", "click_5", "click_10", "box+clicks")


def run_interactive_protocol(
    segmenter: Segmenter,
    labels_kji: np.ndarray,
    label_ids: dict[str, int],
    axis: int = 0,
    slices_per_label: int | None = 5,
    seed: int = 0,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> dict:
    """Evaluate every protocol on ``slices_per_label`` foreground slices of each label.

    Args:
        segmenter: a ``Segmenter`` on the image.
        labels_kji: KxJxI integer reference labels on the image grid.
        label_ids: name -> label value.
        axis: array axis of the slices.

    Returns:
        {"per_slice": [...], "per_label": {name: {protocol: mean Dice}}, "mean": {protocol: mean over labels}, ...}
    """
    if labels_kji.shape != segmenter.volume.shape_kji:
        raise ValueError(f"Label map shape {labels_kji.shape} does not match the image {segmenter.volume.shape_kji}.")
    per_slice, per_label = [], {}
    jobs = []
    for name, value in label_ids.items():
        m = labels_kji == value
        if not m.any():
            raise ValueError(f"Label '{name}' (value {value}) is not present in the label map.")
        jobs += [(name, value, i) for i in pick_slices(m, axis, slices_per_label)]
    t0 = time.perf_counter()
    for n, (name, value, index) in enumerate(jobs):
        check_stop(should_stop)
        ref = geometry.extract_slice(labels_kji, axis, index) == value
        row = evaluate_slice(segmenter, axis, index, ref, seed=seed * 100003 + index * 31 + value)
        per_slice.append({"label": name, "value": value, "axis": axis, "slice": index, "area": int(ref.sum()), **row})
        if progress:
            progress((n + 1) / len(jobs), f"{name} slice {index} ({n + 1} of {len(jobs)})")
    for name in label_ids:
        rows = [r for r in per_slice if r["label"] == name]
        per_label[name] = {c: float(np.mean([r[c] for r in rows])) for c in DICE_COLUMNS}
        per_label[name]["slices"] = len(rows)
    mean = {c: float(np.mean([per_label[n][c] for n in per_label])) for c in DICE_COLUMNS}
    return {
        "protocol": "interactive",
        "image": segmenter.volume.name,
        "model": segmenter.backend.model_id,
        "intensity": segmenter.mapping.id,
        "axis": axis,
        "seed": seed,
        "per_slice": per_slice,
        "per_label": per_label,
        "mean": mean,
        "seconds": round(time.perf_counter() - t0, 1),
        "cache": segmenter.cache.stats.as_dict(),
    }


def interactive_markdown(result: dict) -> str:
    head = "| label | slices | " + " | ".join(DICE_COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(DICE_COLUMNS) + 2)]
    for name, row in result["per_label"].items():
        lines.append(f"| {name} | {row['slices']} | " + " | ".join(f"{row[c]:.3f}" for c in DICE_COLUMNS) + " |")
    lines.append("| **mean** | | " + " | ".join(f"**{result['mean'][c]:.3f}**" for c in DICE_COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def compare_markdown(results: dict[str, dict], columns: tuple[str, ...] = DICE_COLUMNS) -> str:
    """Mean Dice per label of several runs of the protocol (e.g. per prompt encoder), side by side per column."""
    names = list(results)
    first = results[names[0]]
    head = "| label | slices | " + " | ".join(f"{c} {n}" for c in columns for n in names) + " |"
    lines = [head, "|" + "---|" * (len(columns) * len(names) + 2)]
    for label, row in first["per_label"].items():
        cells = " | ".join(f"{results[n]['per_label'][label][c]:.3f}" for c in columns for n in names)
        lines.append(f"| {label} | {row['slices']} | {cells} |")
    cells = " | ".join(f"**{results[n]['mean'][c]:.3f}**" for c in columns for n in names)
    lines.append(f"| **mean** | | {cells} |")
    return "\n".join(lines) + "\n"
