"""The disk cache never destroys a user's files, and bad entries or bad folders never make it fail.

Every test snapshots user files (bytes + mtime), placed in an unmarked folder or next to the entries of a marked
cache, and checks they are unchanged after clear, a tiny disk cap, or corrupt-entry recovery.
"""

from __future__ import annotations

import json
import logging
import os
import re

import numpy as np
import pytest

import sammed.cache as cache_module
from sammed.cache import CACHE_FORMAT
from sammed.cache import MARKER_NAME
from sammed.cache import CacheKey
from sammed.cache import EmbeddingCache
from sammed.cli import main

DIGEST = "0" * 24
OLD = 946684800  # 2000-01-01: user files are the oldest on disk, the first an indiscriminate cap would take


def key(i=0, digest=DIGEST):
    return CacheKey(digest=digest, axis=0, index=i, model_id="m", preprocessing_id="p")


def emb(i=0):
    return np.random.default_rng(i).normal(size=(2, 4, 4)).astype(np.float32)  # 192 bytes as a .npy entry


def compute(i, calls):
    def run():
        calls.append(i)
        return emb(i)

    return run


def entries(root):
    """The cache's own entries: ``v1/<digest>/<model__prep>/a<axis>_s<index>.<16 hex>.npy``."""
    name = re.compile(r"a\d+_s\d{5,}\.[0-9a-f]{16}\.npy")
    return sorted(p for p in root.rglob("*.npy") if name.fullmatch(p.name) and p.parents[2] == root / "v1")


def add_user_files(root, inside_scheme=True):
    """User files and an empty user folder; inside a marked cache, also next to the entries."""
    paths = [root / "notes.npy", root / "mine" / "data.npy", root / "a0_s00001.npy"]
    if inside_scheme:
        scheme = root / f"v{CACHE_FORMAT}" / DIGEST / "m__p"
        paths += [scheme / "a0_s00001.npy", scheme / "a0_s00002.backup.npy", scheme / "notes.npy"]
    for i, p in enumerate(paths):
        p.parent.mkdir(parents=True, exist_ok=True)
        np.save(p, np.arange(i + 3))
        os.utime(p, (OLD, OLD))
    empty = [root / "empty"] + ([root / f"v{CACHE_FORMAT}" / DIGEST / "x__y"] if inside_scheme else [])
    for folder in empty:
        folder.mkdir(parents=True)
    return paths + empty


def snapshot(paths):
    return {str(p): "dir" if p.is_dir() else (p.read_bytes(), p.stat().st_mtime_ns) for p in paths}


def tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def marked(tmp_path):
    """A SAMMed cache with three entries (two volumes), then user files dropped into it."""
    root = tmp_path / "cache"
    cache = EmbeddingCache(disk_dir=root)
    for i in range(2):
        cache.put(key(i), emb(i))
    cache.put(key(0, digest="1" * 24), emb(9))
    assert (root / MARKER_NAME).is_file() and len(entries(root)) == 3
    user = add_user_files(root)
    return root, user, snapshot(user)


@pytest.fixture
def unmarked(tmp_path):
    """A user's folder: files, an empty folder, a .npy file at the top."""
    root = tmp_path / "mine"
    user = add_user_files(root, inside_scheme=False)
    return root, user, snapshot(user), tree(root)


def warnings_of(caplog):
    return [r for r in caplog.records if r.name == "sammed.cache" and r.levelno == logging.WARNING]


