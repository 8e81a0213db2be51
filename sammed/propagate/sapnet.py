"""SAP-Net (SAMMed, Wang et al. 2023, section 3.2.2): few-shot coarse segmentation on cached SAM features -> prompts
for SAM.

From the N annotated slices of one case (empty ones count as "target absent"):

- features: the cached SAM image embedding of each slice (CxHxW, cropped to the slice's field of view), tuned by a
  small trainable FCN ``T`` (eq. 5), concatenated with a Fourier position encoding
  ``gamma(x, y) = [cos(2 pi B (x, y)), sin(2 pi B (x, y))]`` with fixed random ``B ~ N(0, sigma^2)`` (eq. 6);
- prototypes: masked average pooling of the support features (foreground, background), PANet style;
- prediction: softmax over classes of ``alpha * cos(F(x, y), p_c)`` (eq. 4, cosine similarity scaled by alpha);
- training: every step splits the annotated slices into support and query; segmentation loss on the query with
  the support prototypes plus PANet's alignment loss (query prototypes from the query prediction segment the
  support); the distance is the biased Dice ``1 - 2TP / (2TP + beta FP + FN)`` (eq. 7), plain Dice or cross-entropy;
- inference: all annotated slices are the support; the coarse masks of all slices are cleaned by keeping the
  top-K 3D connected components, and each remaining coarse mask gives a box prompt that SAM refines.

torch is imported here only (and lazily by ``propagate``). Training uses cached embeddings only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from .. import geometry
from ..jobs import ProgressFn
from ..jobs import StopFn
from ..prompts import Prompts
from .refine import IntensityModel
from .refine import model_from_masks
from .refine import refine_in_box
from .run import Context
from .run import PropagationConfig
from .run import SliceRecord
from .stop import resize_mask


@dataclass
class SapFeatures:
    """Embeddings of the slices in range (float32, NxCxhxw, h x w = the slice's part of the embedding grid)."""

    indices: list[int]
    feats: np.ndarray
    slice_shape: tuple[int, int]


def collect_features(ctx: Context, indices: list[int]) -> SapFeatures | None:
    """Embeddings of ``indices`` (encoded once if missing); None if cancelled."""
    out = []
    for k, i in enumerate(indices):
        if ctx.stop_requested():
            return None
        out.append(ctx.slice_embedding(i))
        if ctx.progress is not None:
            ctx.progress(0.5 * (k + 1) / len(indices), f"Features of slice {i} ({k + 1} of {len(indices)})")
    return SapFeatures(list(indices), np.stack(out).astype(np.float32), ctx.geometry.shape_hw)


def _build_model(c_in: int, cfg: PropagationConfig, torch: Any) -> Any:
    """The SAP-Net module: feature tuning FCN ``T`` and the Fourier position encoding (eq. 5 and 6)."""
    nn = torch.nn

    class SapNet(nn.Module):  # type: ignore[name-defined]
        def __init__(self) -> None:
            super().__init__()
            if cfg.sap_use_fcn:
                self.tune = nn.Sequential(
                    nn.Conv2d(c_in, cfg.sap_hidden, 1),
                    nn.ReLU(),
                    nn.Conv2d(cfg.sap_hidden, cfg.sap_hidden, 3, padding=1),
                    nn.ReLU(),
                    nn.Conv2d(cfg.sap_hidden, cfg.sap_hidden, 3, padding=1),
                )
            else:
                self.tune = nn.Identity()
            g = torch.Generator().manual_seed(int(cfg.seed))
            self.register_buffer("B", torch.randn(2, cfg.sap_pe_dim, generator=g) * cfg.sap_sigma)

        def position(self, h: int, w: int) -> Any:
            # (x, y) in [0, 1] over the slice, the same frame for every slice of the case
            ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
            xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
            yy, xx = torch.meshgrid(ys, xs, indexing="ij")
            proj = 2 * math.pi * (torch.stack([xx, yy], dim=-1) @ self.B)  # h x w x d
            return torch.cat([torch.cos(proj), torch.sin(proj)], dim=-1).permute(2, 0, 1)  # 2d x h x w

        def forward(self, x: Any) -> Any:
            f = self.tune(x)
            if cfg.sap_use_pe:
                pe = self.position(x.shape[-2], x.shape[-1]).unsqueeze(0).expand(x.shape[0], -1, -1, -1)
                f = torch.cat([f, pe], dim=1)
            return f

    return SapNet()


def _prototypes(feats: Any, masks: Any, torch: Any) -> tuple[Any, Any]:
    """(fg, bg) prototypes, masked average pooling over all given slices; masks N x h x w in [0, 1]."""
    m = masks.unsqueeze(1)
    fg = (feats * m).sum(dim=(0, 2, 3)) / (m.sum() + 1e-5)
    bg = (feats * (1 - m)).sum(dim=(0, 2, 3)) / ((1 - m).sum() + 1e-5)
    return fg, bg


def _predict(feats: Any, fg: Any, bg: Any, alpha: float, torch: Any) -> Any:
    """Foreground probability N x h x w: softmax over {bg, fg} of alpha x cosine similarity (eq. 4)."""
    f = torch.nn.functional.normalize(feats, dim=1)
    s_fg = torch.einsum("nchw,c->nhw", f, torch.nn.functional.normalize(fg, dim=0))
    s_bg = torch.einsum("nchw,c->nhw", f, torch.nn.functional.normalize(bg, dim=0))
    return torch.softmax(alpha * torch.stack([s_bg, s_fg], dim=1), dim=1)[:, 1]


def _loss(prob: Any, target: Any, kind: str, beta: float, torch: Any) -> Any:
    """Cross-entropy, Dice or the biased Dice ``1 - 2TP / (2TP + beta FP + FN)`` (eq. 7)."""
    if kind == "ce":
        p = prob.clamp(1e-5, 1 - 1e-5)
        return -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
    b = beta if kind == "biased_dice" else 1.0
    tp = (prob * target).sum()
    fp = (prob * (1 - target)).sum()
    fn = ((1 - prob) * target).sum()
    return 1 - (2 * tp + 1e-3) / (2 * tp + b * fp + fn + 1e-3)


def train(
    feats_n: np.ndarray,
    masks_n: np.ndarray,
    cfg: PropagationConfig,
    should_stop: StopFn | None = None,
    progress: ProgressFn | None = None,
) -> tuple[Any, dict]:
    """Fit SAP-Net on the annotated slices.

    Args:
        feats_n: N x C x h x w float32 embeddings of the annotated slices.
        masks_n: N x h x w float32 masks (fraction of each embedding cell inside the target).
        cfg: ``PropagationConfig`` (sap_* fields, seed).

    Returns:
        (model, info) where info holds the final loss and the training time.
    """
    import torch

    torch.manual_seed(int(cfg.seed))
    rng = np.random.default_rng(cfg.seed)
    x = torch.from_numpy(feats_n)
    y = torch.from_numpy(masks_n.astype(np.float32))
    model = _build_model(x.shape[1], cfg, torch)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params or [torch.zeros(1, requires_grad=True)], lr=cfg.sap_lr)
    n = x.shape[0]
    has_fg = [k for k in range(n) if float(y[k].sum()) > 0]
    t0 = time.perf_counter()
    last = float("nan")
    epochs = cfg.sap_epochs if params else 0
    for ep in range(epochs):
        if should_stop is not None and should_stop():
            break
        # support: at least one slice with the target; query: the rest (all slices if only one is annotated)
        order = rng.permutation(n).tolist()
        first = int(rng.choice(has_fg))
        order.remove(first)
        n_sup = max(1, n // 2)
        sup = [first] + order[: n_sup - 1]
        qry = order[n_sup - 1 :] or sup
        f = model(x)
        fg, bg = _prototypes(f[sup], y[sup], torch)
        pq = _predict(f[qry], fg, bg, cfg.sap_alpha, torch)
        loss = _loss(pq, y[qry], cfg.sap_loss, cfg.sap_beta, torch)
        # alignment (PANet): prototypes from the query prediction must segment the support
        fg_q, bg_q = _prototypes(f[qry], pq, torch)
        ps = _predict(f[sup], fg_q, bg_q, cfg.sap_alpha, torch)
        loss = loss + _loss(ps, y[sup], cfg.sap_loss, cfg.sap_beta, torch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        last = float(loss.detach())
        if progress is not None and (ep % 20 == 0 or ep == epochs - 1):
            progress(0.5 + 0.25 * (ep + 1) / epochs, f"Training SAP-Net: step {ep + 1} of {epochs}, loss {last:.3f}")
    model.eval()
    return model, {"loss": last, "train_seconds": round(time.perf_counter() - t0, 2), "steps": epochs}


def infer(
    model: Any, feats_n: np.ndarray, sup_feats: np.ndarray, sup_masks: np.ndarray, cfg: PropagationConfig
) -> np.ndarray:
    """Foreground probability N x h x w of ``feats_n`` with all annotated slices as the support."""
    import torch

    with torch.no_grad():
        fs = model(torch.from_numpy(sup_feats))
        fg, bg = _prototypes(fs, torch.from_numpy(sup_masks.astype(np.float32)), torch)
        out = []
        for k in range(0, feats_n.shape[0], 16):
            out.append(_predict(model(torch.from_numpy(feats_n[k : k + 16])), fg, bg, cfg.sap_alpha, torch).numpy())
    return np.concatenate(out)


def upsample(prob_nhw: np.ndarray, shape_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of N x h x w probabilities to N x H x W (cell centres aligned)."""
    n, h, w = prob_nhw.shape
    z = (1, shape_hw[0] / h, shape_hw[1] / w)
    out = ndimage.zoom(prob_nhw, z, order=1, grid_mode=True, mode="nearest")
    return out[:, : shape_hw[0], : shape_hw[1]]


def top_k_components(mask_nhw: np.ndarray, k: int) -> np.ndarray:
    """Keep the ``k`` largest 3D connected components (26-connectivity); k <= 0 keeps everything."""
    if k <= 0 or not mask_nhw.any():
        return mask_nhw
    lab, n = ndimage.label(mask_nhw, structure=np.ones((3, 3, 3), bool))
    if n <= k:
        return mask_nhw
    sizes = ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
    keep = np.argsort(sizes)[::-1][:k] + 1
    return np.isin(lab, keep)


def coarse_stack(ctx: Context, feats: SapFeatures, annotated: list[int], targets: list[int]) -> dict[int, np.ndarray]:
    """SAP-Net's coarse masks of ``targets`` (train on the annotated slices, infer, top-K 3D components); {} if the
    run was cancelled during training."""
    cfg = ctx.config
    na = len(annotated)
    h, w = feats.feats.shape[2:]
    masks_a = np.stack([resize_mask(ctx.user[i], (h, w)) for i in annotated]).astype(np.float32)
    model, info = train(feats.feats[:na], masks_a, cfg, ctx.stop_requested, ctx.progress)
    ctx.info["sapnet"] = info
    if ctx.stop_requested() or not targets:
        return {}
    prob = infer(model, feats.feats[na:], feats.feats[:na], masks_a, cfg)
    coarse = upsample(prob, feats.slice_shape) > 0.5
    # top-K components on the volume stack (annotated slices included, so the annotated target anchors them)
    order = sorted(annotated + targets)
    pos = {i: k for k, i in enumerate(order)}
    stack = np.zeros((len(order),) + feats.slice_shape, dtype=bool)
    for k, i in enumerate(targets):
        stack[pos[i]] = coarse[k]
    for i in annotated:
        stack[pos[i]] = ctx.user[i]
    stack = top_k_components(stack, cfg.sap_topk)
    ctx.info["coarse_voxels"] = int(sum(stack[pos[i]].sum() for i in targets))
    return {i: stack[pos[i]] for i in targets}


def refine_slice(ctx: Context, index: int, coarse_hw: np.ndarray, intensity: IntensityModel | None) -> None:
    """SAM's mask from the box of one coarse mask (refined by intensity when ``intensity`` is given), recorded."""
    cfg = ctx.config
    if coarse_hw.sum() < cfg.sap_min_area:
        ctx.record(SliceRecord(index, "empty", {}, float("nan"), int(coarse_hw.sum()), "coarse area"))
        return
    if not cfg.sap_refine:
        ctx.accept(SliceRecord(index, "generated", {"coarse": True}, float("nan"), int(coarse_hw.sum())), coarse_hw)
        return
    box = geometry.box_from_mask(coarse_hw, cfg.sap_margin)
    prompts = Prompts(box_xyxy=box)
    res = ctx.segment(index, prompts)
    m = res.mask_hw
    if intensity is not None:
        m = refine_in_box(m, res.logits_hw, ctx.image(index), intensity, box, cfg.refine or 0.0, cfg.sap_refine_reach)
    if m.sum() < cfg.sap_min_area:
        ctx.record(SliceRecord(index, "empty", prompts.to_json(), float(res.iou), int(m.sum()), "area"))
    else:
        ctx.accept(SliceRecord(index, "generated", prompts.to_json(), float(res.iou), int(m.sum())), m)


def run_sapnet(ctx: Context) -> None:
    """The SAP-Net generator (see the module text)."""
    cfg = ctx.config
    annotated = sorted(ctx.user)
    targets = [i for i in range(ctx.lo, ctx.hi + 1) if i not in ctx.user and not ctx.seg.slice_is_empty(ctx.axis, i)]
    feats = collect_features(ctx, annotated + targets)
    if feats is None:
        return
    ctx.coarse = coarse_stack(ctx, feats, annotated, targets)
    if not ctx.coarse:
        return
    intensity = model_from_masks(ctx.user, ctx.image) if cfg.sap_refine and cfg.refine is not None else None
    for k, i in enumerate(targets):
        if ctx.stop_requested():
            return
        refine_slice(ctx, i, ctx.coarse[i], intensity)
        if ctx.progress is not None:
            ctx.progress(0.75 + 0.25 * (k + 1) / len(targets), f"Refining slice {i} ({k + 1} of {len(targets)})")
