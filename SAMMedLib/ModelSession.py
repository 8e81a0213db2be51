"""The model work both SAMMed modules and the Segment Editor effect share: one worker process, one segmenter per
volume node.

The model, the embedding cache, SAMassist fits and propagation runs live in a separate ``sammed`` worker process
(``sammed.worker``), started with Slicer's own Python (``PythonSlicer``, so the PyTorch extension's torch is the one
used). Slicer's PythonQt runs without Python thread support, so a Python thread in Slicer advances only while the
main thread runs Python; a process runs beside the application whatever the main thread does, and a crash in model
code ends the worker, not Slicer. Nothing here imports torch or starts a thread: the modules' QTimers call
``drain()``, which reads the worker's replies without waiting.

SAMMed Annotator, SAMMed Auto and the effect all ask ``sharedSession()`` for the segmenter of a volume node, so a
slice encoded for one is never encoded again for another, and a learned (SAMassist) prompt encoder is used by all.
The session observes the scene: removing a volume or closing the scene cancels its jobs and lets the worker forget
it. Uses only ``slicer`` MRML classes, ``vtk``, ``numpy`` and ``sammed`` (testable with ``slicer-core``; tests run
the worker with the analytic test model ``fake`` or the real LiteMedSAM).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import slicer
import vtk

from sammed import jobs
from sammed.server.client import HttpWorkerClient
from sammed.worker.client import WorkerClient
from sammed.worker.remote import RemoteSegmenter

from . import VolumeAccess

DEFAULT_MODEL = "litemedsam"
TEST_MODEL = "fake"  # the analytic model of sammed.backends.fake: tests and self-tests, no torch
DEFAULT_PRECOMPUTE_RADIUS = 8  # slices encoded each side of the one a user prompts on


def workerCommand() -> list[str]:
    """How to start a worker: Slicer's ``PythonSlicer`` when running in the application (on PATH there, next to
    the application's Python otherwise; found the way ``executePythonModule`` in Slicer's
    ``Base/Python/slicer/util.py`` finds it), else this Python (tests, plain Python)."""
    if hasattr(slicer, "app"):
        found = shutil.which("PythonSlicer")
        if found:
            return [found, "-m", "sammed.worker"]
        candidate = Path(sys.executable).with_name("PythonSlicer" + (".exe" if os.name == "nt" else ""))
        if candidate.exists():
            return [str(candidate), "-m", "sammed.worker"]
    return [sys.executable, "-m", "sammed.worker"]


class ModelSession:
    """Worker process and segmenters of one scene.

    Args:
        scene: the ``vtkMRMLScene``.
        client: the ``sammed.worker.client.WorkerClient`` (default: one starting ``workerCommand()``), or a
            ``sammed.server.client.HttpWorkerClient`` to compute on a ``sammed serve`` server (``computeOn``).
        modelId: the model the worker loads; ``TEST_MODEL`` (the analytic test model) pins the session to it:
            ``configure`` then changes everything but the model.
    """

    def __init__(self, scene, client: WorkerClient | HttpWorkerClient | None = None, modelId: str = DEFAULT_MODEL):
        self.scene = scene
        self.client = client if client is not None else WorkerClient(workerCommand())
        self.serverURL = self.client.url if isinstance(self.client, HttpWorkerClient) else ""
        self.modelId = modelId
        self.pinned = modelId == TEST_MODEL
        self.device = "auto"
        self.preset = "auto"
        self.diskCacheFolder: str | None = None
        self._segmenters: dict[str, tuple[tuple, RemoteSegmenter]] = {}
        self._jobs: dict[int, RemoteSegmenter] = {}
        self._owners: dict[int, str] = {}  # request id -> consumer whose drain() gets its events
        self._inboxes: dict[str, list[jobs.WorkerEvent]] = {}
        self._pendingEncode: set[tuple[str, int, int]] = set()
        self._observations = [
            scene.AddObserver(slicer.vtkMRMLScene.NodeAboutToBeRemovedEvent, self._onNodeAboutToBeRemoved),
            scene.AddObserver(slicer.vtkMRMLScene.StartCloseEvent, self._onSceneClose),
        ]

    # ------------------------------------------------------------------ worker and model
    @property
    def worker(self) -> WorkerClient:
        """The worker client (``busy``, ``wait_idle``, ``cancel`` as the in-process ``jobs.Worker`` had)."""
        return self.client

    @property
    def backendInjected(self) -> bool:
        """True with the analytic test model or on a server: nothing is installed, asked or downloaded here."""
        return self.modelId == TEST_MODEL or bool(self.serverURL)

    def computeOn(self, url: str = "", token: str = "") -> bool:
        """Do the model work on the ``sammed serve`` server at ``url`` with ``token`` ("": a worker process on this
        computer). Switching cancels the running jobs and leaves the old side (its volumes closed, a local worker
        ended); segmenters are made again on the new side on next use. Returns whether anything changed."""
        url = (url or "").rstrip("/")
        if url == self.serverURL and (not url or getattr(self.client, "token", None) == token):
            return False
        self.release()
        self._segmenters.clear()
        self._pendingEncode.clear()
        self.client.shutdown()
        self.client = HttpWorkerClient(url, token) if url else WorkerClient(workerCommand())
        self.serverURL = url
        return True

    def describe(self) -> str:
        """Where the work runs, for the modules' status line (asks a server; never raises)."""
        if not self.serverURL:
            return f"This computer: {self.modelId} on {self.device}"
        wait, self.client.timeout = self.client.timeout, 10.0  # the main thread waits: not for long
        try:
            hello = self.client.call("hello", timeout=10.0)
        except (ValueError, OSError, RuntimeError) as exc:
            return f"Server {self.serverURL}: {exc}"
        finally:
            self.client.timeout = wait
        return f"Server {self.serverURL}: {hello.get('model')} on {hello.get('device')} (sammed {hello.get('sammed')})"

    def ensureWorker(self) -> None:
        """Start the worker if needed; the client sends it the user's settings (again after every restart)."""
        self.client.configure(model=self.modelId, device=self.device, cache_dir=self.diskCacheFolder or "")
        self.client.start()

    def configure(self, modelId: str, device: str, preset: str, diskCacheFolder: str | Path | None) -> None:
        """The user's choices: a new model or device is loaded by the worker on next use; ``preset`` is the
        intensity preset of new segmenters; the disk cache tier is on with a folder."""
        folder = str(diskCacheFolder) if diskCacheFolder else None
        modelId = self.modelId if self.pinned else modelId
        changed = (modelId, device, folder) != (self.modelId, self.device, self.diskCacheFolder)
        if (modelId, device) != (self.modelId, self.device):
            self.cancel()
            self._segmenters.clear()
        self.modelId, self.device, self.preset, self.diskCacheFolder = modelId, device, preset, folder
        if changed and self.client.alive:
            self.ensureWorker()

    def useTestModel(self, encodeDelay: float = 0.0) -> None:
        """Pin the session to the analytic test model (self-tests): jobs are cancelled, segmenters rebuilt;
        ``encodeDelay`` seconds per encode simulate a slow model."""
        self.configure(TEST_MODEL, self.device, self.preset, self.diskCacheFolder)
        self.pinned = True
        self.client.configure(fake_encode_delay=float(encodeDelay))
        self.ensureWorker()

    def startDownload(self, modelId: str) -> int:
        """Download a model's weights in the worker (SHA256-checked, written atomically by ``sammed.models``)."""
        self.ensureWorker()
        return self.client.submit("download", {"model": modelId})

    # ------------------------------------------------------------------ segmenters
    def segmenter(self, volumeNode, preset: str | None = None) -> RemoteSegmenter:
        """The segmenter of ``volumeNode`` (on a copy of its voxels, sent to the worker once), rebuilt when its
        voxels, the preset or the model change.

        Raises:
            ValueError: no volume, not scalar, or under a non-linear transform; what the worker refuses.
        """
        if volumeNode is None:
            raise ValueError("Select a volume first.")
        image = volumeNode.GetImageData()
        stamp = (image.GetMTime() if image is not None else 0, preset or self.preset, self.modelId, self.device)
        nodeID = volumeNode.GetID()
        known = self._segmenters.get(nodeID)
        if known is not None and known[0] == stamp:
            return known[1]
        if known is not None:
            self.cancel()
        self.ensureWorker()
        segmenter = RemoteSegmenter(self.client, VolumeAccess.volumeFromNode(volumeNode), preset or self.preset)
        segmenter.ensure_open()
        self._segmenters[nodeID] = (stamp, segmenter)
        return segmenter

    def knownSegmenter(self, volumeNodeID: str | None) -> RemoteSegmenter | None:
        """The segmenter made for a volume node, or None (none yet, or released)."""
        known = self._segmenters.get(volumeNodeID or "")
        return None if known is None else known[1]

    def release(self, volumeNodeID: str | None = None) -> None:
        """Cancel jobs and let the worker forget one volume node's voxels and embeddings (None: all)."""
        ids = list(self._segmenters) if volumeNodeID is None else [volumeNodeID]
        dropped = [self._segmenters.pop(i)[1] for i in ids if i in self._segmenters]
        if dropped:
            self.cancel()
        for segmenter in dropped:
            if not any(s.volume.digest == segmenter.volume.digest for _, s in self._segmenters.values()):
                segmenter.close()

    # ------------------------------------------------------------------ work in the worker
    def _track(self, segmenter: RemoteSegmenter, rid: int) -> int:
        self._jobs[rid] = segmenter
        return rid

    def requestEncode(self, segmenter: RemoteSegmenter, axis: int, index: int) -> int | None:
        """Encode one slice ahead of background work; None when it is cached or already asked for."""
        key = (segmenter.volume.digest, int(axis), int(index))
        if segmenter.is_cached(axis, index) or key in self._pendingEncode:
            return None
        self._pendingEncode.add(key)
        self.ensureWorker()
        return self._track(segmenter, segmenter.requestEncode(axis, index))

    def precompute(
        self, segmenter: RemoteSegmenter, axis: int, center: int, radius: int | None = DEFAULT_PRECOMPUTE_RADIUS
    ) -> int:
        """Encode the slices around ``center`` in the background: the centre first, then outward (one job; a
        prompt on another slice, ``requestEncode``, runs ahead of it). ``radius`` None: the whole axis.

        Returns:
            the number of slices queued (cached ones are skipped).
        """
        n = segmenter.volume.shape_kji[axis]
        center = min(max(int(center), 0), n - 1)
        reach = n if radius is None else int(radius)
        order = [center] + [i for d in range(1, reach + 1) for i in (center + d, center - d) if 0 <= i < n]
        order = [i for i in order if not segmenter.is_cached(axis, i)]
        if order:
            self.ensureWorker()
            self._track(segmenter, segmenter.precompute(axis, order))
        return len(order)

    def learn(self, segmenter: RemoteSegmenter, masks: dict, axis: int, target: str, config=None) -> int:
        """SAMassist in the worker; when done, prompts on this volume use the learned encoder."""
        self.ensureWorker()
        return self._track(segmenter, segmenter.learn(masks, axis, target, config))

    def propagate(self, segmenter: RemoteSegmenter, masks: dict, axis: int, generator: str, config, sliceRange):
        """Propagation in the worker; per-slice results arrive as ``partial`` events."""
        self.ensureWorker()
        return self._track(segmenter, segmenter.propagate(masks, axis, generator, config, sliceRange))

    def cancel(self, jobId: int | None = None, owner: str | None = None) -> int:
        """Cancel background work: one job, the jobs of one consumer (``owner``, "" for the default one), or all."""
        self._pendingEncode.clear()
        if owner is None:
            return self.client.cancel(jobId)
        ids = [rid for rid in self.client.pending() if self._owners.get(rid, "") == owner]
        return sum(self.client.cancel(rid) for rid in ids)

    def own(self, jobId: int, owner: str) -> int:
        """Send the events of ``jobId`` to ``drain(owner)`` instead of the default consumer."""
        self._owners[jobId] = owner
        return jobId

    def drain(self, owner: str = "") -> list[jobs.WorkerEvent]:
        """The worker's replies for ``owner`` since its last call (main thread, never waits): the jobs it
        ``own``s, or for the default consumer ("") all others. Segmenters are told what was encoded or learned."""
        for event in self.client.drain():
            self._note(event)
            final = event.kind in ("done", "cancelled", "failed")
            target = self._owners.pop(event.jobId, "") if final else self._owners.get(event.jobId, "")
            self._inboxes.setdefault(target, []).append(event)
        return self._inboxes.pop(owner, [])

    def _note(self, event: jobs.WorkerEvent) -> None:
        segmenter = self._jobs.get(event.jobId)
        if segmenter is not None:
            segmenter.note(event)
            if event.kind in ("done", "cancelled", "failed"):
                del self._jobs[event.jobId]
        if event.name == "encode" and event.kind != "progress":
            result = event.result if isinstance(event.result, dict) else {}
            digest = segmenter.volume.digest if segmenter is not None else ""
            self._pendingEncode.discard((digest, result.get("axis", -1), result.get("index", -1)))
            if event.kind != "done":
                self._pendingEncode.clear()

    def owned(self, owner: str) -> list[int]:
        """Request ids of ``owner``'s jobs still running."""
        return [rid for rid, o in self._owners.items() if o == owner]

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def _onNodeAboutToBeRemoved(self, caller, event, node) -> None:
        if node is not None and node.GetID() in self._segmenters:
            self.release(node.GetID())

    def _onSceneClose(self, caller, event) -> None:
        self.release()

    def cleanup(self) -> None:
        """Remove scene observers, cancel jobs and end the worker process."""
        for tag in self._observations:
            self.scene.RemoveObserver(tag)
        self._observations = []
        self.release()
        self.client.shutdown()


