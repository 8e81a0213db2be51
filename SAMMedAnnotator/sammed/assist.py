"""SAMassist: learn a case-specific prompt encoder from a few annotated slices (SAMMed paper, section 3.2.1).

Only a copy of the backend's prompt encoder is trained; the image encoder and the mask decoder stay frozen, and
the annotated slices' embeddings come from the segmenter's cache (a slice is encoded only if it was never cached).

Training, per step and per annotated slice, samples a batch of prompts of one kind from the reference mask:

- ``points``: ``n`` positive points, ``n`` drawn from [1, N_pt), picked inside the mask ``uniform``-ly, ``center``-
  biased (weight = squared distance to the background) or ``boundary``-biased (weight = exp(-distance / 2)), plus
  ``m`` negative points, ``m`` drawn from [0, N_pt), uniform in a background ring around the target
  (width max(4 px, half the target's equivalent radius)).
- ``box``: the tight box with every side moved by an offset in [-d_in, d_out] pixels (outward > 0).
- ``composite``: a jittered box plus positive and negative points as above.

Two copies are learned and routed by prompt type (``RoutedPromptEncoder``): prompts without a box train and use
the ``points`` copy, prompts with a box (box, composite) the ``boxes`` copy, so points cannot spoil boxes.

Loss: binary cross-entropy + soft Dice (equal weights), on the decoder's 256x256 low-res logits (cropped to the
image, padding excluded) against the reference mask resampled to that grid (soft target). Optimiser: Adam. For
SAM (multimask models) a prompt of a single point without a box is scored, as in SAM's own training, by the
best of its three masks; everything else by the single-mask output that the engine uses at inference.
The box copy learns at ``lr * box_lr_scale`` (default 1/20): LiteMedSAM's box prompt is already good, and at the
full rate a few steps fitted the annotated slices at the cost of the others (docs/assist.md, deviation 6).

The result is a ``LearnedPromptEncoder``: the trained module plus the metadata that ties it to one volume, one
target and one base model. ``save_learned``/``load_learned`` store it as a small self-describing torch file
(metadata as JSON-compatible values, loaded with ``weights_only=True``). ``attach`` puts it on a ``Segmenter``;
``segmenter.use_learned = False`` (or ``segment(..., use_learned=False)``) falls back to the original encoder.

This file imports torch at import time; nothing in ``sammed/__init__.py`` imports it.
"""

from __future__ import annotations

import copy
import math
import os
import re
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from . import geometry
from .jobs import ProgressFn
from .jobs import StopFn
from .jobs import check_stop

FORMAT = "sammed-assist"
FORMAT_VERSION = 1
SAMPLING_SCHEMES = ("uniform", "center", "boundary", "mixed")
PROMPT_KINDS = ("points", "box", "composite")


