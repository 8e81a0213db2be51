"""SAMMed Auto's self-tests: a synthetic bright box, the analytic test model and the real sliding generator, in the
real worker process.

Run inside the Slicer application only (they drive the module's widget): ``SAMMedAutoTest`` in ``SAMMedAuto.py`` calls
each function of ``TESTS`` with itself as ``test`` (a ``unittest.TestCase``) after clearing the scene.
"""

from __future__ import annotations

import logging

import numpy as np
import slicer


class _Encodes:
    """Slices the worker has encoded since this was made."""

    def __init__(self, session) -> None:
        self.session = session
        self.start = self.count()

    def count(self) -> int:
        return self.session.client.call("status")["cache"]["encodes"]

    @property
    def encode_calls(self) -> int:
        return self.count() - self.start


def _scene(test, encodeDelay=0.0):
    from SAMMedLib import SegmentIO

    array = np.zeros((20, 32, 40), dtype=np.int16)
    array[4:16, 8:24, 10:30] = 300
    volumeNode = slicer.util.addVolumeFromArray(array, name="SAMMedAutoTestBox")
    volumeNode.SetSpacing(2.0, 2.0, 3.0)
    segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "SAMMedAutoTestSeg")
    segmentationNode.CreateDefaultDisplayNodes()
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    segmentID = segmentationNode.GetSegmentation().AddEmptySegment("box", "box")
    user = np.zeros(array.shape, dtype=bool)
    user[10] = array[10] > 0
    SegmentIO.setSegmentMask(segmentationNode, segmentID, user, volumeNode)
    widget = slicer.modules.sammedauto.widgetRepresentation().self()
    widget.logic.discard()
    widget.logic.segmenterFactory = None
    widget.logic.session.useTestModel(encodeDelay)  # the analytic model in the real worker process
    backend = _Encodes(widget.logic.session)
    node = widget.logic.getParameterNode()
    node.sourceVolume = volumeNode
    node.segmentation = segmentationNode
    node.segmentID = segmentID
    node.generator = "sliding"
    node.orientation = "axial"
    node.rangeROI = None
    return widget, volumeNode, segmentationNode, segmentID, array, user, backend


def _finish(test, widget, timeout=60.0):
    test.assertTrue(widget.logic.review.worker.wait_idle(timeout), "the propagation did not finish")
    widget.onPoll()


def test_RunReviewAcceptUndo(test):
    from SAMMedLib import SegmentIO

    widget, volumeNode, segmentationNode, segmentID, array, user, backend = _scene(test)
    widget.onRun()
    _finish(test, widget)
    test.assertEqual(widget.logic.state(), "done")
    statuses = {r.index: r.status for r in widget.logic.rows()}
    generated = sorted(i for i, s in statuses.items() if s == "generated")
    test.assertEqual(generated, [4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15])
    test.assertEqual(statuses[10], "user")
    test.assertEqual(widget.ui.reviewTable.rowCount, len(statuses))
    test.assertEqual(backend.encode_calls, 12)
    previewID = widget.logic.review.previewSegmentID
    preview = SegmentIO.segmentMask(segmentationNode, previewID, volumeNode)
    test.assertEqual(int(preview.sum()), int((array > 0).sum() - user.sum()))
    test.assertTrue(widget.ui.acceptButton.enabled)
    widget.onRowClicked(0, 0)  # moves the views; must not raise

    widget.onAccept()
    after = SegmentIO.segmentMask(segmentationNode, segmentID, volumeNode)
    np.testing.assert_array_equal(after, array > 0)
    np.testing.assert_array_equal(after[10], user[10])
    test.assertIsNone(segmentationNode.GetSegmentation().GetSegment(previewID))
    widget.onUndo()
    np.testing.assert_array_equal(SegmentIO.segmentMask(segmentationNode, segmentID, volumeNode), user)

    # a second run reuses every embedding
    widget.onRun()
    _finish(test, widget)
    test.assertEqual(widget.logic.review.result.encoded, 0)
    test.assertEqual(backend.encode_calls, 12)
    widget.onReject()
    test.assertEqual(segmentationNode.GetSegmentation().GetNumberOfSegments(), 1)


def test_CancelLeavesSegmentUntouched(test):
    from SAMMedLib import SegmentIO

    widget, volumeNode, segmentationNode, segmentID, array, user, backend = _scene(test, encodeDelay=0.2)
    widget.onRun()
    test.assertEqual(widget.logic.state(), "running")
    test.assertTrue(widget.ui.cancelButton.visible)
    widget.onCancel()
    _finish(test, widget)
    test.assertEqual(widget.logic.state(), "cancelled")
    test.assertLess(backend.encode_calls, 12)
    test.assertFalse(widget.ui.acceptButton.enabled)
    np.testing.assert_array_equal(SegmentIO.segmentMask(segmentationNode, segmentID, volumeNode), user)
    test.assertEqual(segmentationNode.GetSegmentation().GetNumberOfSegments(), 2)  # segment + preview
    widget.onReject()
    test.assertEqual(segmentationNode.GetSegmentation().GetNumberOfSegments(), 1)
    np.testing.assert_array_equal(SegmentIO.segmentMask(segmentationNode, segmentID, volumeNode), user)
    logging.info("SAMMedAutoTest: cancel left the segment untouched")


TESTS = (
    test_RunReviewAcceptUndo,
    test_CancelLeavesSegmentUntouched,
)
