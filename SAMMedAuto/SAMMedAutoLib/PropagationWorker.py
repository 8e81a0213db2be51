"""Run a propagation on one background thread; hand progress and results to the main thread through a queue.

Only numpy arrays and plain Python values cross the thread boundary. The worker never touches MRML, VTK or Qt:
the owner calls ``drain()`` on the main thread (from a QTimer in the app, directly in tests) and applies what it
gets to the scene.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

import numpy as np
from sammed.jobs import Cancelled
from sammed.jobs import CancelToken
from sammed.jobs import drain


def propagationModule():
    """The module holding ``propagate`` and ``PropagationConfig`` (imported on first use: keeps module load light)."""
    import sammed.propagate as package  # noqa: PLC0415

    if hasattr(package, "propagate"):
        return package
    from sammed.propagate import api  # noqa: PLC0415 - the package may not re-export its API yet

    return api


def defaultPropagate():
    """``sammed.propagate.propagate``."""
    return propagationModule().propagate


class _ReportingSegmenter:
    """Wraps a Segmenter: every slice it decodes is also posted to the queue, so the preview fills as slices arrive.

    Everything else (cache, embeddings, volume, learned prompt encoder) is the wrapped segmenter's; ``use_learned``
    can be overridden for this run without changing the shared segmenter.
    """

    def __init__(self, segmenter, post: Callable[[tuple], None], useLearned: bool | None = None) -> None:
        object.__setattr__(self, "_segmenter", segmenter)
        object.__setattr__(self, "_post", post)
        object.__setattr__(self, "use_learned", segmenter.use_learned if useLearned is None else bool(useLearned))

    def segment(self, axis, index, *args, **kwargs):
        kwargs.setdefault("use_learned", self.use_learned)
        result = self._segmenter.segment(axis, index, *args, **kwargs)
        self._post(("slice", int(axis), int(index), np.array(result.mask_hw, dtype=bool), float(result.iou)))
        return result

    def __getattr__(self, name):
        return getattr(self._segmenter, name)

    def __setattr__(self, name, value):
        if name == "use_learned":
            object.__setattr__(self, name, value)
        else:
            setattr(self._segmenter, name, value)


class PropagationWorker:
    """One propagation job on a daemon thread.

    Messages from ``drain()`` (oldest first):
        ``("progress", fraction, message)``,
        ``("slice", axis, index, mask_hw bool HxW, iou)`` — a slice the model just decoded (may be superseded),
        ``("done", PropagationResult)`` — also when cancelled (``result.cancelled`` is True),
        ``("cancelled",)`` — cancelled without a result, ``("error", message)``.

    Args:
        propagateFn: ``propagate(segmenter, user_masks, axis=, generator=, config=, slice_range=, progress=,
            should_stop=)``; default ``sammed.propagate.propagate``.
    """

    def __init__(self, propagateFn: Callable | None = None) -> None:
        self.propagateFn = propagateFn
        self.token = CancelToken()
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, segmenter, userMasks: dict[int, np.ndarray], axis: int, generator: str, config=None,
              sliceRange: tuple[int, int] | None = None, useLearned: bool | None = None) -> None:
        """Start the job.

        Args:
            userMasks: slice index -> HxW bool mask (copied: they go to another thread).
            useLearned: use the segmenter's learned prompt encoder in this run (None: the segmenter's setting).
        """
        if self.running:
            raise RuntimeError("A propagation is already running; cancel it first.")
        propagate = self.propagateFn or defaultPropagate()
        masks = {int(i): np.array(m, dtype=bool) for i, m in userMasks.items()}
        self.token = CancelToken()
        self._queue = queue.Queue()
        proxy = _ReportingSegmenter(segmenter, self._queue.put, useLearned)
        post = self._queue.put
        token = self.token

        def progress(fraction: float, message: str) -> None:
            post(("progress", float(fraction), str(message)))

        def run() -> None:
            try:
                result = propagate(proxy, masks, axis=axis, generator=generator, config=config,
                                   slice_range=sliceRange, progress=progress, should_stop=token.is_set)
                post(("done", result))
            except Cancelled:  # a generator that stops by raising: nothing to show
                post(("cancelled",))
            except ValueError as exc:  # bad input: a message for the user, no traceback
                post(("error", str(exc)))
            except Exception as exc:  # reported to the main thread, which shows it
                logging.exception("SAMMedAuto propagation failed")
                post(("error", str(exc) or type(exc).__name__))

        self._thread = threading.Thread(target=run, name="SAMMedAutoPropagation", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        """Ask the job to stop; it stops within one slice and still reports ``done`` with a partial result."""
        self.token.cancel()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread (tests and self-tests only; the app polls). True when it has finished."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running

    def drain(self) -> list[tuple]:
        """All messages posted since the last call, oldest first (call on the main thread)."""
        return drain(self._queue)
