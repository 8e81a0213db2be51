"""Background embedding through the annotator's session and its worker process: outward order, volume removal /
scene close, prompts on slices not encoded yet (encoded ahead of background work), preview, learning's
preconditions (real MRML from slicer-core, the analytic test model in a real worker process; the widget's QTimer is
replaced by explicit poll() calls)."""

from __future__ import annotations

import os
import time

import mrml
import numpy as np
import pytest
from SAMMedAnnotatorLib.Annotator import Annotator

from sammed.io import Volume
from sammed.prompts import Prompts
from sammed.worker.client import WorkerClient
from SAMMedLib.ModelSession import TEST_MODEL
from SAMMedLib.ModelSession import ModelSession


def _poll_until(annotator, predicate, timeout=10.0):
    """Poll (as the widget's timer does) until ``predicate(events so far)``; returns the events."""
    events = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        events += annotator.poll()
        if predicate(events):
            return events
        time.sleep(0.01)
    raise AssertionError(f"timed out; events: {[(e.name, e.kind) for e in events]}")


def _encodes(annotator) -> int:
    return annotator.worker.call("status")["cache"]["encodes"]


@pytest.fixture
def cube_case():
    logics = mrml.make_scene()
    arr = np.zeros((40, 48, 48), np.int16)
    arr[10:30, 12:36, 12:36] = 200
    volume = Volume(arr, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    node = mrml.add_volume(logics.scene, volume)
    client = WorkerClient(env={**os.environ, "SAMMED_FAKE_ENCODE_DELAY": "0.05"})
    annotator = Annotator(logics.scene, session=ModelSession(logics.scene, client, modelId=TEST_MODEL))
    annotator.setVolume(node)
    yield logics.scene, node, annotator
    annotator.session.cleanup()
    logics.scene.Clear(1)


def test_precompute_encodes_outward_and_reports_progress(cube_case):
    scene, node, annotator = cube_case
    annotator.precompute(0, 20, radius=2)
    events = _poll_until(annotator, lambda ev: any(e.kind == "done" and e.name == "precompute" for e in ev))
    cached = [(e.result["axis"], e.result["index"]) for e in events if e.kind == "partial"]
    assert cached == [(0, 20), (0, 21), (0, 19), (0, 22), (0, 18)]
    assert [annotator.isEncoded(0, i) for i in range(17, 24)] == [False, True, True, True, True, True, False]
    progress = [e.fraction for e in events if e.kind == "progress"]
    assert progress == sorted(progress) and progress[-1] == pytest.approx(1.0)
    assert _encodes(annotator) == 5


def test_removing_the_volume_cancels_embedding_and_releases_cache(cube_case):
    scene, node, annotator = cube_case
    annotator.precompute(0, 20, radius=None)  # 40 slices x 0.05 s
    events = _poll_until(annotator, lambda ev: sum(e.kind == "partial" for e in ev) >= 3)
    scene.RemoveNode(node)
    assert annotator.segmenter is None and annotator.volumeNodeID is None
    events += _poll_until(annotator, lambda ev: any(e.kind == "cancelled" for e in ev), timeout=5)
    assert annotator.worker.wait_idle(5), "the running job stops within one slice"
    status = annotator.worker.call("status")
    assert status["volumes"] == [] and status["cache"]["memory_bytes"] == 0
    assert 3 <= status["cache"]["encodes"] < 40
    assert annotator.worker.alive, "the worker survives for the next volume"


def test_closing_the_scene_cancels_and_releases(cube_case):
    scene, node, annotator = cube_case
    annotator.precompute(0, 20, radius=None)
    _poll_until(annotator, lambda ev: sum(e.kind == "partial" for e in ev) >= 2)
    scene.Clear(0)
    assert annotator.segmenter is None
    assert annotator.worker.wait_idle(5)
    assert annotator.worker.call("status")["cache"]["memory_bytes"] == 0


def test_prompt_on_unencoded_slice_is_encoded_ahead_of_background_work(cube_case):
    scene, node, annotator = cube_case
    prompts = Prompts.make(box_xyxy=[10.0, 10.0, 37.0, 37.0])
    annotator.precompute(0, 35, radius=3)  # background work already queued (7 slices)
    assert annotator.segment(0, 15, prompts, wait=False) is None
    assert annotator.requestEncode(0, 15) is None, "already asked for"
    events = _poll_until(annotator, lambda ev: annotator.isEncoded(0, 15), 5)
    assert not any(e.kind == "done" and e.name == "precompute" for e in events), "the prompt's slice went first"
    result = annotator.segment(0, 15, prompts, wait=False)
    assert result is not None
    assert result.mask_hw.sum() == 24 * 24
    assert not annotator.segmenter.lastEncoded, "the decode found the slice encoded"


def test_slice_for_point_finds_the_view_a_prompt_was_placed_in(cube_case):
    scene, node, annotator = cube_case
    from SAMMedLib import VolumeAccess

    red = mrml.add_slice_node(scene, "Axial", "Red")
    green = mrml.add_slice_node(scene, "Coronal", "Green")
    point = VolumeAccess.sliceXYToWorld(node, 1, 30, [[5.0, 12.0]])[0]
    green.SetSliceOffset(float(point[1]))
    red.SetSliceOffset(-999.0)
    assert annotator.sliceForPoint(node, point, [red, green]) == (1, 30)
    oblique = mrml.add_slice_node(scene, "Axial", "Oblique")
    m = VolumeAccess.asArray4x4(oblique.GetSliceToRAS())
    c, s = np.cos(0.3), np.sin(0.3)
    m[:3, :3] = m[:3, :3] @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    m[:3, 3] = point
    oblique.GetSliceToRAS().DeepCopy(m.ravel())
    oblique.UpdateMatrices()
    with pytest.raises(ValueError, match="oblique"):
        annotator.sliceForPoint(node, point, [red, oblique])


def test_preview_shows_only_the_latest_mask_and_is_not_saved(cube_case):
    scene, node, annotator = cube_case
    from SAMMedAnnotatorLib.Annotator import PREVIEW_NODE_NAME

    from SAMMedLib import SegmentIO

    first = annotator.segment(0, 15, Prompts.make(box_xyxy=[10.0, 10.0, 37.0, 37.0]))
    annotator.showPreview(first, node)
    second = annotator.segment(1, 24, Prompts.make(box_xyxy=[10.0, 5.0, 37.0, 35.0]))
    annotator.showPreview(second, node)
    preview = scene.GetFirstNodeByName(PREVIEW_NODE_NAME)
    assert not preview.GetSaveWithScene()
    shown = SegmentIO.segmentArray(preview, "preview", node)
    assert shown.sum() == second.mask_hw.sum() > 0
    np.testing.assert_array_equal(shown[:, 24, :], second.mask_hw)
    annotator.clearPreview()
    assert scene.GetFirstNodeByName(PREVIEW_NODE_NAME) is None


def test_learn_case_needs_segmented_slices(cube_case):
    scene, node, annotator = cube_case
    seg, (sid,) = mrml.add_segmentation(scene, node, ("cube",))
    with pytest.raises(ValueError, match="Segment a few slices"):
        annotator.learnCase(seg, sid, axis=0)


def test_sammed_auto_reuses_the_annotators_embeddings_through_the_shared_session(cube_case):
    """SAMMed Auto asks the session (not the annotator) for the volume's segmenter and runs in the same worker, so
    slices the annotator encoded are not encoded again by a propagation."""
    from SAMMedAutoLib.AutoReview import AutoReview

    from SAMMedLib import SegmentIO
    from SAMMedLib.ModelSession import SessionJobs

    scene, node, annotator = cube_case
    annotator.precompute(0, 20, radius=3)
    _poll_until(annotator, lambda ev: any(e.kind == "done" and e.name == "precompute" for e in ev))
    encoded = _encodes(annotator)
    segmenter = annotator.session.segmenter(node)
    assert segmenter is annotator.segmenter
    seg, (sid,) = mrml.add_segmentation(scene, node, ("cube",))
    user = np.zeros((40, 48, 48), bool)
    user[20, 12:36, 12:36] = True
    SegmentIO.setSegmentMask(seg, sid, user, node)
    review = AutoReview(seg, sid, node, worker=SessionJobs(annotator.session, "SAMMedAuto"))
    review.start(segmenter, axis=0, sliceRange=(17, 23))
    assert review.wait(30) == "done", review.error
    assert review.result.encoded == 0 and _encodes(annotator) == encoded
    assert review.generatedSlices() == [17, 18, 19, 21, 22, 23]
    assert all(e.name != "propagate" for e in annotator.poll()), "the review's events went to the review"
    review.close()


def test_prompt_markups_are_created_with_display_nodes(cube_case):
    """AddNewNodeByClass alone gives markups without a display node (slicer-core and the app's scene alike); the
    colours are set on display nodes created first."""
    from SAMMedAnnotatorLib.Annotator import PromptMarkups

    scene, node, annotator = cube_case
    markups = PromptMarkups()
    markups.create(scene)
    for markup in (markups.box, markups.positive, markups.negative):
        assert markup.GetDisplayNode() is not None
    assert markups.positive.GetDisplayNode().GetSelectedColor() != markups.negative.GetDisplayNode().GetSelectedColor()
    assert markups.box is not None and markups.box.IsA("vtkMRMLMarkupsROINode")
