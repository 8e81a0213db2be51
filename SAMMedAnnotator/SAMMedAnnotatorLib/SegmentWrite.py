"""Writing a slice mask into a segment with Segment Editor semantics, and reading segments back as numpy.

Every write is one undo step of a ``vtkSlicerSegmentEditorLogic`` and honours the segment editor node's masking
(editable area, editable intensity range) and overwrite mode, the code path of Slicer's Segment Editor.
Uses only ``slicer`` MRML classes, ``vtk``, ``numpy`` and ``sammed`` (testable with ``slicer-core``).
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk
from sammed import geometry
from vtk.util import numpy_support

from . import VolumeAccess

SEGMENT_EDITOR_NODE_SINGLETON = "SegmentEditor"


def segmentEditorNode(scene):
    """The scene's Segment Editor parameter node (the one the Segment Editor module uses), created if missing.

    Its overwrite and masking settings are the ones a write honours.
    """
    node = scene.GetSingletonNode(SEGMENT_EDITOR_NODE_SINGLETON, "vtkMRMLSegmentEditorNode")
    if node is None:
        node = slicer.vtkMRMLSegmentEditorNode()
        node.SetSingletonTag(SEGMENT_EDITOR_NODE_SINGLETON)
        node = scene.AddNode(node)
    return node


def makeEditorLogic(scene, editorNode=None, appLogic=None):
    """A ``vtkSlicerSegmentEditorLogic`` on ``scene`` using ``editorNode`` (default: the Segment Editor's node)."""
    logic = slicer.vtkSlicerSegmentEditorLogic()
    if appLogic is not None:
        logic.SetMRMLApplicationLogic(appLogic)
    logic.SetMRMLScene(scene)
    logic.SetSegmentEditorNode(editorNode if editorNode is not None else segmentEditorNode(scene))
    return logic


def _ijkToSegmentationMatrix(volumeNode, segmentationNode) -> np.ndarray:
    """Volume IJK -> the segmentation node's own frame (the frame its labelmaps are stored in)."""
    segmentationToWorld = VolumeAccess.parentToWorldMatrix(segmentationNode)
    return np.linalg.inv(segmentationToWorld) @ VolumeAccess.ijkToWorldMatrix(volumeNode)


def sliceLabelmap(volumeNode, segmentationNode, axis: int, index: int, mask_hw: np.ndarray):
    """A one-slice ``vtkOrientedImageData`` on the volume's voxel grid holding ``mask_hw`` (0/1 uint8).

    Args:
        mask_hw: HxW bool/int mask in the ``extract_slice`` layout of ``axis``.

    Returns:
        (labelmap, extent): the oriented image (in the segmentation node's frame) and its extent (6 ints).
    """
    shape_kji = VolumeAccess.volumeShapeKJI(volumeNode)
    index = geometry.check_index(shape_kji, axis, index)
    expected = geometry.slice_shape(shape_kji, axis)
    mask = np.asarray(mask_hw)
    if mask.shape != expected:
        raise ValueError(f"Mask shape {mask.shape} does not match slice shape {expected} on axis {axis}.")
    k, j, i = shape_kji
    extent = [0, i - 1, 0, j - 1, 0, k - 1]
    ijkAxis = 2 - axis
    extent[2 * ijkAxis] = extent[2 * ijkAxis + 1] = index
    block_kji = np.expand_dims((mask > 0).astype(np.uint8), axis=axis)  # 1-thick KJI block
    return _orientedLabelmap(volumeNode, segmentationNode, block_kji, extent), extent


def _orientedLabelmap(volumeNode, segmentationNode, block_kji: np.ndarray, extent) -> slicer.vtkOrientedImageData:
    """A uint8 ``vtkOrientedImageData`` with ``block_kji`` at IJK ``extent`` of the volume grid, in the
    segmentation node's frame."""
    labelmap = slicer.vtkOrientedImageData()
    labelmap.SetExtent(extent)
    labelmap.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(block_kji, dtype=np.uint8).ravel(), deep=True,
                                         array_type=vtk.VTK_UNSIGNED_CHAR)
    labelmap.GetPointData().SetScalars(scalars)
    labelmap.SetImageToWorldMatrix(VolumeAccess.arrayToMatrix(_ijkToSegmentationMatrix(volumeNode, segmentationNode)))
    return labelmap


