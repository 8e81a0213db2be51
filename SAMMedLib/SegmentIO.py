"""Segments <-> numpy on the source volume's grid, and the one way SAMMed writes into a user's segment.

Every write of a mask into a user's segment (an Apply in SAMMed Annotator, a click of the Segment Editor effect,
an Accept in SAMMed Auto) goes through ``writeSlices``: one undo step, Segment Editor semantics (the Segment Editor's
masking and overwrite settings), only the given slices changed, on the segmentation's own grid (its reference
geometry, which may be finer than the volume or come from another volume). Our editor logics select nodes in a
segment editor node of their own, never in the Segment Editor's. Previews are separate segments or nodes written
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

# the Segment Editor module's parameter node (Modules/Scripted/SegmentEditor/SegmentEditor.py, selectParameterNode)
SEGMENT_EDITOR_NODE_SINGLETON = "SegmentEditor"
PRIVATE_EDITOR_NODE_SINGLETON = "SAMMed"  # our logics' own nodes: "SAMMed", "SAMMed2", ...
SETTINGS_SOURCE_ROLE = "SAMMedSettingsSource"  # on our node: the node whose masking settings writes follow
SLICE_OUTSIDE_MASK, SLICE_INSIDE_MASK = 1, 2  # labels of written slices on the reference grid (0: other voxels)


class SegmentWriter(Protocol):
    """Where a write goes: an editor logic of ours (``LogicWriter``) or the Segment Editor effect's own API."""

    def saveStateForUndo(self, segmentationNode, segmentID: str, volumeNode) -> None:
        """Save the segmentation's state so that one undo restores it."""

    def modify(self, segmentationNode, segmentID: str, volumeNode, modifier, add: bool, overwrite: bool) -> None:
        """Modify the segment by ``modifier``: Set mode (``add`` False) or Add mode, honouring the editor node's
        masking; other segments lose the modifier's voxels as its overwrite mode says, or not at all."""


class LogicWriter:
    """Writes through a ``vtkSlicerSegmentEditorLogic`` (Slicer 5.10+, ``Modules/Loadable/Segmentations/Logic/
    vtkSlicerSegmentEditorLogic.h``), the code path of the Segment Editor. Made by ``makeEditorLogic``, the logic
    selects the nodes in its own editor node, into which each write first copies the masking and overwrite settings
    of the Segment Editor (``syncMaskingSettings``); ``SaveStateForUndo`` makes the write one undo step of the logic.

    Raises (``ValueError``, before anything is written) when the editable area is a segment that is not in the
    segmentation being written (the Segment Editor's mask segment belongs to another segmentation)."""

    def __init__(self, editorLogic) -> None:
        self.editorLogic = editorLogic

    def _select(self, segmentationNode, segmentID: str, volumeNode) -> None:
        logic = self.editorLogic
        checkMaskSegment(syncMaskingSettings(logic), segmentationNode)
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


def segmentEditorModuleNode(scene):
    """The Segment Editor module's parameter node, or None before that module made one (SAMMed never creates it,
    reads only its masking settings and never changes its selection)."""
    if scene is None:
        return None
    return scene.GetSingletonNode(SEGMENT_EDITOR_NODE_SINGLETON, "vtkMRMLSegmentEditorNode")


def privateEditorNode(scene):
    """A segment editor node for one editor logic of ours: hidden, not saved with the scene, a singleton (so closing
    the scene keeps it). Reuses one that no logic observes any more, else adds "SAMMed", "SAMMed2", ..."""
    for n in range(1, 10000):
        tag = PRIVATE_EDITOR_NODE_SINGLETON + (str(n) if n > 1 else "")
        node = scene.GetSingletonNode(tag, "vtkMRMLSegmentEditorNode")
        if node is None:
            node = slicer.vtkMRMLSegmentEditorNode()
            node.SetName(tag)
            node.SetSingletonTag(tag)
            node.SetHideFromEditors(True)
            node.SetSaveWithScene(False)
            return scene.AddNode(node)
        if not node.HasObserver(vtk.vtkCommand.ModifiedEvent):  # a logic observes its editor node
            node.RemoveNodeReferenceIDs(SETTINGS_SOURCE_ROLE)
            return node
    raise RuntimeError("Too many SAMMed segment editor nodes in the scene.")


