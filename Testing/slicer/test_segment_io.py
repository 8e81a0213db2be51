"""SAMMedAnnotatorLib.SegmentWrite on real MRML (slicer-core): slice writes on any axis and geometry, bad input."""

from __future__ import annotations

import mrml
import numpy as np
import pytest
import slicer

from sammed import geometry
from sammed.io import Volume
from SAMMedLib import SegmentIO


def _rotation_z(degrees):
    a = np.radians(degrees)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])


@pytest.fixture
def rotated_case():
    logics = mrml.make_scene()
    arr = np.random.default_rng(0).integers(0, 100, (12, 14, 16)).astype(np.int16)
    direction = _rotation_z(30) @ np.diag([1.0, -1.0, 1.0])
    node = mrml.add_volume(logics.scene, Volume(arr, (0.7, 1.3, 2.0), (5.0, -3.0, 10.0), direction))
    seg, ids = mrml.add_segmentation(logics.scene, node, ("a", "b"))
    yield logics, node, seg, ids
    logics.scene.Clear(1)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_write_round_trips_on_rotated_flipped_grid(rotated_case, axis):
    logics, node, seg, (a, _) = rotated_case
    editor = SegmentIO.makeEditorLogic(logics.scene)
    shape_kji = (12, 14, 16)
    mask = np.random.default_rng(axis).random(geometry.slice_shape(shape_kji, axis)) > 0.5
    SegmentIO.writeSliceMask(editor, seg, a, node, axis, 5, mask)
    written = SegmentIO.segmentArray(seg, a, node)
    np.testing.assert_array_equal(geometry.extract_slice(written, axis, 5), mask)
    assert written.sum() == mask.sum()
    np.testing.assert_array_equal(SegmentIO.segmentSliceMask(seg, a, node, axis, 5), mask)
    assert SegmentIO.annotatedSlices(seg, a, node, axis) == [5]


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_writing_one_slice_keeps_every_other_slice(rotated_case, axis):
    """Regression: ModificationModeSet with an extent cleared the user's other slices in slicer-core 5.13."""
    logics, node, seg, (a, _) = rotated_case
    editor = SegmentIO.makeEditorLogic(logics.scene)
    shape = geometry.slice_shape((12, 14, 16), axis)
    first = np.zeros(shape, bool)
    first[2:6, 3:9] = True
    second = np.zeros(shape, bool)
    second[4:10, 1:5] = True
    SegmentIO.writeSliceMask(editor, seg, a, node, axis, 3, first)
    SegmentIO.writeSliceMask(editor, seg, a, node, axis, 8, first)
    SegmentIO.writeSliceMask(editor, seg, a, node, axis, 3, second)  # replace slice 3 only
    written = SegmentIO.segmentArray(seg, a, node)
    np.testing.assert_array_equal(geometry.extract_slice(written, axis, 8), first)
    np.testing.assert_array_equal(geometry.extract_slice(written, axis, 3), second)
    assert SegmentIO.annotatedSlices(seg, a, node, axis) == [3, 8]
    SegmentIO.writeSliceMask(editor, seg, a, node, axis, 8, np.zeros(shape, bool))  # an empty mask clears
    assert SegmentIO.annotatedSlices(seg, a, node, axis) == [3]


def test_write_with_segmentation_under_a_parent_transform(rotated_case):
    logics, node, seg, (a, _) = rotated_case
    transform = logics.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    m = np.eye(4)
    m[:3, :3] = _rotation_z(-30)
    m[:3, 3] = [4.0, -2.0, 1.0]
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(m))
    seg.SetAndObserveTransformNodeID(transform.GetID())
    editor = SegmentIO.makeEditorLogic(logics.scene)
    mask = np.zeros((14, 16), bool)
    mask[3:9, 4:12] = True
    SegmentIO.writeSliceMask(editor, seg, a, node, 0, 7, mask)
    # read back in world: the voxels land on the volume's slice 7 although the segmentation is transformed
    np.testing.assert_array_equal(SegmentIO.segmentSliceMask(seg, a, node, 0, 7), mask)


def test_bad_writes_raise_clear_errors(rotated_case):
    logics, node, seg, (a, _) = rotated_case
    editor = SegmentIO.makeEditorLogic(logics.scene)
    with pytest.raises(ValueError, match="does not match slice shape"):
        SegmentIO.writeSliceMask(editor, seg, a, node, 0, 2, np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="out of range"):
        SegmentIO.writeSliceMask(editor, seg, a, node, 0, 99, np.ones((14, 16), bool))
    with pytest.raises(ValueError, match="Select a segment"):
        SegmentIO.writeSliceMask(editor, seg, "nope", node, 0, 2, np.ones((14, 16), bool))
    assert not SegmentIO.undo(SegmentIO.makeEditorLogic(logics.scene))


def test_editor_logic_uses_the_segment_editor_module_node(rotated_case):
    logics, node, seg, ids = rotated_case
    first = SegmentIO.segmentEditorNode(logics.scene)
    assert (
        SegmentIO.segmentEditorNode(logics.scene) is first
        or SegmentIO.segmentEditorNode(logics.scene).GetID() == first.GetID()
    )
    assert SegmentIO.makeEditorLogic(logics.scene).GetSegmentEditorNode().GetID() == first.GetID()
