"""SAMMedAuto: fill a segment through the volume from a few annotated slices, review it, accept it with undo.

The module is thin: MRML work lives in ``SAMMedAutoLib`` and ``SAMMedLib`` (tested outside the app with
``slicer-core``), the propagation in ``sammed.propagate``. The model, embeddings and learned prompt encoder are the
ones of ``SAMMedLib.ModelSession.sharedSession()`` (shared with SAMMed Annotator). The propagation runs in the
``sammed`` worker process; a QTimer on the main thread reads its replies without waiting and updates the preview
segment, progress and review table.
"""

import importlib
import math
import sys
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsROINode
from slicer import vtkMRMLScalarVolumeNode
from slicer import vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice
from slicer.parameterNodeWrapper import WithinRange
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

POLL_INTERVAL_MS = 100
GENERATORS = ["sliding", "sapnet", "threshold"]  # sammed.propagate.GENERATORS; a static test compares them
ORIENTATIONS = ["axial", "coronal", "sagittal"]
FLAG_COLOR = (255, 190, 120)


class SAMMedAuto(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SAMMed Auto")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations", "Markups"]
        self.parent.contributors = ["SAMMed developers"]
        self.parent.helpText = _(
            "Fill a segment through the volume from the slices you drew or prompted (sliding window, SAP-Net or "
            "threshold propagation), in the background. Generated slices appear in a preview segment; review them "
            "in the table (low-confidence slices are flagged), correct them with SAMMed Annotator and run again, "
            "then accept: only slices without your annotation are written, as one undo step."
        )
        self.parent.helpText += self.getDefaultModuleDocumentationLink()
        self.parent.acknowledgementText = _(
            "Methods: SAMMed (SAMassist, SAMauto) and Slide-SAM. Default model: LiteMedSAM (Apache-2.0)."
        )


@parameterNodeWrapper
class SAMMedAutoParameterNode:
    """Every persisted choice of the module (bound to the .ui through SlicerParameterName).

    sourceVolume: the image. segmentation, segmentID: the segment to fill (its non-empty slices are the seeds).
    generator: sliding (Slide-SAM), sapnet (SAP-Net) or threshold (SAMMed Algorithm 1).
    orientation: the slice orientation to propagate along. rangeROI: limits the slices (whole axis if None).
    minIoU, minOverlap, maxGrowth: stop rules. lowConfidence: generated slices below this predicted IoU are flagged.
    useLearnedPromptEncoder: use the SAMassist prompt encoder learned in SAMMed Annotator when there is one.
    refineByIntensity: redraw each generated mask inside its box from intensity and the model's logits
        (``sammed.propagate.refine``); off gives the model's masks as they are.
    """

    sourceVolume: vtkMRMLScalarVolumeNode | None
    segmentation: vtkMRMLSegmentationNode | None
    segmentID: str = ""
    generator: Annotated[str, Choice(GENERATORS)] = "sliding"
    orientation: Annotated[str, Choice(ORIENTATIONS)] = "axial"
    rangeROI: vtkMRMLMarkupsROINode | None
    minIoU: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    minOverlap: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    maxGrowth: Annotated[float, WithinRange(1.0, 10.0)] = 1.6
    lowConfidence: Annotated[float, WithinRange(0.0, 1.0)] = 0.8
    useLearnedPromptEncoder: bool = True
    refineByIntensity: bool = True


class SAMMedAutoWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.timer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SAMMedAuto.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = SAMMedAutoLogic()
        from SAMMedLib.ComputeOnSection import ComputeOnSection

        self.computeOnSection = ComputeOnSection(lambda: self.logic.session, self.ui.statusLabel.setText)
        self.layout.addWidget(self.computeOnSection.widget)
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_INTERVAL_MS)
        self.timer.connect("timeout()", self.onPoll)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.segmentSelector.connect("currentSegmentChanged(QString)", self.onSegmentChanged)
        self.ui.runButton.connect("clicked(bool)", self.onRun)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.acceptButton.connect("clicked(bool)", self.onAccept)
        self.ui.rejectButton.connect("clicked(bool)", self.onReject)
        self.ui.undoButton.connect("clicked(bool)", self.onUndo)
        self.ui.nextFlaggedButton.connect("clicked(bool)", self.onNextFlagged)
        self.ui.reviewTable.connect("cellClicked(int,int)", self.onRowClicked)
        self.ui.reviewTable.setHorizontalHeaderLabels([_("Slice"), _("Status"), _("Predicted IoU")])
        self.initializeParameterNode()
        self.updateButtons()

    def cleanup(self) -> None:
        if self.timer is not None:
            self.timer.stop()
        if self.logic is not None:
            self.logic.cancel()
        self.setParameterNode(None)  # disconnects the GUI and removes the node's observer, once
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        # the poll timer keeps running while a propagation runs: its results arrive while the user looks elsewhere
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.timer.stop()
        self.logic.discard()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()
        self.updateReview()

    def initializeParameterNode(self) -> None:
        parameterNode = self.logic.getParameterNode()
        if not parameterNode.sourceVolume:
            parameterNode.sourceVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        if not parameterNode.segmentation:
            parameterNode.segmentation = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
        self.setParameterNode(parameterNode)

    def setParameterNode(self, parameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        node = self._parameterNode
        if node is None:
            return
        wasBlocked = self.ui.segmentSelector.blockSignals(True)
        self.ui.segmentSelector.setCurrentNode(node.segmentation)
        if node.segmentID:
            self.ui.segmentSelector.setCurrentSegmentID(node.segmentID)
        self.ui.segmentSelector.blockSignals(wasBlocked)
        segmentation = node.segmentation.GetSegmentation() if node.segmentation else None
        if segmentation is not None and segmentation.GetSegment(node.segmentID or "") is None:
            current = self.ui.segmentSelector.currentSegmentID() or ""
            if current != node.segmentID:
                node.segmentID = current  # the segment of another segmentation, or a removed one
        self.ui.learnedLabel.text = self.logic.learnedEncoderText()
        self.updateButtons()

    def onSegmentChanged(self, segmentID) -> None:
        if self._parameterNode is not None:
            self._parameterNode.segmentID = segmentID or ""

    # ------------------------------------------------------------------ actions
    def onRun(self) -> None:
        if not self.ensureModelReady():
            return
        with slicer.util.tryWithErrorDisplay(_("Propagation could not start."), waitCursor=True):
            self.logic.start()
            self.timer.start()
        self.updateReview()

    def ensureModelReady(self) -> bool:
        """PyTorch, packages, licence and weights of the shared session's model, each after asking."""
        from SAMMedLib import Dependencies

        session = self.logic.session
        if self.logic.segmenterFactory is not None or session.backendInjected:
            return True
        ready = Dependencies.ensureModelReadyInApp(session.modelId, session.startDownload)
        if not ready:
            self.ui.statusLabel.text = _("The model is not ready yet (declined, or downloading); try again later.")
        return ready

    def onCancel(self) -> None:
        self.logic.cancel()
        self.ui.statusLabel.text = _("Cancelling...")

    def onPoll(self) -> None:
        state = self.logic.poll()
        if state != "running":
            self.timer.stop()
            if state == "failed":
                slicer.util.errorDisplay(_("Propagation failed: {error}").format(error=self.logic.review.error))
        self.updateReview()

    def onAccept(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not accept the propagation."), waitCursor=True):
            written = self.logic.accept()
            self.ui.statusLabel.text = _("Accepted: {voxels} voxels written on generated slices.").format(
                voxels=written
            )
        self.updateButtons()

    def onReject(self) -> None:
        self.timer.stop()
        self.logic.reject()
        self.updateReview()

    def onUndo(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Undo failed."), waitCursor=True):
            if self.logic.undo():
                self.ui.statusLabel.text = _("The accepted slices were removed (undo).")
        self.updateButtons()

    def onRowClicked(self, row, column) -> None:
        item = self.ui.reviewTable.item(row, 0)
        if item is not None:
            self.logic.jumpToSlice(int(item.text()))

    def onNextFlagged(self) -> None:
        rows = self.logic.rows()
        flagged = [r.index for r in rows if r.flagged]
        if not flagged:
            return
        current = self.ui.reviewTable.currentRow()
        currentIndex = rows[current].index if 0 <= current < len(rows) else -1
        index = next((i for i in flagged if i > currentIndex), flagged[0])
        self.ui.reviewTable.setCurrentCell([r.index for r in rows].index(index), 0)
        self.logic.jumpToSlice(index)

    # ------------------------------------------------------------------ display
    def updateReview(self) -> None:
        review = self.logic.review
        self.ui.progressBar.value = int(round(100 * (review.fraction if review else 0.0)))
        self.ui.statusLabel.text = self.logic.statusText()
        rows = self.logic.rows()
        table = self.ui.reviewTable
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            iouText = "" if math.isnan(row.iou) else f"{row.iou:.3f}"
            values = (str(row.index), row.status + (" " + _("(check)") if row.flagged else ""), iouText)
            for c, text in enumerate(values):
                item = qt.QTableWidgetItem(text)
                item.setFlags(qt.Qt.ItemIsSelectable | qt.Qt.ItemIsEnabled)
                if row.flagged:
                    item.setBackground(qt.QBrush(qt.QColor(*FLAG_COLOR)))
                table.setItem(r, c, item)
        self.updateButtons()

    def updateButtons(self) -> None:
        state = self.logic.state() if self.logic else "idle"
        node = self._parameterNode
        ready = bool(node and node.sourceVolume and node.segmentation and node.segmentID)
        running = state == "running"
        self.ui.runButton.visible = not running
        self.ui.cancelButton.visible = running
        self.ui.runButton.enabled = ready
        self.ui.runButton.toolTip = (
            _("Fill the segment from its annotated slices")
            if ready
            else _("Select a source volume, a segmentation and a segment with at least one annotated slice")
        )
        self.ui.acceptButton.enabled = state == "done"
        self.ui.rejectButton.enabled = state in ("running", "done", "cancelled", "failed")
        self.ui.undoButton.enabled = self.logic.canUndo() if self.logic else False
        self.ui.nextFlaggedButton.enabled = any(r.flagged for r in self.logic.rows()) if self.logic else False

    def onReload(self) -> None:
        """Reload ``sammed``, ``SAMMedLib`` and ``SAMMedAutoLib`` (in import order) before the module itself."""
        if self.logic is not None:
            self.logic.discard()
        names = [n for n in list(sys.modules) if n.split(".")[0] in ("sammed", "SAMMedLib", "SAMMedAutoLib")]
        for name in names:
            if sys.modules.get(name) is not None:
                importlib.reload(sys.modules[name])
        ScriptedLoadableModuleWidget.onReload(self)


class SAMMedAutoLogic(ScriptedLoadableModuleLogic):
    """Working state of SAMMedAuto: the current propagate/review cycle, on the shared session's segmenter.

    Args:
        propagateFn: the propagation function (default ``sammed.propagate.propagate``).
        segmenterFactory: ``factory(volume) -> Segmenter`` (tests, run in this process); default: the shared
            ``ModelSession``'s segmenter of the volume (the worker process: same model, intensity preset,
            embeddings and learned prompt encoder as SAMMed Annotator).
        editorLogic: ``vtkSlicerSegmentEditorLogic`` used by Accept (default: one on the Segment Editor's node).
        session: the ``SAMMedLib.ModelSession`` (default: the application's shared session).
    """

    def __init__(self, propagateFn=None, segmenterFactory=None, editorLogic=None, session=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.propagateFn = propagateFn
        self.segmenterFactory = segmenterFactory
        self._editorLogic = editorLogic
        self._session = session
        self._segmenter = None
        self._segmenterKey = None
        self.review = None

    def getParameterNode(self):
        return SAMMedAutoParameterNode(super().getParameterNode())

    @property
    def session(self):
        from SAMMedLib.ModelSession import sharedSession

        return self._session or sharedSession()

    # ------------------------------------------------------------------ collaborators
    def editorLogic(self):
        if self._editorLogic is None:
            from SAMMedLib import SegmentIO

            self._editorLogic = SegmentIO.makeEditorLogic(slicer.mrmlScene, appLogic=slicer.app.applicationLogic())
        return self._editorLogic

    def segmenter(self, volumeNode):
        """The segmenter of ``volumeNode``, reused across runs so embeddings are encoded once."""
        if self.segmenterFactory is None:
            self._segmenter = self.session.segmenter(volumeNode)
            return self._segmenter
        from SAMMedLib import VolumeAccess

        volume = VolumeAccess.volumeFromNode(volumeNode)
        key = (volumeNode.GetID(), volume.digest)
        if self._segmenter is None or self._segmenterKey != key:
            self._segmenter = self.segmenterFactory(volume)
            self._segmenterKey = key
        return self._segmenter

    def jobs(self):
        """Where propagations run: the shared session's worker process, or (tests with a ``segmenterFactory`` or a
        ``propagateFn``) an in-process worker of the review's own."""
        if self.segmenterFactory is not None or self.propagateFn is not None:
            return None
        from SAMMedLib.ModelSession import SessionJobs

        return SessionJobs(self.session, "SAMMedAuto")

    def learnedEncoderText(self) -> str:
        segmenter = self._segmenter
        if segmenter is not None and getattr(segmenter, "prompt_encoder", None) is not None:
            return _("A learned (SAMassist) prompt encoder is available for this case.")
        return _("No learned prompt encoder yet (fit one in SAMMed Annotator with 'Learn this case').")

    @staticmethod
    def makeConfig(parameterNode):
        """``PropagationConfig`` with the stop rules, the refinement switch and the learned-encoder choice."""
        from sammed.propagate import PropagationConfig
        from sammed.propagate import StopRules

        rules = StopRules(
            min_iou=parameterNode.minIoU, min_overlap=parameterNode.minOverlap, max_growth=parameterNode.maxGrowth
        )
        config = PropagationConfig(rules=rules, use_learned=bool(parameterNode.useLearnedPromptEncoder))
        if not parameterNode.refineByIntensity:
            config.refine = None
        return config

    # ------------------------------------------------------------------ run
    def state(self) -> str:
        return self.review.state if self.review is not None else "idle"

    def start(self) -> None:
        """Start a propagation with the parameter node's settings (drops an earlier preview first).

        Raises:
            ValueError: missing inputs, no annotated slice, ROI outside the volume.
            RuntimeError: one is already running.
        """
        from SAMMedAutoLib.AutoReview import AutoReview

        from sammed import geometry
        from SAMMedLib import VolumeAccess

        p = self.getParameterNode()
        if self.state() == "running":
            raise RuntimeError(_("A propagation is already running; cancel it first."))
        if self.review is not None and self.review.state in ("done", "cancelled", "failed"):
            self.review.reject()
        segmenter = self.segmenter(p.sourceVolume)
        axis = geometry.axis_for_orientation(segmenter.volume.direction_lps, p.orientation)
        sliceRange = VolumeAccess.sliceRangeFromROI(p.rangeROI, p.sourceVolume, axis) if p.rangeROI else None
        review = AutoReview(
            p.segmentation, p.segmentID, p.sourceVolume, propagateFn=self.propagateFn, worker=self.jobs()
        )
        review.start(segmenter, axis=axis, generator=p.generator, config=self.makeConfig(p), sliceRange=sliceRange)
        if self.review is not None:
            self.review.close()
        self.review = review

    def poll(self) -> str:
        return self.review.poll() if self.review is not None else "idle"

    def cancel(self) -> None:
        if self.review is not None:
            self.review.cancel()

    def accept(self) -> int:
        if self.review is None:
            raise RuntimeError(_("Run a propagation first."))
        return self.review.accept(self.editorLogic())

    def reject(self) -> None:
        if self.review is not None:
            self.review.reject()

    def discard(self) -> None:
        """Stop work and forget the review (scene close): nothing is written."""
        if self.review is not None:
            self.review.close()
        self.review = None
        self._segmenter = None
        self._segmenterKey = None
        self._editorLogic = None

    def canUndo(self) -> bool:
        return self._editorLogic is not None and bool(self._editorLogic.CanUndo())

    def undo(self) -> bool:
        from SAMMedLib import SegmentIO

        return self._editorLogic is not None and SegmentIO.undo(self._editorLogic)

    # ------------------------------------------------------------------ review
    def rows(self):
        if self.review is None:
            return []
        return self.review.rows(lowConfidence=self.getParameterNode().lowConfidence)

    def statusText(self) -> str:
        review = self.review
        if review is None:
            return _("Draw or prompt a few slices of the segment, then Run.")
        if review.state == "running":
            return review.message or _("Running...")
        if review.state == "failed":
            return _("Failed: {error}").format(error=review.error)
        if review.result is None:
            return review.state
        counts = {}
        for row in review.rows():
            counts[row.status] = counts.get(row.status, 0) + 1
        flagged = sum(r.flagged for r in self.rows())
        summary = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
        return _("{state}: {summary}; {flagged} to check; {encoded} slices encoded.").format(
            state=review.state, summary=summary, flagged=flagged, encoded=review.result.encoded
        )

    def jumpToSlice(self, index: int) -> None:
        """Centre all slice views on slice ``index`` of the propagation axis."""
        from SAMMedLib import VolumeAccess

        if self.review is None:
            return
        r, a, s = VolumeAccess.sliceCenterRAS(self.review.volumeNode, self.review.axis, index)
        slicer.vtkMRMLSliceNode.JumpAllSlices(slicer.mrmlScene, r, a, s, slicer.vtkMRMLSliceNode.CenteredJumpSlice)


class SAMMedAutoTest(ScriptedLoadableModuleTest):
    """Self-tests inside Slicer; the tests themselves are in ``SAMMedAutoLib/SelfTests.py`` (they assert on the widget,
    the scene and the written segments)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        from SAMMedAutoLib import SelfTests

        for test in SelfTests.TESTS:
            self.setUp()
            test(self)
