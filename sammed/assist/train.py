"""SAMassist: learn a case-specific prompt encoder from a few annotated slices (SAMMed paper, section 3.2.1).

Only a copy of the backend's prompt encoder is trained; the image encoder and the mask decoder stay frozen, and
the annotated slices' embeddings come from the segmenter's cache (a slice is encoded only if it was never cached).

Training, per step and per annotated slice, samples a batch of prompts of one kind from the reference mask
(``sampling.SliceSampler``): ``points`` (positive points inside the mask, ``uniform``-ly, ``center``- or
``boundary``-biased, plus negative points in a ring around it), ``box`` (the tight box with every side moved by an
offset in [-d_in, d_out] pixels) or ``composite`` (a jittered box plus points). The prompts are in slice pixels and
reach the prompt encoder through ``ModelInputGeometry.prompts_to_input``, the same function inference uses, so a
prompt means the same pixels in training and in use.

Two copies are learned and routed by prompt type (``RoutedPromptEncoder``): prompts without a box train and use
the ``points`` copy, prompts with a box (box, composite) the ``boxes`` copy, so points cannot spoil boxes.

Loss: binary cross-entropy + soft Dice (equal weights), on the decoder's 256x256 low-res logits (cropped to the
image, padding excluded) against the reference mask resampled to that grid (soft target). Optimiser: Adam. For
SAM (multimask models) a prompt of a single point without a box is scored, as in SAM's own training, by the
best of its three masks; everything else by the single-mask output that the engine uses at inference.
The box copy learns at ``lr * box_lr_scale`` (default 1/20): LiteMedSAM's box prompt is already good, and at the
full rate a few steps fitted the annotated slices at the cost of the others (docs/assist.md, deviation 6).

``attach`` puts a ``LearnedPromptEncoder`` on a ``Segmenter``; ``segmenter.use_learned = False`` (or
``segment(..., use_learned=False)``) falls back to the original encoder. Files: ``store.py``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import geometry
from ..backends.base import ModelInputGeometry
from ..jobs import ProgressFn
from ..jobs import StopFn
from ..jobs import check_stop
from ..prompts import Prompts
from .config import PROMPT_KINDS
from .config import AssistConfig
from .interactive import MODEL_IN_LOOP_KINDS
from .interactive import click_prompt
from .sampling import SliceSampler
from .sampling import check_annotations

if TYPE_CHECKING:
    from ..segmenter import Segmenter


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

    original: Any  # the model's own encoder for a box alone, or None

    def __init__(self, points_encoder: torch.nn.Module, box_encoder: torch.nn.Module) -> None:
        super().__init__()
        self.points: Any = points_encoder
        self.boxes: Any = box_encoder
        object.__setattr__(self, "original", None)  # not a submodule: neither trained nor saved

    def route_box_alone_to(self, original: torch.nn.Module | None) -> None:
        """A box without points or mask goes to ``original`` (the model's own encoder) instead of ``boxes``: the
        population encoder does this when the original was better for boxes on its validation slices."""
        object.__setattr__(self, "original", original)

    def forward(self, points: Any, boxes: Any, masks: Any) -> Any:
        encoder = self.boxes if boxes is not None else self.points
        if boxes is not None and points is None and masks is None and self.original is not None:
            encoder = self.original
        return encoder(points=points, boxes=boxes, masks=masks)

    def get_dense_pe(self) -> Any:
        """The image positional encoding (the same in both copies)."""
        return self.points.get_dense_pe()


def new_routed(backend: Any, start: torch.nn.Module | None = None) -> RoutedPromptEncoder:
    """Two fresh copies of the backend's prompt encoder, or copies of ``start`` (a ``RoutedPromptEncoder``, e.g.
    the shipped population encoder a per-case fit starts from; a box alone keeps its routing)."""
    if isinstance(start, RoutedPromptEncoder):
        routed = RoutedPromptEncoder(copy.deepcopy(start.points), copy.deepcopy(start.boxes))
        routed.route_box_alone_to(start.original)
        return routed
    base = backend.model.prompt_encoder
    return RoutedPromptEncoder(copy.deepcopy(base), copy.deepcopy(base))


def frozen(module: RoutedPromptEncoder) -> RoutedPromptEncoder:
    """``module`` in eval mode with its learned copies' parameters frozen (the model's own encoder, when a box alone
    is routed to it, is not a submodule and stays as the backend keeps it)."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def check_backend(backend: Any) -> None:
    """Raises ValueError unless ``backend`` has a trainable SAM prompt encoder."""
    if not (hasattr(backend, "model") and hasattr(backend.model, "prompt_encoder") and backend.image_size):
        raise ValueError(
            f"SAMassist needs a SAM-family model (LiteMedSAM or SAM); backend '{getattr(backend, 'model_id', '?')}' "
            "has no trainable prompt encoder."
        )


