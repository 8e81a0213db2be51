"""Options and helpers every command shares: model, intensity and cache arguments, number parsing, progress bars."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..intensity import PRESET_CHOICES
from ..jobs import Cancelled
from ..jobs import CancelToken
from ..jobs import WorkerEvent
from ..models import RUNTIMES
from ..models import sammed_home
from ..server.client import HttpWorkerClient
from ..worker.client import FINAL_KINDS
from ..worker.client import WorkerError
from ..worker.remote import RemoteSegmenter

MODEL_DEFAULTS = {"model": "litemedsam", "device": "auto", "runtime": "auto", "prompt_encoder": "learned"}
SERVER_DECIDES = ("checkpoint", "level", "width", "model", "arch", "sha256", "device", "runtime", "prompt_encoder")
POLL_S = 0.1  # seconds between two looks at a server job's events


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--model, --checkpoint, --arch, --sha256, --device, --runtime."""
    g = p.add_argument_group("model")
    g.add_argument(
        "--model", default=MODEL_DEFAULTS["model"], help="registry id (see `sammed models`); default litemedsam"
    )
    g.add_argument("--checkpoint", help="a weights file of your own instead of the registry's")
    g.add_argument("--arch", help="architecture of --checkpoint: litemedsam, vit_b, vit_l, vit_h")
    g.add_argument("--sha256", help="expected SHA256 of --checkpoint")
    g.add_argument("--device", default=MODEL_DEFAULTS["device"], help="auto (default), cpu, cuda or mps")
    g.add_argument(
        "--runtime",
        default=MODEL_DEFAULTS["runtime"],
        choices=RUNTIMES,
        help="image encoder runtime: auto (default: for LiteMedSAM on the CPU OpenVINO, else ONNX Runtime, when "
        "installed; torch otherwise), torch (the reference), onnx or openvino",
    )
    g.add_argument(
        "--prompt-encoder",
        default=MODEL_DEFAULTS["prompt_encoder"],
        metavar="original|learned|FILE",
        help="learned (default: the population encoder shipped for the model, so clicks work; a box alone uses "
        "whichever was better on its validation slices), original (the model's own) or a file from sammed "
        "train-prompts",
    )


def add_intensity_args(p: argparse.ArgumentParser) -> None:
    """--preset, --level, --width."""
    g = p.add_argument_group("intensity")
    g.add_argument(
        "--preset",
        help=f"intensity preset: {', '.join(PRESET_CHOICES)} (default auto: CT abdomen window or MR percentile clip)",
    )
    g.add_argument("--level", type=float, help="explicit window level (with --width)")
    g.add_argument("--width", type=float, help="explicit window width (with --level)")


def add_cache_args(p: argparse.ArgumentParser) -> None:
    """--cache-dir, --no-disk-cache."""
    p.add_argument("--cache-dir", help="disk embedding cache folder (default: $SAMMED_HOME/embeddings)")
    p.add_argument("--no-disk-cache", action="store_true", help="keep embeddings in memory only")


def add_image_args(p: argparse.ArgumentParser) -> None:
    """--series, --allow-gaps (DICOM folders)."""
    g = p.add_argument_group("DICOM")
    g.add_argument("--series", help="SeriesInstanceUID to read when the folder holds several series")
    g.add_argument("--allow-gaps", action="store_true", help="read a series with missing or unevenly spaced slices")


def add_common_args(p: argparse.ArgumentParser) -> None:
    """The image, model, intensity and cache arguments."""
    add_image_args(p)
    add_model_args(p)
    add_intensity_args(p)
    add_cache_args(p)


def read_image(args: argparse.Namespace) -> tuple[Any, int]:
    """The ``image`` argument's volume (``--series``, ``--allow-gaps`` for DICOM) and the array axis of ``--axis``.

    Raises:
        ValueError: an unreadable, truncated or invalid image, an unknown axis.
    """
    from ..geometry import axis_for_orientation
    from ..io import read_volume

    volume = read_volume(
        args.image, series=getattr(args, "series", None), allow_gaps=getattr(args, "allow_gaps", False)
    )
    return volume, axis_for_orientation(volume.direction_lps, getattr(args, "axis", "axial"))


def check_label_value(value: int | None, what: str) -> None:
    """A label value for a label map: 1..65535 (0 is background).

    Raises:
        ValueError: out of range.
    """
    if value is not None and not 1 <= value <= 65535:
        raise ValueError(f"{what} must be a label value from 1 to 65535 (0 is the background); got {value}.")


def label_dtype(value: int) -> type[np.unsignedinteger]:
    """The smallest unsigned type holding label ``value`` (uint8 or uint16)."""
    return np.uint8 if value < 256 else np.uint16