def makeEditorLogic(scene, editorNode=None, appLogic=None):
    """A ``vtkSlicerSegmentEditorLogic`` on ``scene`` with an editor node of its own (``privateEditorNode``): its
    writes follow the masking and overwrite settings of ``editorNode`` (default: the Segment Editor module's node,
    looked up at each write) and change no other node's selection; its undo history is its own.

    Raises:
        ValueError: ``editorNode`` is not in ``scene``.
    """
    logic = slicer.vtkSlicerSegmentEditorLogic()
    if appLogic is not None:
        logic.SetMRMLApplicationLogic(appLogic)
    logic.SetMRMLScene(scene)
    node = privateEditorNode(scene)
    if editorNode is not None:
        if editorNode.GetScene() is None or not editorNode.GetID():
            raise ValueError("The segment editor node whose settings writes follow must be in the scene.")
        node.SetNodeReferenceID(SETTINGS_SOURCE_ROLE, editorNode.GetID())
    logic.SetSegmentEditorNode(node)
    return logic


def copyMaskingSettings(source, target) -> None:
    """Copy what decides which voxels an edit may change (``vtkMRMLSegmentEditorNode.h``, Slicer 5.10): editable
    area (``MaskMode``, ``MaskSegmentID``), editable intensity range (``SourceVolumeIntensityMask``,
    ``SourceVolumeIntensityMaskRange``) and ``OverwriteMode``; not the selection nor effect parameters."""
    target.SetMaskMode(source.GetMaskMode())
    target.SetMaskSegmentID(source.GetMaskSegmentID())
    target.SetSourceVolumeIntensityMask(source.GetSourceVolumeIntensityMask())
    target.SetSourceVolumeIntensityMaskRange(*source.GetSourceVolumeIntensityMaskRange())
    target.SetOverwriteMode(source.GetOverwriteMode())


def syncMaskingSettings(editorLogic):
    """Before a write: the logic's editor node (put back in the scene if it was removed) takes the settings of its
    settings node (``makeEditorLogic``'s ``editorNode``, else the Segment Editor's node). With neither (the Segment
    Editor not opened yet), and for a logic bound to the settings node itself, its own settings stay (Slicer's
    defaults unless set on it). Returns the logic's editor node."""
    node = editorLogic.GetSegmentEditorNode()
    scene = editorLogic.GetMRMLScene()
    if node is None or node.GetScene() is None:
        node = privateEditorNode(scene)
        editorLogic.SetSegmentEditorNode(node)
    source = node.GetNodeReference(SETTINGS_SOURCE_ROLE)
    if source is None:
        source = segmentEditorModuleNode(scene)
    if source is not None and source.GetID() != node.GetID():
        copyMaskingSettings(source, node)
    return node


def checkMaskSegment(editorNode, segmentationNode) -> None:
    """Raises ValueError when the editable area is "inside a segment" that ``segmentationNode`` lacks (Slicer would
    then write nothing, silently)."""
    if editorNode.GetMaskMode() != slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment:
        return
    maskID = editorNode.GetMaskSegmentID()
    if not maskID or segmentationNode.GetSegmentation().GetSegment(maskID) is None:
        raise ValueError(
            f"The editable area (Segment Editor, Masking) is inside segment '{maskID}', which is not in "
            f"'{segmentationNode.GetName()}': choose another editable area or segment."
        )


def undo(editorLogic) -> bool:
    """Undo the last write of ``editorLogic``; False when there is nothing to undo. The logic's history is its own
    (the Segment Editor's stays as it is); it restores the whole segmentation as it was before that write
    (``vtkSegmentationHistory``), so an edit made in that segmentation since then is undone with it."""
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
    matrix = VolumeAccess.ijkToNodeMatrix(volumeNode, node)
    return _imageFromArray(np.ascontiguousarray(mask_kji != 0, dtype=np.uint8), extent, matrix)


