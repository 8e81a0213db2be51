"""``sammed assist``: learn a case-specific prompt encoder (SAMassist) from annotated slices of one volume.

Example::

    sammed assist ct.nii.gz annotation.nii.gz --label 5 --target liver -o liver.pt

The annotation is a label map on the image grid; by default every slice where ``--label`` occurs is used.
With ``--json`` progress goes to stdout as JSON lines (``{"progress": f, "message": m}``, then
``{"result": {...}}``), for Slicer's background process. Exit codes: 0 done, 2 bad input, 3 cancelled.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

from .cli import add_cache_args
from .cli import add_intensity_args
from .cli import add_model_args
from .cli import make_segmenter
from .cli import tqdm_progress


def register(subparsers) -> None:
    """Add the ``assist`` subcommand to ``sammed``'s subparsers."""
    p = subparsers.add_parser("assist", help="SAMassist: learn this case's prompt encoder from annotated slices")
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
    add_model_args(p)
    add_intensity_args(p)
    add_cache_args(p)
    p.set_defaults(func=cmd_assist)


def _config(args):
    from .assist import AssistConfig  # noqa: PLC0415 - imports torch

    cfg = AssistConfig()
    for name in ("steps", "lr", "prompts_per_slice", "n_pt", "d_in", "d_out", "sampling", "seed"):
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, name, value)
    if args.time_budget is not None:
        cfg.time_budget_s = args.time_budget
    cfg.check()
    return cfg


def cmd_assist(args) -> int:
    from . import assist  # noqa: PLC0415 - imports torch
    from .cli import parse_floats  # noqa: PLC0415
    from .geometry import axis_for_orientation  # noqa: PLC0415
    from .io import read_volume  # noqa: PLC0415
    from .jobs import CancelToken  # noqa: PLC0415
    from .jobs import JsonLinesReporter  # noqa: PLC0415
    from .models import sammed_home  # noqa: PLC0415

    cfg = _config(args)
    volume = read_volume(args.image)
    labels = read_volume(args.annotation)
    if labels.shape_kji != volume.shape_kji:
        raise ValueError(
            f"The annotation has {labels.shape_kji} voxels (KJI), the image {volume.shape_kji}: "
            "the annotation must be on the image grid."
        )
    axis = axis_for_orientation(volume.direction_lps, args.axis)
    slices = [int(v) for v in parse_floats(args.slices, what="--slices")] if args.slices else None
    masks = assist.annotations_from_labels(labels.array_kji, args.label, slices, axis)
    target = args.target or f"label-{args.label}"
    seg = make_segmenter(args, volume)
    out = Path(args.output) if args.output else assist.default_path(
        sammed_home() / "assist", volume.digest, target, seg.backend.model_id)
    if not args.output:
        out.parent.mkdir(parents=True, exist_ok=True)

    token = CancelToken()
    old = signal.signal(signal.SIGTERM, lambda *_: token.cancel())
    reporter = JsonLinesReporter() if args.json else None
    progress = reporter or tqdm_progress("assist")
    try:
        learned = assist.fit_and_save(seg, masks, out, axis=axis, target=target, config=cfg, progress=progress,
                                      should_stop=token)
    finally:
        signal.signal(signal.SIGTERM, old)
        if reporter is None:
            progress.close()
    result = {"output": str(out), "target": target, "slices": learned.slices, "steps": learned.steps_done,
              "final_loss": round(learned.history[-1], 4), "seconds": round(learned.seconds, 2),
              "model": learned.model_id}
    if reporter is not None:
        reporter.result(result)
    else:
        print(json.dumps(result))
    return 0
