"""The worker process and its protocol, with the analytic test model (no torch): bad messages get error replies and
the worker keeps serving, cancel reaches inside an encode, a killed or stuck worker is reported and replaced,
interactive requests are served while background work runs."""

from __future__ import annotations

import math
import os
import signal
import time

import numpy as np
import pytest

from sammed.io import Volume
from sammed.prompts import Prompts
from sammed.worker import protocol
from sammed.worker.client import WorkerClient
from sammed.worker.client import WorkerError
from sammed.worker.remote import RemoteSegmenter


def _cube() -> Volume:
    array = np.zeros((12, 40, 48), np.int16)
    array[2:10, 10:30, 12:36] = 200
    return Volume(array, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3), "cube")


def _client(delay: float = 0.0, **kw) -> WorkerClient:
    client = WorkerClient(**kw)
    client.configure(model="fake", fake_encode_delay=delay)  # sent to every worker it starts
    return client


@pytest.fixture
def worker():
    client = _client()
    yield client, RemoteSegmenter(client, _cube())
    client.shutdown()


def _events_until(client, predicate, timeout=10.0):
    events, end = [], time.monotonic() + timeout
    while time.monotonic() < end:
        events += client.drain()
        if predicate(events):
            return events
        time.sleep(0.005)
    raise AssertionError(f"timed out: {[(e.name, e.kind, e.error) for e in events]}")


def _raw(client, text: str) -> None:
    client._proc.stdin.write(text.encode() + b"\n")
    client._proc.stdin.flush()


# ---------------------------------------------------------------------- protocol
def test_arrays_travel_inline_or_as_files_and_come_back_equal(tmp_path):
    writer, reader = protocol.ArrayCodec(tmp_path, "c", inline_limit=1000), protocol.ArrayCodec(tmp_path, "w")
    small, large = np.arange(12, dtype=np.int16).reshape(3, 4), np.random.default_rng(0).random((40, 40))
    message = protocol.parse_line(protocol.to_line(writer.dump({"v": 1, "a": small, "b": [large, 3]})))
    assert "$array" in message["a"] and "$file" in message["b"][0]
    back = reader.load(message)
    np.testing.assert_array_equal(back["a"], small)
    np.testing.assert_array_equal(back["b"][0], large)
    assert list(tmp_path.iterdir()) == [], "the reader deletes exchange files"
    with pytest.raises(protocol.ProtocolError, match="plain .npy name"):
        reader.load({"$file": "../etc/passwd.npy"})


@pytest.mark.parametrize(
    "line, match",
    [
        ("{not json", "Not a JSON"),
        ("[1, 2]", "JSON object"),
        ('{"v": 9, "id": 1}', "version 9"),
        ('{"v": 1, "x": NaN}', "NaN"),
    ],
)
def test_bad_lines_are_refused_with_a_reason(line, match):
    with pytest.raises(protocol.ProtocolError, match=match):
        protocol.parse_line(line)


# ---------------------------------------------------------------------- the process
def test_bad_requests_get_error_replies_and_the_worker_keeps_serving(worker):
    client, segmenter = worker
    segmenter.ensure_open()
    box = '{"v":1,"id":%d,"op":"segment","args":{"volume":"%s","axis":0,"index":5,"box":[1,2,NaN,4]}}'
    _raw(client, "{not json")
    _raw(client, '{"v":2,"id":7,"op":"hello"}')
    _raw(client, box % (8, segmenter.volume.digest))
    events = _events_until(client, lambda ev: len(ev) >= 3)
    assert [(e.jobId, e.errorType) for e in events] == [(0, "bad_request"), (0, "bad_request"), (0, "bad_request")]
    assert "version 2" in events[1].error and "NaN" in events[2].error
    with pytest.raises(WorkerError, match="Unknown request 'explode'"):
        client.call("explode")
    with pytest.raises(ValueError, match="outside"):
        segmenter.segment(0, 5, Prompts.make(box_xyxy=[500, 500, 600, 600]))
    with pytest.raises(ValueError, match="3-D voxel array"):
        client.call("open_volume", {"array": np.zeros((2, 3, 4, 5)), "spacing": [1, 1, 1]})
    with pytest.raises(ValueError, match="list of numbers"):
        client.call("open_volume", {"array": np.zeros((2, 3, 4)), "spacing": [1, "x", 1], "origin": [0] * 3})
    with pytest.raises(protocol.ProtocolError, match="not JSON compliant"):  # the client sends no infinities
        client.call("open_volume", {"array": np.zeros((2, 3, 4)), "spacing": [1, math.inf, 1], "origin": [0] * 3})
    with pytest.raises(WorkerError, match="does not hold volume") as info:
        client.call("segment", {"volume": "nope", "axis": 0, "index": 0, "box": [0, 0, 4, 4]})
    assert info.value.kind == "unknown_volume"
    with pytest.raises(protocol.ProtocolError):
        client.submit("segment", {"box": [math.nan, 0, 1, 1]})
    with pytest.raises(ValueError, match="prompt_encoder must be 'original' or 'learned'"):
        client.call("segment", {**segmenter.args, "axis": 0, "index": 5, "box": [10, 8, 37, 31], "prompt_encoder": "x"})
    segmenter.promptEncoder = "original"  # the model's own encoder, per request (the Annotator's compare box)
    assert segmenter.segment(0, 5, Prompts.make(box_xyxy=[10, 8, 37, 31])).mask_hw.sum() == 20 * 24
    segmenter.promptEncoder = "learned"
    result = segmenter.segment(0, 5, Prompts.make(box_xyxy=[10, 8, 37, 31]))
    assert result.mask_hw.sum() == 20 * 24, "still serving"
    assert client.call("hello")["protocol"] == protocol.PROTOCOL_VERSION


