"""Small helpers the tests share."""

from __future__ import annotations

import importlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import pytest


def require(module: str, hint: str) -> ModuleType:
    """Import ``module`` or fail loudly with ``hint``: the test command installs every test dependency, so a
    missing one is an error to fix, never a reason to skip tests quietly."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pytest.fail(f"{module} is missing ({exc}); {hint}", pytrace=False)


@contextmanager
def live_server(token: str, state: Any, port: int | None = None, **options: Any) -> Iterator[tuple[str, Any]]:
    """A real ``sammed serve`` app on 127.0.0.1 (uvicorn in a thread) around ``state``: yields (url, app).
    ``port``: a given one (a server started again where the last one was), else a free one; ``options`` go to
    ``create_app`` (``max_upload_mb``, ``job_lease_s``)."""
    uvicorn = require("uvicorn", "the server tests need uvicorn: run bash scripts/test.sh")
    from sammed.server.app import create_app

    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    app = create_app(token, state, **options)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    end = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < end, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(10)
        app.state.hub.close()
