"""The interactive engine: prompts on one slice -> mask + predicted IoU, encoding each slice at most once.

numpy in, numpy out (GUI code never sees tensors). Prompts are given in the slice's own pixel frame
(``extract_slice`` layout, points ``(x, y) = (column, row)``, boxes XYXY); masks come back on the same grid.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from . import geometry
from .backends.base import Backend
from .backends.base import ModelInputGeometry
from .backends.base import model_input_geometry
from .cache import CacheKey
from .cache import EmbeddingCache
from .intensity import IntensityMapping
from .intensity import make_mapping
from .io import Volume
from .jobs import ProgressFn
from .jobs import StopFn
from .jobs import check_stop
from .prompts import Prompts
from .readers import non_finite_message

CONTEXTS = ("repeat", "adjacent")


@dataclass
class SliceResult:
    """Result of one decode on one slice.

    Attributes:
        mask_hw: HxW bool mask on the slice grid (``extract_slice`` layout).
        iou: the model's predicted IoU.
        logits_hw: HxW float32 logits (mask = logits > 0).
        low_res_logits: 256x256 float32, to pass back as ``mask_input`` for a refinement on the same slice.
        axis, index: where the slice is.
    """

    mask_hw: np.ndarray
    iou: float
    logits_hw: np.ndarray
    low_res_logits: np.ndarray
    axis: int
    index: int


def empty_slice_message(axis: int, index: int) -> str:
    """The message for a slice whose voxels all have one value."""
    return f"Slice {index} on axis {axis} is empty (all voxels have the same value); pick a slice with image content."


class Segmenter:
    """Segment slices of one volume with one backend.

    Args:
        volume: the image.
        backend: a ``Backend`` (real model or ``FakeBackend``).
        mapping: intensity mapping; default from ``preset`` or chosen from the volume (CT window / MR clip).
        cache: embedding cache shared between segmenters (one is made if None).
        preset: intensity preset name when ``mapping`` is None.
        context: ``repeat`` (the slice in all 3 channels) or ``adjacent`` (slices i-1, i, i+1, as Slide-SAM).

    Raises:
        TypeError: ``volume`` is not a ``Volume``.
        ValueError: invalid volume geometry (``Volume.check``), NaN or infinite voxels, an unknown context or preset.
    """

    def __init__(
        self,
        volume: Volume,
        backend: Backend,
        mapping: IntensityMapping | None = None,
        cache: EmbeddingCache | None = None,
        preset: str | None = None,
        context: str = "repeat",
    ) -> None:
        if not isinstance(volume, Volume):
            raise TypeError(
                f"Segmenter needs a sammed.io.Volume, got {type(volume).__name__}; wrap a voxel array with "
                "Volume(array_kji, spacing_ijk, origin_lps, direction_lps)."
            )
        volume.check()
        if volume.non_finite:
            raise ValueError(non_finite_message(volume.label, volume.non_finite, volume.array_kji.size))
        if context not in CONTEXTS:
            raise ValueError(f"Unknown slice context '{context}'; use one of {CONTEXTS}.")
        self.volume = volume
        self.backend = backend
        self.mapping = mapping or make_mapping(volume.array_kji, preset)
        self.cache = cache if cache is not None else EmbeddingCache()
        self.context = context
        self.prompt_encoder: Any = None  # a learned (SAMassist) prompt encoder, used when ``use_learned`` is True
        # used otherwise: None (the model's own) or what ``prompt_encoders.resolve`` gives (the shipped population
        # encoder, which the command line, the worker, the server and the demo set by default, or a file)
        self.base_prompt_encoder: Any = None
        self.use_learned = True
        self._empty: dict[tuple[int, int], bool] = {}

    # ------------------------------------------------------------------ keys and images
    @property
    def preprocessing_id(self) -> str:
        return f"{self.mapping.id}|{self.backend.preprocessing_id}|{self.context}"

    def key(self, axis: int, index: int) -> CacheKey:
        return CacheKey(self.volume.digest, int(axis), int(index), self.backend.model_id, self.preprocessing_id)

    def grid(self, axis: int) -> geometry.SliceGrid:
        """The slice grid of ``axis`` (shape and pixel spacing)."""
        return self.input_geometry(axis).grid

    def input_geometry(self, axis: int) -> ModelInputGeometry:
        """How slices of ``axis`` map to this backend's model input (``backends.base.ModelInputGeometry``).

        Raises:
            ValueError: a bad axis, or pixels too elongated to resample (``geometry.SliceGrid``).
        """
        shape = geometry.slice_shape(self.volume.shape_kji, axis)
        spacing = geometry.pixel_spacing(self.volume.spacing_ijk, axis)
        try:
            return model_input_geometry(shape, spacing, self.backend.image_size)
        except ValueError as exc:
            name = geometry.orientation_of_axis(self.volume.direction_lps, axis)
            raise ValueError(f"{self.volume.label}, slices on axis {axis} ({name}): {exc}") from None

    def slice_is_empty(self, axis: int, index: int) -> bool:
        """True when all voxels of the slice have one value.

        Raises:
            TypeError, ValueError: see ``geometry.check_index``.
        """
        axis = geometry.check_axis(axis)
        k = (axis, geometry.check_index(self.volume.shape_kji, axis, index))
        if k not in self._empty:
            s = geometry.extract_slice(self.volume.array_kji, axis, index)
            self._empty[k] = bool(s.min() == s.max())
        return self._empty[k]

    def model_image(self, axis: int, index: int) -> np.ndarray:
        """HxWx3 uint8 image the encoder sees (intensity-mapped, square pixels).

        Raises:
            TypeError: an index that is not a whole number.
            ValueError: a bad axis or index, pixels too elongated to resample.
        """
        axis = geometry.check_axis(axis)
        index = geometry.check_index(self.volume.shape_kji, axis, index)
        n = self.volume.shape_kji[axis]
        if self.context == "adjacent":
            idx = [max(index - 1, 0), index, min(index + 1, n - 1)]
        else:
            idx = [index] * 3
        grid = self.grid(axis)
        chans = [
            grid.to_model_image(self.mapping.apply(geometry.extract_slice(self.volume.array_kji, axis, i)))
            for i in dict.fromkeys(idx)
        ]
        by_index = dict(zip(dict.fromkeys(idx), chans, strict=True))
        return np.stack([by_index[i] for i in idx], axis=-1)

    # ------------------------------------------------------------------ embeddings
    def is_cached(self, axis: int, index: int) -> bool:
        return self.key(axis, index) in self.cache

    def embedding(self, axis: int, index: int) -> np.ndarray:
        """The slice's embedding (float16), encoded now only if not cached.

        Raises:
            TypeError: an index that is not a whole number.
            ValueError: a bad axis or index, pixels too elongated to resample.
        """
        axis = geometry.check_axis(axis)
        index = geometry.check_index(self.volume.shape_kji, axis, index)
        key = self.key(axis, index)
        return self.cache.get_or_compute(key, lambda: self.backend.encode(self.model_image(axis, index)))

    def precompute(
        self,
        axis: int,
        center: int,
        indices: Iterable[int] | None = None,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> int:
        """Encode slices outward from ``center`` (center, +1, -1, +2, ...), skipping cached ones.

        Args:
            indices: restrict to these slice indices (default: the whole axis).
            progress: ``progress(fraction, message)``.
            should_stop: checked before each slice; cancelling stops within one slice.

        Returns:
            number of slices encoded now.

        Raises:
            jobs.Cancelled: when ``should_stop()`` answered True (slices done so far stay cached).
            TypeError: a ``center`` that is not a whole number.
            ValueError: a bad axis or ``center``.
        """
        axis = geometry.check_axis(axis)
        n = self.volume.shape_kji[axis]
        center = geometry.check_index(self.volume.shape_kji, axis, center)
        allowed = set(range(n)) if indices is None else {int(i) for i in indices if 0 <= int(i) < n}
        order = [center] + [i for d in range(1, n) for i in (center + d, center - d) if 0 <= i < n]
        order = [i for i in order if i in allowed]
        batch = self.batch_size()
        done = 0
        for start in range(0, len(order), batch):
            check_stop(should_stop, partial=done)
            chunk = order[start : start + batch]
            done += self.encode_slices(axis, chunk)
            if progress:
                count, i = start + len(chunk), chunk[-1]
                progress(count / len(order), f"Embedding slice {i} ({count} of {len(order)}) on axis {axis}")
        return done

    def batch_size(self) -> int:
        """Slices per encoder call (``backend.batch_size``: more than 1 on a GPU only)."""
        size = getattr(self.backend, "batch_size", None)
        return max(int(size()), 1) if callable(size) else 1

    def encode_slices(self, axis: int, indices: list[int], join: bool = True) -> int:
        """Encode the slices of ``indices`` not cached yet in one encoder call (``backend.encode_batch``; one by
        one without it) and cache them. Returns how many were encoded.

        Args:
            join: a single slice that another thread is encoding is awaited (``embedding``: one encode per slice);
                False encodes it here regardless (the worker's interactive lane, which must not wait for the
                background lane it has paused).
        """
        todo = [int(i) for i in indices if not self.is_cached(axis, i)]
        batch = getattr(self.backend, "encode_batch", None)
        if join and (len(todo) <= 1 or batch is None):
            for i in todo:
                self.embedding(axis, i)
            return len(todo)
        images = [self.model_image(axis, i) for i in todo]
        embeddings = batch(images) if batch is not None else [self.backend.encode(image) for image in images]
        for i, embedding in zip(todo, embeddings, strict=True):
            self.cache.put(self.key(axis, i), embedding, encoded=True)
        return len(todo)

    # ------------------------------------------------------------------ decoding
    def segment(
        self,
        axis: int,
        index: int,
        prompts: Prompts | None = None,
        *,
        box_xyxy: ArrayLike | None = None,
        points_xy: ArrayLike | None = None,
        point_labels: ArrayLike | None = None,
        mask_input: ArrayLike | None = None,
        multimask: bool | None = None,
        use_learned: bool | None = None,
        prompt_encoder: str | None = None,
    ) -> SliceResult:
        """Segment one slice from a box and/or points (``prompts``, or the same given as keywords).

        Args:
            axis, index: the slice (``extract_slice`` layout).
            prompts: a ``Prompts`` in slice pixels; or build one from the keywords:
            box_xyxy: (4,) XYXY in slice pixels, or None.
            points_xy: Nx2 (x = column, y = row) in slice pixels, or None.
            point_labels: N ints, 1 positive / 0 negative (default: all positive).
            mask_input: 256x256 low-res logits of an earlier result on this slice (composite refinement).
            multimask: let the model pick among 3 masks by predicted IoU (default: the backend decides).
            use_learned: use the learned SAMassist prompt encoder if one is set (default: ``self.use_learned``).
            prompt_encoder: ``original`` decodes with the model's own prompt encoder this time (to compare);
                None or ``learned``: the SAMassist encoder when used, else ``base_prompt_encoder``.

        Raises:
            TypeError: an index that is not a whole number.
            ValueError: slice out of range, empty slice, no prompt, box/point outside the slice or not finite, a
                ``mask_input`` that is not 256x256 finite logits, pixels too elongated to resample.
        """
        if prompts is None:
            prompts = Prompts.make(box_xyxy, points_xy, point_labels, mask_input)
        axis = geometry.check_axis(axis)
        index = geometry.check_index(self.volume.shape_kji, axis, index)
        geom = self.input_geometry(axis)
        prompts = prompts.checked(geom.shape_hw)
        if self.slice_is_empty(axis, index):
            raise ValueError(empty_slice_message(axis, index))
        emb = self.embedding(axis, index)
        learned = self.use_learned if use_learned is None else use_learned
        pe = self.prompt_encoder if learned and self.prompt_encoder is not None else self.base_prompt_encoder
        if prompt_encoder == "original":
            pe = None
        res = self.backend.decode(emb, prompts, geom, multimask=multimask, prompt_encoder=pe)
        return SliceResult(res.logits_hw > 0, res.iou, res.logits_hw, res.low_res_logits, axis, index)