# ---------------------------------------------------------------------- one training step
def _target_lowres(geom: ModelInputGeometry, mask_hw: np.ndarray, low: int, device: torch.device) -> torch.Tensor:
    """Reference mask resampled to the valid part of the decoder's ``low``x``low`` output (soft, float32)."""
    model_mask = geom.grid.to_model_image(mask_hw.astype(np.float32))
    hl, wl = geom.valid_cells((low, low))
    t = torch.from_numpy(np.ascontiguousarray(model_mask, dtype=np.float32))[None, None].to(device)
    return F.interpolate(t, size=(hl, wl), mode="bilinear", align_corners=False, antialias=True)[0, 0].clamp(0, 1)


def _prompt_tensors(prompts: list[Prompts], geom: ModelInputGeometry, device: torch.device) -> tuple[Any, Any]:
    """A batch of slice-pixel prompts -> prompt encoder inputs through ``geom.prompts_to_input`` (the inference
    conversion); points padded with label -1. Boxes: all prompts have one, or none has."""
    converted = [geom.prompts_to_input(p) for p in prompts]
    n = max((0 if c[0] is None else len(c[0])) for c in converted)
    pts = None
    if n:
        coords = np.zeros((len(prompts), n, 2), dtype=np.float32)
        labs = np.full((len(prompts), n), -1, dtype=np.int64)
        for i, (p, lab, _) in enumerate(converted):
            if p is not None and lab is not None:
                coords[i, : len(p)] = p
                labs[i, : len(p)] = lab
        pts = (torch.from_numpy(coords).to(device), torch.from_numpy(labs).to(device))
    boxes = [c[2] for c in converted if c[2] is not None]
    box = torch.from_numpy(np.stack(boxes)).to(device)[:, None, :] if boxes else None
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


@dataclass
class TrainItem:
    """One training slice: its embedding (1xCxhxw on the training device; ``array`` the same as numpy, for the
    no-gradient decodes that place clicks), prompt sampler, low-res target and prompt geometry."""

    embedding: torch.Tensor
    array: np.ndarray
    sampler: SliceSampler
    target: torch.Tensor
    geometry: ModelInputGeometry


def train_item(
    backend: Any,
    embedding: np.ndarray,
    mask_hw: np.ndarray,
    geom: ModelInputGeometry,
    cfg: AssistConfig,
    device: torch.device,
) -> TrainItem:
    """The ``TrainItem`` of one slice's embedding and reference mask."""
    array = np.asarray(embedding, dtype=np.float32)
    low = 4 * int(backend.embedding_shape[1])
    return TrainItem(
        torch.from_numpy(array).to(device)[None],
        array,
        SliceSampler(mask_hw, cfg),
        _target_lowres(geom, mask_hw, low, device),
        geom,
    )


@dataclass
class _Fit:
    """Everything one fit needs per step: the trained module, the frozen decoder, the data and the sampling."""

    module: RoutedPromptEncoder
    backend: Any
    decoder: Any
    image_pe: torch.Tensor
    optimiser: torch.optim.Optimizer
    data: list[TrainItem]
    kinds: list[str]
    weights: np.ndarray
    multimask: bool
    device: torch.device
    box_origin: list = field(default_factory=list)


def _load_data(
    segmenter: Segmenter,
    masks: dict[int, np.ndarray],
    axis: int,
    cfg: AssistConfig,
    device: torch.device,
    progress: ProgressFn | None,
    should_stop: StopFn | None,
) -> list[TrainItem]:
    """The ``TrainItem`` of every annotated slice (embeddings from the cache)."""
    data = []
    slices = sorted(masks)
    geom = segmenter.input_geometry(axis)
    for i, s in enumerate(slices):
        check_stop(should_stop)
        data.append(train_item(segmenter.backend, segmenter.embedding(axis, s), masks[s], geom, cfg, device))
        if progress:
            progress(0.0, f"Loaded embedding {i + 1} of {len(slices)} (slice {s})")
    return data


