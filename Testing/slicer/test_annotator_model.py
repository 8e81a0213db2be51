"""The annotator flow on the shared CT in a real MRML scene (slicer-core) with the real LiteMedSAM model in a real
worker process: view -> slice, ROI markup -> box, decode in the worker, write through the segment editor logic
(undo, masking, overwrite), SAMassist in the worker with cancel."""

from __future__ import annotations

import os
import time

import mrml
import numpy as np
import pytest
import slicer
from data import CT_IMAGE
from data import CT_LABEL_IDS
from data import CT_LABELS
from data import largest_slice
from SAMMedAnnotatorLib.Annotator import Annotator

from sammed import geometry
from sammed.io import read_volume
from SAMMedLib import SegmentIO
from SAMMedLib import VolumeAccess
from SAMMedLib.ModelSession import ModelSession

MIN_DICE = 0.90
VIEWS = {0: "Axial", 1: "Coronal"}


class CTCase:
    """The CT in a scene, its liver reference, a segmentation with liver + spleen segments, and an annotator."""

    def __init__(self) -> None:
        self.logics = mrml.make_scene()
        self.scene = self.logics.scene
        self.volume = read_volume(CT_IMAGE)
        self.liver_kji = read_volume(CT_LABELS).array_kji == CT_LABEL_IDS["liver"]
        self.volumeNode = mrml.add_volume(self.scene, self.volume)
        self.segNode, (self.liverID, self.otherID) = mrml.add_segmentation(
            self.scene, self.volumeNode, ("liver", "spleen")
        )
        session = ModelSession(self.scene)  # LiteMedSAM in a worker process, this Python
        session.configure("litemedsam", "cpu", "auto", os.environ.get("SAMMED_TEST_CACHE"))
        self.annotator = Annotator(self.scene, session=session, appLogic=self.logics.app_logic)
        self.annotator.setVolume(self.volumeNode)
        self.results = {}

    def box_prompt_on_view(self, axis: int):
        """Place an ROI around the reference liver on its largest slice of ``axis``, with a view showing that slice."""
        index = largest_slice(self.liver_kji, axis)
        ref_hw = geometry.extract_slice(self.liver_kji, axis, index)
        rows, cols = np.nonzero(ref_hw)
        corners = VolumeAccess.sliceXYToWorld(
            self.volumeNode, axis, index, [[cols.min(), rows.min()], [cols.max(), rows.max()]]
        )
        roi = self.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", f"box{axis}")
        roi.SetCenterWorld(*((corners[0] + corners[1]) / 2))
        roi.SetSizeWorld(*np.abs(corners[1] - corners[0]))
        view = mrml.add_slice_node(self.scene, VIEWS[axis], name=VIEWS[axis])
        normal = VolumeAccess.asArray4x4(view.GetSliceToRAS())[:3, 2]
        view.SetSliceOffset(float(np.dot((corners[0] + corners[1]) / 2, normal)))
        return view, roi, index, ref_hw

    def result(self, axis: int):
        """Model result for the liver box on the view of ``axis`` (decoded once per test module)."""
        if axis not in self.results:
            view, roi, index, ref_hw = self.box_prompt_on_view(axis)
            got_axis, got_index = self.annotator.sliceFromView(self.volumeNode, view.GetSliceToRAS())
            assert (got_axis, got_index) == (axis, index)
            prompts = self.annotator.promptsFromMarkups(self.volumeNode, got_axis, got_index, boxNode=roi)
            self.results[axis] = (self.annotator.segment(got_axis, got_index, prompts), ref_hw, prompts)
        return self.results[axis]

    def encodes(self) -> int:
        """Slices the worker has encoded so far."""
        return self.annotator.worker.call("status")["cache"]["encodes"]

    def segment_kji(self, segment_id: str) -> np.ndarray:
        return SegmentIO.segmentArray(self.segNode, segment_id, self.volumeNode)

    def clear(self) -> None:
        for sid in (self.liverID, self.otherID):
            self.segNode.GetSegmentation().RemoveSegment(sid)
        self.liverID = self.segNode.GetSegmentation().AddEmptySegment("liver", "liver")
        self.otherID = self.segNode.GetSegmentation().AddEmptySegment("spleen", "spleen")
        editor = self.annotator.editorLogic.GetSegmentEditorNode()
        editor.SetOverwriteMode(editor.OverwriteNone)
        editor.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere)
        editor.SetSourceVolumeIntensityMask(False)


