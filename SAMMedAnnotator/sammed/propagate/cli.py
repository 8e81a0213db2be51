"""``sammed propagate``: fill a volume from seed slices (sliding window, threshold propagation or SAP-Net).

Examples::

    sammed propagate ct.nii.gz --slice 106 --box 10,20,80,90 -o liver.nii.gz --report liver.json
    sammed propagate ct.nii.gz --seed seeds.nii.gz --label 5 --generator sapnet -o liver.nii.gz
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def register(subparsers) -> None:
    from ..cli import add_cache_args
    from ..cli import add_intensity_args
    from ..cli import add_model_args
    from .api import GENERATORS

    p = subparsers.add_parser("propagate", help="fill a volume from seed slices (sliding window / threshold / SAP-Net)")
    p.add_argument("image", help="NIfTI/NRRD/MHA file or DICOM folder")
    p.add_argument("--seed", help="label map on the image grid with the annotated slices (seed masks)")
    p.add_argument("--label", type=int, help="label value of the target in --seed (needed if it holds several)")
    p.add_argument("--slices", help="use only these annotated slices of --seed, e.g. 40,52,60")
    p.add_argument("--background-slices", help="SAP-Net: slices annotated as 'target absent', e.g. 5,100")
    p.add_argument("--box", help="x0,y0,x1,y1 on --slice: SAM's mask from this tight box, refined, is the seed")
    p.add_argument("--slice", type=int, help="slice of --box")
    p.add_argument("--axis", default="axial", help="axial, coronal, sagittal or array axis 0/1/2 (KJI)")
    p.add_argument("--generator", choices=GENERATORS, default="sliding")
    p.add_argument("--range", help="first,last slice the generator may fill (default: all)")
    p.add_argument("--context", choices=["repeat", "adjacent"], help="slice context of the encoder input")
    p.add_argument("--margin", type=float, help="sliding window: box margin in pixels")
    p.add_argument("--refine", help="intensity refinement: weight of SAM's logit (default 0.25), or 'off'")
    p.add_argument("--min-iou", type=float, help="stop rule: minimum predicted IoU")
    p.add_argument("--epochs", type=int, help="SAP-Net training steps")
    p.add_argument("--seed-value", type=int, default=0, help="random seed")
    p.add_argument("--out-label", type=int, help="label value written (default: --label or 1)")
    p.add_argument("-o", "--output", required=True, help="label map: .nii.gz, .nrrd, .seg.nrrd, .mha")
    p.add_argument("--report", help="JSON file with the per-slice table (status, prompt, IoU, area)")
    p.add_argument("--json-progress", action="store_true", help="progress as JSON lines on stdout")
    add_model_args(p)
    add_intensity_args(p)
    add_cache_args(p)
    p.set_defaults(func=cmd_propagate)


def _ints(text: str | None, what: str) -> list[int] | None:
    from ..cli import parse_floats

    vals = parse_floats(text, None, what)
    return None if vals is None else [int(v) for v in vals]


def seeds_from_labelmap(seed_kji: np.ndarray, axis: int, label: int | None, slices: list[int] | None,
                        background: list[int] | None) -> tuple[dict[int, np.ndarray], int]:
    """Seed masks per slice from a label map; returns (masks, label value).

    Raises:
        ValueError: no label in the file, several labels and no ``label`` given, label absent, a chosen slice
            without the label.
    """
    from .. import geometry

    values = [int(v) for v in np.unique(seed_kji) if v != 0]
    if label is None:
        if not values:
            raise ValueError("The seed label map is empty: annotate at least one slice.")
        if len(values) > 1:
            raise ValueError(f"The seed label map holds several labels {values} (conflicting labels): pick one "
                             "with --label.")
        label = values[0]
    mask_kji = seed_kji == label
    if not mask_kji.any():
        raise ValueError(f"Label {label} is not in the seed label map (it holds {values}).")
    present = geometry.foreground_slices(mask_kji, axis)
    chosen = present if slices is None else slices
    masks = {}
    for i in chosen:
        m = geometry.extract_slice(mask_kji, axis, i)
        if not m.any():
            raise ValueError(f"Slice {i} has no voxel of label {label} in the seed label map.")
        masks[int(i)] = m.copy()
    for i in background or []:
        geometry.check_index(seed_kji.shape, axis, i)
        masks[int(i)] = np.zeros(geometry.slice_shape(seed_kji.shape, axis), dtype=bool)
    return masks, label


def cmd_propagate(args) -> int:
    from .. import geometry
    from ..cli import make_segmenter
    from ..cli import parse_floats
    from ..cli import tqdm_progress
    from ..io import read_volume
    from ..io import write_labelmap
    from ..jobs import JsonLinesReporter
    from .api import PropagationConfig
    from .api import propagate
    from .refine import seed_from_box

    out = Path(args.output)
    if not out.parent.exists():
        raise ValueError(f"Output folder '{out.parent}' does not exist; create it first.")
    volume = read_volume(args.image)
    axis = geometry.axis_for_orientation(volume.direction_lps, args.axis)
    rng = _ints(args.range, "--range first,last")
    if rng is not None and len(rng) != 2:
        raise ValueError("--range needs first,last.")
    if (args.seed is None) == (args.box is None):
        raise ValueError("Give either --seed (a label map) or --box with --slice.")
    seg = None
    label = args.label or 1
    if args.seed is not None:
        seed_vol = read_volume(args.seed)
        if not volume.same_grid(seed_vol):
            raise ValueError(f"The seed label map {args.seed} is not on the image grid (shape/spacing/origin differ).")
        masks, label = seeds_from_labelmap(np.asarray(seed_vol.array_kji), axis, args.label,
                                           _ints(args.slices, "--slices"), _ints(args.background_slices,
                                                                                 "--background-slices"))
    else:
        if args.slice is None:
            raise ValueError("--box needs --slice.")
        box = parse_floats(args.box, 4, "--box x0,y0,x1,y1")
        geometry.check_index(volume.shape_kji, axis, args.slice)
        geometry.check_box(box, geometry.slice_shape(volume.shape_kji, axis))
    cfg = PropagationConfig(seed=args.seed_value)
    if args.refine is not None:
        cfg.refine = None if args.refine.strip().lower() == "off" else parse_floats(args.refine, 1, "--refine")[0]
        if cfg.refine is not None and cfg.refine < 0:
            raise ValueError(f"--refine must be a weight >= 0 or 'off'; got {args.refine}.")
    if args.box is not None:
        seg = make_segmenter(args, volume)
        masks = {args.slice: seed_from_box(seg, axis, args.slice, box, cfg.refine)[0]}
    if args.context:
        cfg.context = args.context
    if args.margin is not None:
        cfg.margin = args.margin
    if args.min_iou is not None:
        cfg.rules.min_iou = args.min_iou
    if args.epochs is not None:
        cfg.sap_epochs = args.epochs
    seg = seg or make_segmenter(args, volume)
    progress = JsonLinesReporter() if args.json_progress else tqdm_progress(f"propagate ({args.generator})")
    try:
        res = propagate(seg, masks, axis, args.generator, cfg, tuple(rng) if rng else None, progress=progress)
    finally:
        if hasattr(progress, "close"):
            progress.close()
    value = args.out_label or label
    labels_kji = res.mask_kji.astype(np.uint16 if value > 255 else np.uint8) * value
    write_labelmap(out, labels_kji, volume, {value: f"label_{value}"})
    report = res.to_json()
    report["output"] = str(out)
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=1))
    summary = {k: report[k] for k in ("generator", "axis", "cancelled", "encoded", "seconds", "voxels", "counts")}
    summary["output"] = str(out)
    if args.json_progress:
        progress.result(summary)
    else:
        print(json.dumps(summary))
    return 0 if not res.cancelled else 3


if __name__ == "__main__":  # pragma: no cover
    from ..cli import main

    sys.exit(main(["propagate", *sys.argv[1:]]))