def check_output_folder(path: str, what: str) -> Path:
    """A folder for a command's output files, not created yet (checked before any work).

    Raises:
        ValueError: it is a file.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{what} '{p}' is a file; give a folder.")
    return p


def output_folder(path: str, what: str) -> Path:
    """A folder for a command's output files, created if missing.

    Raises:
        ValueError: it is a file, or it cannot be created.
    """
    p = check_output_folder(path, what)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"Cannot create {what} '{p}': {exc.strerror or exc}.") from None
    return p


def read_labels_on_grid(path: str, volume: Any, what: str) -> Any:
    """A label map that must lie on ``volume``'s grid (``what`` names it in the message).

    Raises:
        ValueError: unreadable, or another shape, spacing, origin or direction.
    """
    from ..io import read_volume

    labels = read_volume(path)
    if not volume.same_grid(labels):
        raise ValueError(
            f"The {what} '{path}' is not on the image grid: shape {labels.shape_kji} vs {volume.shape_kji} (KJI), "
            "or spacing, origin or direction differ; the annotation must be on the image grid."
        )
    return labels


def make_cache(args: argparse.Namespace) -> Any:
    """The embedding cache the arguments ask for (memory only, or with a disk tier)."""
    from ..cache import EmbeddingCache

    if getattr(args, "no_disk_cache", False):
        return EmbeddingCache()
    return EmbeddingCache(disk_dir=getattr(args, "cache_dir", None) or sammed_home() / "embeddings")


def make_backend(args: argparse.Namespace) -> Any:
    """The model the arguments ask for, with verified weights."""
    from ..models import load_backend

    return load_backend(
        args.model,
        device=args.device,
        checkpoint=args.checkpoint,
        arch=args.arch,
        sha256=args.sha256,
        runtime=getattr(args, "runtime", "auto"),
    )


def make_mapping(args: argparse.Namespace, volume: Any) -> Any:
    """The intensity mapping of the arguments (checked before any model loads)."""
    from ..intensity import make_mapping as mapping_for

    return mapping_for(volume.array_kji, args.preset, args.level, args.width)


def add_server_args(p: argparse.ArgumentParser) -> None:
    """--server, --token-file: do the model work on a ``sammed serve`` machine."""
    g = p.add_argument_group("server")
    g.add_argument("--server", metavar="URL", help="a sammed serve server, e.g. http://gpu-server:8000 (its model)")
    g.add_argument(
        "--token-file", help="the server's token (default: $SAMMED_TOKEN, else ~/.cache/sammed/server-token)"
    )


def server_decided(args: argparse.Namespace) -> list[str]:
    """The options given that a server decides (``SERVER_DECIDES`` set, or left off their defaults)."""
    given = []
    for name in SERVER_DECIDES:
        value = getattr(args, name, None)
        if value is not None and value != MODEL_DEFAULTS.get(name):
            given.append("--" + name)
    return given


def read_token(args: argparse.Namespace) -> str:
    """The server token: ``--token-file``, else ``$SAMMED_TOKEN``, else ``$SAMMED_HOME/server-token``.

    Raises:
        ValueError: none there, or the file cannot be read.
    """
    path = Path(args.token_file) if args.token_file else sammed_home() / "server-token"
    token = "" if args.token_file else os.environ.get("SAMMED_TOKEN", "").strip()
    if not token and path.exists():
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"Cannot read the token file '{path}': {exc.strerror or exc}.") from None
    if not token:
        raise ValueError(f"No token for {args.server}: give --token-file, set SAMMED_TOKEN, or copy it to {path}.")
    return token


def server_client(args: argparse.Namespace) -> Any:
    """The ``HttpWorkerClient`` of ``--server`` (None without it), after the server accepted its token.

    Raises:
        ValueError: options the server decides (model, checkpoint, device, runtime, --level/--width), no token, a
            server that refuses the token or cannot be reached.
    """
    if not getattr(args, "server", None):
        return None
    given = server_decided(args)
    if given:
        raise ValueError(
            "With --server the server's model, device and runtime and the --preset windows are used: drop "
            f"--checkpoint/--level/--width/--model/--arch/--sha256/--device/--runtime (given: {' '.join(given)})."
        )
    client = HttpWorkerClient(args.server, read_token(args))
    try:
        client.call("hello", timeout=120.0)
    except WorkerError as exc:
        if exc.kind == "internal":  # cannot be reached, or failing
            raise ValueError(str(exc)) from None
        where = args.token_file or f"$SAMMED_TOKEN or {sammed_home() / 'server-token'}"
        raise ValueError(f"The server {args.server} refused the token from {where}: {exc}") from None
    return client


def make_segmenter(args: argparse.Namespace, volume: Any, mapping: Any = None) -> Any:
    """A ``Segmenter`` on ``volume`` with the arguments' model, intensity mapping and cache; with ``--server`` a
    ``RemoteSegmenter`` that asks that server (its model, the arguments' preset)."""
    from ..segmenter import Segmenter

    client = server_client(args)
    if client is not None:
        return RemoteSegmenter(client, volume, args.preset or "auto")
    from .. import prompt_encoders

    backend = make_backend(args)
    segmenter = Segmenter(volume, backend, mapping or make_mapping(args, volume), make_cache(args))
    segmenter.base_prompt_encoder = prompt_encoders.resolve(backend, getattr(args, "prompt_encoder", "learned"))
    return segmenter


def check_model_choice(args: argparse.Namespace) -> None:
    """Raises ValueError for an unknown --model before anything is loaded."""
    from ..models import get_spec

    if args.checkpoint is None:
        get_spec(args.model)


def parse_floats(text: str, n: int | None = None, what: str = "value") -> list[float]:
    """Comma-separated numbers.

    Raises:
        ValueError: not numbers, not finite, or not ``n`` of them.
    """
    try:
        vals = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"Cannot read {what} '{text}': give comma-separated numbers.") from None
    if n is not None and len(vals) != n:
        raise ValueError(f"{what} needs {n} numbers, got {len(vals)} in '{text}'.")
    if not all(np.isfinite(vals)):
        raise ValueError(f"{what} needs finite numbers; got '{text}'.")
    return vals


