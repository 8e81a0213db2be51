"""``sammed serve``'s HTTP layer with the analytic test model (first part of issue 14): token, status codes, the
worker protocol's ops over HTTP, jobs with events and cancel, the server still serving after bad requests."""

from __future__ import annotations

import numpy as np
import pytest
from support import require

require("fastapi", "the server tests need fastapi and httpx: run bash scripts/test.sh")

from fastapi.testclient import TestClient  # noqa: E402

from sammed.backends.fake import FakeBackend  # noqa: E402
from sammed.cli.serve import read_or_make_token  # noqa: E402
from sammed.io import Volume  # noqa: E402
from sammed.server.app import create_app  # noqa: E402
from sammed.worker import protocol  # noqa: E402
from sammed.worker.ops import WorkerState  # noqa: E402

TOKEN = "test-token-123"


@pytest.fixture
def client():
    state = WorkerState(backend_factory=lambda model, device, runtime: FakeBackend())
    app = create_app(TOKEN, state, max_upload_mb=1.0)
    with TestClient(app) as c:
        c.headers["Authorization"] = f"Bearer {TOKEN}"
        yield c
    app.state.hub.close()


def _volume_args() -> dict:
    array = np.zeros((12, 40, 48), np.int16)
    array[2:10, 10:30, 12:36] = 200
    v = Volume(array, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3), "cube")
    codec = protocol.ArrayCodec(None, "c")
    return codec.dump(
        {
            "array": v.array_kji,
            "spacing": [1.0, 1.0, 2.0],
            "origin": [0.0] * 3,
            "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1],
        }
    )


