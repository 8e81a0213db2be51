"""Reading one DICOM series from a folder, refusing what would silently give a wrong volume.

A folder with several series is refused unless ``series`` names one (the message lists them: UID, number of files,
modality, description). Files that look like DICOM but that no series took (GDCM skips truncated and damaged files
without a word) and uneven slice positions (a missing file shifts every slice after it and changes the spacing)
are reported, which file and which gap, and refused unless ``allow_gaps``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .readers import check_voxel_count
from .readers import itk_reason
from .readers import sitk_module

log = logging.getLogger(__name__)

GAPS_HINT = "pass --allow-gaps (allow_gaps=True) to read it anyway"
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
_HEAD = 1 << 16


@contextmanager
def _quiet_itk() -> Iterator[None]:
    """ITK warnings (e.g. 'Non uniform sampling') off: SAMMed reports them itself, in one line."""
    po = sitk_module().ProcessObject
    before = po.GetGlobalWarningDisplay()
    po.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        po.SetGlobalWarningDisplay(before)


def _file_tags(path: str, *tags: str) -> list[str]:
    """DICOM tag values of one file (empty strings for missing tags or an unreadable file)."""
    reader = sitk_module().ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return ["" for _ in tags]
    return [reader.GetMetaData(t).strip() if reader.HasMetaDataKey(t) else "" for t in tags]


def _series_list(folder: Path, files: dict[str, list[str]]) -> str:
    """'UID (N files, description), ...' for a message."""
    items = []
    for uid, names in files.items():
        desc, modality = _file_tags(names[0], "0008|103e", "0008|0060")
        extra = ", ".join(x for x in (modality, f"'{desc}'" if desc else "") if x)
        items.append(f"{uid} ({len(names)} files{', ' + extra if extra else ''})")
    return "; ".join(items)


def _choose_series(folder: Path, files: dict[str, list[str]], series: str | None) -> str:
    """The series UID to read.

    Raises:
        ValueError: several series and none chosen, or an unknown UID.
    """
    if series is not None and series.strip() in files:
        return series.strip()
    if series is not None:
        raise ValueError(
            f"Folder '{folder}' has no DICOM series '{series}'; its series are: {_series_list(folder, files)}. "
            "Give one of these UIDs to --series (series=)."
        )
    if len(files) > 1:
        raise ValueError(
            f"Folder '{folder}' holds {len(files)} DICOM series: {_series_list(folder, files)}. Choose one with "
            "--series UID (series= in Python)."
        )
    return next(iter(files))


def _unreadable_files(folder: Path, files: dict[str, list[str]], uid: str) -> list[str]:
    """Names of DICOM-looking files in ``folder`` that no series took (GDCM skips truncated and damaged files) and
    that may belong to series ``uid`` (they hold its UID, or no UID of another series)."""
    taken = {os.path.realpath(f) for names in files.values() for f in names}
    others = [u.encode() for u in files if u != uid]
    bad = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_file() or entry.name.startswith(".") or entry.name.upper() == "DICOMDIR":
            continue
        if os.path.realpath(entry.path) in taken:
            continue
        with open(entry.path, "rb") as f:
            data = f.read(_HEAD)  # the UIDs are in the header, before the pixel data
        looks_dicom = data[128:132] == b"DICM" or entry.name.lower().endswith(_DICOM_SUFFIXES)
        if looks_dicom and (uid.encode() in data or not any(o in data for o in others)):
            bad.append(entry.name)
    return bad


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def slice_gaps(files: list[str], positions: list[str], orientation: str) -> str | None:
    """A description of uneven slice positions (DICOM 0020|0032 along the slice normal), or None when they are
    even within 10 % (or 0.01 mm) of the median step, or when positions are missing (nothing to check)."""
    try:
        pos = np.array([[float(v) for v in p.split("\\")] for p in positions], dtype=np.float64).reshape(-1, 3)
        iop = np.array([float(v) for v in orientation.split("\\")], dtype=np.float64).reshape(2, 3)
    except ValueError:
        return None
    normal = np.cross(iop[0], iop[1])
    if len(pos) < 3 or not np.isfinite(pos).all() or np.linalg.norm(normal) < 1e-6:
        return None
    steps = np.abs(np.diff(pos @ (normal / np.linalg.norm(normal))))
    typical = float(np.median(steps))
    bad = np.flatnonzero(np.abs(steps - typical) > max(0.1 * typical, 0.01))
    if bad.size == 0:
        return None
    i = int(bad[np.argmax(np.abs(steps[bad] - typical))])
    a, b = Path(files[i]).name, Path(files[i + 1]).name
    more = f" (and at {bad.size - 1} more places)" if bad.size > 1 else ""
    rest = f"{more} where the rest are {_mm(typical)} mm apart"
    if steps[i] < 1e-3:
        return f"files {a} and {b} are at the same slice position{rest}"
    return f"slice positions jump by {_mm(steps[i])} mm between files {a} and {b}{rest}"


def _mm(value: float) -> str:
    """A distance in mm with at least one and at most three decimals: 6.0, 0.625, 3.15."""
    text = f"{value:.3f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def read_dicom_series(folder: Path, series: str | None, allow_gaps: bool, max_voxels: int | None) -> Any:
    """Read one DICOM series of ``folder`` as a SimpleITK image.

    With ``allow_gaps`` a series with unreadable files or uneven slice positions is read anyway (ITK stacks the
    files it can read with their average spacing) and a warning is logged.

    Raises:
        ValueError: no series, several series and no ``series`` (the message lists them), an unknown ``series``,
            unreadable files or uneven slice positions without ``allow_gaps``, too many voxels, a read failure.
    """
    sitk = sitk_module()
    reader = sitk.ImageSeriesReader()
    ids = [str(u) for u in reader.GetGDCMSeriesIDs(str(folder))]
    if not ids:
        bad = _unreadable_files(folder, {}, "")
        why = f" ({len(bad)} DICOM file(s) cannot be read: {_names(bad)})" if bad else ""
        raise ValueError(f"Folder '{folder}' holds no DICOM series{why}; give a DICOM folder or an image file.")
    files = {u: [str(f) for f in reader.GetGDCMSeriesFileNames(str(folder), u)] for u in ids}
    uid = _choose_series(folder, files, series)
    names = files[uid]
    problems = []
    bad = _unreadable_files(folder, files, uid)
    if bad:
        problems.append(f"{len(bad)} file(s) cannot be read (truncated or damaged): {_names(bad)}")
    _check_dicom_voxels(folder, names, max_voxels)
    reader.SetFileNames(names)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        with _quiet_itk():
            image = reader.Execute()
    except RuntimeError as exc:
        raise ValueError(f"Cannot read the DICOM series {uid} in '{folder}' (ITK: {itk_reason(exc)}).") from None
    tags = [
        [reader.GetMetaData(i, t) if reader.HasMetaDataKey(i, t) else "" for i in range(len(names))]
        for t in ("0020|0032", "0020|0037")
    ]
    gaps = slice_gaps(names, tags[0], tags[1][0] if tags[1] else "")
    if gaps:
        problems.append(gaps)
    if problems and not allow_gaps:
        raise ValueError(f"DICOM series {uid} in '{folder}': {'; '.join(problems)}; fix the series, or {GAPS_HINT}.")
    for problem in problems:
        log.warning("DICOM series %s in '%s': %s; read anyway (allow_gaps).", uid, folder, problem)
    return image


def _check_dicom_voxels(folder: Path, names: list[str], max_voxels: int | None) -> None:
    """Refuse a series over the voxel limit, from its first file's header and the number of files.

    Raises:
        ValueError: too many voxels.
    """
    reader = sitk_module().ImageFileReader()
    reader.SetFileName(names[0])
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return  # the series reader reports it
    voxels = int(np.prod(reader.GetSize(), dtype=np.float64)) * len(names)
    check_voxel_count(f"DICOM folder '{folder}' holds", voxels, max_voxels)
