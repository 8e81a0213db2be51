"""SAMMed Annotator's self-tests: a synthetic cube with the analytic test model in the real worker process, driven
through the widget.

Run inside the Slicer application only (they drive the module's widget): ``SAMMedAnnotatorTest`` in
``SAMMedAnnotator.py`` calls each function of ``TESTS`` with itself as ``test`` (a ``unittest.TestCase``) after
clearing the scene.
"""

from __future__ import annotations

import numpy as np
import slicer


def _cubeScene(test):
    """A 40x48x48 volume (1 x 1 x 2 mm) with a bright 24x24 cube on slices 10..29, and a segment."""
    volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Cube")
    array_kji = np.zeros((40, 48, 48), np.int16)
    array_kji[10:30, 12:36, 12:36] = 200
    volume.SetSpacing(1.0, 1.0, 2.0)
    slicer.util.updateVolumeFromArray(volume, array_kji)
    volume.CreateDefaultDisplayNodes()
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Segmentation")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segmentID = segmentation.GetSegmentation().AddEmptySegment("cube")
    slicer.util.setSliceViewerLayers(background=volume, fit=True)
    return volume, segmentation, segmentID


def _widget(test):
    slicer.util.selectModule("SAMMedAnnotator")
    widget = slicer.modules.sammedannotator.widgetRepresentation().self()
    widget.logic.useTestModel()  # the analytic model, in the same worker process a user's model runs in
    return widget


def _encodes(widget) -> int:
    """Slices the worker has encoded so far."""
    return widget.logic.session.client.call("status")["cache"]["encodes"]


def _waitForWorker(test, widget, timeout=20.0):
    test.assertTrue(widget.logic.annotator.worker.wait_idle(timeout))
    widget.onPoll()


def test_BoxPromptPreviewApplyUndo(test):
    volume, segmentation, segmentID = _cubeScene(test)
    widget = _widget(test)
    p = widget.logic.getParameterNode()
    p.inputVolume = volume
    p.segmentation = segmentation
    p.segmentID = segmentID
    p.autoPreview = False
    red = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
    red.SetOrientation("Axial")
    index = 20
    red.SetSliceOffset(volume.GetOrigin()[2] + 2.0 * index)
    from SAMMedLib import VolumeAccess

    corners = VolumeAccess.sliceXYToWorld(volume, 0, index, [[8.0, 8.0], [39.0, 39.0]])
    p.boxNode.SetCenterWorld(*((corners[0] + corners[1]) / 2))
    p.boxNode.SetSizeWorld(*(np.abs(corners[1] - corners[0]) + [0, 0, 1.0]))
    widget.logic.lastPromptNode = p.boxNode
    crosshair = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
    crosshair.SetCursorPositionXYZ([0.0, 0.0, 0.0], red)  # as if the box was just drawn in the Red view

    result = widget.runPreview()
    if result is None:  # the slice was queued for encoding first
        _waitForWorker(test, widget)
        result = widget.runPreview()
    test.assertIsNotNone(result)
    test.assertEqual((result.axis, result.index), (0, index))
    test.assertEqual(int(result.mask_hw.sum()), 24 * 24)
    encodes = _encodes(widget)
    test.assertIsNotNone(widget.runPreview())
    test.assertEqual(_encodes(widget), encodes, "a second prompt on the slice encodes nothing")

    widget.onApplyButton()
    written = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentID, volume)
    test.assertEqual(int(written.sum()), 24 * 24)
    test.assertEqual(int(written[index].sum()), 24 * 24)
    test.assertEqual(p.boxNode.GetNumberOfControlPoints(), 0, "prompts are cleared after Apply")

    widget.onUndoButton()
    written = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentID, volume)
    test.assertEqual(int(written.sum()), 0)
    _waitForWorker(test, widget)


def test_RemovingVolumeCancelsEmbedding(test):
    volume, segmentation, segmentID = _cubeScene(test)
    widget = _widget(test)
    p = widget.logic.getParameterNode()
    p.inputVolume = volume
    annotator = widget.logic.annotator
    annotator.setVolume(volume)
    annotator.precompute(0, 20, radius=None)
    slicer.mrmlScene.RemoveNode(volume)
    test.assertIsNone(annotator.segmenter)
    test.assertTrue(annotator.worker.wait_idle(5.0))
    events = widget.logic.poll()
    test.assertIn("cancelled", [e.kind for e in events])
    status = annotator.worker.call("status")
    test.assertEqual(status["volumes"], [])
    test.assertEqual(status["cache"]["memory_bytes"], 0)


def test_WorkerKilledMidEncodeIsReportedAndReplaced(test):
    volume, segmentation, segmentID = _cubeScene(test)
    widget = _widget(test)
    annotator = widget.logic.annotator
    annotator.setVolume(volume)
    annotator.precompute(0, 20, radius=None)
    annotator.worker.kill()  # as if the model crashed the worker process
    test.assertTrue(annotator.worker.wait_idle(5.0))
    failed = [e for e in widget.logic.poll() if e.kind == "failed"]
    test.assertTrue(failed and "stopped unexpectedly" in failed[0].error)
    test.assertTrue(slicer.app.applicationName, "Slicer itself is still running")
    from sammed.prompts import Prompts

    result = annotator.segment(0, 20, Prompts.make(box_xyxy=[8.0, 8.0, 39.0, 39.0]))  # a new worker
    test.assertEqual(int(result.mask_hw.sum()), 24 * 24)


TESTS = (
    test_BoxPromptPreviewApplyUndo,
    test_RemovingVolumeCancelsEmbedding,
    test_WorkerKilledMidEncodeIsReportedAndReplaced,
)
