"""``sammed propagate``: fill a volume from seed slices (sliding window, threshold propagation or SAP-Net).

Examples::

    sammed propagate ct.nii.gz --slice 106 --box 42,27,104,81 -o liver.nii.gz --report liver.json
    sammed propagate ct.nii.gz --seed seeds.nii.gz --label 5 --generator sapnet -o liver.nii.gz
    sammed propagate ct.nii.gz --seed seeds.nii.gz -o liver.nii.gz --server http://gpu:8000 --token-file token

With ``--server`` the run is a job of that ``sammed serve`` server (its model; a learned SAMassist encoder it holds
for this image and preset is used); the label map and report are written here as in a local run, and Ctrl+C or
SIGTERM cancel the job on the server.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from ..jobs import EXIT_OK
from ..jobs import Cancelled
from ..jobs import CancelToken
from ..jobs import ProgressFn
from ..prompts import Prompts
from ..propagate import GENERATORS
from ..propagate import PropagationConfig
from ..propagate import PropagationResult
from ..propagate import propagate
from ..propagate import seed_from_box
from ..segmenter import SliceResult
from ..worker.remote import RemoteSegmenter
from ..worker.remote import propagation_result
from .options import add_common_args
from .options import add_server_args
from .options import cancel_on_sigterm
from .options import check_label_value
from .options import follow_job
from .options import label_dtype
from .options import make_segmenter
from .options import parse_floats
from .options import parse_ints
from .options import progress_reporter
from .options import read_image
from .options import read_labels_on_grid

SUMMARY_KEYS = ("generator", "axis", "cancelled", "encoded", "seconds", "voxels", "counts")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the command to ``sammed``'s subparsers."""
    p = sub.add_parser("propagate", help="fill a volume from seed slices (sliding window / threshold / SAP-Net)")
    p.add_argument("image", help="NIfTI/NRRD/MHA file or DICOM folder")
    p.add_argument("--seed", help="label map on the image grid with the annotated slices (seed masks)")
    p.add_argument("--label", type=int, help="label value of the target in --seed (needed if it holds several)")
    p.add_argument("--slices", help="use only these annotated slices of --seed, e.g. 40,52,60")
    p.add_argument("--background-slices", help="SAP-Net: slices annotated as 'target absent', e.g. 5,100")
    p.add_argument("--box", help="x0,y0,x1,y1 on --slice: SAM's mask from this tight box, refined, is the seed")
    p.add_argument("--slice", type=int, help="slice of --box")
    p.add_argument("--axis", default="axial", help="axial, coronal, sagittal or array axis 0/1/2 (KJI)")
    p.add_argument("--generator", choices=list(GENERATORS), default="sliding")
    p.add_argument("--range", help="first,last slice the generator may fill (default: all)")
    p.add_argument("--context", choices=["repeat", "adjacent"], help="slice context of the encoder input")
    p.add_argument("--margin", type=float, help="sliding window: box margin in pixels")
    p.add_argument("--refine", help="intensity refinement: weight of SAM's logit (default 0.25), or 'off'")
    p.add_argument("--min-iou", type=float, help="stop rule: minimum predicted IoU")
    p.add_argument("--epochs", type=int, help="SAP-Net training steps")
    p.add_argument("--seed-value", type=int, default=0, help="random seed")
    p.add_argument("--out-label", type=int, help="label value written (default: --label or 1)")
    p.add_argument("--name", default="segment", help="segment name (for .seg.nrrd)")
    p.add_argument("-o", "--output", required=True, help="label map: .nii.gz, .nrrd, .seg.nrrd, .mha")
    p.add_argument("--report", help="JSON file with the per-slice table (status, prompt, IoU, area)")
    p.add_argument("--json-progress", action="store_true", help="progress as JSON lines on stdout")
    add_common_args(p)
    add_server_args(p)
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> PropagationConfig:
    """The ``PropagationConfig`` of the options.

    Raises:
        ValueError: a --refine that is neither a weight >= 0 nor 'off'.
    """
    cfg = PropagationConfig(seed=args.seed_value)
    if args.refine is not None:
        cfg.refine = None if args.refine.strip().lower() == "off" else parse_floats(args.refine, 1, "--refine")[0]
        if cfg.refine is not None and cfg.refine < 0:
            raise ValueError(f"--refine must be a weight >= 0 or 'off'; got {args.refine}.")
    if args.context:
        cfg.context = args.context
    if args.margin is not None:
        cfg.margin = args.margin
    if args.min_iou is not None:
        cfg.rules.min_iou = args.min_iou
    if args.epochs is not None:
        cfg.sap_epochs = args.epochs
    return cfg


def _slice_range(args: argparse.Namespace) -> tuple[int, int] | None:
    rng = parse_ints(args.range, "--range first,last")
    if rng is not None and len(rng) != 2:
        raise ValueError("--range needs first,last.")
    return None if rng is None else (rng[0], rng[1])


