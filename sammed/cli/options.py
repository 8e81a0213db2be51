"""Options and helpers every command shares: model, intensity and cache arguments, number parsing, progress bars."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..intensity import PRESET_CHOICES
from ..jobs import CancelToken


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--model, --checkpoint, --arch, --sha256, --device, --runtime."""
    g = p.add_argument_group("model")
    g.add_argument("--model", default="litemedsam", help="registry id (see `sammed models`); default litemedsam")
    g.add_argument("--checkpoint", help="a weights file of your own instead of the registry's")
    g.add_argument("--arch", help="architecture of --checkpoint: litemedsam, vit_b, vit_l, vit_h")
    g.add_argument("--sha256", help="expected SHA256 of --checkpoint")
    g.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")
    g.add_argument(
        "--runtime",
        default="auto",
        choices=("auto", "torch", "onnx", "openvino"),
        help="image encoder runtime: auto (default: for LiteMedSAM on the CPU OpenVINO, else ONNX Runtime, when "
        "installed; torch otherwise), torch (the reference), onnx or openvino",
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
    from ..models import sammed_home

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


def server_client(args: argparse.Namespace) -> Any:
    """The ``HttpWorkerClient`` of ``--server`` (None without it).

    Raises:
        ValueError: options the server decides (--checkpoint, --level/--width), or no token.
    """
    import os

    from ..models import sammed_home
    from ..server.client import HttpWorkerClient

    if not getattr(args, "server", None):
        return None
    if args.checkpoint or args.level is not None or args.width is not None:
        raise ValueError(
            "With --server the server's model and the --preset windows are used: drop --checkpoint/--level/--width."
        )
    token = os.environ.get("SAMMED_TOKEN", "")
    path = Path(args.token_file) if args.token_file else sammed_home() / "server-token"
    if not token and path.exists():
        token = path.read_text(encoding="utf-8").strip()
    if not token:
        raise ValueError(f"No token for {args.server}: give --token-file, set SAMMED_TOKEN, or copy it to {path}.")
    return HttpWorkerClient(args.server, token)


def make_segmenter(args: argparse.Namespace, volume: Any, mapping: Any = None) -> Any:
    """A ``Segmenter`` on ``volume`` with the arguments' model, intensity mapping and cache; with ``--server`` a
    ``RemoteSegmenter`` that asks that server (its model, the arguments' preset)."""
    from ..segmenter import Segmenter

    client = server_client(args)
    if client is not None:
        from ..worker.remote import RemoteSegmenter

        return RemoteSegmenter(client, volume, args.preset or "auto")
    return Segmenter(volume, make_backend(args), mapping or make_mapping(args, volume), make_cache(args))


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
