"""``sammed serve``: the worker protocol over HTTP, so that one GPU machine serves many Slicer clients.

One ``worker.server.WorkerServer`` (the same lanes, ops and cache as the local worker process) serves every client;
``Hub`` gives each request a server-side id and keeps its replies until they are read. Endpoints (JSON; arrays
travel inline as in ``docs/worker-protocol.md``):

- ``GET /health`` (no token): protocol and package versions, model, device, cache use;
- ``POST /v1/call`` ``{"op", "args"}``: an interactive op, answered with its final reply;
- ``POST /v1/jobs`` ``{"op", "args"}``: a background op, answered with ``{"job": id}``;
- ``GET /v1/jobs/{id}/events?after=N&wait=S``: the job's replies after the N-th, waiting up to S seconds;
- ``POST /v1/jobs/{id}/cancel``.

A client that stops asking for a job's events (it was closed, killed or lost its network) is gone: after
``job_lease_s`` seconds without a poll its job is cancelled and its replies are forgotten (``Hub.reap``), so the
server neither works nor keeps results for nobody. Waiting for an interactive reply happens in a worker thread
(``run_in_threadpool``), never on the event loop, so one client's slow request does not hold up the others.

Every ``/v1`` request needs ``Authorization: Bearer <token>`` (compared in constant time). Status codes: 401 no or
wrong token, 403 an op only the server's administrator decides (model, device, downloads: ``sammed serve``'s
options), 404 unknown job or volume, 413 a body over the upload limit, 422 bad input or a malformed request.
"""

from __future__ import annotations

import hmac
import itertools
import threading
import time

from fastapi import Depends
from fastapi import FastAPI
from fastapi import Header
from fastapi import HTTPException
from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from .. import __version__
from .. import jobs
from ..worker import protocol
from ..worker.ops import BACKGROUND_OPS
from ..worker.ops import INTERACTIVE_OPS
from ..worker.ops import WorkerState
from ..worker.server import WorkerServer

SERVER_ONLY = ("configure", "download", "shutdown")  # decided by whoever runs the server, not by its clients
STATUS = {"bad_input": 422, "bad_request": 422, "unknown_op": 422, "unknown_volume": 404, "internal": 500}
FINAL = ("done", "cancelled", "failed")
FINAL_GRACE_S = 5.0  # a job's replies are kept this long after its final reply was read (a poll repeated)


