"""``sammed assist``: learn a case-specific prompt encoder (SAMassist) from annotated slices of one volume.

Example::

    sammed assist ct.nii.gz annotation.nii.gz --label 5 --target liver -o liver.pt

The annotation is a label map on the image grid; by default every slice where ``--label`` occurs is used.
With ``--json`` progress goes to stdout as JSON lines (``{"progress": f, "message": m}``, then
``{"result": {...}}``). Exit codes: 0 done, 2 bad input, 3 cancelled (Ctrl+C or SIGTERM; nothing is written).

With ``--server URL`` the fit runs on that ``sammed serve`` server (its model) and the learned encoder stays there,
in memory: the server does not send it back, so no file is written and ``-o`` is refused (the result's ``output``
is null). Later ``sammed segment``/``sammed propagate --server`` runs on the same image with the same ``--preset``
decode with it (so do other clients of that server on the same image and preset), until the server restarts, the
image is closed there or another fit on it replaces it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..assist.config import AssistConfig
from ..assist.sampling import annotations_from_labels
from ..jobs import Cancelled
from ..jobs import CancelToken
from ..jobs import ProgressFn
from ..models import sammed_home
from ..outputs import Outputs
from ..worker.ops import learned_summary
from ..worker.remote import RemoteSegmenter
from .options import add_common_args
from .options import add_server_args
from .options import cancel_on_sigterm
from .options import check_label_value
from .options import follow_job
from .options import make_segmenter
from .options import output_folder
from .options import parse_ints
from .options import progress_reporter
from .options import read_image
from .options import read_labels_on_grid

TRAINING_OPTIONS = ("steps", "lr", "prompts_per_slice", "n_pt", "d_in", "d_out", "sampling", "seed")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the command to ``sammed``'s subparsers."""
    p = sub.add_parser(
        "assist",
        help="SAMassist: learn this case's prompt encoder from annotated slices",
        description="SAMassist: learn this case's prompt encoder from annotated slices and save it (-o). With "
        "--server the fit runs on that server and the encoder stays there (no file; -o is refused): later "
        "`sammed segment/propagate --server` runs on the same image and --preset use it until the server restarts.",
    )
    p.add_argument("image", help="NIfTI/NRRD/MHA file or DICOM folder")
    p.add_argument("annotation", help="label map on the image grid with the annotated slices")
    p.add_argument("--label", type=int, default=1, help="label value of the target in the annotation (default 1)")
    p.add_argument("--target", help="name of the target (default: label-<value>)")
    p.add_argument("--axis", default="axial", help="axial, coronal, sagittal or array axis 0/1/2 (KJI)")
    p.add_argument("--slices", help="comma-separated slice indices to learn from (default: all annotated)")
    p.add_argument(
        "-o",
        "--output",
        help="output file (default: $SAMMED_HOME/assist/<volume>__<target>__<model>.pt; not with --server)",
    )
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
    add_server_args(p)
    p.set_defaults(func=run)


def _config(args: argparse.Namespace) -> AssistConfig:
    cfg = AssistConfig()
    for name in TRAINING_OPTIONS:
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, name, value)
    if args.time_budget is not None:
        cfg.time_budget_s = args.time_budget
    cfg.check()
    return cfg


def _output(args: argparse.Namespace, outputs: Outputs) -> Path | None:
    """The -o file, checked before any work (None: the default path, or nothing with --server).

    Raises:
        ValueError: -o with --server, or an -o that cannot be written.
    """
    if not args.output:
        return None
    if args.server:
        raise ValueError(
            "With --server the learned encoder stays on the server (it is not sent back): drop -o; later "
            "`sammed segment/propagate --server` runs on this image and --preset use it."
        )
    from ..assist.store import LEARNED_SUFFIXES  # imports torch

    return outputs.add(args.output, LEARNED_SUFFIXES, "learned prompt encoder (-o)")


def _fit(
    seg: Any,
    masks: Mapping[int, np.ndarray],
    out: Path | None,
    axis: int,
    target: str,
    cfg: AssistConfig,
    progress: ProgressFn,
    token: CancelToken,
) -> dict:
    """Fit and save to ``out`` here, or fit as a job of the ``--server`` (``out`` None: the encoder stays there);
    returns the fit's ``ops.learned_summary``.

    Raises:
        Cancelled: SIGTERM (``token``) or a cancel on the server; nothing is written or kept.
    """
    if isinstance(seg, RemoteSegmenter):
        event = follow_job(seg.client, seg.learn(dict(masks), axis, target, cfg), progress, token)
        if event.kind != "done":
            raise Cancelled(event.error or "Cancelled by the user.")
        return dict(event.result)
    from .. import assist  # imports torch

    assert out is not None
    learned = assist.fit_and_save(
        seg, masks, out, axis=axis, target=target, config=cfg, progress=progress, should_stop=token
    )
    return learned_summary(learned)


def run(args: argparse.Namespace) -> int:
    """Fit SAMassist on the annotated slices and save it (with --server: keep it on the server)."""
    check_label_value(args.label, "--label")
    outputs = Outputs([args.image, args.annotation])
    out = _output(args, outputs)
    cfg = _config(args)
    volume, axis = read_image(args)
    labels = read_labels_on_grid(args.annotation, volume, "annotation")
    masks = annotations_from_labels(labels.array_kji, args.label, parse_ints(args.slices, "--slices"), axis)
    target = args.target or f"label-{args.label}"
    seg = make_segmenter(args, volume)
    if out is None and not isinstance(seg, RemoteSegmenter):
        from ..assist.store import default_path  # imports torch

        out = default_path(sammed_home() / "assist", volume.digest, target, seg.backend.model_id)
        output_folder(str(out.parent), "SAMassist folder")
    with cancel_on_sigterm() as token, progress_reporter(args.json, "assist") as progress:
        fit = _fit(seg, masks, out, axis, target, cfg, progress, token)
        result = {
            "output": None if out is None else str(out),
            "target": fit["target"],
            "slices": fit["slices"],
            "steps": fit["steps"],
            "final_loss": None if fit["final"] is None else round(fit["final"], 4),
            "seconds": round(fit["seconds"], 2),
            "model": fit["model"],
        }
        if args.server:
            result["server"] = args.server
        if args.json:
            progress.result(result)
    if not args.json:
        print(json.dumps(result))
    return 0
