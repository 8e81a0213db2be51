"""Real MRML scenes for pytest (and the screenshot scripts), built with ``slicer-core`` (no Slicer app, no Qt).

Wires a scene with the application, colour, volumes, segmentations and markups logics the way the app does, so the
``SAMMedLib`` and module Lib functions run against the same MRML code as in Slicer; adds volumes (with their
IJK-to-RAS matrix, RAS = diag(-1, -1, 1) LPS), segmentations and slice nodes.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import numpy as np


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

    from SAMMedLib import VolumeAccess

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


def slicer_array(volume_node) -> np.ndarray:
    import slicer.util

    return np.array(slicer.util.arrayFromVolume(volume_node))
