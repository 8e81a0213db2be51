"""``HttpWorkerClient``: the worker client's calls over HTTP to ``sammed serve``, so ``RemoteSegmenter`` (and later
the Slicer modules and the command line) work with a shared server as with the local worker process.

Same surface as ``worker.client.WorkerClient`` where ``RemoteSegmenter`` uses it: ``start``, ``generation``,
``configure``, ``submit``, ``drain``, ``call``, ``wait``, ``cancel``, ``pending``, ``busy``, ``alive``. Interactive
ops are sent at once (their reply kept for ``drain``); background ops become server jobs whose events ``drain``
collects without waiting. Standard library only (``urllib``; ``https://`` URLs are verified against the system's
certificates); arrays travel inline. Every request about a volume, a job's polls included, carries the header
``X-SAMMed-Volume: <digest>``, the key a load balancer in front of several servers keeps sessions on
(``docs/server.md``).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import deque
from typing import Any

from ..jobs import WorkerEvent
from ..worker import protocol
from ..worker.client import FINAL_KINDS
from ..worker.client import Replies
from ..worker.client import WorkerError
from ..worker.ops import INTERACTIVE_OPS


class HttpWorkerClient(Replies):
    """A client of one ``sammed serve`` server.

    Args:
        url: the server's base URL, e.g. ``http://gpu-server:8000``.
        token: the bearer token (the server's token file).
        timeout: seconds one HTTP request may take.
    """

    def __init__(self, url: str, token: str, timeout: float = 600.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = float(timeout)
        self.generation = 1  # a server restart is seen as an unknown volume: RemoteSegmenter opens it again
        self.settings: dict[str, Any] = {}
        self._codec = protocol.ArrayCodec(None, "c")
        self._ids = 0
        self._pending: dict[int, tuple[str, int, str]] = {}  # local id -> (op, server job id, volume digest)
        self._seen: dict[int, int] = {}  # local id -> events read so far
        self._backlog: deque[WorkerEvent] = deque()

    # ------------------------------------------------------------------ HTTP
    def _http(self, method: str, path: str, body: dict | None = None, volume: str = "") -> tuple[int, dict]:
        data = None if body is None else json.dumps(self._codec.dump(body), allow_nan=False).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Content-Type", "application/json")
        if volume:
            request.add_header("X-SAMMed-Volume", volume)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, json.loads(exc.read() or b"{}")
            except ValueError:
                return exc.code, {}
        except (urllib.error.URLError, OSError) as exc:
            raise WorkerError(f"The SAMMed server at {self.url} cannot be reached: {exc}", "internal") from None

    # ------------------------------------------------------------------ the WorkerClient surface
    @property
    def alive(self) -> bool:
        return True

    def start(self) -> None:
        """Nothing to start (the server runs); settings are sent with ``configure``."""

    def configure(self, **settings: Any) -> None:
        """Kept, not sent: the server's model, device and cache are its administrator's choice."""
        self.settings.update({k: v for k, v in settings.items() if v is not None})

    def submit(self, op: str, args: dict | None = None) -> int:
        """Send ``op``; its replies come from ``drain``. Returns a local request id."""
        self._ids += 1
        rid = self._ids
        volume = str((args or {}).get("volume", ""))
        if op in INTERACTIVE_OPS:
            status, reply = self._http("POST", "/v1/call", {"op": op, "args": args or {}}, volume)
            self._backlog.append(self._event(rid, op, reply, status))
            return rid
        status, reply = self._http("POST", "/v1/jobs", {"op": op, "args": args or {}}, volume)
        if status != 200:
            self._backlog.append(self._event(rid, op, reply, status))
            return rid
        self._pending[rid] = (op, int(reply["job"]), volume)
        self._seen[rid] = 0
        return rid

    def _event(self, rid: int, op: str, reply: dict, status: int) -> WorkerEvent:
        if "kind" not in reply:  # an HTTP error of the server itself (token, size, malformed)
            kind, error, etype = "failed", str(reply.get("detail", f"HTTP {status}")), "bad_request"
            return WorkerEvent(kind, rid, op, error=error, errorType="bad_input" if status == 422 else etype)
        return WorkerEvent(
            kind=str(reply["kind"]),
            jobId=rid,
            name=op,
            fraction=float(reply.get("fraction", 1.0 if reply["kind"] == "done" else 0.0)),
            message=str(reply.get("message", "")),
            result=self._codec.load(reply.get("result")),
            error=str(reply.get("error", "")),
            errorType=str(reply.get("type", "")),
        )

    def drain(self) -> list[WorkerEvent]:
        """Replies since the last call: interactive results, and each job's new events (one short poll per job)."""
        events = list(self._backlog)
        self._backlog.clear()
        for rid, (op, job, volume) in list(self._pending.items()):
            status, body = self._http("GET", f"/v1/jobs/{job}/events?after={self._seen[rid]}&wait=0", None, volume)
            if status != 200:
                events.append(self._event(rid, op, body, status))
                self._pending.pop(rid, None)
                continue
            for reply in body.get("events", []):
                self._seen[rid] += 1
                events.append(self._event(rid, op, reply, 200))
                if reply.get("kind") in FINAL_KINDS:
                    self._pending.pop(rid, None)
        return events

    def cancel(self, job_id: int | None = None) -> int:
        """Cancel one job (or all of this client's)."""
        targets = [(job, volume) for rid, (_op, job, volume) in self._pending.items() if job_id in (None, rid)]
        for job, volume in targets:
            self._http("POST", f"/v1/jobs/{job}/cancel", None, volume)
        return len(targets)

    def pending(self) -> dict[int, str]:
        return {rid: op for rid, (op, _job, _volume) in self._pending.items()}

    @property
    def busy(self) -> bool:
        return bool(self._pending)

    def shutdown(self) -> None:
        """Cancel this client's jobs (the server keeps running)."""
        self.cancel()
