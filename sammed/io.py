"""Reading volumes and writing label maps on the same grid.

Arrays are in KJI order (slice, row, column), the order of Slicer's ``arrayFromVolume``. Geometry is kept in
SimpleITK's LPS convention: ``spacing_ijk`` (mm), ``origin_lps`` (mm) and ``direction_lps`` (3x3, column c is the
LPS direction of IJK axis c).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

import numpy as np

from .geometry import plain_list
from .readers import sitk_module

if TYPE_CHECKING:
    from .outputs import Outputs

# .mhd is not offered: its header names a separate data file, which a temporary name would break
LABELMAP_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".seg.nrrd", ".mha")


@dataclass
class Volume:
    """A 3-D image with its geometry. A Volume's voxels are immutable: make a new Volume for new voxels.

    ``array_kji`` is kept as a read-only view of the array given (not a copy; the caller's own array stays
    writable). The embedding cache keys slices by a content hash computed once (``digest``), so voxels changed
    after a first ``segment`` would be served stale embeddings: do not write into the array you passed in while the
    Volume is in use (pass a copy if you will), and do not reassign the attributes afterwards.

    Attributes:
        array_kji: KxJxI numeric voxel array (bool, integer or float), K = slice index along the third IJK axis.
        spacing_ijk: voxel size in mm along I, J, K: three finite numbers above 0.
        origin_lps: position of voxel (0, 0, 0) in LPS mm: three finite numbers.
        direction_lps: 3x3 finite, non-singular matrix; column c is the unit LPS direction of IJK axis c.
        name: a display name (file name or node name).

    Raises:
        ValueError: an array that is not 3-D, numeric and non-empty, or geometry that breaks the rules above.
    """

    array_kji: np.ndarray
    spacing_ijk: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin_lps: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction_lps: np.ndarray = field(default_factory=lambda: np.eye(3))
    name: str = ""
    _digest: str | None = field(default=None, repr=False, compare=False)
    _non_finite: int | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        array = np.asarray(self.array_kji)
        view = array.view()
        view.flags.writeable = False
        self.array_kji = view
        self._digest = None
        self._non_finite = None
        self.check()
        self.spacing_ijk, self.origin_lps, self.direction_lps = _geometry(
            self.spacing_ijk, self.origin_lps, self.direction_lps, self.label
        )

    @property
    def label(self) -> str:
        """``Volume 'name'`` for messages."""
        return f"Volume '{self.name or 'image'}'"

    def check(self) -> None:
        """Validate the voxel array and geometry again (``Segmenter`` does, in case attributes were reassigned).

        Raises:
            ValueError: see the class.
        """
        array = self.array_kji
        if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
            kind = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
            raise ValueError(f"{self.label} needs a numeric voxel array (integer or float); got {kind}.")
        if array.ndim != 3:
            raise ValueError(
                f"{self.label} has {array.ndim} dimensions, shape {array.shape}; "
                "SAMMed needs a 3-D scalar volume (for a 4-D series pick one time point or channel first)."
            )
        if array.size == 0:
            raise ValueError(f"{self.label} has no voxels (shape {array.shape}).")
        _geometry(self.spacing_ijk, self.origin_lps, self.direction_lps, self.label)

    @property
    def shape_kji(self) -> tuple[int, int, int]:
        """(K, J, I) of the voxel array."""
        k, j, i = (int(s) for s in self.array_kji.shape)
        return k, j, i

    @property
    def digest(self) -> str:
        """Content hash of voxels, shape, dtype and spacing (hex, 24 chars); computed once."""
        if self._digest is None:
            self._digest = volume_digest(self.array_kji, self.spacing_ijk)
        return self._digest

    @property
    def non_finite(self) -> int:
        """Number of NaN or infinite voxels (0 for integer arrays); counted once."""
        if self._non_finite is None:
            self._non_finite = non_finite_voxels(self.array_kji)
        return self._non_finite

    def same_grid(self, other: Volume, tol: float = 1e-4) -> bool:
        """True when ``other`` has the same shape, spacing, origin and direction."""
        return (
            self.shape_kji == other.shape_kji
            and np.allclose(self.spacing_ijk, other.spacing_ijk, atol=tol)
            and np.allclose(self.origin_lps, other.origin_lps, atol=tol * 10)
            and np.allclose(self.direction_lps, other.direction_lps, atol=tol)
        )


def _triple(values: tuple[float, ...] | np.ndarray, what: str) -> tuple[float, float, float]:
    """Three floats.

    Raises:
        ValueError: not three numbers.
    """
    try:
        x, y, z = (float(v) for v in np.ravel(np.asarray(values, dtype=object)))
    except (TypeError, ValueError):
        raise ValueError(f"A volume's {what} needs three numbers (I, J, K); got {plain_list(values)}.") from None
    return x, y, z


def _geometry(
    spacing: Any, origin: Any, direction: Any, label: str
) -> tuple[tuple[float, float, float], tuple[float, float, float], np.ndarray]:
    """Spacing, origin and direction checked and converted.

    Raises:
        ValueError: spacing not three finite numbers > 0, origin not three finite numbers, direction not a finite,
            non-singular 3x3 matrix.
    """
    sp = _triple(spacing, "spacing")
    if not all(np.isfinite(v) and v > 0 for v in sp):
        raise ValueError(f"{label} has spacing {plain_list(sp)} mm; each voxel size must be a finite number above 0.")
    org = _triple(origin, "origin")
    if not np.isfinite(org).all():
        raise ValueError(f"{label} has origin {plain_list(org)}; it must be three finite numbers (mm).")
    try:
        d = np.asarray(direction, dtype=float).reshape(3, 3)
    except (TypeError, ValueError):
        raise ValueError(f"{label} needs a 3x3 direction matrix; got {plain_list(direction)}.") from None
    if not np.isfinite(d).all() or abs(np.linalg.det(d)) < 1e-6:
        raise ValueError(
            f"{label} has direction matrix {plain_list(d)}; it must be finite and non-singular (axes not parallel)."
        )
    return sp, org, d


def non_finite_voxels(array: np.ndarray) -> int:
    """Number of NaN or infinite values (0 without counting for integer and bool arrays)."""
    if array.dtype.kind not in "fc":
        return 0
    finite = np.isfinite(array)
    return 0 if finite.all() else int(array.size - np.count_nonzero(finite))


def volume_digest(array_kji: np.ndarray, spacing_ijk: tuple[float, ...] = (1.0, 1.0, 1.0)) -> str:
    """Stable content hash of a voxel array (bytes, shape, dtype) and its spacing."""
    h = hashlib.blake2b(digest_size=12)
    h.update(str(array_kji.shape).encode())
    h.update(str(array_kji.dtype.str).encode())
    h.update(np.asarray(spacing_ijk, dtype=np.float64).round(6).tobytes())
    h.update(np.ascontiguousarray(array_kji).tobytes())
    return h.hexdigest()


def read_volume(
    path: str | os.PathLike,
    series: str | None = None,
    allow_gaps: bool = False,
    max_voxels: int | None = None,
) -> Volume:
    """Read a NIfTI, NRRD, MHA/MHD file or a DICOM series folder; the file is only read, never changed.

    Before any voxel is read the header is checked (``readers.check_header``): a truncated file (voxel data shorter
    than declared, a gzip stream cut short) and an image over the voxel limit are refused without allocating it.
    NaN or infinite voxels are refused too, also those ITK's NIfTI reader would silently turn into 0.

    Args:
        path: an image file or a DICOM folder.
        series: the SeriesInstanceUID to read from a DICOM folder that holds several series.
        allow_gaps: read a DICOM series with unreadable files or uneven slice positions anyway (a warning is
            logged; ITK stacks the remaining files with their average spacing).
        max_voxels: the voxel limit (default: the environment variable ``SAMMED_MAX_VOXELS``, else 1e9).

    Raises:
        ValueError: one line naming the file: it does not exist, cannot be read, is truncated, is not a 3-D scalar
            volume, is over the voxel limit, has NaN or infinite voxels or invalid geometry; for a DICOM folder
            also several series and no ``series``, an unknown ``series``, unreadable files or uneven slice
            positions (without ``allow_gaps``).
    """
    from . import readers

    p = Path(path)
    image, header = _read_image(p, series, allow_gaps, max_voxels)
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() != 3:
        raise ValueError(
            f"Image '{p}' has {image.GetNumberOfComponentsPerPixel()} components per voxel and size "
            f"{image.GetSize()}; SAMMed needs a 3-D scalar (grey-value) volume."
        )
    array = sitk_module().GetArrayFromImage(image)  # KJI
    bad = non_finite_voxels(array) or (readers.stored_non_finite(p, header) if header else 0)
    if bad:
        raise ValueError(readers.non_finite_message(f"Image '{p}'", bad, array.size))
    try:
        volume = Volume(
            array_kji=array,
            spacing_ijk=image.GetSpacing(),
            origin_lps=image.GetOrigin(),
            direction_lps=np.array(image.GetDirection()).reshape(3, 3),
            name=p.name,
        )
    except ValueError as exc:
        raise ValueError(f"Image '{p}': {exc}") from None
    volume._non_finite = 0  # counted above
    return volume


def _read_image(p: Path, series: str | None, allow_gaps: bool, max_voxels: int | None) -> tuple[Any, Any]:
    """(SimpleITK image, the file's ``readers.Header`` or None for a DICOM folder); see ``read_volume``.

    Raises:
        ValueError: see ``read_volume``.
    """
    from . import dicom
    from . import readers

    if not p.exists():
        raise ValueError(f"Image '{p}' does not exist; check the path.")
    if p.is_dir():
        return dicom.read_dicom_series(p, series, allow_gaps, max_voxels), None
    header = readers.read_header(p)
    readers.check_header(p, header, max_voxels)
    try:
        return sitk_module().ReadImage(str(p)), header
    except RuntimeError as exc:
        raise readers.cannot_read(p, exc) from None


def to_sitk(volume: Volume, array_kji: np.ndarray | None = None) -> Any:
    """A SimpleITK image with ``volume``'s geometry and ``array_kji`` (default: its own voxels)."""
    sitk = sitk_module()
    arr = volume.array_kji if array_kji is None else array_kji
    if arr.shape != volume.array_kji.shape:
        raise ValueError(f"Array shape {arr.shape} does not match the volume grid {volume.array_kji.shape}.")
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing(volume.spacing_ijk)
    image.SetOrigin(volume.origin_lps)
    image.SetDirection(tuple(float(v) for v in np.asarray(volume.direction_lps).ravel()))
    return image


def labelmap_output(outputs: Outputs, path: str | os.PathLike, what: str = "label map") -> Path:
    """Check ``path`` as a label-map output of ``outputs`` (see ``outputs.Outputs.add``).

    Raises:
        ValueError: an unsupported suffix (``.mhd`` with the reason), a folder, a missing or unwritable folder, an
            input of the command.
    """
    if str(path).lower().endswith(".mhd"):
        raise ValueError(
            f"Cannot write {what} '{path}': .mhd keeps its voxels in a second file; use .mha (the same format in one "
            "file) or .nii.gz."
        )
    return outputs.add(path, LABELMAP_SUFFIXES, what)


def _check_on_grid(labels_kji: np.ndarray, reference: Volume) -> None:
    if labels_kji.shape != reference.array_kji.shape:
        raise ValueError(
            f"Label map shape {labels_kji.shape} does not match the image grid {reference.array_kji.shape}."
        )


def save_labelmap(
    file: str | os.PathLike,
    labels_kji: np.ndarray,
    reference: Volume,
    segment_names: dict[int, str] | None = None,
) -> None:
    """Write a label map to ``file`` as it is named (no temporary file: for ``Outputs.commit``'s temporary files).

    Raises:
        ValueError: a shape other than the reference grid's.
    """
    _check_on_grid(labels_kji, reference)
    labels = np.asarray(labels_kji)
    labels = labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)
    if str(file).lower().endswith(".seg.nrrd"):
        _write_seg_nrrd(Path(file), labels, reference, segment_names or {})
    else:
        sitk_module().WriteImage(to_sitk(reference, labels), str(file), useCompression=True)


