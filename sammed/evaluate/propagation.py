"""Propagation protocol with a simulated user, and the SAP-Net ablation (SAMMed Table 5).

Per label:

- ``sliding``: one tight box (from the reference) on the slice with the largest reference area; SAM's mask there is
  the seed; Slide-SAM sliding window with the stop rules fills the rest.
- ``threshold`` and ``sapnet``: ``n_annotated`` reference slices drawn as in SAMMed section 3.3 (slice index
  ~ N(median of the foreground slices, std of the foreground slice indices), rounded, unique, inside the
  foreground) plus ``n_background`` slices drawn uniformly among the slices without the target (annotated empty;
  only SAP-Net uses them); the reference masks of these slices are the user's annotation.
- ``oracle_box`` (not a generator): a tight reference box on every foreground slice, no propagation. It bounds
  what any box-prompted generator can reach with this model, and so tells model errors from propagation errors.
- ``oracle_box_refined``: the same with each slice's mask redrawn by intensity inside its box, as a box seed is
  (``sammed.propagate.refine.seed_from_box``): the bound of the generators with refinement.

Volume Dice is over the whole volume (user slices included, as in the papers).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from .. import geometry
from ..jobs import ProgressFn
from ..propagate import GENERATORS
from ..propagate import PropagationConfig
from ..propagate import propagate
from ..propagate import seed_from_box
from ..segmenter import Segmenter
from .metrics import dice

ORACLE = "oracle_box"  # not a generator: the model's own bound (``run_oracle``)
ORACLE_REFINED = "oracle_box_refined"  # the same, each slice's mask refined as a box seed (``refine.seed_from_box``)
ORACLES = (ORACLE, ORACLE_REFINED)
ALL_COLUMNS = (*GENERATORS, *ORACLES)  # what ``sammed eval --protocol propagation --generators`` may name
_PAPER = dict(refine=None)  # the paper's rows: SAM refines the coarse masks, no intensity refinement (ours)
ABLATION = (
    (
        "prototypes only (PANet on SAM features)",
        dict(_PAPER, sap_use_fcn=False, sap_use_pe=False, sap_loss="ce", sap_topk=0),
    ),
    ("+ FCN", dict(_PAPER, sap_use_fcn=True, sap_use_pe=False, sap_loss="ce", sap_topk=0)),
    ("+ position encoding (SAP-Net)", dict(_PAPER, sap_use_fcn=True, sap_use_pe=True, sap_loss="ce", sap_topk=0)),
    ("+ biased Dice", dict(_PAPER, sap_use_fcn=True, sap_use_pe=True, sap_loss="biased_dice", sap_topk=0)),
    ("+ top-K post-processing", dict(_PAPER, sap_use_fcn=True, sap_use_pe=True, sap_loss="biased_dice", sap_topk=1)),
    (
        "+ intensity refinement (ours, the default)",
        dict(sap_use_fcn=True, sap_use_pe=True, sap_loss="biased_dice", sap_topk=1),
    ),
)


def choose_annotated(
    ref_kji: np.ndarray, axis: int, n: int, rng: np.random.Generator, n_background: int = 0
) -> tuple[list[int], list[int]]:
    """Annotated slices as in SAMMed 3.3: foreground ~ N(median, std^2) of the foreground slice indices, background
    uniform among the other slices. Returns (foreground slices, background slices), sorted."""
    z = np.asarray(geometry.foreground_slices(ref_kji, axis))
    if z.size == 0:
        raise ValueError("The reference has no voxel of this label.")
    m, s = float(np.median(z)), float(max(z.std(), 1.0))
    chosen: set[int] = set()
    tries = 0
    while len(chosen) < min(n, z.size) and tries < 10000:
        i = int(round(rng.normal(m, s)))
        tries += 1
        if i in set(z.tolist()):
            chosen.add(i)
    bgz = np.setdiff1d(np.arange(ref_kji.shape[axis]), z)
    bg = sorted(rng.choice(bgz, size=min(n_background, bgz.size), replace=False).tolist()) if bgz.size else []
    return sorted(chosen), [int(b) for b in bg]


def _slices(ref_kji: np.ndarray, axis: int, idx: list[int]) -> dict[int, np.ndarray]:
    return {int(i): geometry.extract_slice(ref_kji, axis, int(i)).astype(bool) for i in idx}


def run_oracle(segmenter: Segmenter, ref_kji: np.ndarray, axis: int = 0, refine: float | None = None) -> dict:
    """Upper bound of every box-prompted generator: a tight box from the reference on every foreground slice.

    No propagation and no stop rule: what the model gives when each slice gets the best box (and, with ``refine``
    a weight, its mask redrawn by intensity inside the box as ``seed_from_box`` does). A generator cannot beat this
    by much, so when it is low the model, not the propagation, is what fails.
    """
    t0 = time.perf_counter()
    out = np.zeros_like(ref_kji, dtype=bool)
    per = {}
    for i in geometry.foreground_slices(ref_kji, axis):
        ref_hw = geometry.extract_slice(ref_kji, axis, i)
        m, _ = seed_from_box(segmenter, axis, i, geometry.box_from_mask(ref_hw), refine)
        geometry.insert_slice(out, axis, i, m)
        per[int(i)] = round(dice(m, ref_hw), 4)
    return {
        "generator": ORACLE if refine is None else ORACLE_REFINED,
        "dice": round(dice(out, ref_kji), 4),
        "slice_dice": per,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def run_one(
    segmenter: Segmenter,
    ref_kji: np.ndarray,
    generator: str,
    axis: int = 0,
    seed: int = 0,
    config: PropagationConfig | None = None,
    n_annotated: int = 5,
    n_background: int = 2,
    progress: ProgressFn | None = None,
) -> dict:
    """One label, one generator: returns Dice, slices, timing and the result's summary."""
    config = config or PropagationConfig()
    ref = np.asarray(ref_kji, bool)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    if generator in ORACLES:
        return run_oracle(segmenter, ref, axis, config.refine if generator == ORACLE_REFINED else None)
    if generator == "sliding":
        s = geometry.largest_slice(ref, axis)
        box = geometry.box_from_mask(geometry.extract_slice(ref, axis, s))
        seed_mask, _ = seed_from_box(segmenter, axis, s, box, config.refine)
        user = {s: seed_mask}
        annotated = {"seed": s, "box": [float(v) for v in box]}
    else:
        fg, bg = choose_annotated(ref, axis, n_annotated, rng, n_background if generator == "sapnet" else 0)
        user = _slices(ref, axis, fg + bg)
        annotated = {"foreground": fg, "background": bg}
    res = propagate(segmenter, user, axis, generator, config, progress=progress)
    out = {
        "generator": generator,
        "dice": round(dice(res.mask_kji, ref), 4),
        "annotated": annotated,
        "encoded": res.encoded,
        "seconds": round(time.perf_counter() - t0, 2),
        "counts": res.counts(),
    }
    if res.coarse_kji is not None:
        out["coarse_dice"] = round(dice(res.coarse_kji, ref), 4)
    if "sapnet" in res.info:
        out["train"] = res.info["sapnet"]
    return out


