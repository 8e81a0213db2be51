"""SAMMedAnnotatorLib.VolumeAccess on real MRML (slicer-core): volume <-> numpy, view -> slice, markups -> pixels."""

from __future__ import annotations

import mrml
import numpy as np
import pytest
import slicer

from sammed.io import Volume
from SAMMedLib import VolumeAccess


def _rotation(axis_xyz, degrees) -> np.ndarray:
    axis = np.asarray(axis_xyz, dtype=float)
    axis /= np.linalg.norm(axis)
    a = np.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def _ramp_volume(direction_lps=None, spacing=(0.8, 1.1, 2.5), origin=(12.0, -30.0, 55.0)) -> Volume:
    arr = np.arange(9 * 11 * 13, dtype=np.int16).reshape(9, 11, 13)
    return Volume(arr, spacing, origin, np.eye(3) if direction_lps is None else direction_lps, "ramp")


GEOMETRIES = {
    "identity": np.eye(3),
    "flipped": np.diag([-1.0, 1.0, -1.0]),
    "rotated": _rotation([1, 2, 3], 33.0),
    "permuted": np.array([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]]),
}


@pytest.fixture
def scene():
    logics = mrml.make_scene()
    yield logics.scene
    logics.scene.Clear(1)


def _linear_transform(scene, matrix4x4):
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "T")
    node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix4x4))
    return node


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_volume_roundtrip_keeps_voxels_and_geometry(scene, name):
    volume = _ramp_volume(GEOMETRIES[name])
    node = mrml.add_volume(scene, volume)
    back = VolumeAccess.volumeFromNode(node)
    np.testing.assert_array_equal(back.array_kji, volume.array_kji)
    np.testing.assert_allclose(back.spacing_ijk, volume.spacing_ijk)
    np.testing.assert_allclose(back.origin_lps, volume.origin_lps, atol=1e-9)
    np.testing.assert_allclose(back.direction_lps, volume.direction_lps, atol=1e-9)
    assert back.digest == volume.digest
    # the copy is independent of VTK memory (and, as every Volume's voxels, read-only)
    assert not back.array_kji.flags.writeable
    slicer.util.arrayFromVolume(node)[0, 0, 0] = -1
    assert back.array_kji[0, 0, 0] == volume.array_kji[0, 0, 0]


def test_ijk_to_ras_matches_simpleitk_physical_points():
    from sammed.io import to_sitk

    volume = _ramp_volume(GEOMETRIES["rotated"])
    image = to_sitk(volume)
    matrix = VolumeAccess.ijkToRASFromVolume(volume)
    for ijk in [(0, 0, 0), (12, 0, 0), (3, 7, 5), (12, 10, 8)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(ijk))
        ras = (matrix @ np.append(ijk, 1.0))[:3]
        np.testing.assert_allclose(ras, lps * [-1, -1, 1], atol=1e-6)


@pytest.mark.parametrize(("orientation", "axis"), [("Axial", 0), ("Coronal", 1), ("Sagittal", 2)])
def test_standard_views_pick_axis_and_slice(scene, orientation, axis):
    volume = _ramp_volume()  # LPS identity: K is S, J is P, I is L
    node = mrml.add_volume(scene, volume)
    view = mrml.add_slice_node(scene, orientation)
    for index in (0, 4, volume.shape_kji[axis] - 1):
        center = VolumeAccess.sliceXYToWorld(node, axis, index, [[2.0, 3.0]])[0]
        normal = VolumeAccess.asArray4x4(view.GetSliceToRAS())[:3, 2]
        view.SetSliceOffset(float(np.dot(center, normal)))
        assert VolumeAccess.sliceAxisAndIndex(node, view.GetSliceToRAS()) == (axis, index)


