"""The worker's request loop: two lanes, interactive first, and cancellation that reaches inside the encoder.

``WorkerServer.handle`` takes one message line (from any transport) and answers through ``send``:

- **interactive lane** (one thread): quick requests a user waits for (``segment``, ``open_volume``, ``status``,
  ...), in arrival order. A prompt on a slice not encoded yet encodes it here, at full speed.
- **background lane** (one thread): long jobs (``precompute``, ``learn``, ``propagate``, ``download``, ``load``).
  While an interactive request runs, background work pauses at the next layer of the model (``Gate``: the backend
  calls ``yield_point`` before each module) and goes on afterwards, so a click is not slowed by an encode beside it
  (two encoders sharing 2 CPU cores made a click 10x slower). ``cancel`` sets the job's flag at once (the reader
  thread handles it); the job stops at its next layer or slice and answers ``cancelled``.
- the caller's own thread (the reader) handles ``cancel`` and ``shutdown`` itself, so they are never queued behind
  work.

Every request gets exactly one final reply (``done``, ``cancelled`` or ``failed``); a failure is a message, never a
dead worker. Ops live in ``ops.WorkerState``.
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from .. import jobs
from . import protocol
from .ops import BACKGROUND_OPS
from .ops import INTERACTIVE_OPS
from .ops import MODEL_OPS
from .ops import UnknownVolume
from .ops import WorkerState

log = logging.getLogger("sammed.worker")


class Gate:
    """Interactive requests hold the gate; background work waits at its yield points while one is held."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._held = 0

    @contextmanager
    def interactive(self) -> Iterator[None]:
        with self._cond:
            self._held += 1
        try:
            yield
        finally:
            with self._cond:
                self._held -= 1
                self._cond.notify_all()

    def wait_turn(self, should_stop: Callable[[], bool]) -> None:
        """Block while an interactive request runs; raise ``jobs.Cancelled`` when ``should_stop()`` turns True."""
        if not self._held:  # the common case: no lock taken
            return
        with self._cond:
            while self._held:
                if should_stop():
                    raise jobs.Cancelled()
                self._cond.wait(0.05)


@dataclass
class _Job:
    rid: int
    op: str
    args: dict
    cancelled: threading.Event = field(default_factory=threading.Event)