@pytest.fixture(scope="module")
def ct_case(litemedsam):
    case = CTCase()
    yield case
    case.annotator.session.cleanup()
    case.scene.Clear(1)


@pytest.fixture
def case(ct_case):
    ct_case.clear()
    return ct_case


@pytest.mark.model
@pytest.mark.parametrize("axis", [0, 1], ids=["axial", "coronal"])
def test_box_on_view_gives_liver_segment(case, axis):
    result, ref_hw, prompts = case.result(axis)
    case.annotator.apply(result, case.segNode, case.liverID)
    written_kji = case.segment_kji(case.liverID)
    written_hw = geometry.extract_slice(written_kji, axis, result.index)
    d = mrml.dice(written_hw, ref_hw)
    print(f"liver {VIEWS[axis].lower()} slice {result.index}: box {prompts.box_xyxy.tolist()} Dice {d:.4f}")
    assert d >= MIN_DICE
    np.testing.assert_array_equal(written_hw, result.mask_hw)
    assert written_kji.sum() == written_hw.sum(), "only the prompted slice may change"


@pytest.mark.model
def test_second_prompt_on_same_slice_encodes_nothing(case):
    result, ref_hw, _ = case.result(0)
    encodes = case.encodes()
    rows, cols = np.nonzero(ref_hw)
    inside = np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2)
    positive = case.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "positive")
    positive.AddControlPointWorld(
        VolumeAccess.sliceXYToWorld(case.volumeNode, 0, result.index, [[cols[inside], rows[inside]]])[0]
    )
    prompts = case.annotator.promptsFromMarkups(case.volumeNode, 0, result.index, positiveNode=positive)
    again = case.annotator.segment(0, result.index, prompts, wait=False)
    assert again is not None, "a cached slice decodes at once"
    assert again.mask_hw.any()
    assert case.encodes() == encodes and not case.annotator.segmenter.lastEncoded
    case.scene.RemoveNode(positive)


@pytest.mark.model
def test_undo_restores_segment_exactly(case):
    axial, _, _ = case.result(0)
    coronal, _, _ = case.result(1)
    case.annotator.apply(coronal, case.segNode, case.liverID)
    before = case.segment_kji(case.liverID)
    case.annotator.apply(axial, case.segNode, case.liverID)
    assert not np.array_equal(case.segment_kji(case.liverID), before)
    assert case.annotator.undo()
    np.testing.assert_array_equal(case.segment_kji(case.liverID), before)


@pytest.mark.model
def test_masked_write_leaves_outside_of_editable_area_untouched(case):
    result, _, _ = case.result(0)
    axis, index = result.axis, result.index
    h, w = result.mask_hw.shape
    # existing liver voxels everywhere on the slice, and an editable area = the left half (a "spleen" segment)
    editor_logic = case.annotator.editorLogic
    full = np.ones((h, w), bool)
    SegmentIO.writeSliceMask(editor_logic, case.segNode, case.liverID, case.volumeNode, axis, index, full)
    area = np.zeros((h, w), bool)
    area[:, : w // 2] = True
    SegmentIO.writeSliceMask(editor_logic, case.segNode, case.otherID, case.volumeNode, axis, index, area)
    liver_before = case.segment_kji(case.liverID)
    editor = editor_logic.GetSegmentEditorNode()
    editor.SetOverwriteMode(editor.OverwriteNone)
    editor.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
    editor.SetMaskSegmentID(case.otherID)
    case.annotator.apply(result, case.segNode, case.liverID)
    after_hw = geometry.extract_slice(case.segment_kji(case.liverID), axis, index).astype(bool)
    before_hw = geometry.extract_slice(liver_before, axis, index).astype(bool)
    np.testing.assert_array_equal(after_hw[~area], before_hw[~area])
    np.testing.assert_array_equal(after_hw[area], result.mask_hw[area])
    # intensity range: only voxels within [0, 200] HU may change
    SegmentIO.writeSliceMask(editor_logic, case.segNode, case.liverID, case.volumeNode, axis, index, full)
    editor.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere)
    editor.SetSourceVolumeIntensityMask(True)
    editor.SetSourceVolumeIntensityMaskRange(0.0, 200.0)
    case.annotator.apply(result, case.segNode, case.liverID)
    image_hw = geometry.extract_slice(case.volume.array_kji, axis, index)
    editable = (image_hw >= 0) & (image_hw <= 200)
    after_hw = geometry.extract_slice(case.segment_kji(case.liverID), axis, index).astype(bool)
    assert after_hw[~editable].all(), "voxels outside the intensity range kept their state"
    np.testing.assert_array_equal(after_hw[editable], result.mask_hw[editable])


