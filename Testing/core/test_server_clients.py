"""``sammed serve`` with clients that misbehave or vanish (issue 14): a job nobody polls is cancelled, a client
process killed in the middle of a request or a job, a truncated upload; and the server keeps serving."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from support import require

require("fastapi", "the server tests need fastapi: run bash scripts/test.sh")

from support import live_server  # noqa: E402

from sammed.backends.fake import FakeBackend  # noqa: E402
from sammed.io import Volume  # noqa: E402
from sammed.prompts import Prompts  # noqa: E402
from sammed.server.client import HttpWorkerClient  # noqa: E402
from sammed.worker.ops import WorkerState  # noqa: E402
from sammed.worker.remote import RemoteSegmenter  # noqa: E402

TOKEN = "clients-token-456"
LEASE_S = 0.6
BOX = Prompts.make(box_xyxy=[10, 8, 37, 31])


@pytest.fixture
def server():
    """A real server with the analytic model (0.15 s per encode) and a short job lease: (url, app)."""
    state = WorkerState(backend_factory=lambda model, device, runtime: FakeBackend())
    state.fake_encode_delay = 0.15
    with live_server(TOKEN, state, job_lease_s=LEASE_S) as running:
        yield running


def _cube() -> Volume:
    array = np.zeros((20, 40, 48), np.int16)
    array[2:18, 10:30, 12:36] = 200
    return Volume(array, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))


def _background_idle(app, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while app.state.hub.server._running["background"] is not None:
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def _serves(url: str) -> bool:
    segmenter = RemoteSegmenter(HttpWorkerClient(url, TOKEN, timeout=20), _cube())
    return int(segmenter.segment(0, 5, BOX).mask_hw.sum()) == 20 * 24


def test_a_job_its_client_stops_polling_is_cancelled_and_forgotten(server):
    url, app = server
    hub = app.state.hub
    segmenter = RemoteSegmenter(HttpWorkerClient(url, TOKEN), _cube())
    segmenter.ensure_open()
    rid = segmenter.precompute(0, list(range(20)))  # 3 s of encoding; the client never asks for its events
    time.sleep(LEASE_S * 3)
    assert hub.reaped == 1 and _background_idle(app, 2.0), "cancelled once its lease ran out"
    assert hub.server.state.cache.stats.encodes < 20
    (event,) = [e for e in segmenter.client.drain() if e.jobId == rid]
    assert event.kind == "failed" and "No job" in event.error, "the forgotten job is reported, not waited for"

    polled = segmenter.precompute(0, [1, 2, 3])  # a client that keeps polling keeps its job
    assert segmenter.client.wait(polled, 20).kind == "done" and hub.reaped == 1


CLIENT = """
import time
import numpy as np
from sammed.io import Volume
from sammed.server.client import HttpWorkerClient
from sammed.worker.remote import RemoteSegmenter
array = np.zeros((20, 40, 48), np.int16)
array[2:18, 10:30, 12:36] = 200
volume = Volume(array, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
segmenter = RemoteSegmenter(HttpWorkerClient({url!r}, {token!r}), volume)
segmenter.ensure_open()
segmenter.precompute(0, list(range(20)))
while True:
    segmenter.client.drain()
    print("polling", flush=True)
    time.sleep(0.05)
"""


def test_a_client_process_killed_during_its_job_gets_the_job_cancelled(server):
    url, app = server
    code = CLIENT.format(url=url, token=TOKEN)
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "polling"
        time.sleep(LEASE_S * 2)
        assert app.state.hub.reaped == 0, "a polling client keeps its job"
        process.kill()
        process.wait(10)
    finally:
        process.kill()
    time.sleep(LEASE_S * 3)
    assert app.state.hub.reaped == 1 and _background_idle(app, 2.0)
    assert _serves(url)


def _raw(url: str, head: bytes, body: bytes) -> None:
    """Send ``head`` + ``body`` on a new connection and close it without reading the answer (a killed client)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(head + body)


def test_a_truncated_upload_and_a_client_gone_mid_request_leave_the_server_serving(server):
    url, app = server
    auth = f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n".encode()
    head = b"POST /v1/call HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Length: 100000\r\n\r\n"
    _raw(url, head, b'{"op": "open_volume", "args": {"array": ')  # then the connection drops
    segmenter = RemoteSegmenter(HttpWorkerClient(url, TOKEN), _cube())
    segmenter.ensure_open()
    body = b'{"op": "segment", "args": {"volume": "%s", "axis": 0, "index": 9, "box": [10, 8, 37, 31]}}' % (
        segmenter.volume.digest.encode()
    )
    _raw(url, b"POST /v1/call HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Length: %d\r\n\r\n" % len(body), body)
    time.sleep(0.5)  # the encode of slice 9 finishes for nobody
    assert _serves(url) and len(app.state.hub.server.state.volumes) == 1
    assert app.state.hub._replies == {}, "nothing kept for the client that went away"


def test_a_damaged_upload_is_refused_and_every_volume_request_names_its_volume_for_load_balancers(server, monkeypatch):
    """``open_volume`` checks the digest the client sent; the ``X-SAMMed-Volume`` header (the session-affinity key
    of docs/server.md) is on every request about a volume, a job's polls and cancel included."""
    import urllib.request

    url, app = server
    seen: list[tuple[str, str]] = []
    urlopen = urllib.request.urlopen

    def record(request, timeout):  # what a load balancer in front of the server sees
        seen.append((request.full_url.split("?")[0], request.get_header("X-sammed-volume", "")))
        return urlopen(request, timeout=timeout)

    monkeypatch.setattr(urllib.request, "urlopen", record)
    volume = _cube()
    client = HttpWorkerClient(url, TOKEN)

    wire = {"array": volume.array_kji.copy(), "spacing": [1.0, 1.0, 2.0], "origin": [0.0] * 3}
    wire["array"][3, 3, 3] += 1  # not the voxels the digest was computed on
    with pytest.raises(ValueError, match="arrived damaged"):
        client.call("open_volume", {**wire, "direction": np.eye(3).ravel().tolist(), "volume": volume.digest})
    assert not app.state.hub.server.state.volumes

    segmenter = RemoteSegmenter(client, volume)
    segmenter.segment(0, 5, BOX)
    rid = segmenter.precompute(0, [1, 2, 3])
    client.drain()
    client.cancel(rid)
    client.wait(rid, 20)
    about_volume = [header for path, header in seen if not path.endswith("/v1/call") or header]
    assert about_volume and set(about_volume) == {volume.digest}
    assert {path.rsplit("/", 1)[-1] for path, header in seen if header} == {"call", "jobs", "events", "cancel"}


def test_the_volumes_a_server_holds_are_bounded_and_a_dropped_one_is_sent_again(server):
    url, app = server
    state = app.state.hub.server.state
    first, second = _cube(), Volume(_cube().array_kji[:, ::-1].copy(), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    state.max_volume_bytes = first.array_kji.nbytes + 1
    a = RemoteSegmenter(HttpWorkerClient(url, TOKEN), first)
    b = RemoteSegmenter(HttpWorkerClient(url, TOKEN), second)
    assert a.segment(0, 5, BOX).mask_hw.any() and b.segment(0, 5, BOX).mask_hw.any()
    assert list(state.volumes) == [second.digest], "the least recently used volume was dropped"
    assert a.segment(0, 6, BOX).mask_hw.any(), "its client opened it again by digest"
    assert list(state.volumes) == [first.digest]


def test_a_client_goes_on_after_the_server_restarted():
    """The server process ends and a new one starts at the same address (nothing of the old one is left): the
    client's next request finds its volume unknown, opens it again by digest and gets its mask."""
    from support import live_server as serve

    def fresh_state() -> WorkerState:
        return WorkerState(backend_factory=lambda model, device, runtime: FakeBackend())

    with serve(TOKEN, fresh_state()) as (url, _app):
        segmenter = RemoteSegmenter(HttpWorkerClient(url, TOKEN), _cube())
        assert segmenter.segment(0, 5, BOX).mask_hw.sum() == 20 * 24
    port = int(url.rsplit(":", 1)[1])
    from sammed.worker.client import WorkerError

    with pytest.raises(WorkerError, match="cannot be reached"):  # while it is down: a clear error, nothing lost
        segmenter.segment(0, 6, BOX)
    state = fresh_state()
    with serve(TOKEN, state, port=port) as (_url, _app2):
        assert segmenter.segment(0, 6, BOX).mask_hw.sum() == 20 * 24
        assert list(state.volumes) == [segmenter.volume.digest], "uploaded again by digest"
