"""``sammed assist``: learn a case-specific prompt encoder (SAMassist) from annotated slices of one volume.

Example::

    sammed assist ct.nii.gz annotation.nii.gz --label 5 --target liver -o liver.pt

The annotation is a label map on the image grid; by default every slice where ``--label`` occurs is used.
With ``--json`` progress goes to stdout as JSON lines (``{"progress": f, "message": m}``, then
``{"result": {...}}``). Exit codes: 0 done, 2 bad input, 3 cancelled (Ctrl+C or SIGTERM; nothing is written).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .options import add_common_args
from .options import cancel_on_sigterm
from .options import check_label_value
from .options import make_segmenter
from .options import output_folder
from .options import parse_ints
from .options import progress_reporter
from .options import read_image
from .options import read_labels_on_grid

TRAINING_OPTIONS = ("steps", "lr", "prompts_per_slice", "n_pt", "d_in", "d_out", "sampling", "seed")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the command to ``sammed``'s subparsers."""
    p = sub.add_parser("assist", help="SAMassist: learn this case's prompt encoder from annotated slices")
    p.add_argument("image", help="NIfTI/NRRD/MHA file or DICOM folder")
    p.add_argument("annotation", help="label map on the image grid with the annotated slices")
    p.add_argument("--label", type=int, default=1, help="label value of the target in the annotation (default 1)")
    p.add_argument("--target", help="name of the target (default: label-<value>)")
    p.add_argument("--axis", default="axial", help="axial, coronal, sagittal or array axis 0/1/2 (KJI)")
    p.add_argument("--slices", help="comma-separated slice indices to learn from (default: all annotated)")
    p.add_argument("-o", "--output", help="output file (default: $SAMMED_HOME/assist/<volume>__<target>__<model>.pt)")
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, help="optimisation steps")
    g.add_argument("--lr", type=float, help="Adam learning rate")
    g.add_argument("--prompts-per-slice", type=int, help="prompts per slice per step")
    g.add_argument("--n-pt", type=int, help="N_pt: points per prompt drawn from [1, N_pt)")
    g.add_argument("--d-in", type=float, help="box jitter inward (pixels)")
    g.add_argument("--d-out", type=float, help="box jitter outward (pixels)")
    g.add_argument("--sampling", choices=["uniform", "center", "boundary", "mixed"], help="point sampling scheme")
    g.add_argument("--time-budget", type=float, help="stop after this many seconds of training")
    g.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--json", action="store_true", help="JSON-lines progress and result on stdout")
    add_common_args(p)
    p.set_defaults(func=run)


def _config(args: argparse.Namespace) -> Any:
    from ..assist.config import AssistConfig

    cfg = AssistConfig()
    for name in TRAINING_OPTIONS:
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, name, value)
    if args.time_budget is not None:
        cfg.time_budget_s = args.time_budget
    cfg.check()
    return cfg


def run(args: argparse.Namespace) -> int:
    """Fit SAMassist on the annotated slices and save it."""
    from .. import assist  # imports torch
    from ..assist.store import LEARNED_SUFFIXES
    from ..models import sammed_home
    from ..outputs import Outputs

    check_label_value(args.label, "--label")
    outputs = Outputs([args.image, args.annotation])
    if args.output:
        outputs.add(args.output, LEARNED_SUFFIXES, "learned prompt encoder (-o)")
    cfg = _config(args)
    volume, axis = read_image(args)
    labels = read_labels_on_grid(args.annotation, volume, "annotation")
    masks = assist.annotations_from_labels(labels.array_kji, args.label, parse_ints(args.slices, "--slices"), axis)
    target = args.target or f"label-{args.label}"
    seg = make_segmenter(args, volume)
    out = (
        Path(args.output)
        if args.output
        else assist.default_path(sammed_home() / "assist", volume.digest, target, seg.backend.model_id)
    )
    if not args.output:
        output_folder(str(out.parent), "SAMassist folder")
    with cancel_on_sigterm() as token, progress_reporter(args.json, "assist") as progress:
        learned = assist.fit_and_save(
            seg, masks, out, axis=axis, target=target, config=cfg, progress=progress, should_stop=token
        )
        result = {
            "output": str(out),
            "target": target,
            "slices": learned.slices,
            "steps": learned.steps_done,
            "final_loss": round(learned.history[-1], 4),
            "seconds": round(learned.seconds, 2),
            "model": learned.model_id,
        }
        if args.json:
            progress.result(result)
    if not args.json:
        print(json.dumps(result))
    return 0
