"""Talk to a worker process: start it, send requests, collect replies without blocking, restart it when it dies.

``WorkerClient`` is what the Slicer modules hold (one per application). It has no threads: ``drain()`` reads
whatever the worker has written so far (a non-blocking read of its output pipe) and returns the replies as
``jobs.WorkerEvent`` (the same events the in-process ``jobs.Worker`` gives), so a QTimer can call it every few tens
of milliseconds. ``call()`` waits for one reply (quick requests, tests, scripts).

When the worker dies (killed, out of memory, a crash in native code) every request still waiting gets a ``failed``
event saying so, and the next request starts a new worker (volumes are opened again by ``RemoteSegmenter``). A
cancel that the worker does not answer within ``cancel_timeout`` seconds kills and restarts it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

from ..jobs import WorkerEvent
from . import protocol

FINAL_KINDS = ("done", "cancelled", "failed")


class WorkerError(RuntimeError):
    """The worker refused a request or stopped; ``kind`` is the reply's error type."""

    def __init__(self, message: str, kind: str = "internal") -> None:
        super().__init__(message)
        self.kind = kind


def _read_available(pipe: Any) -> tuple[bytes, bool]:
    """(bytes the worker has written so far, end of file reached), without waiting."""
    fd = pipe.fileno()
    if os.name == "nt":  # pragma: no cover - Windows: ask the pipe how much it holds (no non-blocking pipes)
        import ctypes
        import msvcrt
        from ctypes import wintypes

        handle = msvcrt.get_osfhandle(fd)  # type: ignore[attr-defined]
        available = wintypes.DWORD()
        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        ok = kernel32.PeekNamedPipe(handle, None, 0, None, ctypes.byref(available), None)
        if not ok:
            return b"", True
        return (os.read(fd, available.value) if available.value else b""), False
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            return b"".join(chunks), False
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)


def default_command() -> list[str]:
    """This Python running the worker module (in Slicer: PythonSlicer, see ``SAMMedLib.ModelSession``)."""
    return [sys.executable, "-m", "sammed.worker"]


