"""Segments <-> numpy on the source volume's grid, and the one way SAMMed writes into a user's segment.

Every write of a mask into a user's segment (an Apply in SAMMed Annotator, a click of the Segment Editor effect,
an Accept in SAMMed Auto) goes through ``writeSlices``: one undo step, Segment Editor semantics (the editor node's
masking and overwrite settings), only the given slices changed. Previews are separate segments or nodes written
directly (``setSegmentMask``, no undo). Uses only ``slicer`` MRML classes, ``vtk``, ``numpy`` and ``sammed``
(testable with ``slicer-core``). Arrays are KJI.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from sammed import geometry

from . import VolumeAccess

SEGMENT_EDITOR_NODE_SINGLETON = "SegmentEditor"


class SegmentWriter(Protocol):
    """Where a write goes: an editor logic of ours (``LogicWriter``) or the Segment Editor effect's own API."""

    def saveStateForUndo(self, segmentationNode, segmentID: str, volumeNode) -> None:
        """Save the segmentation's state so that one undo restores it."""

    def modify(self, segmentationNode, segmentID: str, volumeNode, modifier, add: bool, overwrite: bool) -> None:
        """Modify the segment by ``modifier``: Set mode (``add`` False) or Add mode, honouring the editor node's
        masking; other segments lose the modifier's voxels as its overwrite mode says, or not at all."""


class LogicWriter:
    """Writes through a ``vtkSlicerSegmentEditorLogic`` (Slicer 5.10+, ``Modules/Loadable/Segmentations/Logic/
    vtkSlicerSegmentEditorLogic.h``), the code path of the Segment Editor: its editor node's masking and overwrite
    settings apply, and ``SaveStateForUndo`` makes the write one undo step of that logic."""

    def __init__(self, editorLogic) -> None:
        self.editorLogic = editorLogic

    def _select(self, segmentationNode, segmentID: str, volumeNode) -> None:
        logic = self.editorLogic
        logic.SetSegmentationNode(segmentationNode)  # before SaveStateForUndo: it saves this node's state
        logic.SetSourceVolumeNode(volumeNode)
        logic.SetCurrentSegmentID(segmentID)

    def saveStateForUndo(self, segmentationNode, segmentID: str, volumeNode) -> None:
        self._select(segmentationNode, segmentID, volumeNode)
        self.editorLogic.SaveStateForUndo()

    def modify(self, segmentationNode, segmentID: str, volumeNode, modifier, add: bool, overwrite: bool) -> None:
        self._select(segmentationNode, segmentID, volumeNode)
        mode = "Add" if add else "Set"
        with overwriteOff(self.editorLogic.GetSegmentEditorNode(), not overwrite):
            self.editorLogic.ModifySegmentByLabelmap(
                segmentationNode,
                segmentID,
                modifier,
                getattr(slicer.vtkSlicerSegmentEditorLogic, f"ModificationMode{mode}"),
                True,
                False,
            )


@contextmanager
def overwriteOff(editorNode, off: bool = True) -> Iterator[None]:
    """While the block runs, the editor node overwrites no other segment (when ``off``); restored afterwards."""
    if not off:
        yield
        return
    mode = editorNode.GetOverwriteMode()
    editorNode.SetOverwriteMode(editorNode.OverwriteNone)
    try:
        yield
    finally:
        editorNode.SetOverwriteMode(mode)


def segmentEditorNode(scene):
    """The scene's Segment Editor parameter node (the one the Segment Editor module uses), created if missing."""
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


def undo(editorLogic) -> bool:
    """Undo the last write of ``editorLogic``; False when there is nothing to undo."""
    if not editorLogic.CanUndo():
        return False
    editorLogic.Undo()
    return True


# ---------------------------------------------------------------------- numpy -> labelmaps
def orientedImageFromMask(mask_kji: np.ndarray, volumeNode, node, extent=None) -> slicer.vtkOrientedImageData:
    """A uint8 (0/1) ``vtkOrientedImageData`` on the volume's voxel grid in ``node``'s frame (a segmentation).

    Args:
        mask_kji: KxJxI mask on the volume grid, or the block of voxels at ``extent``.
        extent: IJK extent (6 ints) of ``mask_kji`` on the volume grid (default: the whole volume).

    Raises:
        ValueError: the mask shape is not the volume's (or the extent's).
    """
    k, j, i = VolumeAccess.volumeShapeKJI(volumeNode)
    extent = [0, i - 1, 0, j - 1, 0, k - 1] if extent is None else [int(v) for v in extent]
    shape = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    mask_kji = np.asarray(mask_kji)
    if mask_kji.shape != shape:
        raise ValueError(f"Mask shape {mask_kji.shape} does not match the volume grid {shape}.")
    image = slicer.vtkOrientedImageData()
    image.SetExtent(extent)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    scalars = numpy_support.numpy_to_vtk(
        np.ascontiguousarray(mask_kji != 0, dtype=np.uint8).ravel(), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR
    )
    image.GetPointData().SetScalars(scalars)
    image.SetImageToWorldMatrix(VolumeAccess.arrayToMatrix(VolumeAccess.ijkToNodeMatrix(volumeNode, node)))
    return image