def _imageFromArray(array_kji: np.ndarray, extent, imageToNode) -> slicer.vtkOrientedImageData:
    """A uint8 ``vtkOrientedImageData`` holding ``array_kji`` at IJK ``extent``, ``imageToNode`` (4x4 array or
    ``vtkMatrix4x4``) its IJK-to-frame matrix."""
    image = slicer.vtkOrientedImageData()
    image.SetExtent([int(v) for v in extent])
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    scalars = numpy_support.numpy_to_vtk(
        np.ascontiguousarray(array_kji, dtype=np.uint8).ravel(), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR
    )
    image.GetPointData().SetScalars(scalars)
    if not isinstance(imageToNode, vtk.vtkMatrix4x4):
        imageToNode = VolumeAccess.arrayToMatrix(imageToNode)
    image.SetImageToWorldMatrix(imageToNode)
    return image


def _shapeKJI(extent) -> tuple[int, int, int]:
    return extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1


def _blockOn(image, extent) -> np.ndarray:
    """KJI array of ``image``'s scalars on IJK ``extent`` (zeros where the image has none)."""
    e = [int(v) for v in extent]
    scalars = image.GetPointData().GetScalars() if image.GetPointData() is not None else None
    block = numpy_support.vtk_to_numpy(scalars) if scalars is not None else np.zeros(0, np.uint8)
    out = np.zeros(_shapeKJI(e), dtype=block.dtype)
    if scalars is None or image.IsEmpty():
        return out
    s = image.GetExtent()
    block = block.reshape(_shapeKJI(s))
    lo = [max(s[4], e[4]), max(s[2], e[2]), max(s[0], e[0])]
    hi = [min(s[5], e[5]), min(s[3], e[3]), min(s[1], e[1])]
    if any(h < low for low, h in zip(lo, hi, strict=True)):
        return out
    src = block[lo[0] - s[4] : hi[0] - s[4] + 1, lo[1] - s[2] : hi[1] - s[2] + 1, lo[2] - s[0] : hi[2] - s[0] + 1]
    out[lo[0] - e[4] : hi[0] - e[4] + 1, lo[1] - e[2] : hi[1] - e[2] + 1, lo[2] - e[0] : hi[2] - e[0] + 1] = src
    return out


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
    # segments share labelmap layers: this segment is the voxels with its label value
    labelValue = segmentationNode.GetSegmentation().GetSegment(segmentID).GetLabelValue()
    out[...] = _blockOn(resampled, reference.GetExtent()) == labelValue
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


def referenceGeometry(segmentationNode, volumeNode) -> slicer.vtkOrientedImageData:
    """The grid the Segment Editor edits ``segmentationNode`` on (no scalars, in the segmentation's frame).

    As ``vtkSlicerSegmentEditorLogic::GetReferenceImageGeometryString`` (``Modules/Loadable/Segmentations/Logic/
    vtkSlicerSegmentEditorLogic.cxx``): the "Reference image geometry" conversion parameter, its extent grown to hold
    every segment; when the segmentation has none it is set from ``volumeNode`` first. The editor logic builds its
    mask and its aligned source volume (intensity range) on this grid, so a modifier must lie on it too.
    """
    logic, segmentation = slicer.vtkSlicerSegmentEditorLogic, segmentationNode.GetSegmentation()
    geometry = logic.GetReferenceImageGeometryStringFromSegmentation(segmentation)
    if not geometry:
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        geometry = logic.GetReferenceImageGeometryStringFromSegmentation(segmentation)
    image = slicer.vtkOrientedImageData()
    if not geometry or not slicer.vtkSegmentationConverter.DeserializeImageGeometry(geometry, image, False):
        raise ValueError(f"Segmentation '{segmentationNode.GetName()}' has no usable reference geometry.")
    return image