@dataclass
class AssistConfig:
    """Settings of one SAMassist fit.

    Attributes:
        steps: optimisation steps; each step decodes ``prompts_per_slice`` prompts on every annotated slice.
        lr: Adam learning rate.
        prompts_per_slice: prompts sampled per slice per step (decoded as one batch on that slice's embedding).
        n_pt: N_pt of the paper: positive points per prompt drawn from [1, N_pt), negative from [0, N_pt). Used
            for composite prompts, and for point prompts when ``max_points`` is 0.
        max_points: point prompts (no box) have 1 point with probability ``p_single``, otherwise 2..max_points
            points (uniform), the first positive and each later one positive or negative with probability 1/2 (as
            a user's corrective clicks); 0 = the paper's rule with ``n_pt``.
        p_single: probability of a single positive point among point prompts (when ``max_points`` > 0).
        d_in: box jitter, largest inward move of a side (slice pixels).
        d_out: box jitter, largest outward move of a side (slice pixels).
        sampling: point scheme inside the mask: ``uniform``, ``center``, ``boundary`` or ``mixed`` (one of the
            three drawn per prompt).
        kinds: prompt kinds to train and their sampling weights, e.g. ``{"points": 2, "box": 1, "composite": 1}``.
        box_lr_scale: the box copy's learning rate is ``lr * box_lr_scale`` (LiteMedSAM was trained with boxes:
            its box prompt needs small changes only, large ones cost Dice on slices unlike the annotated ones).
        box_prox: proximal penalty ``box_prox * sum((w - w0)^2)`` on the box copy's distance to the original
            weights w0 (0 = off).
        time_budget_s: stop after the step that passes this many seconds (None: run all steps). Results with a
            budget depend on the machine's speed; without one they are deterministic for a seed.
        seed: seeds numpy and torch sampling.
        device: torch device for training (the backend's device when None).
    """

    steps: int = 12
    lr: float = 0.05
    prompts_per_slice: int = 2
    n_pt: int = 3
    max_points: int = 0
    p_single: float = 0.3
    d_in: float = 2.0
    d_out: float = 5.0
    sampling: str = "mixed"
    kinds: dict = field(default_factory=lambda: {"points": 2.0, "box": 1.0, "composite": 1.0})
    box_lr_scale: float = 0.05
    box_prox: float = 0.0
    time_budget_s: float | None = None
    seed: int = 0
    device: str | None = None

    def check(self) -> None:
        """Raises ValueError for settings that cannot work."""
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1 (got {self.steps}).")
        if not (self.lr > 0):
            raise ValueError(f"The learning rate must be positive (got {self.lr}).")
        if self.prompts_per_slice < 1:
            raise ValueError(f"prompts_per_slice must be at least 1 (got {self.prompts_per_slice}).")
        if self.n_pt < 2:
            raise ValueError(f"n_pt (N_pt) must be at least 2, points are drawn from [1, N_pt) (got {self.n_pt}).")
        if self.max_points < 0 or not (0 <= self.p_single <= 1):
            raise ValueError("max_points must be >= 0 and p_single in [0, 1].")
        if self.box_lr_scale < 0 or self.box_prox < 0:
            raise ValueError("box_lr_scale and box_prox must not be negative.")
        if self.d_in < 0 or self.d_out < 0:
            raise ValueError("Box jitter d_in and d_out must not be negative.")
        if self.sampling not in SAMPLING_SCHEMES:
            raise ValueError(f"Unknown point sampling '{self.sampling}'; use one of {SAMPLING_SCHEMES}.")
        bad = [k for k in self.kinds if k not in PROMPT_KINDS]
        if bad or not any(float(w) > 0 for w in self.kinds.values()):
            raise ValueError(f"kinds must give positive weights to some of {PROMPT_KINDS} (got {self.kinds}).")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError("The time budget must be positive seconds (or None).")


@dataclass
class LearnedPromptEncoder:
    """A case-specific prompt encoder and what it belongs to.

    Attributes:
        module: the trained ``RoutedPromptEncoder`` (copies; the backend's own encoder is untouched).
        model_id: base model registry id; sha256: SHA256 of the base weights.
        volume_digest: digest of the volume it was learned on; target: name of the structure.
        axis: slice axis of the annotated slices; slices: their indices.
        preprocessing_id: the segmenter's preprocessing id (intensity mapping + backend + context).
        config: the ``AssistConfig`` as a dict.
        history: loss per step.
        seconds: training time (without loading embeddings).
    """

    module: torch.nn.Module
    model_id: str
    sha256: str
    volume_digest: str
    target: str
    axis: int
    slices: list[int]
    preprocessing_id: str
    config: dict
    history: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def steps_done(self) -> int:
        return len(self.history)


class RoutedPromptEncoder(torch.nn.Module):
    """Two learned copies of the prompt encoder: ``points`` for prompts without a box, ``boxes`` for prompts with one.

    The paper learns a prompt per prompt type (points, boxes, composite); sharing one copy lets the point
    objective move the shared dense embedding (``no_mask_embed``) away from what boxes need (measured: box Dice
    fell by several points). Routing by prompt type keeps one module for the engine, which calls it exactly like
    SAM's ``PromptEncoder`` (``forward(points, boxes, masks)`` and ``get_dense_pe()``).
    """

    def __init__(self, points_encoder: torch.nn.Module, box_encoder: torch.nn.Module) -> None:
        super().__init__()
        self.points = points_encoder
        self.boxes = box_encoder

    def forward(self, points, boxes, masks):
        encoder = self.boxes if boxes is not None else self.points
        return encoder(points=points, boxes=boxes, masks=masks)

    def get_dense_pe(self) -> torch.Tensor:
        return self.points.get_dense_pe()