def write_labelmap(
    path: str | os.PathLike,
    labels_kji: np.ndarray,
    reference: Volume,
    segment_names: dict[int, str] | None = None,
) -> Path:
    """Write a label map on ``reference``'s grid, atomically (``outputs.Outputs``: temporary file, then rename; the
    mode of a replaced file is kept).

    Args:
        path: ``.nii``, ``.nii.gz``, ``.nrrd``, ``.mha`` or ``.seg.nrrd`` (Slicer segmentation, one segment per label).
        labels_kji: KxJxI integer array on the reference grid (0 = background).
        reference: the volume whose grid the labels are on.
        segment_names: label value -> segment name, used for ``.seg.nrrd``.

    Raises:
        ValueError: wrong shape, unsupported suffix, a folder that is missing or not writable. The target file is
            left as it was.
    """
    from .outputs import Outputs

    _check_on_grid(labels_kji, reference)
    outputs = Outputs([])
    p = labelmap_output(outputs, path)
    with outputs.commit() as temps:
        save_labelmap(temps[p], labels_kji, reference, segment_names)
    return p


def _write_seg_nrrd(path: Path, labels_kji: np.ndarray, reference: Volume, names: dict[int, str]) -> None:
    """Write a Slicer ``.seg.nrrd``: one shared label layer, a segment per label value."""
    sitk = sitk_module()
    image = to_sitk(reference, labels_kji)
    values = [int(v) for v in np.unique(labels_kji) if v != 0]
    palette = [(0.5, 0.68, 0.5), (0.94, 0.84, 0.57), (0.69, 0.48, 0.39), (0.44, 0.72, 0.82), (0.85, 0.40, 0.40)]
    k, j, i = labels_kji.shape
    image.SetMetaData("Segmentation_MasterRepresentation", "Binary labelmap")
    image.SetMetaData("Segmentation_ContainedRepresentationNames", "Binary labelmap|")
    image.SetMetaData("Segmentation_ReferenceImageExtentOffset", "0 0 0")
    for n, value in enumerate(values):
        name = names.get(value, f"Segment_{value}")
        color = palette[n % len(palette)]
        pre = f"Segment{n}_"
        image.SetMetaData(pre + "ID", f"Segment_{value}")
        image.SetMetaData(pre + "Name", name)
        image.SetMetaData(pre + "NameAutoGenerated", "0")
        image.SetMetaData(pre + "Color", " ".join(f"{c:.4f}" for c in color))
        image.SetMetaData(pre + "ColorAutoGenerated", "0")
        image.SetMetaData(pre + "LabelValue", str(value))
        image.SetMetaData(pre + "Layer", "0")
        image.SetMetaData(pre + "Extent", f"0 {i - 1} 0 {j - 1} 0 {k - 1}")
        image.SetMetaData(pre + "Tags", "|")
    sitk.WriteImage(image, str(path), useCompression=True)