def test_health_needs_no_token_and_everything_else_does(client):
    health = client.get("/health", headers={"Authorization": ""}).json()
    assert health["status"] == "ok" and health["protocol"] == protocol.PROTOCOL_VERSION and "volumes" not in health
    assert client.post("/v1/call", json={"op": "hello"}, headers={"Authorization": ""}).status_code == 401
    assert client.post("/v1/call", json={"op": "hello"}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/v1/call", json={"op": "hello"}).json()["result"]["protocol"] == protocol.PROTOCOL_VERSION


def test_a_volume_is_segmented_over_http_and_a_second_prompt_encodes_nothing(client):
    volume = client.post("/v1/call", json={"op": "open_volume", "args": _volume_args()}).json()["result"]["volume"]
    assert client.post("/v1/call", json={"op": "has_volume", "args": {"volume": volume}}).json()["result"]["known"]
    prompt = {"volume": volume, "axis": 0, "index": 5, "box": [10, 8, 37, 31]}
    first = client.post("/v1/call", json={"op": "segment", "args": prompt}).json()["result"]
    second = client.post("/v1/call", json={"op": "segment", "args": prompt}).json()["result"]
    mask = protocol.ArrayCodec(None, "c").load(first["mask"])
    assert mask.sum() == 20 * 24 and first["encoded"] and not second["encoded"]


def test_jobs_stream_events_and_can_be_cancelled(client):
    volume = client.post("/v1/call", json={"op": "open_volume", "args": _volume_args()}).json()["result"]["volume"]
    job = client.post("/v1/jobs", json={"op": "precompute", "args": {"volume": volume, "axis": 0}}).json()["job"]
    events = []
    while not events or events[-1]["kind"] not in ("done", "cancelled", "failed"):
        events += client.get(f"/v1/jobs/{job}/events", params={"after": len(events), "wait": 5}).json()["events"]
    assert events[-1]["kind"] == "done" and sum(e["kind"] == "partial" for e in events) == 12
    assert client.post(f"/v1/jobs/{job}/cancel").status_code == 200


def test_bad_requests_get_the_right_status_and_the_server_keeps_serving(client):
    assert client.post("/v1/call", content=b"{not json").status_code == 422
    assert client.post("/v1/call", content=b'{"op": "segment", "args": {"box": [NaN, 1, 2, 3]}}').status_code == 422
    assert client.post("/v1/call", json={"op": "precompute"}).status_code == 422, "a background op"
    assert client.post("/v1/call", json={"op": "explode"}).status_code == 422
    unknown = client.post("/v1/call", json={"op": "segment", "args": {"volume": "nope", "axis": 0, "index": 0}})
    assert unknown.status_code == 404
    four_d = {"array": protocol.ArrayCodec(None, "c").dump(np.zeros((2, 2, 2, 2))), "spacing": [1, 1, 1]}
    assert client.post("/v1/call", json={"op": "open_volume", "args": four_d}).status_code == 422
    assert client.get("/v1/jobs/999/events").status_code == 404
    assert client.post("/v1/call", content=b"x" * (2 << 20)).status_code == 413
    assert client.post("/v1/call", json={"op": "configure", "args": {"model": "sam_vit_h"}}).status_code == 403
    assert client.post("/v1/jobs", json={"op": "download", "args": {"model": "sam_vit_h"}}).status_code == 403
    assert client.post("/v1/call", json={"op": "hello"}).status_code == 200


def test_the_token_file_is_made_once_and_private(tmp_path):
    path = tmp_path / "token"
    token = read_or_make_token(path)
    assert len(token) >= 32 and read_or_make_token(path) == token
    assert path.stat().st_mode & 0o077 == 0
    path.chmod(0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        read_or_make_token(path)


@pytest.fixture
def live_server():
    """A real server on 127.0.0.1 with the analytic model: (url, app)."""
    from support import live_server as serve

    with serve(TOKEN, WorkerState(backend_factory=lambda model, device, runtime: FakeBackend())) as running:
        yield running


def test_remote_segmenter_works_against_a_real_server_and_opens_its_volume_again(live_server):
    """The segmenter of the Slicer modules over HTTP: a box gives the mask, a job streams its slices, and after the
    server lost the volume (a restart) the client opens it again by digest and goes on."""
    from sammed.prompts import Prompts
    from sammed.server.client import HttpWorkerClient
    from sammed.worker.client import WorkerError
    from sammed.worker.remote import RemoteSegmenter

    url, app = live_server
    array = np.zeros((12, 40, 48), np.int16)
    array[2:10, 10:30, 12:36] = 200
    segmenter = RemoteSegmenter(HttpWorkerClient(url, TOKEN), Volume(array, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0)))
    box = Prompts.make(box_xyxy=[10, 8, 37, 31])
    assert segmenter.segment(0, 5, box).mask_hw.sum() == 20 * 24 and segmenter.lastEncoded
    assert segmenter.segment(0, 5, box).mask_hw.sum() == 20 * 24 and not segmenter.lastEncoded

    client = segmenter.client
    rid = segmenter.precompute(0, [3, 4, 6])
    event = client.wait(rid, 20)
    assert event.kind == "done" and event.result["encoded"] == 3

    app.state.hub.server.state.op_close_volume({"volume": segmenter.volume.digest}, None)  # as after a restart
    assert segmenter.segment(0, 7, box).mask_hw.any(), "opened again by digest"

    with pytest.raises(WorkerError, match="cannot be reached"):
        HttpWorkerClient("http://127.0.0.1:9", TOKEN, timeout=2).call("hello")
    with pytest.raises(WorkerError):
        HttpWorkerClient(url, "wrong").call("hello")


def test_sammed_segment_with_server_asks_the_server(live_server, tmp_path, capsys):
    import json

    import SimpleITK as sitk

    from sammed.cli.main import main
    from sammed.io import read_volume

    url, _app = live_server
    array = np.zeros((12, 40, 48), np.int16)
    array[2:10, 10:30, 12:36] = 200
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((2.0, 1.0, 1.0))
    sitk.WriteImage(image, str(tmp_path / "cube.nii.gz"))
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "token").chmod(0o600)
    args = ["segment", str(tmp_path / "cube.nii.gz"), "--axis", "0", "--slice", "5", "--box", "10,8,37,31"]
    args += ["-o", str(tmp_path / "mask.nii.gz"), "--server", url, "--token-file", str(tmp_path / "token")]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["pixels"] == 20 * 24
    assert read_volume(tmp_path / "mask.nii.gz").array_kji.sum() == 20 * 24
    windowed = [*args[:-5], str(tmp_path / "other.nii.gz"), "--server", url, "--token-file", str(tmp_path / "token")]
    assert main([*windowed, "--level", "40", "--width", "400"]) == 2
    assert "drop --checkpoint/--level/--width" in capsys.readouterr().err
