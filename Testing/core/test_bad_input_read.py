"""Damaged, truncated, oversized and ambiguous image files: refused in one line naming the file, never changed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from sammed import dicom
from sammed import readers
from sammed.backends.fake import FakeBackend
from sammed.cli import main
from sammed.io import read_volume
from sammed.segmenter import Segmenter

UID_A = "1.2.826.0.1.3680043.8.498.1001"
UID_B = "1.2.826.0.1.3680043.8.498.2002"


def image_array() -> np.ndarray:
    arr = np.zeros((6, 16, 16), np.int16)
    arr[1:, 4:10, 4:12] = 300
    return arr


def write(path: Path, arr: np.ndarray, compress: bool = False) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path), useCompression=compress)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def dicom_series(folder: Path, uid=UID_A, n=6, step=3.0, skip=(), desc="abdomen", prefix="s") -> Path:
    """``n`` 16x16 int16 slices ``step`` mm apart (files ``skip`` left out), one file each."""
    folder.mkdir(exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(n):
        if k in skip:
            continue
        image = sitk.GetImageFromArray((np.arange(256).reshape(1, 16, 16) + 10 * k).astype(np.int16))
        tags = {
            "0020|000e": uid,
            "0008|0018": f"{uid}.{k + 1}",
            "0020|0032": f"0\\0\\{k * step:g}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0020|0013": str(k + 1),
            "0008|0060": "CT",
            "0008|103e": desc,
        }
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{prefix}{k:03d}.dcm"))
        writer.Execute(image)
    return folder


def refused(path, match: str, **kwargs) -> str:
    """read_volume's message for ``path``, checking that nothing under the folder changed."""
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    before = snapshot(folder)
    with pytest.raises(ValueError, match=match) as info:
        read_volume(path, **kwargs)
    assert snapshot(folder) == before
    message = str(info.value)
    assert "\n" not in message and ".cxx" not in message and "Exception thrown" not in message
    return message


def run_cli(capfd, img: Path, out_dir: Path, *extra: str) -> tuple[int, list[str]]:
    """``sammed segment`` on ``img``: exit code and stderr lines (C-level output included)."""
    argv = ["segment", str(img), "--slice", "2", "--box", "1,1,5,5", "-o", str(out_dir / "out.nii.gz")]
    code = main([*argv, "--device", "cpu", "--no-disk-cache", *extra])
    return code, capfd.readouterr().err.strip().splitlines()


def assert_cli_refuses(capfd, img: Path, tmp_path: Path, message: str, *extra: str) -> None:
    before = snapshot(tmp_path)
    code, err = run_cli(capfd, img, tmp_path, *extra)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("sammed segment: error: ") and message in err[0], err
    assert "Traceback" not in err[0]
    assert snapshot(tmp_path) == before  # no output, no temporary file, inputs unchanged


# ---------------------------------------------------------------------------------------------------- files
FORMATS = [("img.nii", False), ("img.nii.gz", True), ("img.nrrd", False), ("img.nrrd", True)]
FORMATS += [("img.mha", False), ("img.mha", True)]


@pytest.mark.parametrize(("name", "compress"), FORMATS)
def test_truncated_file_is_refused_not_zero_filled(tmp_path, name, compress):
    noise = np.random.default_rng(0).integers(-1000, 1000, (6, 16, 16)).astype(np.int16)  # compresses little
    path = write(tmp_path / name, noise, compress)
    np.testing.assert_array_equal(read_volume(path).array_kji, noise)  # whole: reads
    truncate(path)
    message = refused(path, "truncated")
    assert str(path) in message and "copy or export" in message


@pytest.mark.parametrize(("name", "compress"), FORMATS)
def test_file_cut_inside_its_header_is_reported_as_truncated(tmp_path, name, compress):
    path = truncate(write(tmp_path / name, image_array(), compress), 0.1 if compress else 0.05)
    refused(path, "truncated")


@pytest.mark.parametrize(("name", "keep"), [("img.nii.gz", 0.5), ("img.mha", 0.7), ("img.mha", 0.1)])
def test_truncated_file_cli(tmp_path, capfd, name, keep):
    path = truncate(write(tmp_path / name, image_array()), keep)
    assert_cli_refuses(capfd, path, tmp_path, "truncated")  # nothing from ITK's MetaImage reader on stderr


def huge_nrrd(path: Path, encoding: str = "raw") -> Path:
    """A header of a few bytes that declares 2048^3 voxels."""
    head = f"NRRD0004\ntype: unsigned char\ndimension: 3\nsizes: 2048 2048 2048\nencoding: {encoding}\n\n"
    path.write_bytes(head.encode())
    return path


