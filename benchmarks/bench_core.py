"""Core speed benchmark (not a test): encoder time, cached click-to-mask latency vs the bare decoder, cache bytes.

Measured in one run on the shared CT with the real LiteMedSAM:
- encoder seconds per slice (median over N distinct slices);
- click-to-mask through ``Segmenter.segment`` on a cached slice (p50/p95) and the bare ``backend.decode`` with the
  same prompt on the same embedding (p50/p95), and their ratio (goal <= 1.5x);
- bytes per cached slice (goal <= 2.1 MB for LiteMedSAM);
- re-encodes when one slice is prompted 20 times (must be 0).

Usage: python benchmarks/bench_core.py [--device cpu] [--slices 5] [--repeats 50] [--out benchmarks/results/core.json]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
from common import pct
from common import write_result

from sammed import geometry
from sammed.demo import example_paths
from sammed.io import read_volume
from sammed.models import load_backend
from sammed.prompts import Prompts
from sammed.segmenter import Segmenter

ROOT = Path(__file__).resolve().parents[1]


def click_latencies(seg, idx: int, ref: np.ndarray, box: np.ndarray, repeats: int) -> tuple[list, list]:
    """Cached click-to-mask through ``Segmenter.segment`` and the bare ``backend.decode`` with the same prompt on the
    same embedding, alternating, after 5 warm-up rounds: (segment seconds, decode seconds)."""
    rng = np.random.default_rng(0)
    rows, cols = np.nonzero(ref)
    emb32 = np.array(seg.embedding(0, idx), dtype=np.float32)
    geom = seg.input_geometry(0)
    full, bare = [], []
    for r in range(repeats + 5):
        k = rng.integers(len(rows))
        pts = np.array([[cols[k], rows[k]]], dtype=float)
        t = time.perf_counter()
        seg.segment(0, idx, box_xyxy=box, points_xy=pts, point_labels=[1])
        t_full = time.perf_counter() - t
        prompts = Prompts.make(box, pts, [1]).checked(ref.shape)
        t = time.perf_counter()
        seg.backend.decode(emb32, prompts, geom)
        t_bare = time.perf_counter() - t
        if r >= 5:  # warm-up
            full.append(t_full)
            bare.append(t_bare)
    return full, bare


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--slices", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "core.json"))
    args = ap.parse_args()

    import torch

    paths = example_paths()
    volume, labels = read_volume(paths["ct"]), read_volume(paths["ct_labels"])
    backend = load_backend("litemedsam", device=args.device)
    seg = Segmenter(volume, backend)
    liver = labels.array_kji == 5
    idx = geometry.largest_slice(liver, 0)
    ref = liver[idx]
    box = geometry.box_from_mask(ref)

    # encoder: distinct slices, first one also warms up
    seg.embedding(0, idx)
    enc = []
    for i in range(args.slices):
        t = time.perf_counter()
        seg.embedding(0, idx - 1 - i)
        enc.append(time.perf_counter() - t)

    encodes_before = seg.cache.stats.encodes
    full, bare = click_latencies(seg, idx, ref, box, args.repeats)
    for _ in range(20):
        seg.segment(0, idx, box_xyxy=box)
    re_encodes = seg.cache.stats.encodes - encodes_before
    key = seg.key(0, idx)
    bytes_per_slice = int(seg.cache.get(key).nbytes)

    result = {
        "benchmark": "core",
        "model": backend.model_id,
        "device": str(backend.device),
        "encoder_runtime": backend.runtime,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "encoder_seconds_per_slice_median": round(float(np.median(enc)), 4),
        "encoder_seconds_per_slice": [round(v, 4) for v in enc],
        "click_to_mask_p50_s": round(pct(full, 50), 4),
        "click_to_mask_p95_s": round(pct(full, 95), 4),
        "bare_decoder_p50_s": round(pct(bare, 50), 4),
        "bare_decoder_p95_s": round(pct(bare, 95), 4),
        "ratio_p50_cached_vs_bare": round(pct(full, 50) / pct(bare, 50), 3),
        "bytes_per_cached_slice": bytes_per_slice,
        "megabytes_per_cached_slice": round(bytes_per_slice / 1e6, 3),
        "re_encodes_after_20_prompts_on_one_slice": int(re_encodes),
        "repeats": args.repeats,
    }
    return write_result(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
