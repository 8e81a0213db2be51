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


# ---------------------------------------------------------------------- reference geometry (the grid segments live on)
def _array4x4(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def ijk_to_ras(volume_node) -> np.ndarray:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return _array4x4(matrix)


def oversampled_geometry(volume_node, spacing: float):
    """(IJK-to-RAS, extent) of the volume's grid split into ``spacing`` mm voxels, each volume voxel into a whole
    number per axis, corners aligned with the volume's voxels (as vtkCalculateOversamplingFactor::
    ApplyOversamplingOnImageGeometry places an oversampled grid, Libs/vtkSegmentationCore)."""
    factors = np.asarray(volume_node.GetSpacing()) / spacing
    assert np.allclose(factors, np.round(factors)), "each volume spacing must be a multiple of the reference one"
    fine_to_coarse = np.eye(4)
    fine_to_coarse[:3, :3] = np.diag(1.0 / factors)
    fine_to_coarse[:3, 3] = 0.5 / factors - 0.5  # fine voxel 0's centre, in volume IJK
    dims = np.asarray(volume_node.GetImageData().GetDimensions())
    extent = [v for n in np.round(dims * factors).astype(int) for v in (0, int(n) - 1)]
    return ijk_to_ras(volume_node) @ fine_to_coarse, extent


def set_reference_geometry(seg, image_to_ras: np.ndarray, extent) -> None:
    """Set the segmentation's "Reference image geometry" conversion parameter: the grid it is edited on."""
    import slicer
    import slicer.util

    image = slicer.vtkOrientedImageData()
    image.SetExtent([int(v) for v in extent])
    image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(np.asarray(image_to_ras, dtype=float)))
    converter = slicer.vtkSegmentationConverter
    seg.GetSegmentation().SetConversionParameter(
        converter.GetReferenceImageGeometryParameterName(), converter.SerializeImageGeometry(image)
    )


def reference_grid(seg):
    """(IJK-to-RAS, extent) of the segmentation's reference geometry parameter (as set, not grown)."""
    import slicer
    import vtk

    converter = slicer.vtkSegmentationConverter
    image = slicer.vtkOrientedImageData()
    text = seg.GetSegmentation().GetConversionParameter(converter.GetReferenceImageGeometryParameterName())
    assert converter.DeserializeImageGeometry(text, image, False)
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    return _array4x4(matrix), list(image.GetExtent())


def segment_on_reference(seg, segment_id) -> np.ndarray:
    """KJI bool array of a segment's own labelmap on the reference grid (``reference_grid``), read without any
    resampling: fails if the labelmap left that grid."""
    import slicer
    import vtk
    from vtk.util import numpy_support

    matrix, extent = reference_grid(seg)
    out = np.zeros((extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1), bool)
    image = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(seg, segment_id, image, False)
    if image.IsEmpty():
        return out
    image_matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(image_matrix)
    assert np.allclose(_array4x4(image_matrix), matrix, atol=1e-6), "the segment left its reference grid"
    e = image.GetExtent()
    block = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    block = block.reshape(e[5] - e[4] + 1, e[3] - e[2] + 1, e[1] - e[0] + 1)
    lo = [e[4] - extent[4], e[2] - extent[2], e[0] - extent[0]]
    assert min(lo) >= 0, "the segment's labelmap reaches outside the reference extent"
    label = seg.GetSegmentation().GetSegment(segment_id).GetLabelValue()
    out[lo[0] : lo[0] + block.shape[0], lo[1] : lo[1] + block.shape[1], lo[2] : lo[2] + block.shape[2]] = block == label
    return out


def nearest_volume_voxels(volume_node, image_to_ras: np.ndarray, extent):
    """For each voxel of a grid (``image_to_ras``, ``extent``), as KJI arrays of that extent: the (k, j, i) of the
    nearest volume voxel, whether it lies in the volume, and whether the voxel centre is (within 1e-4 voxel)
    halfway between volume voxels, where nearest neighbour may go either way."""
    e = extent
    k, j, i = np.meshgrid(
        np.arange(e[4], e[5] + 1), np.arange(e[2], e[3] + 1), np.arange(e[0], e[1] + 1), indexing="ij"
    )
    points = np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    ijk = (np.linalg.inv(ijk_to_ras(volume_node)) @ np.asarray(image_to_ras) @ points)[:3]
    nearest = np.floor(ijk + 0.5).astype(int)
    tie = (np.abs(ijk - np.round(ijk)) > 0.5 - 1e-4).any(axis=0)
    dims = np.asarray(volume_node.GetImageData().GetDimensions())[:, None]
    inside = ((nearest >= 0) & (nearest < dims)).all(axis=0)
    return nearest[::-1].reshape(3, *i.shape), inside.reshape(i.shape), tie.reshape(i.shape)


def on_grid(volume_node, values_kji: np.ndarray, image_to_ras: np.ndarray, extent) -> np.ndarray:
    """``values_kji`` (on the volume's grid) taken onto another grid by nearest neighbour (0 outside the volume)."""
    (kk, jj, ii), inside, _ = nearest_volume_voxels(volume_node, image_to_ras, extent)
    values = np.asarray(values_kji)
    out = np.zeros(inside.shape, dtype=values.dtype)
    out[inside] = values[kk[inside], jj[inside], ii[inside]]
    return out


def add_segment_editor_node(scene):
    """The Segment Editor module's parameter node as that module makes it (singleton tag "SegmentEditor":
    Modules/Scripted/SegmentEditor/SegmentEditor.py, selectParameterNode)."""
    import slicer

    node = slicer.vtkMRMLSegmentEditorNode()
    node.SetSingletonTag("SegmentEditor")
    return scene.AddNode(node)


def set_segment_labelmap(seg, segment_id, mask_kji: np.ndarray, image_to_ras: np.ndarray, extent) -> None:
    """Replace a segment's voxels with ``mask_kji`` laid on a grid (e.g. the reference grid, finer than a volume)."""
    import slicer
    import slicer.util
    from vtk.util import numpy_support

    image = slicer.vtkOrientedImageData()
    image.SetExtent([int(v) for v in extent])
    image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(np.asarray(image_to_ras, dtype=float)))
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(mask_kji, dtype=np.uint8).ravel(), deep=True)
    image.GetPointData().SetScalars(scalars)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    assert logic.SetBinaryLabelmapToSegment(image, seg, segment_id, logic.MODE_REPLACE)
