"""The worker process: protocol lines on stdin/stdout, log on stderr.

Started by ``client.WorkerClient`` (in Slicer with Slicer's own Python, ``PythonSlicer``, so the PyTorch
extension's torch is the one used). Its standard output carries only protocol lines: anything a library prints is
sent to standard error (the worker log) instead. The process ends on ``shutdown``, or when its input closes (the
client, e.g. Slicer, has gone), so it never outlives the application.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from pathlib import Path

from . import protocol
from .ops import WorkerState
from .server import WorkerServer


def main(argv: list[str] | None = None) -> int:
    """Serve requests until ``shutdown`` or the end of input. Returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m sammed.worker", description=__doc__)
    parser.add_argument("--exchange", type=Path, help="folder shared with the client for large arrays")
    parser.add_argument("--model", default="litemedsam", help="model id (loaded on first use)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    opts = parser.parse_args(argv)
    if opts.exchange is not None and not opts.exchange.is_dir():
        parser.error(f"--exchange {opts.exchange} is not a folder")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", newline="\n")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints go to the log, never into the protocol
    lock = threading.Lock()

    def send(message: dict) -> None:
        line = protocol.to_line(message)
        with lock:
            out.write(line)
            out.flush()

    state = WorkerState()
    state.model_id, state.device = opts.model, opts.device
    server = WorkerServer(send, protocol.ArrayCodec(opts.exchange, prefix="w"), state)
    logging.getLogger("sammed.worker").info("worker %s ready (protocol %s)", os.getpid(), protocol.PROTOCOL_VERSION)
    try:
        for line in sys.stdin.buffer:
            if line.strip():
                server.handle(line)
            if server.stopping.is_set():
                break
    finally:
        server.close()
        out.flush()
    return 0
