"""Reading volumes and writing label maps on the same grid.

Arrays are in KJI order (slice, row, column), the order of Slicer's ``arrayFromVolume``. Geometry is kept in
SimpleITK's LPS convention: ``spacing_ijk`` (mm), ``origin_lps`` (mm) and ``direction_lps`` (3x3, column c is the
LPS direction of IJK axis c).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import numpy as np

LABELMAP_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".seg.nrrd", ".mha", ".mhd")


@dataclass
class Volume:
    """A 3-D image with its geometry.

    Attributes:
        array_kji: KxJxI voxel array (any numeric dtype), K = slice index along the third IJK axis.
        spacing_ijk: voxel size in mm along I, J, K.
        origin_lps: position of voxel (0, 0, 0) in LPS mm.
        direction_lps: 3x3 matrix; column c is the unit LPS direction of IJK axis c.
        name: a display name (file name or node name).
    """

    array_kji: np.ndarray
    spacing_ijk: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin_lps: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction_lps: np.ndarray = field(default_factory=lambda: np.eye(3))
    name: str = ""
    _digest: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.array_kji.ndim != 3:
            raise ValueError(
                f"Volume '{self.name or 'image'}' has {self.array_kji.ndim} dimensions, shape {self.array_kji.shape}; "
                "SAMMed needs a 3-D scalar volume (for a 4-D series pick one time point or channel first)."
            )
        self.direction_lps = np.asarray(self.direction_lps, dtype=float).reshape(3, 3)
        self.spacing_ijk = _triple(self.spacing_ijk, "spacing")
        self.origin_lps = _triple(self.origin_lps, "origin")

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
        x, y, z = (float(v) for v in np.ravel(values))
    except (TypeError, ValueError):
        raise ValueError(f"A volume's {what} needs three numbers (I, J, K); got {values!r}.") from None
    return x, y, z


def volume_digest(array_kji: np.ndarray, spacing_ijk: tuple[float, ...] = (1.0, 1.0, 1.0)) -> str:
    """Stable content hash of a voxel array (bytes, shape, dtype) and its spacing."""
    h = hashlib.blake2b(digest_size=12)
    h.update(str(array_kji.shape).encode())
    h.update(str(array_kji.dtype.str).encode())
    h.update(np.asarray(spacing_ijk, dtype=np.float64).round(6).tobytes())
    h.update(np.ascontiguousarray(array_kji).tobytes())
    return h.hexdigest()


def _sitk() -> Any:
    import SimpleITK as sitk

    return sitk


def read_volume(path: str | os.PathLike) -> Volume:
    """Read a NIfTI, NRRD, MHA/MHD file or a DICOM series folder.

    Raises:
        ValueError: the path does not exist, cannot be read as an image, or is not a 3-D scalar volume.
    """
    sitk = _sitk()
    p = Path(path)
    if not p.exists():
        raise ValueError(f"Image '{p}' does not exist; check the path.")
    try:
        if p.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(p))
            if not series:
                raise ValueError(f"Folder '{p}' holds no DICOM series; give a DICOM folder or an image file.")
            files = reader.GetGDCMSeriesFileNames(str(p), series[0])
            reader.SetFileNames(files)
            image = reader.Execute()
        else:
            image = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unknown error"
        raise ValueError(f"Cannot read image '{p}': {first}. Use NIfTI, NRRD, MHA or a DICOM folder.") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"Image '{p}' has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
            "SAMMed needs a scalar (grey-value) volume."
        )
    if image.GetDimension() != 3:
        raise ValueError(
            f"Image '{p}' is {image.GetDimension()}-D (size {image.GetSize()}); SAMMed needs a 3-D volume."
        )
    array = sitk.GetArrayFromImage(image)  # KJI
    return Volume(
        array_kji=array,
        spacing_ijk=image.GetSpacing(),
        origin_lps=image.GetOrigin(),
        direction_lps=np.array(image.GetDirection()).reshape(3, 3),
        name=p.name,
    )


def to_sitk(volume: Volume, array_kji: np.ndarray | None = None) -> Any:
    """A SimpleITK image with ``volume``'s geometry and ``array_kji`` (default: its own voxels)."""
    sitk = _sitk()
    arr = volume.array_kji if array_kji is None else array_kji
    if arr.shape != volume.array_kji.shape:
        raise ValueError(f"Array shape {arr.shape} does not match the volume grid {volume.array_kji.shape}.")
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing(volume.spacing_ijk)
    image.SetOrigin(volume.origin_lps)
    image.SetDirection(tuple(float(v) for v in np.asarray(volume.direction_lps).ravel()))
    return image


def _atomic_target(path: Path) -> Path:
    """A temporary file in the destination folder (same suffix, so writers pick the right format)."""
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=".sammed-", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def write_labelmap(
    path: str | os.PathLike,
    labels_kji: np.ndarray,
    reference: Volume,
    segment_names: dict[int, str] | None = None,
) -> Path:
    """Write a label map on ``reference``'s grid, atomically (temporary file, then rename).

    Args:
        path: ``.nii``, ``.nii.gz``, ``.nrrd``, ``.mha`` or ``.seg.nrrd`` (Slicer segmentation, one segment per label).
        labels_kji: KxJxI integer array on the reference grid (0 = background).
        reference: the volume whose grid the labels are on.
        segment_names: label value -> segment name, used for ``.seg.nrrd``.

    Raises:
        ValueError: wrong shape or unsupported suffix. The target file is left as it was.
    """
    p = Path(path)
    if not any(p.name.endswith(s) for s in LABELMAP_SUFFIXES):
        raise ValueError(f"Cannot write '{p.name}': use one of {', '.join(LABELMAP_SUFFIXES)}.")
    if labels_kji.shape != reference.array_kji.shape:
        raise ValueError(
            f"Label map shape {labels_kji.shape} does not match the image grid {reference.array_kji.shape}."
        )
    if not p.parent.exists():
        raise ValueError(f"Output folder '{p.parent}' does not exist; create it first.")
    labels = np.asarray(labels_kji)
    labels = labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)
    tmp = _atomic_target(p)
    try:
        if p.name.endswith(".seg.nrrd"):
            _write_seg_nrrd(tmp, labels, reference, segment_names or {})
        else:
            sitk = _sitk()
            sitk.WriteImage(to_sitk(reference, labels), str(tmp), useCompression=True)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p


def _write_seg_nrrd(path: Path, labels_kji: np.ndarray, reference: Volume, names: dict[int, str]) -> None:
    """Write a Slicer ``.seg.nrrd``: one shared label layer, a segment per label value."""
    sitk = _sitk()
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