@pytest.mark.parametrize("encoding", ["raw", "gzip"])
def test_tiny_file_declaring_2048_cubed_is_refused_before_allocating(tmp_path, encoding):
    message = refused(huge_nrrd(tmp_path / "huge.nrrd", encoding), "truncated")
    assert "8,589,934,592 bytes" in message


def test_tiny_file_declaring_2048_cubed_cli(tmp_path, capfd):
    assert_cli_refuses(capfd, huge_nrrd(tmp_path / "huge.nrrd"), tmp_path, "truncated")


def test_voxel_limit_argument_and_environment(tmp_path, monkeypatch):
    path = write(tmp_path / "img.nii.gz", image_array())
    assert "16x16x6 = 1,536 voxels" in refused(path, "more than the limit of 1,000", max_voxels=1000)
    monkeypatch.setenv(readers.MAX_VOXELS_ENV, "1000")
    refused(path, "SAMMED_MAX_VOXELS")
    assert read_volume(path, max_voxels=2000).shape_kji == (6, 16, 16)  # the argument wins
    monkeypatch.setenv(readers.MAX_VOXELS_ENV, "lots")
    refused(path, "SAMMED_MAX_VOXELS must be a positive whole number")
    monkeypatch.delenv(readers.MAX_VOXELS_ENV)
    assert readers.max_voxels_limit() == readers.DEFAULT_MAX_VOXELS


