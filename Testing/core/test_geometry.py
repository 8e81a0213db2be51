"""Slices on every axis go in and out of the volume without flips or transposes, for LPS and RAS files."""

from __future__ import annotations

import numpy as np
import pytest

from sammed import geometry
from sammed.backends.fake import FakeBackend
from sammed.io import Volume
from sammed.io import read_volume
from sammed.io import to_sitk
from sammed.segmenter import Segmenter


def asymmetric_volume(spacing=(1.0, 1.0, 1.0), direction=None):
    """A 20x24x28 KJI volume with an L-shaped bright object touching no symmetry plane."""
    arr = np.full((20, 24, 28), -1000, dtype=np.int16)
    obj = np.zeros(arr.shape, bool)
    obj[4:9, 5:15, 6:10] = True  # vertical bar
    obj[4:9, 12:15, 10:20] = True  # foot of the L
    arr[obj] = 200
    direction = np.eye(3) if direction is None else direction
    return Volume(arr, spacing, (10.0, -5.0, 3.0), direction, name="asym"), obj


DIRECTIONS = {
    "lps_identity": np.eye(3),
    "ras_file": np.diag([-1.0, -1.0, 1.0]),
    "sagittal_acq": np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),
}


@pytest.mark.parametrize("name", list(DIRECTIONS))
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_file_round_trip_keeps_voxels_and_geometry(tmp_path, name, suffix):
    import SimpleITK as sitk

    vol, _ = asymmetric_volume(direction=DIRECTIONS[name])
    path = tmp_path / f"asym{suffix}"
    sitk.WriteImage(to_sitk(vol), str(path))
    back = read_volume(path)
    np.testing.assert_array_equal(back.array_kji, vol.array_kji)
    np.testing.assert_allclose(back.direction_lps, vol.direction_lps, atol=1e-6)
    np.testing.assert_allclose(back.origin_lps, vol.origin_lps, atol=1e-4)
    assert back.digest == vol.digest


@pytest.mark.parametrize("name", list(DIRECTIONS))
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_mask_goes_back_exactly_on_every_axis(name, axis):
    vol, obj = asymmetric_volume(direction=DIRECTIONS[name])
    seg = Segmenter(vol, FakeBackend(), preset="ct_abdomen")
    index = geometry.largest_slice(obj, axis)
    ref = geometry.extract_slice(obj, axis, index)
    result = seg.segment(axis, index, box_xyxy=geometry.box_from_mask(ref))
    out = np.zeros(obj.shape, bool)
    geometry.insert_slice(out, axis, index, result.mask_hw)
    expected = np.zeros(obj.shape, bool)
    geometry.insert_slice(expected, axis, index, ref)
    np.testing.assert_array_equal(out, expected)


def test_extract_slice_layout_is_documented_one():
    arr = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    assert geometry.extract_slice(arr, 0, 1).shape == (3, 4)
    assert geometry.extract_slice(arr, 1, 2).shape == (2, 4)
    assert geometry.extract_slice(arr, 2, 3).shape == (2, 3)
    assert geometry.extract_slice(arr, 2, 3)[1, 2] == arr[1, 2, 3]
    assert geometry.extract_slice(arr, 1, 2)[1, 3] == arr[1, 2, 3]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("lps_identity", {"axial": 0, "coronal": 1, "sagittal": 2}),
        ("ras_file", {"axial": 0, "coronal": 1, "sagittal": 2}),
        # I runs along P (coronal normal), J along -S (axial normal), K along -L (sagittal normal)
        ("sagittal_acq", {"axial": 1, "coronal": 2, "sagittal": 0}),
    ],
)
def test_orientation_names_follow_direction_cosines(name, expected):
    d = DIRECTIONS[name]
    for orientation, axis in expected.items():
        assert geometry.axis_for_orientation(d, orientation) == axis
        assert geometry.orientation_of_axis(d, axis) == orientation


def test_thick_slices_are_resampled_to_square_pixels_and_mapped_back_exactly():
    vol, obj = asymmetric_volume(spacing=(1.0, 1.0, 3.0))  # 3 mm slices: coronal/sagittal rows are 3x taller
    grid = Segmenter(vol, FakeBackend()).grid(1)
    assert grid.shape_hw == (20, 28)
    assert grid.model_shape_hw == (60, 28)
    fake = FakeBackend()
    seg = Segmenter(vol, fake, preset="ct_abdomen")
    ref = geometry.extract_slice(obj, 1, 13)
    result = seg.segment(1, 13, box_xyxy=geometry.box_from_mask(ref))
    np.testing.assert_array_equal(result.mask_hw, ref)


def test_points_and_boxes_scale_with_the_grid():
    grid = geometry.SliceGrid((10, 20), (3.0, 1.0))
    assert grid.model_shape_hw == (30, 20)
    np.testing.assert_allclose(grid.points_to_model([[4, 2]]), [[4, 7]])  # centre of row 2 = centre of model row 7
    np.testing.assert_allclose(grid.box_to_model([1, 1, 5, 3]), [0.5, 2.5, 5.5, 11.5])  # outer pixel edges


def test_box_of_a_one_pixel_thick_mask_has_an_area():
    mask = np.zeros((20, 30), bool)
    mask[3, 5:9] = True  # one row high
    box = geometry.box_from_mask(mask)
    np.testing.assert_allclose(box, [5, 2.5, 8, 3.5])
    geometry.check_box(box, mask.shape)  # accepted: a prompt can be made from it
    mask[:] = False
    mask[7, 11] = True
    np.testing.assert_allclose(geometry.box_from_mask(mask), [10.5, 6.5, 11.5, 7.5])
    np.testing.assert_allclose(geometry.box_from_mask(mask, 2.0), [9, 5, 13, 9])  # a larger margin is kept


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ([5, 5, 5, 9], "zero area"),
        ([9, 5, 3, 9], "zero area"),
        ([40, 40, 50, 50], "outside"),
        ([1, 2, 3], "4 numbers"),
    ],
)
def test_bad_boxes_are_refused(box, message):
    with pytest.raises(ValueError, match=message):
        geometry.check_box(box, (20, 30))


def test_bad_points_are_refused():
    with pytest.raises(ValueError, match="outside"):
        geometry.check_points([[100, 1]], [1], (20, 30))
    with pytest.raises(ValueError, match="labels"):
        geometry.check_points([[1, 1], [2, 2]], [1], (20, 30))
    with pytest.raises(ValueError, match="1 .positive. or 0"):
        geometry.check_points([[1, 1]], [2], (20, 30))


def test_slice_index_out_of_range_names_the_range():
    with pytest.raises(ValueError, match=r"0\.\.19"):
        geometry.check_index((20, 24, 28), 0, 20)
    with pytest.raises(ValueError, match="Unknown axis"):
        geometry.axis_for_orientation(np.eye(3), "oblique")
