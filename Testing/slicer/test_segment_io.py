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
    # writes land on the segmentation's reference grid: here the volume's grid seen from the transformed
    # segmentation (SetReferenceImageGeometryParameterFromVolumeNode applies the transform between the two nodes)
    seg.SetReferenceImageGeometryParameterFromVolumeNode(node)
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


def _segment_editor(scene, seg, volume, segment_id):
    """The Segment Editor module's node (singleton "SegmentEditor", Modules/Scripted/SegmentEditor/SegmentEditor.py)
    and a logic bound to it, as the Segment Editor widget has, selecting ``seg``/``volume``/``segment_id``."""
    node = mrml.add_segment_editor_node(scene)
    assert node.GetSingletonTag() == SegmentIO.SEGMENT_EDITOR_NODE_SINGLETON
    logic = slicer.vtkSlicerSegmentEditorLogic()
    logic.SetMRMLScene(scene)
    logic.SetSegmentEditorNode(node)
    logic.SetSegmentationNode(seg)
    logic.SetSourceVolumeNode(volume)
    logic.SetCurrentSegmentID(segment_id)
    return node, logic


def _editor_edit(logic, seg, segment_id, volume, block):
    """An edit through the Segment Editor's logic: ``block`` (KJI slices) of the volume added to the segment."""
    mask = np.zeros(SegmentIO.VolumeAccess.volumeShapeKJI(volume), bool)
    mask[block] = True
    logic.SaveStateForUndo()
    logic.ModifySegmentByLabelmap(
        seg, segment_id, SegmentIO.orientedImageFromMask(mask, volume, seg), logic.ModificationModeAdd, True, False
    )


def test_each_editor_logic_has_a_hidden_unsaved_node_of_its_own(rotated_case):
    logics, node, seg, (a, _) = rotated_case
    first, second = SegmentIO.makeEditorLogic(logics.scene), SegmentIO.makeEditorLogic(logics.scene)
    nodes = [first.GetSegmentEditorNode(), second.GetSegmentEditorNode()]
    assert [n.GetSingletonTag() for n in nodes] == ["SAMMed", "SAMMed2"]
    assert all(n.GetHideFromEditors() and not n.GetSaveWithScene() for n in nodes)
    assert SegmentIO.segmentEditorModuleNode(logics.scene) is None  # SAMMed does not create the Segment Editor's
    SegmentIO.writeSliceMask(first, seg, a, node, 0, 3, np.ones((14, 16), bool))
    assert SegmentIO.segmentEditorModuleNode(logics.scene) is None
    assert nodes[0].GetSegmentationNode() is seg and nodes[1].GetSegmentationNode() is None
    del first
    assert SegmentIO.makeEditorLogic(logics.scene).GetSegmentEditorNode().GetID() == nodes[0].GetID()  # reused
    logics.scene.RemoveNode(nodes[1])  # a write puts a removed node back
    SegmentIO.writeSliceMask(second, seg, a, node, 0, 4, np.ones((14, 16), bool))
    assert second.GetSegmentEditorNode().GetScene() is logics.scene and second.CanUndo()


def test_writes_leave_the_segment_editor_selection_and_history_alone(rotated_case):
    """Before: our logic selected its nodes in the Segment Editor's node, which switched the user's segmentation,
    source volume and segment, and the Segment Editor logic's history was dropped on the switch."""
    logics, node, seg, (a, b) = rotated_case
    other, (c,) = mrml.add_segmentation(logics.scene, node, ("c",), name="Other")
    editorNode, editorLogic = _segment_editor(logics.scene, other, node, c)
    _editor_edit(editorLogic, other, c, node, np.s_[2:4, 3:6, 4:9])
    SegmentIO.writeSliceMask(SegmentIO.makeEditorLogic(logics.scene), seg, a, node, 0, 5, np.ones((14, 16), bool))
    assert editorNode.GetSegmentationNode() is other and editorNode.GetSourceVolumeNode() is node
    assert editorNode.GetSelectedSegmentID() == c
    assert editorLogic.CanUndo()
    editorLogic.Undo()
    assert SegmentIO.segmentArray(other, c, node).sum() == 0


def test_segment_editor_masking_settings_apply_to_our_writes(rotated_case):
    logics, node, seg, (a, b) = rotated_case
    editorNode, editorLogic = _segment_editor(logics.scene, seg, node, b)
    _editor_edit(editorLogic, seg, b, node, np.s_[5, 0:7, :])
    editor = SegmentIO.makeEditorLogic(logics.scene)
    editorNode.SetOverwriteMode(editorNode.OverwriteNone)
    editorNode.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedOutsideAllSegments)
    SegmentIO.writeSliceMask(editor, seg, a, node, 0, 5, np.ones((14, 16), bool))
    written = SegmentIO.segmentArray(seg, a, node)[5]
    np.testing.assert_array_equal(written, np.arange(14)[:, None] >= 7 + np.zeros((1, 16), bool))  # outside b
    assert SegmentIO.segmentArray(seg, b, node)[5].sum() == 7 * 16  # b kept
    own = editor.GetSegmentEditorNode()
    assert (own.GetOverwriteMode(), own.GetMaskMode()) == (editorNode.OverwriteNone, editorNode.GetMaskMode())
    editorNode.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere)
    editorNode.SetSourceVolumeIntensityMask(True)
    editorNode.SetSourceVolumeIntensityMaskRange(0, 49)
    SegmentIO.writeSliceMask(editor, seg, a, node, 0, 6, np.ones((14, 16), bool))
    np.testing.assert_array_equal(SegmentIO.segmentArray(seg, a, node)[6], mrml.slicer_array(node)[6] <= 49)
    editorNode.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
    editorNode.SetMaskSegmentID("not-here")  # e.g. a segment of the segmentation the Segment Editor shows
    before = SegmentIO.segmentArray(seg, a, node)
    with pytest.raises(ValueError, match="editable area"):
        SegmentIO.writeSliceMask(editor, seg, a, node, 0, 7, np.ones((14, 16), bool))
    np.testing.assert_array_equal(SegmentIO.segmentArray(seg, a, node), before)


def test_undo_restores_exactly_and_keeps_the_segment_editor_edits(rotated_case):
    logics, node, seg, (a, b) = rotated_case
    editorNode, editorLogic = _segment_editor(logics.scene, seg, node, b)
    editor = SegmentIO.makeEditorLogic(logics.scene)
    first = np.zeros((14, 16), bool)
    first[2:9, 3:12] = True
    SegmentIO.writeSliceMask(editor, seg, a, node, 0, 4, first)
    _editor_edit(editorLogic, seg, b, node, np.s_[3:6, 5:10, 2:7])  # overwrites part of a on slice 4
    before = [SegmentIO.segmentArray(seg, s, node) for s in (a, b)]
    SegmentIO.writeSliceMask(editor, seg, a, node, 0, 4, np.ones((14, 16), bool))  # takes b's voxels on slice 4
    assert SegmentIO.segmentArray(seg, b, node)[4].sum() == 0
    assert SegmentIO.undo(editor)
    for segment_id, expected in zip((a, b), before, strict=True):
        np.testing.assert_array_equal(SegmentIO.segmentArray(seg, segment_id, node), expected)
    assert editorNode.GetSelectedSegmentID() == b and editorLogic.CanUndo()
    editorLogic.Undo()  # the Segment Editor's own undo still takes back its edit, and only it
    assert SegmentIO.segmentArray(seg, b, node).sum() == 0
    np.testing.assert_array_equal(geometry.extract_slice(SegmentIO.segmentArray(seg, a, node), 0, 4), first)
