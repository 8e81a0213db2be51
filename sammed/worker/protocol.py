"""The SAMMed worker protocol (version 1): JSON messages with request ids, arrays carried beside them.

A request is ``{"v": 1, "id": N, "op": name, "args": {...}}``; every reply names the request: ``{"v": 1, "id": N,
"kind": k, ...}`` with ``kind`` one of ``progress`` (``fraction``, ``message``), ``partial`` (``result``: one piece of
a long job, e.g. one propagated slice), ``done`` (``result``), ``cancelled`` (``error``, optional partial
``result``) or ``failed`` (``error``: a sentence the user can read, ``type``: ``bad_request``, ``bad_input``,
``unknown_op``, ``unknown_volume``, ``cancelled`` or ``internal``). The kinds are those of ``sammed.jobs.WorkerEvent``.

Arrays never travel as JSON lists: ``ArrayCodec`` replaces each numpy array in a message by a reference, either
``{"$array": {"dtype", "shape", "zlib"}}`` (small arrays: the zlib-compressed bytes in base64) or
``{"$file": name}`` (large arrays: an ``.npy`` file in the exchange folder both sides share; the reader deletes it).
A transport only moves the JSON text (a pipe line here, an HTTP body for a server) and the exchange files. The
whole protocol is described for users in ``docs/worker-protocol.md``.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import math
import os
import uuid
import zlib
from pathlib import Path
from typing import Any

import numpy as np

PROTOCOL_VERSION = 1
KINDS = ("progress", "partial", "done", "cancelled", "failed")
INLINE_LIMIT = 1 << 20  # arrays up to 1 MiB travel inside the message, larger ones as exchange files
MAX_MESSAGE_CHARS = 64 << 20  # a longer line is refused, not parsed


class ProtocolError(ValueError):
    """A message that breaks the protocol (not JSON, wrong version, missing or wrong fields)."""


class ArrayCodec:
    """Turns numpy arrays in a message into references and back.

    Args:
        exchange_dir: folder for large arrays (None: every array travels inline).
        prefix: start of the file names this side writes (the two sides use different prefixes).
        inline_limit: largest array (bytes) carried inside the message.
    """

    def __init__(self, exchange_dir: str | os.PathLike | None, prefix: str, inline_limit: int = INLINE_LIMIT) -> None:
        self.exchange_dir = Path(exchange_dir) if exchange_dir else None
        self.prefix = prefix
        self.inline_limit = int(inline_limit)
        self._names = itertools.count(1)
        self._session = uuid.uuid4().hex[:8]

    def dump(self, value: Any) -> Any:
        """``value`` with arrays replaced by references (dicts, lists, tuples and dataclasses walked)."""
        if isinstance(value, np.ndarray):
            return self._dump_array(value)
        if isinstance(value, (np.bool_, np.integer, np.floating)):
            return value.item()
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: self.dump(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, dict):
            return {str(k): self.dump(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.dump(v) for v in value]
        return value

    def _dump_array(self, array: np.ndarray) -> dict:
        array = np.ascontiguousarray(array)
        if array.dtype.kind == "O":
            raise ProtocolError("Object arrays cannot be sent to the worker.")
        if self.exchange_dir is None or array.nbytes <= self.inline_limit:
            data = base64.b64encode(zlib.compress(array.tobytes(), 1)).decode("ascii")
            return {"$array": {"dtype": array.dtype.str, "shape": list(array.shape), "zlib": data}}
        name = f"{self.prefix}-{self._session}-{next(self._names)}.npy"
        temp = self.exchange_dir / (name + ".part")
        with open(temp, "wb") as f:  # np.save on a path would add ".npy" to the temporary name
            np.save(f, array, allow_pickle=False)
        os.replace(temp, self.exchange_dir / name)
        return {"$file": name}

    def load(self, value: Any) -> Any:
        """``value`` with references replaced by the arrays (exchange files are deleted once read).

        Raises:
            ProtocolError: a malformed reference, a file outside the exchange folder or a missing one.
        """
        if isinstance(value, dict):
            if "$array" in value:
                return _load_inline(value["$array"])
            if "$file" in value:
                return self._load_file(value["$file"])
            return {k: self.load(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.load(v) for v in value]
        return value

    def _load_file(self, name: Any) -> np.ndarray:
        if self.exchange_dir is None:
            raise ProtocolError("This transport carries no array files; send arrays inline.")
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(".npy"):
            raise ProtocolError(f"Bad array file name {name!r}: a plain .npy name in the exchange folder is needed.")
        path = self.exchange_dir / name
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ProtocolError(f"Could not read array file {name}: {exc}") from None
        path.unlink(missing_ok=True)
        return array


def _load_inline(ref: Any) -> np.ndarray:
    try:
        dtype = np.dtype(ref["dtype"])
        shape = tuple(int(s) for s in ref["shape"])
        if dtype.kind == "O" or any(s < 0 for s in shape):
            raise ValueError("bad dtype or shape")
        raw = zlib.decompress(base64.b64decode(ref["zlib"]))
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    except (KeyError, TypeError, ValueError, zlib.error) as exc:
        raise ProtocolError(f"Malformed inline array: {exc}") from None


def request(request_id: int, op: str, args: dict | None = None) -> dict:
    """A request message (before ``ArrayCodec.dump``)."""
    return {"v": PROTOCOL_VERSION, "id": int(request_id), "op": str(op), "args": args or {}}


def reply(request_id: int, kind: str, **fields: Any) -> dict:
    """A reply message (before ``ArrayCodec.dump``)."""
    if kind not in KINDS:
        raise ValueError(f"Unknown reply kind {kind!r}")
    return {"v": PROTOCOL_VERSION, "id": int(request_id), "kind": kind, **fields}


def to_line(message: dict) -> str:
    """One line of JSON (NaN and infinities refused: the other side may not read them)."""
    return json.dumps(message, allow_nan=False, separators=(",", ":")) + "\n"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in a SAMMed message")


def parse_line(line: str | bytes) -> dict:
    """The message of one line.

    Raises:
        ProtocolError: too long, not JSON, not an object, NaN/Infinity, or another protocol version.
    """
    if len(line) > MAX_MESSAGE_CHARS:
        raise ProtocolError(f"Message of {len(line)} characters is longer than the limit {MAX_MESSAGE_CHARS}.")
    try:
        message = json.loads(line, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise ProtocolError(f"Not a JSON message: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("A message must be a JSON object.")
    if message.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(
            f"Protocol version {message.get('v')!r} is not supported; this worker speaks version {PROTOCOL_VERSION}."
        )
    return message


def check_request(message: dict) -> tuple[int, str, dict]:
    """(id, op, args) of a request.

    Raises:
        ProtocolError: a missing or non-integer id, a missing op, or args that are not an object.
    """
    rid, op, args = message.get("id"), message.get("op"), message.get("args", {})
    if not isinstance(rid, int) or isinstance(rid, bool) or rid < 0:
        raise ProtocolError("A request needs a non-negative integer 'id'.")
    if not isinstance(op, str) or not op:
        raise ProtocolError("A request needs an 'op' name.")
    if not isinstance(args, dict):
        raise ProtocolError("'args' must be a JSON object.")
    return rid, op, args


def finite_floats(values: Any, what: str, count: int | None = None) -> list[float]:
    """``values`` as a list of finite floats (``count`` of them when given).

    Raises:
        ValueError: not a list of numbers, a NaN or infinite value, or the wrong count.
    """
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"{what} must be a list of numbers.")
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a list of numbers.") from None
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{what} has a value that is not finite.")
    if count is not None and len(out) != count:
        raise ValueError(f"{what} needs {count} numbers, got {len(out)}.")
    return out
