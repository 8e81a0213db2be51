"""Background embedding: the Worker thread alone, and the Annotator's reaction to volume removal / scene close
(real MRML from slicer-core, fake analytic backend; the widget's QTimer is replaced by explicit poll() calls)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from conftest import require

slicer = require("slicer", "real MRML needs slicer-core: run bash scripts/test.sh (pip install slicer-core)")

import slicer_scene  # noqa: E402
from sammed.backends.fake import FakeBackend  # noqa: E402
from sammed.cache import EmbeddingCache  # noqa: E402
from sammed.io import Volume  # noqa: E402
from SAMMedAnnotatorLib.Annotator import Annotator  # noqa: E402
from SAMMedAnnotatorLib.Worker import Worker  # noqa: E402


def _wait_for(predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_worker_runs_jobs_in_order_and_reports_results():
    worker = Worker()
    try:
        ids = [worker.submit("square", lambda p, s, v=v: np.full(2, v * v)) for v in range(3)]
        assert worker.waitIdle(5)
        done = [e for e in worker.drain() if e.kind == "done"]
        assert [e.jobId for e in done] == ids
        np.testing.assert_array_equal(done[2].result, [4, 4])
        assert worker.alive
    finally:
        worker.shutdown()
    assert not worker.alive


def test_worker_cancel_stops_running_job_and_drops_queue_then_accepts_new_work():
    worker = Worker()
    started = threading.Event()
    steps = []

    def slow(progress, should_stop):
        started.set()
        for i in range(500):
            if should_stop():
                from sammed.jobs import Cancelled

                raise Cancelled(partial=i)
            steps.append(i)
            progress(i / 500, f"step {i}")
            time.sleep(0.005)
        return "finished"

    try:
        first = worker.submit("slow", slow)
        queued = worker.submit("slow", slow)
        assert started.wait(5)
        assert worker.cancel() == 2
        assert worker.waitIdle(5)
        events = worker.drain()
        kinds = {(e.jobId, e.kind) for e in events if e.kind != "progress"}
        assert kinds == {(first, "cancelled"), (queued, "cancelled")}
        assert len(steps) < 500
        again = worker.submit("quick", lambda p, s: 7)
        assert worker.waitIdle(5)
        assert [(e.jobId, e.result) for e in worker.drain() if e.kind == "done"] == [(again, 7)]
    finally:
        worker.shutdown()


def test_worker_reports_failures_with_message():
    worker = Worker()
    try:
        def bad(progress, should_stop):
            raise ValueError("slice 99 is out of range")

        worker.submit("bad", bad)
        assert worker.waitIdle(5)
        (event,) = worker.drain()
        assert (event.kind, event.error) == ("failed", "slice 99 is out of range")
    finally:
        worker.shutdown()


@pytest.fixture
def cube_case():
    logics = slicer_scene.make_scene()
    arr = np.zeros((40, 48, 48), np.int16)
    arr[10:30, 12:36, 12:36] = 200
    volume = Volume(arr, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    node = slicer_scene.add_volume(logics.scene, volume)
    backend = FakeBackend(encode_delay=0.05)
    annotator = Annotator(logics.scene, backend=backend, cache=EmbeddingCache())
    annotator.setVolume(node)
    yield logics.scene, node, annotator, backend
    annotator.cleanup()
    logics.scene.Clear(1)


def test_precompute_encodes_outward_and_reports_progress(cube_case):
    scene, node, annotator, backend = cube_case
    annotator.precompute(0, 20, radius=2)
    assert annotator.worker.waitIdle(10)
    events = annotator.poll()
    assert [e.result for e in events if e.kind == "done"] == [(0, 20), (0, 21), (0, 19), (0, 22), (0, 18)]
    assert [annotator.isEncoded(0, i) for i in range(17, 24)] == [False, True, True, True, True, True, False]
    progress = [e.fraction for e in events if e.kind == "progress"]
    assert progress == sorted(progress) and progress[-1] == pytest.approx(1.0)


def test_removing_the_volume_cancels_embedding_and_releases_cache(cube_case):
    scene, node, annotator, backend = cube_case
    digest = annotator.segmenter.volume.digest
    annotator.precompute(0, 20, radius=None)  # 40 slices x 0.05 s
    assert _wait_for(lambda: backend.encode_calls >= 3)
    scene.RemoveNode(node)
    assert annotator.segmenter is None and annotator.volumeNodeID is None
    assert annotator.worker.waitIdle(5), "the running job stops within one slice"
    calls = backend.encode_calls
    time.sleep(0.3)
    assert backend.encode_calls == calls < 40
    events = annotator.poll()
    kinds = [e.kind for e in events if e.kind != "progress"]
    done = kinds.count("done")
    assert done in (calls - 1, calls) and kinds[:done] == ["done"] * done and set(kinds[done:]) == {"cancelled"}
    assert not any(k.digest == digest for k in annotator.cache._mem)
    assert annotator.cache.memory_bytes == 0
    assert annotator.worker.alive, "the worker thread survives for the next volume"


def test_closing_the_scene_cancels_and_releases(cube_case):
    scene, node, annotator, backend = cube_case
    annotator.precompute(0, 20, radius=None)
    assert _wait_for(lambda: backend.encode_calls >= 2)
    scene.Clear(0)
    assert annotator.segmenter is None
    assert annotator.worker.waitIdle(5)
    assert annotator.cache.memory_bytes == 0


def test_prompt_on_unencoded_slice_queues_encode_first_then_decodes(cube_case):
    scene, node, annotator, backend = cube_case
    from SAMMedAnnotatorLib.Annotator import SlicePrompts

    prompts = SlicePrompts(0, 15, box_xyxy=np.array([10.0, 10.0, 37.0, 37.0]))
    annotator.precompute(0, 35, radius=3)  # background work already queued
    assert annotator.segment(prompts, wait=False) is None
    assert annotator.requestEncode(0, 15) is None, "already queued"
    assert _wait_for(lambda: annotator.isEncoded(0, 15), 5)
    result = annotator.segment(prompts, wait=False)
    assert result is not None
    assert result.mask_hw.sum() == 24 * 24
    assert annotator.worker.waitIdle(10)
    # the prompted slice was encoded before the queued precompute slices
    order = [e for e in annotator.poll() if e.kind == "done"]
    assert order[0].name == "encode"


def test_slice_for_point_finds_the_view_a_prompt_was_placed_in(cube_case):
    scene, node, annotator, backend = cube_case
    from SAMMedAnnotatorLib import VolumeAccess

    red = slicer_scene.add_slice_node(scene, "Axial", "Red")
    green = slicer_scene.add_slice_node(scene, "Coronal", "Green")
    point = VolumeAccess.sliceXYToWorld(node, 1, 30, [[5.0, 12.0]])[0]
    green.SetSliceOffset(float(point[1]))
    red.SetSliceOffset(-999.0)
    assert annotator.sliceForPoint(node, point, [red, green]) == (1, 30)
    oblique = slicer_scene.add_slice_node(scene, "Axial", "Oblique")
    m = VolumeAccess.asArray4x4(oblique.GetSliceToRAS())
    c, s = np.cos(0.3), np.sin(0.3)
    m[:3, :3] = m[:3, :3] @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    m[:3, 3] = point
    oblique.GetSliceToRAS().DeepCopy(m.ravel())
    oblique.UpdateMatrices()
    with pytest.raises(ValueError, match="oblique"):
        annotator.sliceForPoint(node, point, [red, oblique])


def test_preview_shows_only_the_latest_mask_and_is_not_saved(cube_case):
    scene, node, annotator, backend = cube_case
    from SAMMedAnnotatorLib import SegmentWrite
    from SAMMedAnnotatorLib.Annotator import PREVIEW_NODE_NAME
    from SAMMedAnnotatorLib.Annotator import SlicePrompts

    first = annotator.segment(SlicePrompts(0, 15, box_xyxy=np.array([10.0, 10.0, 37.0, 37.0])))
    annotator.showPreview(first, node)
    second = annotator.segment(SlicePrompts(1, 24, box_xyxy=np.array([10.0, 5.0, 37.0, 35.0])))
    annotator.showPreview(second, node)
    preview = scene.GetFirstNodeByName(PREVIEW_NODE_NAME)
    assert not preview.GetSaveWithScene()
    shown = SegmentWrite.segmentArray(preview, "preview", node)
    assert shown.sum() == second.mask_hw.sum() > 0
    np.testing.assert_array_equal(shown[:, 24, :], second.mask_hw)
    annotator.clearPreview()
    assert scene.GetFirstNodeByName(PREVIEW_NODE_NAME) is None


def test_learn_case_needs_segmented_slices(cube_case):
    scene, node, annotator, backend = cube_case
    seg, (sid,) = slicer_scene.add_segmentation(scene, node, ("cube",))
    with pytest.raises(ValueError, match="Segment a few slices"):
        annotator.learnCase(seg, sid, axis=0)
