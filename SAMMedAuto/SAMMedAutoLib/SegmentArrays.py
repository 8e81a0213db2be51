"""Whole-volume masks <-> segments for SAMMedAuto, on the source volume's voxel grid.

Builds on ``SAMMedAnnotatorLib`` (``VolumeAccess`` for geometry, ``SegmentWrite.segmentArray`` for reading);
adds what propagation needs: whole-volume labelmaps, slice sets, ROI slice ranges and slice positions. Only
``slicer`` MRML classes, ``vtk`` and ``numpy`` are used, so this runs with ``slicer-core``. Arrays are KJI.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk
from sammed import geometry
from SAMMedAnnotatorLib import SegmentWrite
from SAMMedAnnotatorLib import VolumeAccess
from vtk.util import numpy_support


def orientedImageFromMask(mask_kji: np.ndarray, volumeNode, segmentationNode) -> slicer.vtkOrientedImageData:
    """A uint8 (0/1) ``vtkOrientedImageData`` on the volume's voxel grid, in the segmentation node's frame.

    Args:
        mask_kji: KxJxI bool/int mask on the volume grid.

    Raises:
        ValueError: the mask shape is not the volume's.
    """
    shape = VolumeAccess.volumeShapeKJI(volumeNode)
    mask_kji = np.asarray(mask_kji)
    if mask_kji.shape != shape:
        raise ValueError(f"Mask shape {mask_kji.shape} does not match the volume grid {shape}.")
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(shape[2], shape[1], shape[0])
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = (mask_kji != 0).astype(np.uint8).ravel()
    ijkToSegmentation = (np.linalg.inv(VolumeAccess.parentToWorldMatrix(segmentationNode))
                         @ VolumeAccess.ijkToWorldMatrix(volumeNode))
    image.SetImageToWorldMatrix(VolumeAccess.arrayToMatrix(ijkToSegmentation))
    return image


def segmentMaskKJI(segmentationNode, segmentID: str, volumeNode) -> np.ndarray:
    """KxJxI bool mask of a segment on the volume's grid.

    Raises:
        ValueError: the segment does not exist.
    """
    if segmentationNode is None or segmentationNode.GetSegmentation().GetSegment(segmentID) is None:
        raise ValueError(f"Segment '{segmentID}' is not in the segmentation; pick an existing segment.")
    return SegmentWrite.segmentArray(segmentationNode, segmentID, volumeNode).astype(bool)


def setSegmentMask(segmentationNode, segmentID: str, mask_kji: np.ndarray, volumeNode) -> None:
    """Replace a segment's voxels with ``mask_kji`` directly (no undo state, no editor masking: previews only)."""
    image = orientedImageFromMask(mask_kji, volumeNode, segmentationNode)
    ok = slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        image, segmentationNode, segmentID, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    if not ok:
        raise RuntimeError(f"Could not write segment '{segmentID}'.")


def annotatedSlices(mask_kji: np.ndarray, axis: int) -> list[int]:
    """Indices of the slices on ``axis`` where ``mask_kji`` has any voxel."""
    return geometry.foreground_slices(mask_kji, axis)


def slicesMask(shape_kji: tuple[int, int, int], axis: int, indices) -> np.ndarray:
    """KxJxI bool array (read-only broadcast) that is True on the given slices of ``axis``."""
    selected = np.zeros(shape_kji[axis], dtype=bool)
    selected[list(indices)] = True
    view = [1, 1, 1]
    view[axis] = shape_kji[axis]
    return np.broadcast_to(selected.reshape(view), tuple(shape_kji))


def sliceRangeFromROI(roiNode, volumeNode, axis: int) -> tuple[int, int]:
    """First and last slice (inclusive) on array ``axis`` that a markups ROI covers, clipped to the volume.

    Raises:
        ValueError: the ROI does not overlap the volume along ``axis``.
    """
    geometry.check_axis(axis)
    bounds = [0.0] * 6
    roiNode.GetRASBounds(bounds)
    corners = np.array([[x, y, z, 1.0] for x in bounds[0:2] for y in bounds[2:4] for z in bounds[4:6]])
    ijk = (VolumeAccess.worldToIJKMatrix(volumeNode) @ corners.T).T[:, :3]
    values = ijk[:, 2 - axis]  # array axis a <-> IJK axis 2 - a
    n = VolumeAccess.volumeShapeKJI(volumeNode)[axis]
    first = max(int(np.ceil(values.min() - 1e-6)), 0)  # slices whose centre lies inside the ROI
    last = min(int(np.floor(values.max() + 1e-6)), n - 1)
    if first > last:
        raise ValueError(f"The ROI '{roiNode.GetName()}' does not overlap the volume; move it over the volume.")
    return first, last


def sliceCenterRAS(volumeNode, axis: int, index: int) -> tuple[float, float, float]:
    """World RAS position of the centre of slice ``index`` on array ``axis`` (to move the slice views there)."""
    shape = VolumeAccess.volumeShapeKJI(volumeNode)
    geometry.check_index(shape, axis, index)
    ijk = np.array([(shape[2] - 1) / 2.0, (shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0, 1.0])
    ijk[2 - axis] = index
    ras = VolumeAccess.ijkToWorldMatrix(volumeNode) @ ijk
    return float(ras[0]), float(ras[1]), float(ras[2])
