"""What a SAMMed worker can do: the ops of protocol version 1 and the state they share.

One ``WorkerState`` holds the model (loaded on first use), the embedding cache, the volumes clients opened (by
content digest) and one ``Segmenter`` per (volume, intensity preset), with its learned (SAMassist) prompt encoder.
Each ``op_<name>(args, control)`` takes the request's arguments (arrays already decoded) and a
``jobs.JobControl``; it returns a JSON-able result (numpy arrays allowed) or raises ``ValueError`` with a sentence
for the user. Interactive ops run on the interactive lane, the others on the background lane (``server``).
"""

from __future__ import annotations

import os
import platform
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .. import geometry
from .. import jobs
from .. import prompt_encoders
from ..cache import EmbeddingCache
from ..io import Volume
from ..prompts import Prompts
from ..segmenter import Segmenter
from . import protocol

INTERACTIVE_OPS: tuple[str, ...] = ("hello", "configure", "open_volume", "has_volume", "close_volume", "encode")
INTERACTIVE_OPS += ("segment", "cached", "use_learned", "status")
BACKGROUND_OPS = ("load", "precompute", "learn", "propagate", "download")
MODEL_OPS = ("encode", "segment")  # interactive ops that run the model: they pause or preempt background work
FAKE_MODEL = "fake"  # the analytic test backend (``backends.fake``): no torch, for tests of the protocol


class UnknownVolume(KeyError):
    """A request names a volume this worker does not hold (it was restarted, or the volume was closed)."""

    def __str__(self) -> str:
        return str(self.args[0])


def _int(args: dict, name: str, default: Any = None) -> int:
    value = args.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"'{name}' must be a whole number, got {value!r}.")
    return int(value)


def _masks(value: Any, what: str) -> dict[int, np.ndarray]:
    """{slice index: HxW mask} from the wire form ``[[index, mask], ...]``."""
    if not isinstance(value, list) or not all(isinstance(p, list) and len(p) == 2 for p in value):
        raise ValueError(f"'{what}' must be a list of [slice index, mask] pairs.")
    out = {}
    for index, mask in value:
        if not isinstance(mask, np.ndarray) or mask.ndim != 2:
            raise ValueError(f"'{what}': the mask of slice {index} must be a 2-D array.")
        out[_int({"index": index}, "index")] = mask.astype(bool)
    return out