def test_view_under_parent_transform_uses_world_geometry(scene):
    volume = _ramp_volume(GEOMETRIES["flipped"])
    node = mrml.add_volume(scene, volume)
    rot = np.eye(4)
    rot[:3, :3] = _rotation([0, 0, 1], 90.0)  # R -> A, A -> L
    rot[:3, 3] = [5.0, -7.0, 11.0]
    transform = _linear_transform(scene, rot)
    node.SetAndObserveTransformNodeID(transform.GetID())
    view = mrml.add_slice_node(scene, "Coronal")
    # after the rotation the I axis (L/R in the volume) points along A/P in the world: coronal views cut I
    index = 6
    center = VolumeAccess.sliceXYToWorld(node, 2, index, [[1.0, 1.0]])[0]
    view.SetSliceOffset(float(np.dot(center, VolumeAccess.asArray4x4(view.GetSliceToRAS())[:3, 2])))
    assert VolumeAccess.sliceAxisAndIndex(node, view.GetSliceToRAS()) == (2, index)
    # the world geometry includes the transform
    back = VolumeAccess.volumeFromNode(node)
    np.testing.assert_allclose(np.abs(back.direction_lps[:, 0]), [0, 1, 0], atol=1e-9)


def test_oblique_view_and_outside_view_raise_clear_errors(scene):
    node = mrml.add_volume(scene, _ramp_volume())
    oblique = np.eye(4)
    oblique[:3, :3] = _rotation([1, 0, 0], 20.0)
    with pytest.raises(ValueError, match="oblique"):
        VolumeAccess.sliceAxisAndIndex(node, oblique)
    far = np.eye(4)
    far[:3, 3] = [0, 0, 5000.0]
    with pytest.raises(ValueError, match="outside"):
        VolumeAccess.sliceAxisAndIndex(node, far)


@pytest.mark.parametrize("name", ["rotated", "permuted"])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_markup_points_map_to_slice_pixels(scene, name, axis):
    node = mrml.add_volume(scene, _ramp_volume(GEOMETRIES[name]))
    m = np.eye(4)
    m[:3, :3] = _rotation([1, 1, 0], 15.0)
    m[:3, 3] = [3.0, 4.0, -5.0]
    node.SetAndObserveTransformNodeID(_linear_transform(scene, m).GetID())
    index = 3
    pixels_xy = np.array([[1.0, 2.0], [4.0, 5.0], [0.0, 0.0]])
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "P")
    for p in VolumeAccess.sliceXYToWorld(node, axis, index, pixels_xy):
        points.AddControlPointWorld(p)
    points.AddControlPointWorld(VolumeAccess.sliceXYToWorld(node, axis, index + 2, [[3.0, 3.0]])[0])  # other slice
    got = VolumeAccess.pointsOnSlice(node, axis, index, VolumeAccess.controlPointsWorld(points))
    np.testing.assert_allclose(got, pixels_xy, atol=1e-6)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_roi_markup_gives_box_on_slice(scene, axis):
    node = mrml.add_volume(scene, _ramp_volume())
    index = 4
    corners = VolumeAccess.sliceXYToWorld(node, axis, index, [[2.0, 1.0], [6.0, 5.0]])
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "Box")
    roi.SetCenterWorld(*((corners[0] + corners[1]) / 2))
    roi.SetSizeWorld(*np.abs(corners[1] - corners[0]))
    box = VolumeAccess.roiBoxOnSlice(node, axis, index, roi)
    np.testing.assert_array_equal(box, [2, 1, 6, 5])
    with pytest.raises(ValueError, match="does not cross"):
        VolumeAccess.roiBoxOnSlice(node, axis, index + 3, roi)
    pts = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Corners")
    for p in corners:
        pts.AddControlPointWorld(p)
    np.testing.assert_array_equal(
        VolumeAccess.twoPointBoxOnSlice(node, axis, index, VolumeAccess.controlPointsWorld(pts)), [2, 1, 6, 5]
    )


def test_non_scalar_and_missing_volume_raise(scene):
    with pytest.raises(ValueError, match="Select a volume"):
        VolumeAccess.volumeFromNode(None)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(ValueError, match="no voxels"):
        VolumeAccess.volumeFromNode(empty)