class Replies:
    """Waiting for one request's final reply on top of a client's ``drain`` (replies of other requests are kept in
    ``_backlog`` for the next ``drain``); shared by ``WorkerClient`` and the HTTP client of ``sammed.server``."""

    _backlog: deque[WorkerEvent]

    def drain(self) -> list[WorkerEvent]:
        raise NotImplementedError

    def submit(self, op: str, args: dict | None = None) -> int:
        raise NotImplementedError

    def _sleep(self, deadline: float) -> None:
        time.sleep(min(0.05, max(deadline - time.monotonic(), 0)))

    def wait(self, rid: int, timeout: float = 60.0) -> WorkerEvent:
        """Block until request ``rid`` has its final reply (other replies are kept for ``drain``).

        Raises:
            TimeoutError: no final reply in ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = None
            for event in self.drain():
                if event.jobId == rid and event.kind in FINAL_KINDS and found is None:
                    found = event
                else:
                    self._backlog.append(event)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"The worker did not answer request {rid} within {timeout:.0f} s.")
            self._sleep(deadline)

    def call(self, op: str, args: dict | None = None, timeout: float = 120.0) -> Any:
        """Send a request and wait for its result.

        Raises:
            ValueError: the worker refused the input (a message for the user).
            WorkerError: the request failed otherwise, was cancelled, or the worker stopped.
        """
        event = self.wait(self.submit(op, args), timeout)
        if event.kind == "done":
            return event.result
        if event.errorType == "bad_input":
            raise ValueError(event.error)
        raise WorkerError(event.error or event.kind, event.errorType or event.kind)


class WorkerClient(Replies):
    """One worker process, started on the first request.

    Args:
        command: the command that starts a worker (``--exchange DIR`` is appended); default ``default_command()``.
        env: its environment (default: this process's, with the folder holding ``sammed`` on ``PYTHONPATH``).
        log_path: file for the worker's log (default: ``worker.log`` in its exchange folder).
        cancel_timeout: seconds a cancelled job may take to answer before the worker is killed and restarted.
    """

    def __init__(
        self,
        command: list[str] | None = None,
        env: dict[str, str] | None = None,
        log_path: str | os.PathLike | None = None,
        cancel_timeout: float = 5.0,
    ) -> None:
        self.command = list(command or default_command())
        self.env = env
        self.log_path = Path(log_path) if log_path else None
        self.cancel_timeout = float(cancel_timeout)
        self.generation = 0  # increases with every worker started (volumes must be opened again)
        self.restarts = 0
        self._proc: subprocess.Popen | None = None
        self._exchange: Path | None = None
        self._codec = protocol.ArrayCodec(None, prefix="c")
        self._buffer = b""
        self._ids = 0
        self._pending: dict[int, str] = {}  # request id -> op
        self._backlog: deque[WorkerEvent] = deque()
        self._cancel_deadline: float | None = None
        self._cancel_ids: set[int] = set()
        self._quiet: set[int] = set()  # cancel and settings requests: their own replies are not events
        self.settings: dict[str, Any] = {}  # ``configure`` arguments, sent to every worker this client starts

    # ------------------------------------------------------------------ process
    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.alive and self._proc is not None else None

    @property
    def logFile(self) -> Path | None:
        return self.log_path or (self._exchange / "worker.log" if self._exchange else None)

    def start(self) -> None:
        """Start a worker unless one runs."""
        if self.alive:
            return
        if self._proc is not None:  # died since the last drain: its waiting requests fail first
            self._backlog.extend(self._died())
        self._cleanup_process()
        self._exchange = Path(tempfile.mkdtemp(prefix="sammed-worker-"))
        env = dict(os.environ if self.env is None else self.env)
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        log = open(
            self.logFile or self._exchange / "worker.log", "ab"
        )  # the child writes to it; closed here after the start
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        try:
            self._proc = subprocess.Popen(
                [*self.command, "--exchange", str(self._exchange)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                bufsize=0,
                creationflags=flags,
            )
        finally:
            log.close()
        if os.name != "nt":
            os.set_blocking(self._proc.stdout.fileno(), False)  # type: ignore[union-attr]
        self._codec = protocol.ArrayCodec(self._exchange, prefix="c")
        self._buffer = b""
        self.generation += 1
        if self.settings:
            self._send_quiet("configure", self.settings)

    def configure(self, **settings: Any) -> None:
        """Settings (model, device, cache) for this worker and every one started later; None values are dropped."""
        self.settings.update({k: v for k, v in settings.items() if v is not None})
        if self.alive:
            self._send_quiet("configure", self.settings)

    def _send_quiet(self, op: str, args: dict) -> None:
        rid = self._next_id()
        self._quiet.add(rid)
        try:
            self._write(protocol.request(rid, op, args))
        except OSError:  # the worker died: the next drain reports it
            pass

    def _cleanup_process(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            for stream in (proc.stdin, proc.stdout):
                try:
                    stream.close()  # type: ignore[union-attr]
                except OSError:
                    pass
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        if self._exchange is not None:
            shutil.rmtree(self._exchange, ignore_errors=True)
            self._exchange = None

    def kill(self) -> None:
        """End the worker now (its waiting requests fail at the next ``drain``)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(5)

    def shutdown(self, timeout: float = 3.0) -> None:
        """Ask the worker to end, kill it if it does not, and remove its exchange folder."""
        if self.alive:
            try:
                self._write(protocol.request(self._next_id(), "shutdown"))
                self._proc.wait(timeout)  # type: ignore[union-attr]
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._cleanup_process()
        self._pending.clear()

    # ------------------------------------------------------------------ requests
    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    def _write(self, message: dict) -> None:
        line = protocol.to_line(self._codec.dump(message)).encode("utf-8")
        self._proc.stdin.write(line)  # type: ignore[union-attr]
        self._proc.stdin.flush()  # type: ignore[union-attr]

    def submit(self, op: str, args: dict | None = None) -> int:
        """Send a request (starting the worker if needed); its replies come from ``drain()``. Returns its id.

        Raises:
            protocol.ProtocolError: ``args`` cannot be sent (e.g. NaN).
        """
        self.start()
        rid = self._next_id()
        try:
            self._write(protocol.request(rid, op, args))
        except ValueError as exc:
            raise protocol.ProtocolError(f"Could not send '{op}': {exc}") from None
        except OSError:  # the worker died: the next drain reports it
            pass
        self._pending[rid] = op
        return rid

    def cancel(self, job_id: int | None = None) -> int:
        """Ask the worker to cancel one job (None: all background jobs); kill and restart it if the jobs have
        not ended ``cancel_timeout`` seconds later (checked by ``drain``). Returns how many jobs were waiting."""
        targets = {i for i, op in self._pending.items() if job_id is None or i == job_id}
        if not targets or not self.alive:
            return 0
        self._send_quiet("cancel", {"job": job_id})
        self._cancel_ids |= targets
        self._cancel_deadline = time.monotonic() + self.cancel_timeout
        return len(targets)

    @property
    def busy(self) -> bool:
        """True while a request waits for its final reply."""
        return bool(self._pending)

    def pending(self) -> dict[int, str]:
        """Requests waiting for their final reply: id -> op."""
        return dict(self._pending)

    # ------------------------------------------------------------------ replies
    def drain(self) -> list[WorkerEvent]:
        """Replies that arrived since the last call, oldest first (never waits)."""
        events = list(self._backlog)
        self._backlog.clear()
        if self._proc is None:
            return events
        data, eof = _read_available(self._proc.stdout)
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        events.extend(e for e in (self._event(line) for line in lines if line.strip()) if e is not None)
        if eof or self._proc.poll() is not None:
            events.extend(self._died())
        elif self._cancel_deadline is not None and time.monotonic() > self._cancel_deadline:
            events.extend(self._cancel_overdue())
        return events

    def _event(self, line: bytes) -> WorkerEvent | None:
        try:
            message = self._codec.load(protocol.parse_line(line))
        except protocol.ProtocolError as exc:
            return WorkerEvent("failed", 0, "protocol", error=f"Unreadable reply from the worker: {exc}")
        rid, kind = message.get("id"), message.get("kind")
        if rid in self._quiet:
            if kind in FINAL_KINDS:
                self._quiet.discard(rid)
            if kind != "failed":
                return None
        op = self._pending.get(rid, "") if isinstance(rid, int) else ""
        if kind in FINAL_KINDS:
            self._pending.pop(rid, None)
            self._cancel_ids.discard(rid)
            if not self._cancel_ids:
                self._cancel_deadline = None
        return WorkerEvent(
            kind=str(kind),
            jobId=int(rid) if isinstance(rid, int) else 0,
            name=op,
            fraction=float(message.get("fraction", 1.0 if kind == "done" else 0.0)),
            message=str(message.get("message", "")),
            result=message.get("result"),
            error=str(message.get("error", "")),
            errorType=str(message.get("type", "")),
        )

    def _died(self) -> list[WorkerEvent]:
        code = self._proc.poll() if self._proc is not None else None
        tail = self.logTail()
        self._cleanup_process()
        self.restarts += 1
        message = (
            f"The SAMMed worker stopped unexpectedly (exit code {code}). Nothing was written; your segments are "
            "unchanged. The next request starts a new worker."
        )
        if tail:
            message += f" Last lines of its log:\n{tail}"
        events = [WorkerEvent("failed", rid, op, error=message) for rid, op in self._pending.items()]
        self._pending.clear()
        self._cancel_ids.clear()
        self._cancel_deadline = None
        return events

    def _cancel_overdue(self) -> list[WorkerEvent]:
        ids = set(self._cancel_ids)
        self.kill()
        events = [
            WorkerEvent("cancelled", rid, self._pending.pop(rid), error="The worker did not stop in time; restarted.")
            for rid in ids
            if rid in self._pending
        ]
        return events + self._died()

    def logTail(self, lines: int = 5) -> str:
        """The last lines of the worker's log ("" when there is none)."""
        path = self.logFile
        if path is None or not path.exists():
            return ""
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        return "\n".join(text[-lines:])

    def _sleep(self, deadline: float) -> None:
        if self._proc is not None and os.name != "nt":
            import select

            stdout = self._proc.stdout
            if stdout is not None:
                select.select([stdout], [], [], min(0.05, max(deadline - time.monotonic(), 0)))
        else:
            time.sleep(0.002)

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until no request waits (replies kept for ``drain``); False on timeout."""
        deadline = time.monotonic() + timeout
        while self._pending:
            self._backlog.extend(self.drain())
            if time.monotonic() > deadline:
                return False
            self._sleep(deadline)
        return True
