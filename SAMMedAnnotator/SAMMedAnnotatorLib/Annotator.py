"""The annotator's working state outside Qt: volume -> segmenter, prompts from markups, preview, writes, jobs.

``Annotator`` takes the scene, a backend (or a factory) and optionally a cache; it observes the scene so that
removing the segmented volume or closing the scene cancels its jobs and releases its embeddings. The module's
Logic is a thin owner of one ``Annotator``; pytest drives it with ``slicer-core`` (no Qt: call ``poll()``).
Uses only ``slicer`` MRML classes, ``vtk``, ``numpy`` and ``sammed``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import slicer
import vtk
from sammed import geometry
from sammed.cache import EmbeddingCache
from sammed.jobs import Cancelled
from sammed.segmenter import Segmenter
from sammed.segmenter import SliceResult

from . import SegmentWrite
from . import VolumeAccess
from .Worker import Worker
from .Worker import WorkerEvent

PREVIEW_NODE_NAME = "SAMMed preview"
PREVIEW_COLOR = (1.0, 0.85, 0.1)
DEFAULT_PRECOMPUTE_RADIUS = 8  # slices each side of the current one


@dataclass
class SlicePrompts:
    """Prompts on one slice, in its pixel frame (``sammed.geometry``).

    Attributes:
        axis, index: the slice.
        box_xyxy: (4,) XYXY inclusive pixel box, or None.
        points_xy: Nx2 (x = column, y = row), or None.
        point_labels: N ints, 1 positive / 0 negative, or None.
    """

    axis: int
    index: int
    box_xyxy: np.ndarray | None = None
    points_xy: np.ndarray | None = None
    point_labels: np.ndarray | None = None

    @property
    def empty(self) -> bool:
        return self.box_xyxy is None and (self.points_xy is None or len(self.points_xy) == 0)


class Annotator:
    """Segment slices of one MRML volume at a time and write results into segments.

    Args:
        scene: the ``vtkMRMLScene``.
        backend: a ``sammed`` backend, or None to call ``backendFactory`` on first use.
        backendFactory: ``() -> backend`` (e.g. ``lambda: models.load_backend("litemedsam")``), called lazily.
        cache: embedding cache (a memory-only one is made if None).
        editorNode: the ``vtkMRMLSegmentEditorNode`` whose masking/overwrite settings writes honour
            (default: the Segment Editor module's node in the scene).
        onEvent: called on the main thread for every worker event (from ``poll``) and for ``released``.
    """

    def __init__(self, scene, backend=None, backendFactory: Callable[[], object] | None = None,
                 cache: EmbeddingCache | None = None, editorNode=None, appLogic=None,
                 onEvent: Callable[[WorkerEvent], None] | None = None) -> None:
        self.scene = scene
        self._backend = backend
        self._backendFactory = backendFactory
        self.cache = cache if cache is not None else EmbeddingCache()
        self.editorLogic = SegmentWrite.makeEditorLogic(scene, editorNode, appLogic)
        self.worker = Worker()
        self.onEvent = onEvent
        self.segmenter: Segmenter | None = None
        self.volumeNodeID: str | None = None
        self._volumeStamp: tuple | None = None
        self._preset: str | None = None
        self._pendingEncode: set[tuple[int, int]] = set()
        self._learnFor: Segmenter | None = None
        self._observations = [
            scene.AddObserver(slicer.vtkMRMLScene.NodeAboutToBeRemovedEvent, self._onNodeAboutToBeRemoved),
            scene.AddObserver(slicer.vtkMRMLScene.StartCloseEvent, self._onSceneClose),
        ]

    # ------------------------------------------------------------------ life cycle
    @property
    def backend(self):
        if self._backend is None:
            if self._backendFactory is None:
                raise RuntimeError("No segmentation model is loaded.")
            self._backend = self._backendFactory()
        return self._backend

    def setBackend(self, backend=None, backendFactory=None) -> None:
        """Switch model: running jobs are cancelled and the segmenter is rebuilt on next use."""
        self.worker.cancel()
        self._backend = backend
        self._backendFactory = backendFactory
        self.segmenter = None

    def cleanup(self) -> None:
        """Remove scene observers, cancel jobs and end the worker thread."""
        for tag in self._observations:
            self.scene.RemoveObserver(tag)
        self._observations = []
        self.releaseVolume()
        self.worker.shutdown()

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def _onNodeAboutToBeRemoved(self, caller, event, node) -> None:  # noqa: ARG002
        if node is not None and self.volumeNodeID is not None and node.GetID() == self.volumeNodeID:
            self.releaseVolume()

    def _onSceneClose(self, caller, event) -> None:  # noqa: ARG002
        self.releaseVolume()

    def releaseVolume(self) -> None:
        """Cancel jobs of the current volume, drop its embeddings from memory and forget the segmenter."""
        self.worker.cancel()
        if self.segmenter is not None:
            self.cache.release(self.segmenter.volume.digest)
        self.segmenter = None
        self.volumeNodeID = None
        self._volumeStamp = None
        self._pendingEncode.clear()

    # ------------------------------------------------------------------ volume and slices
    def setVolume(self, volumeNode, preset: str | None = None) -> Segmenter:
        """The segmenter of ``volumeNode`` (a numpy copy of it), rebuilt when the node, its voxels or the preset change.

        Raises:
            ValueError: no volume, not scalar, or under a non-linear transform.
        """
        if volumeNode is None:
            raise ValueError("Select a volume first.")
        backend = self.backend  # loads the model on first use
        stamp = (volumeNode.GetID(), volumeNode.GetImageData().GetMTime() if volumeNode.GetImageData() else 0,
                 preset or "", id(backend))
        if self.segmenter is not None and stamp == self._volumeStamp:
            return self.segmenter
        if self.segmenter is not None:
            self.worker.cancel()
            if self.volumeNodeID != volumeNode.GetID():
                self.cache.release(self.segmenter.volume.digest)
        volume = VolumeAccess.volumeFromNode(volumeNode)
        self.segmenter = Segmenter(volume, backend, cache=self.cache, preset=preset or None)
        self.volumeNodeID = volumeNode.GetID()
        self._volumeStamp = stamp
        self._preset = preset
        return self.segmenter

    def volumeNode(self):
        return self.scene.GetNodeByID(self.volumeNodeID) if self.volumeNodeID else None

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
        for sliceNode in sliceNodes:
            sliceToRAS = VolumeAccess.asArray4x4(sliceNode.GetSliceToRAS())
            normal = sliceToRAS[:3, 2] / np.linalg.norm(sliceToRAS[:3, 2])
            if abs(float(np.dot(np.asarray(pointWorld) - sliceToRAS[:3, 3], normal))) > 1e-3 + self._halfVoxel(
                    volumeNode):
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
            "The prompt is not on a slice shown in a slice view; place it in the Red, Yellow or Green view.")

    @staticmethod
    def _halfVoxel(volumeNode) -> float:
        return 0.5 * float(max(volumeNode.GetSpacing()))

    def promptsFromMarkups(self, volumeNode, axis: int, index: int, boxNode=None, positiveNode=None,
                           negativeNode=None) -> SlicePrompts:
        """Prompts on slice ``index`` read from markups nodes (points on other slices are ignored).

        Args:
            boxNode: a ``vtkMRMLMarkupsROINode``, or a point list whose last two points on this slice are the
                corners of a rectangle; None for no box.
            positiveNode, negativeNode: point lists of positive and negative points; None for none.
        """
        prompts = SlicePrompts(axis, index)
        if boxNode is not None and boxNode.GetNumberOfControlPoints() > 0:
            if boxNode.IsA("vtkMRMLMarkupsROINode"):
                prompts.box_xyxy = VolumeAccess.roiBoxOnSlice(volumeNode, axis, index, boxNode)
            elif len(VolumeAccess.pointsOnSlice(volumeNode, axis, index,
                                                VolumeAccess.controlPointsWorld(boxNode))) >= 2:
                prompts.box_xyxy = VolumeAccess.twoPointBoxOnSlice(
                    volumeNode, axis, index, VolumeAccess.controlPointsWorld(boxNode))
        pts, labels = [], []
        for node, label in ((positiveNode, 1), (negativeNode, 0)):
            xy = VolumeAccess.pointsOnSlice(volumeNode, axis, index, VolumeAccess.controlPointsWorld(node))
            pts.extend(xy.tolist())
            labels.extend([label] * len(xy))
        if pts:
            prompts.points_xy = np.asarray(pts, dtype=float)
            prompts.point_labels = np.asarray(labels, dtype=int)
        return prompts

    # ------------------------------------------------------------------ segmentation
    def isEncoded(self, axis: int, index: int) -> bool:
        return self.segmenter is not None and self.segmenter.is_cached(axis, index)

    def segment(self, prompts: SlicePrompts, wait: bool = True, mask_input: np.ndarray | None = None
                ) -> SliceResult | None:
        """Decode the prompts. If the slice is not encoded yet: ``wait`` encodes it now (blocking); otherwise the
        encode is queued first on the worker and None is returned (call again when ``poll`` reports it done).

        Raises:
            ValueError: no volume set, no prompt, prompt outside the slice, empty slice.
        """
        if self.segmenter is None:
            raise ValueError("Select a volume first.")
        if prompts.empty:
            raise ValueError("Place a box or a point on the slice first.")
        if not wait and not self.isEncoded(prompts.axis, prompts.index):
            self.requestEncode(prompts.axis, prompts.index)
            return None
        return self.segmenter.segment(prompts.axis, prompts.index, box_xyxy=prompts.box_xyxy,
                                      points_xy=prompts.points_xy, point_labels=prompts.point_labels,
                                      mask_input=mask_input)

    def requestEncode(self, axis: int, index: int) -> int | None:
        """Queue the encode of one slice ahead of the others; None when it is cached or already queued."""
        if self.isEncoded(axis, index) or (axis, index) in self._pendingEncode:
            return None
        segmenter = self.segmenter
        self._pendingEncode.add((axis, index))

        def job(progress, shouldStop):  # worker thread: numpy and sammed only
            segmenter.precompute(axis, index, indices=[index], should_stop=shouldStop)
            if shouldStop():
                self.cache.release(segmenter.volume.digest)
                raise Cancelled()
            return (axis, index)

        return self.worker.submit("encode", job, first=True)

    def precompute(self, axis: int, center: int, radius: int | None = DEFAULT_PRECOMPUTE_RADIUS) -> int:
        """Queue background encoding of the slices around ``center``: the centre first, then outward.

        One worker job per slice, so a prompt on another slice (``requestEncode``) jumps ahead of them.

        Args:
            radius: slices each side of ``center``; None for the whole axis.

        Returns:
            the number of slices queued (cached ones are skipped).
        """
        if self.segmenter is None:
            raise ValueError("Select a volume first.")
        segmenter = self.segmenter
        n = segmenter.volume.shape_kji[axis]
        center = min(max(int(center), 0), n - 1)
        reach = n if radius is None else int(radius)
        order = [center] + [i for d in range(1, reach + 1) for i in (center + d, center - d) if 0 <= i < n]
        order = [i for i in order if not segmenter.is_cached(axis, i)]
        batch = {"done": 0, "total": len(order)}

        def makeJob(index: int):
            def job(progress, shouldStop):  # worker thread: numpy and sammed only
                if not shouldStop():
                    segmenter.embedding(axis, index)
                if shouldStop():  # cancelled while encoding: the volume may be gone, keep nothing of it
                    self.cache.release(segmenter.volume.digest)
                    raise Cancelled()
                batch["done"] += 1
                progress(batch["done"] / batch["total"],
                         f"Embedding slice {index} ({batch['done']} of {batch['total']})")
                return (axis, index)

            return job

        for index in order:
            self.worker.submit("embed", makeJob(index))
        return len(order)

    def cancel(self) -> int:
        """Cancel queued and running background work."""
        self._pendingEncode.clear()
        return self.worker.cancel()

    def poll(self) -> list[WorkerEvent]:
        """Collect worker events (main thread; the widget's QTimer calls this)."""
        events = self.worker.drain()
        for event in events:
            if event.name == "encode" and event.kind != "progress" and isinstance(event.result, tuple):
                self._pendingEncode.discard(event.result)
            if event.name == "encode" and event.kind in ("cancelled", "failed"):
                self._pendingEncode.clear()
            if event.name == "learn" and event.kind == "done" and self.segmenter is not None \
                    and self.segmenter is getattr(self, "_learnFor", None):
                assistModule().attach(self.segmenter, event.result)
            if self.onEvent is not None:
                self.onEvent(event)
        return events

    # ------------------------------------------------------------------ writing
    def apply(self, result: SliceResult, segmentationNode, segmentID: str, volumeNode=None) -> None:
        """Write ``result.mask_hw`` into the segment on its slice: one undo step, with the editor's masking and
        overwrite settings."""
        volumeNode = volumeNode or self.volumeNode()
        if volumeNode is None:
            raise ValueError("Select a volume first.")
        SegmentWrite.writeSliceMask(self.editorLogic, segmentationNode, segmentID, volumeNode, result.axis,
                                    result.index, result.mask_hw)

    def undo(self) -> bool:
        return SegmentWrite.undo(self.editorLogic)

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
        labelmap, _ = SegmentWrite.sliceLabelmap(volumeNode, node, result.axis, result.index, result.mask_hw)
        slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            labelmap, node, "preview", slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)

    def clearPreview(self) -> None:
        node = self.previewNode(create=False)
        if node is not None:
            self.scene.RemoveNode(node)

    # ------------------------------------------------------------------ SAMassist
    def learnCase(self, segmentationNode, segmentID: str, axis: int, config=None) -> int:
        """Fit SAMassist (``sammed.assist``) on the slices where the segment has voxels, in the background.

        The learned prompt encoder is attached to the segmenter when the job is done (in ``poll``);
        ``segmenter.use_learned`` switches between it and the original one (compare on/off).

        Args:
            config: ``sammed.assist.AssistConfig`` (default settings when None).

        Raises:
            RuntimeError: ``sammed.assist`` is not available in this version.
            ValueError: no volume, or no segmented slice on ``axis``.
        """
        volumeNode = self.volumeNode()
        if self.segmenter is None or volumeNode is None:
            raise ValueError("Select a volume first.")
        array = SegmentWrite.segmentArray(segmentationNode, segmentID, volumeNode)
        indices = geometry.foreground_slices(array, axis)  # the exported array, not a second export
        if not indices:
            raise ValueError("Segment a few slices first: SAMassist learns from the slices you have segmented.")
        assist = assistModule()  # imports torch: only once there is something to learn from
        masks = {i: np.take(array, i, axis=axis).astype(bool) for i in indices}
        target = segmentationNode.GetSegmentation().GetSegment(segmentID).GetName() or segmentID
        segmenter = self.segmenter

        def job(progress, shouldStop):  # worker thread: numpy, sammed and torch only
            return assist.fit_prompt_encoder(segmenter, masks, axis=axis, target=target, config=config,
                                             progress=progress, should_stop=shouldStop)

        self._learnFor = segmenter
        return self.worker.submit("learn", job)


def assistModule():
    """``sammed.assist`` if this version has it (it needs torch, so it is imported only here).

    Raises:
        RuntimeError: not available.
    """
    try:
        from sammed import assist
    except ImportError as exc:
        raise RuntimeError(f"SAMassist is not available in this version of SAMMed ({exc}).") from exc
    if not hasattr(assist, "fit_prompt_encoder") or not hasattr(assist, "attach"):
        raise RuntimeError("This version of sammed.assist lacks fit_prompt_encoder/attach; update SAMMed.")
    return assist


def logEvent(event: WorkerEvent) -> None:
    logging.info("SAMMed %s %s: %s %s", event.name, event.kind, event.message, event.error)
