"""SAMMedAnnotator: segment CT/MR slices with Segment-Anything-family models from box and point prompts.

Module, parameter node, widget, logic and self-test. The MRML work lives in ``SAMMedAnnotatorLib`` (tested
outside Slicer with slicer-core) and the model work in the ``sammed`` package installed next to this file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import numpy as np
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
LICENCE_SETTING = "SAMMed/AcceptedLicence/"


#
# Module
#


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
    """Add the SAMMed effect to the Segment Editor (after startup, when the effect factory exists)."""
    try:
        import qSlicerSegmentationsEditorEffectsPythonQt as effects
    except ImportError:
        logging.warning("SAMMed: the Segment Editor is not available; its SAMMed effect is not registered.")
        return
    instance = effects.qSlicerSegmentEditorScriptedEffect(None)
    path = Path(__file__).resolve().parent / "SAMMedAnnotatorLib" / "SegmentEditorEffect.py"
    instance.setPythonSource(path.as_posix())
    instance.self().register()


#
# Parameter node
#


@parameterNodeWrapper
class SAMMedAnnotatorParameterNode:
    """Every user choice of the annotator (saved with the scene).

    inputVolume: the volume to segment. segmentation / segmentID: where Apply writes.
    boxNode, positivePoints, negativePoints: the prompt markups (ROI or two-point box; point lists).
    modelId, intensityPreset ("auto" follows the volume: CT window or MR clip), device.
    precomputeRadius: slices encoded each side of the current one. autoPreview: decode on every prompt change.
    useDiskCache: keep embeddings under Slicer's cache folder. useLearnedPrompts: SAMassist compare on/off.
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


#
# Widget
#


class SAMMedAnnotatorWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Binds the UI to the parameter node, shows state and progress, asks before installs and downloads."""

    PROMPT_EVENTS = (
        slicer.vtkMRMLMarkupsNode.PointAddedEvent,
        slicer.vtkMRMLMarkupsNode.PointRemovedEvent,
        slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent,
        slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent,
    )

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._promptNodes = []
        self._shortcuts = []

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SAMMedAnnotator.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SAMMedAnnotatorLogic()
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

        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(POLL_INTERVAL_MS)
        self.pollTimer.connect("timeout()", self.onPoll)
        self.previewTimer = qt.QTimer()
        self.previewTimer.setSingleShot(True)
        self.previewTimer.setInterval(PREVIEW_DELAY_MS)
        self.previewTimer.connect("timeout()", self.onPreviewTimer)
        self._previewing = False

        self.setRunning(False)
        self.initializeParameterNode()
        self.updateCacheButton()

    # ------------------------------------------------------------------ lifecycle
    def cleanup(self) -> None:
        self.removeObservers()
        self._removeShortcuts()
        self.pollTimer.stop()
        self.previewTimer.stop()
        if self.logic:
            self.logic.cleanup()

    def enter(self) -> None:
        self.initializeParameterNode()
        self._installShortcuts()
        self.pollTimer.start()

    def exit(self) -> None:
        self._removeShortcuts()
        for placeWidget in (self.ui.boxPlaceWidget, self.ui.positivePlaceWidget, self.ui.negativePlaceWidget):
            placeWidget.setPlaceModeEnabled(False)
        self.setParameterNode(None)

    def onReload(self) -> None:
        """Reload ``sammed`` and ``SAMMedAnnotatorLib`` (in import order) before the module itself."""
        import importlib
        import sys

        if self.logic:
            self.logic.cleanup()  # drops the segmenter and worker, so new classes are used
        names = [n for n in list(sys.modules) if n.split(".")[0] in ("sammed", "SAMMedAnnotatorLib")]
        for name in names:
            if sys.modules.get(name) is not None and name != "SAMMedAnnotatorLib.SegmentEditorEffect":
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
        self._observePrompts(p)
        if p is None:
            return
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
        self.ui.modelStatusLabel.text = self.logic.modelStatusText(p.modelId)
        self.logic.configure(p)

    def onSegmentChanged(self, segmentID) -> None:
        if self._parameterNode is not None:
            self._parameterNode.segmentID = segmentID or ""

    # ------------------------------------------------------------------ prompts
    def _observePrompts(self, p) -> None:
        nodes = [] if p is None else [n for n in (p.boxNode, p.positivePoints, p.negativePoints) if n]
        if nodes == self._promptNodes:
            return
        for node in self._promptNodes:
            for event in self.PROMPT_EVENTS:
                self.removeObserver(node, event, self.onPromptModified)
        for node in nodes:
            for event in self.PROMPT_EVENTS:
                self.addObserver(node, event, self.onPromptModified)
        self._promptNodes = nodes

    def onPromptModified(self, caller, event) -> None:
        self.logic.lastPromptNode = caller
        if self._parameterNode is not None and self._parameterNode.autoPreview:
            self.previewTimer.start()  # debounce: restarts on every change

    def onPreviewTimer(self) -> None:
        if self._previewing:  # re-entrancy guard
            return
        self._previewing = True
        try:
            self.runPreview(showErrors=False)
        finally:
            self._previewing = False

    def runPreview(self, showErrors: bool = True):
        if not self.ensureModelReady():
            return None
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
                index=result.index, axis=result.axis, iou=result.iou)
        return result

    def onPreviewButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Preview failed."), waitCursor=True):
            self.runPreview()

    def onApplyButton(self) -> None:
        if not self.ensureModelReady():
            return
        with slicer.util.tryWithErrorDisplay(_("Writing the segment failed."), waitCursor=True):
            result = self.logic.apply()
            self.ui.statusLabel.text = _("Wrote slice {index} (axis {axis}).").format(index=result.index,
                                                                                   axis=result.axis)

    def onUndoButton(self) -> None:
        if not self.logic.undo():
            self.ui.statusLabel.text = _("Nothing to undo.")

    def onClearPrompts(self) -> None:
        self.logic.clearPrompts(self._parameterNode)

    def _installShortcuts(self) -> None:
        if self._shortcuts:
            return
        window = slicer.util.mainWindow()
        for keys, slot in (
            ("Shift+P", lambda: self._placePoint(self.ui.positivePlaceWidget)),
            ("Shift+N", lambda: self._placePoint(self.ui.negativePlaceWidget)),
            ("Shift+A", self.onApplyButton),
            ("Ctrl+Z", self.onUndoButton),
        ):
            shortcut = qt.QShortcut(qt.QKeySequence(keys), window)
            shortcut.connect("activated()", slot)
            self._shortcuts.append(shortcut)

    def _removeShortcuts(self) -> None:
        for shortcut in self._shortcuts:
            shortcut.disconnect("activated()")
            shortcut.setParent(None)
        self._shortcuts = []

    def _placePoint(self, placeWidget) -> None:
        placeWidget.setPlaceModeEnabled(True)

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
            self.previewTimer.start()  # the slice the user prompts on is ready: decode now
        elif event.kind == "done" and event.name == "download":
            self.ui.modelStatusLabel.text = self.logic.modelStatusText(self._parameterNode.modelId)
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
        from SAMMedAnnotatorLib import Dependencies

        if self.logic.backendInjected:
            return True
        torchProblem = Dependencies.torchProblem()
        if torchProblem:
            if not slicer.util.confirmOkCancelDisplay(torchProblem + "\n\n" + _("Install PyTorch now?")):
                return False
            with slicer.util.tryWithErrorDisplay(_("PyTorch could not be installed."), waitCursor=True):
                Dependencies.installTorch(askConfirmation=False)
        problems = Dependencies.check()
        if problems:
            text = _("SAMMed needs these Python packages:") + "\n" + "\n".join(p.describe() for p in problems)
            if not slicer.util.confirmOkCancelDisplay(text + "\n\n" + _("Install them now?")):
                return False
            with slicer.util.tryWithErrorDisplay(_("Installing packages failed."), waitCursor=True):
                Dependencies.installPackages(problems)
        modelId = self._parameterNode.modelId
        info = self.logic.modelInfo(modelId)
        settings = qt.QSettings()
        if not settings.value(LICENCE_SETTING + modelId):
            text = _("Model {model}: {description}\nLicence: {licence}. Size: {size} MB.").format(
                model=modelId, description=info["description"], licence=info["licence"], size=info["size_mb"])
            if not slicer.util.confirmOkCancelDisplay(text + "\n\n" + _("Accept the licence and use this model?")):
                return False
            settings.setValue(LICENCE_SETTING + modelId, True)
        if not info["present"] and info["downloadable"]:
            text = _("Download the {model} weights ({size} MB)? They are checked with SHA256.").format(
                model=modelId, size=info["size_mb"])
            if not slicer.util.confirmOkCancelDisplay(text):
                return False
            self.logic.startDownload(modelId)  # background, with progress and Cancel
            self.setRunning(True)
            self.ui.statusLabel.text = _("Downloading {model}...").format(model=modelId)
            return False
        return True

    def onClearCacheButton(self) -> None:
        freed = self.logic.clearDiskCache()
        self.ui.statusLabel.text = _("Freed {mb:.1f} MB of cached embeddings.").format(mb=freed / 1e6)
        self.updateCacheButton()

    def updateCacheButton(self) -> None:
        size = self.logic.diskCacheBytes()
        self.ui.clearCacheButton.text = _("Clear cache ({mb:.1f} MB)").format(mb=size / 1e6)


#
# Logic
#


class SAMMedAnnotatorLogic(ScriptedLoadableModuleLogic):
    """Working state of the annotator: one ``SAMMedAnnotatorLib.Annotator`` (segmenter, cache, worker thread).

    Reads all choices from the parameter node; reports worker events through ``onEvent``; opens no dialogs.

    Args:
        backend: a ``sammed`` backend to use instead of loading ``modelId`` (tests pass ``FakeBackend``).
    """

    def __init__(self, backend=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._injectedBackend = backend
        self._annotator = None
        self._backendKey = None
        self.onEvent = None
        self.lastResult = None
        self.lastPromptNode = None
        self.lastAppliedAxis = 0

    def getParameterNode(self):
        return SAMMedAnnotatorParameterNode(super().getParameterNode())

    @property
    def backendInjected(self) -> bool:
        return self._injectedBackend is not None

    def setBackend(self, backend) -> None:
        """Use ``backend`` from now on (None: load the parameter node's model on first use)."""
        self._injectedBackend = backend
        if self._annotator is not None:
            self._annotator.setBackend(backend, self._loadBackend)

    @property
    def annotator(self):
        if self._annotator is None:
            from sammed.cache import EmbeddingCache
            from SAMMedAnnotatorLib.Annotator import Annotator

            os.environ.setdefault("SAMMED_HOME", str(Path(slicer.app.cachePath) / "SAMMed"))
            self._annotator = Annotator(
                slicer.mrmlScene, backend=self._injectedBackend, backendFactory=self._loadBackend,
                cache=EmbeddingCache(), appLogic=slicer.app.applicationLogic(), onEvent=self._forwardEvent)
            self.configure(self.getParameterNode())
        return self._annotator

    def _forwardEvent(self, event) -> None:
        if self.onEvent is not None:
            self.onEvent(event)

    def _loadBackend(self):
        from sammed import models

        p = self.getParameterNode()
        return models.load_backend(p.modelId, device=p.device)

    def configure(self, p) -> None:
        """Apply model/device/cache choices; a new model or device rebuilds the backend on next use."""
        if self._annotator is None or p is None:
            return
        key = (p.modelId, p.device)
        if self._backendKey is not None and key != self._backendKey and not self.backendInjected:
            self._annotator.setBackend(None, self._loadBackend)
        self._backendKey = key
        self._annotator.cache.disk_dir = self.diskCacheFolder() if p.useDiskCache else None
        if self._annotator.segmenter is not None:
            self._annotator.segmenter.use_learned = bool(p.useLearnedPrompts)

    def cleanup(self) -> None:
        if self._annotator is not None:
            self._annotator.cleanup()
            self._annotator = None

    @property
    def busy(self) -> bool:
        return self._annotator is not None and self._annotator.worker.busy

    def poll(self):
        return self._annotator.poll() if self._annotator is not None else []

    # ------------------------------------------------------------------ prompts and slices
    def ensurePromptNodes(self, p) -> None:
        """Create the prompt markups nodes (box ROI, positive and negative point lists) if missing."""
        scene = slicer.mrmlScene
        if p.boxNode is None:
            p.boxNode = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "SAMMed box")
        if p.positivePoints is None:
            node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "SAMMed positive")
            node.GetDisplayNode().SetSelectedColor(0.1, 0.9, 0.2)
            p.positivePoints = node
        if p.negativePoints is None:
            node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "SAMMed negative")
            node.GetDisplayNode().SetSelectedColor(0.95, 0.2, 0.2)
            p.negativePoints = node

    def clearPrompts(self, p) -> None:
        for node in (p.boxNode, p.positivePoints, p.negativePoints):
            if node is not None:
                node.RemoveAllControlPoints()
        self.annotator.clearPreview()
        self.lastResult = None

    def _sliceNodes(self):
        nodes = [slicer.mrmlScene.GetNthNodeByClass(i, "vtkMRMLSliceNode")
                 for i in range(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSliceNode"))]
        order = {"Red": 0, "Yellow": 1, "Green": 2}
        nodes = sorted(nodes, key=lambda n: order.get(n.GetLayoutName(), 3))
        # the view under the mouse when the prompt was placed comes first (a point on the line where two views
        # cross lies in both planes)
        crosshair = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        if crosshair is not None:
            xyz = [0.0, 0.0, 0.0]
            hovered = crosshair.GetCursorPositionXYZ(xyz)
            if hovered is not None:
                nodes.sort(key=lambda n: n.GetID() != hovered.GetID())  # stable: the hovered view first
        return nodes

    def promptSlice(self, p) -> tuple[int, int]:
        """(axis, index) of the slice the prompts were placed on: the view holding the last-changed prompt."""
        from SAMMedAnnotatorLib import VolumeAccess

        candidates = [self.lastPromptNode] + [p.boxNode, p.positivePoints, p.negativePoints]
        for node in candidates:
            if node is None or node.GetNumberOfControlPoints() == 0:
                continue
            if node.IsA("vtkMRMLMarkupsROINode"):
                center = [0.0, 0.0, 0.0]
                node.GetCenterWorld(center)
                point = np.array(center)
            else:
                point = VolumeAccess.controlPointsWorld(node)[-1]
            return self.annotator.sliceForPoint(p.inputVolume, point, self._sliceNodes())
        raise ValueError(_("Place a box or a point in a slice view first."))

    def preview(self, wait: bool = False):
        """Decode the prompts on their slice and show the mask; None while that slice is being encoded."""
        p = self.getParameterNode()
        annotator = self.annotator
        annotator.setVolume(p.inputVolume, None if p.intensityPreset == "auto" else p.intensityPreset)
        self.configure(p)
        axis, index = self.promptSlice(p)
        prompts = annotator.promptsFromMarkups(p.inputVolume, axis, index, p.boxNode, p.positivePoints,
                                               p.negativePoints)
        result = annotator.segment(prompts, wait=wait)
        if result is not None:
            annotator.showPreview(result, p.inputVolume)
            self.lastResult = result
            if p.precomputeRadius > 0:
                annotator.precompute(axis, index, p.precomputeRadius)
        return result

    def apply(self):
        """Decode the current prompts (encoding the slice now if needed) and write the mask into the segment."""
        p = self.getParameterNode()
        if p.segmentation is None or not p.segmentID:
            raise ValueError(_("Select a segmentation and a segment to write into."))
        result = self.preview(wait=True)
        self.annotator.apply(result, p.segmentation, p.segmentID, p.inputVolume)
        self.lastAppliedAxis = result.axis
        self.clearPrompts(p)
        return result

    def undo(self) -> bool:
        return self.annotator.undo()

    # ------------------------------------------------------------------ background work
    def precomputeAroundView(self) -> int:
        p = self.getParameterNode()
        annotator = self.annotator
        annotator.setVolume(p.inputVolume, None if p.intensityPreset == "auto" else p.intensityPreset)
        try:
            axis, index = self.promptSlice(p)
        except ValueError:
            red = slicer.mrmlScene.GetNodeByID("vtkMRMLSliceNodeRed")
            axis, index = annotator.sliceFromView(p.inputVolume, red.GetSliceToRAS())
        annotator.requestEncode(axis, index)
        return 1 + annotator.precompute(axis, index, p.precomputeRadius)

    def cancel(self) -> int:
        return self._annotator.cancel() if self._annotator is not None else 0

    def learnCase(self) -> int:
        p = self.getParameterNode()
        annotator = self.annotator
        annotator.setVolume(p.inputVolume, None if p.intensityPreset == "auto" else p.intensityPreset)
        # the axis the user has been segmenting (prompts are cleared after Apply)
        axis = self.lastResult.axis if self.lastResult is not None else self.lastAppliedAxis
        return annotator.learnCase(p.segmentation, p.segmentID, axis)

    # ------------------------------------------------------------------ models and cache
    def modelInfo(self, modelId: str) -> dict:
        """Description, licence, size and whether the weights are here (not hashed here: loading verifies them)."""
        from sammed import models

        spec = models.get_spec(modelId)
        return {
            "description": spec.description,
            "licence": spec.licence,
            "size_mb": round(spec.size / 1e6, 1),
            "present": models.weights_path(spec) is not None,
            "downloadable": bool(spec.url),
        }

    def modelStatusText(self, modelId: str) -> str:
        try:
            info = self.modelInfo(modelId)
        except ValueError as exc:
            return str(exc)
        if info["present"]:
            state = _("weights present (SHA256 checked when loaded)")
        else:
            state = _("download on first use") if info["downloadable"] else _("installed on first use")
        return f"{info['description']} ({info['licence']}, {info['size_mb']} MB): {state}"

    def startDownload(self, modelId: str) -> int:
        """Download a model's weights on the worker thread (SHA256-checked, written atomically by ``sammed``)."""
        from sammed import models
        from sammed.jobs import Cancelled

        def job(progress, shouldStop):
            def report(done: int, total: int) -> None:
                if shouldStop():
                    raise Cancelled("Download cancelled; nothing was kept.")
                progress(done / max(total, 1), f"Downloading {modelId}: {done / 1e6:.0f} of {total / 1e6:.0f} MB")

            return str(models.download_weights(modelId, progress=report))

        return self.annotator.worker.submit("download", job)

    @staticmethod
    def diskCacheFolder() -> Path:
        return Path(slicer.app.cachePath) / "SAMMed" / "embeddings"

    def diskCacheBytes(self) -> int:
        from sammed.cache import EmbeddingCache

        return EmbeddingCache(max_bytes=0, disk_dir=self.diskCacheFolder()).disk_usage()[1]

    def clearDiskCache(self) -> int:
        from sammed.cache import EmbeddingCache

        return EmbeddingCache(max_bytes=0, disk_dir=self.diskCacheFolder()).clear_disk()


#
# Test
#


class SAMMedAnnotatorTest(ScriptedLoadableModuleTest):
    """Drives the annotator through its widget on a synthetic volume with the fake (analytic) backend."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_BoxPromptPreviewApplyUndo()
        self.setUp()
        self.test_RemovingVolumeCancelsEmbedding()

    def _cubeScene(self):
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

    def _widget(self):
        slicer.util.selectModule("SAMMedAnnotator")
        widget = slicer.modules.sammedannotator.widgetRepresentation().self()
        from sammed.backends.fake import FakeBackend

        self.backend = FakeBackend(encode_delay=0.02)
        widget.logic.setBackend(self.backend)
        return widget

    def _waitForWorker(self, widget, timeout=20.0):
        self.assertTrue(widget.logic.annotator.worker.waitIdle(timeout))
        widget.onPoll()

    def test_BoxPromptPreviewApplyUndo(self):
        volume, segmentation, segmentID = self._cubeScene()
        widget = self._widget()
        p = widget.logic.getParameterNode()
        p.inputVolume = volume
        p.segmentation = segmentation
        p.segmentID = segmentID
        p.autoPreview = False
        red = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
        red.SetOrientation("Axial")
        index = 20
        red.SetSliceOffset(volume.GetOrigin()[2] + 2.0 * index)
        from SAMMedAnnotatorLib import VolumeAccess

        corners = VolumeAccess.sliceXYToWorld(volume, 0, index, [[8.0, 8.0], [39.0, 39.0]])
        p.boxNode.SetCenterWorld(*((corners[0] + corners[1]) / 2))
        p.boxNode.SetSizeWorld(*(np.abs(corners[1] - corners[0]) + [0, 0, 1.0]))
        widget.logic.lastPromptNode = p.boxNode
        crosshair = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        crosshair.SetCursorPositionXYZ([0.0, 0.0, 0.0], red)  # as if the box was just drawn in the Red view

        result = widget.runPreview()
        if result is None:  # the slice was queued for encoding first
            self._waitForWorker(widget)
            result = widget.runPreview()
        self.assertIsNotNone(result)
        self.assertEqual((result.axis, result.index), (0, index))
        self.assertEqual(int(result.mask_hw.sum()), 24 * 24)
        encodes = self.backend.encode_calls
        self.assertIsNotNone(widget.runPreview())
        self.assertEqual(self.backend.encode_calls, encodes, "a second prompt on the slice encodes nothing")

        widget.onApplyButton()
        written = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentID, volume)
        self.assertEqual(int(written.sum()), 24 * 24)
        self.assertEqual(int(written[index].sum()), 24 * 24)
        self.assertEqual(p.boxNode.GetNumberOfControlPoints(), 0, "prompts are cleared after Apply")

        widget.onUndoButton()
        written = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentID, volume)
        self.assertEqual(int(written.sum()), 0)
        self._waitForWorker(widget)

    def test_RemovingVolumeCancelsEmbedding(self):
        volume, segmentation, segmentID = self._cubeScene()
        widget = self._widget()
        self.backend.encode_delay = 0.1
        p = widget.logic.getParameterNode()
        p.inputVolume = volume
        annotator = widget.logic.annotator
        annotator.setVolume(volume)
        annotator.precompute(0, 20, radius=None)
        slicer.mrmlScene.RemoveNode(volume)
        self.assertIsNone(annotator.segmenter)
        self.assertTrue(annotator.worker.waitIdle(5.0))
        self.assertLess(self.backend.encode_calls, 40)
        events = widget.logic.poll()
        self.assertIn("cancelled", [e.kind for e in events])
        self.assertEqual(annotator.cache.memory_bytes, 0)
