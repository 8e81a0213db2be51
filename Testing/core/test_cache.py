"""Embedding cache: keys, byte bound, disk tier (atomic, verified), never encoding a slice twice, precompute."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from sammed.backends.fake import FakeBackend
from sammed.cache import CacheKey
from sammed.cache import EmbeddingCache
from sammed.io import Volume
from sammed.jobs import Cancelled
from sammed.jobs import CancelToken
from sammed.segmenter import Segmenter


def key(i=0, model="m", prep="p", digest="d", axis=0):
    return CacheKey(digest, axis, i, model, prep)


def test_memory_tier_is_bounded_in_bytes_and_lru():
    emb = np.ones((4, 8, 8), np.float32)  # 512 bytes as float16
    cache = EmbeddingCache(max_bytes=3 * 512)
    for i in range(3):
        cache.put(key(i), emb)
    cache.get(key(0))  # 0 becomes most recent
    cache.put(key(3), emb)
    assert cache.memory_bytes == 3 * 512
    assert cache.get(key(1)) is None  # least recently used went first
    assert cache.get(key(0)) is not None
    assert cache.get(key(0)).dtype == np.float16


def test_every_key_part_separates_entries():
    cache = EmbeddingCache()
    cache.put(key(), np.zeros((1, 2, 2)))
    for other in (key(1), key(model="m2"), key(prep="p2"), key(digest="d2"), key(axis=1)):
        assert cache.get(other) is None


def test_disk_tier_round_trip_and_corrupt_entry_is_recomputed(tmp_path):
    emb = np.random.default_rng(0).normal(size=(2, 4, 4)).astype(np.float32)
    a = EmbeddingCache(disk_dir=tmp_path)
    a.put(key(), emb)
    files = list(tmp_path.rglob("*.npy"))
    assert len(files) == 1 and not list(tmp_path.rglob(".tmp-*"))
    b = EmbeddingCache(disk_dir=tmp_path)  # a new process: memory empty
    np.testing.assert_array_equal(b.get(key()), emb.astype(np.float16))
    assert b.stats.disk_hits == 1
    files[0].write_bytes(files[0].read_bytes()[:-8] + b"garbage!")
    c = EmbeddingCache(disk_dir=tmp_path)
    calls = []
    out = c.get_or_compute(key(), lambda: calls.append(1) or emb)
    assert calls == [1] and c.stats.corrupt == 1
    np.testing.assert_array_equal(out, emb.astype(np.float16))
    assert EmbeddingCache(disk_dir=tmp_path).get(key()) is not None  # rewritten, valid again


def test_disk_cap_and_clear(tmp_path):
    emb = np.zeros((4, 8, 8), np.float32)
    cache = EmbeddingCache(disk_dir=tmp_path, max_disk_bytes=3 * 700)
    for i in range(6):
        cache.put(key(i), emb)
    files, size = cache.disk_usage()
    assert size <= 3 * 700 and files < 6
    assert cache.clear_disk() == size
    assert cache.disk_usage() == (0, 0)


def test_disk_cap_counts_entries_another_process_wrote(tmp_path):
    """The cap keeps a running total between scans; entries written by another cache on the same folder (another
    process) are still found and evicted once the total passes the bound."""
    emb = np.zeros((4, 8, 8), np.float32)
    first = EmbeddingCache(disk_dir=tmp_path, max_disk_bytes=3 * 700)
    second = EmbeddingCache(disk_dir=tmp_path, max_disk_bytes=3 * 700)
    for i in range(3):
        first.put(key(i), emb)
    for i in range(3, 8):
        second.put(key(i), emb)
    files, size = first.disk_usage()
    assert size <= 3 * 700 and 0 < files <= 3
    assert EmbeddingCache(disk_dir=tmp_path).get(key(7)) is not None  # the newest entry is kept on disk


def test_concurrent_requests_for_one_slice_encode_once():
    cache = EmbeddingCache()
    calls = []
    barrier = threading.Barrier(4)

    def compute():
        calls.append(1)
        threading.Event().wait(0.05)
        return np.zeros((1, 2, 2))

    def worker():
        barrier.wait()
        cache.get_or_compute(key(), compute)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and cache.stats.encodes == 1


def box_volume():
    arr = np.zeros((10, 32, 32), np.int16)
    arr[:, 8:20, 10:24] = 300
    return Volume(arr, name="box")


def test_a_slice_prompted_twenty_times_is_encoded_once():
    fake = FakeBackend()
    seg = Segmenter(box_volume(), fake, preset="ct_abdomen")
    for n in range(20):
        seg.segment(0, 4, box_xyxy=[9 + n % 3, 7, 25, 21])
    assert fake.encode_calls == 1
    assert seg.cache.stats.encodes == 1 and seg.cache.stats.hits == 19


def test_new_window_is_a_new_input():
    fake = FakeBackend()
    cache = EmbeddingCache()
    vol = box_volume()
    Segmenter(vol, fake, cache=cache, preset="ct_abdomen").segment(0, 4, box_xyxy=[9, 7, 25, 21])
    Segmenter(vol, fake, cache=cache, preset="ct_bone").segment(0, 4, box_xyxy=[9, 7, 25, 21])
    Segmenter(vol, fake, cache=cache, preset="ct_abdomen").segment(0, 4, box_xyxy=[9, 7, 25, 21])
    assert fake.encode_calls == 2


def test_precompute_goes_outward_and_skips_cached_slices():
    fake = FakeBackend()
    seg = Segmenter(box_volume(), fake, preset="ct_abdomen")
    seg.embedding(0, 6)
    seen = []
    done = seg.precompute(0, 5, progress=lambda f, m: seen.append(m))
    assert done == 9 and fake.encode_calls == 10
    order = [int(m.split()[2]) for m in seen]
    assert order == [5, 6, 4, 7, 3, 8, 2, 9, 1, 0]
    assert seg.precompute(0, 5) == 0


def test_precompute_cancel_stops_within_one_slice():
    fake = FakeBackend()
    seg = Segmenter(box_volume(), fake, preset="ct_abdomen")
    token = CancelToken()

    def progress(fraction, message):
        if fake.encode_calls == 3:
            token.cancel()

    with pytest.raises(Cancelled) as info:
        seg.precompute(0, 5, progress=progress, should_stop=token)
    assert fake.encode_calls == 3 and info.value.partial == 3


def test_release_drops_one_volume():
    cache = EmbeddingCache()
    cache.put(key(digest="a"), np.zeros((1, 2, 2)))
    cache.put(key(digest="b"), np.zeros((1, 2, 2)))
    assert cache.release("a") == 1
    assert cache.get(key(digest="a")) is None and cache.get(key(digest="b")) is not None


def test_background_precompute_reports_progress_and_cancels_within_one_slice():
    from sammed.jobs import Worker

    fake = FakeBackend(encode_delay=0.05)
    seg = Segmenter(box_volume(), fake, preset="ct_abdomen")
    worker = Worker()
    try:
        worker.submit("precompute", lambda c: seg.precompute(0, 5, progress=c.progress, should_stop=c.should_stop))
        while fake.encode_calls < 2:
            threading.Event().wait(0.01)
        worker.cancel()
        assert worker.wait_idle(5.0)
        events = worker.drain()
        assert [e.kind for e in events if e.kind != "progress"] == ["cancelled"]
        assert fake.encode_calls <= 3  # the slice being encoded when cancel came may finish, no more
        seen = [e.fraction for e in events if e.kind == "progress"]
        assert seen and seen == sorted(seen)
        worker.submit("precompute", lambda c: seg.precompute(0, 5, should_stop=c.should_stop))
        assert worker.wait_idle(5.0)
        assert [e.kind for e in worker.drain()] == ["done"] and fake.encode_calls == 10
    finally:
        worker.shutdown()
