"""``sammed eval``: simulated users on a labelled volume (interactive, SAMassist or propagation protocol)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING
from typing import Any

from .options import add_common_args
from .options import check_output_folder
from .options import make_segmenter
from .options import output_folder
from .options import read_image
from .options import read_labels_on_grid
from .options import tqdm_progress

if TYPE_CHECKING:
    from ..segmenter import Segmenter


PROTOCOLS = ("interactive", "assist", "propagation")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the command to ``sammed``'s subparsers."""
    p = sub.add_parser("eval", help="simulated-user evaluation on a labelled volume (JSON + Markdown)")
    p.add_argument("image", help="image file or DICOM folder")
    p.add_argument("labels", help="reference label map on the same grid")
    p.add_argument("--protocol", choices=PROTOCOLS, default="interactive")
    p.add_argument("--labels", dest="label_spec", help="comma-separated names or values (default: 8 largest)")
    p.add_argument("--label-names", help="JSON file of label names (default: labels.json beside the label map)")
    p.add_argument("--axis", default="axial")
    p.add_argument(
        "--slices-per-label",
        type=int,
        default=5,
        help="slices evaluated per label (interactive; assist: held-out slices), 0 = all",
    )
    p.add_argument("--generators", help="propagation: comma-separated generators and oracles (default: all)")
    p.add_argument("--ablation-labels", help="propagation: labels of the SAP-Net ablation (default: no ablation)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/eval", help="output folder for eval_<protocol>.json and .md")
    add_common_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the protocol; write ``eval_<protocol>.json`` and ``.md`` into ``--out`` and print the table."""
    from ..evaluate.labels import load_label_names
    from ..evaluate.labels import resolve_labels
    from ..outputs import Outputs

    out = check_output_folder(args.out, "--out")  # created only once the inputs are known to be good
    volume, axis = read_image(args)
    labels = read_labels_on_grid(args.labels, volume, "label map")
    names = load_label_names(args.labels, args.label_names)
    label_ids = resolve_labels(args.label_spec, labels.array_kji, names)
    ablation = list(resolve_labels(args.ablation_labels, labels.array_kji, names)) if args.ablation_labels else None
    output_folder(args.out, "--out")
    outputs = Outputs([args.image, args.labels, args.label_names])
    json_out = outputs.add(out / f"eval_{args.protocol}.json", (".json",), "result")
    md_out = outputs.add(out / f"eval_{args.protocol}.md", (".md",), "table")
    encoders = [c.strip() for c in str(args.prompt_encoder).split(",") if c.strip()]
    if len(encoders) > 1 and args.protocol != "interactive":
        raise ValueError("Several --prompt-encoder choices are compared by --protocol interactive only.")
    args.prompt_encoder = encoders[0] if encoders else "learned"
    segmenter = make_segmenter(args, volume)
    progress = tqdm_progress(f"eval {args.protocol}")
    try:
        if len(encoders) > 1:
            result, table = _compare_encoders(args, segmenter, labels.array_kji, label_ids, axis, encoders, progress)
        else:
            result, table = _run_protocol(args, segmenter, labels.array_kji, label_ids, axis, ablation, progress)
    finally:
        progress.close()  # type: ignore[attr-defined]
    title = f"# sammed eval --protocol {args.protocol}: {volume.name}, model {segmenter.backend.model_id}\n\n"
    with outputs.commit() as temps:
        temps[json_out].write_text(json.dumps(result, indent=1, default=float))
        temps[md_out].write_text(title + table)
    print(table)
    return 0


def _compare_encoders(
    args: argparse.Namespace,
    segmenter: Segmenter,
    labels_kji: Any,
    label_ids: dict[str, int],
    axis: int,
    encoders: list[str],
    progress: Any,
) -> tuple[dict, str]:
    """The interactive protocol once per prompt encoder (same slices, seeds and embeddings), side by side."""
    from .. import prompt_encoders
    from ..evaluate.interactive import compare_markdown
    from ..evaluate.interactive import run_interactive_protocol

    results = {}
    for choice in encoders:
        segmenter.base_prompt_encoder = prompt_encoders.resolve(segmenter.backend, choice)
        results[choice] = run_interactive_protocol(
            segmenter, labels_kji, label_ids, axis, args.slices_per_label or None, args.seed, progress
        )
    return {"protocol": "interactive", "prompt_encoders": results}, compare_markdown(results)


def _run_protocol(
    args: argparse.Namespace,
    segmenter: Segmenter,
    labels_kji: Any,
    label_ids: dict[str, int],
    axis: int,
    ablation: list[str] | None,
    progress: Any,
) -> tuple[dict, str]:
    if args.protocol == "interactive":
        from ..evaluate.interactive import interactive_markdown
        from ..evaluate.interactive import run_interactive_protocol

        result = run_interactive_protocol(
            segmenter, labels_kji, label_ids, axis, args.slices_per_label or None, args.seed, progress
        )
        return result, interactive_markdown(result)
    if args.protocol == "assist":
        from ..evaluate.assist import assist_markdown
        from ..evaluate.assist import run_assist_protocol

        result = run_assist_protocol(
            segmenter,
            labels_kji,
            label_ids,
            seed=args.seed,
            axis=axis,
            max_eval_slices=args.slices_per_label or None,
            progress=progress,
        )
        return result, assist_markdown(result)
    from ..evaluate.propagation import ALL_COLUMNS
    from ..evaluate.propagation import propagation_markdown
    from ..evaluate.propagation import run_propagation_protocol

    generators = tuple(args.generators.split(",")) if args.generators else ALL_COLUMNS
    unknown = [g for g in generators if g not in ALL_COLUMNS]
    if unknown:
        raise ValueError(f"Unknown generator {unknown[0]!r}; use some of {', '.join(ALL_COLUMNS)}.")
    result = run_propagation_protocol(
        segmenter,
        labels_kji,
        label_ids,
        generators,
        seed=args.seed,
        axis=axis,
        progress=progress,
        ablation=ablation is not None,
        ablation_labels=ablation,
    )
    return result, propagation_markdown(result)
