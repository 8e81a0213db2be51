"""``sammed demo``: the bundled example CT -> mask, PNG overlay, Dice table."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the command to ``sammed``'s subparsers."""
    p = sub.add_parser("demo", help="segment the bundled example CT: mask, PNG overlay, Dice table")
    p.add_argument("--out", default="out/demo", help="output folder (created)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo and print its Dice table."""
    from ..demo import run_demo
    from .options import output_folder

    output_folder(args.out, "--out")
    summary = run_demo(args.out, args.device)
    print(summary["table"])
    print(f"Wrote {', '.join(summary['outputs'])} to {args.out}")
    return 0
