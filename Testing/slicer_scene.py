"""Real MRML scene for pytest, built with ``slicer-core`` (no Slicer app, no Qt).

Wires a scene with the application, colour, volumes, segmentations and markups logics the way the app does, so the
``SAMMedAnnotatorLib`` functions run against the same MRML code as in Slicer. Also loads the shared CT into a
``vtkMRMLScalarVolumeNode`` with its IJK-to-RAS matrix (RAS = diag(-1, -1, 1) LPS).
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "SAMMedAnnotator"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))


@dataclass
class SceneLogics:
    scene: object
    app_logic: object
    volumes: object
    segmentations: object
    markups: object


def make_scene() -> SceneLogics:
    """A new scene with undo on and the core module logics registered (as ``SlicerApp`` of trame-slicer does)."""
    import slicer

    scene = slicer.vtkMRMLScene()
    scene.SetUndoOn()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    colors = app_logic.GetColorLogic()
    colors.SetMRMLScene(scene)
    colors.AddDefaultColorNodes()
    app_logic.SetModuleLogic("Colors", colors)
    volumes = slicer.vtkSlicerVolumesLogic()
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
    markups = slicer.vtkSlicerMarkupsLogic()
    for name, logic in (("Volumes", volumes), ("Segmentations", segmentations), ("Markups", markups)):
        logic.SetMRMLApplicationLogic(app_logic)
        logic.SetMRMLScene(scene)
        app_logic.SetModuleLogic(name, logic)
    install_util_globals(scene, volumes, segmentations)
    return SceneLogics(scene, app_logic, volumes, segmentations, markups)


def install_util_globals(scene, volumes, segmentations) -> None:
    """Let ``slicer.util`` helpers that look for ``slicer.mrmlScene`` / ``slicer.modules`` work."""
    import slicer

    slicer.mrmlScene = scene
    modules = types.SimpleNamespace(
        volumes=types.SimpleNamespace(logic=lambda: volumes),
        segmentations=types.SimpleNamespace(logic=lambda: segmentations),
    )
    slicer.modules = modules


def add_volume(scene, volume, name: str = "CT", ijk_to_ras: np.ndarray | None = None):
    """A scalar volume node holding ``volume.array_kji`` (copied) with the volume's geometry (or ``ijk_to_ras``)."""
    import slicer
    import slicer.util
    from SAMMedAnnotatorLib import VolumeAccess

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetUndoEnabled(True)
    matrix = VolumeAccess.ijkToRASFromVolume(volume) if ijk_to_ras is None else np.asarray(ijk_to_ras, dtype=float)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(matrix))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(volume.array_kji))
    node.CreateDefaultDisplayNodes()
    return node


def add_segmentation(scene, volume_node, names=("liver",), name: str = "Segmentation"):
    """A segmentation node on the volume's geometry with empty segments; returns (node, [segment ids])."""
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    seg.SetUndoEnabled(True)
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    ids = [seg.GetSegmentation().AddEmptySegment(n, n) for n in names]
    return seg, ids


def add_slice_node(scene, orientation: str, name: str = "Red"):
    """A slice node (no view) with the given orientation; ``SetSliceOffset`` moves it."""
    import slicer

    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    node = scene.AddNewNodeByClass("vtkMRMLSliceNode", name)
    node.SetLayoutName(name)
    node.SetOrientation(orientation)
    node.UpdateMatrices()
    return node


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2.0 * np.logical_and(a, b).sum() / s)


def render_annotator_screenshot(path: str | Path, backend=None, scale: int = 3) -> dict:
    """README picture of a real result: the CT in a scene, a liver box prompt on the axial and coronal slices,
    written by the annotator into a segmentation node, drawn back from that node (numpy + Pillow).

    Returns:
        {"axial": Dice, "coronal": Dice} against the reference labels on each slice.
    """
    from PIL import Image
    from PIL import ImageDraw
    from sammed import geometry
    from sammed import models
    from sammed import render
    from sammed.intensity import make_mapping
    from sammed.io import read_volume
    from SAMMedAnnotatorLib import SegmentWrite
    from SAMMedAnnotatorLib import VolumeAccess
    from SAMMedAnnotatorLib.Annotator import Annotator

    sys.path.insert(0, str(ROOT / "Testing"))
    from conftest import CT_IMAGE
    from conftest import CT_LABEL_IDS
    from conftest import CT_LABELS
    from conftest import largest_slice

    logics = make_scene()
    volume = read_volume(CT_IMAGE)
    liver_kji = read_volume(CT_LABELS).array_kji == CT_LABEL_IDS["liver"]
    node = add_volume(logics.scene, volume)
    seg, (liver_id,) = add_segmentation(logics.scene, node, ("liver",))
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
        annotator.apply(annotator.segment(prompts), seg, liver_id)
        mask_hw = geometry.extract_slice(SegmentWrite.segmentArray(seg, liver_id, node), axis, index).astype(bool)
        scores[name] = dice(mask_hw, ref_hw)
        image_hw = mapping.apply(geometry.extract_slice(slicer_array(node), axis, index))
        box_hw = np.zeros_like(mask_hw)
        x0, y0, x1, y1 = prompts.box_xyxy.astype(int)
        box_hw[y0:y1 + 1, x0:x1 + 1] = True
        rgb = render.overlay_rgb(image_hw, [mask_hw], alpha=0.4)
        edge = box_hw & ~np.pad(box_hw, 1)[2:, 1:-1] | box_hw & ~np.pad(box_hw, 1)[:-2, 1:-1] \
            | box_hw & ~np.pad(box_hw, 1)[1:-1, 2:] | box_hw & ~np.pad(box_hw, 1)[1:-1, :-2]
        rgb[edge] = (250, 220, 40)
        rgb = render.display_orientation(rgb, axis, volume.direction_lps)
        # physical aspect: stretch rows by their spacing relative to columns
        sr, sc = geometry.pixel_spacing(volume.spacing_ijk, axis)
        img = Image.fromarray(np.ascontiguousarray(rgb))
        img = img.resize((int(img.width * scale), int(img.height * scale * sr / sc)), Image.NEAREST)
        draw = ImageDraw.Draw(img)
        draw.rectangle([0, img.height - 20, img.width, img.height], fill=(0, 0, 0))
        draw.text((8, img.height - 16), f"{name} slice {index}: LiteMedSAM box -> liver, Dice {scores[name]:.3f}",
                  fill=(255, 255, 255))
        panels.append(np.asarray(img))
    Image.fromarray(render.tile(panels, columns=2)).save(path)
    annotator.cleanup()
    logics.scene.Clear(1)
    return scores


def slicer_array(volume_node) -> np.ndarray:
    import slicer.util

    return np.array(slicer.util.arrayFromVolume(volume_node))


if __name__ == "__main__":
    out = ROOT / "Resources" / "Screenshots" / "annotator.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    print(render_annotator_screenshot(out), out)