class WorkerState:
    """Model, cache, volumes and segmenters of one worker.

    Args:
        backend_factory: ``(model_id, device, runtime) -> backend`` (default ``models.load_backend``; ``fake``
            gives the analytic ``FakeBackend``).
        cache: the embedding cache (default: memory only, the default byte bound).
    """

    def __init__(
        self, backend_factory: Callable[[str, str, str], Any] | None = None, cache: EmbeddingCache | None = None
    ) -> None:
        self.backend_factory = backend_factory or default_backend
        self.cache = cache if cache is not None else EmbeddingCache()
        self.model_id = "litemedsam"
        self.device = "auto"
        self.runtime = "auto"
        self.volumes: OrderedDict[str, Volume] = OrderedDict()  # least recently used first
        self.max_volume_bytes: int | None = None  # None: no bound (the local worker: one user's volumes)
        self.segmenters: dict[tuple[str, str], Segmenter] = {}
        self.yield_point: Callable[[], None] = lambda: None
        self.fake_encode_delay = float(os.environ.get("SAMMED_FAKE_ENCODE_DELAY", "0") or 0)
        self.prompt_encoder = prompt_encoders.DEFAULT  # of new segmenters: the shipped population encoder
        self.max_preemptions: int | None = None  # see SamFamilyBackend.max_preemptions (sammed serve: 2)
        self._backend: Any = None
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ model
    def backend(self) -> Any:
        """The model, loaded on first use (both lanes may ask: one load)."""
        with self._lock:
            if self._backend is None:
                backend = self.backend_factory(self.model_id, self.device, self.runtime)
                if hasattr(backend, "encode_delay"):
                    backend.encode_delay = self.fake_encode_delay
                if hasattr(backend, "max_preemptions"):
                    backend.max_preemptions = self.max_preemptions
                if hasattr(backend, "set_yield_point"):
                    backend.set_yield_point(lambda: self.yield_point())
                self._backend = backend
            return self._backend

    def segmenter(self, args: dict) -> Segmenter:
        """The segmenter of ``args["volume"]`` (a digest) with ``args["preset"]``.

        Raises:
            UnknownVolume: the worker does not hold that volume.
        """
        digest, preset = str(args.get("volume", "")), str(args.get("preset") or "auto")
        with self._lock:
            volume = self.volumes.get(digest)
            if volume is None:
                raise UnknownVolume(f"The worker does not hold volume {digest[:12]!r}; open it first.")
            self.volumes.move_to_end(digest)
            key = (digest, preset)
            if key not in self.segmenters:
                segmenter = Segmenter(volume, self.backend(), cache=self.cache, preset=preset)
                segmenter.base_prompt_encoder = prompt_encoders.resolve(segmenter.backend, self.prompt_encoder)
                self.segmenters[key] = segmenter
            return self.segmenters[key]

    # ------------------------------------------------------------------ interactive ops
    def op_hello(self, args: dict, control: jobs.JobControl) -> dict:
        """Versions and identity (a client checks the protocol version before anything else)."""
        torch = sys.modules.get("torch")
        return {
            "protocol": protocol.PROTOCOL_VERSION,
            "sammed": __version__,
            "pid": os.getpid(),
            "python": platform.python_version(),
            "torch": getattr(torch, "__version__", None),
            "model": self.model_id,
            "device": self.device,
            "model_loaded": self._backend is not None,
        }

    def op_configure(self, args: dict, control: jobs.JobControl) -> dict:
        """Model, device and cache settings. A new model or device drops the loaded one (loaded again on use)."""
        model, device = str(args.get("model", self.model_id)), str(args.get("device", self.device))
        runtime = str(args.get("runtime", self.runtime))
        with self._lock:
            if (model, device, runtime) != (self.model_id, self.device, self.runtime):
                self.model_id, self.device, self.runtime, self._backend = model, device, runtime, None
                self.segmenters.clear()
            if "cache_dir" in args:
                self.cache.disk_dir = Path(args["cache_dir"]) if args["cache_dir"] else None
            if "fake_encode_delay" in args:  # the analytic test model only: seconds per encode
                self.fake_encode_delay = float(args["fake_encode_delay"])
                if hasattr(self._backend, "encode_delay"):
                    self._backend.encode_delay = self.fake_encode_delay
            if args.get("cache_mb") is not None:
                self.cache.max_bytes = int(float(args["cache_mb"]) * (1 << 20))
        return {"model": self.model_id, "device": self.device, "runtime": self.runtime}

    def op_open_volume(self, args: dict, control: jobs.JobControl) -> dict:
        """Hold a volume: ``array`` (KxJxI), ``spacing``, ``origin`` (LPS), ``direction`` (3x3 LPS), ``name``, and
        optionally ``volume``, the digest the client computed (checked: a damaged upload is refused)."""
        array = args.get("array")
        if not isinstance(array, np.ndarray) or array.ndim != 3:
            shape = getattr(array, "shape", None)
            raise ValueError(f"A volume must be a 3-D voxel array (K, J, I); got shape {shape}.")
        if array.dtype.kind not in "biuf":
            raise ValueError(f"Voxels must be numbers; got dtype {array.dtype}.")
        direction = np.asarray(protocol.finite_floats(args.get("direction"), "direction", 9)).reshape(3, 3)
        volume = Volume(
            array_kji=array,
            spacing_ijk=tuple(protocol.finite_floats(args.get("spacing"), "spacing", 3)),  # type: ignore[arg-type]
            origin_lps=tuple(protocol.finite_floats(args.get("origin"), "origin", 3)),  # type: ignore[arg-type]
            direction_lps=direction,
            name=str(args.get("name", "")),
        )
        volume.check()
        if args.get("volume") not in (None, volume.digest):  # the digest the client computed before sending
            raise ValueError(
                "The volume arrived damaged (its voxels do not match the digest it was sent with); open it again."
            )
        with self._lock:
            self.volumes.setdefault(volume.digest, volume)
            self.volumes.move_to_end(volume.digest)
            self._bound_volumes()
        return {"volume": volume.digest, "shape": list(volume.shape_kji)}

    def op_has_volume(self, args: dict, control: jobs.JobControl) -> dict:
        return {"known": str(args.get("volume", "")) in self.volumes}

    def _bound_volumes(self) -> None:
        """Close the least recently used volumes (not the newest) while the voxels held exceed ``max_volume_bytes``;
        their clients open them again by digest when they come back (the protocol's unknown-volume path)."""
        held = sum(v.array_kji.nbytes for v in self.volumes.values())
        while self.max_volume_bytes is not None and held > self.max_volume_bytes and len(self.volumes) > 1:
            oldest = next(iter(self.volumes))
            held -= self.volumes[oldest].array_kji.nbytes
            self.op_close_volume({"volume": oldest}, None)

    def op_close_volume(self, args: dict, control: jobs.JobControl | None) -> dict:
        """Forget a volume, its segmenters (and learned encoders) and its embeddings in memory."""
        digest = str(args.get("volume", ""))
        with self._lock:
            known = self.volumes.pop(digest, None) is not None
            for key in [k for k in self.segmenters if k[0] == digest]:
                del self.segmenters[key]
        return {"closed": known, "released": self.cache.release(digest)}

    def op_segment(self, args: dict, control: jobs.JobControl) -> dict:
        """Decode prompts on one slice: ``axis``, ``index``, ``box`` [x0, y0, x1, y1], ``points`` [[x, y], ...],
        ``labels``, optional ``mask_input`` (256x256 logits), ``multimask``, ``use_learned``, ``prompt_encoder``
        (``original``: the model's own, to compare with the shipped ``learned`` one); ``low_res`` and
        ``logits`` add the 256x256 low-resolution and the full logits to the result."""
        segmenter = self.segmenter(args)
        axis, index = _int(args, "axis"), _int(args, "index")
        box = args.get("box")
        points = args.get("points")
        prompts = Prompts.make(
            None if box is None else protocol.finite_floats(box, "box", 4),
            None if not points else np.asarray([protocol.finite_floats(p, "point", 2) for p in points]),
            args.get("labels"),
            args.get("mask_input"),
        )
        encoded = self._ensure_embedding(segmenter, axis, index)
        use_learned, encoder = args.get("use_learned"), args.get("prompt_encoder")
        if encoder not in (None, "original", "learned"):
            raise ValueError(f"prompt_encoder must be 'original' or 'learned', not {encoder!r}.")
        result = segmenter.segment(
            axis, index, prompts, multimask=args.get("multimask"), use_learned=use_learned, prompt_encoder=encoder
        )
        out = {"mask": result.mask_hw, "iou": float(result.iou), "axis": axis, "index": index, "encoded": encoded}
        if args.get("low_res"):  # 256 KB that cost a click 9 ms on the wire: only when asked for (refinement)
            out["low_res_logits"] = result.low_res_logits.astype(np.float32)
        if args.get("logits"):
            out["logits"] = result.logits_hw.astype(np.float32)
        return out

    def _ensure_embedding(self, segmenter: Segmenter, axis: int, index: int) -> bool:
        """Encode the slice on this (interactive) lane unless cached. Not ``cache.get_or_compute``: if the
        background lane is encoding the same slice it is paused behind this request, and waiting for it would
        never end. Returns True when it encoded."""
        axis = geometry.check_axis(axis)
        index = geometry.check_index(segmenter.volume.shape_kji, axis, index)
        if segmenter.slice_is_empty(axis, index):
            return False
        return segmenter.encode_slices(axis, [index], join=False) == 1

    def op_encode(self, args: dict, control: jobs.JobControl) -> dict:
        """Encode the slice a user prompts on now, ahead of any background work (``axis``, ``index``)."""
        segmenter = self.segmenter(args)
        axis, index = _int(args, "axis"), _int(args, "index")
        return {"axis": axis, "index": index, "encoded": self._ensure_embedding(segmenter, axis, index)}

    def op_cached(self, args: dict, control: jobs.JobControl) -> dict:
        """Slice indices of ``axis`` whose embeddings are cached."""
        segmenter = self.segmenter(args)
        axis = geometry.check_axis(_int(args, "axis"))
        n = segmenter.volume.shape_kji[axis]
        return {"axis": axis, "slices": [i for i in range(n) if segmenter.is_cached(axis, i)]}

    def op_use_learned(self, args: dict, control: jobs.JobControl) -> dict:
        """Decode with the learned prompt encoder (``use`` true) or the original one."""
        segmenter = self.segmenter(args)
        segmenter.use_learned = bool(args.get("use", True))
        return {"use": segmenter.use_learned, "learned": segmenter.prompt_encoder is not None}

    def op_status(self, args: dict, control: jobs.JobControl) -> dict:
        """Model, volumes and cache use."""
        return {
            "model": self.model_id,
            "device": self.device,
            "model_loaded": self._backend is not None,
            "runtime": getattr(self._backend, "runtime", None),
            "volumes": sorted(self.volumes),
            "cache": {
                "memory_bytes": self.cache.memory_bytes,
                "entries": len(self.cache),
                **self.cache.stats.as_dict(),
            },
        }

    # ------------------------------------------------------------------ background ops
    def op_load(self, args: dict, control: jobs.JobControl) -> dict:
        """Load the model now (a client warms the worker up while the user sets things up)."""
        control.progress(0.0, f"Loading {self.model_id}")
        backend = self.backend()
        device, runtime = str(getattr(backend, "device", "cpu")), getattr(backend, "runtime", "torch")
        return {"model": backend.model_id, "device": device, "runtime": runtime}

    def interrupt(self, thread_ident: int | None, preempt: bool = False) -> None:
        """Stop an encode running on that thread now, where the runtime allows (ONNX Runtime): for good, or with
        ``preempt`` to run it again once the user's request is answered."""
        backend = self._backend
        if backend is not None and hasattr(backend, "interrupt"):
            backend.interrupt(thread_ident, preempt)

    def op_precompute(self, args: dict, control: jobs.JobControl) -> dict:
        """Encode ``indices`` of ``axis`` in the order given (the client orders them outward from the slice the
        user looks at); posts ``{"axis", "index"}`` as each slice is cached."""
        segmenter = self.segmenter(args)
        axis = geometry.check_axis(_int(args, "axis"))
        n = segmenter.volume.shape_kji[axis]
        order = [geometry.check_index(segmenter.volume.shape_kji, axis, i) for i in args.get("indices", range(n))]
        encoded, batch = 0, segmenter.batch_size()  # several slices per call on a GPU
        for start in range(0, len(order), batch):
            if control.should_stop():
                if segmenter.volume.digest not in self.volumes:  # closed meanwhile: keep nothing of it
                    self.cache.release(segmenter.volume.digest)
                raise jobs.Cancelled(partial={"encoded": encoded})
            chunk = order[start : start + batch]
            encoded += segmenter.encode_slices(axis, chunk)
            for index in chunk:
                control.post({"axis": axis, "index": index})
            count = start + len(chunk)
            control.progress(count / len(order), f"Embedding slice {chunk[-1]} ({count} of {len(order)})")
        return {"encoded": encoded, "slices": len(order)}

    def op_learn(self, args: dict, control: jobs.JobControl) -> dict:
        """SAMassist: fit a prompt encoder for this case from ``masks`` ([[index, mask], ...]) on ``axis``, then
        decode with it (``use_learned`` switches back)."""
        from .. import assist

        segmenter = self.segmenter(args)
        config = assist.AssistConfig(**args["config"]) if args.get("config") else None
        learned = assist.fit_prompt_encoder(
            segmenter,
            _masks(args.get("masks"), "masks"),
            axis=_int(args, "axis"),
            target=str(args.get("target", "target")),
            config=config,
            progress=control.progress,
            should_stop=control.should_stop,
        )
        assist.attach(segmenter, learned)
        return learned_summary(learned)

    def op_propagate(self, args: dict, control: jobs.JobControl) -> dict:
        """Fill the slices of one target from ``masks`` ([[index, mask], ...]) along ``axis``; posts one
        ``{"index", "status", "iou", "mask"}`` per finished slice; the result has the whole mask and the records."""
        from ..propagate import propagate

        segmenter = self.segmenter(args)
        lo_hi = args.get("slice_range")

        def on_slice(record: Any, mask_hw: np.ndarray | None) -> None:
            piece = {"index": int(record.index), "status": record.status, "iou": _finite(record.iou)}
            control.post({**piece, "mask": None if mask_hw is None else np.asarray(mask_hw, dtype=bool)})

        result = propagate(
            segmenter,
            _masks(args.get("masks"), "masks"),
            axis=_int(args, "axis"),
            generator=str(args.get("generator", "sliding")),
            config=config_from_wire(args.get("config")),
            slice_range=None if lo_hi is None else (_int({"a": lo_hi[0]}, "a"), _int({"b": lo_hi[1]}, "b")),
            progress=control.progress,
            should_stop=control.should_stop,
            on_slice=on_slice,
        )
        return self.wire(result)

    def wire(self, result: Any) -> Any:
        """The wire form of a ``PropagationResult`` (other values as they are)."""
        if not hasattr(result, "mask_kji"):
            return result
        summary = result.to_json()
        return {**summary, "mask": result.mask_kji.astype(np.uint8)}

    def op_download(self, args: dict, control: jobs.JobControl) -> dict:
        """Download a registered model's weights (SHA256-checked, atomic; ``models.download_weights``)."""
        from .. import models

        model = str(args.get("model", self.model_id))

        def report(done: int, total: int) -> None:
            if control.should_stop():
                raise jobs.Cancelled("Download cancelled; nothing was kept.")
            control.progress(done / max(total, 1), f"Downloading {model}: {done / 1e6:.0f} of {total / 1e6:.0f} MB")

        return {"path": str(models.download_weights(model, progress=report))}