def run_propagation_protocol(
    segmenter: Segmenter,
    labels_kji: np.ndarray,
    label_ids: dict[str, int] | list[int],
    generators: Sequence[str] = ALL_COLUMNS,
    seed: int = 0,
    progress: ProgressFn | None = None,
    axis: int = 0,
    config: PropagationConfig | None = None,
    ablation: bool = True,
    ablation_labels: list[str] | None = None,
) -> dict:
    """Run every generator on every label, plus the SAP-Net ablation.

    Args:
        segmenter: a Segmenter on the image.
        labels_kji: KxJxI integer reference label map on the image grid.
        label_ids: {name: value} (or a list of values, named by value).
        generators: subset of ``sammed.propagate.GENERATORS``, plus ``ORACLES`` (a tight reference box on every
            foreground slice, without and with refinement: the bounds of the box-prompted generators).
        seed: random seed of the slice choice and training.
        progress: ``progress(fraction, message)``.
        ablation: also run the rows of ``ABLATION`` (SAP-Net) on ``ablation_labels`` (default: all labels).

    Returns:
        ``{"results": {label: {generator: {...}}}, "ablation": {row: {label: dice}}, "config": ...}``.

    Raises:
        ValueError: a label is absent from the reference.
    """
    config = config or PropagationConfig(seed=seed)
    if not isinstance(label_ids, dict):
        label_ids = {str(v): int(v) for v in label_ids}
    for name, v in label_ids.items():
        if not np.any(labels_kji == v):
            raise ValueError(f"Label {name} ({v}) is not in the reference label map.")
    results: dict = {}
    todo = len(label_ids) * len(generators)
    done = 0
    for name, v in label_ids.items():
        ref = labels_kji == v
        results[name] = {}
        for g in generators:
            if progress:
                progress(done / max(todo, 1), f"{g} on {name}")
            results[name][g] = run_one(segmenter, ref, g, axis, seed, config)
            done += 1
    abl: dict = {}
    if ablation and "sapnet" in generators:
        names = ablation_labels or list(label_ids)
        for row, opts in ABLATION:
            abl[row] = {}
            for name in names:
                cfg = replace(config, **opts)
                r = run_one(segmenter, labels_kji == label_ids[name], "sapnet", axis, seed, cfg)
                abl[row][name] = {"dice": r["dice"], "coarse_dice": r.get("coarse_dice")}
    return {"results": results, "ablation": abl, "seed": seed, "config": _config_json(config)}


def _config_json(config: PropagationConfig) -> dict:
    d = {k: v for k, v in config.__dict__.items() if k != "rules"}
    d["rules"] = config.rules.as_dict()
    return d


def _fmt(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def propagation_markdown(result: dict) -> str:
    """Markdown tables: Dice per label and generator; the SAP-Net ablation (coarse / after SAM)."""
    res = result["results"]
    order = ALL_COLUMNS
    gens = sorted({g for r in res.values() for g in r}, key=order.index)
    lines = ["| label | " + " | ".join(gens) + " |", "|---|" + "---|" * len(gens)]
    for name, r in res.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(r[g]["dice"]) if g in r else "-" for g in gens) + " |")
    means = [np.mean([r[g]["dice"] for r in res.values() if g in r]) for g in gens]
    lines.append("| **mean** | " + " | ".join(_fmt(float(m)) for m in means) + " |")
    if result.get("ablation"):
        names = list(next(iter(result["ablation"].values())))
        lines += [
            "",
            "SAP-Net ablation (5 annotated slices; Dice after SAM refinement, coarse Dice in brackets):",
            "",
            "| configuration | " + " | ".join(names) + " | mean |",
            "|---|" + "---|" * (len(names) + 1),
        ]
        for row, r in result["ablation"].items():
            cells = [f"{_fmt(r[n]['dice'])} ({_fmt(r[n]['coarse_dice'])})" for n in names]
            m = float(np.mean([r[n]["dice"] for n in names]))
            lines.append(f"| {row} | " + " | ".join(cells) + f" | {_fmt(m)} |")
    return "\n".join(lines) + "\n"