def test_a_second_prompt_on_a_slice_encodes_nothing(worker):
    client, segmenter = worker
    segmenter.segment(0, 5, Prompts.make(box_xyxy=[10, 8, 37, 31]))
    assert segmenter.lastEncoded
    segmenter.segment(0, 5, Prompts.make(points_xy=[[20, 20]]))
    assert not segmenter.lastEncoded
    assert client.call("status")["cache"]["encodes"] == 1


def test_cancel_stops_inside_an_encode():
    client = _client(delay=2.0)  # one slice takes 2 s, in ten "layers"
    try:
        segmenter = RemoteSegmenter(client, _cube())
        rid = segmenter.precompute(0, [3, 4, 5])
        time.sleep(0.5)
        t0 = time.monotonic()
        assert client.cancel(rid) == 1
        events = _events_until(client, lambda ev: any(e.jobId == rid and e.kind == "cancelled" for e in ev), 5)
        took = time.monotonic() - t0
        assert took < 1.5, f"cancel took {took:.2f} s: the 2 s encode was not interrupted"
        assert not any(e.kind == "partial" for e in events)
        assert client.call("status")["cache"]["encodes"] == 0
    finally:
        client.shutdown()


def test_interactive_requests_are_served_while_background_work_runs():
    client = _client(delay=0.5)
    try:
        segmenter = RemoteSegmenter(client, _cube())
        segmenter.segment(0, 5, Prompts.make(box_xyxy=[10, 8, 37, 31]))  # slice 5 encoded
        rid = segmenter.precompute(0, [0, 1, 2, 3, 4, 6, 7])
        _events_until(client, lambda ev: any(e.kind == "partial" for e in ev))
        segmenter.segment(0, 5, Prompts.make(points_xy=[[20, 20]]))  # while slice 1 encodes
        assert client.pending() == {rid: "precompute"}, "the click did not wait for the background job"
        backlog = client.drain()
        assert sum(e.kind == "partial" for e in backlog) <= 1, "answered within the slice being encoded"
        client.cancel(rid)
    finally:
        client.shutdown()


def test_killed_worker_is_reported_and_the_next_request_starts_a_new_one():
    client = _client(delay=0.3)
    try:
        segmenter = RemoteSegmenter(client, _cube())
        rid = segmenter.precompute(0, list(range(12)))
        _events_until(client, lambda ev: any(e.kind == "partial" for e in ev))
        pid = client.pid
        os.kill(pid, signal.SIGKILL)
        events = _events_until(client, lambda ev: any(e.kind == "failed" for e in ev))
        failed = [e for e in events if e.kind == "failed"]
        assert [e.jobId for e in failed] == [rid]
        assert "stopped unexpectedly" in failed[0].error and "unchanged" in failed[0].error
        assert not client.busy
        result = segmenter.segment(0, 5, Prompts.make(box_xyxy=[10, 8, 37, 31]))
        assert result.mask_hw.sum() == 20 * 24 and client.pid != pid and client.restarts == 1
    finally:
        client.shutdown()


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP to simulate a stuck worker")
def test_a_worker_that_ignores_cancel_is_killed_and_restarted():
    client = _client(delay=0.3, cancel_timeout=0.5)
    try:
        segmenter = RemoteSegmenter(client, _cube())
        rid = segmenter.precompute(0, list(range(12)))
        _events_until(client, lambda ev: any(e.kind == "partial" for e in ev))
        pid = client.pid
        os.kill(pid, signal.SIGSTOP)  # stuck (e.g. inside native code that never returns)
        client.cancel()
        events = _events_until(client, lambda ev: any(e.jobId == rid and e.kind == "cancelled" for e in ev), 5)
        assert "restarted" in [e for e in events if e.jobId == rid][-1].error
        assert client.pid is None and not client.busy
        assert segmenter.segment(0, 5, Prompts.make(box_xyxy=[10, 8, 37, 31])).mask_hw.any()
    finally:
        client.shutdown()
