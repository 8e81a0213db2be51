"""Where SAMMed's model work runs: on this computer (a ``sammed`` worker process) or on a ``sammed serve`` server.

The choice is the user's, for every scene and module (the session is shared), so it is an application setting, not
scene data: a scene saved and sent to a colleague carries neither the server nor its token. It is kept in
``compute.json`` in SAMMed's home folder (``sammed.models.sammed_home()``; in Slicer under its cache path), written
readable by its owner only because it holds tokens (one per server URL, so switching back and forth asks nothing
again). An empty URL means this computer. MRML-free and Qt-free: the "Compute on" section of both modules
(``ComputeOnSection``) and ``ModelSession`` use it, tests run it in plain Python.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from pathlib import Path

from sammed.models import sammed_home

FILE_NAME = "compute.json"


def settingsPath() -> Path:
    return sammed_home() / FILE_NAME


def checkURL(url: str) -> str:
    """``url`` without a trailing slash ("" for this computer).

    Raises:
        ValueError: not an http(s) URL with a host.
    """
    url = (url or "").strip().rstrip("/")
    if not url:
        return ""
    parts = urllib.parse.urlparse(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not a server address: give it as https://host:port (or leave it empty).")
    return url


def _read() -> dict:
    try:
        data = json.loads(settingsPath().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _tokens(data: dict) -> dict:
    tokens = data.get("tokens")
    return tokens if isinstance(tokens, dict) else {}


def load() -> tuple[str, str]:
    """(server URL, its token); ("", "") for this computer or when nothing was saved (or the file is unreadable)."""
    data = _read()
    url = str(data.get("server", "") or "")
    return url, str(_tokens(data).get(url, "") or "")


def save(url: str, token: str = "") -> str:
    """Remember the choice (and the server's token); returns the URL as kept.

    Raises:
        ValueError: a bad URL, or a server without a token (nothing is written then).
    """
    url = checkURL(url)
    token = (token or "").strip()
    tokens = _tokens(_read())
    if url and not (token or tokens.get(url)):
        raise ValueError(f"The server {url} needs its token (the file sammed serve wrote, server-token).")
    if url and token:
        tokens[url] = token
    path = settingsPath()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"server": url, "tokens": tokens}, f, indent=1)
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)
    return url
