"""SAMMedAutoLib against real MRML (slicer-core): propagate, live preview, review rows, accept with undo, cancel.

These tests use a small fake propagation function (deterministic, numpy) on a synthetic volume with the analytic
``FakeBackend``, so the bookkeeping can be checked exactly. The real model on the shared CT is in
``test_auto_model.py``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from dataclasses import field

import mrml
import numpy as np
import pytest
from SAMMedAutoLib import AutoReview as review_module
from SAMMedAutoLib.AutoReview import AutoReview

from sammed import geometry
from sammed.backends.fake import FakeBackend
from sammed.io import Volume
from sammed.segmenter import Segmenter
from SAMMedLib import SegmentIO

SHAPE = (20, 32, 40)  # K, J, I
BRIGHT = 300


@dataclass
class FakeRecord:
    index: int
    status: str
    prompt: dict
    iou: float
    area: int


@dataclass
class FakeResult:
    mask_kji: np.ndarray
    axis: int
    records: list = field(default_factory=list)
    cancelled: bool = False
    encoded: int = 0


def fake_propagate(
    segmenter,
    user_masks,
    axis=0,
    generator="sliding",
    config=None,
    slice_range=None,
    progress=None,
    should_stop=None,
    on_slice=None,
    gate=None,
):
    """Outward from the user slices: one positive point at the user mask centroid on every slice in range.

    A slice whose centroid pixel is background is ``stopped``; iou = fraction of the mask that is bright.
    ``gate(index)`` (tests only) is called before each slice.
    """
    if not user_masks:
        raise ValueError("no user slices")
    vol = segmenter.volume.array_kji
    n = vol.shape[axis]
    first, last = slice_range if slice_range is not None else (0, n - 1)
    seed = min(user_masks)
    rows, cols = np.nonzero(user_masks[seed])
    point = np.array([[cols.mean(), rows.mean()]])
    mask_kji = np.zeros(vol.shape, dtype=bool)
    for i, m in user_masks.items():
        geometry.insert_slice(mask_kji, axis, i, m)
    todo = [i for i in range(first, last + 1) if i not in user_masks]
    records = [FakeRecord(i, "user", {}, 1.0, int(m.sum())) for i, m in user_masks.items()]
    encoded = 0
    cancelled = False
    for count, i in enumerate(todo):
        if should_stop is not None and should_stop():
            cancelled = True
            break
        if gate is not None:
            gate(i)
        image = geometry.extract_slice(vol, axis, i)
        if image[int(round(point[0, 1])), int(round(point[0, 0]))] < BRIGHT / 2:
            records.append(FakeRecord(i, "stopped", {"points_xy": point.tolist()}, 0.0, 0))
            mask_hw = None
        else:
            encoded += 0 if segmenter.is_cached(axis, i) else 1
            mask_hw = segmenter.segment(axis, i, points_xy=point, point_labels=[1]).mask_hw
            iou = float((image[mask_hw] >= BRIGHT / 2).mean())
            geometry.insert_slice(mask_kji, axis, i, mask_hw)
            records.append(FakeRecord(i, "generated", {"points_xy": point.tolist()}, iou, int(mask_hw.sum())))
        if on_slice is not None:
            on_slice(records[-1], mask_hw)
        if progress is not None:
            progress((count + 1) / len(todo), f"slice {i}")
    records.sort(key=lambda r: r.index)
    return FakeResult(mask_kji, axis, records, cancelled, encoded)


def synthetic_volume() -> Volume:
    """A bright box (slices 4-15, rows 8-23, columns 10-29) on a dark background, 2 x 2 x 3 mm voxels."""
    arr = np.zeros(SHAPE, dtype=np.int16)
    arr[4:16, 8:24, 10:30] = BRIGHT
    arr[4:16, 8:24, 10:13] = BRIGHT // 2 - 10  # a dim border: lowers the fake "iou" near it
    return Volume(arr, spacing_ijk=(2.0, 2.0, 3.0), origin_lps=(10.0, -20.0, 5.0), name="box")


@dataclass
class AutoCase:
    """The synthetic box in a real scene: volume node, a segmentation with one segment, an editor logic, and a
    segmenter with the analytic backend."""

    logics: mrml.SceneLogics
    volume: Volume
    volume_node: object
    seg_node: object
    seg_id: str
    editor: object
    backend: FakeBackend
    segmenter: Segmenter


@pytest.fixture
def case():
    logics = mrml.make_scene()
    volume = synthetic_volume()
    volume_node = mrml.add_volume(logics.scene, volume, name="box")
    seg_node, (seg_id,) = mrml.add_segmentation(logics.scene, volume_node, names=("target",))
    editor = SegmentIO.makeEditorLogic(logics.scene, appLogic=logics.app_logic)
    backend = FakeBackend(radius=5.0)
    yield AutoCase(logics, volume, volume_node, seg_node, seg_id, editor, backend, Segmenter(volume, backend))
    logics.scene.Clear(1)


def draw_user_slices(seg_node, seg_id, volume_node, indices):
    """A 6x8 rectangle on each of the given slices (axis 0), written directly; returns the KJI mask."""
    mask = np.zeros(SHAPE, dtype=bool)
    for i in indices:
        mask[i, 12:18, 16:24] = True
    SegmentIO.setSegmentMask(seg_node, seg_id, mask, volume_node)
    return mask


def run(review, segmenter, **kwargs):
    review.start(segmenter, **kwargs)
    state = review.wait(30)
    return state


def test_user_slices_preview_rows_accept_and_undo(case):
    before = draw_user_slices(case.seg_node, case.seg_id, case.volume_node, [8, 11])
    review = AutoReview(case.seg_node, case.seg_id, case.volume_node, propagateFn=fake_propagate)
    assert run(review, case.segmenter, axis=0, sliceRange=(2, 17)) == review_module.DONE
    assert review.userSlices == [8, 11]
    gen = review.generatedSlices()
    assert gen == [4, 5, 6, 7, 9, 10, 12, 13, 14, 15]
    # preview: a separate segment holding exactly the generated slices of the result
    preview = SegmentIO.segmentMask(case.seg_node, review.previewSegmentID, case.volume_node)
    expected_gen = review.result.mask_kji & SegmentIO.slicesMask(SHAPE, 0, gen)
    np.testing.assert_array_equal(preview, expected_gen)
    assert case.seg_node.GetSegmentation().GetSegment(review.previewSegmentID).GetName() == "target (preview)"
    # the segment itself is untouched until accept
    np.testing.assert_array_equal(SegmentIO.segmentMask(case.seg_node, case.seg_id, case.volume_node), before)
    rows = review.rows(lowConfidence=0.95)
    assert [r.index for r in rows] == list(range(2, 18))
    status = {r.index: r.status for r in rows}
    assert status[8] == status[11] == "user" and status[2] == status[17] == "stopped" and status[9] == "generated"
    assert all(np.isnan(r.iou) for r in rows if r.status == "user")
    flagged = [r.index for r in rows if r.flagged]
    assert flagged == [], "centroid disk stays inside the bright box: no low-confidence slice"

    written = review.accept(case.editor)
    after = SegmentIO.segmentMask(case.seg_node, case.seg_id, case.volume_node)
    assert written == int(expected_gen.sum()) > 0
    np.testing.assert_array_equal(after[[8, 11]], before[[8, 11]])  # user slices bit-identical
    np.testing.assert_array_equal(after, before | expected_gen)
    assert case.seg_node.GetSegmentation().GetSegment(review.previewSegmentID or "none") is None
    assert case.seg_node.GetSegmentation().GetNumberOfSegments() == 1  # preview removed
    assert SegmentIO.undo(case.editor)
    np.testing.assert_array_equal(SegmentIO.segmentMask(case.seg_node, case.seg_id, case.volume_node), before)


def test_live_preview_updates_as_slices_arrive(case):
    draw_user_slices(case.seg_node, case.seg_id, case.volume_node, [10])
    release = threading.Event()
    reached = threading.Event()

    def gate(index):
        if index == 13:
            reached.set()
            release.wait(10)

    def gated(*args, **kwargs):
        return fake_propagate(*args, gate=gate, **kwargs)

    review = AutoReview(case.seg_node, case.seg_id, case.volume_node, propagateFn=gated)
    review.start(case.segmenter, axis=0, sliceRange=(4, 15))
    assert reached.wait(10)
    assert review.poll() == review_module.RUNNING
    live = geometry.foreground_slices(
        SegmentIO.segmentMask(case.seg_node, review.previewSegmentID, case.volume_node), 0
    )
    assert live == [4, 5, 6, 7, 8, 9, 11, 12]  # decoded so far; user slice 10 is not in the preview
    assert [r.index for r in review.rows() if r.status == "generated"] == live
    assert 0.0 < review.fraction < 1.0
    release.set()
    assert review.wait(10) == review_module.DONE
    final = geometry.foreground_slices(
        SegmentIO.segmentMask(case.seg_node, review.previewSegmentID, case.volume_node), 0
    )
    assert final == [4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15]
    assert review.fraction == 1.0


def test_cancel_leaves_segment_untouched_and_preview_removable(case):
    case.backend.encode_delay = 0.05
    before = draw_user_slices(case.seg_node, case.seg_id, case.volume_node, [10])
    review = AutoReview(case.seg_node, case.seg_id, case.volume_node, propagateFn=fake_propagate)
    review.start(case.segmenter, axis=0)
    deadline = time.time() + 10
    while case.backend.encode_calls < 2 and time.time() < deadline:
        time.sleep(0.01)
    review.cancel()
    assert review.wait(10) == review_module.CANCELLED
    assert review.result.cancelled and 0 < len(review.generatedSlices()) < 11
    np.testing.assert_array_equal(SegmentIO.segmentMask(case.seg_node, case.seg_id, case.volume_node), before)
    assert case.seg_node.GetSegmentation().GetSegment(review.previewSegmentID) is not None
    with pytest.raises(RuntimeError, match="cancelled run"):
        review.accept(case.editor)
    review.reject()
    assert case.seg_node.GetSegmentation().GetNumberOfSegments() == 1
    np.testing.assert_array_equal(SegmentIO.segmentMask(case.seg_node, case.seg_id, case.volume_node), before)
    assert not review.worker.busy


def test_accept_honours_overwrite_mode(case):
    draw_user_slices(case.seg_node, case.seg_id, case.volume_node, [10])
    other_id = case.seg_node.GetSegmentation().AddEmptySegment("other", "other")
    other = np.zeros(SHAPE, dtype=bool)
    other[5:15, 14:16, 18:22] = True  # overlaps the generated disks and user slice 10
    SegmentIO.setSegmentMask(case.seg_node, other_id, other, case.volume_node)
    editor_node = case.editor.GetSegmentEditorNode()
    for mode, keeps in ((editor_node.OverwriteNone, True), (editor_node.OverwriteAllSegments, False)):
        editor_node.SetOverwriteMode(mode)
        SegmentIO.setSegmentMask(case.seg_node, other_id, other, case.volume_node)
        review = AutoReview(case.seg_node, case.seg_id, case.volume_node, propagateFn=fake_propagate)
        assert run(review, case.segmenter, axis=0, sliceRange=(6, 12)) == review_module.DONE
        review.accept(case.editor)
        now_other = SegmentIO.segmentMask(case.seg_node, other_id, case.volume_node)
        gen = SegmentIO.slicesMask(SHAPE, 0, review.generatedSlices())
        if keeps:
            np.testing.assert_array_equal(now_other, other)
        else:
            assert not (now_other & gen & review.result.mask_kji).any()
            np.testing.assert_array_equal(now_other[10], other[10])  # the user slice is not written
            np.testing.assert_array_equal(now_other & ~gen, other & ~gen)
        assert SegmentIO.undo(case.editor)


def test_accept_honours_masking(case):
    draw_user_slices(case.seg_node, case.seg_id, case.volume_node, [10])
    allowed_id = case.seg_node.GetSegmentation().AddEmptySegment("allowed", "allowed")
    allowed = np.zeros(SHAPE, dtype=bool)
    allowed[:, :, :20] = True
    SegmentIO.setSegmentMask(case.seg_node, allowed_id, allowed, case.volume_node)
    editor_node = case.editor.GetSegmentEditorNode()
    editor_node.SetOverwriteMode(editor_node.OverwriteNone)
    editor_node.SetMaskMode(slicer_scene_mask_mode("PaintAllowedInsideSingleSegment"))
    editor_node.SetMaskSegmentID(allowed_id)
    review = AutoReview(case.seg_node, case.seg_id, case.volume_node, propagateFn=fake_propagate)
    assert run(review, case.segmenter, axis=0, sliceRange=(6, 12)) == review_module.DONE
    review.accept(case.editor)
    after = SegmentIO.segmentMask(case.seg_node, case.seg_id, case.volume_node)
    gen = SegmentIO.slicesMask(SHAPE, 0, review.generatedSlices())
    np.testing.assert_array_equal(after & gen, review.result.mask_kji & gen & allowed)
    assert (review.result.mask_kji & gen & ~allowed).any()  # the mask really cut something
    np.testing.assert_array_equal(after[10], review.result.mask_kji[10])  # user slice as drawn
    # masking is computed for the editor node's selected segment: the accept selected the target, not the preview
    assert editor_node.GetSelectedSegmentID() == case.seg_id


def slicer_scene_mask_mode(name):
    import slicer

    return getattr(slicer.vtkMRMLSegmentationNode, "EditAllowed" + name[len("PaintAllowed") :])


def test_rerun_keeps_corrections_replaces_generated_and_encodes_nothing(case):
    draw_user_slices(case.seg_node, case.seg_id, case.volume_node, [10])
    review = AutoReview(case.seg_node, case.seg_id, case.volume_node, propagateFn=fake_propagate)
    assert run(review, case.segmenter, axis=0, sliceRange=(4, 15)) == review_module.DONE
    first_encodes = case.backend.encode_calls
    assert first_encodes == review.result.encoded == 11
    review.accept(case.editor)
    # the user corrects generated slice 6
    corrected = np.zeros(SHAPE[1:], dtype=bool)
    corrected[9:22, 11:28] = True
    edited = SegmentIO.segmentMask(case.seg_node, case.seg_id, case.volume_node)
    edited[6] = corrected
    SegmentIO.setSegmentMask(case.seg_node, case.seg_id, edited, case.volume_node)
    before = SegmentIO.segmentMask(case.seg_node, case.seg_id, case.volume_node)

    again = AutoReview(case.seg_node, case.seg_id, case.volume_node, propagateFn=fake_propagate)
    assert run(again, case.segmenter, axis=0, sliceRange=(4, 15)) == review_module.DONE
    assert again.userSlices == [6, 10]  # the corrected slice is now a user slice
    assert again.replaceableSlices == [4, 5, 7, 8, 9, 11, 12, 13, 14, 15]
    assert case.backend.encode_calls == first_encodes and again.result.encoded == 0  # embeddings reused
    again.accept(case.editor)
    after = SegmentIO.segmentMask(case.seg_node, case.seg_id, case.volume_node)
    np.testing.assert_array_equal(after[6], corrected)
    np.testing.assert_array_equal(after[10], before[10])
    gen = SegmentIO.slicesMask(SHAPE, 0, again.generatedSlices())
    np.testing.assert_array_equal(after & gen, again.result.mask_kji & gen)
    assert SegmentIO.undo(case.editor)
    np.testing.assert_array_equal(SegmentIO.segmentMask(case.seg_node, case.seg_id, case.volume_node), before)


def test_errors_and_failed_job(case):
    review = AutoReview(case.seg_node, case.seg_id, case.volume_node, propagateFn=fake_propagate)
    with pytest.raises(ValueError, match="no annotated slice"):
        review.start(case.segmenter, axis=0)
    draw_user_slices(case.seg_node, case.seg_id, case.volume_node, [10])
    with pytest.raises(ValueError, match="outside"):
        review.start(case.segmenter, axis=0, sliceRange=(5, 40))
    with pytest.raises(ValueError, match="segmenter's volume"):
        review.start(Segmenter(Volume(np.zeros((3, 4, 5), np.int16)), case.backend), axis=0)
    with pytest.raises(ValueError, match="segment"):
        AutoReview(case.seg_node, "nope", case.volume_node)

    def broken(*args, **kwargs):
        raise ValueError("Generator 'x' is unknown.")

    failing = AutoReview(case.seg_node, case.seg_id, case.volume_node, propagateFn=broken)
    assert run(failing, case.segmenter, axis=0) == review_module.FAILED
    assert failing.error == "Generator 'x' is unknown."
    with pytest.raises(RuntimeError, match="no finished propagation"):
        failing.accept(case.editor)
    failing.reject()
    assert case.seg_node.GetSegmentation().GetNumberOfSegments() == 1

    def cancelled_by_raising(*args, **kwargs):
        from sammed.jobs import Cancelled

        raise Cancelled()

    stopped = AutoReview(case.seg_node, case.seg_id, case.volume_node, propagateFn=cancelled_by_raising)
    assert run(stopped, case.segmenter, axis=0) == review_module.CANCELLED
    assert stopped.result is None
    assert [(r.index, r.status) for r in stopped.rows()] == [(10, "user")]
    stopped.reject()
    assert case.seg_node.GetSegmentation().GetNumberOfSegments() == 1


def test_roi_range_and_slice_position(case):
    from SAMMedLib import VolumeAccess

    matrix = VolumeAccess.ijkToWorldMatrix(case.volume_node)
    roi = case.logics.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "range")
    # centre on voxel (I, J, K) = (20, 16, 9), 3 slices (9 mm) thick along K, i.e. K 8..10
    center = matrix @ np.array([20.0, 16.0, 9.0, 1.0])
    roi.SetCenter(*center[:3])
    roi.SetSize(10.0, 10.0, 9.0)
    assert VolumeAccess.sliceRangeFromROI(roi, case.volume_node, 0) == (8, 10)
    assert VolumeAccess.sliceRangeFromROI(roi, case.volume_node, 2) == (18, 22)  # I 17.5..22.5 with 2 mm voxels
    x, y, z = VolumeAccess.sliceCenterRAS(case.volume_node, 0, 7)
    ijk = np.linalg.inv(matrix) @ np.array([x, y, z, 1.0])
    np.testing.assert_allclose(ijk[:3], [19.5, 15.5, 7.0], atol=1e-9)
    roi.SetCenter(1000.0, 1000.0, 1000.0)
    with pytest.raises(ValueError, match="does not overlap"):
        VolumeAccess.sliceRangeFromROI(roi, case.volume_node, 0)


def test_real_propagate_with_fake_backend_fills_the_box(case):
    """The default propagate function (sammed.propagate, sliding window) through the Lib, analytic backend."""
    box = case.volume.array_kji >= BRIGHT // 2 - 10
    user = np.zeros(SHAPE, dtype=bool)
    user[10] = box[10]
    SegmentIO.setSegmentMask(case.seg_node, case.seg_id, user, case.volume_node)
    review = AutoReview(
        case.seg_node, case.seg_id, case.volume_node
    )  # propagateFn defaults to sammed.propagate.propagate
    assert run(review, case.segmenter, axis=0, generator="sliding") == review_module.DONE, review.error
    assert review.generatedSlices() == [4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15]
    assert {r.status for r in review.rows() if r.index in (3, 16)} <= {"skipped", "stopped", "empty"}
    review.accept(case.editor)
    expected = case.volume.array_kji == BRIGHT  # the analytic decoder keeps voxels near the box median (not the border)
    expected[10] = box[10]  # the user slice as drawn
    np.testing.assert_array_equal(SegmentIO.segmentMask(case.seg_node, case.seg_id, case.volume_node), expected)


def test_slices_arrive_one_by_one_and_the_learned_encoder_choice_applies_to_this_run(case):
    """The job posts each final slice (``propagate``'s ``on_slice``) before the result; ``config.use_learned``
    reaches every decode of this run and leaves the segmenter's own setting alone."""
    from sammed.propagate import PropagationConfig

    user = np.zeros(SHAPE, dtype=bool)
    user[10] = case.volume.array_kji[10] == BRIGHT
    SegmentIO.setSegmentMask(case.seg_node, case.seg_id, user, case.volume_node)
    seen = []
    original = case.segmenter.segment

    def spy(*args, **kwargs):
        seen.append(kwargs.get("use_learned"))
        return original(*args, **kwargs)

    case.segmenter.segment = spy
    review = AutoReview(case.seg_node, case.seg_id, case.volume_node)
    review.start(case.segmenter, axis=0, config=PropagationConfig(use_learned=False), sliceRange=(8, 12))
    assert review.worker.wait_idle(10)
    events = [e for e in review.worker.drain() if e.kind != "progress"]
    assert [e.kind for e in events] == ["partial"] * 4 + ["done"]
    assert [e.result[0] for e in events[:-1]] == [11, 12, 9, 8]  # up from the seed, then down
    assert all(e.result[1] == "generated" and e.result[2].shape == SHAPE[1:] for e in events[:-1])
    assert seen and set(seen) == {False} and case.segmenter.use_learned is True
    review.close()


def test_cancel_with_real_propagate(case):
    """Cancel through the real sammed.propagate: partial result, segment untouched, preview removable."""
    case.backend.encode_delay = 0.1
    user = np.zeros(SHAPE, dtype=bool)
    user[10] = case.volume.array_kji[10] == BRIGHT
    SegmentIO.setSegmentMask(case.seg_node, case.seg_id, user, case.volume_node)
    review = AutoReview(case.seg_node, case.seg_id, case.volume_node)
    review.start(case.segmenter, axis=0, generator="sliding")
    deadline = time.time() + 10
    while case.backend.encode_calls < 3 and time.time() < deadline:
        time.sleep(0.01)
    review.cancel()
    assert review.wait(10) == review_module.CANCELLED
    assert review.result.cancelled and case.backend.encode_calls < 12
    np.testing.assert_array_equal(SegmentIO.segmentMask(case.seg_node, case.seg_id, case.volume_node), user)
    preview = SegmentIO.segmentMask(case.seg_node, review.previewSegmentID, case.volume_node)
    assert not (preview & user).any()
    review.reject()
    assert case.seg_node.GetSegmentation().GetNumberOfSegments() == 1
