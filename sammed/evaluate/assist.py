"""SAMassist protocol of the SAMMed paper (Table 2), with the simulated users of ``evaluate.clicks``.

For each label: training slices are drawn from N(m, s^2) over the label's foreground slices (m = median
foreground slice, s = standard deviation of the foreground slice indices), a prompt encoder is learned from them
(``sammed.assist``), and every other foreground slice is segmented zero-shot and with the learned encoder by

- 1, 3 and 10 clicks of Algorithm 1 (first click farthest from the background, then corrective clicks),
- 1 box (the tight box jittered by [-d_in, d_out] pixels per side, the same box for both encoders),
- composite: that box, then up to 5 corrective clicks, keeping the best Dice (the paper's active scheme).

Dice per slice, averaged over the evaluation slices of a label, then over labels.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Any

import numpy as np

from ..geometry import extract_slice
from ..geometry import foreground_slices
from ..jobs import ProgressFn
from ..jobs import StopFn
from ..jobs import check_stop
from ..segmenter import Segmenter
from .clicks import first_click
from .clicks import jittered_box
from .clicks import next_click
from .metrics import dice

if TYPE_CHECKING:
    from ..assist.config import AssistConfig

METRICS = ("click1", "click3", "click10", "box", "composite")


def choose_training_slices(fg_slices: Iterable[int], n: int, rng: np.random.Generator) -> list[int]:
    """``n`` distinct foreground slices drawn from N(median, std^2) of the foreground slice indices (paper 4.2).

    Raises:
        ValueError: fewer than ``n + 1`` foreground slices (nothing would be left to evaluate).
    """
    fg = sorted(int(s) for s in fg_slices)
    if len(fg) < n + 1:
        raise ValueError(f"The label is on {len(fg)} slices; {n} training slices need at least {n + 1}.")
    m, s = float(np.median(fg)), max(float(np.std(fg)), 1.0)
    fg_set, chosen = set(fg), []
    for _ in range(1000):
        k = int(round(rng.normal(m, s)))
        if k in fg_set and k not in chosen:
            chosen.append(k)
            if len(chosen) == n:
                break
    for k in sorted(fg, key=lambda v: abs(v - m)):  # fallback, practically never used
        if len(chosen) == n:
            break
        if k not in chosen:
            chosen.append(k)
    return sorted(chosen)


def _slice_rng(seed: int, label_value: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(label_value), int(index)])


def evaluate_slice(
    segmenter: Segmenter,
    axis: int,
    index: int,
    ref_hw: np.ndarray,
    use_learned: bool,
    seed: int,
    label_value: int,
    clicks: tuple[int, ...] = (1, 3, 10),
    box_jitter: tuple[float, float] = (1.0, 3.0),
    composite: bool = True,
) -> dict:
    """Dice of the simulated users on one slice.

    Args:
        ref_hw: HxW bool reference mask (non-empty) in the ``extract_slice`` layout.
        use_learned: decode with the segmenter's learned prompt encoder (True) or the original (False).
        seed, label_value: make clicks and the jittered box the same for both encoders.

    Returns:
        {"click1": ..., "click3": ..., "click10": ..., "box": ..., "composite": ...} (only those asked for).
    """
    out: dict[str, float] = {}
    n_max = max(clicks) if clicks else 0
    if n_max:
        rng = _slice_rng(seed, label_value, index)
        pts, labs, dices = [first_click(ref_hw, rng)], [1], []
        for k in range(1, n_max + 1):
            res = segmenter.segment(
                axis, index, points_xy=np.array(pts), point_labels=np.array(labs), use_learned=use_learned
            )
            dices.append(dice(res.mask_hw, ref_hw))
            if k == n_max:
                break
            nxt = next_click(res.mask_hw, ref_hw, rng)
            if nxt is None:
                dices += [dices[-1]] * (n_max - k)
                break
            pts.append(nxt[0])
            labs.append(nxt[1])
        for c in clicks:
            out[f"click{c}"] = dices[c - 1]
    rng = _slice_rng(seed + 1, label_value, index)
    box = jittered_box(ref_hw, rng, d_in=box_jitter[0], d_out=box_jitter[1])
    res = segmenter.segment(axis, index, box_xyxy=box, use_learned=use_learned)
    out["box"] = dice(res.mask_hw, ref_hw)
    if composite:
        best, pts, labs, mask = out["box"], [], [], res.mask_hw
        for _ in range(5):
            nxt = next_click(mask, ref_hw, rng)
            if nxt is None:
                break
            pts.append(nxt[0])
            labs.append(nxt[1])
            mask = segmenter.segment(
                axis, index, box_xyxy=box, points_xy=np.array(pts), point_labels=np.array(labs), use_learned=use_learned
            ).mask_hw
            best = max(best, dice(mask, ref_hw))
        out["composite"] = best
    return out


def _mean(rows: list[dict]) -> dict:
    if not rows:
        return {}
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def run_assist_protocol(
    segmenter: Segmenter,
    labels_kji: np.ndarray,
    label_ids: Mapping[str, int],
    n_train: tuple[int, ...] = (2, 5),
    clicks: tuple[int, ...] = (1, 3, 10),
    seed: int = 0,
    axis: int = 0,
    config: AssistConfig | None = None,
    max_eval_slices: int | None = None,
    composite: bool = True,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> dict:
    """The SAMassist protocol on one volume.

    Args:
        segmenter: ``Segmenter`` on the image with a SAM-family backend (its cache is reused; its prompt encoder
            setting is restored afterwards).
        labels_kji: KxJxI integer reference label map on the image grid.
        label_ids: {name: label value}; labels on fewer than max(n_train) + 1 slices are skipped (listed).
        n_train: numbers of training slices to compare.
        clicks: click counts reported (Algorithm 1 clicks are sequential; the largest sets the work).
        seed: seeds slice choice, training and simulated users.
        config: ``assist.AssistConfig`` (its seed is replaced by ``seed``).
        max_eval_slices: evaluate at most this many slices per label (evenly spread; None = all).
        composite: also run the composite (box + up to 5 clicks) user.
        progress: ``progress(fraction, message)``; should_stop: checked before each slice.

    Returns:
        {"labels": {name: {"label": value, "fg_slices": n, "runs": {str(n): {"train_slices", "eval_slices",
        "fit_seconds", "steps", "zero_shot": {metric: mean Dice}, "learned": {...}}}}},
        "mean": {str(n): {"zero_shot": {...}, "learned": {...}}}, "skipped": [...], "settings": {...}}

    Raises:
        ValueError: labels that do not match the image.
    """
    from ..assist import AssistConfig

    labels_kji = np.asarray(labels_kji)
    if labels_kji.shape != tuple(segmenter.volume.shape_kji):
        raise ValueError(f"The label map has shape {labels_kji.shape}, the image {segmenter.volume.shape_kji}.")
    base_cfg = config or AssistConfig()
    saved = (segmenter.prompt_encoder, segmenter.use_learned)
    settings = dict(
        n_train=list(n_train),
        clicks=list(clicks),
        seed=seed,
        axis=axis,
        max_eval_slices=max_eval_slices,
        composite=composite,
        model=segmenter.backend.model_id,
        config=dict(vars(base_cfg)),
    )
    result: dict[str, Any] = {"labels": {}, "mean": {}, "skipped": [], "settings": settings}
    run = _LabelRun(
        segmenter,
        labels_kji,
        axis,
        seed,
        clicks,
        composite,
        max_eval_slices,
        AssistConfig(**{**vars(base_cfg), "seed": seed}),
        should_stop,
    )
    todo = [(name, int(v)) for name, v in label_ids.items()]
    t0 = time.perf_counter()
    try:
        for li, (name, value) in enumerate(todo):
            fg = foreground_slices(labels_kji == value, axis)
            if len(fg) < max(n_train) + 1:
                result["skipped"].append(name)
                continue
            entry: dict[str, Any] = {"label": value, "fg_slices": len(fg), "runs": {}}
            zero_cache: dict[int, dict] = {}
            for k, n in enumerate(n_train):
                report = _reporter(
                    progress, f"{name}: {n} training slices", (li * len(n_train) + k, len(todo) * len(n_train)), t0
                )
                entry["runs"][str(n)] = run.run(name, value, fg, n, zero_cache, report)
            result["labels"][name] = entry
    finally:
        segmenter.prompt_encoder, segmenter.use_learned = saved
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return summarise(result)


def _reporter(progress: ProgressFn | None, what: str, part: tuple[int, int], t0: float) -> Callable[[int, int], None]:
    """``report(done, total)`` for the ``part[0]``-th of ``part[1]`` equal parts of the whole protocol."""

    def report(done: int, total: int) -> None:
        if progress:
            elapsed = time.perf_counter() - t0
            progress((part[0] + done / total) / part[1], f"{what}, slice {done}/{total} ({elapsed:.0f} s)")

    return report


@dataclass
class _LabelRun:
    """One label with ``n`` training slices: fit on slices drawn as in the paper, then every simulated user on the
    held-out slices, zero-shot and with the learned encoder."""

    segmenter: Segmenter
    labels_kji: np.ndarray
    axis: int
    seed: int
    clicks: tuple[int, ...]
    composite: bool
    max_eval_slices: int | None
    config: AssistConfig
    should_stop: StopFn | None

    def eval_slices(self, fg: list[int], train: list[int]) -> list[int]:
        evals = [s for s in fg if s not in train]
        if self.max_eval_slices and len(evals) > self.max_eval_slices:
            pick = np.linspace(0, len(evals) - 1, self.max_eval_slices).round().astype(int)
            evals = [evals[i] for i in sorted(set(pick.tolist()))]
        return evals

    def run(
        self,
        name: str,
        value: int,
        fg: list[int],
        n: int,
        zero_cache: dict[int, dict],
        report: Callable[[int, int], None],
    ) -> dict:
        from ..assist import fit_prompt_encoder

        seg, axis = self.segmenter, self.axis
        train = choose_training_slices(fg, n, np.random.default_rng([self.seed, value, n]))
        evals = self.eval_slices(fg, train)
        masks = {s: extract_slice(self.labels_kji, axis, s) == value for s in train}
        learned = fit_prompt_encoder(
            seg, masks, axis=axis, target=name, config=self.config, should_stop=self.should_stop
        )
        seg.prompt_encoder = learned.module
        zs, lr = [], []
        for si, s in enumerate(evals):
            check_stop(self.should_stop)
            ref = extract_slice(self.labels_kji, axis, s) == value
            if s not in zero_cache:
                zero_cache[s] = evaluate_slice(
                    seg, axis, s, ref, False, self.seed, value, self.clicks, composite=self.composite
                )
            zs.append(zero_cache[s])
            lr.append(evaluate_slice(seg, axis, s, ref, True, self.seed, value, self.clicks, composite=self.composite))
            report(si + 1, len(evals))
        return {
            "train_slices": train,
            "eval_slices": len(evals),
            "fit_seconds": round(learned.seconds, 2),
            "steps": learned.steps_done,
            "final_loss": round(learned.history[-1], 4),
            "zero_shot": _mean(zs),
            "learned": _mean(lr),
        }


def summarise(result: dict) -> dict:
    """(Re)compute ``result["mean"]`` (average over labels) from ``result["labels"]``; returns ``result``."""
    for n in result["settings"]["n_train"]:
        runs = [e["runs"][str(n)] for e in result["labels"].values()]
        result["mean"][str(n)] = {
            "zero_shot": _mean([r["zero_shot"] for r in runs]),
            "learned": _mean([r["learned"] for r in runs]),
            "fit_seconds": float(np.mean([r["fit_seconds"] for r in runs])) if runs else 0.0,
        }
    return result


def merge_results(results: list[dict]) -> dict:
    """Merge protocol results of the same settings run on different labels (e.g. one label per process)."""
    if not results:
        raise ValueError("Nothing to merge.")
    merged = {
        "labels": {},
        "mean": {},
        "skipped": [],
        "settings": results[0]["settings"],
        "seconds": sum(r.get("seconds", 0.0) for r in results),
    }
    for r in results:
        merged["labels"].update(r["labels"])
        merged["skipped"] += r.get("skipped", [])
    return summarise(merged)


def assist_markdown(result: dict) -> str:
    """A Table-2-like Markdown table: rows = user x encoder, columns = labels + average (Dice in %)."""
    names = list(result["labels"])
    head = "| training slices | encoder | prompt | " + " | ".join(names) + " | Ave |"
    lines = [head, "|" + "---|" * (len(names) + 4)]
    metrics = [
        m for m in METRICS if any(m in r["zero_shot"] for e in result["labels"].values() for r in e["runs"].values())
    ]
    for n in result["settings"]["n_train"]:
        for enc in ("zero_shot", "learned"):
            for m in metrics:
                vals = [result["labels"][k]["runs"][str(n)][enc].get(m, float("nan")) * 100 for k in names]
                ave = result["mean"][str(n)][enc].get(m, float("nan")) * 100
                label = {
                    "click1": "1 click",
                    "click3": "3 clicks",
                    "click10": "10 clicks",
                    "box": "1 box",
                    "composite": "box + 5 clicks (best)",
                }.get(m, m)
                enc_name = "SAM zero-shot" if enc == "zero_shot" else "SAMassist"
                lines.append(
                    f"| {n} | {enc_name} | {label} | " + " | ".join(f"{v:.1f}" for v in vals) + f" | {ave:.1f} |"
                )
    fit = ", ".join(f"{n} slices: {result['mean'][str(n)]['fit_seconds']:.1f} s" for n in result["settings"]["n_train"])
    lines.append("")
    lines.append(
        f"Mean fit time per label ({fit}); evaluation slices per label: "
        + ", ".join(
            f"{k} {e['runs'][str(result['settings']['n_train'][0])]['eval_slices']}"
            for k, e in result["labels"].items()
        )
        + "."
    )
    if result.get("skipped"):
        lines.append(f"Skipped (too few slices): {', '.join(result['skipped'])}.")
    return "\n".join(lines)