def new_fit(backend: Any, data: list[TrainItem], cfg: AssistConfig, device: torch.device, start: Any = None) -> _Fit:
    """The optimiser and state of one fit on ``data``, starting from ``start`` (a ``RoutedPromptEncoder``) or the
    model's own prompt encoder."""
    decoder = backend.model.mask_decoder
    if device != backend.device:
        decoder = copy.deepcopy(decoder).to(device)
    module = new_routed(backend, start).to(device).train()
    for p in list(module.points.parameters()) + list(module.boxes.parameters()):
        p.requires_grad_(True)
    optimiser = torch.optim.Adam(
        [
            {"params": list(module.points.parameters()), "lr": cfg.lr},
            {"params": list(module.boxes.parameters()), "lr": cfg.lr * cfg.box_lr_scale},
        ]
    )
    with torch.no_grad():
        image_pe = module.get_dense_pe().detach()
    kinds = [k for k in PROMPT_KINDS if float(cfg.kinds.get(k, 0)) > 0]
    weights = np.array([float(cfg.kinds[k]) for k in kinds])
    box_origin = [p.detach().clone() for p in module.boxes.parameters()] if cfg.box_prox > 0 else []
    multimask = getattr(backend, "family", "litemedsam") == "sam"
    return _Fit(
        module,
        backend,
        decoder,
        image_pe,
        optimiser,
        data,
        kinds,
        weights / weights.sum(),
        multimask,
        device,
        box_origin,
    )


def _item_prompts(fit: _Fit, item: TrainItem, kind: str, cfg: AssistConfig, rng: np.random.Generator) -> list[Prompts]:
    """``prompts_per_slice`` prompts of ``kind`` on ``item`` (model-in-the-loop kinds decode to place clicks)."""
    if kind not in MODEL_IN_LOOP_KINDS:
        return item.sampler.sample(kind, cfg.prompts_per_slice, rng)
    return [
        click_prompt(
            fit.backend,
            fit.module,
            item.array,
            item.geometry,
            item.sampler.mask,
            kind,
            cfg.max_points or 10,
            item.sampler.jittered_box(rng) if kind == "box_clicks" else None,
            rng,
        )
        for _ in range(cfg.prompts_per_slice)
    ]


def _prompt_loss(fit: _Fit, item: TrainItem, prompts: list[Prompts]) -> torch.Tensor:
    """The loss of a batch of prompts on one slice (prompts with a mask input are decoded one by one)."""
    if any(p.mask_input is not None for p in prompts):
        losses = [_prompt_loss_batch(fit, item, [p]) for p in prompts]
        return torch.stack(losses).mean()
    return _prompt_loss_batch(fit, item, prompts)


def _prompt_loss_batch(fit: _Fit, item: TrainItem, prompts: list[Prompts]) -> torch.Tensor:
    if prompts[0].mask_input is not None:
        pts, box, mask = fit.backend.prompt_tensors(prompts[0], item.geometry)
    else:
        (pts, box), mask = _prompt_tensors(prompts, item.geometry, fit.device), None
    sparse, dense = fit.module(points=pts, boxes=box, masks=mask)
    out_masks, _ = fit.decoder.predict_masks(
        image_embeddings=item.embedding,
        image_pe=fit.image_pe,
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
    )
    single = None
    if fit.multimask and box is None:
        single = torch.tensor([p.points_xy is not None and len(p.points_xy) == 1 for p in prompts], device=fit.device)
    return _loss(out_masks, item.target, single)


def _train_step(fit: _Fit, cfg: AssistConfig, rng: np.random.Generator) -> float:
    """One optimisation step over every annotated slice (or ``cfg.slices_per_step`` drawn ones); returns its loss."""
    fit.optimiser.zero_grad(set_to_none=True)
    total = 0.0
    items = fit.data
    if cfg.slices_per_step and cfg.slices_per_step < len(items):
        items = [items[i] for i in rng.choice(len(items), size=cfg.slices_per_step, replace=False)]
    for item in items:
        kind = fit.kinds[int(rng.choice(len(fit.kinds), p=fit.weights))]
        loss = _prompt_loss(fit, item, _item_prompts(fit, item, kind, cfg, rng)) / len(items)
        loss.backward()
        total += float(loss.detach())
    if fit.box_origin:
        params = zip(fit.module.boxes.parameters(), fit.box_origin, strict=True)
        prox = cfg.box_prox * sum(((p - p0) ** 2).sum() for p, p0 in params)
        prox.backward()
    fit.optimiser.step()
    return total