@pytest.mark.model
def test_overwrite_setting_decides_whether_other_segments_change(case):
    result, _, _ = case.result(0)
    axis, index = result.axis, result.index
    other_hw = np.zeros_like(result.mask_hw)
    other_hw[result.mask_hw.shape[0] // 3 :, :] = True  # overlaps part of the liver mask
    assert (other_hw & result.mask_hw).any()
    editor_logic = case.annotator.editorLogic
    SegmentIO.writeSliceMask(editor_logic, case.segNode, case.otherID, case.volumeNode, axis, index, other_hw)
    other_before = case.segment_kji(case.otherID)
    editor = editor_logic.GetSegmentEditorNode()
    editor.SetOverwriteMode(editor.OverwriteNone)
    case.annotator.apply(result, case.segNode, case.liverID)
    np.testing.assert_array_equal(case.segment_kji(case.otherID), other_before)
    editor.SetOverwriteMode(editor.OverwriteAllSegments)
    case.annotator.apply(result, case.segNode, case.liverID)
    other_after = case.segment_kji(case.otherID)
    expected = other_before.copy()
    geometry.insert_slice(expected, axis, index, (other_hw & ~result.mask_hw).astype(np.uint8))
    np.testing.assert_array_equal(other_after, expected)
    np.testing.assert_array_equal(
        geometry.extract_slice(case.segment_kji(case.liverID), axis, index), result.mask_hw.astype(np.uint8)
    )


@pytest.mark.model
def test_learn_this_case_runs_in_background_cancels_and_compares(case):
    from sammed import assist

    axial, ref_hw, prompts = case.result(0)
    index = axial.index
    editor_logic = case.annotator.editorLogic
    for i in (index, index - 6):  # two user slices (reference masks), on the axis of the view
        SegmentIO.writeSliceMask(
            editor_logic,
            case.segNode,
            case.liverID,
            case.volumeNode,
            0,
            i,
            geometry.extract_slice(case.liver_kji, 0, i),
        )
    segmenter = case.annotator.segmenter
    # cancel: stops within one step, nothing is attached
    case.annotator.learnCase(case.segNode, case.liverID, 0, config=assist.AssistConfig(steps=200, prompts_per_slice=1))
    end = time.monotonic() + 60
    while not any(e.kind == "progress" for e in case.annotator.poll()):
        assert time.monotonic() < end
        time.sleep(0.05)
    case.annotator.cancel()
    assert case.annotator.worker.wait_idle(30)
    assert [e.kind for e in case.annotator.poll() if e.kind not in ("progress", "partial")] == ["cancelled"]
    assert segmenter.prompt_encoder is None
    # a short fit: used once polled; use_learned switches between learned and original prompt encoders
    case.annotator.learnCase(case.segNode, case.liverID, 0, config=assist.AssistConfig(steps=2, prompts_per_slice=1))
    assert case.annotator.worker.wait_idle(60)
    assert [e.kind for e in case.annotator.poll() if e.kind not in ("progress", "partial")] == ["done"]
    assert segmenter.prompt_encoder is not None and segmenter.use_learned
    learned = case.annotator.segment(0, index, prompts)
    segmenter.use_learned = False
    original = case.annotator.segment(0, index, prompts)
    np.testing.assert_array_equal(original.mask_hw, axial.mask_hw)
    assert learned.mask_hw.any()
    segmenter.use_learned = True
