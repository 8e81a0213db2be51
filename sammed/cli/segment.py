"""``sammed segment``: one slice from a box and/or clicks; writes a label map on the image grid."""

from __future__ import annotations

import argparse
import json

import numpy as np

from ..prompts import Prompts
from .options import add_common_args
from .options import add_server_args
from .options import check_label_value
from .options import check_model_choice
from .options import label_dtype
from .options import make_mapping
from .options import make_segmenter
from .options import parse_floats
from .options import parse_points
from .options import read_image


def register(sub: argparse._SubParsersAction) -> None:
    """Add the command to ``sammed``'s subparsers."""
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
    add_common_args(p)
    add_server_args(p)
    p.set_defaults(func=run)


def prompts_from_args(args: argparse.Namespace) -> Prompts:
    """The ``Prompts`` of --box, --point and --negative.

    Raises:
        ValueError: none given, or numbers that cannot be read.
    """
    box = None if args.box is None else parse_floats(args.box, 4, "--box x0,y0,x1,y1")
    positive = parse_points(args.point)
    negative = parse_points(args.negative)
    parts = [(p, v) for p, v in ((positive, 1), (negative, 0)) if p is not None]
    if box is None and not parts:
        raise ValueError("Give a prompt: --box x0,y0,x1,y1 and/or --point x,y / --negative x,y.")
    points = np.concatenate([p for p, _ in parts]) if parts else None
    labels = np.concatenate([np.full(len(p), v) for p, v in parts]) if parts else None
    return Prompts.make(box, points, labels)


def run(args: argparse.Namespace) -> int:
    """Segment the slice and write the label map."""
    from .. import geometry
    from ..io import labelmap_output
    from ..io import save_labelmap
    from ..outputs import Outputs
    from ..segmenter import empty_slice_message

    # every check that needs no model runs before the model is loaded, the output's first
    check_label_value(args.label, "--label")
    outputs = Outputs([args.image])
    out = labelmap_output(outputs, args.output, "label map (-o)")
    prompts = prompts_from_args(args)
    volume, axis = read_image(args)
    index = geometry.check_index(volume.shape_kji, axis, args.slice)
    prompts.checked(geometry.slice_shape(volume.shape_kji, axis))
    mapping = make_mapping(args, volume)
    if not getattr(args, "server", None):
        check_model_choice(args)
    s = geometry.extract_slice(volume.array_kji, axis, index)
    if s.min() == s.max():
        raise ValueError(empty_slice_message(axis, index))
    result = make_segmenter(args, volume, mapping).segment(axis, index, prompts)
    labels_kji = np.zeros(volume.shape_kji, dtype=label_dtype(args.label))
    geometry.insert_slice(labels_kji, axis, index, result.mask_hw.astype(labels_kji.dtype) * args.label)
    with outputs.commit() as temps:
        save_labelmap(temps[out], labels_kji, volume, {args.label: args.name})
    print(
        json.dumps(
            {
                "output": str(out),
                "axis": axis,
                "slice": index,
                "pixels": int(result.mask_hw.sum()),
                "predicted_iou": round(result.iou, 4),
            }
        )
    )
    return 0
