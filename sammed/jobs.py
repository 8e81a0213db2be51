"""Progress, cancellation and the one background job runner of long work (embedding, SAMassist, propagation).

Long functions take ``progress(fraction, message)`` and ``should_stop()`` as plain callables and raise ``Cancelled``
(or return a partial result) when ``should_stop()`` answers True. ``Worker`` runs such functions one after another
on a single long-lived thread and hands their events to whoever polls it (the Slicer modules, from a QTimer).
``JsonLinesReporter`` writes progress as JSON lines for command-line users who want machine-readable output.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from typing import TextIO

ProgressFn = Callable[[float, str], None]
StopFn = Callable[[], bool]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_BAD_INPUT = 2
EXIT_CANCELLED = 3


def drain(q: queue.Queue | queue.SimpleQueue) -> list:
    """Everything in ``q`` now, oldest first, without waiting."""
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            return out


class Cancelled(Exception):
    """Raised inside a job when ``should_stop()`` answered True; partial results may be attached."""

    def __init__(self, message: str = "Cancelled by the user.", partial: Any = None) -> None:
        super().__init__(message)
        self.partial = partial


class CancelToken:
    """A thread-safe stop flag; pass the token itself (or ``token.is_set``) as ``should_stop``."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        """Ask the job to stop."""
        self._event.set()

    def is_set(self) -> bool:
        """True once ``cancel`` was called."""
        return self._event.is_set()

    __call__ = is_set


def check_stop(should_stop: StopFn | None, partial: Any = None) -> None:
    """Raise ``Cancelled`` (with ``partial``) when ``should_stop()`` answers True."""
    if should_stop is not None and should_stop():
        raise Cancelled(partial=partial)


class JsonLinesReporter:
    """``progress`` callable writing ``{"progress": f, "message": m}`` lines; ``result``/``error`` end the stream."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def _write(self, obj: dict) -> None:
        self.stream.write(json.dumps(obj) + "\n")
        self.stream.flush()

    def __call__(self, fraction: float, message: str) -> None:
        self._write({"progress": round(float(fraction), 4), "message": message})

    def result(self, payload: dict) -> None:
        """The last line of a successful run."""
        self._write({"result": payload})

    def error(self, message: str, code: int) -> None:
        """The last line of a failed run."""
        self._write({"error": message, "code": code})


# ---------------------------------------------------------------------- the background job runner
@dataclass
class WorkerEvent:
    """Something that happened on the worker thread.

    Attributes:
        kind: ``progress``, ``partial`` (a piece of the result, e.g. one propagated slice), ``done``, ``cancelled``
            or ``failed``.
        jobId: the id ``submit`` returned.
        name: the job's name (e.g. ``embed``, ``encode``, ``learn``, ``propagate``).
        fraction, message: progress (``progress`` events; ``done`` has fraction 1).
        result: the job's return value (``done``, and ``cancelled`` when the job returned a partial result) or the
            piece posted (``partial``); numpy arrays and plain values only.
        error: the message of the exception (``failed``) or of the cancel.
        errorType: what kind of failure (worker process replies: ``bad_input``, ``bad_request``, ``unknown_op``,
            ``unknown_volume``, ``internal``); "" otherwise.
    """

    kind: str
    jobId: int
    name: str
    fraction: float = 0.0
    message: str = ""
    result: Any = None
    error: str = ""
    errorType: str = ""


@dataclass(frozen=True)
class JobControl:
    """What a job gets: report ``progress(fraction, message)``, ``post(piece)`` partial results, and poll
    ``should_stop()`` (True once the job was cancelled or the worker shuts down)."""

    progress: ProgressFn
    post: Callable[[Any], None]
    should_stop: StopFn


JobFn = Callable[[JobControl], Any]


@dataclass
class _Job:
    jobId: int
    name: str
    fn: JobFn
    generation: int


class Worker:
    """One long-lived daemon thread running jobs in order (``submit(..., first=True)`` jumps the queue).

    Jobs touch only numpy and ``sammed`` objects (never MRML, VTK or Qt); their events are queued and collected
    with ``drain()`` by the owner (a QTimer in Slicer, tests directly). ``cancel()`` drops waiting jobs and makes
    ``should_stop()`` answer True for every job submitted before it; the thread stays up so the model stays warm.
    """

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

    # ------------------------------------------------------------------ owner's API
    def submit(self, name: str, fn: JobFn, first: bool = False) -> int:
        """Queue ``fn(control)``; returns its job id. ``first`` puts it ahead of waiting jobs.

        Raises:
            RuntimeError: the worker was shut down.
        """
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
        """All events since the last call, oldest first."""
        return drain(self._events)

    @property
    def busy(self) -> bool:
        """True while a job runs or waits."""
        with self._wake:
            return self._current is not None or bool(self._queue)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until no job runs or waits (tests and shutdown; the GUI polls ``busy`` instead)."""
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
        """True while the thread runs."""
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
        def should_stop() -> bool:
            return job.generation != self._generation or self._stopping

        def progress(fraction: float, message: str) -> None:
            self._events.put(WorkerEvent("progress", job.jobId, job.name, float(fraction), str(message)))

        def post(piece: Any) -> None:
            self._events.put(WorkerEvent("partial", job.jobId, job.name, result=piece))

        if should_stop():
            self._events.put(WorkerEvent("cancelled", job.jobId, job.name, error="Cancelled."))
            return
        try:
            result = job.fn(JobControl(progress, post, should_stop))
        except Cancelled as exc:
            self._events.put(WorkerEvent("cancelled", job.jobId, job.name, error=str(exc)))
        except Exception as exc:  # reported to the owner, which shows it
            logging.debug("SAMMed worker job %s failed:\n%s", job.name, traceback.format_exc())
            self._events.put(WorkerEvent("failed", job.jobId, job.name, error=str(exc) or type(exc).__name__))
        else:
            if should_stop():
                self._events.put(WorkerEvent("cancelled", job.jobId, job.name, result=result, error="Cancelled."))
            else:
                self._events.put(WorkerEvent("done", job.jobId, job.name, 1.0, "Done", result=result))