class WorkerServer:
    """Parses requests, runs them on the two lanes and sends the replies.

    Args:
        send: writes one reply message (dict, arrays already allowed: the server dumps them with ``codec``);
            called from several threads, so it must be thread-safe (``StreamTransport`` is).
        codec: the transport's ``protocol.ArrayCodec``.
        state: the ops and their state (model, cache, volumes); default a new ``WorkerState``.
    """

    def __init__(self, send: Callable[[dict], None], codec: protocol.ArrayCodec, state: WorkerState | None = None):
        self._send = send
        self.codec = codec
        self.state = state or WorkerState()
        self.gate = Gate()
        self.state.yield_point = self.yield_point
        self._cond = threading.Condition()
        self._queues: dict[str, collections.deque[_Job]] = {
            "interactive": collections.deque(),
            "background": collections.deque(),
        }
        self._running: dict[str, _Job | None] = {"interactive": None, "background": None}
        self._background_ident: int | None = None
        self.stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._lane, args=(name,), name=f"sammed-{name}", daemon=True)
            for name in ("interactive", "background")
        ]
        for thread in self._threads:
            thread.start()

    # ------------------------------------------------------------------ replies
    def send(self, rid: int, kind: str, **fields: Any) -> None:
        try:
            self._send(self.codec.dump(protocol.reply(rid, kind, **fields)))
        except Exception:  # a reply that cannot be encoded becomes an error reply, the worker goes on
            log.exception("reply %s of request %s could not be sent", kind, rid)
            if kind in ("done", "cancelled"):
                self._send(
                    protocol.reply(rid, "failed", error="The worker could not encode its reply.", type="internal")
                )

    # ------------------------------------------------------------------ reader side
    def enqueue(self, rid: int, op: str, args: dict) -> None:
        """Queue a checked request (``op`` an interactive or background op; ``args`` with arrays still in wire form,
        loaded here, in the caller's thread)."""
        lane = "interactive" if op in INTERACTIVE_OPS else "background"
        job = _Job(rid, op, self.codec.load(args))
        with self._cond:
            self._queues[lane].append(job)
            self._cond.notify_all()

    def handle(self, line: str | bytes) -> None:
        """One message from the client (reader thread). Never raises: a bad message gets a ``failed`` reply."""
        rid = -1
        try:
            message = protocol.parse_line(line)
            rid = message.get("id", -1) if isinstance(message.get("id"), int) else -1
            rid, op, args = protocol.check_request(message)
            if op == "cancel":
                self.send(rid, "done", result={"cancelled": self.cancel(args.get("job"))})
            elif op == "shutdown":
                self.cancel(None)
                self.send(rid, "done", result={"bye": True})
                self.stopping.set()
            elif op in INTERACTIVE_OPS or op in BACKGROUND_OPS:
                self.enqueue(rid, op, args)
            else:
                known = ", ".join(sorted(set(INTERACTIVE_OPS) | set(BACKGROUND_OPS) | {"cancel", "shutdown"}))
                self.send(
                    rid, "failed", error=f"Unknown request '{op}'; this worker knows: {known}.", type="unknown_op"
                )
        except protocol.ProtocolError as exc:
            self.send(max(rid, 0) if rid != -1 else 0, "failed", error=f"Bad request: {exc}", type="bad_request")

    def cancel(self, job_id: Any = None) -> int:
        """Cancel one background job by request id (None: all of them). Returns how many were cancelled."""
        with self._cond:
            queue = self._queues["background"]
            dropped = [j for j in queue if job_id is None or j.rid == job_id]
            for job in dropped:
                queue.remove(job)
            running = self._running["background"]
            if running is not None and (job_id is None or running.rid == job_id):
                running.cancelled.set()
                self.state.interrupt(self._background_ident)  # an ONNX Runtime encode stops in the middle too
                dropped_running = 1
            else:
                dropped_running = 0
        for job in dropped:
            self.send(job.rid, "cancelled", error="Cancelled before it started.")
        return len(dropped) + dropped_running

    # ------------------------------------------------------------------ lanes
    def yield_point(self) -> None:
        """Called by the backend before each model layer: pauses (or cancels) background work only."""
        if threading.get_ident() != self._background_ident:
            return
        job = self._running["background"]
        stop = job.cancelled.is_set if job is not None else (lambda: False)
        if stop():
            raise jobs.Cancelled()
        self.gate.wait_turn(stop)

    def _lane(self, name: str) -> None:
        if name == "background":
            self._background_ident = threading.get_ident()
            lower_thread_priority()
        while True:
            with self._cond:
                while not self._queues[name] and not self.stopping.is_set():
                    self._cond.wait(0.5)
                if self.stopping.is_set():
                    return
                job = self._queues[name].popleft()
                self._running[name] = job
            try:
                if name == "interactive" and job.op in MODEL_OPS:  # a lookup (status, has_volume) stops nothing
                    with self.gate.interactive():
                        self.state.interrupt(self._background_ident, preempt=True)  # re-run after this request
                        self._run(job)
                else:
                    self._run(job)
            finally:
                with self._cond:
                    self._running[name] = None

    def _run(self, job: _Job) -> None:
        should_stop = job.cancelled.is_set

        def progress(fraction: float, message: str) -> None:
            self.send(job.rid, "progress", fraction=round(float(fraction), 4), message=str(message))

        def post(piece: Any) -> None:
            self.send(job.rid, "partial", result=piece)

        def check() -> None:  # between slices: cancelled, or wait while a user's request runs
            if should_stop():
                raise jobs.Cancelled()
            if threading.get_ident() == self._background_ident:
                self.gate.wait_turn(should_stop)

        control = jobs.JobControl(progress, post, check_and_answer(check))
        try:
            result = getattr(self.state, f"op_{job.op}")(job.args, control)
        except jobs.Cancelled as exc:
            self.send(job.rid, "cancelled", error=str(exc), result=self._partial(exc))
        except UnknownVolume as exc:
            self.send(job.rid, "failed", error=str(exc), type="unknown_volume")
        except (ValueError, TypeError, KeyError) as exc:
            message = str(exc) if not isinstance(exc, KeyError) else f"Missing or bad field {exc}."
            self.send(job.rid, "failed", error=message, type="bad_input")
        except Exception as exc:  # model code failing (out of memory, CUDA...) must not end the worker
            log.error("request %s (%s) failed:\n%s", job.rid, job.op, traceback.format_exc())
            self.send(
                job.rid, "failed", error=f"The SAMMed worker failed: {type(exc).__name__}: {exc}", type="internal"
            )
        else:
            if should_stop():
                self.send(job.rid, "cancelled", error="Cancelled.", result=result)
            else:
                self.send(job.rid, "done", result=result)

    def _partial(self, exc: jobs.Cancelled) -> Any:
        partial = exc.partial
        return self.state.wire(partial) if partial is not None else None

    def close(self) -> None:
        """Stop both lanes (running work is cancelled) and wait for them briefly."""
        self.cancel(None)
        self.stopping.set()
        with self._cond:
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(5.0)


BACKGROUND_NICE = 19


def lower_thread_priority(nice: int = BACKGROUND_NICE) -> bool:
    """Give the calling thread (and the compute threads it starts later, which inherit it) a lower scheduling
    priority, where the system allows it per thread (Linux). A click's decode then takes the cores from an encoder
    layer that is still running when the click arrives (layers run up to 80 ms on 2 cores, and the yield points
    only pause background work between layers). Returns True when it was lowered."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError):  # not Linux, or not allowed: the yield points still apply
        return False
    return sys.platform.startswith("linux")


def check_and_answer(check: Callable[[], None]) -> Callable[[], bool]:
    """A ``should_stop`` for core functions: runs ``check`` (which may wait or raise) and answers True when it
    raised ``Cancelled`` (so functions that return partial results can do so)."""

    def should_stop() -> bool:
        try:
            check()
        except jobs.Cancelled:
            return True
        return False

    return should_stop
