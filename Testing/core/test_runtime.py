"""The exported encoder on ONNX Runtime and OpenVINO: masks equal the eager model's on the bundled CT, a stale or
corrupted export is detected and made again, an encode can be interrupted or preempted, bad runtime choices are
refused, and auto picks the fastest installed runtime."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from data import CT_LABEL_IDS

from sammed import geometry
from sammed import jobs
from sammed import models
from sammed.backends import onnx_encoder
from sammed.evaluate.metrics import dice
from sammed.segmenter import Segmenter

pytestmark = pytest.mark.model
ORGANS = ("liver", "spleen", "kidney_left")


@pytest.fixture(scope="module", params=["onnx", "openvino"])
def onnx_backend(request, litemedsam):
    """LiteMedSAM whose encoder runs the ONNX export on ONNX Runtime or on OpenVINO."""
    backend = models.load_backend("litemedsam", device="cpu", runtime=request.param)
    assert backend.runtime == request.param
    return backend


@pytest.fixture(scope="module")
def torch_backend(litemedsam):
    return models.load_backend("litemedsam", device="cpu", runtime="torch")


def test_onnx_masks_equal_the_eager_masks_on_the_bundled_ct(ct_volume, ct_labels, onnx_backend, torch_backend):
    fast, eager = Segmenter(ct_volume, onnx_backend), Segmenter(ct_volume, torch_backend)
    scores, diffs = [], []
    for organ in ORGANS:
        ref = ct_labels.array_kji == CT_LABEL_IDS[organ]
        for axis in (0, 1):
            index = geometry.largest_slice(ref, axis)
            box = geometry.box_from_mask(geometry.extract_slice(ref, axis, index))
            a = fast.segment(axis, index, box_xyxy=box).mask_hw
            b = eager.segment(axis, index, box_xyxy=box).mask_hw
            scores.append(dice(a, b))
            image = fast.model_image(axis, index)
            diffs.append(float(np.abs(onnx_backend.encode(image) - torch_backend.encode(image)).max()))
    summary = f"mean Dice {np.mean(scores):.4f}, min {min(scores):.4f}; max |emb diff| {max(diffs):.2e}"
    print(f"\n{onnx_backend.runtime} vs eager masks: {summary}")
    assert np.mean(scores) >= 0.995 and min(scores) >= 0.98
    assert max(diffs) < 1e-3


def test_a_stale_or_corrupted_export_is_made_again(tmp_path, torch_backend):
    encoder, sha = torch_backend.model.image_encoder, torch_backend.weights_sha256
    path = onnx_encoder.ensure_export(encoder, 256, "litemedsam", sha, tmp_path)
    onnx_path, record_path = onnx_encoder.export_paths(tmp_path, "litemedsam", sha, 256)
    assert path == onnx_path and onnx_encoder.check_export(onnx_path, record_path, sha) == ""
    assert "stale" in onnx_encoder.check_export(onnx_path, record_path, "0" * 64)
    data = bytearray(onnx_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_path.write_bytes(bytes(data))
    assert "corrupted" in onnx_encoder.check_export(onnx_path, record_path, sha)
    onnx_encoder.ensure_export(encoder, 256, "litemedsam", sha, tmp_path)
    assert onnx_encoder.check_export(onnx_path, record_path, sha) == ""
    record = json.loads(record_path.read_text())
    assert record["weights_sha256"] == sha and record["export_version"] == onnx_encoder.EXPORT_VERSION
    assert not list(tmp_path.glob("*.part"))


def test_an_onnx_encode_can_be_interrupted(ct_volume, onnx_backend):
    """The worker's cancel: the encode in progress raises ``Cancelled`` (one that finishes just before the stop
    returns its embedding; the attempt is then made again), and the encoder works afterwards."""
    image = Segmenter(ct_volume, onnx_backend).model_image(0, 50)
    results = []
    for _attempt in range(5):
        outcome: dict = {}

        def encode(outcome=outcome) -> None:
            outcome["ident"] = threading.get_ident()
            try:
                onnx_backend.encode(image)
                outcome["result"] = "finished"
            except jobs.Cancelled:
                outcome["result"] = "cancelled"

        thread = threading.Thread(target=encode)
        thread.start()
        end = time.monotonic() + 5
        while thread.is_alive() and not onnx_backend.interrupt(outcome.get("ident")):  # until the run started
            assert time.monotonic() < end, outcome
            time.sleep(0.002)
        thread.join(10)
        results.append(outcome["result"])
        if outcome["result"] == "cancelled":
            break
    assert "cancelled" in results, results
    assert onnx_backend.encode(image).shape == onnx_backend.embedding_shape, "the encoder still works afterwards"


def test_bad_runtime_choices_are_refused_and_auto_picks_the_fastest_installed(torch_backend, litemedsam):
    with pytest.raises(ValueError, match="Unknown runtime 'tensorrt'"):
        models.select_runtime(torch_backend, "tensorrt")
    assert models.select_runtime(torch_backend, "torch") == "torch"
    installed = [r for r in models.EXPORTED_RUNTIMES if onnx_encoder.available(r)]
    assert litemedsam.runtime == (installed[0] if installed else "torch")


def test_a_preempted_onnx_encode_waits_for_the_users_request_then_finishes(ct_volume, onnx_backend):
    """What the worker does when a click arrives during a background encode: the encode stops, waits at the yield
    point until the click is answered, then runs again and returns the same embedding. (A preempt that comes as the
    encode finishes changes nothing; the attempt is then made again.)"""
    image = Segmenter(ct_volume, onnx_backend).model_image(0, 60)
    expected = onnx_backend.encode(image)
    preempted = 0
    for _attempt in range(5):
        click_done, waited, outcome = threading.Event(), threading.Event(), {}

        def yield_point(click_done=click_done, waited=waited) -> None:
            waited.set()
            click_done.wait(10)

        onnx_backend.set_yield_point(yield_point)
        try:

            def encode(outcome=outcome) -> None:
                outcome["ident"] = threading.get_ident()
                outcome["embedding"] = onnx_backend.encode(image)

            thread = threading.Thread(target=encode)
            thread.start()
            end = time.monotonic() + 5
            while thread.is_alive() and not onnx_backend.interrupt(outcome.get("ident"), preempt=True):
                assert time.monotonic() < end, outcome
                time.sleep(0.002)
            if waited.wait(2):
                preempted += 1
                assert thread.is_alive() and "embedding" not in outcome, "it waits for the user's request"
            click_done.set()
            thread.join(10)
            np.testing.assert_allclose(outcome["embedding"], expected, atol=1e-5)
        finally:
            onnx_backend.set_yield_point(lambda: None)
        if preempted:
            break
    assert preempted, "no encode was preempted in 5 attempts"
    np.testing.assert_allclose(onnx_backend.encode(image), expected, atol=1e-5)  # the next run is not stopped


def test_a_batched_encoder_call_gives_the_single_slice_embeddings(ct_volume, torch_backend):
    """The GPU path stacks slices into one encoder call; on the CPU (no autocast) the same call must give each
    slice's own embedding."""
    segmenter = Segmenter(ct_volume, torch_backend)
    images = [segmenter.model_image(0, i) for i in (40, 60, 80)]
    batched = torch_backend.encode_batch(images, batched=True)
    for image, embedding in zip(images, batched, strict=True):
        np.testing.assert_allclose(embedding, torch_backend.encode(image), atol=2e-4)
    assert torch_backend.batch_size() == 1, "a batch is no faster on the CPU"


def test_precompute_encodes_in_batches_of_the_backends_size(ct_volume):
    """Segmenter.precompute (and the worker's precompute) ask the backend for its batch size and encode that many
    slices per call, each slice once."""
    from sammed.backends.fake import FakeBackend

    class BatchingFake(FakeBackend):
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[int] = []

        def batch_size(self) -> int:
            return 4

        def encode_batch(self, images):
            self.calls.append(len(images))
            return [self.encode(image) for image in images]

    backend = BatchingFake()
    segmenter = Segmenter(ct_volume, backend)
    segmenter.embedding(0, 50)
    assert segmenter.precompute(0, 50, indices=range(45, 56)) == 10
    assert backend.calls == [3, 4, 3] and backend.encode_calls == 11
    assert segmenter.cache.stats.encodes == 11 and all(segmenter.is_cached(0, i) for i in range(45, 56))