def _checkedMasks(shape_kji, axis: int, masks: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """{slice index: bool HxW mask}, checked against the volume's shape.

    Raises:
        ValueError: a slice out of range or a mask of another shape.
    """
    out = {}
    for index, mask_hw in masks.items():
        index = geometry.check_index(shape_kji, axis, index)
        expected = geometry.slice_shape(shape_kji, axis)
        if np.shape(mask_hw) != expected:
            raise ValueError(f"Mask shape {np.shape(mask_hw)} does not match slice shape {expected} on axis {axis}.")
        out[index] = np.asarray(mask_hw) > 0
    return out


def _sliceLabelsOn(reference, segmentationNode, volumeNode, axis: int, masks: dict[int, np.ndarray]) -> np.ndarray:
    """KJI uint8 array on ``reference``'s extent: each voxel of the reference grid takes the label of the nearest
    volume voxel: ``SLICE_INSIDE_MASK`` / ``SLICE_OUTSIDE_MASK`` on the given slices, 0 elsewhere."""
    e = reference.GetExtent()
    if not masks:
        return np.zeros(_shapeKJI(e), dtype=np.uint8)
    shape_kji = VolumeAccess.volumeShapeKJI(volumeNode)
    lo, hi = min(masks), max(masks)
    blockShape = list(shape_kji)
    blockShape[axis] = hi - lo + 1
    block = np.zeros(blockShape, dtype=np.uint8)
    for index, mask in masks.items():
        geometry.insert_slice(block, axis, index - lo, np.where(mask, SLICE_INSIDE_MASK, SLICE_OUTSIDE_MASK))
    k, j, i = shape_kji
    extent = [0, i - 1, 0, j - 1, 0, k - 1]
    ijk = geometry.ijk_axis(axis)
    extent[2 * ijk], extent[2 * ijk + 1] = lo, hi
    labels = _imageFromArray(block, extent, VolumeAccess.ijkToNodeMatrix(volumeNode, segmentationNode))
    resampled = slicer.vtkOrientedImageData()  # nearest neighbour, 0 outside the slices
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(labels, reference, resampled)
    return _blockOn(resampled, e)


def _segmentOn(reference, segmentationNode, segmentID: str) -> np.ndarray:
    """KJI bool array of a segment on ``reference``'s extent (in the segmentation's frame)."""
    image = slicer.vtkOrientedImageData()
    ok = slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
        segmentationNode, segmentID, image, False
    )
    if not ok or image.IsEmpty():
        return np.zeros(_shapeKJI(reference.GetExtent()), dtype=bool)
    resampled = slicer.vtkOrientedImageData()
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(image, reference, resampled)
    labelValue = segmentationNode.GetSegmentation().GetSegment(segmentID).GetLabelValue()
    return _blockOn(resampled, reference.GetExtent()) == labelValue


def sliceModifiers(segmentationNode, segmentID: str, volumeNode, axis: int, masks: dict[int, np.ndarray]):
    """The two modifiers of a write, on the segmentation's reference geometry (``referenceGeometry``): (the whole
    segment with, on the given slices, only the voxels the new masks keep; the new masks on the given slices alone).
    A reference voxel belongs to the volume slice (and takes the mask value) of its nearest volume voxel; voxels of
    the segment finer than the volume stay as they are off the given slices.

    Raises:
        ValueError: no such segment, a slice out of range or a mask of another shape.
    """
    checked = _checkedMasks(VolumeAccess.volumeShapeKJI(volumeNode), axis, masks)
    if segmentationNode is None or segmentationNode.GetSegmentation().GetSegment(segmentID) is None:
        raise ValueError(f"Segment '{segmentID}' is not in the segmentation; pick an existing segment.")
    reference = referenceGeometry(segmentationNode, volumeNode)
    labels = _sliceLabelsOn(reference, segmentationNode, volumeNode, axis, checked)
    keep = _segmentOn(reference, segmentationNode, segmentID) & (labels != SLICE_OUTSIDE_MASK)
    matrix = vtk.vtkMatrix4x4()
    reference.GetImageToWorldMatrix(matrix)
    extent = reference.GetExtent()
    return _imageFromArray(keep, extent, matrix), _imageFromArray(labels == SLICE_INSIDE_MASK, extent, matrix)


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

    Both modifiers lie on the segmentation's reference geometry (``sliceModifiers``), the grid on which the editor
    logic computes its editable area and intensity range: a segmentation finer than the volume, or made on another
    volume, gets exactly the voxels these allow. Masking and overwrite follow the Segment Editor's settings (copied
    into the writer's editor node): voxels outside the editable area or intensity range keep their current state;
    other segments lose the new voxels (on these slices only) as the overwrite mode says. Two modifications, read
    in ``vtkSlicerSegmentEditorLogic::ModifySegmentByLabelmap`` (``Modules/Loadable/Segmentations/Logic/
    vtkSlicerSegmentEditorLogic.cxx``): Set mode first clears the whole segment and then adds the (masked) modifier
    back together with the segment outside the editable area, so

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
