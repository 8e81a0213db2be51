"""Public entry point of the volume generators: ``propagate(segmenter, user_masks, ...)``.

A generator fills the slices of one target (one label) on one array axis from the user's annotated slices:

- ``sliding``: Slide-SAM's sliding window, the box of the previous mask (after a morphological opening, plus a
  margin) prompts the next slice, in both directions from each seed, until a stop rule fires (``stop.py``);
- ``threshold``: SAMMed's prompt propagation, positive points carried to the next slice while they pass a dynamic
  intensity threshold (``threshold.py``);
- ``sapnet``: SAMMed's SAP-Net, a few-shot coarse segmentation on cached SAM features whose masks become box
  prompts for SAM (``sapnet.py``, needs torch).

User slices are never changed; every other visited slice gets a ``SliceRecord``, passed to ``on_slice`` as soon as
it is final.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from .. import geometry
from ..jobs import ProgressFn
from ..jobs import StopFn
from .registry import GENERATORS
from .run import Context
from .run import PropagationConfig
from .run import PropagationResult
from .run import SliceCallback

if TYPE_CHECKING:
    from ..segmenter import Segmenter


def _seed_mask(index: int, mask: np.ndarray, shape_kji: tuple[int, ...], axis: int) -> np.ndarray:
    """One user mask as bool, checked against the slices of ``axis``."""
    n = shape_kji[axis]
    if not 0 <= index < n:
        raise ValueError(f"Seed slice {index} is out of range on axis {axis}: the volume has slices 0..{n - 1}.")
    a = np.asarray(mask)
    expected = geometry.slice_shape(shape_kji, axis)
    if a.shape != expected:
        raise ValueError(
            f"Seed mask of slice {index} has shape {a.shape}, but slices on axis {axis} are {expected}: "
            "the mask is not on the volume grid."
        )
    values = np.unique(a)
    if a.dtype != bool and np.count_nonzero(values) > 1:
        raise ValueError(
            f"Seed mask of slice {index} holds several labels {values[values != 0].tolist()}: "
            "conflicting labels; give one binary mask per slice (pick one label)."
        )
    return a.astype(bool)


def _slice_range(slice_range: tuple[int, int] | None, n: int, axis: int) -> tuple[int, int]:
    if slice_range is None:
        return 0, n - 1
    lo, hi = int(slice_range[0]), int(slice_range[1])
    if not (0 <= lo <= hi < n):
        raise ValueError(f"Slice range {slice_range} is not inside 0..{n - 1} on axis {axis}.")
    return lo, hi


def _check_inputs(
    segmenter: Segmenter,
    user_masks: dict[int, np.ndarray],
    axis: int,
    generator: str,
    slice_range: tuple[int, int] | None,
) -> tuple[dict[int, np.ndarray], int, int]:
    """The user masks as bool and the inclusive slice range, or a ValueError saying what is wrong."""
    if generator not in GENERATORS:
        raise ValueError(f"Unknown generator '{generator}'; use one of {', '.join(GENERATORS)}.")
    axis = geometry.check_axis(axis)
    shape_kji = segmenter.volume.shape_kji
    if not user_masks:
        what = "annotated slices for SAP-Net" if generator == "sapnet" else "a seed slice with a mask"
        raise ValueError(f"No {what} given: annotate at least one slice first.")
    masks = {int(i): _seed_mask(int(i), m, shape_kji, axis) for i, m in user_masks.items()}
    nonempty = [i for i, m in masks.items() if m.any()]
    if generator in ("sliding", "threshold"):
        empty = sorted(set(masks) - set(nonempty))
        if empty:
            raise ValueError(f"Seed mask of slice {empty[0]} is empty: draw the target (or a box) on each seed slice.")
    elif not nonempty:
        raise ValueError("SAP-Net needs at least one annotated slice that contains the target; all are empty.")
    lo, hi = _slice_range(slice_range, shape_kji[axis], axis)
    if any(not lo <= i <= hi for i in nonempty) and generator != "sapnet":
        raise ValueError(f"Seed slices {sorted(nonempty)} must lie inside the slice range {lo}..{hi}.")
    return masks, lo, hi


def with_context(segmenter: Segmenter, context: str | None) -> Segmenter:
    """The segmenter itself, or a sibling sharing volume/backend/mapping/cache with another slice context."""
    if context is None or context == segmenter.context:
        return segmenter
    from ..segmenter import Segmenter

    sib = Segmenter(segmenter.volume, segmenter.backend, segmenter.mapping, segmenter.cache, context=context)
    sib.base_prompt_encoder = segmenter.base_prompt_encoder
    sib.prompt_encoder = segmenter.prompt_encoder
    sib.use_learned = segmenter.use_learned
    return sib


def propagate(
    segmenter: Segmenter,
    user_masks: dict[int, np.ndarray],
    axis: int = 0,
    generator: str = "sliding",
    config: PropagationConfig | None = None,
    slice_range: tuple[int, int] | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    on_slice: SliceCallback | None = None,
) -> PropagationResult:
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
        progress: ``progress(fraction, message)``, called once per slice ("Slice i (k of n), going up"), and with
            1.0 at the end of a run that was not cancelled.
        should_stop: polled before each slice; when it answers True the run ends within one slice and the
            partial result is returned with ``cancelled=True``.
        on_slice: ``on_slice(record, mask_hw)`` for every non-user slice once its record is final: ``mask_hw`` is
            the HxW bool mask of a ``generated`` slice, None for the others (for live previews).

    Returns:
        a ``PropagationResult``; user slices are copied unchanged into ``mask_kji``.

    Raises:
        ValueError: unknown generator, no/empty seed, seed out of range or not on the slice grid, several labels
            in one seed mask, bad slice range. Nothing is computed then.
    """
    config = config or PropagationConfig()
    masks, lo, hi = _check_inputs(segmenter, user_masks, axis, generator, slice_range)
    seg = with_context(segmenter, config.context)
    ctx = Context(seg, masks, geometry.check_axis(axis), config, lo, hi, progress, should_stop, on_slice)
    t0 = time.perf_counter()
    GENERATORS[generator](ctx)
    for i, m in masks.items():  # user slices are the user's, whatever happened
        geometry.insert_slice(ctx.mask_kji, ctx.axis, i, m)
    records = [ctx.records[i] for i in sorted(ctx.records)]
    if progress is not None and not ctx.cancelled:  # the stop rules may end before the last slice of the range
        generated = sum(r.status == "generated" for r in records)
        progress(1.0, f"Done: {generated} slices generated")
    coarse = None
    if ctx.coarse:
        coarse = np.zeros_like(ctx.mask_kji)
        for i, m in list(ctx.coarse.items()) + list(masks.items()):
            geometry.insert_slice(coarse, ctx.axis, i, m)
    return PropagationResult(
        ctx.mask_kji,
        ctx.axis,
        records,
        ctx.cancelled,
        ctx.encoded,
        generator,
        time.perf_counter() - t0,
        ctx.info,
        coarse,
    )


