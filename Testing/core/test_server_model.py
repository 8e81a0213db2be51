"""``sammed serve`` with the real LiteMedSAM (issue 14): the Lib's client against a real server on 127.0.0.1 gives
the local worker's mask for a box around the liver, and a second client opening the same volume encodes nothing."""

from __future__ import annotations

import numpy as np
from data import CT_IMAGE
from data import CT_LABEL_IDS
from data import CT_LABELS
from data import largest_slice
from support import live_server
from support import require

from sammed import geometry
from sammed.cache import EmbeddingCache
from sammed.evaluate.metrics import dice
from sammed.io import read_volume
from sammed.prompts import Prompts
from sammed.worker.client import WorkerClient
from sammed.worker.ops import WorkerState
from sammed.worker.remote import RemoteSegmenter

TOKEN = "model-token-789"
AXIS = 0


def test_a_server_gives_the_local_workers_liver_mask_and_shares_its_embeddings():
    require("uvicorn", "the server tests need uvicorn: run bash scripts/test.sh")
    from sammed.server.client import HttpWorkerClient

    volume = read_volume(CT_IMAGE)
    liver = read_volume(CT_LABELS).array_kji == CT_LABEL_IDS["liver"]
    index = largest_slice(liver, AXIS)
    ref = geometry.extract_slice(liver, AXIS, index)
    rows, cols = np.nonzero(ref)
    box = Prompts.make(box_xyxy=[cols.min(), rows.min(), cols.max(), rows.max()])

    state = WorkerState(cache=EmbeddingCache(max_bytes=256 << 20))
    state.model_id, state.device, state.runtime = "litemedsam", "cpu", "torch"
    with live_server(TOKEN, state) as (url, app):
        first = RemoteSegmenter(HttpWorkerClient(url, TOKEN), volume)
        served = first.segment(AXIS, index, box)
        assert first.lastEncoded and state.cache.stats.encodes == 1
        second = RemoteSegmenter(HttpWorkerClient(url, TOKEN), volume)  # another Slicer, the same CT
        again = second.segment(AXIS, index, box)
        assert not second.lastEncoded and state.cache.stats.encodes == 1, "the second client encodes nothing"
        assert len(state.volumes) == 1, "opened by digest: not uploaded twice"
        assert np.array_equal(again.mask_hw, served.mask_hw)

    local_client = WorkerClient()
    try:
        local_client.configure(model="litemedsam", device="cpu", runtime="torch")
        local = RemoteSegmenter(local_client, volume).segment(AXIS, index, box)
    finally:
        local_client.shutdown()
    served_dice, local_dice = dice(served.mask_hw, ref), dice(local.mask_hw, ref)
    print(f"liver slice {index}: Dice server {served_dice:.4f}, local worker {local_dice:.4f}")
    assert np.array_equal(served.mask_hw, local.mask_hw), "the same mask as the local worker"
    assert served_dice >= 0.90
