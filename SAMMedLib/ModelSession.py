"""The model work both SAMMed modules and the Segment Editor effect share: one model, one embedding cache, one
segmenter per volume, one background worker.

SAMMed Annotator, SAMMed Auto and the effect all ask ``sharedSession()`` for the segmenter of a volume node, so a
slice encoded in one is never encoded again in another, and a learned (SAMassist) prompt encoder set on the
annotator's segmenter is the one SAMMed Auto uses. The session observes the scene: removing a volume or closing
the scene cancels its jobs and releases its embeddings. Uses only ``slicer`` MRML classes, ``vtk``, ``numpy`` and
``sammed`` (testable with ``slicer-core``); tests build their own session with a fake backend.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import slicer
import vtk

from sammed import jobs
from sammed.cache import EmbeddingCache
from sammed.segmenter import Segmenter

from . import VolumeAccess

DEFAULT_MODEL = "litemedsam"
DEFAULT_PRECOMPUTE_RADIUS = 8  # slices encoded each side of the one a user prompts on


class ModelSession:
    """Backend, cache, segmenters and worker of one scene.

    Args:
        scene: the ``vtkMRMLScene``.
        backend: a ``sammed`` backend to use (tests pass ``FakeBackend``); None: load the configured model lazily.
        backendFactory: ``() -> backend`` used instead of ``sammed.models.load_backend`` (None: that).
        cache: embedding cache (a memory-only one is made if None).
    """

    def __init__(
        self,
        scene,
        backend: Any = None,
        backendFactory: Callable[[], Any] | None = None,
        cache: EmbeddingCache | None = None,
    ) -> None:
        self.scene = scene
        self.cache = cache if cache is not None else EmbeddingCache()
        self.worker = jobs.Worker("SAMMedWorker")
        self.modelId = DEFAULT_MODEL
        self.device = "auto"
        self.preset = "auto"
        self._backend = backend
        self._injected = backend is not None
        self._backendFactory = backendFactory
        self._segmenters: dict[str, tuple[tuple, Segmenter]] = {}
        self._pendingEncode: set[tuple[int, int]] = set()
        self._observations = [
            scene.AddObserver(slicer.vtkMRMLScene.NodeAboutToBeRemovedEvent, self._onNodeAboutToBeRemoved),
            scene.AddObserver(slicer.vtkMRMLScene.StartCloseEvent, self._onSceneClose),
        ]

    # ------------------------------------------------------------------ model
    @property
    def backendInjected(self) -> bool:
        """True when a backend was given (tests): no model is loaded, installed or downloaded."""
        return self._injected

    @property
    def backend(self) -> Any:
        """The model (loaded on first use)."""
        if self._backend is None:
            if self._backendFactory is not None:
                self._backend = self._backendFactory()
            else:
                from sammed import models

                self._backend = models.load_backend(self.modelId, device=self.device)
        return self._backend

    def setBackend(self, backend: Any = None, backendFactory: Callable[[], Any] | None = None) -> None:
        """Use ``backend`` (or build one with ``backendFactory`` on first use); running jobs are cancelled and the
        segmenters rebuilt on next use."""
        self.cancel()
        self._backend = backend
        self._injected = backend is not None
        self._backendFactory = backendFactory
        self._segmenters.clear()

    def configure(self, modelId: str, device: str, preset: str, diskCacheFolder: str | Path | None) -> None:
        """The user's choices: a new model or device loads that model on next use (unless a backend was given);
        ``preset`` is the intensity preset new segmenters use; the disk cache tier is on with a folder."""
        changed = (modelId, device) != (self.modelId, self.device)
        self.modelId, self.device, self.preset = modelId, device, preset
        if changed and not self._injected:
            self.setBackend(None, self._backendFactory)
        self.cache.disk_dir = Path(diskCacheFolder) if diskCacheFolder else None

    def startDownload(self, modelId: str) -> int:
        """Download a model's weights on the worker (SHA256-checked, written atomically by ``sammed.models``)."""
        from sammed import models

        def job(control: jobs.JobControl) -> str:
            def report(done: int, total: int) -> None:
                if control.should_stop():
                    raise jobs.Cancelled("Download cancelled; nothing was kept.")
                control.progress(
                    done / max(total, 1), f"Downloading {modelId}: {done / 1e6:.0f} of {total / 1e6:.0f} MB"
                )

            return str(models.download_weights(modelId, progress=report))

        return self.worker.submit("download", job)

    # ------------------------------------------------------------------ segmenters
    def segmenter(self, volumeNode, preset: str | None = None) -> Segmenter:
        """The segmenter of ``volumeNode`` (on a copy of its voxels), rebuilt when its voxels, the preset or the
        model change; loads the model on first use.

        Args:
            preset: intensity preset (None: the session's ``preset``).

        Raises:
            ValueError: no volume, not scalar, or under a non-linear transform.
        """
        if volumeNode is None:
            raise ValueError("Select a volume first.")
        backend = self.backend
        image = volumeNode.GetImageData()
        stamp = (image.GetMTime() if image is not None else 0, preset or self.preset, id(backend))
        nodeID = volumeNode.GetID()
        known = self._segmenters.get(nodeID)
        if known is not None and known[0] == stamp:
            return known[1]
        if known is not None:
            self.cancel()
        volume = VolumeAccess.volumeFromNode(volumeNode)
        segmenter = Segmenter(volume, backend, cache=self.cache, preset=preset or self.preset)
        if known is not None and known[1].volume.digest == volume.digest:
            segmenter.prompt_encoder = known[1].prompt_encoder  # same voxels: the learned encoder still fits
        self._segmenters[nodeID] = (stamp, segmenter)
        return segmenter

    def knownSegmenter(self, volumeNodeID: str | None) -> Segmenter | None:
        """The segmenter made for a volume node, or None (none yet, or released)."""
        known = self._segmenters.get(volumeNodeID or "")
        return None if known is None else known[1]

    def release(self, volumeNodeID: str | None = None) -> None:
        """Cancel jobs and drop the segmenter and in-memory embeddings of one volume node (None: of all)."""
        ids = list(self._segmenters) if volumeNodeID is None else [volumeNodeID]
        dropped = [self._segmenters.pop(i)[1] for i in ids if i in self._segmenters]
        if dropped:
            self.cancel()
        for segmenter in dropped:
            self.cache.release(segmenter.volume.digest)

    # ------------------------------------------------------------------ background encoding
    def _encodeJob(
        self, segmenter: Segmenter, axis: int, index: int, report: Callable[[jobs.JobControl], None] | None = None
    ) -> jobs.JobFn:
        def job(control: jobs.JobControl) -> tuple[int, int]:  # worker thread: numpy and sammed only
            if not control.should_stop():
                segmenter.embedding(axis, index)
            if control.should_stop():  # cancelled while encoding: the volume may be gone, keep nothing of it
                self.cache.release(segmenter.volume.digest)
                raise jobs.Cancelled()
            if report is not None:
                report(control)
            return (axis, index)

        return job

    def requestEncode(self, segmenter: Segmenter, axis: int, index: int) -> int | None:
        """Queue the encode of one slice ahead of the others; None when it is cached or already queued."""
        if segmenter.is_cached(axis, index) or (axis, index) in self._pendingEncode:
            return None
        self._pendingEncode.add((axis, index))
        return self.worker.submit("encode", self._encodeJob(segmenter, axis, index), first=True)

    def precompute(
        self, segmenter: Segmenter, axis: int, center: int, radius: int | None = DEFAULT_PRECOMPUTE_RADIUS
    ) -> int:
        """Queue background encoding of the slices around ``center``: the centre first, then outward.

        One worker job per slice, so a prompt on another slice (``requestEncode``) jumps ahead of them.

        Args:
            radius: slices each side of ``center``; None for the whole axis.

        Returns:
            the number of slices queued (cached ones are skipped).
        """
        n = segmenter.volume.shape_kji[axis]
        center = min(max(int(center), 0), n - 1)
        reach = n if radius is None else int(radius)
        order = [center] + [i for d in range(1, reach + 1) for i in (center + d, center - d) if 0 <= i < n]
        order = [i for i in order if not segmenter.is_cached(axis, i)]
        batch = {"done": 0, "total": len(order)}

        def reporter(index: int) -> Callable[[jobs.JobControl], None]:
            def report(control: jobs.JobControl) -> None:
                batch["done"] += 1
                control.progress(
                    batch["done"] / batch["total"], f"Embedding slice {index} ({batch['done']} of {batch['total']})"
                )

            return report

        for index in order:
            self.worker.submit("embed", self._encodeJob(segmenter, axis, index, reporter(index)))
        return len(order)

    def cancel(self) -> int:
        """Cancel queued and running background work."""
        self._pendingEncode.clear()
        return self.worker.cancel()

    def drain(self) -> list[jobs.WorkerEvent]:
        """The worker's events since the last call (main thread), with the encode queue's bookkeeping done."""
        events = self.worker.drain()
        for event in events:
            if event.name == "encode" and event.kind != "progress" and isinstance(event.result, tuple):
                self._pendingEncode.discard(event.result)
            if event.name == "encode" and event.kind in ("cancelled", "failed"):
                self._pendingEncode.clear()
        return events

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def _onNodeAboutToBeRemoved(self, caller, event, node) -> None:
        if node is not None and node.GetID() in self._segmenters:
            self.release(node.GetID())

    def _onSceneClose(self, caller, event) -> None:
        self.release()

    def cleanup(self) -> None:
        """Remove scene observers, cancel jobs and end the worker thread."""
        for tag in self._observations:
            self.scene.RemoveObserver(tag)
        self._observations = []
        self.release()
        self.worker.shutdown()


_shared: ModelSession | None = None


def sharedSession() -> ModelSession:
    """The application's session (on ``slicer.mrmlScene``), made on first use."""
    global _shared
    if _shared is None or _shared.scene is not slicer.mrmlScene:
        _shared = ModelSession(slicer.mrmlScene)
    return _shared


def resetSharedSession() -> None:
    """End the application's session (module reload, tests)."""
    global _shared
    if _shared is not None:
        _shared.cleanup()
    _shared = None
