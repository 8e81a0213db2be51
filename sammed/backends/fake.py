"""An analytic backend for tests (numpy only): exact, fast and predictable.

The "embedding" is the grey image itself (1xHxW float32). Decoding:
- with a box: pixels inside the box brighter than the middle of the grey range inside it (the whole box when the
  range is under ``tolerance``);
- with points only: pixels within ``radius`` model pixels of a positive point and not nearer a negative point;
- ``iou`` is 1.0 for a non-empty mask, 0.0 for an empty one.
Counts ``encode_calls`` so tests can prove a slice is never encoded twice.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from ..prompts import Prompts
from .base import DecodeResult
from .base import ModelInputGeometry


class FakeBackend:
    """The analytic backend (see the module text); ``encode_delay`` seconds per encode simulate a slow model."""

    model_id = "fake"
    preprocessing_id = "fake64"
    image_size = None  # the "model input" is the model image itself
    embedding_shape = (1, 64, 64)  # nominal; the real shape follows the image
    weights_sha256 = ""

    def __init__(self, radius: float = 4.0, tolerance: float = 40.0, encode_delay: float = 0.0) -> None:
        self.radius = radius
        self.tolerance = tolerance
        self.encode_delay = encode_delay
        self.encode_calls = 0
        self.decode_calls = 0
        self._lock = threading.Lock()
        self.yield_point: Any = lambda: None

    def set_yield_point(self, fn: Any) -> None:
        """Call ``fn()`` between the "layers" of an encode (as ``SamFamilyBackend`` does before each module)."""
        self.yield_point = fn

    def encode(self, image_hw3: np.ndarray) -> np.ndarray:
        """1xHxW float32: the grey image itself."""
        with self._lock:
            self.encode_calls += 1
        for _ in range(10 if self.encode_delay else 1):  # ten "layers", each a yield point
            self.yield_point()
            time.sleep(self.encode_delay / 10)
        grey = np.asarray(image_hw3, dtype=np.float32)
        grey = grey.mean(axis=2) if grey.ndim == 3 else grey
        return grey[None]  # 1xHxW: the "embedding" is the image itself

    def decode(
        self,
        embedding: np.ndarray,
        prompts: Prompts,
        geometry: ModelInputGeometry,
        multimask: bool | None = None,
        prompt_encoder: Any = None,
    ) -> DecodeResult:
        """The analytic mask of the prompts (box: bright part of the box; points: discs), on the slice grid."""
        self.decode_calls += 1
        img = np.asarray(embedding, dtype=np.float32)[0]
        h, w = geometry.input_shape_hw
        yy, xx = np.mgrid[0:h, 0:w]
        mask = np.zeros((h, w), dtype=bool)
        points, labels, box = geometry.prompts_to_input(prompts)
        if box is not None:
            x0, y0, x1, y1 = np.asarray(box, dtype=float)
            inside = (xx >= np.floor(x0)) & (xx <= np.ceil(x1)) & (yy >= np.floor(y0)) & (yy <= np.ceil(y1))
            if inside.any():
                lo, hi = img[inside].min(), img[inside].max()
                mask = inside & (img > (lo + hi) / 2) if hi - lo > self.tolerance else inside
        if points is not None and labels is not None:
            d = np.stack([np.hypot(xx - x, yy - y) for x, y in points.astype(np.float64)])
            nearest = d.argmin(axis=0)
            near = d.min(axis=0) <= self.radius
            pos = near & (labels[nearest] == 1)
            neg = near & (labels[nearest] == 0)
            mask = (mask | pos) & ~neg
        logits = np.where(mask, 10.0, -10.0).astype(np.float32)
        if geometry.shape_hw != (h, w):
            oh, ow = geometry.shape_hw
            r = np.minimum(((np.arange(oh) + 0.5) * h / oh).astype(int), h - 1)
            c = np.minimum(((np.arange(ow) + 0.5) * w / ow).astype(int), w - 1)
            logits = logits[np.ix_(r, c)]
        low = np.full((256, 256), -10.0, dtype=np.float32)
        return DecodeResult(logits_hw=logits, iou=1.0 if mask.any() else 0.0, low_res_logits=low)
