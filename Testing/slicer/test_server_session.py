"""The Slicer side against ``sammed serve`` (the "compute on a server" path of issue 14, at the Lib level): the
annotator's session holds an HTTP client instead of a worker process and works the same on real MRML."""

from __future__ import annotations

import time

import mrml
import numpy as np
from SAMMedAnnotatorLib.Annotator import Annotator
from support import live_server

from sammed.backends.fake import FakeBackend
from sammed.io import Volume
from sammed.prompts import Prompts
from sammed.server.client import HttpWorkerClient
from sammed.worker.ops import WorkerState
from SAMMedLib import SegmentIO
from SAMMedLib.ModelSession import TEST_MODEL
from SAMMedLib.ModelSession import ModelSession

TOKEN = "slicer-test-token"


def test_annotator_segments_and_writes_through_a_server():
    state = WorkerState(backend_factory=lambda model, device, runtime: FakeBackend())
    with live_server(TOKEN, state) as (url, _app):
        logics = mrml.make_scene()
        arr = np.zeros((40, 48, 48), np.int16)
        arr[10:30, 12:36, 12:36] = 200
        node = mrml.add_volume(logics.scene, Volume(arr, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0)))
        seg, (sid,) = mrml.add_segmentation(logics.scene, node, ("cube",))
        session = ModelSession(logics.scene, HttpWorkerClient(url, TOKEN), modelId=TEST_MODEL)
        annotator = Annotator(logics.scene, session=session, appLogic=logics.app_logic)
        annotator.setVolume(node)
        result = annotator.segment(0, 20, Prompts.make(box_xyxy=[10.0, 10.0, 37.0, 37.0]))
        assert result.mask_hw.sum() == 24 * 24
        annotator.apply(result, seg, sid, node)
        assert SegmentIO.segmentArray(seg, sid, node)[20].sum() == 24 * 24
        annotator.precompute(0, 20, radius=2)
        events, end = [], time.monotonic() + 20
        while not any(e.kind == "done" and e.name == "precompute" for e in events):
            assert time.monotonic() < end, [(e.name, e.kind) for e in events]
            events += annotator.poll()
            time.sleep(0.02)
        assert [annotator.isEncoded(0, i) for i in range(18, 23)] == [True] * 5
        session.cleanup()
