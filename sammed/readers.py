"""Checks that run before (and right after) an image's voxels are read, so a damaged file is refused, not guessed.

``io.read_volume`` calls these. A file's header is read first (``read_header``: size and pixel type, no voxels);
``check_header`` then refuses images that are not 3-D scalar volumes, files whose voxel data is shorter than the
header declares (``data_shortfall``: raw data by its byte count, gzip'd data by its gzip trailer or by decompressing
it) and images with more voxels than ``max_voxels_limit`` allows, all before any voxel memory is allocated. DICOM
folders are read by ``dicom.read_dicom_series``.

Every error is a ``ValueError`` with one line that names the file and says what to do.
"""

from __future__ import annotations

import gzip
import os
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MAX_VOXELS = 1_000_000_000
MAX_VOXELS_ENV = "SAMMED_MAX_VOXELS"
FORMATS = "Use NIfTI, NRRD, MHA or a DICOM folder."
_CHUNK = 1 << 20
_HEAD = 1 << 16  # NRRD / MetaImage headers are text well under this
_SCALAR_BYTES = {
    "sitkUInt8": 1,
    "sitkInt8": 1,
    "sitkUInt16": 2,
    "sitkInt16": 2,
    "sitkUInt32": 4,
    "sitkInt32": 4,
    "sitkUInt64": 8,
    "sitkInt64": 8,
    "sitkFloat32": 4,
    "sitkFloat64": 8,
    "sitkComplexFloat32": 8,
    "sitkComplexFloat64": 16,
}


def sitk_module() -> Any:
    """SimpleITK, imported on first use (``import sammed`` stays light)."""
    import SimpleITK as sitk

    return sitk


@dataclass(frozen=True)
class Header:
    """What an image file's header declares (no voxels read).

    Attributes:
        size: voxels per axis in ITK order (I, J, K, ...).
        components: values per voxel.
        component_bytes: bytes of one value as ITK reads it, or None for a pixel type not in the table.
        io: the ITK reader, e.g. ``NiftiImageIO``.
    """

    size: tuple[int, ...]
    components: int
    component_bytes: int | None
    io: str

    @property
    def voxels(self) -> int:
        return int(np.prod(self.size, dtype=np.float64)) if self.size else 0


