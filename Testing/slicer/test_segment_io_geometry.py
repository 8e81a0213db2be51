"""Writes into a segmentation whose grid is not the volume's: finer (0.5 mm reference geometry on a 1-2 mm volume)
or taken from another, shifted and rotated volume. The editor logic computes its editable area and intensity range
on the segmentation's reference geometry (vtkSlicerSegmentEditorLogic::ModifySegmentByLabelmap, UpdateMaskLabelmap
and UpdateAlignedSourceVolume in Modules/Loadable/Segmentations/Logic/vtkSlicerSegmentEditorLogic.cxx): with the
modifier on the volume's grid, an intensity-masked write was dropped and the editable area was ignored. Each test
compares the written voxels, on the reference grid, with the nearest-volume-voxel image of the mask and the masks."""

from __future__ import annotations

import mrml
import numpy as np
import pytest
import slicer

from sammed import geometry
from sammed.io import Volume
from SAMMedLib import SegmentIO

SHAPE = (10, 12, 14)  # KJI; spacing 1.0, 1.5, 2.0 mm along I, J, K
BRIGHT_I = 7  # voxels with I < 7 are 100, the others 0


@pytest.fixture
def case():
    logics = mrml.make_scene()
    arr = np.zeros(SHAPE, np.int16)
    arr[:, :, :BRIGHT_I] = 100
    node = mrml.add_volume(logics.scene, Volume(arr, (1.0, 1.5, 2.0), (4.0, -6.0, 12.0), np.diag([1.0, -1.0, 1.0])))
    seg, ids = mrml.add_segmentation(logics.scene, node, ("a", "b"))
    editorNode = mrml.add_segment_editor_node(logics.scene)
    yield logics, node, seg, ids, editorNode
    logics.scene.Clear(1)


def _slice_mask(axis):
    mask = np.zeros(geometry.slice_shape(SHAPE, axis), bool)
    mask[2:-2, 2:-2] = True
    mask[3, 4] = False
    return mask


def _on_volume(axis, index, mask):
    out = np.zeros(SHAPE, bool)
    geometry.insert_slice(out, axis, index, mask)
    return out


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_oversampled_segmentation_gets_exactly_the_voxels_in_the_intensity_range(case, axis):
    logics, node, seg, (a, _), editorNode = case
    matrix, extent = mrml.oversampled_geometry(node, 0.5)  # 2 x 3 x 4 reference voxels per volume voxel
    mrml.set_reference_geometry(seg, matrix, extent)
    detail = np.zeros(mrml.on_grid(node, np.zeros(SHAPE, bool), matrix, extent).shape, bool)
    detail[1, 5, 6] = True  # smaller than a volume voxel, on another slice: the write keeps it as it is
    mrml.set_segment_labelmap(seg, a, detail, matrix, extent)
    editorNode.SetSourceVolumeIntensityMask(True)
    editorNode.SetSourceVolumeIntensityMaskRange(50, 1000)
    index = (5, 6, 6)[axis]
    SegmentIO.writeSliceMask(SegmentIO.makeEditorLogic(logics.scene), seg, a, node, axis, index, _slice_mask(axis))
    bright = mrml.slicer_array(node) >= 50
    expected = mrml.on_grid(node, _on_volume(axis, index, _slice_mask(axis)) & bright, matrix, extent) | detail
    written = mrml.segment_on_reference(seg, a)
    assert written.sum() == expected.sum() > 24 * 20
    np.testing.assert_array_equal(written, expected)


def test_oversampled_segmentation_writes_only_inside_the_mask_segment(case):
    logics, node, seg, (a, b), editorNode = case
    matrix, extent = mrml.oversampled_geometry(node, 0.5)
    mrml.set_reference_geometry(seg, matrix, extent)
    inside = np.zeros(mrml.on_grid(node, np.zeros(SHAPE, bool), matrix, extent).shape, bool)
    inside[:, 7:20, 5:13] = True  # b's edges cut through volume voxels
    mrml.set_segment_labelmap(seg, b, inside, matrix, extent)
    editorNode.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
    editorNode.SetMaskSegmentID(b)
    SegmentIO.writeSliceMask(SegmentIO.makeEditorLogic(logics.scene), seg, a, node, 0, 5, _slice_mask(0))
    expected = mrml.on_grid(node, _on_volume(0, 5, _slice_mask(0)), matrix, extent) & inside
    written = mrml.segment_on_reference(seg, a)
    assert written.sum() == expected.sum() > 0
    np.testing.assert_array_equal(written, expected)
    np.testing.assert_array_equal(mrml.segment_on_reference(seg, b), inside & ~expected)  # overwrite all segments


def _other_volume_grid():
    """IJK-to-RAS of a volume with other spacing, rotated 20 degrees about S and 10 about R, shifted."""
    a, c = np.radians(20), np.radians(10)
    about_s = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    about_r = np.array([[1, 0, 0], [0, np.cos(c), -np.sin(c)], [0, np.sin(c), np.cos(c)]])
    matrix = np.eye(4)
    matrix[:3, :3] = about_s @ about_r @ np.diag([0.8, 0.9, 1.1])
    matrix[:3, 3] = [-20.36, -4.8, -2.86]  # the centre of the written slice at IJK (19.7, 20.3, 18.2)
    return matrix


def test_segmentation_made_on_another_volume_gets_exactly_the_allowed_voxels(case):
    logics, node, seg, (a, b), editorNode = case
    other = mrml.add_volume(logics.scene, Volume(np.zeros((36, 40, 40), np.int16)), "Other", _other_volume_grid())
    seg.SetReferenceImageGeometryParameterFromVolumeNode(other)
    matrix, extent = mrml.reference_grid(seg)
    (_, _, ii), inside, tie = mrml.nearest_volume_voxels(other, matrix, extent)
    allowed = ii < 20  # b: half of the other volume's grid
    mrml.set_segment_labelmap(seg, b, allowed, matrix, extent)
    slicer.util.updateVolumeFromArray(node, np.full(SHAPE, 100, np.int16))
    editorNode.SetSourceVolumeIntensityMask(True)
    editorNode.SetSourceVolumeIntensityMaskRange(50, 1000)
    editorNode.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
    editorNode.SetMaskSegmentID(b)
    editorNode.SetOverwriteMode(editorNode.OverwriteNone)
    editor = SegmentIO.makeEditorLogic(logics.scene)
    _, _, near_tie = mrml.nearest_volume_voxels(node, matrix, extent)
    for mask in (_slice_mask(0), _slice_mask(0) & (np.arange(12)[:, None] < 6)):  # the second write replaces the slice
        SegmentIO.writeSliceMask(editor, seg, a, node, 0, 4, mask)
        expected = mrml.on_grid(node, _on_volume(0, 4, mask), matrix, extent) & allowed
        written = mrml.segment_on_reference(seg, a)
        assert near_tie.sum() < 0.001 * near_tie.size  # voxels halfway between volume voxels may go either way
        np.testing.assert_array_equal(written[~near_tie], expected[~near_tie])
        assert expected.sum() > 50
    np.testing.assert_array_equal(mrml.segment_on_reference(seg, b), allowed)  # overlap allowed: b unchanged
