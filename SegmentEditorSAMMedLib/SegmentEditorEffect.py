"""SAMMed effect for the Segment Editor: click positive/negative points on a slice, the selected segment follows.

Left click adds a positive point, Ctrl+left click (or Shift+left click) a negative one, on the slice under the mouse
in any slice view aligned with the source volume. Each click decodes the model on that slice in the ``sammed``
worker process; the first click on a slice asks the worker to encode it and returns at once (the GUI stays live), a
QTimer reads the worker's replies and decodes when the slice is ready. The result replaces the selected segment on
that slice only, through ``SegmentIO.writeSlices`` (the write of every SAMMed module) with the Segment Editor's own
undo, masking and overwrite settings. Moving to another slice starts a new set of points. The model, intensity
preset and embedding cache are the ones of ``SAMMedLib.ModelSession.sharedSession()``, shared with SAMMed Annotator
and SAMMed Auto. Slicer only.
"""

from __future__ import annotations

import logging
from pathlib import Path

import qt
import slicer
import vtk
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect
from slicer.i18n import tr as _

from sammed.prompts import Prompts
from SAMMedLib import Dependencies
from SAMMedLib import SegmentIO
from SAMMedLib import VolumeAccess
from SAMMedLib.ModelSession import sharedSession

POLL_INTERVAL_MS = 50
EFFECT_NAME = "SAMMed"  # stable, untranslated: code and saved settings look effects up by it


class EffectWriter:
    """``SegmentIO.SegmentWriter`` through the effect's own API: the Segment Editor's undo stack and settings
    (``qSlicerSegmentEditorAbstractEffect::modifySelectedSegmentByLabelmap`` calls the editor's
    ``vtkSlicerSegmentEditorLogic::ModifySegmentByLabelmap``)."""

    def __init__(self, scriptedEffect) -> None:
        self.scriptedEffect = scriptedEffect

    def saveStateForUndo(self, segmentationNode, segmentID, volumeNode) -> None:
        self.scriptedEffect.saveStateForUndo()

    def modify(self, segmentationNode, segmentID, volumeNode, modifier, add: bool, overwrite: bool) -> None:
        mode = "ModificationModeAdd" if add else "ModificationModeSet"
        with SegmentIO.overwriteOff(self.scriptedEffect.parameterSetNode(), not overwrite):
            self.scriptedEffect.modifySelectedSegmentByLabelmap(
                modifier, getattr(slicer.qSlicerSegmentEditorAbstractEffect, mode)
            )


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
        self._waiting: tuple | None = None  # (volume node ID, axis, index) of a click whose slice is being encoded
        self._timer = None

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(Path(__file__).as_posix())
        return clonedEffect

    def icon(self):
        path = Path(__file__).resolve().parent / "SegmentEditorEffect.png"
        return qt.QIcon(str(path)) if path.exists() else qt.QIcon()

    def helpText(self):
        return (
            "<html>"
            + _(
                "Segment with SAMMed (Segment Anything for medical images).<p>"
                "<b>Left click</b>: positive point (inside the structure). <b>Ctrl+left click</b>: negative point.<br>"
                "Each click updates the selected segment on that slice (Ctrl+Z undoes). The first click on a slice "
                "encodes it (about a second on a CPU); further clicks are instant.<br>"
                "Model and intensity preset are the ones chosen in the SAMMed Annotator module."
            )
            + "</html>"
        )

    def setupOptionsFrame(self):
        self.resetButton = qt.QPushButton(_("New prompt on this slice"))
        self.resetButton.toolTip = _("Forget the points placed so far; the next click starts a new mask.")
        self.resetButton.connect("clicked()", self.resetPoints)
        self.scriptedEffect.addOptionsWidget(self.resetButton)
        self.statusLabel = qt.QLabel()
        self.statusLabel.wordWrap = True
        self.scriptedEffect.addOptionsWidget(self.statusLabel)
        self._timer = qt.QTimer()  # reads the worker's replies while a clicked slice is encoded (never waits)
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onPoll)

    def activate(self):
        self.resetPoints()

    def deactivate(self):
        self.resetPoints()
        self._waiting = None
        if self._timer is not None:
            self._timer.stop()

    def resetPoints(self):
        self._points_xy, self._labels, self._slice = [], [], None
        if hasattr(self, "statusLabel"):
            self.statusLabel.text = ""

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
        parameterSetNode = self.scriptedEffect.parameterSetNode()
        volumeNode = parameterSetNode.GetSourceVolumeNode()
        if volumeNode is None:
            raise ValueError(_("Select a source volume."))
        session = sharedSession()
        if not session.backendInjected and not Dependencies.prepareModel(
            session.modelId, slicer.util.confirmOkCancelDisplay, qt.QSettings(), session.startDownload
        ):
            return
        segmenter = session.segmenter(volumeNode)
        where = VolumeAccess.sliceAxisAndIndex(volumeNode, sliceNode.GetSliceToRAS())
        if where != self._slice:
            self._points_xy, self._labels, self._slice = [], [], where
        axis, index = where
        xy, _depth = VolumeAccess.worldToSliceXY(volumeNode, axis, [ras])
        self._points_xy.append([float(xy[0, 0]), float(xy[0, 1])])
        self._labels.append(label)
        if not segmenter.is_cached(axis, index):  # encode in the worker first; onPoll decodes when it is done
            rid = session.requestEncode(segmenter, axis, index)
            if rid is not None:
                session.own(rid, EFFECT_NAME)
            self._waiting = (volumeNode.GetID(), axis, index)
            self.statusLabel.text = _("Encoding slice {index}...").format(index=index)
            self._timer.start()
            return
        self._decodeAndWrite(session, segmenter, volumeNode, axis, index)

    def onPoll(self) -> None:
        """Worker replies for the effect: decode the waiting click once its slice is encoded."""
        session = sharedSession()
        for event in session.drain(EFFECT_NAME):
            if event.kind == "failed":
                self._waiting = None
                self.statusLabel.text = _("Failed: {error}").format(error=event.error)
        if self._waiting is None:
            self._timer.stop()
            return
        volumeNodeID, axis, index = self._waiting
        segmenter = session.knownSegmenter(volumeNodeID)
        if segmenter is None or self._slice != (axis, index):
            self._waiting = None
            return
        if segmenter.is_cached(axis, index):
            self._waiting = None
            self._timer.stop()
            try:
                self._decodeAndWrite(session, segmenter, slicer.mrmlScene.GetNodeByID(volumeNodeID), axis, index)
            except ValueError as exc:
                self.statusLabel.text = str(exc)

    def _decodeAndWrite(self, session, segmenter, volumeNode, axis: int, index: int) -> None:
        """Decode the points of this slice (a decode's time: the slice is encoded) and write the mask through the
        effect (one undo step, the editor's masking; other slices untouched)."""
        parameterSetNode = self.scriptedEffect.parameterSetNode()
        result = segmenter.segment(axis, index, Prompts.make(points_xy=self._points_xy, point_labels=self._labels))
        segmentationNode = parameterSetNode.GetSegmentationNode()
        segmentID = parameterSetNode.GetSelectedSegmentID()
        SegmentIO.writeSlices(
            EffectWriter(self.scriptedEffect), segmentationNode, segmentID, volumeNode, axis, {index: result.mask_hw}
        )
        session.precompute(segmenter, axis, index)
        self.statusLabel.text = _("Slice {index}: {count} point(s), predicted IoU {iou:.2f}").format(
            index=index, count=len(self._labels), iou=result.iou
        )
