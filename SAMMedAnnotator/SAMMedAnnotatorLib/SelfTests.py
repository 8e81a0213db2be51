"""SAMMed Annotator's self-tests: a synthetic cube with the analytic fake backend, driven through the widget.

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
    from sammed.backends.fake import FakeBackend

    test.backend = FakeBackend(encode_delay=0.02)
    widget.logic.setBackend(test.backend)
    return widget


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
    encodes = test.backend.encode_calls
    test.assertIsNotNone(widget.runPreview())
    test.assertEqual(test.backend.encode_calls, encodes, "a second prompt on the slice encodes nothing")

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
    test.backend.encode_delay = 0.1
    p = widget.logic.getParameterNode()
    p.inputVolume = volume
    annotator = widget.logic.annotator
    annotator.setVolume(volume)
    annotator.precompute(0, 20, radius=None)
    slicer.mrmlScene.RemoveNode(volume)
    test.assertIsNone(annotator.segmenter)
    test.assertTrue(annotator.worker.wait_idle(5.0))
    test.assertLess(test.backend.encode_calls, 40)
    events = widget.logic.poll()
    test.assertIn("cancelled", [e.kind for e in events])
    test.assertEqual(annotator.cache.memory_bytes, 0)


TESTS = (
    test_BoxPromptPreviewApplyUndo,
    test_RemovingVolumeCancelsEmbedding,
)
