"""``sammed cache``: size of the disk embedding cache, or clear it."""

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
    """Print the cache's size, or clear it."""
    from ..cache import EmbeddingCache
    from ..models import sammed_home

    cache = EmbeddingCache(disk_dir=args.cache_dir or sammed_home() / "embeddings")
    if args.action == "clear":
        freed = cache.clear_disk()
        print(f"Cleared {freed / 1e6:.1f} MB from {cache.disk_dir}")
    else:
        files, size = cache.disk_usage()
        print(json.dumps({"folder": str(cache.disk_dir), "entries": files, "megabytes": round(size / 1e6, 1)}))
    return 0