def _new_routed(backend) -> RoutedPromptEncoder:
    base = backend.model.prompt_encoder
    return RoutedPromptEncoder(copy.deepcopy(base), copy.deepcopy(base))


# ---------------------------------------------------------------------- prompt sampling (slice pixels)
class _SliceSampler:
    """Samples prompts from one reference mask (HxW bool, slice frame); points are (x, y) = (column, row)."""

    def __init__(self, mask_hw: np.ndarray, cfg: AssistConfig) -> None:
        self.mask = mask_hw
        self.cfg = cfg
        inside = ndimage.distance_transform_edt(np.pad(mask_hw, 1))[1:-1, 1:-1]
        rows, cols = np.nonzero(mask_hw)
        self.fg_xy = np.stack([cols, rows], axis=1).astype(np.float64)
        d = inside[rows, cols]
        self.fg_weights = {
            "uniform": None,
            "center": _normalise(d**2),
            "boundary": _normalise(np.exp(-(d - 1.0) / 2.0)),
        }
        outside = ndimage.distance_transform_edt(~mask_hw)
        radius = max(4.0, 0.5 * math.sqrt(mask_hw.sum() / math.pi))
        ring = (~mask_hw) & (outside <= radius)
        if not ring.any():
            ring = ~mask_hw
        br, bc = np.nonzero(ring)
        self.bg_xy = np.stack([bc, br], axis=1).astype(np.float64)
        self.box = geometry.box_from_mask(mask_hw)

    def positives(self, n: int, rng: np.random.Generator) -> np.ndarray:
        scheme = self.cfg.sampling
        if scheme == "mixed":
            scheme = ("uniform", "center", "boundary")[rng.integers(3)]
        idx = rng.choice(len(self.fg_xy), size=n, replace=len(self.fg_xy) < n, p=self.fg_weights[scheme])
        return self.fg_xy[idx]

    def negatives(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if n == 0 or len(self.bg_xy) == 0:
            return np.zeros((0, 2))
        return self.bg_xy[rng.choice(len(self.bg_xy), size=n, replace=len(self.bg_xy) < n)]

    def jittered_box(self, rng: np.random.Generator) -> np.ndarray:
        h, w = self.mask.shape
        off = rng.uniform(-self.cfg.d_in, self.cfg.d_out, size=4)
        x0, y0, x1, y1 = self.box
        box = np.array([x0 - off[0], y0 - off[1], x1 + off[2], y1 + off[3]])
        box = np.clip(box, 0, [w - 1, h - 1, w - 1, h - 1])
        if box[2] <= box[0] or box[3] <= box[1]:
            return self.box.copy()
        return box

    def point_counts(self, kind: str, rng: np.random.Generator) -> tuple[int, int]:
        """(positive, negative) point counts of one prompt of ``kind`` ("points" or "composite")."""
        cfg = self.cfg
        if kind == "points" and cfg.max_points > 0:
            # like a user's clicks: one positive click (probability p_single), or 2..max_points clicks of which
            # the first is positive and each later one positive or negative with equal probability
            total = 1 if rng.random() < cfg.p_single else int(rng.integers(2, max(cfg.max_points, 2) + 1))
            n_pos = 1 + int(rng.binomial(total - 1, 0.5))
            return n_pos, total - n_pos
        return int(rng.integers(1 if kind == "points" else 0, cfg.n_pt)), int(rng.integers(0, cfg.n_pt))

    def sample(self, kind: str, count: int, rng: np.random.Generator):
        """``count`` prompts of one kind: (points list of Nx2, labels list of N, boxes Bx4 or None)."""
        points, labels, boxes = [], [], []
        for _ in range(count):
            if kind == "box":
                pos, neg = np.zeros((0, 2)), np.zeros((0, 2))
            else:
                n_pos, n_neg = self.point_counts(kind, rng)
                pos = self.positives(n_pos, rng) if n_pos else np.zeros((0, 2))
                neg = self.negatives(n_neg, rng)
            points.append(np.concatenate([pos, neg]))
            labels.append(np.concatenate([np.ones(len(pos)), np.zeros(len(neg))]).astype(np.int64))
            if kind != "points":
                boxes.append(self.jittered_box(rng))
        return points, labels, (np.stack(boxes) if boxes else None)


def _normalise(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w, dtype=np.float64)
    s = w.sum()
    return np.full(len(w), 1.0 / len(w)) if s <= 0 or not np.isfinite(s) else w / s


# ---------------------------------------------------------------------- checks
def _check_backend(backend) -> None:
    if not all(hasattr(backend, a) for a in ("model", "image_size", "prompt_scale", "resized_shape")):
        raise ValueError(
            f"SAMassist needs a SAM-family model (LiteMedSAM or SAM); backend '{getattr(backend, 'model_id', '?')}' "
            "has no trainable prompt encoder."
        )


def _check_annotations(segmenter, masks: Mapping[int, np.ndarray], axis: int) -> dict[int, np.ndarray]:
    if masks is None or len(masks) == 0:
        raise ValueError("No annotated slice was given; annotate the target on at least one slice first.")
    axis = geometry.check_axis(axis)
    shape = geometry.slice_shape(segmenter.volume.shape_kji, axis)
    out: dict[int, np.ndarray] = {}
    for index, mask in masks.items():
        index = geometry.check_index(segmenter.volume.shape_kji, axis, int(index))
        m = np.asarray(mask)
        if m.shape != tuple(shape):
            raise ValueError(
                f"The mask of slice {index} has shape {m.shape}, but slices on axis {axis} of this volume are "
                f"{tuple(shape)}: the annotation does not match the volume."
            )
        m = m.astype(bool)
        if not m.any():
            raise ValueError(f"The mask of slice {index} is empty; draw the target on that slice or leave it out.")
        if m.all():
            raise ValueError(f"The mask of slice {index} covers the whole slice; it needs some background too.")
        if segmenter.slice_is_empty(axis, index):
            raise ValueError(f"Slice {index} on axis {axis} has no image content (all voxels equal).")
        out[index] = m
    return out


def annotations_from_labels(labels_kji: np.ndarray, label: int, slices=None, axis: int = 0) -> dict[int, np.ndarray]:
    """Per-slice masks of one label value from a KJI label map.

    Args:
        labels_kji: KxJxI integer label map on the image grid.
        label: the label value of the target.
        slices: slice indices to use; None = every slice on ``axis`` where the label is present.
        axis: array axis of the slices (0 = axial for usual volumes).

    Returns:
        {slice index: HxW bool mask in the ``extract_slice`` layout}.

    Raises:
        ValueError: the label is absent, or a requested slice is out of range.
    """
    labels_kji = np.asarray(labels_kji)
    axis = geometry.check_axis(axis)
    if slices is None:
        slices = geometry.foreground_slices(labels_kji == label, axis)
        if not slices:
            raise ValueError(f"Label {label} does not occur in the label map; no annotated slice was found.")
    out = {}
    for s in slices:
        s = geometry.check_index(labels_kji.shape, axis, int(s))
        out[s] = geometry.extract_slice(labels_kji, axis, s) == label
    return out


# ---------------------------------------------------------------------- training
def _target_lowres(segmenter, backend, axis: int, mask_hw: np.ndarray, low: int, device) -> torch.Tensor:
    """Reference mask resampled to the valid part of the decoder's ``low``x``low`` output (soft, float32)."""
    grid = segmenter.grid(axis)
    model_mask = grid.to_model_image(mask_hw.astype(np.float32))
    nh, nw = backend.resized_shape(grid.model_shape_hw)
    hl, wl = max(1, round(nh * low / backend.image_size)), max(1, round(nw * low / backend.image_size))
    t = torch.from_numpy(np.ascontiguousarray(model_mask, dtype=np.float32))[None, None].to(device)
    return F.interpolate(t, size=(hl, wl), mode="bilinear", align_corners=False, antialias=True)[0, 0].clamp(0, 1)


def _prompt_tensors(points, labels, boxes, scale_xy: np.ndarray, device):
    """Batch prompts (slice pixels) -> prompt encoder inputs (model-input pixels); points padded with label -1."""
    n = max(len(p) for p in points)
    b = len(points)
    pts = None
    if n:
        coords = np.zeros((b, n, 2), dtype=np.float32)
        labs = np.full((b, n), -1, dtype=np.int64)
        for i, (p, lab) in enumerate(zip(points, labels, strict=True)):
            coords[i, : len(p)] = p * scale_xy
            labs[i, : len(p)] = lab
        pts = (torch.from_numpy(coords).to(device), torch.from_numpy(labs).to(device))
    box = None
    if boxes is not None:
        box = torch.from_numpy((boxes * np.tile(scale_xy, 2)).astype(np.float32)).to(device)[:, None, :]
    return pts, box


def _loss(masks: torch.Tensor, target: torch.Tensor, single_point: torch.Tensor | None) -> torch.Tensor:
    """BCE + soft Dice per prompt, averaged. masks: Bx4xLxL logits (mask 0 = single-mask output)."""
    hl, wl = target.shape
    logits = masks[:, :, :hl, :wl]
    t = target[None, None].expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none").mean(dim=(2, 3))
    p = torch.sigmoid(logits)
    dice = 1 - (2 * (p * t).sum(dim=(2, 3)) + 1) / (p.sum(dim=(2, 3)) + t.sum(dim=(2, 3)) + 1)
    per_mask = bce + dice  # B x 4
    loss = per_mask[:, 0]
    if single_point is not None and single_point.any():
        loss = torch.where(single_point, per_mask[:, 1:].min(dim=1).values, loss)
    return loss.mean()


def fit_prompt_encoder(
    segmenter,
    masks: Mapping[int, np.ndarray],
    axis: int = 0,
    target: str = "target",
    config: AssistConfig | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> LearnedPromptEncoder:
    """Learn a prompt encoder for one target of one volume from annotated slices.

    Args:
        segmenter: a ``Segmenter`` on the volume with a SAM-family backend; its cache provides the embeddings
            (slices not cached yet are encoded once and cached).
        masks: {slice index on ``axis``: HxW mask (bool or 0/1) in the ``extract_slice`` layout}.
        axis: array axis of the annotated slices (0 = axial for usual volumes).
        target: name of the structure (part of the result's key).
        config: training settings (defaults: ``AssistConfig()``).
        progress: ``progress(fraction, message)``, called after every step with the step and its loss.
        should_stop: checked before every step; cancelling stops within one step.

    Returns:
        the ``LearnedPromptEncoder`` (not saved; see ``save_learned``).

    Raises:
        ValueError: no annotated slice, an empty or full mask, a mask whose shape does not match the volume's
            slices, an empty image slice, bad settings, or a backend without a prompt encoder.
        jobs.Cancelled: ``should_stop()`` answered True (nothing is kept).
    """
    cfg = config or AssistConfig()
    cfg.check()
    backend = segmenter.backend
    _check_backend(backend)
    if not str(target).strip():
        raise ValueError("Give the target a name (e.g. liver).")
    axis = geometry.check_axis(axis)
    masks = _check_annotations(segmenter, masks, axis)
    device = torch.device(cfg.device) if cfg.device else backend.device
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)

    decoder = backend.model.mask_decoder
    if device != backend.device:
        decoder = copy.deepcopy(decoder).to(device)
    module = _new_routed(backend).to(device).train()
    for p in module.parameters():
        p.requires_grad_(True)
    optimiser = torch.optim.Adam([
        {"params": list(module.points.parameters()), "lr": cfg.lr},
        {"params": list(module.boxes.parameters()), "lr": cfg.lr * cfg.box_lr_scale},
    ])
    box_origin = [p.detach().clone() for p in module.boxes.parameters()] if cfg.box_prox > 0 else []
    with torch.no_grad():
        image_pe = module.get_dense_pe().detach()
    multimask_model = getattr(backend, "family", "litemedsam") == "sam"

    grid = segmenter.grid(axis)
    scale = backend.prompt_scale(grid.model_shape_hw)
    scale_xy = np.asarray(grid.scale_xy, dtype=np.float64) * scale
    low = 4 * int(backend.embedding_shape[1])
    slices = sorted(masks)
    data = []
    for i, s in enumerate(slices):
        check_stop(should_stop)
        emb = torch.from_numpy(np.asarray(segmenter.embedding(axis, s), dtype=np.float32)).to(device)[None]
        tgt = _target_lowres(segmenter, backend, axis, masks[s], low, device)
        data.append((emb, _SliceSampler(masks[s], cfg), tgt))
        if progress:
            progress(0.0, f"Loaded embedding {i + 1} of {len(slices)} (slice {s})")

    kinds = [k for k in PROMPT_KINDS if float(cfg.kinds.get(k, 0)) > 0]
    weights = np.array([float(cfg.kinds[k]) for k in kinds])
    weights = weights / weights.sum()
    history: list[float] = []
    start = time.perf_counter()
    for step in range(cfg.steps):
        check_stop(should_stop)
        optimiser.zero_grad(set_to_none=True)
        total = 0.0
        for emb, sampler, tgt in data:
            kind = kinds[int(rng.choice(len(kinds), p=weights))]
            points, labels, boxes = sampler.sample(kind, cfg.prompts_per_slice, rng)
            pts, box = _prompt_tensors(points, labels, boxes, scale_xy, device)
            sparse, dense = module(points=pts, boxes=box, masks=None)
            out_masks, _ = decoder.predict_masks(
                image_embeddings=emb, image_pe=image_pe, sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
            )
            single = None
            if multimask_model and boxes is None:
                single = torch.tensor([len(p) == 1 for p in points], device=device)
            loss = _loss(out_masks, tgt, single) / len(data)
            loss.backward()
            total += float(loss.detach())
        if box_origin:
            prox = cfg.box_prox * sum(((p - p0) ** 2).sum() for p, p0 in zip(module.boxes.parameters(), box_origin,
                                                                              strict=True))
            prox.backward()
        optimiser.step()
        history.append(total)
        elapsed = time.perf_counter() - start
        if progress:
            progress((step + 1) / cfg.steps, f"step {step + 1}/{cfg.steps} loss {total:.4f}")
        if cfg.time_budget_s is not None and elapsed >= cfg.time_budget_s:
            break
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    if device != backend.device:
        module = module.to(backend.device)
    return LearnedPromptEncoder(
        module=module,
        model_id=backend.model_id,
        sha256=backend.weights_sha256,
        volume_digest=segmenter.volume.digest,
        target=str(target),
        axis=axis,
        slices=[int(s) for s in slices],
        preprocessing_id=segmenter.preprocessing_id,
        config=_config_dict(cfg),
        history=history,
        seconds=time.perf_counter() - start,
    )


def _config_dict(cfg: AssistConfig) -> dict:
    d = asdict(cfg)
    d["kinds"] = {k: float(v) for k, v in cfg.kinds.items()}
    return d


# ---------------------------------------------------------------------- engine hook
def attach(segmenter, learned: LearnedPromptEncoder, allow_other_volume: bool = False) -> None:
    """Make ``segmenter`` decode with ``learned`` (``segmenter.use_learned = False`` goes back to the original).

    Raises:
        ValueError: it was learned with another base model, or on another volume (unless ``allow_other_volume``).
    """
    _check_base(learned, segmenter.backend)
    if learned.volume_digest != segmenter.volume.digest and not allow_other_volume:
        raise ValueError(
            f"The learned prompt encoder for '{learned.target}' belongs to another volume "
            f"(digest {learned.volume_digest[:12]}..., this one {segmenter.volume.digest[:12]}...)."
        )
    segmenter.prompt_encoder = learned.module
    segmenter.use_learned = True


def detach(segmenter) -> None:
    """Remove the learned prompt encoder from ``segmenter`` (decoding uses the original one)."""
    segmenter.prompt_encoder = None


def _check_base(learned: LearnedPromptEncoder, backend) -> None:
    if learned.model_id != backend.model_id or (learned.sha256 or "") != (backend.weights_sha256 or ""):
        raise ValueError(
            f"This SAMassist file was learned with base model '{learned.model_id}' "
            f"(SHA256 {learned.sha256[:12] or 'none'}...), but the loaded model is '{backend.model_id}' "
            f"(SHA256 {(backend.weights_sha256 or '')[:12] or 'none'}...). Load the same model, or learn again."
        )


# ---------------------------------------------------------------------- files
def default_path(folder: str | os.PathLike, volume_digest: str, target: str, model_id: str) -> Path:
    """Where the learned encoder of (volume, target, model) lives in ``folder``."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{target}__{model_id}")
    return Path(folder) / f"{volume_digest[:24]}__{safe}.pt"


def save_learned(learned: LearnedPromptEncoder, path: str | os.PathLike) -> Path:
    """Write ``learned`` as a self-describing torch file (atomic: temporary file, then rename).

    The file holds ``format``, ``format_version``, ``base_model_id``, ``base_model_sha256``, ``volume_digest``,
    ``target``, ``axis``, ``slices``, ``preprocessing_id``, ``config``, ``history``, ``seconds``, ``created``
    (JSON-compatible values) and ``state_dict`` (tensors).

    Raises:
        ValueError: the folder does not exist.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"Folder '{path.parent}' does not exist; create it first.")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "encoder_layout": "routed: points (no box) / boxes (box, with or without points)",
        "base_model_id": learned.model_id,
        "base_model_sha256": learned.sha256,
        "volume_digest": learned.volume_digest,
        "target": learned.target,
        "axis": int(learned.axis),
        "slices": [int(s) for s in learned.slices],
        "preprocessing_id": learned.preprocessing_id,
        "config": learned.config,
        "history": [float(v) for v in learned.history],
        "seconds": float(learned.seconds),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "state_dict": {k: v.detach().cpu().clone() for k, v in learned.module.state_dict().items()},
    }
    fd, tmp = tempfile.mkstemp(prefix=".assist-", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_metadata(path: str | os.PathLike) -> dict:
    """The file's metadata (everything but the state dict), for listing without a model.

    Raises:
        ValueError: missing file, not a SAMassist file, or a newer format version.
    """
    payload = _read(path)
    return {k: v for k, v in payload.items() if k != "state_dict"}


def _read(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"No SAMassist file at '{path}'.")
    try:
        payload = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise ValueError(f"Cannot read SAMassist file '{path}': {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "state_dict" not in payload:
        raise ValueError(f"'{path}' is not a SAMassist file.")
    if int(payload.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(
            f"'{path}' has SAMassist format version {payload['format_version']}; this sammed reads up to "
            f"{FORMAT_VERSION}. Update sammed."
        )
    return payload


def load_learned(path: str | os.PathLike, backend) -> LearnedPromptEncoder:
    """Load a learned prompt encoder for ``backend``.

    Raises:
        ValueError: not a SAMassist file, or learned with another base model (id or SHA256 differ).
    """
    _check_backend(backend)
    payload = _read(path)
    learned = LearnedPromptEncoder(
        module=None,  # type: ignore[arg-type]
        model_id=str(payload["base_model_id"]),
        sha256=str(payload["base_model_sha256"]),
        volume_digest=str(payload["volume_digest"]),
        target=str(payload["target"]),
        axis=int(payload["axis"]),
        slices=[int(s) for s in payload["slices"]],
        preprocessing_id=str(payload.get("preprocessing_id", "")),
        config=dict(payload.get("config", {})),
        history=[float(v) for v in payload.get("history", [])],
        seconds=float(payload.get("seconds", 0.0)),
    )
    _check_base(learned, backend)
    module = _new_routed(backend)
    try:
        module.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise ValueError(f"SAMassist file '{path}' does not fit this model: {str(exc).splitlines()[0]}") from None
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    learned.module = module
    return learned


def load_for(segmenter, target: str, folder: str | os.PathLike) -> LearnedPromptEncoder | None:
    """Load and attach the learned encoder of (this volume, ``target``, this model) from ``folder`` if present.

    Returns:
        the attached ``LearnedPromptEncoder``, or None when there is none (the segmenter is left unchanged).
    """
    path = default_path(folder, segmenter.volume.digest, target, segmenter.backend.model_id)
    if not path.is_file():
        return None
    learned = load_learned(path, segmenter.backend)
    attach(segmenter, learned)
    return learned


def fit_and_save(segmenter, masks: Mapping[int, np.ndarray], path: str | os.PathLike, axis: int = 0,
                 target: str = "target", config: AssistConfig | None = None, progress: ProgressFn | None = None,
                 should_stop: StopFn | None = None) -> LearnedPromptEncoder:
    """``fit_prompt_encoder`` then ``save_learned``; a cancelled or failed fit writes nothing."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"Folder '{path.parent}' does not exist; create it first.")
    learned = fit_prompt_encoder(segmenter, masks, axis, target, config, progress, should_stop)
    save_learned(learned, path)
    return learned
