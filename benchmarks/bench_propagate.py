"""Propagation wall time vs. encoder work, measured in one run; a second run must encode nothing.

    .venv/bin/python benchmarks/bench_propagate.py [--label 3] [--generator sliding]

Runs the sliding window (default: left kidney of the shared CT, one tight box on its largest slice) with a fresh
memory-only cache, timing every encoder and decoder call through a thin wrapper around the real LiteMedSAM backend.
Prints and writes benchmarks/results/propagate.json:

- ``ratio = wall / (slices encoded x mean encoder time per slice + decoding time)``; the target is
  ``wall <= 1.15 x (slices encoded x encoder time per slice) + decoding``, i.e. ``ratio_encode_part <= 1.15``;
- the second run on the same volume: slices encoded (must be 0) and its wall time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


class TimedBackend:
    """Wraps a backend and adds up the time spent in encode/decode."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.preprocessing_id = inner.preprocessing_id
        self.image_size = inner.image_size
        self.embedding_shape = inner.embedding_shape
        self.weights_sha256 = inner.weights_sha256
        self.encode_s: list[float] = []
        self.decode_s: list[float] = []

    def encode(self, image_hw3):
        t = time.perf_counter()
        out = self.inner.encode(image_hw3)
        self.encode_s.append(time.perf_counter() - t)
        return out

    def decode(self, *args, **kwargs):
        t = time.perf_counter()
        out = self.inner.decode(*args, **kwargs)
        self.decode_s.append(time.perf_counter() - t)
        return out


def main() -> int:
    from sammed import geometry
    from sammed.cache import EmbeddingCache
    from sammed.demo import example_paths
    from sammed.io import read_volume
    from sammed.models import load_backend
    from sammed.propagate import propagate
    from sammed.propagate import seed_from_box
    from sammed.segmenter import Segmenter

    ap = argparse.ArgumentParser()
    ap.add_argument("--label", type=int, default=3)
    ap.add_argument("--generator", default="sliding")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "propagate.json"))
    a = ap.parse_args()
    paths = example_paths()
    vol = read_volume(paths["ct"])
    ref = read_volume(paths["ct_labels"]).array_kji == a.label
    backend = TimedBackend(load_backend("litemedsam", device="cpu"))
    seg = Segmenter(vol, backend, cache=EmbeddingCache())  # fresh, memory only: every slice is encoded once
    s = geometry.largest_slice(ref, 0)
    seed, _ = seed_from_box(seg, 0, s, geometry.box_from_mask(ref[s]))  # the user's box: not timed below
    backend.encode_s.clear()
    backend.decode_s.clear()
    if a.generator == "sliding":
        user = {s: seed}
    else:
        z = np.flatnonzero(ref.any(axis=(1, 2)))
        user = {int(i): ref[int(i)] for i in np.linspace(z[0] + 2, z[-1] - 2, 5).round()}
    t0 = time.perf_counter()
    res = propagate(seg, user, 0, a.generator)
    wall = time.perf_counter() - t0
    enc_n = res.encoded
    enc_mean = float(np.mean(backend.encode_s)) if backend.encode_s else 0.0
    dec_total = float(np.sum(backend.decode_s))
    dec_n = len(backend.decode_s)
    budget = 1.15 * enc_n * enc_mean + dec_total
    t1 = time.perf_counter()
    again = propagate(seg, user, 0, a.generator)
    wall2 = time.perf_counter() - t1
    out = {
        "generator": a.generator,
        "label": a.label,
        "slices_visited": len(res.records),
        "slices_encoded": enc_n,
        "encoder_s_per_slice": round(enc_mean, 3),
        "decoder_calls": dec_n,
        "decoding_s": round(dec_total, 3),
        "wall_s": round(wall, 3),
        "budget_s": round(budget, 3),
        "ratio_wall_to_encode_plus_decode": round(wall / max(enc_n * enc_mean + dec_total, 1e-9), 3),
        "ratio_encode_part": round((wall - dec_total) / max(enc_n * enc_mean, 1e-9), 3),
        "within_budget": bool(wall <= budget),
        "second_run_encoded": again.encoded,
        "second_run_wall_s": round(wall2, 3),
        "same_mask": bool(np.array_equal(res.mask_kji, again.mask_kji)),
    }
    print(json.dumps(out, indent=1))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    return 0 if out["within_budget"] and again.encoded == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
