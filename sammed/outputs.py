"""The files a command writes: checked before any work, written to temporary files, moved into place together.

``Outputs`` is every command's guard against destroying a user's files:

- ``add(path, suffixes)`` refuses, before any model loads, an output that is (by ``os.path.realpath`` or, for hard
  links, ``os.path.samefile``) one of the command's inputs or another of its outputs, a folder, in a folder that
  does not exist, is a file or cannot be written, or with a suffix the command cannot write;
- ``commit()`` (a context manager) hands out a temporary file per output in the output's own folder (same suffix,
  so writers pick the right format); when the block ends without an error every temporary file is moved into
  place, each with the mode of the file it replaces or, for a new file, the user's umask; on any error they are all
  deleted and no output appears.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterable
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_PREFIX = ".sammed-"


def _same_file(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _new_file_mode() -> int:
    """0o666 less the process's umask (what ``open(path, "w")`` would give a new file)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _check_folder(path: Path, what: str) -> None:
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise ValueError(f"Cannot write {what} '{path}': '{parent}' is a file, not a folder.")
    if not parent.is_dir():
        raise ValueError(f"Cannot write {what} '{path}': folder '{parent}' does not exist; create it first.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"Cannot write {what} '{path}': folder '{parent}' is not writable.")


class Outputs:
    """The outputs of one command, guarded against its inputs and each other.

    Args:
        inputs: the files and folders the command reads (None entries are skipped).
    """

    def __init__(self, inputs: Iterable[str | os.PathLike | None]) -> None:
        self.inputs = [Path(p) for p in inputs if p is not None]
        self.paths: list[Path] = []

    def add(self, path: str | os.PathLike, suffixes: Iterable[str], what: str = "output") -> Path:
        """Check one output file; returns it as a ``Path``.

        Raises:
            ValueError: see the module text (nothing has been written).
        """
        p = Path(path)
        allowed = tuple(suffixes)
        if p.is_dir():
            raise ValueError(f"Cannot write {what} '{p}': it is a folder; give a file name.")
        if not any(p.name.lower().endswith(s) for s in allowed):
            raise ValueError(f"Cannot write {what} '{p.name}': use one of {', '.join(allowed)}.")
        _check_folder(p, what)
        for other in self.inputs:
            if _same_file(p, other):
                raise ValueError(f"The {what} '{p}' is an input of this command ('{other}'); choose another name.")
        for other in self.paths:
            if _same_file(p, other):
                raise ValueError(f"The {what} '{p}' is given twice as an output; choose two different names.")
        self.paths.append(p)
        return p

    @contextmanager
    def commit(self) -> Iterator[dict[Path, Path]]:
        """{output: temporary file} to write; moved into place together when the block succeeds."""
        temps: dict[Path, Path] = {}
        try:
            for p in self.paths:
                suffix = "".join(p.suffixes) or ".tmp"
                fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=suffix, dir=p.parent)
                os.close(fd)
                temps[p] = Path(name)
            yield temps
            for p, tmp in temps.items():
                mode = stat.S_IMODE(p.stat().st_mode) if p.exists() else _new_file_mode()
                os.chmod(tmp, mode)
            for p, tmp in temps.items():
                os.replace(tmp, p)
        finally:
            for tmp in temps.values():
                if tmp.exists():
                    tmp.unlink()
