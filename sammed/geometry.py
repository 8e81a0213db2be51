"""Slices of a KJI volume along any axis, and conversions between array layouts.

Conventions (the only file that converts between them):

- A volume array is KJI. ``axis`` 0 takes ``volume_kji[index]`` (rows = J, columns = I), axis 1 takes
  ``volume_kji[:, index, :]`` (rows = K, columns = I), axis 2 takes ``volume_kji[:, :, index]`` (rows = K,
  columns = J). Slices are never flipped or transposed, so a mask goes back into the volume exactly.
- In a slice, SAM points are ``(x, y) = (column, row)`` in pixel units; boxes are ``XYXY``
  ``(x_min, y_min, x_max, y_max)`` in the same frame, inclusive pixel indices as MedSAM uses them.
- Anatomical names map to array axes through the direction cosines: the IJK axis that points most along
  S/I is axial, along A/P coronal, along L/R sagittal; array axis = 2 - IJK axis (``ijk_axis``/``array_axis``).

The Slicer side converts between IJK and RAS in ``SAMMedLib.VolumeAccess`` (it needs the node's matrices) and
takes every array-axis <-> IJK rule from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

ORIENTATIONS = ("axial", "coronal", "sagittal")
# LPS component that is the normal of each orientation: axial -> S (2), coronal -> P (1), sagittal -> L (0)
_NORMAL_COMPONENT = {"axial": 2, "coronal": 1, "sagittal": 0}


def axis_for_orientation(direction_lps: np.ndarray, orientation: str) -> int:
    """Array axis (0, 1, 2 of a KJI array) whose slices are closest to ``orientation``.

    Args:
        direction_lps: 3x3, column c is the LPS direction of IJK axis c (RAS works the same: only |values| matter).
        orientation: "axial", "coronal" or "sagittal" (or an int 0/1/2, returned as is).

    Raises:
        ValueError: unknown orientation name.
    """
    if isinstance(orientation, (int, np.integer)):
        return check_axis(int(orientation))
    name = str(orientation).lower()
    if name in ("0", "1", "2"):
        return int(name)
    if name not in _NORMAL_COMPONENT:
        raise ValueError(f"Unknown axis '{orientation}'; use axial, coronal, sagittal or 0, 1, 2.")
    d = np.abs(np.asarray(direction_lps, dtype=float).reshape(3, 3))
    return array_axis(_assign_ijk_axes(d)[name])


def _assign_ijk_axes(abs_direction: np.ndarray) -> dict[str, int]:
    """Orientation name -> IJK axis, a one-to-one assignment maximising alignment (handles oblique volumes)."""
    from itertools import permutations

    best: tuple[int, ...] = (0, 1, 2)
    best_score = -1.0
    for perm in permutations(range(3)):  # perm[c] = LPS component for IJK axis c
        score = sum(abs_direction[perm[c], c] for c in range(3))
        if score > best_score:
            best, best_score = perm, score
    return {name: best.index(comp) for name, comp in _NORMAL_COMPONENT.items()}


def orientation_of_axis(direction_lps: np.ndarray, axis: int) -> str:
    """The anatomical name (axial/coronal/sagittal) of array axis ``axis``."""
    check_axis(axis)
    assignment = _assign_ijk_axes(np.abs(np.asarray(direction_lps, dtype=float).reshape(3, 3)))
    for name, ijk in assignment.items():
        if array_axis(ijk) == axis:
            return name
    raise RuntimeError("unreachable")  # pragma: no cover


def check_axis(axis: int) -> int:
    """``axis`` as an int if it is 0, 1 or 2 (an int or numpy integer, not a bool or float).

    Raises:
        ValueError: any other value.
    """
    if not _is_int(axis) or int(axis) not in (0, 1, 2):
        raise ValueError(f"Axis {plain(axis)} is not 0, 1 or 2 (array axes of a KJI volume).")
    return int(axis)


def _is_int(value: object) -> bool:
    """An int or numpy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def plain(value: object) -> str:
    """A value for a message: numpy scalars as plain Python numbers (``nan``, not ``np.float64(nan)``)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value) if isinstance(value, int) else repr(value)


def plain_list(values: ArrayLike) -> str:
    """Numbers as ``[nan, 1, 5, 5]`` for a message."""
    try:
        items = np.ravel(np.asarray(values, dtype=object)).tolist()
    except (TypeError, ValueError):
        return repr(values)
    return "[" + ", ".join(plain(v) for v in items) + "]"


def ijk_axis(axis: int) -> int:
    """The IJK axis (0 = I, 1 = J, 2 = K) that array axis ``axis`` of a KJI array runs along."""
    return 2 - check_axis(axis)


def array_axis(ijk: int) -> int:
    """The KJI array axis of IJK axis ``ijk`` (inverse of ``ijk_axis``)."""
    return 2 - check_axis(ijk)


def slice_ijk_axes(axis: int) -> tuple[int, int]:
    """(IJK axis of x = column, IJK axis of y = row) of a slice on array ``axis``: (I, J), (I, K) or (J, K)."""
    return {0: (0, 1), 1: (0, 2), 2: (1, 2)}[check_axis(axis)]


def num_slices(shape_kji: tuple[int, ...], axis: int) -> int:
    """Number of slices of a KJI shape along ``axis``."""
    return int(shape_kji[check_axis(axis)])


def check_index(shape_kji: tuple[int, ...], axis: int, index: int) -> int:
    """``index`` as an int if it is a slice of ``shape_kji`` on ``axis`` (an int or numpy integer).

    Raises:
        TypeError: not a whole number (a float, str or bool).
        ValueError: out of range.
    """
    n = num_slices(shape_kji, axis)
    if not _is_int(index):
        raise TypeError(f"Slice index {plain(index)} ({type(index).__name__}) is not a whole number; give an int.")
    if not 0 <= int(index) < n:
        raise ValueError(f"Slice {index} is out of range on axis {axis}: the volume has slices 0..{n - 1} there.")
    return int(index)


def extract_slice(volume_kji: np.ndarray, axis: int, index: int) -> np.ndarray:
    """HxW view of one slice (see the module docstring for rows/columns per axis)."""
    check_index(volume_kji.shape, axis, index)
    return np.take(volume_kji, int(index), axis=axis)


def insert_slice(volume_kji: np.ndarray, axis: int, index: int, slice_hw: np.ndarray) -> None:
    """Write ``slice_hw`` into ``volume_kji`` in place (inverse of ``extract_slice``)."""
    check_index(volume_kji.shape, axis, index)
    target: list[slice | int] = [slice(None)] * 3
    target[axis] = int(index)
    if volume_kji[tuple(target)].shape != slice_hw.shape:
        raise ValueError(
            f"Mask shape {slice_hw.shape} does not match slice shape {volume_kji[tuple(target)].shape} on axis {axis}."
        )
    volume_kji[tuple(target)] = slice_hw


def slice_shape(shape_kji: tuple[int, ...], axis: int) -> tuple[int, int]:
    """(H, W) of a slice on ``axis`` (``extract_slice`` layout)."""
    s = [int(v) for v in shape_kji]
    del s[check_axis(axis)]
    return s[0], s[1]


def foreground_slices(mask_kji: np.ndarray, axis: int) -> list[int]:
    """Indices of the slices on ``axis`` where ``mask_kji`` has a nonzero voxel."""
    other = tuple(a for a in range(3) if a != check_axis(axis))
    return [int(i) for i in np.flatnonzero(np.asarray(mask_kji).any(axis=other))]


def largest_slice(mask_kji: np.ndarray, axis: int) -> int:
    """Index of the slice on ``axis`` where ``mask_kji`` has the most voxels."""
    other = tuple(a for a in range(3) if a != check_axis(axis))
    return int(np.asarray(mask_kji).sum(axis=other).argmax())


def pixel_spacing(spacing_ijk: tuple[float, float, float], axis: int) -> tuple[float, float]:
    """(row, column) pixel size in mm of a slice on ``axis``."""
    si, sj, sk = spacing_ijk
    return {0: (sj, si), 1: (sk, si), 2: (sk, sj)}[check_axis(axis)]


MAX_PIXEL_RATIO = 50.0
MAX_MODEL_SIDE = 16384


@dataclass(frozen=True)
class SliceGrid:
    """Maps a slice with non-square pixels to a square-pixel image for the encoder, and prompts with it.

    The square image covers exactly the same field of view as the slice, so a model output cropped to the
    image and resized to ``shape_hw`` lands on the original pixels (no shift, no flip).

    Resampling rule: the thick side of the pixels is divided into square pixels of the thin side, so the model
    image grows by the pixels' aspect ratio along that side. A slice is refused when its pixels are more than
    ``MAX_PIXEL_RATIO`` (50) times longer one way than the other, or when the stretched side would exceed
    ``MAX_MODEL_SIDE`` (16384) pixels. Real CT/MR reslices stay far below both (0.5 mm x 5 mm is 10; 0.35 mm x 10 mm
    is 29; the stretched side is the slice's physical extent over its fine pixel size, a few thousand pixels at
    most); a spacing of 0.001 mm next to 1 mm is a header error that would otherwise allocate gigabytes.

    Raises:
        ValueError: a shape that is not two whole numbers >= 1, a spacing that is not two finite numbers > 0, or a
            slice the rule above refuses.
    """

    shape_hw: tuple[int, int]
    spacing_rc: tuple[float, float] = (1.0, 1.0)
    tolerance: float = 0.05

    def __post_init__(self) -> None:
        h, w = self.shape_hw
        if not (_is_int(h) and _is_int(w) and h >= 1 and w >= 1):
            raise ValueError(f"A slice needs a shape of two whole numbers >= 1; got {plain_list(self.shape_hw)}.")
        sr, sc = (float(v) for v in self.spacing_rc)
        if not (np.isfinite(sr) and np.isfinite(sc) and sr > 0 and sc > 0):
            raise ValueError(
                f"Pixel spacing {plain(sr)} x {plain(sc)} mm (rows x columns) is not two finite numbers above 0; fix "
                "the image spacing."
            )
        ratio = max(sr / sc, sc / sr)
        side = max(self.model_shape_hw)
        if ratio > MAX_PIXEL_RATIO or side > max(MAX_MODEL_SIDE, h, w):
            raise ValueError(
                f"Pixels of {plain(sr)} x {plain(sc)} mm (rows x columns) are {ratio:.3g} times longer one way than "
                f"the other; resampled to square pixels the slice would be {side} pixels long (limits: "
                f"{MAX_PIXEL_RATIO:g} times, {MAX_MODEL_SIDE} pixels). Segment along another axis or fix the spacing."
            )

    @property
    def model_shape_hw(self) -> tuple[int, int]:
        h, w = self.shape_hw
        sr, sc = self.spacing_rc
        ratio = sr / sc
        if abs(ratio - 1.0) <= self.tolerance:
            return h, w
        if ratio > 1.0:  # thick rows: add rows
            return max(1, int(round(h * ratio))), w
        return h, max(1, int(round(w / ratio)))

    @property
    def is_identity(self) -> bool:
        return self.model_shape_hw == tuple(self.shape_hw)

    @property
    def scale_xy(self) -> tuple[float, float]:
        mh, mw = self.model_shape_hw
        return mw / self.shape_hw[1], mh / self.shape_hw[0]

    def to_model_image(self, slice_hw: np.ndarray) -> np.ndarray:
        """Resample an HxW (or HxWxC) image to ``model_shape_hw`` with linear interpolation."""
        if self.is_identity:
            return slice_hw
        from scipy import ndimage

        mh, mw = self.model_shape_hw
        zoom = (mh / slice_hw.shape[0], mw / slice_hw.shape[1]) + (1,) * (slice_hw.ndim - 2)
        out = ndimage.zoom(slice_hw.astype(np.float32), zoom, order=1, mode="nearest", grid_mode=True)
        return out.astype(slice_hw.dtype) if slice_hw.dtype == np.uint8 else out

    def points_to_model(self, points_xy: ArrayLike) -> np.ndarray:
        """Nx2 (x, y) slice pixels -> model-image pixels (pixel centres map to the same physical point)."""
        sx, sy = self.scale_xy
        return (np.asarray(points_xy, dtype=np.float64) + 0.5) * np.array([sx, sy]) - 0.5

    def box_to_model(self, box_xyxy: ArrayLike) -> np.ndarray:
        """XYXY box of inclusive slice pixels -> model-image box through the outer edges of those pixels.

        A box over pixels x0..x1 covers them whole, so its sides are the pixel edges x0 - 0.5 and x1 + 0.5 (pixel
        centres are integers), mapped like points. Through the pixel centres instead, a tight box cuts the edge
        pixels in half, and LiteMedSAM, trained with loose boxes, then often misses small objects (docs/
        architecture.md, "Prompt coordinates").
        """
        sx, sy = self.scale_xy
        x0, y0, x1, y1 = np.asarray(box_xyxy, dtype=np.float64)
        return np.array([x0 * sx - 0.5, y0 * sy - 0.5, (x1 + 1) * sx - 0.5, (y1 + 1) * sy - 0.5])


def box_from_points(points_xy: np.ndarray) -> np.ndarray:
    """The rectangle spanned by points (x, y) in slice pixels, as an XYXY box of whole pixels (not validated).

    Used for boxes drawn in a view (ROI corners, two corner clicks): their corners fall between pixel centres, and
    the pixels whose centres are nearest to them are the box's edge pixels. ``check_box`` then validates it.
    """
    xy = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    return np.round([xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()])


def check_box(box_xyxy: ArrayLike, shape_hw: tuple[int, int]) -> np.ndarray:
    """Validate a box in slice pixels; returns it as float64 (4,).

    Raises:
        ValueError: not 4 finite numbers, zero area or reversed, or entirely outside the slice.
    """
    try:
        box = np.asarray(box_xyxy, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        box = np.array([np.nan])
    if box.size != 4 or not np.all(np.isfinite(box)):
        raise ValueError(f"A box needs 4 numbers x_min,y_min,x_max,y_max, all finite; got {plain_list(box_xyxy)}.")
    h, w = shape_hw
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        raise ValueError(
            f"Box {plain_list(box)} has zero area or reversed corners; give x_min < x_max and y_min < y_max."
        )
    if x1 < 0 or y1 < 0 or x0 > w - 1 or y0 > h - 1:
        raise ValueError(f"Box {plain_list(box)} lies outside the slice (width {w}, height {h}).")
    return np.clip(box, 0, [w - 1, h - 1, w - 1, h - 1])


def check_points(points_xy: ArrayLike, labels: ArrayLike, shape_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Validate Nx2 points (x, y) and N labels (1 positive, 0 negative).

    Raises:
        ValueError: shape mismatch, a label other than 0/1, or a point outside the slice.
    """
    try:
        pts = np.asarray(points_xy, dtype=np.float64)
    except (TypeError, ValueError):
        pts = np.array([np.nan])
    if pts.size % 2 or not np.all(np.isfinite(pts)):
        raise ValueError(f"Points need finite x,y pairs; got {plain_list(points_xy)}.")
    pts = pts.reshape(-1, 2)
    try:
        lab_in = np.asarray(labels, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        lab_in = np.array([np.nan])
    if len(pts) != len(lab_in):
        raise ValueError(f"{len(pts)} points but {len(lab_in)} labels; give one label (1 or 0) per point.")
    if not np.isin(lab_in, (0, 1)).all():
        raise ValueError(f"Point labels must be 1 (positive) or 0 (negative); got {plain_list(labels)}.")
    lab = lab_in.astype(np.int64)
    h, w = shape_hw
    bad = (pts[:, 0] < -0.5) | (pts[:, 0] > w - 0.5) | (pts[:, 1] < -0.5) | (pts[:, 1] > h - 0.5)
    if bad.any():
        raise ValueError(f"Point {plain_list(pts[bad][0])} lies outside the slice (width {w}, height {h}).")
    return pts, lab


def box_from_mask(mask_hw: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Tight XYXY box of a binary mask (inclusive pixel indices), grown by ``margin`` pixels.

    A side only one pixel thick gets at least half a pixel each way, so the box always has an area (``check_box``
    refuses zero-area boxes) and still covers just that pixel row or column.

    Raises:
        ValueError: an empty mask.
    """
    rows = np.flatnonzero(mask_hw.any(axis=1))
    if rows.size == 0:
        raise ValueError("The mask is empty: a box needs at least one pixel of the target.")
    cols = np.flatnonzero(mask_hw.any(axis=0))
    h, w = mask_hw.shape
    mx = max(margin, 0.5) if cols[0] == cols[-1] else margin
    my = max(margin, 0.5) if rows[0] == rows[-1] else margin
    box = np.array([cols[0] - mx, rows[0] - my, cols[-1] + mx, rows[-1] + my], dtype=np.float64)
    return np.clip(box, 0, [w - 1, h - 1, w - 1, h - 1])


def jitter_box(
    box_xyxy: np.ndarray, shape_hw: tuple[int, int], rng: np.random.Generator, d_in: float, d_out: float
) -> np.ndarray:
    """The box with each side moved by a random offset in [-d_in, d_out] pixels (outward > 0), clipped to the slice;
    the box itself when that leaves no area. As the SAMMed paper's box jitter: the result lies between an inner
    box (shrunk by ``d_in``) and an outer box (grown by ``d_out``)."""
    off = rng.uniform(-d_in, d_out, size=4)
    x0, y0, x1, y1 = box_xyxy
    h, w = shape_hw
    out = np.clip(np.array([x0 - off[0], y0 - off[1], x1 + off[2], y1 + off[3]]), 0, [w - 1, h - 1, w - 1, h - 1])
    if out[2] <= out[0] or out[3] <= out[1]:
        return np.array(box_xyxy, dtype=np.float64)
    return out
