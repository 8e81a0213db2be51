"""``sammed serve``: one machine (with a GPU) serves the worker protocol over HTTP to Slicer clients and scripts."""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
from pathlib import Path

from ..models import RUNTIMES


def register(sub: argparse._SubParsersAction) -> None:
    """Add the command to ``sammed``'s subparsers."""
    p = sub.add_parser("serve", help="serve the worker protocol over HTTP (a shared GPU machine)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")
    p.add_argument("--model", default="litemedsam", help="model id (see `sammed models`)")
    p.add_argument("--runtime", default="auto", choices=RUNTIMES, help="image encoder runtime (see sammed segment -h)")
    p.add_argument("--token-file", type=Path, help="bearer token file (made on first start, readable by you only)")
    p.add_argument("--max-upload-mb", type=float, default=1024.0, help="largest request body (default 1024 MB)")
    p.add_argument("--cache-gb", type=float, default=4.0, help="memory bound of the embedding cache (default 4 GB)")
    p.add_argument(
        "--volumes-gb",
        type=float,
        default=8.0,
        help="memory bound of the volumes held (default 8 GB; the least recently used is dropped, its client sends it "
        "again when it comes back)",
    )
    p.add_argument(
        "--job-lease-s",
        type=float,
        default=60.0,
        help="cancel a job whose client has not asked for it in this many seconds (default 60)",
    )
    p.add_argument("--ssl-certfile", help="serve HTTPS with this certificate (PEM); or put a reverse proxy in front")
    p.add_argument("--ssl-keyfile", help="the certificate's private key (PEM)")
    p.set_defaults(func=run)


SERVER_MAX_PREEMPTIONS = 2  # a background encode restarted twice for clicks then runs to its end (many users)


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
    state.model_id, state.device, state.runtime = args.model, args.device, args.runtime
    state.max_volume_bytes = int(args.volumes_gb * (1 << 30))
    state.max_preemptions = SERVER_MAX_PREEMPTIONS
    scheme = "https" if args.ssl_certfile else "http"
    print(f"SAMMed server on {scheme}://{args.host}:{args.port}; token in {token_file}")
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        raise ValueError("HTTPS needs both --ssl-certfile and --ssl-keyfile.")
    app = create_app(token, state, args.max_upload_mb, args.job_lease_s)
    tls = {"ssl_certfile": args.ssl_certfile, "ssl_keyfile": args.ssl_keyfile} if args.ssl_certfile else {}
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", **tls)
    return 0