def learned_summary(learned: Any) -> dict:
    """What a SAMassist fit (a ``LearnedPromptEncoder``) reports: ``target``, ``slices``, ``steps``, ``final`` loss
    (None without steps), ``seconds`` of training and base ``model`` id."""
    return {
        "target": learned.target,
        "slices": [int(s) for s in learned.slices],
        "steps": learned.steps_done,
        "final": learned.history[-1] if learned.history else None,
        "seconds": learned.seconds,
        "model": learned.model_id,
    }


def _finite(value: float) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def default_backend(model_id: str, device: str, runtime: str = "auto") -> Any:
    """``models.load_backend``, or the analytic ``FakeBackend`` for the model id ``fake``."""
    if model_id == FAKE_MODEL:
        from ..backends.fake import FakeBackend

        return FakeBackend()
    from .. import models

    return models.load_backend(model_id, device=device, runtime=runtime)


def config_to_wire(config: Any) -> dict | None:
    """A ``PropagationConfig`` as plain JSON values (None stays None)."""
    if config is None:
        return None
    import dataclasses

    return dataclasses.asdict(config)


def config_from_wire(data: Any) -> Any:
    """The ``PropagationConfig`` of ``config_to_wire`` (None: the defaults).

    Raises:
        ValueError: unknown option names.
    """
    from ..propagate import PropagationConfig
    from ..propagate import StopRules

    if data is None:
        return None
    if not isinstance(data, dict):
        raise ValueError("'config' must be an object of propagation options.")
    data = dict(data)
    rules = dict(data.pop("rules", None) or {})
    if "intensity_quantiles" in rules:
        rules["intensity_quantiles"] = tuple(rules["intensity_quantiles"])
    try:
        return PropagationConfig(rules=StopRules(**rules), **data)
    except TypeError as exc:
        raise ValueError(f"Unknown propagation option: {exc}") from None
