"""SAMMedAnnotator: segment CT/MR slices with Segment-Anything-family models from box and point prompts.

Module, parameter node, widget, logic and self-test. The annotator's MRML work lives in ``SAMMedAnnotatorLib``,
what it shares with SAMMed Auto and the Segment Editor effect in ``SAMMedLib`` (both tested outside Slicer with
slicer-core), and the model work in the ``sammed`` package.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsFiducialNode
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

MODEL_IDS = ["litemedsam", "sam_vit_b", "sam_vit_l", "sam_vit_h"]  # sammed.models.REGISTRY; checked by a test
PRESET_NAMES = ["auto", "ct_abdomen", "ct_lung", "ct_bone", "ct_brain", "slidesam_ct", "slidesam_mr", "mr_percentile"]
DEVICES = ["auto", "cpu", "cuda", "mps"]
POLL_INTERVAL_MS = 100
PREVIEW_DELAY_MS = 200


class SAMMedAnnotator(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SAMMed Annotator")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations", "Markups"]
        self.parent.contributors = ["SAMMed developers"]
        self.parent.helpText = _(
            "Segment organs and lesions in CT and MR: draw a box or click points on a slice, check the preview, "
            "and Apply it to a segment. Slices are encoded in the background, so prompts decode at once. "
            "See the <a href='https://github.com/sammed-slicer/SlicerSAMMed'>documentation</a>."
        )
        self.parent.acknowledgementText = _(
            "Uses LiteMedSAM (MedSAM authors, Apache-2.0) and Segment Anything (Meta AI, Apache-2.0). "
            "Method: SAMMed (SAMassist and SAMauto)."
        )
        slicer.app.connect("startupCompleted()", registerSegmentEditorEffect)


def registerSegmentEditorEffect():
    """Add the SAMMed effect to the Segment Editor (after startup, when the effect factory exists).

    The effect's package is imported first: ``setPythonSource`` then finds the effect class in ``sys.modules`` under
    the folder's name and uses it, instead of loading the file over that name (SegmentEditorSAMMedLib/__init__.py).
    """
    try:
        import qSlicerSegmentationsEditorEffectsPythonQt as effects
    except ImportError:
        logging.warning("SAMMed: the Segment Editor is not available; its SAMMed effect is not registered.")
        return
    import SegmentEditorSAMMedLib

    instance = effects.qSlicerSegmentEditorScriptedEffect(None)
    instance.setPythonSource((Path(SegmentEditorSAMMedLib.__file__).parent / "SegmentEditorEffect.py").as_posix())
    instance.self().register()


@parameterNodeWrapper
class SAMMedAnnotatorParameterNode:
    """Every user choice of the annotator (saved with the scene).

    inputVolume: the volume to segment. segmentation / segmentID: where Apply writes.
    boxNode, positivePoints, negativePoints: the prompt markups (ROI or two-point box; point lists).
    modelId, intensityPreset ("auto" follows the volume: CT window or MR clip), device.
    precomputeRadius: slices encoded each side of the current one. autoPreview: decode on every prompt change.
    useDiskCache: keep embeddings under Slicer's cache folder. useLearnedPrompts: SAMassist compare on/off.
    useLearnedClicks: the shipped population prompt encoder (clicks work) or the model's own, to compare.
    """

    inputVolume: vtkMRMLScalarVolumeNode | None
    segmentation: vtkMRMLSegmentationNode | None
    segmentID: str = ""
    boxNode: vtkMRMLMarkupsROINode | None
    positivePoints: vtkMRMLMarkupsFiducialNode | None
    negativePoints: vtkMRMLMarkupsFiducialNode | None
    modelId: Annotated[str, Choice(MODEL_IDS)] = "litemedsam"
    intensityPreset: Annotated[str, Choice(PRESET_NAMES)] = "auto"
    device: Annotated[str, Choice(DEVICES)] = "auto"
    precomputeRadius: Annotated[int, WithinRange(0, 1000)] = 8
    autoPreview: bool = True
    useDiskCache: bool = False
    useLearnedPrompts: bool = True
    useLearnedClicks: bool = True


class SAMMedAnnotatorWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Binds the UI to the parameter node, shows state and progress, asks before installs and downloads."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SAMMedAnnotator.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SAMMedAnnotatorLogic()
        from SAMMedLib.ComputeOnSection import ComputeOnSection

        self.computeOnSection = ComputeOnSection(lambda: self.logic.session, self.ui.statusLabel.setText)
        self.layout.addWidget(self.computeOnSection.widget)
        self.logic.onEvent = self.onWorkerEvent

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.segmentSelector.connect("currentSegmentChanged(QString)", self.onSegmentChanged)
        self.ui.previewButton.connect("clicked(bool)", self.onPreviewButton)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.undoButton.connect("clicked(bool)", self.onUndoButton)
        self.ui.clearPromptsButton.connect("clicked(bool)", self.onClearPrompts)
        self.ui.precomputeButton.connect("clicked(bool)", self.onPrecomputeButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.clearCacheButton.connect("clicked(bool)", self.onClearCacheButton)
        self.ui.learnButton.connect("clicked(bool)", self.onLearnButton)
        for placeWidget in (self.ui.boxPlaceWidget, self.ui.positivePlaceWidget, self.ui.negativePlaceWidget):
            placeWidget.setMRMLScene(slicer.mrmlScene)
            placeWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups
        self.ui.boxPlaceWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceSingleMarkup

        from SAMMedAnnotatorLib.WidgetHelpers import PromptWatcher
        from SAMMedAnnotatorLib.WidgetHelpers import Shortcuts

        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(POLL_INTERVAL_MS)
        self.pollTimer.connect("timeout()", self.onPoll)
        self.prompts = PromptWatcher(lambda: self.runPreview(showErrors=False), PREVIEW_DELAY_MS)
        self.shortcuts = Shortcuts(
            [
                ("Shift+P", lambda: self.ui.positivePlaceWidget.setPlaceModeEnabled(True)),
                ("Shift+N", lambda: self.ui.negativePlaceWidget.setPlaceModeEnabled(True)),
                ("Shift+A", self.onApplyButton),
                ("Ctrl+Z", self.onUndoButton),
            ]
        )

        self.setRunning(False)
        self.initializeParameterNode()
        self.updateCacheButton()

    # ------------------------------------------------------------------ lifecycle
    def cleanup(self) -> None:
        self.pollTimer.stop()
        self.prompts.stop()
        self.shortcuts.remove()
        self.setParameterNode(None)  # disconnects the GUI from the parameter node
        self.removeObservers()
        if self.logic:
            self.logic.cleanup()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.shortcuts.install()
        self.pollTimer.start()

    def exit(self) -> None:
        # replies that arrive meanwhile wait in the session for the next enter(): onWorkerEvent needs the widget
        self.pollTimer.stop()
        self.shortcuts.remove()
        for placeWidget in (self.ui.boxPlaceWidget, self.ui.positivePlaceWidget, self.ui.negativePlaceWidget):
            placeWidget.setPlaceModeEnabled(False)
        self.setParameterNode(None)

    def onReload(self) -> None:
        """Reload ``sammed``, ``SAMMedLib`` and ``SAMMedAnnotatorLib`` (in import order) before the module itself;
        the shared session is ended so new classes are used."""
        import importlib
        import sys

        from SAMMedLib import ModelSession

        ModelSession.resetSharedSession()
        names = [n for n in list(sys.modules) if n.split(".")[0] in ("sammed", "SAMMedLib", "SAMMedAnnotatorLib")]
        for name in names:
            if sys.modules.get(name) is not None:
                importlib.reload(sys.modules[name])
        ScriptedLoadableModuleWidget.onReload(self)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        p = self._parameterNode
        if not p.inputVolume:
            p.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        self.logic.ensurePromptNodes(p)

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        p = self._parameterNode
        if p is None:
            self.prompts.stop()
            return
        self.prompts.watch([p.boxNode, p.positivePoints, p.negativePoints])
        self.prompts.enabled = p.autoPreview
        self.ui.segmentSelector.setCurrentNode(p.segmentation)
        if p.segmentID and self.ui.segmentSelector.currentSegmentID() != p.segmentID:
            self.ui.segmentSelector.setCurrentSegmentID(p.segmentID)
        self.ui.boxPlaceWidget.setCurrentNode(p.boxNode)
        self.ui.positivePlaceWidget.setCurrentNode(p.positivePoints)
        self.ui.negativePlaceWidget.setCurrentNode(p.negativePoints)
        ready = bool(p.inputVolume)
        self.ui.previewButton.enabled = ready
        self.ui.applyButton.enabled = ready and bool(p.segmentation) and bool(p.segmentID)
        self.ui.precomputeButton.enabled = ready
        self.ui.learnButton.enabled = ready and bool(p.segmentation) and bool(p.segmentID)
        self.ui.modelStatusLabel.text = self._modelStatusText(p.modelId)
        self.logic.configure(p)

    def onSegmentChanged(self, segmentID) -> None:
        if self._parameterNode is not None:
            self._parameterNode.segmentID = segmentID or ""

    # ------------------------------------------------------------------ prompts
    def runPreview(self, showErrors: bool = True):
        if not self.ensureModelReady():
            return None
        self.logic.lastPromptNode = self.prompts.lastNode or self.logic.lastPromptNode
        try:
            result = self.logic.preview()
        except ValueError as exc:
            self.ui.sliceLabel.text = str(exc)
            if showErrors:
                raise
            return None
        if result is None:
            self.ui.sliceLabel.text = _("Encoding this slice...")
        else:
            self.ui.sliceLabel.text = _("Slice {index} on axis {axis}: predicted IoU {iou:.2f}").format(
                index=result.index, axis=result.axis, iou=result.iou
            )
        return result

    def onPreviewButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Preview failed."), waitCursor=True):
            self.runPreview()

    def onApplyButton(self) -> None:
        if not self.ensureModelReady():
            return
        with slicer.util.tryWithErrorDisplay(_("Writing the segment failed."), waitCursor=True):
            result = self.logic.apply()
            self.ui.statusLabel.text = _("Wrote slice {index} (axis {axis}).").format(
                index=result.index, axis=result.axis
            )

    def onUndoButton(self) -> None:
        if not self.logic.undo():
            self.ui.statusLabel.text = _("Nothing to undo.")

    def onClearPrompts(self) -> None:
        self.logic.clearPrompts(self._parameterNode)

    # ------------------------------------------------------------------ background work
    def onPrecomputeButton(self) -> None:
        if not self.ensureModelReady():
            return
        with slicer.util.tryWithErrorDisplay(_("Encoding failed to start."), waitCursor=True):
            count = self.logic.precomputeAroundView()
            self.ui.statusLabel.text = _("Encoding {count} slices in the background.").format(count=count)
            self.setRunning(count > 0)

    def onCancelButton(self) -> None:
        self.logic.cancel()
        self.setRunning(False)
        self.ui.statusLabel.text = _("Cancelled.")

    def onLearnButton(self) -> None:
        if not self.ensureModelReady():
            return
        with slicer.util.tryWithErrorDisplay(_("SAMassist could not start."), waitCursor=True):
            self.logic.learnCase()
            self.setRunning(True)
            self.ui.statusLabel.text = _("Learning this case...")

    def setRunning(self, running: bool) -> None:
        self.ui.progressBar.setVisible(running)
        self.ui.cancelButton.enabled = running
        self.ui.learnButton.enabled = not running

    def onPoll(self) -> None:
        self.logic.poll()

    def onWorkerEvent(self, event) -> None:
        if event.kind == "progress":
            self.ui.progressBar.setValue(int(100 * event.fraction))
            self.ui.statusLabel.text = event.message
        elif event.kind == "failed":
            self.setRunning(False)
            self.ui.statusLabel.text = _("Failed: {error}").format(error=event.error)
        elif event.kind == "done" and event.name == "encode":
            self.prompts.timer.start()  # the slice the user prompts on is ready: decode now
        elif event.kind == "done" and event.name == "download":
            self.ui.modelStatusLabel.text = self._modelStatusText(self._parameterNode.modelId)
            self.ui.statusLabel.text = _("Model downloaded and verified; place or change a prompt to segment.")
        elif event.kind == "done" and event.name == "learn":
            self.setRunning(False)
            self.ui.statusLabel.text = _("Learned this case; prompts now use it (untick to compare).")
        if not self.logic.busy:
            self.setRunning(False)
            self.updateCacheButton()

    # ------------------------------------------------------------------ model, dependencies, cache
    def ensureModelReady(self) -> bool:
        """Install missing packages and torch, show the model licence, download weights, each after asking."""
        from SAMMedLib import Dependencies

        session = self.logic.session

        def startDownload(model: str) -> None:
            session.startDownload(model)  # background, with progress and Cancel
            self.setRunning(True)
            self.ui.statusLabel.text = _("Downloading {model}...").format(model=model)

        return session.backendInjected or Dependencies.ensureModelReadyInApp(self._parameterNode.modelId, startDownload)

    @staticmethod
    def _modelStatusText(modelId: str) -> str:
        from SAMMedLib import Dependencies

        return Dependencies.modelStatusText(modelId)

    def onClearCacheButton(self) -> None:
        try:  # sammed/cache.py: refuses a folder it cannot prove is its own cache, deleting nothing
            freed = self.logic.diskCache().clear_disk()
        except ValueError as exc:
            self.ui.statusLabel.text = str(exc)
            return
        self.ui.statusLabel.text = _("Freed {mb:.1f} MB of cached embeddings.").format(mb=freed / 1e6)
        self.updateCacheButton()

    def updateCacheButton(self) -> None:
        size = self.logic.diskCache().disk_usage()[1]
        self.ui.clearCacheButton.text = _("Clear cache ({mb:.1f} MB)").format(mb=size / 1e6)


class SAMMedAnnotatorLogic(ScriptedLoadableModuleLogic):
    """Working state of the annotator: one ``SAMMedAnnotatorLib.Annotator`` in the shared ``ModelSession``.

    Reads all choices from the parameter node; reports worker events through ``onEvent``; opens no dialogs.

    Args:
        session: the ``SAMMedLib.ModelSession`` to work in (default: the application's shared session).
    """

    def __init__(self, session=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._session = session
        self._annotator = None
        self.onEvent = None
        self.lastPromptNode = None

    def getParameterNode(self):
        return SAMMedAnnotatorParameterNode(super().getParameterNode())

    @property
    def session(self):
        from SAMMedLib.ModelSession import sharedSession

        return self._session or sharedSession()

    def useTestModel(self) -> None:
        """Use the analytic test model in the worker from now on (self-tests: nothing to install or download)."""
        self.session.useTestModel()

    @property
    def annotator(self):
        if self._annotator is None or self._annotator.session is not self.session:
            from SAMMedAnnotatorLib.Annotator import Annotator

            self._annotator = Annotator(
                slicer.mrmlScene,
                session=self.session,
                appLogic=slicer.app.applicationLogic(),
                onEvent=self._forwardEvent,
            )
            self.configure(self.getParameterNode())
        return self._annotator

    def _forwardEvent(self, event) -> None:
        if self.onEvent is not None:
            self.onEvent(event)

    def configure(self, p) -> None:
        """Apply model, device, intensity and cache choices to the shared session."""
        if p is None:
            return
        self.session.configure(
            p.modelId, p.device, p.intensityPreset, self.diskCache().disk_dir if p.useDiskCache else None
        )
        segmenter = self._annotator.segmenter if self._annotator is not None else None
        if segmenter is not None:
            segmenter.use_learned = bool(p.useLearnedPrompts)
            segmenter.promptEncoder = "learned" if p.useLearnedClicks else "original"

    def cleanup(self) -> None:
        if self._annotator is not None:
            self._annotator.cleanup()
            self._annotator = None

    @property
    def busy(self) -> bool:
        return self.session.worker.busy

    def poll(self):
        return self._annotator.poll() if self._annotator is not None else []

    # ------------------------------------------------------------------ prompts and slices
    def markups(self, p):
        """The prompt markups of the parameter node (``SAMMedAnnotatorLib.Annotator.PromptMarkups``)."""
        from SAMMedAnnotatorLib.Annotator import PromptMarkups

        return PromptMarkups(p.boxNode, p.positivePoints, p.negativePoints, self.lastPromptNode)

    def ensurePromptNodes(self, p) -> None:
        """Create the prompt markups nodes (box ROI, positive and negative point lists) if missing."""
        markups = self.markups(p)
        markups.create(slicer.mrmlScene)
        p.boxNode, p.positivePoints, p.negativePoints = markups.box, markups.positive, markups.negative

    def clearPrompts(self, p) -> None:
        self.markups(p).clear()
        self.annotator.clearPreview()

    def preview(self, wait: bool = False):
        """Decode the prompts on their slice and show the mask; None while that slice is being encoded."""
        p = self.getParameterNode()
        self.configure(p)
        return self.annotator.previewMarkups(p.inputVolume, self.markups(p), wait, p.precomputeRadius)

    def apply(self):
        """Decode the current prompts (encoding the slice now if needed) and write the mask into the segment."""
        p = self.getParameterNode()
        self.configure(p)
        return self.annotator.applyMarkups(
            p.inputVolume, self.markups(p), p.segmentation, p.segmentID, p.precomputeRadius
        )

    def undo(self) -> bool:
        return self.annotator.undo()

    # ------------------------------------------------------------------ background work
    def precomputeAroundView(self) -> int:
        p = self.getParameterNode()
        self.configure(p)
        red = slicer.mrmlScene.GetNodeByID("vtkMRMLSliceNodeRed")
        return self.annotator.precomputeAround(p.inputVolume, self.markups(p), red, p.precomputeRadius)

    def cancel(self) -> int:
        return self._annotator.cancel() if self._annotator is not None else 0

    def learnCase(self) -> int:
        p = self.getParameterNode()
        self.configure(p)
        annotator = self.annotator
        annotator.setVolume(p.inputVolume)
        return annotator.learnCase(p.segmentation, p.segmentID, annotator.lastAxis)

    # ------------------------------------------------------------------ cache
    @staticmethod
    def diskCache():
        """The disk tier of the embedding cache under Slicer's cache folder (for its size and Clear)."""
        from sammed.cache import EmbeddingCache

        return EmbeddingCache(max_bytes=0, disk_dir=Path(slicer.app.cachePath) / "SAMMed" / "embeddings")


class SAMMedAnnotatorTest(ScriptedLoadableModuleTest):
    """Self-tests inside Slicer; the tests are in ``SAMMedAnnotatorLib/SelfTests.py`` (they assert on the widget, the
    scene and the written segments)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        from SAMMedAnnotatorLib import SelfTests

        for test in SelfTests.TESTS:
            self.setUp()
            test(self)
