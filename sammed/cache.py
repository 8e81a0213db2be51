"""Embedding cache: key = (volume digest, axis, slice index, model id, preprocessing id).

- Memory tier: LRU bounded in bytes, embeddings stored as float16 (LiteMedSAM: 256x64x64 -> 2 MiB).
- Disk tier (optional): one ``.npy`` per slice (never a pickle), written to a temporary file, flushed, fsynced
  and renamed, with the SHA256 of the array in the file name. Bounded in bytes (oldest entries removed first).
- Counters: hits, misses, encodes, disk hits and corrupt entries, so "never encode a slice twice" can be tested.

The disk tier never destroys a user's files:

- It only works in a folder marked as a SAMMed cache by a ``SAMMED_CACHE.json`` file at its root. A missing or
  empty folder is created and marked on the first write. A folder of an older SAMMed (no marker, nothing but a
  ``v1/`` tree of correctly named entries) is adopted: the marker is written. Any other non-empty folder is not
  ours: one warning is logged and the cache keeps to memory; ``clear_disk`` refuses it with a ``ValueError``.
- Inside a marked folder it only reads, evicts or deletes files named exactly by its scheme,
  ``v1/<24 hex digest>/<model__preprocessing>/a<axis>_s<index:05d>.<16 hex checksum>.npy`` (and its own
  ``.a<axis>_s<index>.<16 hex>.tmp`` files, on ``clear_disk``); other files (``notes.npy``...) are never touched.
  It removes only scheme folders that became empty because it deleted entries, never the root.
- An unreadable entry (empty, truncated, not an array, wrong dtype, checksum mismatch...) is a miss: it is deleted,
  counted in ``stats.corrupt`` and recomputed. A folder that cannot be created or written (a file, read-only...)
  logs one warning and the cache keeps to memory: the disk tier never makes ``get_or_compute`` fail.

Thread-safe: a Slicer worker thread fills it while the main thread reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from . import __version__

CACHE_FORMAT = 1
MARKER_NAME = "SAMMED_CACHE.json"
DEFAULT_MEMORY_BYTES = 1 << 30  # 1 GiB ~ 500 LiteMedSAM slices
DEFAULT_DISK_BYTES = 8 << 30

log = logging.getLogger("sammed.cache")

_VERSION_DIR = f"v{CACHE_FORMAT}"
_HEX24 = re.compile(r"[0-9a-f]{24}")
_FOLDER = re.compile(r"[A-Za-z0-9_.-]*__[A-Za-z0-9_.-]*")
_STEM = r"a(?:0|[1-9][0-9]*)_s(?:[0-9]{5}|[1-9][0-9]{5,})"
_ENTRY = re.compile(_STEM + r"\.[0-9a-f]{16}\.npy")
_TEMP = re.compile(r"\." + _STEM + r"\.[0-9a-f]{16}\.tmp")
_MARKER_TEMP = re.compile(r"\." + re.escape(MARKER_NAME) + r"\.[0-9a-f]{16}\.tmp")


@dataclass(frozen=True)
class CacheKey:
    digest: str
    axis: int
    index: int
    model_id: str
    preprocessing_id: str

    def folder(self) -> str:
        """``<digest>/<model__preprocessing>`` (a digest that is not 24 hex digits is hashed to 24)."""
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{self.model_id}__{self.preprocessing_id}")
        digest = self.digest
        if not _HEX24.fullmatch(digest):
            digest = hashlib.sha256(digest.encode("utf-8", "surrogatepass")).hexdigest()[:24]
        return f"{digest}/{safe}"

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

    The disk folder is not touched until the first disk read or write (see the module docstring for what the
    disk tier may write and delete).

    Args:
        max_bytes: bound of the memory tier (float16 bytes).
        disk_dir: folder of the disk tier, or None for memory only.
        max_disk_bytes: bound of the disk tier.

    Raises:
        ValueError: ``max_bytes`` is negative.
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
        self._disk_ok = False  # the folder is proven ours (marker present or written)
        self._disk_off = False  # the disk tier gave up (not ours, unwritable): memory only from now on
        self._disk_bytes: int | None = None  # our entries' bytes as last counted, plus those written since
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

    def put(self, key: CacheKey, embedding: np.ndarray, encoded: bool = False) -> np.ndarray:
        """Store as float16 (memory, then disk if usable); return it. ``encoded``: just computed (counted per slice)."""
        if encoded:
            with self._lock:
                self.stats.encodes += 1
                self.stats.per_key_encodes[key] = self.stats.per_key_encodes.get(key, 0) + 1
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
                return self.put(key, compute(), encoded=True)
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

    # ------------------------------------------------------------------ disk tier: ownership
    def disk_state(self) -> str:
        """What the disk folder is, without changing anything.

        Returns:
            "none" (no disk tier), "missing", "empty", "cache" (marked), "legacy" (an older SAMMed cache without
            marker, adopted on first use), "foreign" (not a SAMMed cache) or "unusable" (a file, unreadable).
        """
        if self.disk_dir is None:
            return "none"
        return "cache" if self._disk_ok else _root_state(self.disk_dir)

    def _disk_root(self, create: bool) -> Path | None:
        """The disk folder if it is proven ours; marks a missing or empty one when ``create``, adopts a legacy one.

        Gives up on the disk tier (one warning) for a folder that is not ours or cannot be written.
        """
        with self._lock:
            if self.disk_dir is None or self._disk_off:
                return None
            if self._disk_ok:
                return self.disk_dir
            state = _root_state(self.disk_dir)
            if state in ("missing", "empty") and not create:
                return None
            if state in ("missing", "empty", "legacy"):
                try:
                    _write_marker(self.disk_dir)
                except OSError as exc:
                    self._give_up(f"cannot create or write {self.disk_dir} ({exc})")
                    return None
            elif state != "cache":
                self._give_up(_not_ours(self.disk_dir, state))
                return None
            self._disk_ok = True
            return self.disk_dir

    def _give_up(self, reason: str) -> None:
        with self._lock:
            if self._disk_off:
                return
            self._disk_off = True
        log.warning("SAMMed embedding cache: %s; using the memory cache only.", reason)

    # ------------------------------------------------------------------ disk tier: entries
    def _disk_file(self, key: CacheKey) -> Path | None:
        root = self._disk_root(create=False)
        if root is None or key.axis < 0 or key.index < 0:
            return None
        found = _entries_of(root / _VERSION_DIR / key.folder(), key.stem())
        return found[0] if found else None

    def _read_disk(self, key: CacheKey) -> np.ndarray | None:
        path = self._disk_file(key)
        if path is None:
            return None
        emb = _load_entry(path)
        if emb is None:
            with self._lock:
                self.stats.corrupt += 1
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        return emb

    def _write_disk(self, key: CacheKey, emb16: np.ndarray) -> None:
        if self.disk_dir is None or key.axis < 0 or key.index < 0:
            return
        root = self._disk_root(create=True)
        if root is None:
            return
        try:
            written = _write_entry(root / _VERSION_DIR / key.folder(), key.stem(), emb16)
            with self._lock:
                self.stats.disk_writes += 1
            self._enforce_disk_cap(written)
        except (OSError, ValueError) as exc:
            self._give_up(f"cannot write to {root} ({exc})")

    def disk_usage(self) -> tuple[int, int]:
        """(files, bytes) of this cache's own disk entries; (0, 0) for a folder that is not a SAMMed cache."""
        if self.disk_dir is None or self.disk_state() not in ("cache", "legacy"):
            return 0, 0
        found = _scan(self.disk_dir, temps=False)
        return len(found), sum(size for _, size, _ in found)

    def _enforce_disk_cap(self, written: int) -> None:
        """Delete this cache's own entries, oldest first, until the disk tier fits ``max_disk_bytes``. The folder is
        scanned again only when the last count plus the bytes ``written`` since passes the bound (not every write)."""
        if self.disk_dir is None or not self._disk_ok:
            return
        with self._lock:
            if self._disk_bytes is not None:
                self._disk_bytes += written
                if self._disk_bytes <= self.max_disk_bytes:
                    return
        found = _scan(self.disk_dir, temps=False)
        total = sum(size for _, size, _ in found)
        removed = []
        for path, size, _ in sorted(found, key=lambda item: item[2]):
            if total <= self.max_disk_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            total -= size
            removed.append(path)
        _prune_folders(self.disk_dir, removed)
        with self._lock:
            self._disk_bytes = total

    def clear_disk(self) -> int:
        """Delete this cache's own disk entries (nothing else); returns the bytes freed.

        Raises:
            ValueError: the folder is not a SAMMed cache (nothing deleted), or some entries could not be deleted.
        """
        if self.disk_dir is None:
            return 0
        state = self.disk_state()
        if state in ("missing", "empty"):
            return 0
        if state not in ("cache", "legacy"):
            raise ValueError(f"{_not_ours(self.disk_dir, state)}; nothing was deleted.")
        freed, removed, failed = 0, [], []
        for path, size, _ in _scan(self.disk_dir, temps=True):
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                failed.append(exc)
                continue
            freed += size
            removed.append(path)
        _prune_folders(self.disk_dir, removed)
        with self._lock:
            self._disk_bytes = None  # counted again at the next write
        if failed:
            raise ValueError(f"could not delete {len(failed)} entries in {self.disk_dir} ({failed[0]}).")
        return freed


