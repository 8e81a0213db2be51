"""Encoder runtime benchmark (not a test): OpenVINO and ONNX Runtime vs torch eager for LiteMedSAM, one run.

On the bundled CT and MR:
- encoder seconds per slice, the runtimes alternating on the same slices (goal: the default <= 0.35x eager, never
  above 0.5x);
- masks of each exported runtime vs eager on 40 slices (20 CT, 20 MR: the 10 largest labels of each, on their
  largest slice and on a slice a quarter into the label), tight box prompts: mean and minimum Dice (goals >= 0.995
  and >= 0.98), and the largest absolute difference between the embeddings;
- propagation wall time (sliding window, CT liver from its largest axial slice, fresh caches) with torch and with
  the default runtime (goal <= 0.45x torch).
On a machine with CUDA also the GPU path: slices per second for batches of 1, 8 and 32 through
``encode_batch`` (float16 autocast) and a bare float32 forward of the same batch (``gpu`` in the JSON; null
without a GPU, as on the machine of the README numbers).

Usage: python benchmarks/bench_encoder.py [--repeats 6] [--out benchmarks/results/encoder.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from common import write_result

from sammed import geometry
from sammed.demo import example_paths
from sammed.evaluate.metrics import dice
from sammed.io import read_volume
from sammed.models import load_backend
from sammed.propagate import propagate
from sammed.segmenter import Segmenter

ROOT = Path(__file__).resolve().parents[1]


def encoder_seconds(backends: dict, segmenter: Segmenter, indices: list[int]) -> dict[str, list[float]]:
    """Seconds per encode of each runtime, alternating on the same model images (after one warm-up each)."""
    times: dict[str, list[float]] = {name: [] for name in backends}
    image = segmenter.model_image(0, indices[0])
    for backend in backends.values():
        backend.encode(image)
    for index in indices:
        image = segmenter.model_image(0, index)
        for name, backend in backends.items():
            t = time.perf_counter()
            backend.encode(image)
            times[name].append(time.perf_counter() - t)
    return times


def box_slices(labels_kji: np.ndarray, count: int = 10) -> list[tuple[int, int]]:
    """(label, axial slice) pairs: the ``count`` largest labels, each on its largest slice and a quarter in."""
    ids, sizes = np.unique(labels_kji[labels_kji > 0], return_counts=True)
    out = []
    for label in ids[np.argsort(sizes)[::-1][:count]]:
        mask = labels_kji == label
        present = geometry.foreground_slices(mask, 0)
        out += [(int(label), geometry.largest_slice(mask, 0)), (int(label), present[len(present) // 4])]
    return out


def mask_agreement(backends: dict, name: str, volume, labels) -> dict:
    """Dice between runtime ``name``'s masks and eager's, and the largest embedding difference, on ``box_slices``."""
    fast, eager = Segmenter(volume, backends[name]), Segmenter(volume, backends["torch"])
    scores, diffs = [], []
    for n, (label, index) in enumerate(box_slices(labels.array_kji)):
        box = geometry.box_from_mask(labels.array_kji[index] == label)
        a = fast.segment(0, index, box_xyxy=box).mask_hw
        scores.append(dice(a, eager.segment(0, index, box_xyxy=box).mask_hw))
        if n % 5 == 0:  # the float32 embeddings themselves (the cache holds float16)
            image = fast.model_image(0, index)
            diffs.append(float(np.abs(backends[name].encode(image) - backends["torch"].encode(image)).max()))
    return {"slices": len(scores), "dice_mean": float(np.mean(scores)), "dice_min": float(min(scores)), "diffs": diffs}


def propagation_seconds(backend, volume, liver) -> tuple[float, int, np.ndarray]:
    """Wall time of a sliding-window liver propagation from its largest axial slice on a fresh cache."""
    segmenter = Segmenter(volume, backend)
    index = geometry.largest_slice(liver, 0)
    seed = segmenter.segment(0, index, box_xyxy=geometry.box_from_mask(liver[index])).mask_hw
    t = time.perf_counter()
    result = propagate(segmenter, {index: seed}, axis=0, generator="sliding")
    return time.perf_counter() - t, result.encoded, result.mask_kji


def gpu_batches(repeats: int = 5) -> dict | None:
    """Slices per second of ``encode_batch`` (float16) and of a bare float32 encoder forward, per batch size."""
    import torch

    if not torch.cuda.is_available():
        return None
    backend = load_backend("litemedsam", device="cuda", runtime="torch")
    image = np.zeros((256, 256, 3), np.uint8)
    out = {}
    for size in (1, 8, 32):
        images = [image] * size
        x = torch.cat([backend.preprocess(image)] * size)

        def bare(x=x) -> None:
            with torch.inference_mode():
                backend.model.image_encoder(x)

        rates = {}
        for name, call in (
            ("encode_batch_fp16", lambda images=images: backend.encode_batch(images)),
            ("bare_fp32", bare),
        ):
            call()
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(repeats):
                call()
            torch.cuda.synchronize()
            rates[name] = round(size * repeats / (time.perf_counter() - t), 2)
        rates["ratio"] = round(rates["encode_batch_fp16"] / rates["bare_fp32"], 3)
        out[str(size)] = rates
    out["batch_size_chosen"] = backend.batch_size()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=6, help="slices timed per runtime")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "encoder.json"))
    args = ap.parse_args()

    import onnxruntime
    import openvino
    import torch

    paths = example_paths()
    ct, ct_labels = read_volume(paths["ct"]), read_volume(paths["ct_labels"])
    mr, mr_labels = read_volume(paths["mr"]), read_volume(paths["mr_labels"])
    names = ("torch", "onnx", "openvino")
    backends = {name: load_backend("litemedsam", device="cpu", runtime=name) for name in names}
    assert [b.runtime for b in backends.values()] == list(names)
    default = load_backend("litemedsam", device="cpu").runtime

    liver = ct_labels.array_kji == 5
    centre = geometry.largest_slice(liver, 0)
    times = encoder_seconds(backends, Segmenter(ct, backends["torch"]), [centre - 2 * i for i in range(args.repeats)])
    median = {name: float(np.median(t)) for name, t in times.items()}
    masks = {}
    for name in ("onnx", "openvino"):
        ct_agree, mr_agree = (
            mask_agreement(backends, name, ct, ct_labels),
            mask_agreement(backends, name, mr, mr_labels),
        )
        masks[name] = {
            "slices": ct_agree["slices"] + mr_agree["slices"],
            "dice_mean": round(float(np.mean([ct_agree["dice_mean"], mr_agree["dice_mean"]])), 5),
            "dice_min": round(float(min(ct_agree["dice_min"], mr_agree["dice_min"])), 5),
            "embedding_max_abs_diff": float(max(ct_agree["diffs"] + mr_agree["diffs"])),
        }
    prop = {name: propagation_seconds(backends[name], ct, liver) for name in ("torch", default)}

    result = {
        "benchmark": "encoder",
        "model": "litemedsam",
        "device": "cpu",
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "openvino": openvino.__version__,
        "default_runtime_cpu": default,
        "encoder_s_per_slice": {name: round(v, 4) for name, v in median.items()},
        "encoder_ratio_vs_torch": {name: round(median[name] / median["torch"], 3) for name in ("onnx", "openvino")},
        "encoder_seconds": {k: [round(v, 4) for v in vs] for k, vs in times.items()},
        "masks_vs_torch": masks,
        "propagation_s": {name: round(p[0], 2) for name, p in prop.items()},
        "propagation_encoded": {name: p[1] for name, p in prop.items()},
        "propagation_ratio_default_vs_torch": round(prop[default][0] / prop["torch"][0], 3),
        "propagation_dice_default_vs_torch": round(dice(prop[default][2], prop["torch"][2]), 5),
        "gpu": gpu_batches(),
    }
    return write_result(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
