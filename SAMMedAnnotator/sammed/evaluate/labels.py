"""Label names for evaluation: from a TotalSegmentator-style ``labels.json`` or given on the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def load_label_names(labels_path: str | Path, names_file: str | Path | None = None) -> dict[int, str]:
    """label value -> name. Looks at ``names_file``, else ``labels.json`` beside the label map; may be empty.

    Accepted formats: ``{"labels_present": {"5": {"name": "liver"}}}`` or ``{"5": "liver"}``.
    """
    candidates = [Path(names_file)] if names_file else [Path(labels_path).parent / "labels.json"]
    for c in candidates:
        if c.is_file():
            data = json.loads(c.read_text())
            table = data.get("labels_present", data)
            out = {}
            for k, v in table.items():
                if str(k).isdigit():
                    out[int(k)] = v["name"] if isinstance(v, dict) else str(v)
            return out
        if names_file:
            raise ValueError(f"Label names file '{c}' does not exist.")
    return {}


def resolve_labels(spec: str | None, labels_kji: np.ndarray, names: dict[int, str], default_count: int = 8):
    """Parse ``--labels`` (names or values, comma-separated) into {name: value}.

    Default: the ``default_count`` largest labels present.

    Raises:
        ValueError: a label that is unknown or not present in the label map.
    """
    values, counts = np.unique(labels_kji[labels_kji > 0], return_counts=True)
    present = {int(v): int(c) for v, c in zip(values, counts, strict=True)}
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