def test_voxel_limit_cli(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv(readers.MAX_VOXELS_ENV, "1000")
    assert_cli_refuses(capfd, write(tmp_path / "img.nrrd", image_array()), tmp_path, "more than the limit")


def test_unrecognised_file_says_what_it_is_without_itk_internals(tmp_path):
    path = tmp_path / "x.nii.gz"
    path.write_bytes(b"this is not an image")
    message = refused(path, "Cannot read image")
    assert f"'{path}'" in message and "not an image file SimpleITK recognises" in message
    assert "ITK: Unable to determine ImageIO reader" in message


def test_unrecognised_file_cli(tmp_path, capfd):
    path = tmp_path / "x.nii.gz"
    path.write_bytes(b"this is not an image")
    assert_cli_refuses(capfd, path, tmp_path, "not an image file SimpleITK recognises")


@pytest.mark.parametrize("name", ["img.nii.gz", "img.nii", "img.nrrd"])
@pytest.mark.parametrize(("count", "value"), [(15, np.nan), (1536, np.inf)])
def test_non_finite_voxels_are_refused(tmp_path, name, count, value):
    """NRRD keeps them; ITK's NIfTI reader turns them into 0 (in CT, water) without a word: both are refused."""
    arr = image_array().astype(np.float32)
    assert read_volume(write(tmp_path / f"clean_{name}", arr)).non_finite == 0
    arr.reshape(-1)[:count] = value
    path = write(tmp_path / name, arr)
    message = refused(path, "NaN or infinite")
    assert f"{count:,} of 1,536 voxels" in message and str(path) in message


def test_non_finite_voxels_cli(tmp_path, capfd):
    arr = image_array().astype(np.float32)
    arr[3, 3, 3] = np.nan
    assert_cli_refuses(capfd, write(tmp_path / "img.nii.gz", arr), tmp_path, "1 of 1,536 voxels")


# ---------------------------------------------------------------------------------------------------- DICOM
def test_dicom_series_reads_and_ignores_other_files(tmp_path):
    folder = dicom_series(tmp_path / "dcm")
    (folder / "README.txt").write_text("notes")
    volume = read_volume(folder)
    assert volume.shape_kji == (6, 16, 16)
    assert volume.spacing_ijk[2] == pytest.approx(3.0)


def test_dicom_missing_slice_names_the_gap(tmp_path):
    folder = dicom_series(tmp_path / "dcm", skip=(3,))
    message = refused(folder, "uneven|jump")
    assert "slice positions jump by 6.0 mm between files s002.dcm and s004.dcm where the rest are 3.0 mm" in message
    assert "--allow-gaps" in message and UID_A in message
    assert read_volume(folder, allow_gaps=True).shape_kji == (5, 16, 16)


def test_dicom_missing_slice_cli(tmp_path, capfd):
    assert_cli_refuses(capfd, dicom_series(tmp_path / "dcm", skip=(3,)), tmp_path, "jump by 6.0 mm")


def test_dicom_truncated_file_is_reported(tmp_path):
    folder = dicom_series(tmp_path / "dcm")
    truncate(folder / "s002.dcm", 0.6)
    message = refused(folder, "cannot be read")
    assert "1 file(s) cannot be read (truncated or damaged): s002.dcm" in message
    assert "jump by 6.0 mm between files s001.dcm and s003.dcm" in message
    volume = read_volume(folder, allow_gaps=True)
    assert volume.shape_kji == (5, 16, 16)


def test_dicom_truncated_file_cli(tmp_path, capfd):
    folder = dicom_series(tmp_path / "dcm")
    truncate(folder / "s002.dcm", 0.6)
    assert_cli_refuses(capfd, folder, tmp_path, "s002.dcm")


def two_series(tmp_path: Path) -> Path:
    folder = dicom_series(tmp_path / "dcm", UID_A, desc="abdomen")
    return dicom_series(folder, UID_B, n=4, step=2.0, desc="liver late", prefix="t")


def test_dicom_folder_with_two_series_lists_them(tmp_path):
    folder = two_series(tmp_path)
    message = refused(folder, "2 DICOM series")
    assert f"{UID_A} (6 files, CT, 'abdomen')" in message and f"{UID_B} (4 files, CT, 'liver late')" in message
    assert "--series UID" in message
    assert read_volume(folder, series=UID_B).shape_kji == (4, 16, 16)
    assert read_volume(folder, series=UID_A).spacing_ijk[2] == pytest.approx(3.0)


def test_dicom_unknown_series_lists_the_available_ones(tmp_path):
    folder = two_series(tmp_path)
    message = refused(folder, "no DICOM series '9.9'", series="9.9")
    assert UID_A in message and UID_B in message


def test_dicom_two_series_cli(tmp_path, capfd):
    assert_cli_refuses(capfd, two_series(tmp_path), tmp_path, "--series UID")


def test_dicom_unknown_series_cli(tmp_path, capfd):
    assert_cli_refuses(capfd, two_series(tmp_path), tmp_path, "no DICOM series '9.9'", "--series", "9.9")


def fake_segmenter(args, volume, mapping=None):
    return Segmenter(volume, FakeBackend(), mapping)


@pytest.mark.parametrize("extra", [("--series", UID_B), ("--allow-gaps",)])
def test_cli_series_and_allow_gaps(tmp_path, capfd, monkeypatch, extra):
    import sammed.cli.segment

    monkeypatch.setattr(sammed.cli.segment, "make_segmenter", fake_segmenter)
    folder = two_series(tmp_path) if extra[0] == "--series" else dicom_series(tmp_path / "dcm", skip=(3,))
    code, err = run_cli(capfd, folder, tmp_path, *extra)
    assert code == 0, err
    assert read_volume(tmp_path / "out.nii.gz").shape_kji[0] == (4 if extra[0] == "--series" else 5)


def test_slice_gaps_rules():
    files = [f"f{i}.dcm" for i in range(5)]
    iop = "1\\0\\0\\0\\1\\0"
    even = [f"0\\0\\{z}" for z in (0, 2.5, 5.0, 7.5, 10.0)]
    assert dicom.slice_gaps(files, even, iop) is None
    jitter = [f"0\\0\\{z}" for z in (0, 2.5001, 5.0, 7.4999, 10.0)]
    assert dicom.slice_gaps(files, jitter, iop) is None
    twice = [f"0\\0\\{z}" for z in (0, 2.5, 2.5, 5.0, 7.5)]
    assert "files f1.dcm and f2.dcm are at the same slice position" in dicom.slice_gaps(files, twice, iop)
    assert dicom.slice_gaps(files, ["", *even[1:]], iop) is None  # no positions: nothing to check
    # an oblique series: the distance along the normal counts, not z
    tilted = [f"0\\{-0.6 * z}\\{0.8 * z}" for z in (0, 3, 6, 12, 15)]
    gaps = dicom.slice_gaps(files, tilted, "1\\0\\0\\0\\0.8\\0.6")
    assert gaps is not None and "jump by 6.0 mm between files f2.dcm and f3.dcm" in gaps


def test_itk_reason_drops_paths_and_addresses():
    exc = RuntimeError(
        "Exception thrown in SimpleITK ImageFileReader_Execute: /tmp/b/ITK/itkNrrdImageIO.cxx:935:\n"
        "ITK ERROR: NrrdImageIO(0x55a7f0f5ed50): Read: Error reading x.nrrd:"
    )
    assert readers.itk_reason(exc) == "Read: Error reading x.nrrd"
    assert os.sep not in readers.itk_reason(RuntimeError("/a/b/c.cxx:99:"))
