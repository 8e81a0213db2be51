"""``sammed serve`` under load (issue: 8 simulated clients, half clicking, one propagating, the others opening
cases and precomputing), on a real uvicorn on 127.0.0.1 with the analytic model for ``LOAD_SECONDS``: no error, no
lost result (every request ends ``done``, or ``cancelled`` when its client cancelled it), and the embedding cache
never above its bound although the load makes it evict. The load shape is ``benchmarks/server_load.py``'s, the one
``benchmarks/bench_server.py`` runs with the real LiteMedSAM on a ``sammed serve`` process."""

from __future__ import annotations

import threading

import pytest
from support import require

require("fastapi", "the server tests need fastapi and uvicorn: run bash scripts/test.sh")

from benchmarks import server_load  # noqa: E402
from sammed.backends.fake import FakeBackend  # noqa: E402
from sammed.cache import EmbeddingCache  # noqa: E402
from sammed.worker.ops import WorkerState  # noqa: E402

TOKEN = "load-token-123"
LOAD_SECONDS = 20.0  # the whole test stays under ~30 s
CLIENTS = 8
ENCODE_DELAY_S = 0.05  # per slice: the background lane is busy, as with a real model on a GPU
CACHE_SLICES = 40  # the bound, in axial slices of the CT: below what the load touches, so the cache evicts


def _sample_cache(cache: EmbeddingCache, stop: threading.Event, peak: list[int]) -> None:
    while not stop.wait(0.02):
        peak[0] = max(peak[0], cache.memory_bytes)


@pytest.mark.slow
def test_eight_clients_get_every_result_without_error_and_the_cache_keeps_its_bound(ct_volume, ct_labels):
    from support import live_server

    target = ct_labels.array_kji == 5  # liver
    slice_bytes = 2 * ct_volume.shape_kji[1] * ct_volume.shape_kji[2]  # the fake embedding: the slice, float16
    cache = EmbeddingCache(max_bytes=CACHE_SLICES * slice_bytes)
    state = WorkerState(backend_factory=lambda model, device, runtime: FakeBackend(), cache=cache)
    state.fake_encode_delay = ENCODE_DELAY_S
    scenario = server_load.Scenario(ct_volume, target, reply_timeout_s=30.0)
    tally = server_load.Tally()
    stop, peak = threading.Event(), [0]
    sampler = threading.Thread(target=_sample_cache, args=(cache, stop, peak), daemon=True)
    with live_server(TOKEN, state) as (url, _app):
        users = server_load.make_users(url, TOKEN, scenario, tally, CLIENTS)
        sampler.start()
        try:
            server_load.run_load(scenario, users, LOAD_SECONDS)
        finally:
            stop.set()
            sampler.join(5)
        final_status = users[0].client.call("status")

    assert [u.role for u in users].count("clicker") == 4 and [u.role for u in users].count("propagator") == 1
    assert not tally.errors, tally.errors[:10]
    assert not tally.lost, tally.lost[:10]
    assert set(k.split()[1] for k in tally.finals) <= {"done", "cancelled"}, tally.finals
    assert len(tally.clicks) >= 40 and tally.propagations and tally.precomputes, "the load did not run"
    assert peak[0] <= cache.max_bytes and final_status["cache"]["memory_bytes"] <= cache.max_bytes
    assert final_status["cache"]["evictions"] > 0, "the load must fill the cache for its bound to mean something"
