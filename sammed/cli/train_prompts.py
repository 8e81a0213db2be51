"""``sammed train-prompts``: learn the population prompt encoder on the bundled CT and MR, evaluate it, write it with
its card (the shipped ``sammed/resources/prompt_encoders/litemedsam_clicks.pt`` is ``--protocol ship``)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from .options import check_output_folder
from .options import make_cache
from .options import output_folder
from .options import tqdm_progress

PROTOCOL_CHOICES = ("ship", "label-split", "ct-to-mr", "mr-to-ct")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the command to ``sammed``'s subparsers."""
    p = sub.add_parser(
        "train-prompts",
        help="learn the population prompt encoder (clicks) on the bundled CT and MR, evaluate it, write it + card",
    )
    p.add_argument(
        "--protocol",
        choices=PROTOCOL_CHOICES,
        default="ship",
        help="ship (every label of both volumes; the shipped file), label-split (half the CT's labels, "
        "evaluated on the others), ct-to-mr or mr-to-ct (leave one volume out)",
    )
    p.add_argument("--steps", type=int, default=300, help="optimisation steps (default 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-slices", type=int, default=5, help="evaluation slices per label (default 5)")
    p.add_argument("--device", default="cpu", help="torch device for the fit (default cpu)")
    p.add_argument("--runtime", default="auto", help="image encoder runtime (see sammed segment -h)")
    p.add_argument("--cache-dir", help="disk cache of embeddings (default ~/.cache/sammed/embeddings)")
    p.add_argument("--no-disk-cache", action="store_true", help="keep embeddings in memory only")
    p.add_argument("--out", default="out/prompt-encoders", help="folder for <protocol>.pt, .json and .md")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train, evaluate, write ``<protocol>.pt`` (the encoder), ``.json`` (its card) and ``.md`` (the table)."""
    from ..assist import recipes
    from ..assist.store import save_learned
    from ..evaluate.interactive import compare_markdown
    from ..models import file_sha256
    from ..models import load_backend

    if args.steps < 1 or args.eval_slices < 1:
        raise ValueError("--steps and --eval-slices must be at least 1.")
    out = check_output_folder(args.out, "--out")
    backend = load_backend("litemedsam", device=args.device, runtime=args.runtime)
    config = recipes.population_config(args.steps, args.seed)
    config.device = args.device
    progress = tqdm_progress(f"train-prompts {args.protocol}")
    try:
        learned, report = recipes.run_protocol(
            args.protocol, backend, make_cache(args), config, args.eval_slices, progress
        )
    finally:
        progress.close()  # type: ignore[attr-defined]
    output_folder(args.out, "--out")
    path = save_learned(learned, out / f"{args.protocol}.pt")
    command = "sammed train-prompts " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["train-prompts"] else [])
    data = {k: file_sha256(v) for k, v in _example_files().items()}
    card = recipes.card(report, learned, command.strip(), file_sha256(path), data)
    (out / f"{args.protocol}.json").write_text(recipes.dumps(card) + "\n", encoding="utf-8")
    tables = [
        f"## {name}\n\n" + compare_markdown({k: ev[k] for k in ("original", "learned")})
        for name, ev in report["evaluation"].items()
    ]
    (out / f"{args.protocol}.md").write_text(
        f"# sammed train-prompts --protocol {args.protocol}\n\n" + "\n".join(tables), encoding="utf-8"
    )
    print("\n".join(tables))
    print(f"wrote {path} (SHA256 {card['file_sha256']}), its card and table in {out}")
    return 0


def _example_files() -> dict[str, Path]:
    from ..demo import example_paths

    return {name: Path(p) for name, p in example_paths().items()}