def train_loop(
    fit: _Fit, cfg: AssistConfig, rng: np.random.Generator, progress: ProgressFn | None, should_stop: StopFn | None
) -> list[float]:
    """The optimisation steps (until ``cfg.steps`` or the time budget); returns the loss per step."""
    history: list[float] = []
    start = time.perf_counter()
    for step in range(cfg.steps):
        check_stop(should_stop)
        history.append(_train_step(fit, cfg, rng))
        if progress:
            progress((step + 1) / cfg.steps, f"step {step + 1}/{cfg.steps} loss {history[-1]:.4f}")
        if cfg.time_budget_s is not None and time.perf_counter() - start >= cfg.time_budget_s:
            break
    return history


def fit_prompt_encoder(
    segmenter: Segmenter,
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
        the ``LearnedPromptEncoder`` (not saved; see ``store.save_learned``).

    Raises:
        ValueError: no annotated slice, an empty or full mask, a mask whose shape does not match the volume's
            slices, an empty image slice, bad settings, or a backend without a prompt encoder.
        jobs.Cancelled: ``should_stop()`` answered True (nothing is kept).
    """
    cfg = config or AssistConfig()
    cfg.check()
    backend: Any = segmenter.backend  # a SamFamilyBackend (check_backend)
    check_backend(backend)
    if not str(target).strip():
        raise ValueError("Give the target a name (e.g. liver).")
    axis = geometry.check_axis(axis)
    checked = check_annotations(segmenter, masks, axis)
    device = torch.device(cfg.device) if cfg.device else backend.device
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    data = _load_data(segmenter, checked, axis, cfg, device, progress, should_stop)
    fit = new_fit(backend, data, cfg, device, start=getattr(segmenter, "base_prompt_encoder", None))
    start = time.perf_counter()
    history = train_loop(fit, cfg, rng, progress, should_stop)
    module = frozen(fit.module)
    return LearnedPromptEncoder(
        module=module.to(backend.device),
        model_id=backend.model_id,
        sha256=backend.weights_sha256,
        volume_digest=segmenter.volume.digest,
        target=str(target),
        axis=axis,
        slices=sorted(int(s) for s in checked),
        preprocessing_id=segmenter.preprocessing_id,
        config=cfg.as_dict(),
        history=history,
        seconds=time.perf_counter() - start,
    )


# ---------------------------------------------------------------------- engine hook
def attach(segmenter: Segmenter, learned: LearnedPromptEncoder, allow_other_volume: bool = False) -> None:
    """Make ``segmenter`` decode with ``learned`` (``segmenter.use_learned = False`` goes back to the original).

    Raises:
        ValueError: it was learned with another base model, or on another volume (unless ``allow_other_volume``).
    """
    check_base(learned, segmenter.backend)
    if learned.volume_digest != segmenter.volume.digest and not allow_other_volume:
        raise ValueError(
            f"The learned prompt encoder for '{learned.target}' belongs to another volume "
            f"(digest {learned.volume_digest[:12]}..., this one {segmenter.volume.digest[:12]}...)."
        )
    segmenter.prompt_encoder = learned.module
    segmenter.use_learned = True


def detach(segmenter: Segmenter) -> None:
    """Remove the learned prompt encoder from ``segmenter`` (decoding uses the original one)."""
    segmenter.prompt_encoder = None


def check_base(learned: LearnedPromptEncoder, backend: Any) -> None:
    """Raises ValueError unless ``learned`` was learned with ``backend``'s model (id and SHA256)."""
    if learned.model_id != backend.model_id or (learned.sha256 or "") != (backend.weights_sha256 or ""):
        raise ValueError(
            f"This SAMassist file was learned with base model '{learned.model_id}' "
            f"(SHA256 {learned.sha256[:12] or 'none'}...), but the loaded model is '{backend.model_id}' "
            f"(SHA256 {(backend.weights_sha256 or '')[:12] or 'none'}...). Load the same model, or learn again."
        )
