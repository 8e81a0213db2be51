"""``sammed cache``: size of the disk embedding cache, or clear it.

Only a folder marked as a SAMMed cache is counted or cleared, and only its own entries (see ``sammed.cache``):
``clear`` on any other non-empty folder is an error (exit 2) that deletes nothing.
"""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    """Add the command to ``sammed``'s subparsers."""
    p = sub.add_parser("cache", help="show or clear the disk embedding cache")
    p.add_argument("action", choices=["info", "clear"], nargs="?", default="info")
    p.add_argument("--cache-dir")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the cache's size, or clear it.

    Raises:
        ValueError: ``clear`` on a folder that is not a SAMMed cache, or whose entries cannot all be deleted.
    """
    from ..cache import MARKER_NAME
    from ..cache import EmbeddingCache
    from ..models import sammed_home

    cache = EmbeddingCache(disk_dir=args.cache_dir or sammed_home() / "embeddings")
    state = cache.disk_state()
    if args.action == "clear":
        if state in ("missing", "empty"):
            print(f"Nothing to clear: {cache.disk_dir} {'does not exist' if state == 'missing' else 'is empty'}.")
            return 0
        freed = cache.clear_disk()
        print(f"Cleared {freed / 1e6:.1f} MB from {cache.disk_dir}")
        return 0
    files, size = cache.disk_usage()
    info: dict[str, object] = {"folder": str(cache.disk_dir), "entries": files, "megabytes": round(size / 1e6, 1)}
    if state == "foreign":
        info["note"] = f"not a SAMMed cache (no {MARKER_NAME}): sammed does not write or delete there"
    elif state == "unusable":
        info["note"] = "not a usable folder"
    elif state == "legacy":
        info["note"] = f"an older SAMMed cache without {MARKER_NAME}: adopted (marked) on first use"
    elif state == "missing":
        info["note"] = "does not exist yet"
    print(json.dumps(info))
    return 0
