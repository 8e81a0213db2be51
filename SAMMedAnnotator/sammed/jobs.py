"""Progress reporting and cancellation shared by long jobs (embedding, SAMassist, propagation).

Long functions take ``progress(fraction, message)`` and ``should_stop()`` as plain callables. ``JsonLinesReporter``
turns progress into one JSON object per stdout line for subprocess use (Slicer runs batch jobs that way).
"""

from __future__ import annotations

import json
import queue
import sys
import threading
from collections.abc import Callable
from typing import TextIO

ProgressFn = Callable[[float, str], None]
StopFn = Callable[[], bool]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_BAD_INPUT = 2
EXIT_CANCELLED = 3


def drain(q: queue.Queue | queue.SimpleQueue) -> list:
    """Everything in ``q`` now, oldest first, without waiting (a worker's events read on the UI thread)."""
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            return out


class Cancelled(Exception):
    """Raised inside a job when ``should_stop()`` answered True; partial results may be attached."""

    def __init__(self, message: str = "Cancelled by the user.", partial=None) -> None:
        super().__init__(message)
        self.partial = partial


class CancelToken:
    """A thread-safe stop flag; pass ``token.is_set`` as ``should_stop``."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    def reset(self) -> None:
        self._event.clear()

    def is_set(self) -> bool:
        return self._event.is_set()

    __call__ = is_set


def no_progress(fraction: float, message: str) -> None:  # noqa: ARG001
    return None


def never_stop() -> bool:
    return False


def check_stop(should_stop: StopFn | None, partial=None) -> None:
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
        self._write({"result": payload})

    def error(self, message: str, code: int) -> None:
        self._write({"error": message, "code": code})


def parse_json_line(line: str) -> dict:
    """Parse one line of a JsonLinesReporter stream; non-JSON lines come back as ``{"log": line}``."""
    line = line.strip()
    if not line:
        return {}
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return {"log": line}
    return obj if isinstance(obj, dict) else {"log": line}


class BackgroundJob:
    """Run ``fn(*args, should_stop=token, **kwargs)`` on a daemon thread.

    ``cancel()`` sets the token (the job stops at its next check, e.g. within one slice for ``precompute``);
    ``wait()`` joins; afterwards ``result``, ``error`` (the exception, ``Cancelled`` included) and ``cancelled``
    tell how it ended. Only plain values and numpy arrays should cross the thread boundary.
    """

    def __init__(self, fn, *args, **kwargs) -> None:
        self.token = CancelToken()
        self.result = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, args, kwargs), daemon=True, name="sammed-job")
        self._thread.start()

    def _run(self, fn, args, kwargs) -> None:
        try:
            self.result = fn(*args, should_stop=self.token, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller through .error
            self.error = exc

    def cancel(self) -> None:
        self.token.cancel()

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    @property
    def cancelled(self) -> bool:
        return isinstance(self.error, Cancelled)
