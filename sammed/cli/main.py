"""``sammed``'s parser and error handling; each command lives in its own file and registers itself here."""

from __future__ import annotations

import argparse
import logging
import sys

from .. import __version__
from ..jobs import EXIT_BAD_INPUT
from ..jobs import EXIT_CANCELLED
from ..jobs import Cancelled
from . import assist
from . import cache
from . import demo
from . import embed
from . import evaluate
from . import models
from . import propagate
from . import segment
from . import serve
from . import train_prompts

COMMANDS = (segment, embed, assist, propagate, evaluate, models, cache, demo, serve, train_prompts)


def build_parser() -> argparse.ArgumentParser:
    """The parser with every command."""
    parser = argparse.ArgumentParser(prog="sammed", description="Segment CT/MR with Segment-Anything-family models.")
    parser.add_argument("--version", action="version", version=f"sammed {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``sammed`` with ``argv`` (default: the process's arguments); returns the exit code."""
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
