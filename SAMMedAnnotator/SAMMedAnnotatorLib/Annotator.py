"""The annotator's working state outside Qt: prompts from markups, decoding, preview, writes, background jobs.

``Annotator`` works on one volume at a time through a ``SAMMedLib.ModelSession`` (the worker process holding the
model and the embedding cache, shared with SAMMed Auto and the Segment Editor effect). The module's Logic is a thin
owner of one ``Annotator``; pytest drives it with ``slicer-core`` (no Qt: call ``poll()`` where the widget's QTimer
would). Uses only ``slicer`` MRML classes, ``vtk``, ``numpy`` and ``sammed``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import slicer

from sammed import geometry
from sammed import jobs
from sammed.prompts import Prompts
from sammed.segmenter import SliceResult
from sammed.worker.client import WorkerClient
from sammed.worker.remote import RemoteSegmenter
from SAMMedLib import SegmentIO
from SAMMedLib import VolumeAccess
from SAMMedLib.ModelSession import DEFAULT_MODEL
from SAMMedLib.ModelSession import DEFAULT_PRECOMPUTE_RADIUS
from SAMMedLib.ModelSession import ModelSession

PREVIEW_NODE_NAME = "SAMMed preview"
PREVIEW_COLOR = (1.0, 0.85, 0.1)


@dataclass
class PromptMarkups:
    """The markups nodes that hold the prompts: a box (ROI, or a point list whose last two points on the slice are
    its corners), positive and negative point lists, and the node the user changed last (its view is the slice)."""

    box: Any = None
    positive: Any = None
    negative: Any = None
    last: Any = None

    def create(self, scene) -> None:
        """Add the missing nodes to ``scene`` (box ROI, green positive and red negative point lists)."""
        if self.box is None:
            self.box = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "SAMMed box")
            self.box.CreateDefaultDisplayNodes()  # AddNewNodeByClass adds none; the views draw display nodes
        for name, field, color in (
            ("SAMMed positive", "positive", (0.1, 0.9, 0.2)),
            ("SAMMed negative", "negative", (0.95, 0.2, 0.2)),
        ):
            if getattr(self, field) is None:
                node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
                node.CreateDefaultDisplayNodes()
                node.GetDisplayNode().SetSelectedColor(*color)
                setattr(self, field, node)

    def clear(self) -> None:
        """Remove every control point."""
        for node in (self.box, self.positive, self.negative):
            if node is not None:
                node.RemoveAllControlPoints()


class Annotator:
    """Segment slices of one MRML volume at a time and write results into segments.

    Args:
        scene: the ``vtkMRMLScene``.
        editorNode: the ``vtkMRMLSegmentEditorNode`` whose masking/overwrite settings writes honour
            (default: the Segment Editor module's node in the scene).
        onEvent: called on the main thread for every worker event (from ``poll``).
        session: the ``ModelSession`` to work in (the module passes the shared one); None: a session of its own
            (with its own worker process) on ``modelId``.
    """

    def __init__(
        self,
        scene,
        editorNode=None,
        appLogic=None,
        onEvent: Callable[[jobs.WorkerEvent], None] | None = None,
        session: ModelSession | None = None,
        modelId: str = DEFAULT_MODEL,
    ) -> None:
        self.scene = scene
        self._ownsSession = session is None
        self.session = session if session is not None else ModelSession(scene, modelId=modelId)
        self.editorLogic = SegmentIO.makeEditorLogic(scene, editorNode, appLogic)
        self.onEvent = onEvent
        self._volumeNodeID: str | None = None
        self.lastAxis = 0  # the axis the user prompted on last (prompts are cleared after a write)

    # ------------------------------------------------------------------ life cycle
    @property
    def worker(self) -> WorkerClient:
        return self.session.worker

    @property
    def segmenter(self) -> RemoteSegmenter | None:
        """The segmenter of the current volume (None before ``setVolume`` or after the volume was released)."""
        return self.session.knownSegmenter(self._volumeNodeID)

    @property
    def volumeNodeID(self) -> str | None:
        return self._volumeNodeID if self.segmenter is not None else None

    def cleanup(self) -> None:
        """Cancel jobs; a session of its own is ended (observers removed, worker process stopped)."""
        if self._ownsSession:
            self.session.cleanup()
        else:
            self.cancel()

    def releaseVolume(self) -> None:
        """Cancel jobs of the current volume, let the worker forget its voxels and embeddings."""
        self.session.release(self._volumeNodeID)
        self._volumeNodeID = None

    # ------------------------------------------------------------------ volume and slices
    def setVolume(self, volumeNode, preset: str | None = None) -> RemoteSegmenter:
        """The segmenter of ``volumeNode``, rebuilt when its voxels, the preset or the model change.

        Raises:
            ValueError: no volume, not scalar, or under a non-linear transform.
        """
        segmenter = self.session.segmenter(volumeNode, preset)
        self._volumeNodeID = volumeNode.GetID()
        return segmenter

    def volumeNode(self):
        return self.scene.GetNodeByID(self._volumeNodeID) if self._volumeNodeID else None

    def sliceFromView(self, volumeNode, sliceToRAS) -> tuple[int, int]:
        """(axis, index) a slice view shows (see ``VolumeAccess.sliceAxisAndIndex``)."""
        return VolumeAccess.sliceAxisAndIndex(volumeNode, sliceToRAS)

    def sliceForPoint(self, volumeNode, pointWorld, sliceNodes) -> tuple[int, int]:
        """(axis, index) of the first slice view whose plane holds ``pointWorld`` (the view a prompt was placed in).

        Args:
            pointWorld: (3,) RAS world position of the prompt's last control point.
            sliceNodes: candidate ``vtkMRMLSliceNode``s (e.g. Red, Yellow, Green and any other slice views).

        Raises:
            ValueError: the point lies only in oblique views, or in no view.
        """
        oblique = None
        tolerance = 1e-3 + 0.5 * float(max(volumeNode.GetSpacing()))
        for sliceNode in sliceNodes:
            sliceToRAS = VolumeAccess.asArray4x4(sliceNode.GetSliceToRAS())
            normal = sliceToRAS[:3, 2] / np.linalg.norm(sliceToRAS[:3, 2])
            if abs(float(np.dot(np.asarray(pointWorld) - sliceToRAS[:3, 3], normal))) > tolerance:
                continue
            try:
                axis, index = VolumeAccess.sliceAxisAndIndex(volumeNode, sliceToRAS)
            except ValueError as exc:
                oblique = oblique or exc
                continue
            _, depth = VolumeAccess.worldToSliceXY(volumeNode, axis, [pointWorld])
            if abs(depth[0] - index) <= 0.5 + 1e-6:
                return axis, index
        if oblique is not None:
            raise oblique
        raise ValueError(
            "The prompt is not on a slice shown in a slice view; place it in the Red, Yellow or Green view."
        )

    def viewSliceNodes(self) -> list:
        """The scene's slice nodes: Red, Yellow, Green, then the others; the view under the mouse (the crosshair's
        hovered view, where a prompt was just placed) first, because a point on the line where two views cross
        lies in both planes."""
        scene = self.scene
        nodes = [
            scene.GetNthNodeByClass(i, "vtkMRMLSliceNode")
            for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode"))
        ]
        order = {"Red": 0, "Yellow": 1, "Green": 2}
        nodes.sort(key=lambda n: order.get(n.GetLayoutName(), 3))
        crosshair = scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        if crosshair is not None:
            hovered = crosshair.GetCursorPositionXYZ([0.0, 0.0, 0.0])
            if hovered is not None:
                nodes.sort(key=lambda n: n.GetID() != hovered.GetID())  # stable: the hovered view first
        return nodes

    def promptSlice(self, volumeNode, promptNodes) -> tuple[int, int]:
        """(axis, index) of the slice the prompts were placed on: the view holding the first prompt node's point
        (ROI centre or last control point) among ``promptNodes`` that has one.

        Raises:
            ValueError: no prompt, or only in oblique views.
        """
        for node in promptNodes:
            if node is None or node.GetNumberOfControlPoints() == 0:
                continue
            if node.IsA("vtkMRMLMarkupsROINode"):
                center = [0.0, 0.0, 0.0]
                node.GetCenterWorld(center)
                point = np.array(center)
            else:
                point = VolumeAccess.controlPointsWorld(node)[-1]
            return self.sliceForPoint(volumeNode, point, self.viewSliceNodes())
        raise ValueError("Place a box or a point in a slice view first.")

    def promptsFromMarkups(
        self, volumeNode, axis: int, index: int, boxNode=None, positiveNode=None, negativeNode=None
    ) -> Prompts:
        """Prompts on slice ``index`` read from markups nodes (points on other slices are ignored).

        Args:
            boxNode: a ``vtkMRMLMarkupsROINode``, or a point list whose last two points on this slice are the
                corners of a rectangle; None for no box.
            positiveNode, negativeNode: point lists of positive and negative points; None for none.
        """
        box = None
        if boxNode is not None and boxNode.GetNumberOfControlPoints() > 0:
            if boxNode.IsA("vtkMRMLMarkupsROINode"):
                box = VolumeAccess.roiBoxOnSlice(volumeNode, axis, index, boxNode)
            else:
                corners = VolumeAccess.controlPointsWorld(boxNode)
                if len(VolumeAccess.pointsOnSlice(volumeNode, axis, index, corners)) >= 2:
                    box = VolumeAccess.twoPointBoxOnSlice(volumeNode, axis, index, corners)
        pts, labels = [], []
        for node, label in ((positiveNode, 1), (negativeNode, 0)):
            xy = VolumeAccess.pointsOnSlice(volumeNode, axis, index, VolumeAccess.controlPointsWorld(node))
            pts.extend(xy.tolist())
            labels.extend([label] * len(xy))
        return Prompts.make(box, pts or None, labels or None)

    def markupsSlice(self, volumeNode, markups: PromptMarkups) -> tuple[int, int]:
        """(axis, index) of the slice the prompts were placed on: the view of the last-changed prompt node."""
        return self.promptSlice(volumeNode, [markups.last, markups.box, markups.positive, markups.negative])

    def previewMarkups(
        self, volumeNode, markups: PromptMarkups, wait: bool = False, precomputeRadius: int = DEFAULT_PRECOMPUTE_RADIUS
    ) -> SliceResult | None:
        """Decode the prompts on their slice and show the mask; queue encoding around it. None while that slice is
        being encoded (``wait`` False).

        Raises:
            ValueError: no volume, no prompt, prompts outside the slice or only in oblique views.
        """
        self.setVolume(volumeNode)
        axis, index = self.markupsSlice(volumeNode, markups)
        prompts = self.promptsFromMarkups(volumeNode, axis, index, markups.box, markups.positive, markups.negative)
        result = self.segment(axis, index, prompts, wait=wait)
        if result is not None:
            self.showPreview(result, volumeNode)
            self.lastAxis = axis
            if precomputeRadius > 0:
                self.precompute(axis, index, precomputeRadius)
        return result

    def applyMarkups(
        self,
        volumeNode,
        markups: PromptMarkups,
        segmentationNode,
        segmentID: str,
        precomputeRadius: int = DEFAULT_PRECOMPUTE_RADIUS,
    ) -> SliceResult:
        """Decode the prompts (encoding their slice now if needed), write the mask into the segment, clear them.

        Raises:
            ValueError: no segment, or what ``previewMarkups`` raises.
        """
        if segmentationNode is None or not segmentID:
            raise ValueError("Select a segmentation and a segment to write into.")
        result = self.previewMarkups(volumeNode, markups, wait=True, precomputeRadius=precomputeRadius)
        self.apply(result, segmentationNode, segmentID, volumeNode)
        markups.clear()
        self.clearPreview()
        return result

    def precomputeAround(self, volumeNode, markups: PromptMarkups, fallbackSliceNode, radius: int) -> int:
        """Encode the prompts' slice first, then ``radius`` slices each side (the slice of ``fallbackSliceNode``
        when there is no prompt); returns the number of slices queued."""
        self.setVolume(volumeNode)
        try:
            axis, index = self.markupsSlice(volumeNode, markups)
        except ValueError:
            axis, index = self.sliceFromView(volumeNode, fallbackSliceNode.GetSliceToRAS())
        self.requestEncode(axis, index)
        return 1 + self.precompute(axis, index, radius)

    # ------------------------------------------------------------------ segmentation
    def isEncoded(self, axis: int, index: int) -> bool:
        return self.segmenter is not None and self.segmenter.is_cached(axis, index)

    def segment(self, axis: int, index: int, prompts: Prompts, wait: bool = True) -> SliceResult | None:
        """Decode the prompts on slice ``index`` of ``axis`` in the worker. If the slice is not encoded yet:
        ``wait`` waits while the worker encodes it; otherwise the worker is asked to encode it ahead of background
        work and None is returned (call again when ``poll`` reports it done).

        Raises:
            ValueError: no volume set, no prompt, prompt outside the slice, empty slice.
        """
        segmenter = self.segmenter
        if segmenter is None:
            raise ValueError("Select a volume first.")
        if prompts.empty:
            raise ValueError("Place a box or a point on the slice first.")
        if not wait and not self.isEncoded(axis, index):
            self.requestEncode(axis, index)
            return None
        return segmenter.segment(axis, index, prompts)

    def requestEncode(self, axis: int, index: int) -> int | None:
        """Queue the encode of one slice ahead of the others; None when it is cached or already queued."""
        segmenter = self.segmenter
        return None if segmenter is None else self.session.requestEncode(segmenter, axis, index)

    def precompute(self, axis: int, center: int, radius: int | None = DEFAULT_PRECOMPUTE_RADIUS) -> int:
        """Queue background encoding of the slices around ``center`` (``ModelSession.precompute``).

        Raises:
            ValueError: no volume set.
        """
        segmenter = self.segmenter
        if segmenter is None:
            raise ValueError("Select a volume first.")
        return self.session.precompute(segmenter, axis, center, radius)

    def cancel(self) -> int:
        """Cancel the annotator's queued and running background work (not SAMMed Auto's)."""
        return self.session.cancel(owner="")

    def poll(self) -> list[jobs.WorkerEvent]:
        """Collect worker events (main thread, never waits; the widget's QTimer calls this)."""
        events = self.session.drain()
        if self.onEvent is not None:
            for event in events:
                self.onEvent(event)
        return events

    # ------------------------------------------------------------------ writing
    def apply(self, result: SliceResult, segmentationNode, segmentID: str, volumeNode=None) -> None:
        """Write ``result.mask_hw`` into the segment on its slice: one undo step, with the editor's masking and
        overwrite settings (``SegmentIO.writeSlices``)."""
        volumeNode = volumeNode or self.volumeNode()
        if volumeNode is None:
            raise ValueError("Select a volume first.")
        SegmentIO.writeSlices(
            SegmentIO.LogicWriter(self.editorLogic),
            segmentationNode,
            segmentID,
            volumeNode,
            result.axis,
            {result.index: result.mask_hw},
        )

    def undo(self) -> bool:
        return SegmentIO.undo(self.editorLogic)

    # ------------------------------------------------------------------ preview
    def previewNode(self, create: bool = True):
        """The segmentation node that shows the preview (not saved with the scene, no undo)."""
        node = self.scene.GetFirstNodeByName(PREVIEW_NODE_NAME)
        if node is None and create:
            node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", PREVIEW_NODE_NAME)
            node.SetSaveWithScene(False)
            node.SetHideFromEditors(False)  # hidden nodes may not be drawn by every displayable manager
            node.CreateDefaultDisplayNodes()
            node.GetSegmentation().AddEmptySegment("preview", "preview", list(PREVIEW_COLOR))
        return node

    def showPreview(self, result: SliceResult, volumeNode=None) -> None:
        """Show ``result.mask_hw`` (only) in the preview segmentation."""
        volumeNode = volumeNode or self.volumeNode()
        node = self.previewNode()
        labelmap = SegmentIO.sliceLabelmap(volumeNode, node, result.axis, result.index, result.mask_hw)
        slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            labelmap, node, "preview", slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE
        )

    def clearPreview(self) -> None:
        node = self.previewNode(create=False)
        if node is not None:
            self.scene.RemoveNode(node)

    # ------------------------------------------------------------------ SAMassist
    def learnCase(self, segmentationNode, segmentID: str, axis: int, config: Any = None) -> int:
        """Fit SAMassist (``sammed.assist``) on the slices where the segment has voxels, in the background.

        The worker decodes this volume's prompts with the learned prompt encoder once the job is done;
        ``segmenter.use_learned`` switches between it and the original one (compare on/off).

        Args:
            config: ``sammed.assist.AssistConfig`` (default settings when None).

        Raises:
            ValueError: no volume, or no segmented slice on ``axis``.
        """
        volumeNode = self.volumeNode()
        segmenter = self.segmenter
        if segmenter is None or volumeNode is None:
            raise ValueError("Select a volume first.")
        array = SegmentIO.segmentArray(segmentationNode, segmentID, volumeNode)
        indices = geometry.foreground_slices(array, axis)
        if not indices:
            raise ValueError("Segment a few slices first: SAMassist learns from the slices you have segmented.")
        masks = {i: geometry.extract_slice(array, axis, i).astype(bool) for i in indices}
        target = segmentationNode.GetSegmentation().GetSegment(segmentID).GetName() or segmentID
        return self.session.learn(segmenter, masks, axis, target, config)
