"""``sammed serve``: one machine (with a GPU) serves the worker protocol over HTTP to Slicer clients and scripts."""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add the command to ``sammed``'s subparsers."""
    p = sub.add_parser("serve", help="serve the worker protocol over HTTP (a shared GPU machine)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")
    p.add_argument("--model", default="litemedsam", help="model id (see `sammed models`)")
    p.add_argument("--token-file", type=Path, help="bearer token file (made on first start, readable by you only)")
    p.add_argument("--max-upload-mb", type=float, default=1024.0, help="largest request body (default 1024 MB)")
    p.add_argument("--cache-gb", type=float, default=4.0, help="memory bound of the embedding cache (default 4 GB)")
    p.set_defaults(func=run)


def read_or_make_token(path: Path) -> str:
    """The token in ``path``, or a new random one written there (mode 0600) on first start.

    Raises:
        ValueError: an empty token file, or one others can read.
    """
    if path.exists():
        if os.name != "nt" and path.stat().st_mode & 0o077:
            raise ValueError(f"Token file {path} can be read by other users; chmod 600 it.")
        token = path.read_text(encoding="utf-8").strip()
        if not token:
            raise ValueError(f"Token file {path} is empty; delete it to make a new token.")
        return token
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    return token


def run(args: argparse.Namespace) -> int:
    """Start the server (blocks until stopped).

    Raises:
        ValueError: the server packages are missing, or a bad token file.
    """
    try:
        import uvicorn
    except ImportError:
        raise ValueError("sammed serve needs FastAPI and uvicorn: pip install 'sammed[server]'.") from None

    from ..cache import EmbeddingCache
    from ..models import sammed_home
    from ..server.app import create_app
    from ..worker.ops import WorkerState

    token_file = args.token_file or sammed_home() / "server-token"
    token = read_or_make_token(token_file)
    loopback = args.host == "localhost" or ipaddress.ip_address(args.host).is_loopback
    if not loopback and not token:
        raise ValueError("Refusing to listen on a non-loopback address without a token.")
    state = WorkerState(cache=EmbeddingCache(max_bytes=int(args.cache_gb * (1 << 30))))
    state.model_id, state.device = args.model, args.device
    print(f"SAMMed server on http://{args.host}:{args.port}; token in {token_file}")
    uvicorn.run(create_app(token, state, args.max_upload_mb), host=args.host, port=args.port, log_level="info")
    return 0
