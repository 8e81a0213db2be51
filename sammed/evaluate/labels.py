"""Label names for evaluation: from a TotalSegmentator-style ``labels.json`` or given on the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _names_file_beside(labels_path: Path) -> Path | None:
    """``labels.json`` beside the label map, else a JSON file there whose ``"label_file"`` names the label map
    (as the bundled ``Testing/Data/ct_labels.json``)."""
    folder = labels_path.parent
    if (folder / "labels.json").is_file():
        return folder / "labels.json"
    for candidate in sorted(folder.glob("*.json")):
        try:
            data = json.loads(candidate.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("label_file") == labels_path.name:
            return candidate
    return None


def load_label_names(labels_path: str | Path, names_file: str | Path | None = None) -> dict[int, str]:
    """label value -> name, from ``names_file`` or a names file beside the label map; may be empty.

    Accepted formats: ``{"labels_present": {"5": {"name": "liver"}}}`` or ``{"5": "liver"}``.

    Raises:
        ValueError: ``names_file`` does not exist, is not JSON, or is not one of the formats above.
    """
    path = Path(names_file) if names_file is not None else _names_file_beside(Path(labels_path))
    if names_file is not None and not Path(names_file).is_file():
        raise ValueError(f"Label names file '{names_file}' does not exist.")
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"Cannot read label names file '{path}': {exc}; give a JSON object.") from None
    return _names_from_json(data, path)


def _names_from_json(data: object, path: Path) -> dict[int, str]:
    usage = 'use {"5": "liver"} or {"labels_present": {"5": {"name": "liver"}}}'
    table = data.get("labels_present", data) if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise ValueError(f"Label names file '{path}' holds a {type(data).__name__}, not a JSON object; {usage}.")
    out = {}
    for k, v in table.items():
        if not str(k).isdigit():
            continue
        name = v.get("name") if isinstance(v, dict) else v
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"Label names file '{path}': label {k} has no name ({v!r}); {usage}.")
        out[int(k)] = name.strip()
    return out


def resolve_labels(
    spec: str | None, labels_kji: np.ndarray, names: dict[int, str], default_count: int = 8
) -> dict[str, int]:
    """Parse ``--labels`` (names or values, comma-separated) into {name: value}.

    Default: the ``default_count`` largest labels present.

    Raises:
        ValueError: an empty label map, a label that is unknown or not present in the label map.
    """
    values, counts = np.unique(labels_kji[labels_kji > 0], return_counts=True)
    present = {int(v): int(c) for v, c in zip(values, counts, strict=True)}
    if not present:
        raise ValueError("The label map holds no labels (every voxel is 0); give the reference label map.")
    by_name = {n: v for v, n in names.items()}
    if not spec:
        top = sorted(present, key=lambda v: -present[v])[:default_count]
        return {names.get(v, f"label_{v}"): v for v in top}
    out = {}
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        if item.isdigit():
            v = int(item)
        elif item in by_name:
            v = by_name[item]
        else:
            raise ValueError(f"Unknown label '{item}'; known names: {', '.join(sorted(by_name)) or '(none)'}.")
        if v not in present:
            raise ValueError(f"Label '{item}' (value {v}) is not present in the label map; pick another label.")
        out[names.get(v, f"label_{v}")] = v
    return out
