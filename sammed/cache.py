"""Embedding cache: key = (volume digest, axis, slice index, model id, preprocessing id).

- Memory tier: LRU bounded in bytes, embeddings stored as float16 (LiteMedSAM: 256x64x64 -> 2 MiB).
- Disk tier (optional): one ``.npy`` per slice (never a pickle), written to a temporary file and renamed, with
  the SHA256 of the array in the file name; a file whose content does not match is deleted and recomputed.
  Bounded in bytes (oldest files removed first).
- Counters: hits, misses, encodes, disk hits and corrupt entries, so "never encode a slice twice" can be tested.
Thread-safe: a Slicer worker thread fills it while the main thread reads.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

import numpy as np

CACHE_FORMAT = 1
DEFAULT_MEMORY_BYTES = 1 << 30  # 1 GiB ~ 500 LiteMedSAM slices
DEFAULT_DISK_BYTES = 8 << 30


@dataclass(frozen=True)
class CacheKey:
    digest: str
    axis: int
    index: int
    model_id: str
    preprocessing_id: str

    def folder(self) -> str:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{self.model_id}__{self.preprocessing_id}")
        return f"{self.digest}/{safe}"

    def stem(self) -> str:
        return f"a{self.axis}_s{self.index:05d}"


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    encodes: int = 0
    disk_hits: int = 0
    disk_writes: int = 0
    corrupt: int = 0
    evictions: int = 0
    per_key_encodes: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "per_key_encodes"}
        d["max_encodes_per_slice"] = max(self.per_key_encodes.values(), default=0)
        return d


class EmbeddingCache:
    """Two-tier cache of slice embeddings.

    Args:
        max_bytes: bound of the memory tier (float16 bytes).
        disk_dir: folder of the disk tier, or None for memory only.
        max_disk_bytes: bound of the disk tier.
    """

    def __init__(
        self,
        max_bytes: int = DEFAULT_MEMORY_BYTES,
        disk_dir: str | os.PathLike | None = None,
        max_disk_bytes: int = DEFAULT_DISK_BYTES,
    ) -> None:
        if max_bytes < 0:
            raise ValueError("The cache size must not be negative.")
        self.max_bytes = int(max_bytes)
        self.disk_dir = Path(disk_dir) if disk_dir else None
        self.max_disk_bytes = int(max_disk_bytes)
        self._mem: OrderedDict[CacheKey, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.RLock()
        self._inflight: dict[CacheKey, threading.Event] = {}
        self.stats = CacheStats()

    # ------------------------------------------------------------------ memory tier
    @property
    def memory_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._mem)

    def __contains__(self, key: CacheKey) -> bool:
        with self._lock:
            return key in self._mem or self._disk_file(key) is not None

    def _put_memory(self, key: CacheKey, emb16: np.ndarray) -> None:
        with self._lock:
            if key in self._mem:
                self._bytes -= self._mem.pop(key).nbytes
            if emb16.nbytes > self.max_bytes:
                return
            self._mem[key] = emb16
            self._bytes += emb16.nbytes
            while self._bytes > self.max_bytes and self._mem:
                _, old = self._mem.popitem(last=False)
                self._bytes -= old.nbytes
                self.stats.evictions += 1

    def get(self, key: CacheKey) -> np.ndarray | None:
        """The float16 embedding, or None. Looks in memory, then on disk."""
        with self._lock:
            emb = self._mem.get(key)
            if emb is not None:
                self._mem.move_to_end(key)
                self.stats.hits += 1
                return emb
        emb = self._read_disk(key)
        if emb is not None:
            self._put_memory(key, emb)
            with self._lock:
                self.stats.hits += 1
                self.stats.disk_hits += 1
            return emb
        return None

    def put(self, key: CacheKey, embedding: np.ndarray) -> np.ndarray:
        emb16 = np.ascontiguousarray(embedding, dtype=np.float16)
        emb16.setflags(write=False)
        self._put_memory(key, emb16)
        self._write_disk(key, emb16)
        return emb16

    def get_or_compute(self, key: CacheKey, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached embedding, or ``compute()`` stored under ``key``. Two threads asking for the same missing
        key compute it once: the second waits for the first."""
        while True:
            emb = self.get(key)
            if emb is not None:
                return emb
            with self._lock:
                event = self._inflight.get(key)
                if event is None:
                    event = threading.Event()
                    self._inflight[key] = event
                    owner = True
                else:
                    owner = False
            if not owner:
                event.wait()
                continue
            try:
                with self._lock:
                    self.stats.misses += 1
                emb = compute()
                with self._lock:
                    self.stats.encodes += 1
                    self.stats.per_key_encodes[key] = self.stats.per_key_encodes.get(key, 0) + 1
                return self.put(key, emb)
            finally:
                with self._lock:
                    self._inflight.pop(key, None)
                event.set()

    def release(self, digest: str | None = None) -> int:
        """Drop memory entries of one volume (or all); returns how many were dropped. Disk entries stay."""
        with self._lock:
            keys = [k for k in self._mem if digest is None or k.digest == digest]
            for k in keys:
                self._bytes -= self._mem.pop(k).nbytes
            return len(keys)

    # ------------------------------------------------------------------ disk tier
    def _disk_folder(self, key: CacheKey) -> Path | None:
        return None if self.disk_dir is None else self.disk_dir / f"v{CACHE_FORMAT}" / key.folder()

    def _disk_file(self, key: CacheKey) -> Path | None:
        folder = self._disk_folder(key)
        if folder is None or not folder.is_dir():
            return None
        found = sorted(folder.glob(key.stem() + ".*.npy"))
        return found[0] if found else None

    def _read_disk(self, key: CacheKey) -> np.ndarray | None:
        path = self._disk_file(key)
        if path is None:
            return None
        expected = path.name.split(".")[-2]
        try:
            emb = np.load(path, allow_pickle=False)
            ok = emb.dtype == np.float16 and hashlib.sha256(emb.tobytes()).hexdigest()[:16] == expected
        except (OSError, ValueError):
            ok = False
        if not ok:
            with self._lock:
                self.stats.corrupt += 1
            path.unlink(missing_ok=True)
            return None
        emb.setflags(write=False)
        return emb

    def _write_disk(self, key: CacheKey, emb16: np.ndarray) -> None:
        folder = self._disk_folder(key)
        if folder is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        checksum = hashlib.sha256(emb16.tobytes()).hexdigest()[:16]
        final = folder / f"{key.stem()}.{checksum}.npy"
        if final.exists():
            return
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npy", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, emb16, allow_pickle=False)
            for old in folder.glob(key.stem() + ".*.npy"):
                old.unlink(missing_ok=True)
            os.replace(tmp, final)
            with self._lock:
                self.stats.disk_writes += 1
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._enforce_disk_cap()

    def disk_usage(self) -> tuple[int, int]:
        """(files, bytes) of the disk tier."""
        if self.disk_dir is None or not self.disk_dir.exists():
            return 0, 0
        files = [p for p in self.disk_dir.rglob("*.npy") if p.is_file()]
        return len(files), sum(p.stat().st_size for p in files)

    def _enforce_disk_cap(self) -> None:
        _, total = self.disk_usage()
        if self.disk_dir is None or total <= self.max_disk_bytes:
            return
        files = sorted((p for p in self.disk_dir.rglob("*.npy")), key=lambda p: p.stat().st_mtime)
        for p in files:
            if total <= self.max_disk_bytes:
                break
            total -= p.stat().st_size
            p.unlink(missing_ok=True)

    def clear_disk(self) -> int:
        """Delete every disk entry; returns the bytes freed."""
        if self.disk_dir is None or not self.disk_dir.exists():
            return 0
        _, total = self.disk_usage()
        for p in sorted(self.disk_dir.rglob("*"), reverse=True):
            if p.is_file() and (p.suffix == ".npy"):
                p.unlink(missing_ok=True)
            elif p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        return total
