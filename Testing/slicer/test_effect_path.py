"""The Segment Editor effect's click path, replayed on slicer-core with the analytic test model in a real worker.

The effect writes through ``qSlicerSegmentEditorAbstractEffect::modifySelectedSegmentByLabelmap``, which calls the
editor's ``vtkSlicerSegmentEditorLogic::ModifySegmentByLabelmap`` on the parameter set node's segmentation and
selected segment with the effect's ``perSegment()`` (Modules/Loadable/Segmentations/EditorEffects/
qSlicerSegmentEditorAbstractEffect.cxx, Slicer commit 583e9b37d5); ``saveStateForUndo`` asks the editor to save
the state in that logic. ``ReplayedScriptedEffect`` does exactly that with a real logic on a real scene, so the
effect's own code (``SegmentEditorEffect._addPointAndSegment``, ``onPoll``, ``EffectWriter``) runs unchanged.
"""

from __future__ import annotations

import importlib
import sys
import time
import types

import mrml
import numpy as np
import pytest
import slicer

from sammed.io import Volume
from SAMMedLib import SegmentIO
from SAMMedLib import VolumeAccess
from SAMMedLib.ModelSession import TEST_MODEL
from SAMMedLib.ModelSession import ModelSession


class ReplayedScriptedEffect:
    """What ``qSlicerSegmentEditorScriptedEffect`` gives the effect: its parameter set node, undo and writes."""

    def __init__(self, scene, editorNode) -> None:
        self.editorNode = editorNode
        self.logic = slicer.vtkSlicerSegmentEditorLogic()
        self.logic.SetMRMLScene(scene)
        self.logic.SetSegmentEditorNode(editorNode)
        self.widgets = []

    def parameterSetNode(self):
        return self.editorNode

    def addOptionsWidget(self, widget) -> None:
        self.widgets.append(widget)

    def saveStateForUndo(self) -> None:
        self.logic.SaveStateForUndo()

    def modifySelectedSegmentByLabelmap(self, modifier, mode) -> None:
        node = self.editorNode
        self.logic.ModifySegmentByLabelmap(
            node.GetSegmentationNode(), node.GetSelectedSegmentID() or "", modifier, mode, True, False
        )


@pytest.fixture
def effect_case(app_stubs, monkeypatch):
    modes = types.SimpleNamespace(
        ModificationModeSet=slicer.vtkSlicerSegmentEditorLogic.ModificationModeSet,
        ModificationModeAdd=slicer.vtkSlicerSegmentEditorLogic.ModificationModeAdd,
    )
    monkeypatch.setattr(slicer, "qSlicerSegmentEditorAbstractEffect", modes, raising=False)
    sys.modules["qt"].QPushButton = sys.modules["qt"].QLabel = lambda *a: types.SimpleNamespace(connect=lambda *b: None)
    effect_module = importlib.import_module("SegmentEditorSAMMedLib.SegmentEditorEffect")  # the file, not the class

    logics = mrml.make_scene()
    scene = logics.scene
    arr = np.zeros((12, 40, 48), np.int16)
    arr[2:10, 10:30, 12:36] = 200
    node = mrml.add_volume(scene, Volume(arr, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0)))
    seg, (sid,) = mrml.add_segmentation(scene, node, ("organ",))
    editorNode = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editorNode.SetAndObserveSegmentationNode(seg)
    editorNode.SetAndObserveSourceVolumeNode(node)
    editorNode.SetSelectedSegmentID(sid)
    session = ModelSession(scene, modelId=TEST_MODEL)
    session.useTestModel(encodeDelay=0.2)
    session.segmenter(node)  # the worker is running and holds the volume, as after an earlier click
    monkeypatch.setattr(effect_module, "sharedSession", lambda: session)
    scripted = ReplayedScriptedEffect(scene, editorNode)
    effect = effect_module.SegmentEditorEffect(scripted)
    effect.setupOptionsFrame()
    effect.statusLabel = types.SimpleNamespace(text="")
    view = mrml.add_slice_node(scene, "Axial", "Red")
    yield effect, scripted, session, scene, node, seg, sid, view
    session.cleanup()
    scene.Clear(1)


def _click(effect, node, view, index: int, xy) -> None:
    ras = VolumeAccess.sliceXYToWorld(node, 0, index, [xy])[0]
    normal = VolumeAccess.asArray4x4(view.GetSliceToRAS())[:3, 2]
    view.SetSliceOffset(float(np.dot(ras, normal)))
    effect._addPointAndSegment(ras, 1, view)


def test_a_click_on_a_new_slice_returns_at_once_and_the_mask_comes_when_encoded(effect_case):
    effect, scripted, session, scene, node, seg, sid, view = effect_case
    keep = np.zeros((12, 40, 48), np.uint8)
    keep[2, 10:30, 12:36] = keep[6, 10:30, 12:36] = 1  # the user's segment on slices 2 and 6
    SegmentIO.setSegmentMask(seg, sid, keep, node)

    _click(effect, node, view, 4, [20.0, 20.0])  # returns before the worker's 0.2 s encode is done
    assert effect._timer.active and "Encoding slice 4" in effect.statusLabel.text
    assert SegmentIO.segmentArray(seg, sid, node)[4].sum() == 0
    end = time.monotonic() + 10
    while effect._timer.active:  # what the QTimer does
        assert time.monotonic() < end
        effect.onPoll()
        time.sleep(0.02)
    written = SegmentIO.segmentArray(seg, sid, node)
    assert written[4].sum() > 0 and "Slice 4" in effect.statusLabel.text
    np.testing.assert_array_equal(written[[2, 6]], keep[[2, 6]])  # other slices of the segment are kept
    assert written.sum() == keep.sum() + written[4].sum()

    _click(effect, node, view, 4, [30.0, 15.0])  # a second point on the encoded slice: written at once
    assert not effect._timer.active
    assert scripted.logic.CanUndo()
    scripted.logic.Undo()
    scripted.logic.Undo()
    np.testing.assert_array_equal(SegmentIO.segmentArray(seg, sid, node), keep)