def seeds_from_labelmap(
    seed_kji: np.ndarray, axis: int, label: int | None, slices: list[int] | None, background: list[int] | None
) -> tuple[dict[int, np.ndarray], int]:
    """Seed masks per slice from a label map; returns (masks, label value).

    Raises:
        ValueError: no label in the file, several labels and no ``label`` given, label absent, a chosen slice
            without the label.
    """
    values = [int(v) for v in np.unique(seed_kji) if v != 0]
    if label is None:
        if not values:
            raise ValueError("The seed label map is empty: annotate at least one slice.")
        if len(values) > 1:
            raise ValueError(
                f"The seed label map holds several labels {values} (conflicting labels): pick one with --label."
            )
        label = values[0]
    mask_kji = seed_kji == label
    if not mask_kji.any():
        raise ValueError(f"Label {label} is not in the seed label map (it holds {values}).")
    present = geometry.foreground_slices(mask_kji, axis)
    chosen = present if slices is None else slices
    masks = {}
    for i in chosen:
        m = geometry.extract_slice(mask_kji, axis, i)
        if not m.any():
            raise ValueError(f"Slice {i} has no voxel of label {label} in the seed label map.")
        masks[int(i)] = m.copy()
    for i in background or []:
        geometry.check_index(seed_kji.shape, axis, i)
        masks[int(i)] = np.zeros(geometry.slice_shape(seed_kji.shape, axis), dtype=bool)
    return masks, label
