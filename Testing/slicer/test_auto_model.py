"""SAMMedAuto with the real LiteMedSAM on the shared CT, through real MRML (slicer-core) and the worker process.

From one prompted axial liver slice, the Lib's propagation in the worker + accept must give the same segment as
calling the core ``sammed.propagate.propagate`` (what ``sammed propagate`` runs) on the same input; user slices stay
bit-identical, one undo restores the segment, and a re-run encodes nothing. The propagation is limited to a window
of slices around the prompt so a fresh CI (no embedding cache) encodes only 10 slices.
"""

from __future__ import annotations

import os
import time

import mrml
import numpy as np
from data import CT_LABEL_IDS
from SAMMedAutoLib import AutoReview as review_module
from SAMMedAutoLib.AutoReview import AutoReview

from sammed import prompt_encoders
from sammed.prompts import Prompts
from sammed.segmenter import Segmenter
from SAMMedLib import SegmentIO
from SAMMedLib.ModelSession import ModelSession
from SAMMedLib.ModelSession import SessionJobs

PROMPT_SLICE = 92  # axial slice in the middle of the liver (liver spans 69-111 on this CT)
SLICE_RANGE = (87, 97)


def test_liver_accept_matches_core_propagation(ct_volume, ct_labels, litemedsam, shared_cache):
    from sammed.propagate import propagate

    liver = ct_labels.array_kji == CT_LABEL_IDS["liver"]
    logics = mrml.make_scene()
    volume_node = mrml.add_volume(logics.scene, ct_volume, name="CT")
    seg_node, (seg_id,) = mrml.add_segmentation(logics.scene, volume_node, names=("liver",))
    editor = SegmentIO.makeEditorLogic(logics.scene, appLogic=logics.app_logic)
    session = ModelSession(logics.scene)
    session.configure("litemedsam", "cpu", "auto", os.environ.get("SAMMED_TEST_CACHE"))
    segmenter = session.segmenter(volume_node)  # in the worker process
    local = Segmenter(ct_volume, litemedsam, cache=shared_cache)  # the core in this process, with the prompt
    local.base_prompt_encoder = prompt_encoders.resolve(litemedsam)  # encoder the worker and sammed propagate use

    # one prompted slice: a tight box from the reference label on the prompt slice
    rows, cols = np.nonzero(liver[PROMPT_SLICE])
    box = [cols.min(), rows.min(), cols.max(), rows.max()]
    seed = segmenter.segment(0, PROMPT_SLICE, Prompts.make(box_xyxy=box)).mask_hw
    np.testing.assert_array_equal(seed, local.segment(0, PROMPT_SLICE, box_xyxy=box).mask_hw)
    user = np.zeros(ct_volume.shape_kji, dtype=bool)
    user[PROMPT_SLICE] = seed
    SegmentIO.setSegmentMask(seg_node, seg_id, user, volume_node)

    def encodes() -> int:
        return session.client.call("status")["cache"]["encodes"]

    encodes0 = encodes()
    t0 = time.perf_counter()
    review = AutoReview(seg_node, seg_id, volume_node, worker=SessionJobs(session, "SAMMedAuto"))
    review.start(segmenter, axis=0, generator="sliding", sliceRange=SLICE_RANGE)
    assert review.wait(300) == review_module.DONE, review.error
    first_seconds = time.perf_counter() - t0
    written = review.accept(editor)
    accepted = SegmentIO.segmentMask(seg_node, seg_id, volume_node)

    # the core on the same input (what `sammed propagate` computes)
    reference = propagate(local, {PROMPT_SLICE: seed}, axis=0, generator="sliding", slice_range=SLICE_RANGE)
    lo, hi = SLICE_RANGE
    window = np.zeros_like(liver)
    window[lo : hi + 1] = True
    d_lib = mrml.dice(accepted & window, liver & window)
    d_core = mrml.dice(reference.mask_kji & window, liver & window)
    d_between = mrml.dice(accepted, reference.mask_kji)
    counts = review.result.counts()
    print(
        f"\nliver slices {lo}-{hi} from slice {PROMPT_SLICE}: Dice vs label  lib {d_lib:.4f}  core {d_core:.4f}; "
        f"lib vs core {d_between:.4f}; written voxels {written}; records {counts}; "
        f"first run {first_seconds:.1f} s, encoded {review.result.encoded}"
    )
    assert abs(d_lib - d_core) <= 0.01
    assert d_between >= 0.99
    assert d_core > 0.85  # sanity: the propagation found the liver
    np.testing.assert_array_equal(accepted[PROMPT_SLICE], seed)  # the user slice is bit-identical

    # one undo restores the segment exactly
    assert SegmentIO.undo(editor)
    np.testing.assert_array_equal(SegmentIO.segmentMask(seg_node, seg_id, volume_node), user)
    assert encodes() - encodes0 == review.result.encoded

    # a second run encodes nothing
    encodes1 = encodes()
    again = AutoReview(seg_node, seg_id, volume_node, worker=SessionJobs(session, "SAMMedAuto"))
    again.start(segmenter, axis=0, generator="sliding", sliceRange=SLICE_RANGE)
    assert again.wait(300) == review_module.DONE, again.error
    assert again.result.encoded == 0 and encodes() == encodes1
    np.testing.assert_array_equal(again.result.mask_kji, review.result.mask_kji)
    again.reject()
    assert seg_node.GetSegmentation().GetNumberOfSegments() == 1
    session.cleanup()
