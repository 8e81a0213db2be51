"""Worker-process benchmark (not a test): what moving model work out of Slicer costs, measured in one run.

On the bundled CT with the real LiteMedSAM, the same prompts, alternating between the two ways:
- click -> mask through the worker (``RemoteSegmenter.segment``: request, decode in the worker, mask back) vs the
  bare decoder in this process (``backend.decode`` on the same embedding, measured while the worker is idle), p50
  and p95, with the worker idle and while it encodes other slices in the background; a click every ``--think``
  seconds as a user clicks (it lands anywhere in an encode, and both ways pay for waking up); goal: both ratios
  <= 1.3;
- time the main thread spends in one poll tick (``WorkerClient.drain``) while the worker encodes (goal p99 <= 5 ms);
- encoding throughput through the worker (``precompute``) vs encoding in this process, on fresh caches (goal
  >= 0.95).

Usage: python benchmarks/bench_worker.py [--device cpu] [--repeats 40] [--slices 8] [--think 0.25]
       [--out benchmarks/results/worker.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from common import pct
from common import write_result

from sammed import geometry
from sammed import prompt_encoders
from sammed.demo import example_paths
from sammed.io import read_volume
from sammed.models import load_backend
from sammed.prompts import Prompts
from sammed.segmenter import Segmenter
from sammed.worker.client import WorkerClient
from sammed.worker.remote import RemoteSegmenter

ROOT = Path(__file__).resolve().parents[1]
POLL_INTERVAL_S = 0.05  # the modules' QTimer interval


def clicks(
    local: Segmenter,
    remote: RemoteSegmenter,
    idx: int,
    ref: np.ndarray,
    repeats: int,
    seed: int,
    bare_too: bool,
    think: float = 0.0,
):
    """The same prompts through the worker and (``bare_too``, alternating) the bare decoder here, after 3 warm-up
    rounds, ``think`` seconds between clicks: (bare seconds, worker seconds)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.nonzero(ref)
    box = geometry.box_from_mask(ref)
    emb32 = np.array(local.embedding(0, idx), dtype=np.float32)
    geom = local.input_geometry(0)
    bare, worker = [], []
    for r in range(repeats + 3):
        k = rng.integers(len(rows))
        prompts = Prompts.make(box, np.array([[cols[k], rows[k]]], dtype=float), [1])
        t = time.perf_counter()
        if bare_too:
            local.backend.decode(emb32, prompts.checked(ref.shape), geom, prompt_encoder=local.base_prompt_encoder)
        t_bare = time.perf_counter() - t
        t = time.perf_counter()
        remote.segment(0, idx, prompts)
        t_worker = time.perf_counter() - t
        assert not remote.lastEncoded, "the clicked slice must be cached"
        if r >= 3:
            bare.append(t_bare)
            worker.append(t_worker)
        time.sleep(think)
    return bare, worker


def summary(bare: list, worker: list) -> dict:
    return {
        "bare_decoder_p50_s": round(pct(bare, 50), 4),
        "bare_decoder_p95_s": round(pct(bare, 95), 4),
        "worker_p50_s": round(pct(worker, 50), 4),
        "worker_p95_s": round(pct(worker, 95), 4),
        "ratio_p50": round(pct(worker, 50) / pct(bare, 50), 3),
        "ratio_p95": round(pct(worker, 95) / pct(bare, 95), 3),
    }


def poll_until_done(client: WorkerClient, rid: int) -> tuple[list[float], int]:
    """Poll every ``POLL_INTERVAL_S`` as the modules do; (seconds spent in each drain, partial results seen)."""
    ticks, partials = [], 0
    while rid in client.pending():
        t = time.perf_counter()
        events = client.drain()
        ticks.append(time.perf_counter() - t)
        partials += sum(e.kind == "partial" for e in events)
        time.sleep(POLL_INTERVAL_S)
    return ticks, partials


def encode_throughput(local: Segmenter, remote: RemoteSegmenter, client: WorkerClient, idx: int, n: int) -> dict:
    """Encode ``n`` slices here and ``n`` others in the worker (polled as the modules poll it), in two alternating
    halves so that a slower or faster spell of the machine falls on both."""
    warm = [idx - 2 * n - 3 - i for i in range(3)]  # the background session's first runs are slower (warm-up)
    client.wait(remote.precompute(0, warm), 300)
    client.drain()
    here_s = worker_s = 0.0
    ticks: list[float] = []
    for half in range(2):
        lo = idx - 1 - half * n
        t = time.perf_counter()
        for i in range(lo, lo - n // 2, -1):
            local.embedding(0, i)
        here_s += time.perf_counter() - t
        t = time.perf_counter()
        rid = remote.precompute(0, list(range(lo - n // 2, lo - 2 * (n // 2), -1)))
        half_ticks, partials = poll_until_done(client, rid)
        worker_s += time.perf_counter() - t
        ticks += half_ticks
        assert partials == n // 2
    return {
        "poll_tick_p50_ms": round(1000 * pct(ticks, 50), 3),
        "poll_tick_p99_ms": round(1000 * pct(ticks, 99), 3),
        "poll_ticks": len(ticks),
        "encode_here_s_per_slice": round(here_s / (2 * (n // 2)), 4),
        "encode_worker_s_per_slice": round(worker_s / (2 * (n // 2)), 4),
        "throughput_ratio_worker_vs_here": round(here_s / worker_s, 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--slices", type=int, default=8, help="slices encoded for the throughput comparison")
    ap.add_argument("--think", type=float, default=0.25, help="seconds between clicks while the worker encodes")
    ap.add_argument(
        "--prompt-encoder",
        default="learned",
        choices=("learned", "original"),
        help="the prompt encoder of both ways (default learned, the worker's default)",
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "worker.json"))
    args = ap.parse_args()

    import torch

    paths = example_paths()
    volume, labels = read_volume(paths["ct"]), read_volume(paths["ct_labels"])
    liver = labels.array_kji == 5
    idx = geometry.largest_slice(liver, 0)
    ref = liver[idx]
    local = Segmenter(volume, load_backend("litemedsam", device=args.device))
    local.base_prompt_encoder = prompt_encoders.resolve(local.backend, args.prompt_encoder)  # as the worker decodes
    client = WorkerClient()
    client.configure(model="litemedsam", device=args.device)
    remote = RemoteSegmenter(client, volume)
    remote.promptEncoder = args.prompt_encoder
    t = time.perf_counter()
    remote.segment(0, idx, Prompts.make(geometry.box_from_mask(ref)))  # starts the worker, loads, encodes
    first_click = time.perf_counter() - t

    bare, worker_idle = clicks(local, remote, idx, ref, args.repeats, seed=0, bare_too=True, think=args.think)
    idle = summary(bare, worker_idle)

    throughput = encode_throughput(local, remote, client, idx, args.slices)
    # clicks while the worker encodes other slices in the background
    rid = remote.precompute(0, list(range(idx - 20, -1, -1)))  # more than the clicks take
    time.sleep(1.0)
    busy = summary(bare, clicks(local, remote, idx, ref, args.repeats, seed=1, bare_too=False, think=args.think)[1])
    busy["background_slices_encoded_meanwhile"] = sum(e.kind == "partial" for e in client.drain())
    client.cancel(rid)
    client.wait_idle(30)
    client.shutdown()

    result = {
        "benchmark": "worker",
        "model": "litemedsam",
        "device": args.device,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "first_click_s_start_load_encode": round(first_click, 3),
        "click_idle": idle,
        "click_while_encoding": busy,
        **throughput,
        "think_s": args.think,
        "repeats": args.repeats,
        "slices": args.slices,
    }
    return write_result(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