class Hub:
    """The shared worker and the replies of every request, by server-side request id.

    Args:
        state: the worker state (model, cache, volumes); None: a default one.
        job_lease_s: a background job whose events nobody asked for in this many seconds is cancelled and
            forgotten (its client is gone).
    """

    def __init__(self, state: WorkerState | None = None, job_lease_s: float = 60.0) -> None:
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._replies: dict[int, list[dict]] = {}
        self._polled: dict[int, float] = {}  # background job -> when its client last asked for it
        self.job_lease_s = float(job_lease_s)
        self.reaped = 0
        self.server = WorkerServer(self._on_reply, protocol.ArrayCodec(None, "s"), state)
        self._closing = threading.Event()
        self._reaper = threading.Thread(target=self._reap_loop, name="sammed-reaper", daemon=True)
        self._reaper.start()

    def _on_reply(self, message: dict) -> None:
        with self._cond:
            replies = self._replies.get(int(message.get("id", 0)))
            if replies is not None:  # a forgotten request's late reply is dropped, not kept for nobody
                replies.append(message)
                self._cond.notify_all()

    def submit(self, op: str, args: dict, job: bool = False) -> int:
        """Queue ``op`` (arrays in ``args`` inline, decoded here: call it off the event loop); returns its id.
        ``job``: a background job under the lease."""
        rid = next(self._ids)
        with self._cond:
            self._replies[rid] = []
            if job:
                self._polled[rid] = time.monotonic()
        try:
            self.server.enqueue(rid, op, args)
        except protocol.ProtocolError as exc:  # a malformed inline array
            with self._cond:
                self._replies.pop(rid, None)
                self._polled.pop(rid, None)
            raise ValueError(str(exc)) from None
        return rid

    def known(self, rid: int) -> bool:
        with self._cond:
            return rid in self._replies

    def replies(self, rid: int, after: int = 0, wait: float = 0.0) -> list[dict]:
        """Replies of ``rid`` after the ``after``-th, waiting up to ``wait`` seconds for one (or for the final)."""
        deadline = time.monotonic() + wait
        with self._cond:
            while len(self._replies.get(rid, [])) <= after and time.monotonic() < deadline:
                self._cond.wait(max(deadline - time.monotonic(), 0.0))
            found = list(self._replies.get(rid, [])[after:])
            if rid in self._polled:  # read to its end: forgotten FINAL_GRACE_S later, not a whole lease
                ended = any(r.get("kind") in FINAL for r in found)
                self._polled[rid] = time.monotonic() - (max(self.job_lease_s - FINAL_GRACE_S, 0.0) if ended else 0.0)
            return found

    def reap(self, now: float | None = None) -> list[int]:
        """Cancel and forget the jobs nobody polled for ``job_lease_s`` seconds; returns their ids."""
        now = time.monotonic() if now is None else now
        with self._cond:
            stale = [rid for rid, seen in self._polled.items() if now - seen > self.job_lease_s]
            for rid in stale:
                self._polled.pop(rid)
                self._replies.pop(rid, None)
        for rid in stale:
            self.server.cancel(rid)  # 0 when it had ended: then only its replies were dropped
        self.reaped += len(stale)
        return stale

    def _reap_loop(self) -> None:
        while not self._closing.wait(min(max(self.job_lease_s / 4, 0.05), 5.0)):
            self.reap()

    def final(self, rid: int, timeout: float) -> dict:
        """The final reply of ``rid`` (progress replies skipped); the request's replies are then forgotten."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for reply in self.replies(rid, seen, max(deadline - time.monotonic(), 0.0)):
                seen += 1
                if reply.get("kind") in FINAL:
                    with self._cond:
                        self._replies.pop(rid, None)
                    return reply
            if time.monotonic() >= deadline:
                return protocol.reply(rid, "failed", error="The server did not answer in time.", type="internal")

    def state_status(self) -> dict:
        """What ``/health`` shows: model, device, runtime, cache use (no volume ids)."""
        control = jobs.JobControl(lambda f, m: None, lambda p: None, lambda: False)
        status = self.server.state.op_status({}, control)
        return {k: status[k] for k in ("model", "device", "model_loaded", "runtime", "cache")}

    def close(self) -> None:
        self._closing.set()
        self.server.close()


class Api:
    """The routes of ``create_app``: token check, body limit and parsing, status codes."""

    def __init__(self, hub: Hub, token: str, max_upload_mb: float) -> None:
        self.hub, self.token, self.max_upload_mb = hub, token, max_upload_mb
        self.limit = int(max_upload_mb * (1 << 20))

    def authorised(self, authorization: str = Header(default="")) -> None:
        given = authorization[7:] if authorization.startswith("Bearer ") else ""
        if not self.token or not hmac.compare_digest(given.encode(), self.token.encode()):
            raise HTTPException(401, "A valid token is needed: Authorization: Bearer <token>.")

    async def body(self, request: Request, kind: tuple[str, ...], other: str) -> dict:
        """``{"op", "args"}`` of the request, ``op`` one of ``kind`` (413 over the limit, 422 malformed)."""
        too_big = HTTPException(413, f"The request is larger than the upload limit ({self.max_upload_mb:g} MB).")
        if int(request.headers.get("content-length") or 0) > self.limit:
            raise too_big
        raw = await request.body()
        if len(raw) > self.limit:
            raise too_big
        try:  # parsing a volume upload takes a while: not on the event loop, which serves everyone
            message = (await run_in_threadpool(protocol.parse_line, b'{"v": 1, "request": ' + raw + b"}"))["request"]
        except protocol.ProtocolError as exc:
            raise HTTPException(422, str(exc)) from None
        if not isinstance(message, dict) or not isinstance(message.get("op"), str):
            raise HTTPException(422, 'The body must be {"op": name, "args": {...}}.')
        if message["op"] in SERVER_ONLY:
            raise HTTPException(403, f"'{message['op']}' is decided by the server's administrator, not by clients.")
        if message["op"] not in kind:
            raise HTTPException(422, f"'{message['op']}' is not an op of this endpoint; use {other}.")
        if not isinstance(message.get("args") or {}, dict):
            raise HTTPException(422, '"args" must be an object.')
        return message

    async def submit(self, message: dict, job: bool = False) -> int:
        """Hand the request to the worker server from a thread (decoding inline arrays takes a while)."""
        try:
            return await run_in_threadpool(self.hub.submit, message["op"], message.get("args") or {}, job)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None

    def job(self, job: int) -> int:
        if not self.hub.known(job):
            raise HTTPException(404, f"No job {job} on this server.")
        return job

    def health(self) -> dict:
        return {"status": "ok", "protocol": protocol.PROTOCOL_VERSION, "sammed": __version__, **self.hub.state_status()}

    async def call(self, request: Request) -> JSONResponse:
        message = await self.body(request, INTERACTIVE_OPS, "/v1/jobs for background ops")
        reply = await run_in_threadpool(self.hub.final, await self.submit(message), 600.0)
        status = 200 if reply.get("kind") == "done" else STATUS.get(str(reply.get("type")), 409)
        return JSONResponse(reply, status_code=status)

    async def start(self, request: Request) -> dict:
        message = await self.body(request, BACKGROUND_OPS, "/v1/call for interactive ops")
        return {"job": await self.submit(message, job=True)}

    def events(self, job: int, after: int = 0, wait: float = 0.0) -> dict:
        return {"events": self.hub.replies(self.job(job), max(after, 0), min(max(wait, 0.0), 30.0))}

    def cancel(self, job: int) -> dict:
        return {"cancelled": self.hub.server.cancel(self.job(job))}


def create_app(
    token: str, state: WorkerState | None = None, max_upload_mb: float = 1024.0, job_lease_s: float = 60.0
) -> FastAPI:
    """The FastAPI application (``sammed serve`` runs it with uvicorn); ``app.state.hub`` is its ``Hub``."""
    app = FastAPI(title="SAMMed server", version=__version__, description=__doc__)
    api = Api(Hub(state, job_lease_s), token, max_upload_mb)
    app.state.hub = api.hub
    secured = [Depends(api.authorised)]
    app.add_api_route("/health", api.health, methods=["GET"])
    app.add_api_route("/v1/call", api.call, methods=["POST"], dependencies=secured)
    app.add_api_route("/v1/jobs", api.start, methods=["POST"], dependencies=secured)
    app.add_api_route("/v1/jobs/{job}/events", api.events, methods=["GET"], dependencies=secured)
    app.add_api_route("/v1/jobs/{job}/cancel", api.cancel, methods=["POST"], dependencies=secured)
    return app
