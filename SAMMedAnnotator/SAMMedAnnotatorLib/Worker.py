"""A persistent background thread for slice encoding and other model work of the annotator.

Jobs are plain callables ``fn(progress, should_stop) -> result`` that touch only numpy and ``sammed`` objects
(never MRML, VTK or Qt). Events (progress, done, cancelled, failed) are queued and collected on the main thread
with ``drain()``, which the widget calls from a ~100 ms QTimer (tests call it directly). Cancel clears the queue
and makes ``should_stop()`` answer True for every job submitted before it; the thread itself stays up so the
model stays warm.
"""

from __future__ import annotations

import collections
import itertools
import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sammed.jobs import Cancelled
from sammed.jobs import drain

JobFn = Callable[[Callable[[float, str], None], Callable[[], bool]], Any]


@dataclass
class WorkerEvent:
    """Something that happened on the worker thread.

    Attributes:
        kind: ``progress``, ``done``, ``cancelled`` or ``failed``.
        jobId: the id ``submit`` returned.
        name: the job's name (e.g. ``embed``, ``encode``, ``learn``).
        fraction, message: progress (``progress`` events; ``done`` has fraction 1).
        result: the job's return value (``done``); numpy arrays and plain values only.
        error: the message of the exception (``failed``) or of the cancel.
    """

    kind: str
    jobId: int
    name: str
    fraction: float = 0.0
    message: str = ""
    result: Any = None
    error: str = ""


@dataclass
class _Job:
    jobId: int
    name: str
    fn: JobFn
    generation: int


class Worker:
    """One long-lived daemon thread running jobs in order (``submit(..., first=True)`` jumps the queue)."""

    def __init__(self, name: str = "SAMMedWorker") -> None:
        self._queue: collections.deque[_Job] = collections.deque()
        self._wake = threading.Condition()
        self._events: queue.SimpleQueue[WorkerEvent] = queue.SimpleQueue()
        self._ids = itertools.count(1)
        self._generation = 0
        self._current: _Job | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ main-thread API
    def submit(self, name: str, fn: JobFn, first: bool = False) -> int:
        """Queue ``fn``; returns its job id. ``first`` puts it ahead of waiting jobs (e.g. the slice on screen)."""
        if self._stopping:
            raise RuntimeError("The SAMMed worker has been shut down.")
        with self._wake:
            job = _Job(next(self._ids), name, fn, self._generation)
            if first:
                self._queue.appendleft(job)
            else:
                self._queue.append(job)
            self._wake.notify()
        return job.jobId

    def cancel(self) -> int:
        """Drop waiting jobs and ask the running one to stop (it ends at its next ``should_stop()`` check).

        Returns:
            the number of jobs dropped or stopped.
        """
        with self._wake:
            dropped = list(self._queue)
            self._queue.clear()
            self._generation += 1
            running = self._current
        for job in dropped:
            self._events.put(WorkerEvent("cancelled", job.jobId, job.name, error="Cancelled before it started."))
        return len(dropped) + (1 if running is not None else 0)

    def drain(self) -> list[WorkerEvent]:
        """All events since the last call, oldest first (call on the main thread)."""
        return drain(self._events)

    @property
    def busy(self) -> bool:
        with self._wake:
            return self._current is not None or bool(self._queue)

    def waitIdle(self, timeout: float = 30.0) -> bool:
        """Block until no job runs or waits (for tests and shutdown; the GUI polls ``busy`` instead)."""
        deadline = time.monotonic() + timeout
        while self.busy:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def shutdown(self, timeout: float = 5.0) -> None:
        """Cancel everything and end the thread."""
        self.cancel()
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ------------------------------------------------------------------ worker thread
    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                job = self._queue.popleft()
                self._current = job
            try:
                self._execute(job)
            finally:
                with self._wake:
                    self._current = None

    def _execute(self, job: _Job) -> None:
        def shouldStop() -> bool:
            return job.generation != self._generation or self._stopping

        def progress(fraction: float, message: str) -> None:
            self._events.put(WorkerEvent("progress", job.jobId, job.name, float(fraction), str(message)))

        if shouldStop():
            self._events.put(WorkerEvent("cancelled", job.jobId, job.name, error="Cancelled."))
            return
        try:
            result = job.fn(progress, shouldStop)
        except Cancelled as exc:
            self._events.put(WorkerEvent("cancelled", job.jobId, job.name, error=str(exc)))
        except Exception as exc:  # reported to the main thread, which shows it
            logging.debug("SAMMed worker job %s failed:\n%s", job.name, traceback.format_exc())
            self._events.put(WorkerEvent("failed", job.jobId, job.name, error=str(exc) or type(exc).__name__))
        else:
            if shouldStop():
                self._events.put(WorkerEvent("cancelled", job.jobId, job.name, result=result, error="Cancelled."))
            else:
                self._events.put(WorkerEvent("done", job.jobId, job.name, 1.0, "Done", result=result))
