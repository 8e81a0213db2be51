"""Public entry point of the volume generators: ``propagate(segmenter, user_masks, ...)``.

A generator fills the slices of one target (one label) on one array axis from the user's annotated slices:

- ``sliding``: Slide-SAM's sliding window, the box of the previous mask (after a morphological opening, plus a
  margin) prompts the next slice, in both directions from each seed, until a stop rule fires (``stop.py``);
- ``threshold``: SAMMed's prompt propagation, positive points carried to the next slice while they pass a dynamic
  intensity threshold (``threshold.py``);
- ``sapnet``: SAMMed's SAP-Net, a few-shot coarse segmentation on cached SAM features whose masks become box
  prompts for SAM (``sapnet.py``, needs torch).

User slices are never changed; every other visited slice gets a ``SliceRecord``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field

import numpy as np

from .. import geometry
from ..jobs import ProgressFn
from ..jobs import StopFn
from .stop import StopRules

GENERATORS = ("sliding", "threshold", "sapnet")
STATUSES = ("user", "generated", "empty", "stopped", "skipped")


@dataclass
class SliceRecord:
    """What happened on one visited slice.

    Attributes:
        index: slice index on the axis.
        status: ``user`` (annotated, copied unchanged), ``generated`` (mask written), ``empty`` (judged absent,
            nothing written), ``stopped`` (a stop rule fired here; nothing written, no further slices this way),
            ``skipped`` (not processed, e.g. a blank slice).
        prompt: JSON-able prompt used: ``{"box": [x0, y0, x1, y1]}`` and/or ``{"points": [[x, y], ...],
            "labels": [...]}`` in slice pixels (``extract_slice`` layout); ``{}`` for user slices.
        iou: the model's predicted IoU (nan for user slices).
        area: mask pixels (of the written mask; of the rejected candidate for ``stopped``/``empty``).
        reason: why a slice was stopped/empty (the rule name), else "".
        direction: +1 / -1 for the direction of travel, 0 for user slices and SAP-Net.
    """

    index: int
    status: str
    prompt: dict
    iou: float
    area: int
    reason: str = ""
    direction: int = 0

    def to_json(self) -> dict:
        d = asdict(self)
        d["iou"] = None if not math.isfinite(self.iou) else round(float(self.iou), 4)
        return d


@dataclass
class PropagationResult:
    """Output of ``propagate``.

    Attributes:
        mask_kji: bool KxJxI mask on the volume grid; user slices copied unchanged.
        axis: the array axis the generator moved along.
        records: one per visited slice, sorted by index.
        cancelled: True when ``should_stop()`` ended the run early (the mask holds the slices done so far).
        encoded: slices encoded during this run (0 when every embedding was cached).
        generator: the generator's name.
        seconds: wall time of the run.
        info: generator-specific extras (e.g. SAP-Net training loss), JSON-able.
        coarse_kji: SAP-Net only: its coarse (pre-SAM) masks on the volume grid, user slices included; else None.
    """

    mask_kji: np.ndarray
    axis: int
    records: list[SliceRecord]
    cancelled: bool
    encoded: int
    generator: str = "sliding"
    seconds: float = 0.0
    info: dict = field(default_factory=dict)
    coarse_kji: np.ndarray | None = None

    def counts(self) -> dict:
        return {s: sum(r.status == s for r in self.records) for s in STATUSES}

    def to_json(self) -> dict:
        """Per-slice table plus a summary, JSON-able."""
        return {
            "generator": self.generator,
            "axis": self.axis,
            "cancelled": self.cancelled,
            "encoded": self.encoded,
            "seconds": round(self.seconds, 3),
            "voxels": int(self.mask_kji.sum()),
            "counts": self.counts(),
            "info": self.info,
            "slices": [r.to_json() for r in self.records],
        }


@dataclass
class PropagationConfig:
    """Options of the generators (defaults are the ones measured in docs/propagation.md).

    Common:
        rules: stop rules (``stop.StopRules``).
        context: ``None`` (use the segmenter's), ``repeat`` or ``adjacent`` (slices i-1, i, i+1 as the 3 channels,
            as Slide-SAM; a different context means different embeddings, encoded once and cached).
        fill_only_empty: kept True: only slices without user annotation are filled (user slices never change).
        seed: random seed (threshold point sampling, SAP-Net training).
        refine: redraw each mask SAM gives the sliding window or SAP-Net inside its prompt box, from intensity
            (target vs surroundings histograms of the user's slices) plus this weight x SAM's logit
            (``refine.refine_mask``); None switches it off. A box seed (``refine.seed_from_box``) is redrawn the
            same way inside the user's box.
    Sliding window:
        refine_reach: how many pixels a redrawn mask may reach beyond SAM's mask (0: it only removes pixels;
            None: anywhere in the box grown by 1 pixel). Growing let CT masks leak into touching organs of the
            same density, slice after slice (CT spleen 0.960 -> 0.912), so the window's masks only shrink.
        margin: pixels added on each side of the box of the previous mask.
        opening: iterations of the 3x3 morphological opening applied to the previous mask before its box.
        keep_connected: keep only the parts of a new mask that touch the previous mask (grown by 2 pixels).
        trim: trim a new mask to its intensity-consistent core (``sliding.trim_to_core``; range from the seeds'
            interior, the stop rules' quantiles and tolerance) when that removes more than this fraction of it;
            None switches trimming off. The intensity stop rule still judges the untrimmed mask.
        trim_core_radius: masks with an equivalent radius (pixels) at least this large keep only in-range pixels
            (then opened); smaller ones lose only out-of-range blobs that survive an opening.
    Threshold propagation:
        n_points: positive points sampled on each seed slice.
        threshold_k: a carried point passes when its intensity lies within ``threshold_k`` x the (running)
            standard deviation of the target's intensity from the running mean.
        threshold_update: weight of the newest slice in the running mean/std (dynamic threshold).
        min_points: stop when fewer points pass.
    SAP-Net:
        sap_epochs, sap_lr, sap_alpha (cosine scale), sap_beta (FP weight of the biased Dice), sap_sigma (Fourier
        B ~ N(0, sigma^2)), sap_pe_dim, sap_hidden, sap_use_fcn, sap_use_pe, sap_loss (``biased_dice``, ``dice``
        or ``ce``), sap_topk (components kept, 0 = no post-processing), sap_refine (SAM refines the coarse masks
        from a box prompt grown by sap_margin pixels), sap_min_area (coarse masks smaller than this are empty),
        sap_refine_reach (``refine_reach`` for SAP-Net's masks: None, because each box comes from the slice's own
        coarse mask, so a grown mask does not carry over to the next slice).
    """

    rules: StopRules = field(default_factory=StopRules)
    context: str | None = None
    fill_only_empty: bool = True
    seed: int = 0
    margin: float = 2.5  # + the half pixel of the box edge convention (geometry.SliceGrid.box_to_model) = 3 px
    opening: int = 1
    keep_connected: bool = True
    trim: float | None = 0.05
    trim_core_radius: float = 12.0
    refine: float | None = 0.25
    refine_reach: int | None = 0
    n_points: int = 5
    threshold_k: float = 2.0
    threshold_update: float = 0.3
    min_points: int = 1
    sap_epochs: int = 100
    sap_lr: float = 1e-3
    sap_alpha: float = 20.0
    sap_beta: float = 2.0
    sap_sigma: float = 10.0
    sap_pe_dim: int = 32
    sap_hidden: int = 32
    sap_use_fcn: bool = True
    sap_use_pe: bool = True
    sap_loss: str = "biased_dice"
    sap_topk: int = 1
    sap_refine: bool = True
    sap_min_area: int = 10
    sap_margin: float = 1.5  # + the half pixel of the box edge convention = 2 px
    sap_refine_reach: int | None = None


class Context:
    """Shared state of one run: segmenter, axis, masks, records, progress/cancel, encode counting."""

    def __init__(self, segmenter, user_masks: dict[int, np.ndarray], axis: int, config: PropagationConfig,
                 lo: int, hi: int, progress: ProgressFn | None, should_stop: StopFn | None) -> None:
        self.seg = segmenter
        self.axis = axis
        self.config = config
        self.user = user_masks
        self.lo, self.hi = lo, hi  # inclusive slice range
        self.progress = progress
        self.should_stop = should_stop
        self.mask_kji = np.zeros(segmenter.volume.shape_kji, dtype=bool)
        self.records: dict[int, SliceRecord] = {}
        self.encoded = 0
        self.cancelled = False
        self.done = 0
        self.total = max(1, hi - lo + 1 - sum(lo <= i <= hi for i in user_masks))
        self.info: dict = {}
        self.coarse: dict[int, np.ndarray] = {}
        for i, m in user_masks.items():
            geometry.insert_slice(self.mask_kji, axis, i, m)
            self.records[i] = SliceRecord(i, "user", {}, float("nan"), int(m.sum()))

    def stop_requested(self) -> bool:
        if self.should_stop is not None and self.should_stop():
            self.cancelled = True
        return self.cancelled

    def tick(self, index: int, direction: int = 0) -> None:
        self.done += 1
        if self.progress is not None:
            way = {1: "up", -1: "down"}.get(direction, "")
            msg = f"Slice {index} ({self.done} of {self.total})" + (f", going {way}" if way else "")
            self.progress(min(1.0, self.done / self.total), msg)

    def embedding(self, index: int) -> np.ndarray:
        if not self.seg.is_cached(self.axis, index):
            self.encoded += 1
        return self.seg.embedding(self.axis, index)

    def image(self, index: int) -> np.ndarray:
        return geometry.extract_slice(self.seg.volume.array_kji, self.axis, index)

    def write(self, index: int, mask_hw: np.ndarray) -> None:
        if index in self.user:
            raise RuntimeError("internal error: a generator tried to overwrite a user slice")  # pragma: no cover
        geometry.insert_slice(self.mask_kji, self.axis, index, mask_hw)

    def record(self, rec: SliceRecord) -> None:
        if rec.index not in self.user:
            self.records[rec.index] = rec


def _check_inputs(segmenter, user_masks, axis: int, generator: str, slice_range) -> tuple[dict, int, int]:
    if generator not in GENERATORS:
        raise ValueError(f"Unknown generator '{generator}'; use one of {', '.join(GENERATORS)}.")
    axis = geometry.check_axis(axis)
    shape_kji = segmenter.volume.shape_kji
    n = shape_kji[axis]
    if not user_masks:
        what = "annotated slices for SAP-Net" if generator == "sapnet" else "a seed slice with a mask"
        raise ValueError(f"No {what} given: annotate at least one slice first.")
    expected = geometry.slice_shape(shape_kji, axis)
    masks: dict[int, np.ndarray] = {}
    for idx, m in user_masks.items():
        i = int(idx)
        if not 0 <= i < n:
            raise ValueError(f"Seed slice {idx} is out of range on axis {axis}: the volume has slices 0..{n - 1}.")
        a = np.asarray(m)
        if a.shape != expected:
            raise ValueError(f"Seed mask of slice {i} has shape {a.shape}, but slices on axis {axis} are {expected}: "
                             "the mask is not on the volume grid.")
        values = np.unique(a)
        if a.dtype != bool and np.count_nonzero(values) > 1:
            raise ValueError(f"Seed mask of slice {i} holds several labels {values[values != 0].tolist()}: "
                             "conflicting labels; give one binary mask per slice (pick one label).")
        masks[i] = a.astype(bool)
    nonempty = [i for i, m in masks.items() if m.any()]
    if generator in ("sliding", "threshold"):
        empty = sorted(set(masks) - set(nonempty))
        if empty:
            raise ValueError(f"Seed mask of slice {empty[0]} is empty: draw the target (or a box) on each seed slice.")
    elif not nonempty:
        raise ValueError("SAP-Net needs at least one annotated slice that contains the target; all are empty.")
    if slice_range is None:
        lo, hi = 0, n - 1
    else:
        lo, hi = int(slice_range[0]), int(slice_range[1])
        if not (0 <= lo <= hi < n):
            raise ValueError(f"Slice range {slice_range} is not inside 0..{n - 1} on axis {axis}.")
    if any(not lo <= i <= hi for i in nonempty) and generator != "sapnet":
        raise ValueError(f"Seed slices {sorted(nonempty)} must lie inside the slice range {lo}..{hi}.")
    return masks, lo, hi


def with_context(segmenter, context: str | None):
    """The segmenter itself, or a sibling sharing volume/backend/mapping/cache with another slice context."""
    if context is None or context == segmenter.context:
        return segmenter
    from ..segmenter import Segmenter

    sib = Segmenter(segmenter.volume, segmenter.backend, segmenter.mapping, segmenter.cache, context=context)
    sib.prompt_encoder = segmenter.prompt_encoder
    sib.use_learned = segmenter.use_learned
    return sib


def propagate(segmenter, user_masks: dict[int, np.ndarray], axis: int = 0, generator: str = "sliding",
              config: PropagationConfig | None = None, slice_range: tuple[int, int] | None = None,
              progress: ProgressFn | None = None, should_stop: StopFn | None = None) -> PropagationResult:
    """Fill the slices of one target from the user's annotated slices.

    Args:
        segmenter: a ``sammed.segmenter.Segmenter`` on the volume (its cache is reused: cached slices are never
            encoded again).
        user_masks: slice index -> HxW bool mask in ``extract_slice`` layout (seed / annotated slices). For
            ``sapnet`` an all-False mask means "annotated, target absent"; other generators need non-empty masks.
        axis: array axis of the slices (0 = axial for a KJI volume).
        generator: one of ``GENERATORS``.
        config: options (``PropagationConfig()`` if None).
        slice_range: inclusive (first, last) slice indices the generator may fill (default: the whole axis).
        progress: ``progress(fraction, message)``, called once per slice ("Slice i (k of n), going up").
        should_stop: polled before each slice; when it answers True the run ends within one slice and the
            partial result is returned with ``cancelled=True``.

    Returns:
        a ``PropagationResult``; user slices are copied unchanged into ``mask_kji``.

    Raises:
        ValueError: unknown generator, no/empty seed, seed out of range or not on the slice grid, several labels
            in one seed mask, bad slice range. Nothing is computed then.
    """
    config = config or PropagationConfig()
    masks, lo, hi = _check_inputs(segmenter, user_masks, axis, generator, slice_range)
    seg = with_context(segmenter, config.context)
    ctx = Context(seg, masks, geometry.check_axis(axis), config, lo, hi, progress, should_stop)
    t0 = time.perf_counter()
    if generator == "sliding":
        from .sliding import run_sliding

        run_sliding(ctx)
    elif generator == "threshold":
        from .threshold import run_threshold

        run_threshold(ctx)
    else:
        from .sapnet import run_sapnet

        run_sapnet(ctx)
    for i, m in masks.items():  # user slices are the user's, whatever happened
        geometry.insert_slice(ctx.mask_kji, ctx.axis, i, m)
    records = [ctx.records[i] for i in sorted(ctx.records)]
    coarse = None
    if ctx.coarse:
        coarse = np.zeros_like(ctx.mask_kji)
        for i, m in list(ctx.coarse.items()) + list(masks.items()):
            geometry.insert_slice(coarse, ctx.axis, i, m)
    return PropagationResult(ctx.mask_kji, ctx.axis, records, ctx.cancelled, ctx.encoded, generator,
                             time.perf_counter() - t0, ctx.info, coarse)