def sliceLabelmap(volumeNode, node, axis: int, index: int, mask_hw: np.ndarray) -> slicer.vtkOrientedImageData:
    """A one-slice labelmap on the volume's grid holding ``mask_hw`` (``extract_slice`` layout), in ``node``'s frame.

    Raises:
        ValueError: slice out of range or a mask of another shape.
    """
    shape_kji = VolumeAccess.volumeShapeKJI(volumeNode)
    index = geometry.check_index(shape_kji, axis, index)
    expected = geometry.slice_shape(shape_kji, axis)
    mask = np.asarray(mask_hw)
    if mask.shape != expected:
        raise ValueError(f"Mask shape {mask.shape} does not match slice shape {expected} on axis {axis}.")
    k, j, i = shape_kji
    extent = [0, i - 1, 0, j - 1, 0, k - 1]
    ijk = geometry.ijk_axis(axis)
    extent[2 * ijk] = extent[2 * ijk + 1] = index
    return orientedImageFromMask(np.expand_dims(mask > 0, axis=axis), volumeNode, node, extent)


# ---------------------------------------------------------------------- reading
def segmentArray(segmentationNode, segmentID: str, volumeNode) -> np.ndarray:
    """KJI uint8 (0/1) array of a segment on the volume's voxel grid (a copy).

    Raises:
        ValueError: the segment does not exist.
    """
    if segmentationNode is None or segmentationNode.GetSegmentation().GetSegment(segmentID) is None:
        raise ValueError(f"Segment '{segmentID}' is not in the segmentation; pick an existing segment.")
    image = slicer.vtkOrientedImageData()
    ok = slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
        segmentationNode, segmentID, image, True
    )
    shape_kji = VolumeAccess.volumeShapeKJI(volumeNode)
    out = np.zeros(shape_kji, dtype=np.uint8)
    if not ok or image.IsEmpty():
        return out
    reference = slicer.vtkOrientedImageData()
    k, j, i = shape_kji
    reference.SetExtent(0, i - 1, 0, j - 1, 0, k - 1)
    reference.SetImageToWorldMatrix(VolumeAccess.arrayToMatrix(VolumeAccess.ijkToWorldMatrix(volumeNode)))
    resampled = slicer.vtkOrientedImageData()
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(image, reference, resampled)
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
    src = block[lo[0] - e[4] : hi[0] - e[4] + 1, lo[1] - e[2] : hi[1] - e[2] + 1, lo[2] - e[0] : hi[2] - e[0] + 1]
    # segments share labelmap layers: this segment is the voxels with its label value
    labelValue = segmentationNode.GetSegmentation().GetSegment(segmentID).GetLabelValue()
    out[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1] = src == labelValue
    return out


def segmentMask(segmentationNode, segmentID: str, volumeNode) -> np.ndarray:
    """KxJxI bool mask of a segment on the volume's grid."""
    return segmentArray(segmentationNode, segmentID, volumeNode).astype(bool)


def segmentSliceMask(segmentationNode, segmentID: str, volumeNode, axis: int, index: int) -> np.ndarray:
    """HxW bool mask of a segment on one slice (``extract_slice`` layout of ``axis``)."""
    return geometry.extract_slice(segmentMask(segmentationNode, segmentID, volumeNode), axis, index)


def annotatedSlices(segmentationNode, segmentID: str, volumeNode, axis: int) -> list[int]:
    """Indices of the slices on ``axis`` where the segment has voxels (the user's annotations)."""
    return geometry.foreground_slices(segmentArray(segmentationNode, segmentID, volumeNode), axis)


def slicesMask(shape_kji: tuple[int, int, int], axis: int, indices) -> np.ndarray:
    """KxJxI bool array (read-only broadcast) that is True on the given slices of ``axis``."""
    selected = np.zeros(shape_kji[axis], dtype=bool)
    selected[list(indices)] = True
    view = [1, 1, 1]
    view[axis] = shape_kji[axis]
    return np.broadcast_to(selected.reshape(view), tuple(shape_kji))