def parse_ints(text: str | None, what: str) -> list[int] | None:
    """Comma-separated whole numbers (None for None)."""
    return None if text is None else [int(v) for v in parse_floats(text, None, what)]


def parse_points(texts: list[str] | None) -> np.ndarray | None:
    """Repeated ``x,y`` options -> Nx2 array (None when there are none)."""
    if not texts:
        return None
    return np.array([parse_floats(t, 2, "point x,y") for t in texts], dtype=float)


def tqdm_progress(desc: str) -> Callable[[float, str], None]:
    """A ``progress(fraction, message)`` callable drawing a tqdm bar on stderr (``.close()`` ends it)."""
    from tqdm import tqdm

    bar = tqdm(total=1000, desc=desc, unit="‰", leave=True, file=sys.stderr, bar_format="{l_bar}{bar}| {postfix}")

    def progress(fraction: float, message: str) -> None:
        bar.n = int(round(1000 * min(max(fraction, 0.0), 1.0)))
        bar.set_postfix_str(message, refresh=True)

    progress.close = bar.close  # type: ignore[attr-defined]
    return progress


@contextmanager
def cancel_on_sigterm() -> Iterator[CancelToken]:
    """A ``CancelToken`` that SIGTERM sets while the block runs (Ctrl+C raises KeyboardInterrupt as usual)."""
    token = CancelToken()
    old = signal.signal(signal.SIGTERM, lambda *_: token.cancel())
    try:
        yield token
    finally:
        signal.signal(signal.SIGTERM, old)


@contextmanager
def progress_reporter(json_lines: bool, desc: str) -> Iterator[Any]:
    """JSON-lines progress on stdout (``--json``) or a progress bar on stderr, closed at the end."""
    from ..jobs import JsonLinesReporter

    if json_lines:
        yield JsonLinesReporter()
        return
    bar = tqdm_progress(desc)
    try:
        yield bar
    finally:
        bar.close()  # type: ignore[attr-defined]


def _cancel_job(client: Any, rid: int) -> None:
    """Cancel server job ``rid``; a server that cannot be reached any more is left to end it (its job lease)."""
    try:
        client.cancel(rid)
    except WorkerError:
        pass


def follow_job(
    client: Any,
    rid: int,
    progress: Callable[[float, str], None],
    should_stop: Callable[[], bool],
    grace_s: float = 30.0,
) -> WorkerEvent:
    """Follow server job ``rid`` to its end, its progress events shown with ``progress``; ``should_stop()``
    (SIGTERM: ``cancel_on_sigterm``) cancels the job on the server and waits up to ``grace_s`` seconds for its
    answer, Ctrl+C cancels it and raises KeyboardInterrupt at once.

    Returns:
        the final event: ``done``, or ``cancelled`` (its ``result`` the job's partial result, or None).

    Raises:
        ValueError: the server refused the input (the message says why).
        Cancelled: cancelled and the server did not answer within ``grace_s``.
        WorkerError: the job failed on the server, or the server cannot be reached.
    """
    deadline = None
    try:
        while True:
            for event in client.drain():
                if event.jobId != rid:
                    continue
                if event.kind == "progress":
                    progress(event.fraction, event.message)
                elif event.kind == "failed":
                    if event.errorType == "bad_input":
                        raise ValueError(event.error)
                    raise WorkerError(f"The server failed: {event.error}", event.errorType or "internal")
                elif event.kind in FINAL_KINDS:
                    return event
            if deadline is None and should_stop():
                _cancel_job(client, rid)
                deadline = time.monotonic() + grace_s
            elif deadline is not None and time.monotonic() > deadline:
                raise Cancelled(f"cancelled; the server did not confirm within {grace_s:.0f} s; nothing was written.")
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        _cancel_job(client, rid)
        raise