class SessionJobs:
    """One consumer's view of the session's worker (SAMMed Auto's review): its own jobs, its own events, with the
    calls of the in-process ``sammed.jobs.Worker`` (``drain``, ``cancel``, ``busy``, ``wait_idle``)."""

    def __init__(self, session: ModelSession, owner: str) -> None:
        self.session = session
        self.owner = owner

    def propagate(self, segmenter: RemoteSegmenter, masks: dict, axis: int, generator: str, config, sliceRange):
        """Start a propagation in the worker; returns its request id."""
        return self.session.own(
            self.session.propagate(segmenter, masks, axis, generator, config, sliceRange), self.owner
        )

    def drain(self) -> list[jobs.WorkerEvent]:
        return self.session.drain(self.owner)

    def cancel(self) -> int:
        return self.session.cancel(owner=self.owner)

    @property
    def busy(self) -> bool:
        return bool(self.session.owned(self.owner))

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until this consumer's jobs ended (tests and self-tests); their events stay for ``drain``."""
        import time

        deadline = time.monotonic() + timeout
        while self.busy and time.monotonic() < deadline:
            for event in self.session.drain(self.owner):
                self.session._inboxes.setdefault(self.owner, []).append(event)
            time.sleep(0.01)
        return not self.busy

    def shutdown(self) -> None:
        self.cancel()


_shared: ModelSession | None = None


def sharedSession() -> ModelSession:
    """The application's session (on ``slicer.mrmlScene``), made on first use."""
    global _shared
    if _shared is None or _shared.scene is not slicer.mrmlScene:
        if _shared is not None:
            _shared.cleanup()
        from . import ComputeSettings

        if hasattr(slicer, "app"):  # SAMMed's folder (weights, settings) under Slicer's cache path in the application
            os.environ.setdefault("SAMMED_HOME", str(Path(slicer.app.cachePath) / "SAMMed"))
        url, token = ComputeSettings.load()  # the user's "Compute on" choice
        _shared = ModelSession(slicer.mrmlScene, HttpWorkerClient(url, token) if url else None)
    return _shared


def resetSharedSession() -> None:
    """End the application's session (module reload, tests)."""
    global _shared
    if _shared is not None:
        _shared.cleanup()
    _shared = None
