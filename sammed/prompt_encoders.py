"""Which prompt encoder decodes a prompt: the model's own (``original``), the population encoder shipped with the
package (``learned``, the default where one exists), or a file (``FILE``, e.g. one ``sammed train-prompts`` wrote).

The shipped encoders live in ``sammed/resources/prompt_encoders/``: ``<name>.pt`` (a SAMassist-format file learned
on the example CT and MR, issue 15), ``<name>.json`` (its card: data, labels, slices, seed, command, base model and
its SHA256, metrics) and the licences of its sources. Loading checks the file's SHA256 against ``SHIPPED`` and the
base model's id and SHA256 against the loaded model's (``assist.store.load_learned``), and reads it with
``weights_only=True``. No torch at import: the file is read when a segmenter first needs it, once per backend.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from .models import file_sha256

RESOURCES = Path(__file__).resolve().parent / "resources" / "prompt_encoders"
CHOICES = ("original", "learned")  # or a file path
DEFAULT = "learned"


class Shipped:
    """A shipped population encoder: its file name and the SHA256 it must have."""

    def __init__(self, name: str, sha256: str) -> None:
        self.name, self.sha256 = name, sha256

    @property
    def path(self) -> Path:
        return RESOURCES / f"{self.name}.pt"

    @property
    def card(self) -> Path:
        return RESOURCES / f"{self.name}.json"


SHIPPED: dict[str, Shipped] = {  # model id -> its shipped encoder (sammed train-prompts --protocol ship)
    "litemedsam": Shipped("litemedsam_clicks", "3229baacf59e2a6924d049cc531dd493547bc537a702c10e0b9ae9e31f839590"),
}


def check_choice(choice: str) -> str:
    """``original``, ``learned`` or an existing file.

    Raises:
        ValueError: anything else.
    """
    choice = str(choice or DEFAULT).strip()
    if choice in CHOICES or Path(choice).expanduser().is_file():
        return choice
    raise ValueError(
        f"--prompt-encoder must be original, learned or a prompt-encoder file; '{choice}' is neither and no file."
    )


def load_file(path: str | Path, backend: Any, sha256: str | None = None) -> Any:
    """The ``RoutedPromptEncoder`` in ``path`` for ``backend``.

    Raises:
        ValueError: a file whose SHA256 is not ``sha256`` (damaged or replaced), not a prompt-encoder file, or
            learned on another base model.
    """
    from .assist.store import load_learned

    if sha256 is not None and file_sha256(path) != sha256:
        raise ValueError(
            f"The prompt encoder file {path} fails its SHA256 check (damaged or replaced); reinstall sammed, or use "
            "--prompt-encoder original."
        )
    return load_learned(path, backend).module


def resolve(backend: Any, choice: str = DEFAULT) -> Any:
    """The base prompt encoder a ``Segmenter`` on ``backend`` uses (None: the model's own).

    ``learned`` gives the shipped encoder of the backend's model when one is shipped and fits these weights (else
    the model's own, with a warning when the weights differ); it is loaded once per backend.

    Raises:
        ValueError: a bad choice; a file that cannot be used (see ``load_file``); a damaged shipped file.
    """
    choice = check_choice(choice)
    if choice == "original" or not hasattr(getattr(backend, "model", None), "prompt_encoder"):
        return None
    loaded = backend.__dict__.setdefault("_sammed_prompt_encoders", {})
    if choice in loaded:
        return loaded[choice]
    if choice != "learned":
        loaded[choice] = load_file(Path(choice).expanduser(), backend)
        return loaded[choice]
    shipped = SHIPPED.get(getattr(backend, "model_id", ""))
    module = None
    if shipped is not None and shipped.path.is_file():
        try:
            module = load_file(shipped.path, backend, shipped.sha256)
        except ValueError as exc:
            if "fails its SHA256" in str(exc):
                raise
            warnings.warn(
                f"The shipped prompt encoder does not fit these weights, using the model's own: {exc}", stacklevel=2
            )
    loaded[choice] = module
    return module