def _seeds_from_file(args: argparse.Namespace, volume: Any, axis: int) -> tuple[dict[int, np.ndarray], int]:
    from ..propagate import seeds_from_labelmap

    seed_vol = read_labels_on_grid(args.seed, volume, "seed label map")
    return seeds_from_labelmap(
        np.asarray(seed_vol.array_kji),
        axis,
        args.label,
        parse_ints(args.slices, "--slices"),
        parse_ints(args.background_slices, "--background-slices"),
    )


def _check_box(args: argparse.Namespace, volume: Any, axis: int) -> list[float]:
    from .. import geometry

    if args.slice is None:
        raise ValueError("--box needs --slice.")
    box = parse_floats(args.box, 4, "--box x0,y0,x1,y1")
    geometry.check_index(volume.shape_kji, axis, args.slice)
    geometry.check_box(box, geometry.slice_shape(volume.shape_kji, axis))
    return box


def _write_outputs(args: argparse.Namespace, volume: Any, result: Any, outputs: Any, label: int) -> dict:
    from ..io import save_labelmap

    out = outputs.paths[0]
    value = args.out_label or label
    labels_kji = result.mask_kji.astype(label_dtype(value)) * value
    report = result.to_json()
    report["output"] = str(out)
    with outputs.commit() as temps:
        save_labelmap(temps[out], labels_kji, volume, {value: args.name})
        if args.report:
            temps[outputs.paths[1]].write_text(json.dumps(report, indent=1))
    summary = {k: report[k] for k in SUMMARY_KEYS}
    summary["output"] = str(out)
    return summary


def _outputs(args: argparse.Namespace) -> Any:
    """The command's outputs (-o, then --report), checked before anything is read."""
    from ..io import labelmap_output
    from ..outputs import Outputs

    check_label_value(args.label, "--label")
    check_label_value(args.out_label, "--out-label")
    outputs = Outputs([args.image, args.seed])
    labelmap_output(outputs, args.output, "label map (-o)")
    if args.report:
        outputs.add(args.report, (".json",), "report (--report)")
    return outputs


class _ServerSeed:
    """What ``seed_from_box`` asks of a segmenter, on a ``RemoteSegmenter`` with the model's full logits (the box's
    mask is refined with them, as in a local run)."""

    def __init__(self, remote: RemoteSegmenter) -> None:
        self.remote = remote
        self.volume = remote.volume

    def segment(self, axis: int, index: int, box_xyxy: Any) -> SliceResult:
        return self.remote.segment(axis, index, Prompts.make(box_xyxy), logits=True)


def _propagate(
    seg: Any,
    masks: dict[int, np.ndarray],
    axis: int,
    args: argparse.Namespace,
    cfg: PropagationConfig,
    slice_range: tuple[int, int] | None,
    progress: ProgressFn,
    token: CancelToken,
) -> PropagationResult:
    """``propagate`` here, or as a job of the ``--server`` (cancelled there when ``token`` is set or on Ctrl+C).

    Raises:
        Cancelled: the server's job was cancelled before it had a result.
    """
    if not isinstance(seg, RemoteSegmenter):
        return propagate(seg, masks, axis, args.generator, cfg, slice_range, progress=progress, should_stop=token)
    event = follow_job(seg.client, seg.propagate(masks, axis, args.generator, cfg, slice_range), progress, token)
    if event.result is None:
        raise Cancelled("cancelled on the server before any slice; nothing was written.")
    return propagation_result(event.result, event.kind == "cancelled")


def run(args: argparse.Namespace) -> int:
    """Fill the volume from the seeds and write the label map (and the report); a cancelled run writes nothing."""
    outputs = _outputs(args)
    volume, axis = read_image(args)
    slice_range = _slice_range(args)
    if (args.seed is None) == (args.box is None):
        raise ValueError("Give either --seed (a label map) or --box with --slice.")
    label = args.label or 1
    box = None
    if args.seed is not None:
        masks, label = _seeds_from_file(args, volume, axis)
    else:
        box = _check_box(args, volume, axis)
    cfg = config_from_args(args)
    seg = make_segmenter(args, volume)
    if box is not None:
        seeder: Any = _ServerSeed(seg) if isinstance(seg, RemoteSegmenter) else seg
        masks = {args.slice: seed_from_box(seeder, axis, args.slice, box, cfg.refine)[0]}
    with cancel_on_sigterm() as token, progress_reporter(args.json_progress, f"propagate ({args.generator})") as bar:
        res = _propagate(seg, masks, axis, args, cfg, slice_range, bar, token)
        if res.cancelled:
            done = sum(r.status != "user" for r in res.records)
            raise Cancelled(f"cancelled after {done} slices; nothing was written.")
        summary = _write_outputs(args, volume, res, outputs, label)
        if args.json_progress:
            bar.result(summary)
    if not args.json_progress:
        print(json.dumps(summary))
    return EXIT_OK