def writeSliceMask(editorLogic, segmentationNode, segmentID: str, volumeNode, axis: int, index: int,
                   mask_hw: np.ndarray, saveUndo: bool = True) -> None:
    """Make the segment on slice ``index`` equal ``mask_hw`` (other slices untouched), as one undo step.

    Masking and overwrite follow the editor logic's segment editor node: voxels outside the editable area or
    intensity range keep their current state; other segments lose the new voxels only as the overwrite mode says.

    Args:
        editorLogic: from ``makeEditorLogic``.
        mask_hw: HxW bool mask in the ``extract_slice`` layout of ``axis`` (``sammed.geometry``).
        saveUndo: save the segmentation state first, so ``undo(editorLogic)`` restores it.

    Raises:
        ValueError: unknown segment, wrong mask shape or slice index.
    """
    if segmentationNode is None or not segmentationNode.GetSegmentation().GetSegment(segmentID):
        raise ValueError("Select a segment to write into.")
    sliceLabelmap(volumeNode, segmentationNode, axis, index, mask_hw)  # validates slice and mask shape
    # The modifier is the whole segment with this slice replaced, written in Set mode: slicer-core 5.13's Set with a
    # one-slice modifier and a one-slice modification extent cleared the user's other slices, and Remove ignores the
    # editable area. With the whole segment as modifier, other slices are set to what they already hold, and on
    # this slice the editor's masking decides which voxels change (outside the editable area they keep their state).
    current = segmentArray(segmentationNode, segmentID, volumeNode)
    geometry.insert_slice(current, axis, index, (np.asarray(mask_hw) > 0).astype(np.uint8))
    k, j, i = current.shape
    labelmap = _orientedLabelmap(volumeNode, segmentationNode, current, [0, i - 1, 0, j - 1, 0, k - 1])
    editorLogic.SetSegmentationNode(segmentationNode)
    editorLogic.SetSourceVolumeNode(volumeNode)
    editorLogic.SetCurrentSegmentID(segmentID)
    if saveUndo:
        editorLogic.SaveStateForUndo()
    editorLogic.ModifySegmentByLabelmap(
        segmentationNode, segmentID, labelmap, slicer.vtkSlicerSegmentEditorLogic.ModificationModeSet, True, False
    )


def undo(editorLogic) -> bool:
    """Undo the last write; False when there is nothing to undo."""
    if not editorLogic.CanUndo():
        return False
    editorLogic.Undo()
    return True


def segmentArray(segmentationNode, segmentID: str, volumeNode) -> np.ndarray:
    """KJI uint8 (0/1) array of a segment on the volume's voxel grid (a copy)."""
    image = slicer.vtkOrientedImageData()
    ok = slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
        segmentationNode, segmentID, image, True
    )
    shape_kji = VolumeAccess.volumeShapeKJI(volumeNode)
    if not ok or image.IsEmpty():
        return np.zeros(shape_kji, dtype=np.uint8)
    reference = slicer.vtkOrientedImageData()
    k, j, i = shape_kji
    reference.SetExtent(0, i - 1, 0, j - 1, 0, k - 1)
    reference.SetImageToWorldMatrix(VolumeAccess.arrayToMatrix(VolumeAccess.ijkToWorldMatrix(volumeNode)))
    resampled = slicer.vtkOrientedImageData()
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(image, reference, resampled)
    out = np.zeros(shape_kji, dtype=np.uint8)
    scalars = resampled.GetPointData().GetScalars()
    if scalars is None or resampled.IsEmpty():
        return out
    e = resampled.GetExtent()
    block = numpy_support.vtk_to_numpy(scalars).reshape(e[5] - e[4] + 1, e[3] - e[2] + 1, e[1] - e[0] + 1)
    # place the resampled block (its extent may be smaller than the volume) into the full grid
    lo = [max(e[4], 0), max(e[2], 0), max(e[0], 0)]
    hi = [min(e[5], k - 1), min(e[3], j - 1), min(e[1], i - 1)]
    if any(h < low for low, h in zip(lo, hi, strict=True)):
        return out
    src = block[lo[0] - e[4]:hi[0] - e[4] + 1, lo[1] - e[2]:hi[1] - e[2] + 1, lo[2] - e[0]:hi[2] - e[0] + 1]
    # segments share labelmap layers: this segment is the voxels with its label value
    labelValue = segmentationNode.GetSegmentation().GetSegment(segmentID).GetLabelValue()
    out[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1] = src == labelValue
    return out


def segmentSliceMask(segmentationNode, segmentID: str, volumeNode, axis: int, index: int) -> np.ndarray:
    """HxW bool mask of a segment on one slice (``extract_slice`` layout of ``axis``)."""
    return geometry.extract_slice(segmentArray(segmentationNode, segmentID, volumeNode), axis, index).astype(bool)


def annotatedSlices(segmentationNode, segmentID: str, volumeNode, axis: int) -> list[int]:
    """Indices of the slices on ``axis`` where the segment has voxels (the user's annotations for SAMassist)."""
    return geometry.foreground_slices(segmentArray(segmentationNode, segmentID, volumeNode), axis)
