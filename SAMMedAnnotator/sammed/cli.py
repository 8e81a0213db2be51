"""The ``sammed`` command line.

``sammed segment | embed | eval | models | cache | demo`` live here; ``assist`` and ``propagate`` register
themselves from ``sammed.assist_cli`` and ``sammed.propagate.cli``. A user error (``ValueError``) prints one
line to stderr and exits with code 2; a cancel exits with 3.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import sys
from pathlib import Path

import numpy as np

from . import __version__
from .jobs import EXIT_BAD_INPUT
from .jobs import EXIT_CANCELLED
from .jobs import Cancelled

EXTRA_COMMAND_MODULES = ("sammed.assist_cli", "sammed.propagate.cli")


# ---------------------------------------------------------------------- shared argument groups
def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="litemedsam", help="registry id (see `sammed models`); default litemedsam")
    g.add_argument("--checkpoint", help="a weights file of your own instead of the registry's")
    g.add_argument("--arch", help="architecture of --checkpoint: litemedsam, vit_b, vit_l, vit_h")
    g.add_argument("--sha256", help="expected SHA256 of --checkpoint")
    g.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")


def add_intensity_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("intensity")
    g.add_argument("--preset", help="intensity preset (default: CT abdomen window or MR percentile clip)")
    g.add_argument("--level", type=float, help="explicit window level (with --width)")
    g.add_argument("--width", type=float, help="explicit window width (with --level)")


def add_cache_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", help="disk embedding cache folder (default: $SAMMED_HOME/embeddings)")
    p.add_argument("--no-disk-cache", action="store_true", help="keep embeddings in memory only")


def make_cache(args):
    from .cache import EmbeddingCache
    from .models import sammed_home

    if getattr(args, "no_disk_cache", False):
        return EmbeddingCache()
    return EmbeddingCache(disk_dir=getattr(args, "cache_dir", None) or sammed_home() / "embeddings")


def make_backend(args):
    from .models import load_backend

    return load_backend(args.model, device=args.device, checkpoint=args.checkpoint, arch=args.arch, sha256=args.sha256)


def make_segmenter(args, volume, backend=None, cache=None, context: str = "repeat", mapping=None):
    from .intensity import make_mapping
    from .segmenter import Segmenter

    mapping = mapping or make_mapping(volume.array_kji, args.preset, args.level, args.width)
    return Segmenter(volume, backend or make_backend(args), mapping, cache or make_cache(args), context=context)


def parse_floats(text: str | None, n: int | None = None, what: str = "value") -> list[float] | None:
    if text is None:
        return None
    try:
        vals = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"Cannot read {what} '{text}': give comma-separated numbers.") from None
    if n is not None and len(vals) != n:
        raise ValueError(f"{what} needs {n} numbers, got {len(vals)} in '{text}'.")
    return vals


def parse_points(texts: list[str] | None) -> np.ndarray | None:
    if not texts:
        return None
    return np.array([parse_floats(t, 2, "point x,y") for t in texts], dtype=float)


def tqdm_progress(desc: str):
    """A ``progress(fraction, message)`` callable drawing a tqdm bar on stderr."""
    from tqdm import tqdm

    bar = tqdm(total=1000, desc=desc, unit="‰", leave=True, file=sys.stderr, bar_format="{l_bar}{bar}| {postfix}")

    def progress(fraction: float, message: str) -> None:
        bar.n = int(round(1000 * min(max(fraction, 0.0), 1.0)))
        bar.set_postfix_str(message, refresh=True)

    progress.close = bar.close  # type: ignore[attr-defined]
    return progress


# ---------------------------------------------------------------------- commands
def cmd_segment(args) -> int:
    from .geometry import axis_for_orientation
    from .geometry import extract_slice
    from .geometry import insert_slice
    from .intensity import make_mapping
    from .io import read_volume
    from .io import write_labelmap
    from .models import get_spec
    from .segmenter import empty_slice_message
    from .segmenter import validate_prompts

    out = Path(args.output)
    if not out.parent.exists():
        raise ValueError(f"Output folder '{out.parent}' does not exist; create it first.")
    volume = read_volume(args.image)
    axis = axis_for_orientation(volume.direction_lps, args.axis)
    box = parse_floats(args.box, 4, "--box x0,y0,x1,y1")
    points = parse_points(args.point)
    neg = parse_points(args.negative)
    labels = None
    if points is not None or neg is not None:
        pts = [p for p in (points, neg) if p is not None]
        labels = np.concatenate([np.ones(len(points) if points is not None else 0),
                                 np.zeros(len(neg) if neg is not None else 0)]).astype(int)
        points = np.concatenate(pts)
    if box is None and points is None:
        raise ValueError("Give a prompt: --box x0,y0,x1,y1 and/or --point x,y / --negative x,y.")
    # every check that needs no model runs before the model is loaded
    validate_prompts(volume, axis, args.slice, box, points, labels)
    mapping = make_mapping(volume.array_kji, args.preset, args.level, args.width)
    if args.checkpoint is None:
        get_spec(args.model)
    s = extract_slice(volume.array_kji, axis, args.slice)
    if s.min() == s.max():
        raise ValueError(empty_slice_message(axis, args.slice))
    seg = make_segmenter(args, volume, mapping=mapping)
    result = seg.segment(axis, args.slice, box_xyxy=box, points_xy=points, point_labels=labels)
    labels_kji = np.zeros(volume.shape_kji, dtype=np.uint8)
    insert_slice(labels_kji, axis, args.slice, result.mask_hw.astype(np.uint8) * args.label)
    write_labelmap(out, labels_kji, volume, {args.label: args.name})
    print(json.dumps({"output": str(out), "axis": axis, "slice": args.slice, "pixels": int(result.mask_hw.sum()),
                      "predicted_iou": round(result.iou, 4)}))
    return 0


def cmd_embed(args) -> int:
    from .geometry import axis_for_orientation
    from .io import read_volume

    volume = read_volume(args.image)
    axis = axis_for_orientation(volume.direction_lps, args.axis)
    seg = make_segmenter(args, volume)
    n = volume.shape_kji[axis]
    center = n // 2 if args.center is None else args.center
    progress = tqdm_progress("embedding")
    try:
        done = seg.precompute(axis, center, progress=progress)
    finally:
        progress.close()
    print(json.dumps({"encoded": done, "slices": n, "axis": axis, "cache": seg.cache.stats.as_dict()}))
    return 0


def cmd_models(args) -> int:
    from .models import REGISTRY
    from .models import download_weights
    from .models import model_status

    if args.download:
        progress = tqdm_progress(f"download {args.download}")
        try:
            path = download_weights(args.download, progress=lambda d, t: progress(d / max(t, 1), f"{d / 1e6:.0f} MB"))
        finally:
            progress.close()
        print(f"Saved and verified: {path}")
        return 0
    rows = [model_status(spec) for spec in REGISTRY.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'id':<12} {'size':>9}  {'licence':<11} {'present':<8} {'verified':<9} description")
    for r in rows:
        print(f"{r['id']:<12} {r['size_mb']:>6.1f} MB  {r['licence']:<11} {str(r['present']):<8} "
              f"{str(r['verified']):<9} {r['description']}")
    return 0


def cmd_cache(args) -> int:
    from .cache import EmbeddingCache
    from .models import sammed_home

    cache = EmbeddingCache(disk_dir=args.cache_dir or sammed_home() / "embeddings")
    if args.action == "clear":
        freed = cache.clear_disk()
        print(f"Cleared {freed / 1e6:.1f} MB from {cache.disk_dir}")
    else:
        files, size = cache.disk_usage()
        print(json.dumps({"folder": str(cache.disk_dir), "entries": files, "megabytes": round(size / 1e6, 1)}))
    return 0


def cmd_eval(args) -> int:
    from .evaluate.interactive import run_eval_cli

    return run_eval_cli(args)


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sammed", description="Segment CT/MR with Segment-Anything-family models.")
    parser.add_argument("--version", action="version", version=f"sammed {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segment", help="segment one slice from a box and/or points; writes a label map")
    p.add_argument("image", help="NIfTI/NRRD/MHA file or DICOM folder")
    p.add_argument("--axis", default="axial", help="axial, coronal, sagittal or array axis 0/1/2 (KJI)")
    p.add_argument("--slice", type=int, required=True, help="slice index along the axis")
    p.add_argument("--box", help="x0,y0,x1,y1 in slice pixels (x = column, y = row)")
    p.add_argument("--point", action="append", help="positive click x,y (repeatable)")
    p.add_argument("--negative", action="append", help="negative click x,y (repeatable)")
    p.add_argument("--label", type=int, default=1, help="label value written (default 1)")
    p.add_argument("--name", default="segment", help="segment name (for .seg.nrrd)")
    p.add_argument("-o", "--output", required=True, help="label map: .nii.gz, .nrrd, .seg.nrrd, .mha")
    add_model_args(p)
    add_intensity_args(p)
    add_cache_args(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("embed", help="precompute slice embeddings (outward from a slice) into the disk cache")
    p.add_argument("image")
    p.add_argument("--axis", default="axial")
    p.add_argument("--center", type=int, help="start slice (default: the middle)")
    add_model_args(p)
    add_intensity_args(p)
    add_cache_args(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("models", help="list models, licences and whether weights are present and verified")
    p.add_argument("--download", metavar="ID", help="download and verify a model's weights (SAM only)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("cache", help="show or clear the disk embedding cache")
    p.add_argument("action", choices=["info", "clear"], nargs="?", default="info")
    p.add_argument("--cache-dir")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("eval", help="simulated-user evaluation on a labelled volume (JSON + Markdown)")
    from .evaluate.interactive import add_eval_args

    add_eval_args(p)
    add_model_args(p)
    add_intensity_args(p)
    add_cache_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="segment the bundled example CT: mask, PNG overlay, Dice table")
    p.add_argument("--out", default="out/demo", help="output folder (created)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_demo)

    for name in EXTRA_COMMAND_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except ValueError as exc:
        print(f"sammed {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Cancelled as exc:
        print(f"sammed {args.command}: {exc}", file=sys.stderr)
        return EXIT_CANCELLED
    except KeyboardInterrupt:
        print(f"sammed {args.command}: interrupted", file=sys.stderr)
        return EXIT_CANCELLED


if __name__ == "__main__":
    sys.exit(main())
