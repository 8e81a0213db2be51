"""Python dependencies and model readiness of SAMMed inside Slicer: what is missing, and making it available.

- torch and torchvision come from the PyTorch extension (``PyTorchUtils``); SAMMed never pip-installs them, but asks
  that extension for at least ``MINIMUM_TORCH`` / ``MINIMUM_TORCHVISION`` and checks the result.
- The other packages are listed with ``>=`` minimums in ``Resources/requirements.txt`` and are installed on first
  use, on the main thread, only after the user agreed.
- ``prepareModel`` walks a module through it all (PyTorch, packages, the model's licence, its download), asking
  through a ``confirm`` callable: both modules pass Slicer's dialog, tests pass a function. Nothing here opens a
  dialog itself or imports torch or a model library at module import.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REQUIREMENTS_FILE = Path(__file__).resolve().parent / "Resources" / "requirements.txt"
MINIMUM_TORCH = "2.1"
MINIMUM_TORCHVISION = "0.16"  # the same minimums as pyproject.toml
TORCH_PACKAGES = (("torch", "PyTorch", MINIMUM_TORCH), ("torchvision", "torchvision", MINIMUM_TORCHVISION))
LICENCE_SETTING = "SAMMed/AcceptedLicence/"


class InstallError(RuntimeError):
    """A dependency could not be made available; the message says what the user can do."""


@dataclass(frozen=True)
class Requirement:
    name: str
    minimum: str = ""

    @property
    def spec(self) -> str:
        return f"{self.name}>={self.minimum}" if self.minimum else self.name


@dataclass(frozen=True)
class Problem:
    """A requirement that is not met: ``installed`` is None when the package is missing."""

    requirement: Requirement
    installed: str | None

    def describe(self) -> str:
        if self.installed is None:
            return f"{self.requirement.name} (not installed; needs {self.requirement.spec})"
        return f"{self.requirement.name} {self.installed} (too old; needs {self.requirement.spec})"


def parseRequirements(text: str) -> list[Requirement]:
    """``name>=version`` lines (comments and blank lines ignored).

    Raises:
        ValueError: a line that is not ``name`` or ``name>=version``.
    """
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(?:>=\s*([0-9][0-9A-Za-z.]*))?", line)
        if match is None:
            raise ValueError(f"Unsupported requirement line '{line}': use 'name>=version'.")
        out.append(Requirement(match.group(1), match.group(2) or ""))
    return out


def requirements(path: str | Path = REQUIREMENTS_FILE) -> list[Requirement]:
    return parseRequirements(Path(path).read_text(encoding="utf-8"))


def versionTuple(version: str) -> tuple[int, ...]:
    """Numeric release part of a version (``2.5.1+cu121`` -> (2, 5, 1)); enough for ``>=`` checks."""
    parts = []
    for piece in re.split(r"[.+\-]", version):
        match = re.match(r"\d+", piece)
        if match is None:
            break
        parts.append(int(match.group()))
    return tuple(parts)


def installedVersion(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def check(reqs: list[Requirement] | None = None) -> list[Problem]:
    """The requirements that are missing or older than their minimum (empty when all are met)."""
    problems = []
    for req in requirements() if reqs is None else reqs:
        installed = installedVersion(req.name)
        if installed is None or (req.minimum and versionTuple(installed) < versionTuple(req.minimum)):
            problems.append(Problem(req, installed))
    return problems


def torchProblem() -> str | None:
    """None when recent enough torch and torchvision are installed, else a sentence saying what to do."""
    for name, label, minimum in TORCH_PACKAGES:
        installed = installedVersion(name)
        if installed is None:
            return f"{label} is not installed. Install it from the PyTorch extension (module PyTorch Utils)."
        if versionTuple(installed) < versionTuple(minimum):
            return f"{label} {installed} is too old; SAMMed needs {minimum} or later (module PyTorch Utils)."
    return None


def installTorch(askConfirmation: bool = True):
    """Install or upgrade torch and torchvision through the PyTorch extension (Slicer only). Returns torch.

    ``PyTorchUtilsLogic.installTorch(askConfirmation, forceComputationBackend, torchVersionRequirement,
    torchvisionVersionRequirement)`` runs ``ltt install torch<requirement> torchvision<requirement>``: without a
    requirement an installed old torch satisfies it and is kept, so the minimums are passed, and checked afterwards.

    Raises:
        InstallError: the PyTorch extension is missing, the user declined, or torch is still missing or too old
            (an old torch already imported in this session needs a restart of Slicer).
    """
    try:
        import PyTorchUtils  # the PyTorch extension's module (EXTENSION_DEPENDS PyTorch)
    except ImportError as exc:
        raise InstallError(
            "The PyTorch extension is not installed. Install 'PyTorch' from the Extensions Manager and restart Slicer."
        ) from exc
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
        askConfirmation=askConfirmation,
        torchVersionRequirement=f">={MINIMUM_TORCH}",
        torchvisionVersionRequirement=f">={MINIMUM_TORCHVISION}",
    )
    if torch is None:
        raise InstallError("PyTorch is needed to run the segmentation models; it was not installed.")
    importlib.invalidate_caches()
    problem = torchProblem()
    if problem:
        raise InstallError(f"After installing PyTorch: {problem}")
    loaded = str(getattr(torch, "__version__", ""))
    if versionTuple(loaded) < versionTuple(MINIMUM_TORCH):
        raise InstallError(f"PyTorch {loaded} is still loaded in this session: restart Slicer to use the new version.")
    return torch


def installPackages(problems: list[Problem]) -> None:
    """pip-install the given requirements inside Slicer (main thread; call only after the user agreed).

    Slicer 5.12+: ``slicer.packaging.pip_ensure`` (``Base/Python/slicer/packaging.py``, a submodule that ``import
    slicer`` does not load) with ``prompt_install=False``, since the user already agreed (its default asks again);
    it still offers a restart when an updated package was already imported. Slicer 5.10 (no ``slicer.packaging``):
    ``slicer.util.pip_install`` with one argument per requirement.

    Raises:
        InstallError: the installation failed or a requirement is still not met afterwards.
    """
    import slicer

    specs = [p.requirement.spec for p in problems]
    if not specs:
        return
    logging.info("SAMMed: installing %s", ", ".join(specs))
    try:
        try:
            import slicer.packaging as packaging
        except ImportError:
            packaging = None
        if packaging is not None and hasattr(packaging, "pip_ensure"):
            packaging.pip_ensure(specs, prompt_install=False, requester="SAMMed")
        else:
            slicer.util.pip_install(specs)
    except Exception as exc:
        raise InstallError(f"Installing {', '.join(specs)} failed: {exc}") from exc
    importlib.invalidate_caches()
    still = check([p.requirement for p in problems])
    if still:
        raise InstallError(
            "Still missing after installation: "
            + "; ".join(p.describe() for p in still)
            + ". Restart Slicer and try again."
        )


# ---------------------------------------------------------------------- model readiness
def modelInfo(modelId: str) -> dict:
    """Description, licence, size, whether the weights are here (not hashed here: loading verifies them) and
    whether they can be downloaded.

    Raises:
        ValueError: unknown model id.
    """
    from sammed import models

    spec = models.get_spec(modelId)
    return {
        "description": spec.description,
        "licence": spec.licence,
        "size_mb": round(spec.size / 1e6, 1),
        "present": models.weights_path(spec) is not None,
        "downloadable": bool(spec.url),
    }


def modelStatusText(modelId: str) -> str:
    """One line for the module panel: description, licence, size and whether the weights are here."""
    try:
        info = modelInfo(modelId)
    except ValueError as exc:
        return str(exc)
    if info["present"]:
        state = "weights present (SHA256 checked when loaded)"
    else:
        state = "download on first use" if info["downloadable"] else "installed on first use"
    return f"{info['description']} ({info['licence']}, {info['size_mb']} MB): {state}"


def ensureModelReadyInApp(modelId: str, startDownload: Callable[[str], Any]) -> bool:
    """``prepareModel`` inside the Slicer application: Slicer's dialogs ask, ``qt.QSettings`` keeps the accepted
    licences, an installation error is shown. Returns whether the model can be loaded now."""
    import qt
    import slicer

    try:
        return prepareModel(modelId, slicer.util.confirmOkCancelDisplay, qt.QSettings(), startDownload)
    except InstallError as exc:
        slicer.util.errorDisplay(str(exc))
        return False


def prepareModel(
    modelId: str, confirm: Callable[[str], bool], settings: Any, startDownload: Callable[[str], Any]
) -> bool:
    """Make ``modelId`` usable: PyTorch, the Python packages, the licence and the weights, each after asking.

    Args:
        confirm: ``confirm(question) -> bool`` (in Slicer ``slicer.util.confirmOkCancelDisplay``).
        settings: keeps accepted licences (``value(key)`` / ``setValue(key, value)``, e.g. ``qt.QSettings()``).
        startDownload: starts the weights' download in the background (the model is not ready until it is done).

    Returns:
        True when the model can be loaded now; False when the user declined or a download was started.

    Raises:
        InstallError: an installation failed (the message says what to do).
    """
    problem = torchProblem()
    if problem:
        if not confirm(problem + "\n\nInstall PyTorch now?"):
            return False
        installTorch(askConfirmation=False)
    problems = check()
    if problems:
        text = "SAMMed needs these Python packages:\n" + "\n".join(p.describe() for p in problems)
        if not confirm(text + "\n\nInstall them now?"):
            return False
        installPackages(problems)
    info = modelInfo(modelId)
    if not settings.value(LICENCE_SETTING + modelId):
        text = (
            f"Model {modelId}: {info['description']}\nLicence: {info['licence']}. Size: {info['size_mb']} MB."
            "\n\nAccept the licence and use this model?"
        )
        if not confirm(text):
            return False
        settings.setValue(LICENCE_SETTING + modelId, True)
    if not info["present"] and info["downloadable"]:
        if not confirm(f"Download the {modelId} weights ({info['size_mb']} MB)? They are checked with SHA256."):
            return False
        startDownload(modelId)
        return False
    return True
