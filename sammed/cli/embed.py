"""``sammed embed``: precompute slice embeddings outward from a slice into the disk cache."""

from __future__ import annotations

import argparse
import json

from .options import add_common_args
from .options import make_segmenter
from .options import read_image
from .options import tqdm_progress


def register(sub: argparse._SubParsersAction) -> None:
    """Add the command to ``sammed``'s subparsers."""
    p = sub.add_parser("embed", help="precompute slice embeddings (outward from a slice) into the disk cache")
    p.add_argument("image")
    p.add_argument("--axis", default="axial")
    p.add_argument("--center", type=int, help="start slice (default: the middle)")
    add_common_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Encode the axis, cached slices skipped."""
    volume, axis = read_image(args)
    seg = make_segmenter(args, volume)
    n = volume.shape_kji[axis]
    center = n // 2 if args.center is None else args.center
    progress = tqdm_progress("embedding")
    try:
        done = seg.precompute(axis, center, progress=progress)
    finally:
        progress.close()  # type: ignore[attr-defined]
    print(json.dumps({"encoded": done, "slices": n, "axis": axis, "cache": seg.cache.stats.as_dict()}))
    return 0
