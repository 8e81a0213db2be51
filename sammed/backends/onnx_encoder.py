"""The image encoder on ONNX Runtime: the same embeddings as torch eager in about a third of the CPU time.

Measured on 2 CPU cores (``benchmarks/bench_encoder.py``): LiteMedSAM's encoder exported with ``torch.onnx.export``
(opset 17) and run by ONNX Runtime with all graph optimisations takes 0.35x the time of torch eager; embeddings
differ by about 3e-6 (the cache stores float16, whose step is 1e-3 at these values), so both runtimes share one
cache key. bf16 autocast in torch was measured too (0.58x, differences of 3e-2) and is not used.

The export is made once per weights file and kept under ``models_dir()/exports`` (packaged weights may sit in a
read-only folder), named by the SHA256 of the source weights; a JSON file beside it records the export's own
SHA256, so a stale (other weights, other export version) or corrupted file is detected and made again.

Each thread that encodes gets its own ONNX Runtime session: a session's compute threads are started by the thread
that creates it and inherit its scheduling priority, so the worker's background lane (lower priority) encodes with
low-priority threads and a click's encode or decode takes the cores at once. ``ONNX Runtime``'s ``run`` releases
the GIL for the whole encode. ``interrupt(thread)`` stops that thread's encode in the middle (``RunOptions``'
terminate flag): the worker's cancel.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..jobs import Cancelled

EXPORT_VERSION = 1  # bump when the export changes (opset, names, wrapper): old files are then rebuilt
OPSET = 17
log = logging.getLogger("sammed.onnx")


def available() -> bool:
    """True when ONNX Runtime can be imported."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def export_paths(folder: Path, model_id: str, weights_sha256: str, image_size: int) -> tuple[Path, Path]:
    """(the .onnx file, its JSON record) for one weights file."""
    stem = f"{model_id}-{(weights_sha256 or 'noweights')[:16]}-{image_size}px-opset{OPSET}-v{EXPORT_VERSION}"
    return folder / f"{stem}.onnx", folder / f"{stem}.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_export(onnx_path: Path, record_path: Path, weights_sha256: str) -> str:
    """ "" when the export is usable, else why not (missing, other weights or version, corrupted)."""
    if not onnx_path.exists() or not record_path.exists():
        return "no export yet"
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "unreadable export record"
    if record.get("weights_sha256") != weights_sha256 or record.get("export_version") != EXPORT_VERSION:
        return "stale export (other weights or export version)"
    if record.get("onnx_sha256") != _sha256(onnx_path):
        return "corrupted export (SHA256 differs from its record)"
    return ""


def ensure_export(encoder: torch.nn.Module, image_size: int, model_id: str, weights_sha256: str, folder: Path) -> Path:
    """The ONNX file of ``encoder``, exported now unless a checked one is there (written atomically).

    Raises:
        RuntimeError: the export failed (the caller falls back to torch).
    """
    onnx_path, record_path = export_paths(folder, model_id, weights_sha256, image_size)
    problem = check_export(onnx_path, record_path, weights_sha256)
    if not problem:
        return onnx_path
    log.info("exporting the %s image encoder to ONNX (%s)", model_id, problem)
    folder.mkdir(parents=True, exist_ok=True)
    temp = onnx_path.with_name(f"{onnx_path.name}.{os.getpid()}.{threading.get_ident()}.part")
    example = torch.zeros(1, 3, image_size, image_size)
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on Python asserts in the model: not for users
            torch.onnx.export(
                encoder.eval(),
                (example,),
                str(temp),
                opset_version=OPSET,
                input_names=["image"],
                output_names=["embedding"],
                dynamo=False,
            )
        record = {
            "model_id": model_id,
            "weights_sha256": weights_sha256,
            "export_version": EXPORT_VERSION,
            "opset": OPSET,
            "image_size": image_size,
            "onnx_sha256": _sha256(temp),
            "torch": torch.__version__,
            "sammed": __version__,
        }
        os.replace(temp, onnx_path)
        record_temp = record_path.with_name(record_path.name + ".part")
        record_temp.write_text(json.dumps(record, indent=1), encoding="utf-8")
        os.replace(record_temp, record_path)
    except Exception as exc:
        temp.unlink(missing_ok=True)
        raise RuntimeError(f"Could not export the image encoder to ONNX: {exc}") from exc
    return onnx_path


class OrtEncoder:
    """Runs an exported image encoder, one ONNX Runtime session per calling thread.

    Args:
        path: the .onnx file (``ensure_export``).
        threads: compute threads per session (default: the CPU count).
    """

    def __init__(self, path: Path, threads: int | None = None) -> None:
        self.path = Path(path)
        self.threads = int(threads or os.cpu_count() or 1)
        self._local = threading.local()
        self._active: dict[int, Any] = {}  # thread ident -> RunOptions of its encode in progress
        self._preempted: set[int] = set()  # threads whose encode was stopped to be run again
        self._preemptible: dict[int, bool] = {}
        self._lock = threading.Lock()
        self.session()  # fail now, not at the first encode

    def session(self) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            # idle compute threads sleep instead of spinning: spinning threads of one session took the cores from
            # the decoder and from the other lane's session (measured: clicks 1.35x slower, encoding 0.69x)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
            self._local.session = session
        return session

    def run(self, image_13ss: np.ndarray, preemptible: bool = True) -> np.ndarray:
        """1x3xSxS float32 -> 1xCxhxw float32.

        Args:
            preemptible: ``interrupt(..., preempt=True)`` may stop it.

        Raises:
            jobs.Cancelled: ``interrupt`` stopped it.
            Preempted: ``interrupt(..., preempt=True)`` stopped it (run it again later).
        """
        import onnxruntime as ort

        options = ort.RunOptions()
        ident = threading.get_ident()
        with self._lock:
            self._active[ident] = options
            self._preemptible[ident] = preemptible
            self._preempted.discard(ident)
        try:
            return self.session().run(None, {"image": np.ascontiguousarray(image_13ss, dtype=np.float32)}, options)[0]
        except Exception as exc:
            if options.terminate:
                with self._lock:
                    preempted = ident in self._preempted
                raise (Preempted() if preempted else Cancelled("Encoding stopped.")) from None
            raise RuntimeError(f"ONNX Runtime failed to encode: {exc}") from exc
        finally:
            with self._lock:
                self._active.pop(ident, None)

    def interrupt(self, thread_ident: int | None, preempt: bool = False) -> bool:
        """Stop the encode running on ``thread_ident``: it raises ``Cancelled``, or ``Preempted`` with ``preempt``
        (a user's request needs the cores; the encode is run again afterwards). False when none runs there."""
        with self._lock:
            if thread_ident is None or thread_ident not in self._active:
                return False
            if preempt and not self._preemptible.get(thread_ident, True):
                return False
            if preempt:
                self._preempted.add(thread_ident)
            else:
                self._preempted.discard(thread_ident)
            self._active[thread_ident].terminate = True
        return True


class Preempted(Exception):
    """An encode stopped so that a user's request runs at full speed; run it again."""
