"""The real LiteMedSAM in a real worker process, through the Slicer-side session (slicer-core): a cancel stops an
encode in the middle, and a worker killed with SIGKILL in the middle of a propagation leaves the user's segment
untouched, after which the next request starts a new worker and succeeds."""

from __future__ import annotations

import os
import signal
import time

import mrml
import numpy as np
import pytest
from data import CT_LABEL_IDS
from SAMMedAutoLib import AutoReview as review_module
from SAMMedAutoLib.AutoReview import AutoReview

from sammed.prompts import Prompts
from SAMMedLib import SegmentIO
from SAMMedLib.ModelSession import ModelSession
from SAMMedLib.ModelSession import SessionJobs

PROMPT_SLICE = 92  # axial slice in the middle of the liver of the bundled CT

pytestmark = pytest.mark.model


@pytest.fixture
def ct_session(ct_volume, ct_labels, litemedsam):
    """The CT in a scene, a liver segment with one user slice, and a session whose worker keeps embeddings in
    memory only (so every slice here is really encoded)."""
    logics = mrml.make_scene()
    node = mrml.add_volume(logics.scene, ct_volume, name="CT")
    seg_node, (seg_id,) = mrml.add_segmentation(logics.scene, node, names=("liver",))
    session = ModelSession(logics.scene)
    session.configure("litemedsam", "cpu", "auto", None)
    segmenter = session.segmenter(node)
    session.client.call("load", timeout=300)
    liver = ct_labels.array_kji == CT_LABEL_IDS["liver"]
    rows, cols = np.nonzero(liver[PROMPT_SLICE])
    box = [cols.min(), rows.min(), cols.max(), rows.max()]
    user = np.zeros(ct_volume.shape_kji, dtype=bool)
    user[PROMPT_SLICE] = segmenter.segment(0, PROMPT_SLICE, Prompts.make(box_xyxy=box)).mask_hw
    SegmentIO.setSegmentMask(seg_node, seg_id, user, node)
    yield session, segmenter, node, seg_node, seg_id, user
    session.cleanup()
    logics.scene.Clear(1)


def test_cancel_stops_in_the_middle_of_an_encode(ct_session):
    session, segmenter, *_ = ct_session
    encodes = session.client.call("status")["cache"]["encodes"]
    assert session.precompute(segmenter, 0, PROMPT_SLICE - 20, radius=3) == 7
    (rid,) = session.client.pending()
    time.sleep(0.1)  # inside the first encode (0.3 s on 2 cores with OpenVINO, 1.5 s with torch)
    t0 = time.monotonic()
    session.cancel()
    events = []
    while not any(e.jobId == rid and e.kind == "cancelled" for e in events):
        assert time.monotonic() - t0 < 5, [(e.kind, e.name) for e in events]
        events += session.drain()
        time.sleep(0.005)
    took = time.monotonic() - t0
    print(f"\ncancel answered after {took:.3f} s")
    assert not any(e.kind == "partial" for e in events)
    assert session.client.call("status")["cache"]["encodes"] == encodes, "the encode in progress was abandoned"


def test_killed_worker_mid_propagation_leaves_the_segment_untouched(ct_session):
    session, segmenter, node, seg_node, seg_id, user = ct_session
    review = AutoReview(seg_node, seg_id, node, worker=SessionJobs(session, "SAMMedAuto"))
    review.start(segmenter, axis=0, generator="sliding", sliceRange=(PROMPT_SLICE - 6, PROMPT_SLICE + 6))
    end = time.monotonic() + 120
    while not review._live:  # the first propagated slice arrived
        assert time.monotonic() < end and review.poll() == review_module.RUNNING, review.error
        time.sleep(0.02)
    os.kill(session.client.pid, signal.SIGKILL)
    while review.poll() == review_module.RUNNING:
        assert time.monotonic() < end
        time.sleep(0.02)
    assert review.state == review_module.FAILED
    assert "stopped unexpectedly" in review.error and "unchanged" in review.error
    np.testing.assert_array_equal(SegmentIO.segmentMask(seg_node, seg_id, node), user)
    review.reject()
    assert seg_node.GetSegmentation().GetNumberOfSegments() == 1, "the preview is removed"

    again = AutoReview(seg_node, seg_id, node, worker=SessionJobs(session, "SAMMedAuto"))
    again.start(segmenter, axis=0, generator="sliding", sliceRange=(PROMPT_SLICE - 1, PROMPT_SLICE + 1))
    assert again.wait(300) == review_module.DONE, again.error
    assert again.generatedSlices() == [PROMPT_SLICE - 1, PROMPT_SLICE + 1]
    assert session.client.restarts == 1
    again.reject()
