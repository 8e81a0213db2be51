"""The image encoder exported to ONNX and run by OpenVINO or ONNX Runtime: the same embeddings as torch eager in a
quarter to a third of the CPU time.

Measured on 2 CPU cores (``benchmarks/bench_encoder.py``): LiteMedSAM's encoder exported with ``torch.onnx.export``
(opset 17) takes about 0.37x the time of torch eager on ONNX Runtime (all graph optimisations) and about 0.23x on
OpenVINO (float32); embeddings differ by about 3e-6 (the cache stores float16, whose step is 1e-3 at these values),
so all runtimes share one cache key. Measured and not used: torch bf16 autocast (0.58x, differences of 3e-2),
TorchScript freezing (0.85x), OpenVINO bf16 (faster, but masks changed: Dice to float32 down to 0.90).

The export is made once per weights file and kept under ``models_dir()/exports`` (packaged weights may sit in a
read-only folder), named by the SHA256 of the source weights; a JSON file beside it records the export's own
SHA256, so a stale (other weights, other export version) or corrupted file is detected and made again.

Each thread that encodes gets its own runner (an ONNX Runtime session, whose compute threads inherit the creating
thread's scheduling priority, or an OpenVINO infer request); both release the GIL for the whole encode.
``interrupt(thread)`` stops that thread's encode in the middle (ONNX Runtime: ``RunOptions.terminate``; OpenVINO:
``InferRequest.cancel``): the worker's cancel, and its preemption when a click arrives.
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


ENGINES = {"onnx": "onnxruntime", "openvino": "openvino"}  # runtime name -> the package that runs the export


def available(runtime: str = "onnx") -> bool:
    """True when the package of ``runtime`` (``onnx``: ONNX Runtime, ``openvino``: OpenVINO) can be imported."""
    try:
        __import__(ENGINES[runtime])
    except ImportError:
        return False
    return True


def make_encoder(runtime: str, path: Path) -> ExportedEncoder:
    """The runner of an export for ``runtime`` (``onnx`` or ``openvino``)."""
    return OpenVinoEncoder(path) if runtime == "openvino" else OrtEncoder(path)


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


class ExportedEncoder:
    """Runs an exported image encoder with one runner per calling thread (a session, an infer request), so each
    lane of the worker has its own; ``interrupt`` stops one thread's encode in the middle.

    Subclasses give ``_runner()`` (made in the calling thread), ``_infer(runner, x, token)`` and ``_stop(token)``.

    Args:
        path: the .onnx file (``ensure_export``).
        threads: compute threads (default: the CPU count).
    """

    engine = ""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        self.path = Path(path)
        self.threads = int(threads or os.cpu_count() or 1)
        self._local = threading.local()
        self._active: dict[int, Any] = {}  # thread ident -> stop token of its encode in progress
        self._preempted: set[int] = set()  # threads whose encode was stopped to be run again
        self._preemptible: dict[int, bool] = {}
        self._runners: dict[int, int] = {}  # thread ident -> id() of the runner of its encode in progress
        self._stopped: set[int] = set()  # id() of runners that were stopped (replaced before their next run)
        self._lock = threading.Lock()
        self.runner()  # fail now, not at the first encode

    def runner(self) -> Any:
        runner = getattr(self._local, "runner", None)
        with self._lock:
            stale = runner is not None and id(runner) in self._stopped
            self._stopped.discard(id(runner))
        if runner is None or stale:  # a stopped runner may carry the stop into its next run: a new one
            runner = self._local.runner = self._runner()
        return runner

    def _runner(self) -> Any:
        raise NotImplementedError

    def _infer(self, runner: Any, image: np.ndarray, token: Any) -> np.ndarray:
        raise NotImplementedError

    def _stop(self, token: Any) -> None:
        raise NotImplementedError

    def _token(self, runner: Any) -> Any:
        return runner

    def run(self, image_13ss: np.ndarray, preemptible: bool = True) -> np.ndarray:
        """1x3xSxS float32 -> 1xCxhxw float32.

        Args:
            preemptible: ``interrupt(..., preempt=True)`` may stop it.

        Raises:
            jobs.Cancelled: ``interrupt`` stopped it.
            Preempted: ``interrupt(..., preempt=True)`` stopped it (run it again later).
        """
        runner = self.runner()
        token = self._token(runner)
        ident = threading.get_ident()
        with self._lock:
            self._active[ident] = token
            self._runners[ident] = id(runner)
            self._preemptible[ident] = preemptible
            self._preempted.discard(ident)
        stopped = False
        try:
            return self._infer(runner, np.ascontiguousarray(image_13ss, dtype=np.float32), token)
        except Exception as exc:
            with self._lock:
                stopped = ident not in self._active  # interrupt removed it
                preempted = ident in self._preempted
            if stopped:
                raise (Preempted() if preempted else Cancelled("Encoding stopped.")) from None
            raise RuntimeError(f"{self.engine} failed to encode: {exc}") from exc
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
            token = self._active.pop(thread_ident)
            self._stopped.add(self._runners.get(thread_ident, 0))
            self._stop(token)
        return True


class OrtEncoder(ExportedEncoder):
    """ONNX Runtime: one session per thread (its compute threads inherit the creating thread's priority)."""

    engine = "ONNX Runtime"

    def _runner(self) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        # idle compute threads sleep instead of spinning: spinning threads of one session took the cores from the
        # decoder and from the other lane's session (measured: clicks 1.35x slower, encoding 0.69x)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def _token(self, runner: Any) -> Any:
        import onnxruntime as ort

        return ort.RunOptions()

    def _infer(self, runner: Any, image: np.ndarray, token: Any) -> np.ndarray:
        return runner.run(None, {"image": image}, token)[0]

    def _stop(self, token: Any) -> None:
        token.terminate = True


class OpenVinoEncoder(ExportedEncoder):
    """OpenVINO (CPU, float32 inference precision): one compiled model, one infer request per thread; measured
    0.6x the time of ONNX Runtime on the same export with the same embeddings (bf16 precision was faster still but
    changed masks: Dice to float32 down to 0.90 on 12 CT/MR slices, so it is not used)."""

    engine = "OpenVINO"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import openvino

        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        config["INFERENCE_NUM_THREADS"] = int(threads or os.cpu_count() or 1)  # type: ignore[assignment]
        self._compiled = openvino.Core().compile_model(str(path), "CPU", config)
        super().__init__(path, threads)

    def _runner(self) -> Any:
        return self._compiled.create_infer_request()

    def _infer(self, runner: Any, image: np.ndarray, token: Any) -> np.ndarray:
        return np.array(runner.infer({0: image})[self._compiled.output(0)])

    def _stop(self, token: Any) -> None:
        token.cancel()


class Preempted(Exception):
    """An encode stopped so that a user's request runs at full speed; run it again."""
