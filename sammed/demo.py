"""``sammed demo``: the main job on the bundled example CT.

One tight box on the largest axial slice of liver, spleen and both kidneys (from the reference labels), segmented
with LiteMedSAM. Writes ``demo_mask.nii.gz`` (labels on the CT grid), ``demo_mask.seg.nrrd`` (for Slicer),
``demo_overlay.png`` and ``dice.md``/``dice.json``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

import numpy as np

if TYPE_CHECKING:
    from .segmenter import Segmenter


DEMO_LABELS = {"liver": 5, "spleen": 1, "kidney_right": 2, "kidney_left": 3}
CT_NAME = "example_ct.nii.gz"
SEG_NAME = "example_seg_fast_force_split.nii.gz"
MR_NAME = "example_mr_sm.nii.gz"
MR_SEG_NAME = "example_seg_mr.nii.gz"
DEMO_OUTPUTS = ("demo_mask.nii.gz", "demo_mask.seg.nrrd", "demo_overlay.png", "dice.md", "dice.json")
LEGEND = [
    "Colour: the LiteMedSAM mask from one box around the organ (the box is the reference label's bounding box).",
    "White outline: the reference label (TotalSegmentator output). Radiological view: patient right on the left.",
]


def demo_data_dir() -> Path:
    """Testing/Data of a source checkout, or $SAMMED_DEMO_DATA.

    Raises:
        ValueError: no folder with the example CT was found.
    """
    candidates = [os.environ.get("SAMMED_DEMO_DATA"), Path(__file__).resolve().parents[1] / "Testing" / "Data"]
    for c in candidates:
        if c and (Path(c) / CT_NAME).is_file() and (Path(c) / SEG_NAME).is_file():
            return Path(c)
    raise ValueError(
        f"The example CT ({CT_NAME}) was not found; run the demo from a source checkout or set SAMMED_DEMO_DATA "
        "to a folder holding it and its label map."
    )


def example_paths() -> dict[str, Path]:
    """The bundled example files: ``ct``, ``ct_labels``, ``mr``, ``mr_labels`` (TotalSegmentator test data)."""
    data = demo_data_dir()
    return {"ct": data / CT_NAME, "ct_labels": data / SEG_NAME, "mr": data / MR_NAME, "mr_labels": data / MR_SEG_NAME}


def _segment_organ(segmenter: Segmenter, ref_kji: np.ndarray, axis: int) -> tuple[dict, Any, np.ndarray]:
    """A tight box on the organ's largest slice: (row of the Dice table, result, reference slice)."""
    from .evaluate.metrics import dice
    from .geometry import box_from_mask
    from .geometry import extract_slice
    from .geometry import largest_slice

    index = largest_slice(ref_kji, axis)
    ref_hw = extract_slice(ref_kji, axis, index)
    box = box_from_mask(ref_hw)
    t = time.perf_counter()
    result = segmenter.segment(axis, index, box_xyxy=box)
    row = {
        "axial_slice": index,
        "box_xyxy": [int(v) for v in box],
        "dice": round(dice(result.mask_hw, ref_hw), 4),
        "predicted_iou": round(result.iou, 4),
        "seconds": round(time.perf_counter() - t, 2),
    }
    return row, result, ref_hw


def _table(rows: list[dict]) -> str:
    table = ["| label | axial slice | Dice | predicted IoU | seconds |", "|---|---|---|---|---|"]
    table += [
        f"| {r['label']} | {r['axial_slice']} | {r['dice']:.3f} | {r['predicted_iou']:.3f} | {r['seconds']:.2f} |"
        for r in rows
    ]
    return "\n".join(table) + "\n"


def run_demo(out: str | Path, device: str = "auto") -> dict:
    """Segment the bundled CT (one tight box per organ), write the outputs into ``out`` and return the summary."""
    from . import prompt_encoders
    from .geometry import extract_slice
    from .geometry import insert_slice
    from .io import read_volume
    from .io import save_labelmap
    from .models import load_backend
    from .outputs import Outputs
    from .render import display_orientation
    from .render import figure
    from .render import overlay_rgb
    from .render import save_png
    from .segmenter import Segmenter

    data, out, axis = demo_data_dir(), Path(out), 0
    out.mkdir(parents=True, exist_ok=True)  # the CLI checked it is not a file
    outputs = Outputs([])  # checked before the model loads; written together at the end
    paths = [outputs.add(out / n, (n[n.index(".") :],), n) for n in DEMO_OUTPUTS]
    volume, reference = read_volume(data / CT_NAME), read_volume(data / SEG_NAME)
    t0 = time.perf_counter()
    backend = load_backend("litemedsam", device=device)
    segmenter = Segmenter(volume, backend)
    segmenter.base_prompt_encoder = prompt_encoders.resolve(backend)  # clicks work: the shipped encoder
    labels_kji = np.zeros(volume.shape_kji, dtype=np.uint8)
    rows, panels = [], []
    for value, (name, ref_value) in enumerate(DEMO_LABELS.items(), start=1):
        row, result, ref_hw = _segment_organ(segmenter, reference.array_kji == ref_value, axis)
        index = row["axial_slice"]
        insert_slice(labels_kji, axis, index, np.where(result.mask_hw, value, extract_slice(labels_kji, axis, index)))
        rows.append({"label": name, **row})
        image = segmenter.mapping.apply(extract_slice(volume.array_kji, axis, index))
        panels.append(
            display_orientation(overlay_rgb(image, [result.mask_hw], reference=[ref_hw]), axis, volume.direction_lps)
        )
    captions = [f"{r['label']}, axial {r['axial_slice']}: Dice {r['dice']:.3f}" for r in rows]
    picture = figure(panels, captions, LEGEND, columns=2, scale=2)
    text = _table(rows)
    summary = {
        "image": str(data / CT_NAME),
        "model": backend.model_id,
        "device": str(backend.device),
        "rows": rows,
        "total_seconds": round(time.perf_counter() - t0, 1),
        "outputs": list(DEMO_OUTPUTS),
    }
    with outputs.commit() as temps:
        save_labelmap(temps[paths[0]], labels_kji, volume)
        save_labelmap(temps[paths[1]], labels_kji, volume, dict(enumerate(DEMO_LABELS, start=1)))
        save_png(temps[paths[2]], picture)
        temps[paths[3]].write_text("# sammed demo: LiteMedSAM, tight box on the largest axial slice\n\n" + text)
        temps[paths[4]].write_text(json.dumps(summary, indent=1))
    return {**summary, "table": text}