def max_voxels_limit(max_voxels: int | None = None) -> int:
    """The voxel limit: ``max_voxels``, else the environment variable ``SAMMED_MAX_VOXELS``, else 1e9.

    Raises:
        ValueError: a limit that is not a positive whole number.
    """
    raw: object = max_voxels if max_voxels is not None else os.environ.get(MAX_VOXELS_ENV) or DEFAULT_MAX_VOXELS
    try:
        value = int(str(raw).replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        source = "max_voxels" if max_voxels is not None else MAX_VOXELS_ENV
        raise ValueError(f"{source} must be a positive whole number of voxels; got '{raw}'.")
    return value


def itk_reason(exc: BaseException) -> str:
    """ITK's exception text without source paths, object addresses and the 'Exception thrown in' preamble."""
    parts = []
    for line in str(exc).splitlines():
        line = re.sub(r"\S+\.(?:cxx|hxx|cpp|txx|h):\d+:?", "", line)
        line = re.sub(r"^\s*(?:Exception thrown in SimpleITK \S+|sitk::ERROR:|itk::ERROR:|ITK ERROR:)", "", line)
        line = re.sub(r"\w+\(0x[0-9a-fA-F]+\):", "", line).strip(" :")
        if line:
            parts.append(line)
    text = "; ".join(parts) or "unknown error"
    return text if len(text) <= 240 else text[:237] + "..."


def cannot_read(path: Path, exc: BaseException) -> ValueError:
    """The error for a file ITK fails on: truncated, of an unknown format or damaged, with ITK's reason."""
    io = sitk_module().ImageFileReader.GetImageIOFromFileName(str(path))
    cut = truncated_header(path, check_gzip=True)
    if cut:
        what = f"the file is truncated ({cut}); copy or export it again"
    elif not io:
        what = "not an image file SimpleITK recognises"
    else:
        what = f"the file is damaged or a variant SimpleITK cannot read ({io.replace('ImageIO', '')} reader)"
    return ValueError(f"Cannot read image '{path}': {what} (ITK: {itk_reason(exc)}). {FORMATS}")


def truncated_header(path: Path, check_gzip: bool = False) -> str | None:
    """How a NIfTI, NRRD or MetaImage header (or, with ``check_gzip``, a gzip stream) is cut short, or None."""
    with open(path, "rb") as f:
        head = f.read(_HEAD)
    if head[:2] == b"\x1f\x8b":
        count, complete = _decompressed_size(path, 0, "gzip") if check_gzip else (0, True)
        return None if complete else f"its gzip stream stops after {count:,} bytes"
    size = int.from_bytes(head[:4], "little") if len(head) >= 4 else 0
    if {size, int.from_bytes(head[:4], "big")} & {348, 540} and len(head) < max(size, 348):
        return f"its NIfTI header stops after {len(head)} bytes"
    if head.startswith(b"NRRD") and not re.search(rb"\r?\n\r?\n|^data ?file:", head, re.M | re.I):
        return "its NRRD header stops before the blank line that ends it"
    if re.match(rb"\s*(?:ObjectType|NDims)\s*=", head) and not re.search(rb"^ElementDataFile", head, re.M):
        return "its MetaImage header stops before the ElementDataFile line"
    return None


def read_header(path: Path) -> Header:
    """Size and pixel type of an image file, from its header only.

    Raises:
        ValueError: not an image file ITK can read, or a text header that is cut short.
    """
    cut = truncated_header(path)  # before ITK: its MetaImage reader prints to stderr on these
    if cut:
        raise ValueError(f"Image '{path}' is truncated or damaged: {cut}; copy or export the file again.")
    sitk = sitk_module()
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise cannot_read(path, exc) from None
    names = {getattr(sitk, name, None): n for name, n in _SCALAR_BYTES.items()}
    io = str(sitk.ImageFileReader.GetImageIOFromFileName(str(path)))
    size = tuple(int(s) for s in reader.GetSize())
    return Header(size, int(reader.GetNumberOfComponents()), names.get(reader.GetPixelID()), io)


def check_header(path: Path, header: Header, max_voxels: int | None = None) -> None:
    """Refuse, before the voxels are read, what SAMMed cannot use or what is not all there.

    Raises:
        ValueError: more than one component per voxel, not 3-D, voxel data shorter than declared, too many voxels.
    """
    if header.components != 1:
        raise ValueError(
            f"Image '{path}' has {header.components} components per voxel; SAMMed needs a scalar (grey-value) volume."
        )
    if len(header.size) != 3:
        raise ValueError(f"Image '{path}' is {len(header.size)}-D (size {header.size}); SAMMed needs a 3-D volume.")
    short = data_shortfall(path, header)
    if short:
        raise ValueError(f"Image '{path}' is truncated or damaged: {short}; copy or export the file again.")
    dims = "x".join(str(s) for s in header.size)
    check_voxel_count(f"Image '{path}' declares {dims} =", header.voxels, max_voxels)


def check_voxel_count(what: str, voxels: int, max_voxels: int | None = None) -> None:
    """Refuse ``voxels`` over the limit (``max_voxels_limit``); ``what`` starts the message.

    Raises:
        ValueError: too many voxels.
    """
    limit = max_voxels_limit(max_voxels)
    if voxels > limit:
        raise ValueError(
            f"{what} {voxels:,} voxels, more than the limit of {limit:,}; crop or downsample it, or raise the limit "
            f"({MAX_VOXELS_ENV} or max_voxels=) if the machine has the memory."
        )


@dataclass(frozen=True)
class _Layout:
    """Where an image's voxel data lies: file, first byte, encoding (raw, gzip, zlib) and expected byte count."""

    file: Path
    offset: int
    encoding: str
    expected: int


def data_shortfall(path: Path, header: Header) -> str | None:
    """What is missing from the voxel data of a NIfTI, NRRD or MetaImage file (None: all there or not checked)."""
    layouts = {"NiftiImageIO": _nifti_layout, "NrrdImageIO": _nrrd_layout, "MetaImageIO": _meta_layout}
    find = layouts.get(header.io)
    layout = find(path, header) if find else None
    if layout is None:
        return None
    if not layout.file.is_file():
        return f"its data file '{layout.file}' does not exist"
    if layout.encoding == "raw":
        present = layout.file.stat().st_size - layout.offset
        if present < layout.expected:
            return f"the header declares {layout.expected:,} bytes of voxel data but the file holds {max(present, 0):,}"
        return None
    return _compressed_shortfall(layout)


def _compressed_shortfall(layout: _Layout) -> str | None:
    """Decompress-count a gzip or zlib stream; the gzip trailer answers first when it matches."""
    if layout.encoding == "gzip" and layout.file.stat().st_size - layout.offset >= 18:
        with open(layout.file, "rb") as f:
            f.seek(-4, os.SEEK_END)
            if int.from_bytes(f.read(4), "little") == layout.expected % (1 << 32):
                return None
    count, complete = _decompressed_size(layout.file, layout.offset, layout.encoding)
    if not complete:
        return (
            f"its {layout.encoding} stream stops after {count:,} of the {layout.expected:,} bytes the header declares"
        )
    if count < layout.expected:
        return f"the header declares {layout.expected:,} bytes of voxel data but the file holds {count:,}"
    return None


def _decompressed_size(path: Path, offset: int, encoding: str) -> tuple[int, bool]:
    """(bytes the stream decompresses to, whether it ended properly); counted in bounded blocks. A gzip file may
    hold several members; bytes after the last one that are not a gzip member are ignored."""
    count = 0
    z = zlib.decompressobj(47)  # zlib or gzip header
    with open(path, "rb") as f:
        f.seek(offset)
        try:
            while data := f.read(_CHUNK):
                while data:
                    count += len(z.decompress(data, _CHUNK))
                    data = z.unconsumed_tail
                    if not data and z.eof and encoding == "gzip" and z.unused_data[:2] == b"\x1f\x8b":
                        data, z = z.unused_data, zlib.decompressobj(47)
        except zlib.error:
            return count, False
    return count, z.eof


def _head(path: Path, n: int) -> bytes:
    """The first ``n`` bytes of a file, decompressed if it is gzip'd (fewer if the file is shorter)."""
    with open(path, "rb") as f:
        magic = f.read(2)
        f.seek(0)
        if magic != b"\x1f\x8b":
            return f.read(n)
        try:
            with gzip.GzipFile(fileobj=f) as g:
                return g.read(n)
        except (EOFError, OSError, zlib.error):
            return b""


@dataclass(frozen=True)
class _Nifti:
    """What a single-file NIfTI-1/-2 header says about the voxel data."""

    voxels: int
    bitpix: int
    datatype: int
    offset: int
    endian: str
    gzip: bool


def _nifti(path: Path) -> _Nifti | None:
    """The header of a single-file NIfTI (gzip'd or not); None for a .hdr/.img pair or anything unusual."""
    head = _head(path, 544)
    if len(head) < 348:
        return None
    endian = "<" if struct.unpack("<i", head[:4])[0] in (348, 540) else ">"
    if struct.unpack(endian + "i", head[:4])[0] == 348 and head[344:348] == b"n+1\x00":
        dim = struct.unpack(endian + "8h", head[40:56])
        datatype, bitpix = struct.unpack(endian + "2h", head[70:74])
        offset = max(int(struct.unpack(endian + "f", head[108:112])[0]), 352)
    elif len(head) >= 540 and head[4:8] == b"n+2\x00":
        dim = struct.unpack(endian + "8q", head[16:80])
        datatype, bitpix = struct.unpack(endian + "2h", head[12:16])
        offset = max(int(struct.unpack(endian + "q", head[168:176])[0]), 544)
    else:
        return None
    if not 1 <= dim[0] <= 7 or bitpix <= 0 or bitpix % 8:
        return None
    voxels = int(np.prod([max(int(d), 1) for d in dim[1 : dim[0] + 1]], dtype=np.float64))
    return _Nifti(voxels, bitpix, datatype, offset, endian, _is_gzip(path))


def _nifti_layout(path: Path, header: Header) -> _Layout | None:
    """Single-file NIfTI: vox_offset + voxels x bitpix / 8 bytes, counted after gunzip for .nii.gz."""
    n = _nifti(path)
    if n is None:
        return None
    data = n.voxels * n.bitpix // 8
    return _Layout(path, 0, "gzip", n.offset + data) if n.gzip else _Layout(path, n.offset, "raw", data)


def stored_non_finite(path: Path, header: Header) -> int:
    """NaN or infinite voxels stored in a float NIfTI file, which ITK's reader turns into 0 without a word (other
    formats keep them, and ``io.non_finite_voxels`` counts them in the array); 0 for anything else."""
    n = _nifti(path) if header.io == "NiftiImageIO" else None
    code = {16: "f4", 64: "f8"}.get(n.datatype) if n else None
    if n is None or code is None:
        return 0
    dtype = np.dtype(n.endian + code)
    count, rest, left = 0, b"", n.voxels * dtype.itemsize
    for block in _data_blocks(path, n.offset, n.gzip):
        block = rest + block[:left]
        left -= len(block) - len(rest)
        usable = len(block) - len(block) % dtype.itemsize
        count += int(np.count_nonzero(~np.isfinite(np.frombuffer(block[:usable], dtype))))
        rest = block[usable:]
        if left <= 0:
            break
    return count


def _data_blocks(path: Path, offset: int, gz: bool) -> Iterator[bytes]:
    """The file's (decompressed) bytes from ``offset`` on, in bounded blocks."""
    z = zlib.decompressobj(47) if gz else None
    skip = offset if gz else 0
    with open(path, "rb") as f:
        f.seek(0 if gz else offset)
        while data := f.read(_CHUNK):
            while data:
                block, data = (z.decompress(data, _CHUNK), z.unconsumed_tail) if z is not None else (data, b"")
                if skip:
                    block, skip = block[skip:], max(skip - len(block), 0)
                yield block


def _int(text: str) -> int | None:
    """A header's whole number ('' is 0), or None."""
    try:
        return int(text.strip() or 0)
    except ValueError:
        return None


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _text_header(path: Path, end: re.Pattern[bytes]) -> tuple[str, int] | None:
    """(header text, byte offset just after it) of a text header that ends where ``end`` matches."""
    with open(path, "rb") as f:
        head = f.read(_HEAD)
    match = end.search(head)
    if match is None:
        return None
    return head[: match.end()].decode("latin-1"), match.end()


def _nrrd_layout(path: Path, header: Header) -> _Layout | None:
    """NRRD with raw or gzip encoding, voxel data attached or in one detached file."""
    found = _text_header(path, re.compile(rb"\r?\n\r?\n"))
    if found is None or header.component_bytes is None:
        return None
    text, end = found
    fields = {k.strip().lower(): v.strip() for k, v in re.findall(r"^([^#:\n][^:\n]*):=?(.*)$", text, re.M)}
    encoding = {"raw": "raw", "gzip": "gzip", "gz": "gzip"}.get(fields.get("encoding", "").lower())
    skip = _int(fields.get("byte skip", "0"))
    if encoding is None or skip is None or _int(fields.get("line skip", "0")) != 0 or (skip < 0 and encoding != "raw"):
        return None
    expected = header.voxels * header.component_bytes
    data = fields.get("data file") or fields.get("datafile")
    if data is None:
        return _Layout(path, end + max(skip, 0), encoding, expected)
    if data.upper().startswith("LIST") or len(data.split()) > 1:
        return None
    return _Layout(path.parent / data, max(skip, 0), encoding, expected)


def _meta_layout(path: Path, header: Header) -> _Layout | None:
    """MetaImage (.mha/.mhd): raw or zlib-compressed data after ``ElementDataFile`` or in one detached file."""
    found = _text_header(path, re.compile(rb"^ElementDataFile[ \t]*=.*?(?:\n|\Z)", re.M))
    if found is None or header.component_bytes is None:
        return None
    text, end = found
    fields = {k.strip().lower(): v.strip() for k, v in re.findall(r"^(\w+)\s*=(.*)$", text, re.M)}
    data = fields.get("elementdatafile", "")
    if data.upper().startswith("LIST") or "%" in data or not data:
        return None
    compressed = fields.get("compresseddata", "false").lower() == "true"
    expected = header.voxels * header.component_bytes
    if compressed and fields.get("compresseddatasize", "").isdigit():
        encoding, expected = "raw", int(fields["compresseddatasize"])
    else:
        encoding = "zlib" if compressed else "raw"
    if data.upper() == "LOCAL":
        return _Layout(path, end, encoding, expected)
    skip = _int(fields.get("headersize", "0"))
    return None if skip is None else _Layout(path.parent / data, max(skip, 0), encoding, expected)


def non_finite_message(name: str, bad: int, total: int) -> str:
    """The error for ``bad`` NaN or infinite voxels among ``total``."""
    return (
        f"{name} has {bad:,} of {total:,} voxels ({100.0 * bad / max(total, 1):.3g} %) that are NaN or infinite; "
        "SAMMed cannot map them to grey values. Replace them with a number (e.g. the background value) and save "
        "the image again."
    )
