"""Tight-box Dice per organ and per axis on the shared CT (real LiteMedSAM): prints Markdown, writes JSON.

For each label, the slice with the largest area on each axis (axial, coronal, sagittal) gets the tight box of the
reference mask. Coronal and sagittal slices of the 3 mm CT are resampled to square pixels before encoding and the
mask is mapped back to the original grid, so this also checks that masks land in the right place on every axis.

Usage: python benchmarks/accuracy_axes.py [--device cpu] [--out benchmarks/results/accuracy_axes.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sammed import geometry
from sammed.demo import example_paths
from sammed.evaluate.metrics import dice
from sammed.io import read_volume
from sammed.models import load_backend
from sammed.segmenter import Segmenter

ROOT = Path(__file__).resolve().parents[1]

LABELS = {"liver": 5, "spleen": 1, "kidney_right": 2, "kidney_left": 3}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "accuracy_axes.json"))
    args = ap.parse_args()
    paths = example_paths()
    volume, labels = read_volume(paths["ct"]), read_volume(paths["ct_labels"])
    seg = Segmenter(volume, load_backend("litemedsam", device=args.device))
    rows = {}
    for name, value in LABELS.items():
        rows[name] = {}
        for orientation in ("axial", "coronal", "sagittal"):
            axis = geometry.axis_for_orientation(volume.direction_lps, orientation)
            mask = labels.array_kji == value
            index = geometry.largest_slice(mask, axis)
            ref = geometry.extract_slice(mask, axis, index)
            result = seg.segment(axis, index, box_xyxy=geometry.box_from_mask(ref))
            rows[name][orientation] = {
                "slice": index,
                "dice": round(dice(result.mask_hw, ref), 4),
                "predicted_iou": round(result.iou, 4),
            }
    lines = ["| label | axial | coronal | sagittal |", "|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(
            f"| {name} | "
            + " | ".join(f"{r[o]['dice']:.3f} (slice {r[o]['slice']})" for o in ("axial", "coronal", "sagittal"))
            + " |"
        )
    print("\n".join(lines))
    Path(args.out).write_text(json.dumps({"image": paths["ct"].name, "model": "litemedsam", "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