# ---------------------------------------------------------------------- folder and entry helpers
def _not_ours(root: Path, state: str) -> str:
    """Why the disk tier will not use ``root``, for a warning or an error."""
    if state == "unusable":
        return f"{root} is not a usable folder"
    return f"{root} is not a SAMMed cache (it has files but no {MARKER_NAME})"


def _read_marker(root: Path) -> bool:
    """Whether ``root`` holds a valid marker: a JSON object with an integer ``format``."""
    try:
        payload = json.loads((root / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(payload, dict) and isinstance(payload.get("format"), int)


def _root_state(root: Path) -> str:
    """The state of ``root``, one of ``EmbeddingCache.disk_state``'s (never "none")."""
    try:
        if not root.is_dir():
            return "missing" if not os.path.lexists(root) else "unusable"
        if _read_marker(root):
            return "cache"
        names = [n for n in os.listdir(root) if not _MARKER_TEMP.fullmatch(n)]
    except OSError:
        return "unusable"
    if not names:
        return "empty"
    return "legacy" if names == [_VERSION_DIR] and _is_legacy_tree(root / _VERSION_DIR) else "foreign"


def _is_legacy_tree(folder: Path, depth: int = 0) -> bool:
    """Whether everything under ``folder`` (the ``v1`` folder at depth 0) follows the entry scheme exactly: what
    SAMMed wrote before the marker existed. Symlinks and any other file or folder make it False."""
    if depth == 0 and (folder.is_symlink() or not folder.is_dir()):
        return False
    try:
        with os.scandir(folder) as it:
            items = list(it)
    except OSError:
        return False
    for e in items:
        if depth < 2:
            pattern = _HEX24 if depth == 0 else _FOLDER
            ok = pattern.fullmatch(e.name) and e.is_dir(follow_symlinks=False)
            if not ok or not _is_legacy_tree(Path(e.path), depth + 1):
                return False
        elif not (_ENTRY.fullmatch(e.name) and e.is_file(follow_symlinks=False)):
            return False
    return True


def _scan(root: Path, temps: bool) -> list[tuple[Path, int, float]]:
    """(path, size, mtime) of the entries (and temporary files when ``temps``) under ``root`` that follow the
    scheme exactly; symlinks and anything else are ignored."""
    out: list[tuple[Path, int, float]] = []
    for digest_dir in _subdirs(root / _VERSION_DIR, _HEX24):
        for folder in _subdirs(digest_dir, _FOLDER):
            try:
                with os.scandir(folder) as it:
                    for e in it:
                        ours = _ENTRY.fullmatch(e.name) or (temps and _TEMP.fullmatch(e.name))
                        if ours and e.is_file(follow_symlinks=False):
                            st = e.stat(follow_symlinks=False)
                            out.append((Path(e.path), st.st_size, st.st_mtime))
            except OSError:
                continue
    return out


def _subdirs(folder: Path, pattern: re.Pattern[str]) -> list[Path]:
    """Real (not symlinked) sub-folders of ``folder`` whose names match ``pattern``; [] if it cannot be listed."""
    try:
        with os.scandir(folder) as it:
            return [Path(e.path) for e in it if pattern.fullmatch(e.name) and e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _entries_of(folder: Path, stem: str) -> list[Path]:
    """The entry files of one slice (name ``<stem>.<16 hex>.npy``) in ``folder``, sorted."""
    pattern = re.compile(re.escape(stem) + r"\.[0-9a-f]{16}\.npy")
    try:
        with os.scandir(folder) as it:
            return sorted(Path(e.path) for e in it if pattern.fullmatch(e.name) and e.is_file(follow_symlinks=False))
    except OSError:
        return []


def _prune_folders(root: Path, removed: list[Path]) -> None:
    """Remove the scheme folders that held ``removed`` entries if they are now empty (never ``root``)."""
    candidates = {p for path in removed for p in (path.parent, path.parent.parent, path.parent.parent.parent)}
    for folder in sorted(candidates, key=lambda p: len(p.parts), reverse=True):
        if folder != root and root in folder.parents:
            with contextlib.suppress(OSError):
                folder.rmdir()  # fails, harmlessly, if something is still inside


def _load_entry(path: Path) -> np.ndarray | None:
    """The verified float16 array of an entry, or None if it cannot be read or fails its checksum."""
    expected = path.name.split(".")[-2]
    try:
        with open(path, "rb") as f:
            emb = np.load(f, allow_pickle=False)
    except Exception:  # any unreadable entry (EOFError, OSError, ValueError, pickle refused...) is a miss
        return None
    if not isinstance(emb, np.ndarray) or emb.dtype != np.float16 or emb.ndim == 0 or emb.size == 0:
        return None
    if hashlib.sha256(emb.tobytes()).hexdigest()[:16] != expected:
        return None
    emb.setflags(write=False)
    return emb


def _write_atomic(final: Path, temp: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``temp`` with ``write(file)``, flush and fsync it, then rename it to ``final``.

    Raises:
        OSError: the file cannot be written or renamed (``temp`` is removed).
    """
    try:
        with open(temp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, final)
    finally:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)


def _write_marker(root: Path) -> None:
    """Create ``root`` if needed and write the marker atomically.

    Raises:
        OSError: the folder cannot be created or written.
    """
    root.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"format": CACHE_FORMAT, "created_by": f"sammed {__version__}"}) + "\n"
    temp = root / f".{MARKER_NAME}.{secrets.token_hex(8)}.tmp"
    _write_atomic(root / MARKER_NAME, temp, lambda f: f.write(text.encode("utf-8")))


def _write_entry(folder: Path, stem: str, emb16: np.ndarray) -> int:
    """Write one entry atomically, replacing other versions of the same slice; returns its size in bytes.

    Raises:
        OSError: the entry cannot be written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    checksum = hashlib.sha256(emb16.tobytes()).hexdigest()[:16]
    final = folder / f"{stem}.{checksum}.npy"
    temp = folder / f".{stem}.{secrets.token_hex(8)}.tmp"
    _write_atomic(final, temp, lambda f: np.save(f, emb16, allow_pickle=False))
    for old in _entries_of(folder, stem):
        if old != final:
            old.unlink(missing_ok=True)
    return final.stat().st_size
