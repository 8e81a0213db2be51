"""SAMMed effect for the Segment Editor: click positive/negative points on a slice, the selected segment follows.

Left click adds a positive point, Ctrl+left click (or Shift+left click) a negative one, on the slice under the
mouse in any slice view aligned with the source volume. Each click decodes the model on that slice (encoding it
once, then from the cache) and replaces the selected segment on that slice, as one undo step that honours the
Segment Editor's masking and overwrite settings. Moving to another slice starts a new set of points.
The model, intensity preset and device are those chosen in the SAMMed Annotator module (shared logic and cache).
Loaded by the Segment Editor from this file (the class must be named ``SegmentEditorEffect``); Slicer only.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import qt
import slicer
import vtk
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect
from slicer.i18n import tr as _

EFFECT_NAME = "SAMMed"  # stable, untranslated: code and saved settings look effects up by it


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Prompt a SAM-family model with clicks inside the Segment Editor."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = EFFECT_NAME
        scriptedEffect.title = _("SAMMed")
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self._points_xy: list[list[float]] = []
        self._labels: list[int] = []
        self._slice: tuple[int, int] | None = None
        self._busy = False

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(Path(__file__).as_posix())
        return clonedEffect

    def icon(self):
        path = Path(__file__).resolve().parents[1] / "Resources" / "Icons" / "SAMMedEffect.png"
        return qt.QIcon(str(path)) if path.exists() else qt.QIcon()

    def helpText(self):
        return "<html>" + _(
            "Segment with SAMMed (Segment Anything for medical images).<p>"
            "<b>Left click</b>: positive point (inside the structure). <b>Ctrl+left click</b>: negative point.<br>"
            "Each click updates the selected segment on that slice (Ctrl+Z undoes). The first click on a slice "
            "encodes it (about a second on a CPU); further clicks are instant.<br>"
            "Model and intensity are set in the SAMMed Annotator module."
        ) + "</html>"

    def setupOptionsFrame(self):
        self.resetButton = qt.QPushButton(_("New prompt on this slice"))
        self.resetButton.toolTip = _("Forget the points placed so far; the next click starts a new mask.")
        self.resetButton.connect("clicked()", self.resetPoints)
        self.scriptedEffect.addOptionsWidget(self.resetButton)
        self.statusLabel = qt.QLabel()
        self.statusLabel.wordWrap = True
        self.scriptedEffect.addOptionsWidget(self.statusLabel)

    def activate(self):
        self.resetPoints()

    def deactivate(self):
        self.resetPoints()

    def resetPoints(self):
        self._points_xy, self._labels, self._slice = [], [], None
        if hasattr(self, "statusLabel"):
            self.statusLabel.text = ""

    def _moduleLogic(self):
        return slicer.util.getModuleLogic("SAMMedAnnotator")

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if eventId != vtk.vtkCommand.LeftButtonPressEvent or viewWidget.className() != "qMRMLSliceWidget":
            return False
        if self._busy:  # re-entrancy guard while a decode runs
            return True
        negative = bool(callerInteractor.GetControlKey() or callerInteractor.GetShiftKey())
        ras = self.xyToRas(callerInteractor.GetEventPosition(), viewWidget)
        self._busy = True
        qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            self._addPointAndSegment(ras, 0 if negative else 1, viewWidget.mrmlSliceNode())
        except ValueError as exc:
            self.statusLabel.text = str(exc)
        except Exception as exc:  # show, don't crash the event loop
            logging.exception("SAMMed effect failed")
            slicer.util.errorDisplay(_("SAMMed could not segment this slice: {error}").format(error=exc))
        finally:
            qt.QApplication.restoreOverrideCursor()
            self._busy = False
        return True

    def _addPointAndSegment(self, ras, label: int, sliceNode) -> None:
        from SAMMedAnnotatorLib import SegmentWrite
        from SAMMedAnnotatorLib import VolumeAccess
        from SAMMedAnnotatorLib.Annotator import SlicePrompts

        parameterSetNode = self.scriptedEffect.parameterSetNode()
        volumeNode = parameterSetNode.GetSourceVolumeNode()
        segmentationNode = parameterSetNode.GetSegmentationNode()
        if volumeNode is None:
            raise ValueError(_("Select a source volume."))
        logic = self._moduleLogic()
        annotator = logic.annotator
        module = logic.getParameterNode()
        annotator.setVolume(volumeNode, None if module.intensityPreset == "auto" else module.intensityPreset)
        where = annotator.sliceFromView(volumeNode, sliceNode.GetSliceToRAS())
        if where != self._slice:
            self._points_xy, self._labels, self._slice = [], [], where
        axis, index = where
        xy, _depth = VolumeAccess.worldToSliceXY(volumeNode, axis, [ras])
        self._points_xy.append([float(xy[0, 0]), float(xy[0, 1])])
        self._labels.append(label)
        prompts = SlicePrompts(axis, index, points_xy=np.asarray(self._points_xy),
                               point_labels=np.asarray(self._labels))
        result = annotator.segment(prompts, wait=True)
        labelmap, extent = SegmentWrite.sliceLabelmap(volumeNode, segmentationNode, axis, index, result.mask_hw)
        self.scriptedEffect.saveStateForUndo()
        self.scriptedEffect.modifySelectedSegmentByLabelmap(
            labelmap, slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeSet, extent)
        annotator.precompute(axis, index, module.precomputeRadius)
        self.statusLabel.text = _("Slice {index}: {count} point(s), predicted IoU {iou:.2f}").format(
            index=index, count=len(self._labels), iou=result.iou)
