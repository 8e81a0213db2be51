"""Run: PYTHONPATH=.:SAMMedAnnotator:Testing/slicer .venv/bin/python scripts/make_annotator_screenshot.py

The README picture of SAMMed Annotator from a real result: the bundled CT in a slicer-core scene, a liver box
prompt on its largest axial and coronal slices, written by the annotator into a segmentation node through the
Segment Editor logic, and drawn back from that node (numpy + Pillow). Writes Resources/Screenshots/annotator.png.
"""

from __future__ import annotations

from pathlib import Path

import mrml
import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]


def panel(image_hw, mask_hw, box_xyxy, volume, axis: int, caption: str, scale: int):
    """One view: the slice with the mask, the box outline in yellow, in display orientation and physical aspect,
    with a caption."""
    from PIL import Image
    from PIL import ImageDraw

    from sammed import geometry
    from sammed import render

    box_hw = np.zeros_like(mask_hw)
    x0, y0, x1, y1 = np.asarray(box_xyxy).astype(int)
    box_hw[y0 : y1 + 1, x0 : x1 + 1] = True
    rgb = render.overlay_rgb(image_hw, [mask_hw], alpha=0.4)
    rgb[box_hw & ~ndimage.binary_erosion(box_hw)] = (250, 220, 40)
    rgb = render.display_orientation(rgb, axis, volume.direction_lps)
    sr, sc = geometry.pixel_spacing(volume.spacing_ijk, axis)  # stretch rows by their spacing relative to columns
    img = Image.fromarray(np.ascontiguousarray(rgb))
    img = img.resize((int(img.width * scale), int(img.height * scale * sr / sc)), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, img.height - 20, img.width, img.height], fill=(0, 0, 0))
    draw.text((8, img.height - 16), caption, fill=(255, 255, 255))
    return img


def render_annotator_screenshot(path: str | Path, backend=None, scale: int = 3) -> dict:
    """README picture of a real result: the CT in a scene, a liver box prompt on the axial and coronal slices,
    written by the annotator into a segmentation node, drawn back from that node (numpy + Pillow).

    Returns:
        {"axial": Dice, "coronal": Dice} against the reference labels on each slice.
    """
    from PIL import Image
    from SAMMedAnnotatorLib.Annotator import Annotator

    from sammed import geometry
    from sammed import models
    from sammed import render
    from sammed.demo import example_paths
    from sammed.geometry import largest_slice
    from sammed.intensity import make_mapping
    from sammed.io import read_volume
    from SAMMedLib import SegmentIO
    from SAMMedLib import VolumeAccess

    logics = mrml.make_scene()
    paths = example_paths()
    volume = read_volume(paths["ct"])
    liver_kji = read_volume(paths["ct_labels"]).array_kji == 5
    node = mrml.add_volume(logics.scene, volume)
    seg, (liver_id,) = mrml.add_segmentation(logics.scene, node, ("liver",))
    annotator = Annotator(logics.scene, backend=backend or models.load_backend("litemedsam", device="cpu"))
    annotator.setVolume(node)
    mapping = make_mapping(volume.array_kji, "ct_abdomen")
    panels, scores = [], {}
    for axis, name in ((0, "axial"), (1, "coronal")):
        index = largest_slice(liver_kji, axis)
        ref_hw = geometry.extract_slice(liver_kji, axis, index)
        rows, cols = np.nonzero(ref_hw)
        corners = VolumeAccess.sliceXYToWorld(node, axis, index, [[cols.min(), rows.min()], [cols.max(), rows.max()]])
        roi = logics.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", f"box {name}")
        roi.SetCenterWorld(*((corners[0] + corners[1]) / 2))
        roi.SetSizeWorld(*np.abs(corners[1] - corners[0]))
        prompts = annotator.promptsFromMarkups(node, axis, index, boxNode=roi)
        annotator.apply(annotator.segment(axis, index, prompts), seg, liver_id)
        mask_hw = geometry.extract_slice(SegmentIO.segmentArray(seg, liver_id, node), axis, index).astype(bool)
        scores[name] = mrml.dice(mask_hw, ref_hw)
        image_hw = mapping.apply(geometry.extract_slice(mrml.slicer_array(node), axis, index))
        caption = f"{name} slice {index}: LiteMedSAM box -> liver, Dice {scores[name]:.3f}"
        img = panel(image_hw, mask_hw, prompts.box_xyxy, volume, axis, caption, scale)
        panels.append(np.asarray(img))
    Image.fromarray(render.tile(panels, columns=2)).save(path)
    annotator.cleanup()
    logics.scene.Clear(1)
    return scores


if __name__ == "__main__":
    out = ROOT / "Resources" / "Screenshots" / "annotator.png"
    print(render_annotator_screenshot(out), out)
