"""``RemoteSegmenter``: the segmenter's face for code outside the worker (the Slicer modules).

It holds the volume (for shapes, geometry and slices) and asks the worker for everything that needs the model:
``segment`` waits for its mask (a cached slice answers in a decode's time), the long jobs (``precompute``,
``learn``, ``propagate``) return a request id whose replies come from ``WorkerClient.drain``. It knows which slices
the worker has encoded from the replies it is shown (``note``), so asking "is this slice ready?" costs nothing.
After a worker restart the volume is opened again on the next request (by digest: nothing is re-sent when the
worker still holds it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..io import Volume
from ..jobs import WorkerEvent
from ..prompts import Prompts
from ..segmenter import SliceResult
from .client import WorkerClient
from .client import WorkerError
from .ops import config_to_wire

ENCODING_OPS = ("encode", "precompute", "segment")


def prompts_to_wire(prompts: Prompts) -> dict:
    """The ``segment`` arguments of ``prompts`` (slice pixels)."""
    out: dict[str, Any] = {}
    if prompts.box_xyxy is not None:
        out["box"] = [float(v) for v in prompts.box_xyxy]
    if prompts.points_xy is not None and len(prompts.points_xy):
        out["points"] = [[float(x), float(y)] for x, y in prompts.points_xy]
        labels = prompts.point_labels if prompts.point_labels is not None else np.ones(len(prompts.points_xy))
        out["labels"] = [int(v) for v in labels]
    if prompts.mask_input is not None:
        out["mask_input"] = np.asarray(prompts.mask_input, dtype=np.float32)
    return out


def masks_to_wire(masks: dict[int, np.ndarray]) -> list:
    """{slice index: HxW mask} as the ``[[index, mask], ...]`` the worker takes."""
    return [[int(i), np.asarray(m, dtype=bool)] for i, m in sorted(masks.items())]


class RemoteSegmenter:
    """Segment slices of ``volume`` in the worker ``client`` talks to.

    Args:
        client: the ``WorkerClient``.
        volume: the image (its voxels are sent to the worker once per worker).
        preset: intensity preset (``intensity.PRESET_CHOICES``).
    """

    def __init__(self, client: WorkerClient, volume: Volume, preset: str = "auto") -> None:
        self.client = client
        self.volume = volume
        self.preset = preset
        self.learned: dict | None = None  # what the last SAMassist fit reported (None: none in this worker)
        self.promptEncoder = "learned"  # or "original": the model's own prompt encoder (to compare)
        self._use_learned = True
        self._generation = -1
        self._cached: dict[int, set[int]] = {}
        self.lastEncoded = False  # whether the last ``segment`` had to encode its slice

    # ------------------------------------------------------------------ volume in the worker
    @property
    def args(self) -> dict:
        return {"volume": self.volume.digest, "preset": self.preset}

    def ensure_open(self, timeout: float = 300.0) -> None:
        """Make sure the worker holds the volume (sent once per worker; starts the worker if needed)."""
        self.client.start()
        if self._generation == self.client.generation:
            return
        if not self.client.call("has_volume", {"volume": self.volume.digest}, timeout)["known"]:
            v = self.volume
            volume = {
                "array": np.ascontiguousarray(v.array_kji),
                "spacing": [float(s) for s in v.spacing_ijk],
                "origin": [float(s) for s in v.origin_lps],
                "direction": [float(s) for s in np.asarray(v.direction_lps).ravel()],
                "name": v.name,
                "volume": v.digest,
            }
            self.client.call("open_volume", volume, timeout)
        if self._generation != -1:  # a new worker: its cache and learned encoders are new too
            self._cached.clear()
            self.learned = None
        self._generation = self.client.generation
        if not self._use_learned:
            self.client.submit("use_learned", {**self.args, "use": False})

    def close(self) -> None:
        """Let the worker forget the volume (embeddings in memory, learned encoders)."""
        if self.client.alive and self._generation == self.client.generation:
            self.client.submit("close_volume", {"volume": self.volume.digest})
        self._generation = -1
        self._cached.clear()

    def request(self, op: str, **args: Any) -> int:
        """Send ``op`` about this volume; replies come from ``client.drain()``."""
        self.ensure_open()
        return self.client.submit(op, {**self.args, **args})

    # ------------------------------------------------------------------ what is cached
    def is_cached(self, axis: int, index: int) -> bool:
        return int(index) in self._cached.get(int(axis), set())

    def note(self, event: WorkerEvent) -> None:
        """Learn from a reply: slices encoded, a learned encoder ready."""
        result = event.result
        if event.name in ENCODING_OPS and event.kind in ("done", "partial") and isinstance(result, dict):
            if "axis" in result and "index" in result:
                self._cached.setdefault(int(result["axis"]), set()).add(int(result["index"]))
        if event.name == "learn" and event.kind == "done":
            self.learned = result

    # ------------------------------------------------------------------ decoding
    def segment(
        self,
        axis: int,
        index: int,
        prompts: Prompts,
        *,
        use_learned: bool | None = None,
        low_res: bool = False,
        logits: bool = False,
        timeout: float = 300.0,
    ) -> SliceResult:
        """Decode ``prompts`` on one slice (the worker encodes it first if needed) and wait for the mask.

        The result's ``low_res_logits`` (to pass back as ``mask_input``) are sent only with ``low_res`` (else an
        empty array); its ``logits_hw`` are the model's only with ``logits`` (else +1 inside the mask, -1 outside).

        Raises:
            ValueError: a prompt or slice the worker refuses (the message says why).
            WorkerError: the worker stopped or failed.
        """
        args = {**prompts_to_wire(prompts), "axis": int(axis), "index": int(index)}
        if use_learned is not None:
            args["use_learned"] = bool(use_learned)
        if self.promptEncoder != "learned":
            args["prompt_encoder"] = self.promptEncoder
        if low_res:
            args["low_res"] = True
        if logits:
            args["logits"] = True
        for attempt in (1, 2):
            self.ensure_open()
            try:
                result = self.client.call("segment", {**self.args, **args}, timeout)
                break
            except WorkerError as exc:  # a worker started meanwhile does not hold the volume: open it again
                if exc.kind != "unknown_volume" or attempt == 2:
                    raise
                self._generation = -1
        self._cached.setdefault(int(axis), set()).add(int(index))
        self.lastEncoded = bool(result.get("encoded"))
        mask = np.asarray(result["mask"], dtype=bool)
        low = np.asarray(result.get("low_res_logits", np.zeros((0, 0))), dtype=np.float32)
        full = result.get("logits")
        full = np.where(mask, 1.0, -1.0).astype(np.float32) if full is None else full
        return SliceResult(mask, float(result["iou"]), full, low, int(axis), int(index))

    @property
    def use_learned(self) -> bool:
        return self._use_learned

    @use_learned.setter
    def use_learned(self, value: bool) -> None:
        if bool(value) != self._use_learned:
            self._use_learned = bool(value)
            if self.client.alive and self._generation == self.client.generation:
                self.client.submit("use_learned", {**self.args, "use": self._use_learned})

    @property
    def prompt_encoder(self) -> dict | None:
        """Truthy when the worker holds a learned prompt encoder for this volume (what the fit reported)."""
        return self.learned

    # ------------------------------------------------------------------ long jobs
    def requestEncode(self, axis: int, index: int) -> int:
        """Encode one slice ahead of background work (interactive lane)."""
        return self.request("encode", axis=int(axis), index=int(index))

    def precompute(self, axis: int, indices: list[int]) -> int:
        """Encode ``indices`` in this order in the background; each cached slice is posted."""
        return self.request("precompute", axis=int(axis), indices=[int(i) for i in indices])

    def learn(self, masks: dict[int, np.ndarray], axis: int, target: str, config: Any = None) -> int:
        """SAMassist in the background (``config``: an ``AssistConfig`` or None)."""
        cfg = config.as_dict() if config is not None else None
        return self.request("learn", masks=masks_to_wire(masks), axis=int(axis), target=str(target), config=cfg)

    def propagate(
        self,
        masks: dict[int, np.ndarray],
        axis: int,
        generator: str,
        config: Any = None,
        slice_range: tuple[int, int] | None = None,
    ) -> int:
        """Propagation in the background; each finished slice is posted, the result has the whole mask."""
        return self.request(
            "propagate",
            masks=masks_to_wire(masks),
            axis=int(axis),
            generator=str(generator),
            config=config_to_wire(config),
            slice_range=None if slice_range is None else [int(slice_range[0]), int(slice_range[1])],
        )


def propagation_result(wire: dict, cancelled: bool = False) -> Any:
    """A ``propagate.PropagationResult`` from the worker's reply."""
    from ..propagate.run import PropagationResult
    from ..propagate.run import SliceRecord

    records = [
        SliceRecord(**{**r, "iou": float("nan") if r.get("iou") is None else float(r["iou"])})
        for r in wire.get("slices", [])
    ]
    return PropagationResult(
        mask_kji=np.asarray(wire["mask"]).astype(bool),
        axis=int(wire["axis"]),
        records=records,
        cancelled=bool(wire.get("cancelled")) or cancelled,
        encoded=int(wire.get("encoded", 0)),
        generator=str(wire.get("generator", "")),
        seconds=float(wire.get("seconds", 0.0)),
        info=dict(wire.get("info", {})),
    )