def test_cli_clear_refuses_an_unmarked_folder(unmarked, capsys):
    root, user, before, files = unmarked
    code = main(["cache", "clear", "--cache-dir", str(root)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("sammed cache: error: ") and str(root) in err and "not a SAMMed cache" in err
    assert snapshot(user) == before and tree(root) == files
    with pytest.raises(ValueError, match="not a SAMMed cache"):
        EmbeddingCache(disk_dir=root).clear_disk()


def test_unmarked_folder_is_never_written_or_evicted(unmarked, caplog):
    root, user, before, files = unmarked
    cache = EmbeddingCache(disk_dir=root, max_disk_bytes=300)
    calls = []
    for i in range(3):
        np.testing.assert_array_equal(cache.get_or_compute(key(i), compute(i, calls)), emb(i).astype(np.float16))
    assert cache.get_or_compute(key(0), compute(0, calls)) is not None and calls == [0, 1, 2]
    assert len(warnings_of(caplog)) == 1 and "not a SAMMed cache" in warnings_of(caplog)[0].getMessage()
    assert cache.disk_usage() == (0, 0) and cache.stats.disk_writes == 0
    assert snapshot(user) == before and tree(root) == files


def test_cli_info_on_an_unmarked_folder_says_so(unmarked, capsys):
    root, user, before, files = unmarked
    assert main(["cache", "info", "--cache-dir", str(root)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["entries"] == 0 and "not a SAMMed cache" in info["note"]
    assert snapshot(user) == before and tree(root) == files


def test_cli_clear_deletes_only_the_cache_entries(marked, capsys):
    root, user, before = marked
    assert main(["cache", "clear", "--cache-dir", str(root)]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("Cleared") and out.err == ""
    assert entries(root) == [] and (root / MARKER_NAME).is_file()
    assert snapshot(user) == before
    assert not (root / f"v{CACHE_FORMAT}" / ("1" * 24)).exists()  # emptied by us: removed
    assert (root / f"v{CACHE_FORMAT}" / DIGEST / "x__y").is_dir()  # the user's empty folder stays
    assert EmbeddingCache(disk_dir=root).disk_usage() == (0, 0)


def test_tiny_disk_cap_evicts_only_the_cache_entries(marked, caplog):
    root, user, before = marked
    cache = EmbeddingCache(disk_dir=root, max_disk_bytes=300)
    calls = []
    for i in range(5, 9):
        np.testing.assert_array_equal(cache.get_or_compute(key(i), compute(i, calls)), emb(i).astype(np.float16))
    files, size = cache.disk_usage()
    assert files == 1 and size <= 300 and calls == [5, 6, 7, 8]
    assert [p.name.split(".")[0] for p in entries(root)] == ["a0_s00008"]  # the newest stays
    assert snapshot(user) == before and warnings_of(caplog) == []


def test_disk_usage_counts_only_the_cache_entries(marked):
    root, _, _ = marked
    files, size = EmbeddingCache(disk_dir=root).disk_usage()
    assert files == 3 and size == sum(p.stat().st_size for p in entries(root))


def test_zero_byte_entry_is_deleted_and_recomputed(marked):
    root, user, before = marked
    entry = next(p for p in entries(root) if p.name.startswith("a0_s00000"))
    entry.write_bytes(b"")
    cache = EmbeddingCache(disk_dir=root)
    calls = []
    out = cache.get_or_compute(key(0), compute(0, calls))
    assert calls == [0] and cache.stats.corrupt == 1
    np.testing.assert_array_equal(out, emb(0).astype(np.float16))
    assert entry.stat().st_size > 0
    fresh = EmbeddingCache(disk_dir=root)
    assert fresh.get(key(0)) is not None and fresh.stats.disk_hits == 1 and fresh.stats.corrupt == 0
    assert snapshot(user) == before


def _pickle(path):
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)


BAD_ENTRIES = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:100]),
    "garbage": lambda p: p.write_bytes(b"\x93NUMPY not really"),
    "pickle": _pickle,
    "float32": lambda p: np.save(p, np.zeros((2, 4, 4), np.float32)),
    "scalar": lambda p: np.save(p, np.float16(1)),
    "checksum": lambda p: np.save(p, np.ones((2, 4, 4), np.float16)),
}


@pytest.mark.parametrize("damage", sorted(BAD_ENTRIES))
def test_any_unreadable_entry_is_a_miss(marked, damage):
    root, user, before = marked
    entry = next(p for p in entries(root) if p.name.startswith("a0_s00001"))
    BAD_ENTRIES[damage](entry)
    cache = EmbeddingCache(disk_dir=root)
    calls = []
    out = cache.get_or_compute(key(1), compute(1, calls))
    np.testing.assert_array_equal(out, emb(1).astype(np.float16))
    assert calls == [1] and cache.stats.corrupt == 1
    assert EmbeddingCache(disk_dir=root).get(key(1)) is not None
    assert snapshot(user) == before


def test_cache_dir_that_is_a_file(tmp_path, caplog):
    path = tmp_path / "cache.npy"
    path.write_bytes(b"my file")
    for disk_dir in (path, path / "sub"):
        cache = EmbeddingCache(disk_dir=disk_dir)
        calls = []
        for _ in range(2):
            np.testing.assert_array_equal(cache.get_or_compute(key(), compute(0, calls)), emb(0).astype(np.float16))
        assert calls == [0] and cache.stats.disk_writes == 0
    assert len(warnings_of(caplog)) == 2  # one per cache object
    assert path.read_bytes() == b"my file" and tree(tmp_path) == ["cache.npy"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="running as root: root ignores permissions")
def test_cache_dir_in_a_read_only_folder(tmp_path, caplog):
    folder = tmp_path / "ro"
    folder.mkdir()
    os.chmod(folder, 0o500)
    try:
        for disk_dir in (folder, folder / "cache"):
            cache = EmbeddingCache(disk_dir=disk_dir)
            calls = []
            for _ in range(2):
                assert cache.get_or_compute(key(), compute(0, calls)) is not None
            assert calls == [0]
        assert len(warnings_of(caplog)) == 2
        assert list(folder.iterdir()) == []
    finally:
        os.chmod(folder, 0o700)


def test_failed_disk_write_still_returns_the_embedding(marked, caplog, monkeypatch):
    root, user, before = marked
    kept = {p: p.read_bytes() for p in entries(root)}

    def fail(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_module.os, "fsync", fail)
    cache = EmbeddingCache(disk_dir=root)
    calls = []
    for i in (7, 8):
        np.testing.assert_array_equal(cache.get_or_compute(key(i), compute(i, calls)), emb(i).astype(np.float16))
    assert calls == [7, 8] and len(warnings_of(caplog)) == 1
    assert {p: p.read_bytes() for p in entries(root)} == kept
    assert not [p for p in root.rglob("*") if p.name.startswith(".")]  # no temporary file left
    assert snapshot(user) == before


def test_entries_are_fsynced_and_the_marker_is_written(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(cache_module.os, "fsync", lambda fd: synced.append(fd) or real(fd))
    root = tmp_path / "new" / "cache"
    EmbeddingCache(disk_dir=root).put(key(), emb())
    marker = json.loads((root / MARKER_NAME).read_text())
    assert marker["format"] == CACHE_FORMAT and marker["created_by"].startswith("sammed ")
    assert len(synced) == 2 and len(entries(root)) == 1  # the marker, then the entry


def test_cli_clear_on_a_missing_folder_has_nothing_to_clear(tmp_path, capsys):
    root = tmp_path / "nope"
    assert main(["cache", "clear", "--cache-dir", str(root)]) == 0
    out = capsys.readouterr()
    assert "Nothing to clear" in out.out and out.err == "" and not root.exists()


def legacy_tree(root):
    """What SAMMed wrote before the marker: only a v1/ tree of entries."""
    cache = EmbeddingCache(disk_dir=root)
    cache.put(key(0), emb(0))
    cache.put(key(1), emb(1))
    (root / MARKER_NAME).unlink()


def test_an_older_sammed_cache_is_adopted(tmp_path, caplog):
    root = tmp_path / "cache"
    legacy_tree(root)
    cache = EmbeddingCache(disk_dir=root)
    assert cache.disk_state() == "legacy" and cache.disk_usage()[0] == 2
    assert cache.get(key(1)) is not None and cache.stats.disk_hits == 1
    assert (root / MARKER_NAME).is_file() and warnings_of(caplog) == []


def test_an_older_cache_with_a_user_file_is_not_adopted(tmp_path, capsys, caplog):
    root = tmp_path / "cache"
    legacy_tree(root)
    user = root / f"v{CACHE_FORMAT}" / DIGEST / "m__p" / "notes.npy"
    np.save(user, np.arange(4))
    before, files = snapshot([user]), tree(root)
    cache = EmbeddingCache(disk_dir=root, max_disk_bytes=300)
    assert cache.disk_state() == "foreign" and cache.get_or_compute(key(5), compute(5, [])) is not None
    assert len(warnings_of(caplog)) == 1
    assert main(["cache", "clear", "--cache-dir", str(root)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert snapshot([user]) == before and tree(root) == files and not (root / MARKER_NAME).exists()