# ---------------------------------------------------------------------- writing
def setSegmentMask(segmentationNode, segmentID: str, mask_kji: np.ndarray, volumeNode) -> None:
    """Replace a segment's voxels with ``mask_kji`` directly (no undo state, no editor masking: previews only)."""
    image = orientedImageFromMask(mask_kji, volumeNode, segmentationNode)
    ok = slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        image, segmentationNode, segmentID, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE
    )
    if not ok:
        raise RuntimeError(f"Could not write segment '{segmentID}'.")


def sliceModifiers(segmentationNode, segmentID: str, volumeNode, axis: int, masks: dict[int, np.ndarray]):
    """The two modifiers of a write: (the whole segment with, on the given slices, only the voxels the new masks
    keep; the new masks on the given slices alone), as labelmaps in the segmentation's frame.

    Raises:
        ValueError: no such segment, a slice out of range or a mask of another shape.
    """
    current = segmentArray(segmentationNode, segmentID, volumeNode)
    keep = current.copy()
    new = np.zeros_like(current)
    for index, mask_hw in masks.items():
        index = geometry.check_index(current.shape, axis, index)
        expected = geometry.slice_shape(current.shape, axis)
        if np.shape(mask_hw) != expected:
            raise ValueError(f"Mask shape {np.shape(mask_hw)} does not match slice shape {expected} on axis {axis}.")
        mask = (np.asarray(mask_hw) > 0).astype(np.uint8)
        geometry.insert_slice(keep, axis, index, geometry.extract_slice(current, axis, index) & mask)
        geometry.insert_slice(new, axis, index, mask)
    return orientedImageFromMask(keep, volumeNode, segmentationNode), orientedImageFromMask(
        new, volumeNode, segmentationNode
    )


def writeSlices(
    writer: SegmentWriter,
    segmentationNode,
    segmentID: str,
    volumeNode,
    axis: int,
    masks: dict[int, np.ndarray],
    saveUndo: bool = True,
) -> None:
    """Make the segment on each slice of ``masks`` equal its mask (other slices untouched), as one undo step.

    Masking and overwrite follow the writer's segment editor node: voxels outside the editable area or intensity
    range keep their current state; other segments lose the new voxels (on these slices only) as the overwrite mode
    says. Two modifications, read in ``vtkSlicerSegmentEditorLogic::ModifySegmentByLabelmap``
    (``Modules/Loadable/Segmentations/Logic/vtkSlicerSegmentEditorLogic.cxx``): Set mode first clears the whole
    segment and then adds the (masked) modifier back together with the segment outside the editable area, so

    1. Set with the whole segment minus the voxels the new masks drop (no overwrite: nothing is added) removes,
       inside the editable area, what the new masks do not hold, and keeps every other slice as it is;
    2. Add with the new masks alone adds them inside the editable area, and only these voxels are taken from other
       segments (a Set of the whole segment would take every voxel of the segment from them, on every slice).

    Args:
        writer: ``LogicWriter(editorLogic)``, or the Segment Editor effect's writer.
        masks: {slice index on ``axis``: HxW bool mask in the ``extract_slice`` layout}.
        saveUndo: save the segmentation state first, so one undo restores it.

    Raises:
        ValueError: unknown segment, wrong mask shape or slice index (nothing is written then).
    """
    if segmentationNode is None or not segmentationNode.GetSegmentation().GetSegment(segmentID):
        raise ValueError("Select a segment to write into.")
    keep, new = sliceModifiers(segmentationNode, segmentID, volumeNode, axis, masks)
    if saveUndo:
        writer.saveStateForUndo(segmentationNode, segmentID, volumeNode)
    writer.modify(segmentationNode, segmentID, volumeNode, keep, add=False, overwrite=False)
    writer.modify(segmentationNode, segmentID, volumeNode, new, add=True, overwrite=True)


def writeSliceMask(
    editorLogic,
    segmentationNode,
    segmentID: str,
    volumeNode,
    axis: int,
    index: int,
    mask_hw: np.ndarray,
    saveUndo: bool = True,
) -> None:
    """``writeSlices`` of one slice through ``editorLogic``."""
    writeSlices(LogicWriter(editorLogic), segmentationNode, segmentID, volumeNode, axis, {index: mask_hw}, saveUndo)
