"""The data of one propagation run, shared by every generator: config, per-slice records, result, run context.

A leaf: it imports nothing else of ``sammed.propagate``, so the generators (``sliding``, ``threshold``, ``sapnet``)
and the entry point (``api.propagate``) all build on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING
from typing import Any

import numpy as np

from .. import geometry
from ..jobs import ProgressFn
from ..jobs import StopFn
from ..prompts import Prompts
from .stop import StopRules

if TYPE_CHECKING:
    from ..segmenter import Segmenter


STATUSES = ("user", "generated", "empty", "stopped", "skipped")
SliceCallback = Callable[["SliceRecord", "np.ndarray | None"], None]


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
        use_learned: decode with the segmenter's learned (SAMassist) prompt encoder (None: the segmenter's own
            ``use_learned`` setting).
        seed: random seed (threshold point sampling, SAP-Net training).
        refine: redraw each mask SAM gives the sliding window or SAP-Net inside its prompt box, from intensity
            (target vs surroundings histograms of the user's slices) plus this weight x SAM's logit
            (``refine.refine_mask``); None switches it off. A box seed (``refine.seed_from_box``) is redrawn the
            same way inside the user's box.
    Sliding window:
        refine_reach: how many pixels a redrawn mask may reach beyond SAM's mask (0: it only removes pixels;
            None: anywhere in the box grown by 1 pixel). Growing let CT masks leak into touching organs of the
            same density, slice after slice (docs/propagation.md), so the window's masks only shrink.
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
    use_learned: bool | None = None
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
    """Shared state of one run: segmenter, axis, masks, records, progress/cancel, encode counting.

    Generators decode through ``segment`` (which applies ``config.use_learned``), finish a slice with ``accept``
    (mask written) or ``record`` (nothing written); both pass the slice to the run's ``on_slice`` callback.
    """

    def __init__(
        self,
        segmenter: Segmenter,
        user_masks: dict[int, np.ndarray],
        axis: int,
        config: PropagationConfig,
        lo: int,
        hi: int,
        progress: ProgressFn | None,
        should_stop: StopFn | None,
        on_slice: SliceCallback | None = None,
    ) -> None:
        self.seg = segmenter
        self.axis = axis
        self.config = config
        self.user = user_masks
        self.lo, self.hi = lo, hi  # inclusive slice range
        self.progress = progress
        self.should_stop = should_stop
        self.on_slice = on_slice
        self.geometry = segmenter.input_geometry(axis)
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
        """Poll ``should_stop``; once it answered True the run is cancelled."""
        if self.should_stop is not None and self.should_stop():
            self.cancelled = True
        return self.cancelled

    def tick(self, index: int, direction: int = 0) -> None:
        """Count one finished slice and report progress."""
        self.done += 1
        if self.progress is not None:
            way = {1: "up", -1: "down"}.get(direction, "")
            msg = f"Slice {index} ({self.done} of {self.total})" + (f", going {way}" if way else "")
            self.progress(min(1.0, self.done / self.total), msg)

    def embedding(self, index: int) -> np.ndarray:
        """The slice's embedding (encoded now if not cached; counted in ``encoded``)."""
        if not self.seg.is_cached(self.axis, index):
            self.encoded += 1
        return self.seg.embedding(self.axis, index)

    def slice_embedding(self, index: int) -> np.ndarray:
        """The slice's embedding cropped to the slice's own field of view (Cxhxw float32)."""
        return np.asarray(self.geometry.crop_to_slice(self.embedding(index)), dtype=np.float32)

    def segment(self, index: int, prompts: Prompts) -> Any:
        """Decode ``prompts`` on slice ``index`` (a ``SliceResult``), with or without the learned prompt encoder
        as ``config.use_learned`` says (None: the segmenter's own setting)."""
        self.embedding(index)  # counts the encode if the slice was not cached
        return self.seg.segment(self.axis, index, prompts, use_learned=self.config.use_learned)

    def image(self, index: int) -> np.ndarray:
        """HxW raw intensities of slice ``index``."""
        return geometry.extract_slice(self.seg.volume.array_kji, self.axis, index)

    def accept(self, rec: SliceRecord, mask_hw: np.ndarray) -> None:
        """Write a generated slice and record it."""
        if rec.index in self.user:
            raise RuntimeError("internal error: a generator tried to overwrite a user slice")  # pragma: no cover
        geometry.insert_slice(self.mask_kji, self.axis, rec.index, mask_hw)
        self.record(rec, mask_hw)

    def record(self, rec: SliceRecord, mask_hw: np.ndarray | None = None) -> None:
        """Keep the record of a visited slice (user slices keep theirs) and pass it to ``on_slice``."""
        if rec.index in self.user:
            return
        self.records[rec.index] = rec
        if self.on_slice is not None:
            self.on_slice(rec, mask_hw)
