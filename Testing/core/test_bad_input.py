"""Bad input: a clear message naming what is wrong, and no file changed."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from support import require

from sammed.backends.fake import FakeBackend
from sammed.cli import main
from sammed.io import Volume
from sammed.io import read_volume
from sammed.io import write_labelmap
from sammed.segmenter import Segmenter


def write(tmp_path, arr, name="img.nii.gz"):
    p = tmp_path / name
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(p))
    return p


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_volume(tmp_path / "nope.nii.gz")


def test_unreadable_file(tmp_path):
    p = tmp_path / "broken.nii.gz"
    p.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="Cannot read image"):
        read_volume(p)


def test_folder_without_dicom(tmp_path):
    with pytest.raises(ValueError, match="no DICOM series"):
        read_volume(tmp_path)


def test_2d_and_4d_images(tmp_path):
    with pytest.raises(ValueError, match="2-D"):
        read_volume(write(tmp_path, np.zeros((8, 8), np.int16)))
    img4 = sitk.JoinSeries([sitk.Image(4, 4, 4, sitk.sitkInt16)] * 2)
    p = tmp_path / "four.nii.gz"
    sitk.WriteImage(img4, str(p))
    with pytest.raises(ValueError, match="4-D"):
        read_volume(p)


def seg():
    arr = np.zeros((6, 16, 16), np.int16)
    arr[1:, 4:10, 4:12] = 300
    return Segmenter(Volume(arr), FakeBackend(), preset="ct_abdomen")


def test_empty_slice_and_out_of_range():
    s = seg()
    with pytest.raises(ValueError, match="empty"):
        s.segment(0, 0, box_xyxy=[2, 2, 8, 8])
    with pytest.raises(ValueError, match="out of range"):
        s.segment(0, 6, box_xyxy=[2, 2, 8, 8])
    with pytest.raises(ValueError, match="box or at least one point"):
        s.segment(0, 2)
    with pytest.raises(ValueError, match="outside"):
        s.segment(0, 2, points_xy=[[30, 3]])
    assert s.cache.stats.encodes == 0  # nothing was encoded for refused prompts


def test_labelmap_of_wrong_shape_leaves_target_as_it_was(tmp_path):
    vol = Volume(np.zeros((4, 5, 6), np.int16))
    target = tmp_path / "labels.nii.gz"
    target.write_bytes(b"previous content")
    with pytest.raises(ValueError, match="does not match"):
        write_labelmap(target, np.zeros((4, 5, 5), np.uint8), vol)
    with pytest.raises(ValueError, match="use one of"):
        write_labelmap(tmp_path / "labels.png", np.zeros((4, 5, 6), np.uint8), vol)
    assert target.read_bytes() == b"previous content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.nii.gz"]


def test_seg_nrrd_is_readable_by_slicerio(tmp_path):
    slicerio = require("slicerio", "it is part of the test extras: run bash scripts/test.sh")
    vol = Volume(np.zeros((4, 5, 6), np.int16), spacing_ijk=(1, 2, 3))
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[1, 2, 3] = 1
    labels[2, 1:3, 1:4] = 2
    p = write_labelmap(tmp_path / "x.seg.nrrd", labels, vol, {1: "liver", 2: "spleen"})
    s = slicerio.read_segmentation(str(p))
    names = sorted(seg["name"] for seg in s["segments"])
    assert names == ["liver", "spleen"]
    assert s["voxels"].transpose(2, 1, 0).astype(np.uint8).sum() == labels.sum()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["segment", "{missing}", "--slice", "1", "--box", "1,1,5,5", "-o", "{out}"], "does not exist"),
        (["segment", "{img}", "--slice", "99", "--box", "1,1,5,5", "-o", "{out}"], "out of range"),
        (["segment", "{img}", "--slice", "0", "--box", "1,1,5,5", "-o", "{out}"], "empty"),
        (["segment", "{img}", "--slice", "2", "--box", "5,5,5,9", "-o", "{out}"], "zero area"),
        (["segment", "{img}", "--slice", "2", "--box", "40,40,50,50", "-o", "{out}"], "outside"),
        (["segment", "{img}", "--slice", "2", "--point", "99,2", "-o", "{out}"], "outside"),
        (["segment", "{img}", "--slice", "2", "--box", "1,1,5", "-o", "{out}"], "4 numbers"),
        (["segment", "{img}", "--slice", "2", "-o", "{out}"], "Give a prompt"),
        (["segment", "{img}", "--slice", "2", "--box", "1,1,5,5", "--preset", "no", "-o", "{out}"], "Unknown inten"),
        (["segment", "{img}", "--slice", "2", "--box", "1,1,5,5", "--model", "nope", "-o", "{out}"], "Unknown model"),
        (["segment", "{img}", "--slice", "2", "--box", "1,1,5,5", "-o", "{nodir}"], "does not exist"),
    ],
)
def test_cli_user_errors_print_one_line_exit_2_and_write_nothing(tmp_path, capsys, argv, message):
    arr = np.zeros((6, 16, 16), np.int16)
    arr[1:, 4:10, 4:12] = 300
    img = write(tmp_path, arr)
    out = tmp_path / "out.nii.gz"
    subs = {
        "missing": str(tmp_path / "missing.nii.gz"),
        "img": str(img),
        "out": str(out),
        "nodir": str(tmp_path / "no" / "dir" / "x.nii.gz"),
    }
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main([a.format(**subs) for a in argv] + ["--device", "cpu", "--no-disk-cache"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and message in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
