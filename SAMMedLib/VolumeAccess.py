"""MRML volumes <-> numpy, and world (RAS) <-> IJK <-> slice pixels, for both SAMMed modules and the effect.

The Slicer side's only file that converts between frames (the array-axis <-> IJK rules come from
``sammed.geometry``). Uses only ``slicer`` MRML classes, ``vtk``, ``numpy`` and ``sammed`` (testable with
``slicer-core``).

Frames:
- IJK: voxel index of the volume node (I fastest). Arrays are KJI (``slicer.util.arrayFromVolume``).
- world: RAS after the node's parent transforms (where markups live and slice views cut).
- slice pixels: ``(x, y) = (column, row)`` of ``sammed.geometry.extract_slice(volume_kji, axis, index)``:
  axis 0 -> (x, y) = (I, J); axis 1 -> (I, K); axis 2 -> (J, K) (``geometry.slice_ijk_axes``).
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk

from sammed import geometry
from sammed.io import Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
ALIGNMENT_TOLERANCE = 0.999  # |cos| between a view normal and a volume IJK axis


def _matrixToArray(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def arrayToMatrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def asArray4x4(matrix) -> np.ndarray:
    """A 4x4 float array from a ``vtkMatrix4x4`` or anything array-like."""
    if isinstance(matrix, vtk.vtkMatrix4x4):
        return _matrixToArray(matrix)
    out = np.asarray(matrix, dtype=float)
    if out.shape != (4, 4):
        raise ValueError(f"Expected a 4x4 matrix, got shape {out.shape}.")
    return out


def ijkToRASFromVolume(volume: Volume) -> np.ndarray:
    """4x4 IJK-to-RAS matrix of a ``sammed.io.Volume`` (its geometry is LPS; RAS = diag(-1, -1, 1) LPS)."""
    matrix = np.eye(4)
    matrix[:3, :3] = LPS_TO_RAS @ np.asarray(volume.direction_lps, dtype=float) @ np.diag(volume.spacing_ijk)
    matrix[:3, 3] = LPS_TO_RAS @ np.asarray(volume.origin_lps, dtype=float)
    return matrix


def parentToWorldMatrix(node) -> np.ndarray:
    """4x4 matrix from the node's local frame to world (identity without a parent transform).

    Raises:
        ValueError: the parent transform is not linear (SAMMed needs a linear transform to map prompts).
    """
    transformNode = node.GetParentTransformNode()
    if transformNode is None:
        return np.eye(4)
    if not transformNode.IsTransformToWorldLinear():
        raise ValueError(
            f"'{node.GetName()}' is under a non-linear transform; harden or remove the transform before segmenting."
        )
    matrix = vtk.vtkMatrix4x4()
    transformNode.GetMatrixTransformToWorld(matrix)
    return _matrixToArray(matrix)


def ijkToWorldMatrix(volumeNode) -> np.ndarray:
    """4x4 matrix from the volume's IJK to world RAS, parent transforms included."""
    ijkToRAS = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRAS)
    return parentToWorldMatrix(volumeNode) @ _matrixToArray(ijkToRAS)


def worldToIJKMatrix(volumeNode) -> np.ndarray:
    """4x4 matrix from world RAS to the volume's IJK (inverse of ``ijkToWorldMatrix``)."""
    return np.linalg.inv(ijkToWorldMatrix(volumeNode))


def ijkToNodeMatrix(volumeNode, node) -> np.ndarray:
    """4x4 matrix from the volume's IJK to ``node``'s own frame (e.g. where a segmentation stores its labelmaps)."""
    return np.linalg.inv(parentToWorldMatrix(node)) @ ijkToWorldMatrix(volumeNode)


def volumeShapeKJI(volumeNode) -> tuple[int, int, int]:
    imageData = volumeNode.GetImageData()
    if imageData is None:
        raise ValueError(f"Volume '{volumeNode.GetName()}' has no voxels.")
    i, j, k = imageData.GetDimensions()
    return int(k), int(j), int(i)


def volumeFromNode(volumeNode) -> Volume:
    """A ``sammed.io.Volume`` with a copy of the node's voxels (KJI) and its world geometry in LPS.

    The copy is what may cross to the worker thread (VTK memory must not).

    Raises:
        ValueError: no node, no voxels, more than one component, or a non-linear parent transform.
    """
    if volumeNode is None:
        raise ValueError("Select a volume first.")
    imageData = volumeNode.GetImageData()
    if imageData is None:
        raise ValueError(f"Volume '{volumeNode.GetName()}' has no voxels.")
    if imageData.GetNumberOfScalarComponents() != 1:
        raise ValueError(
            f"Volume '{volumeNode.GetName()}' has {imageData.GetNumberOfScalarComponents()} components per voxel; "
            "SAMMed needs a scalar (grey-value) volume."
        )
    array_kji = np.array(slicer.util.arrayFromVolume(volumeNode), copy=True)
    ijkToWorld = ijkToWorldMatrix(volumeNode)
    columns = ijkToWorld[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    direction_ras = columns / np.where(spacing > 0, spacing, 1.0)
    return Volume(
        array_kji=array_kji,
        spacing_ijk=tuple(float(s) for s in volumeNode.GetSpacing()),
        origin_lps=tuple(LPS_TO_RAS @ ijkToWorld[:3, 3]),
        direction_lps=LPS_TO_RAS @ direction_ras,
        name=volumeNode.GetName() or "",
    )


def sliceAxisAndIndex(volumeNode, sliceToRAS) -> tuple[int, int]:
    """Array axis and slice index shown by a slice view.

    Args:
        volumeNode: the volume being segmented.
        sliceToRAS: the view's SliceToRAS (``vtkMRMLSliceNode.GetSliceToRAS()``, a vtkMatrix4x4 or 4x4 array):
            columns 0 and 1 span the view plane in world RAS, column 3 is a point on it.

    Returns:
        (axis, index): ``axis`` of the KJI array (2 - IJK axis) and the slice index nearest to the view plane.

    Raises:
        ValueError: the view is oblique to the volume's voxel grid, or it shows no slice of the volume.
    """
    matrix = asArray4x4(sliceToRAS)
    worldToIJK = worldToIJKMatrix(volumeNode)
    u = worldToIJK[:3, :3] @ matrix[:3, 0]
    v = worldToIJK[:3, :3] @ matrix[:3, 1]
    normal = np.cross(u, v)
    length = np.linalg.norm(normal)
    if length == 0:
        raise ValueError("The slice view has a degenerate orientation matrix.")
    normal = np.abs(normal / length)
    ijkAxis = int(normal.argmax())
    if normal[ijkAxis] < ALIGNMENT_TOLERANCE:
        raise ValueError(
            f"This slice view is oblique to the voxel grid of '{volumeNode.GetName()}'. SAMMed segments slices of "
            "the volume: use the Red, Yellow or Green view, or reset the view orientation "
            "(slice view menu > Reset orientation to volume axes)."
        )
    axis = geometry.array_axis(ijkAxis)
    origin = worldToIJK @ np.append(matrix[:3, 3], 1.0)
    index = int(np.floor(origin[ijkAxis] + 0.5))
    size = volumeShapeKJI(volumeNode)[axis]
    if not 0 <= index < size:
        raise ValueError(
            f"The slice view is outside '{volumeNode.GetName()}' (slice {index}, the volume has 0..{size - 1} on "
            "this axis); scroll the view into the volume."
        )
    return axis, index


def worldToSliceXY(volumeNode, axis: int, pointsWorld) -> tuple[np.ndarray, np.ndarray]:
    """Slice pixel coordinates of world points.

    Args:
        pointsWorld: Nx3 RAS world positions (mm).

    Returns:
        (points_xy, depth): Nx2 float (x = column, y = row) in the slice frame of ``axis``, and N float, the
        continuous slice index of each point along ``axis``.
    """
    pts = np.asarray(pointsWorld, dtype=float).reshape(-1, 3)
    ijk = (worldToIJKMatrix(volumeNode) @ np.c_[pts, np.ones(len(pts))].T).T[:, :3]
    cx, cy = geometry.slice_ijk_axes(axis)
    return np.c_[ijk[:, cx], ijk[:, cy]], ijk[:, geometry.ijk_axis(axis)]


def controlPointsWorld(markupsNode) -> np.ndarray:
    """Nx3 world positions of the defined control points of a markups node (empty 0x3 if none)."""
    if markupsNode is None:
        return np.zeros((0, 3))
    out = []
    for n in range(markupsNode.GetNumberOfControlPoints()):
        if not markupsNode.GetNthControlPointPositionStatus(n) == markupsNode.PositionDefined:
            continue
        p = [0.0, 0.0, 0.0]
        markupsNode.GetNthControlPointPositionWorld(n, p)
        out.append(p)
    return np.asarray(out, dtype=float).reshape(-1, 3)


def pointsOnSlice(volumeNode, axis: int, index: int, pointsWorld, tolerance: float = 0.5) -> np.ndarray:
    """Slice pixels (Mx2, x = column, y = row) of the points lying on slice ``index`` (within ``tolerance`` voxels).

    Points placed on other slices are left out, so one markups node can hold points of many slices.
    """
    xy, depth = worldToSliceXY(volumeNode, axis, pointsWorld)
    keep = np.abs(depth - index) <= tolerance
    return xy[keep]


def sliceShapeHW(volumeNode, axis: int) -> tuple[int, int]:
    shape = list(volumeShapeKJI(volumeNode))
    del shape[axis]
    return shape[0], shape[1]


def roiBoxOnSlice(volumeNode, axis: int, index: int, roiNode) -> np.ndarray:
    """The box (XYXY, slice pixels, inclusive) that an ROI markup covers on slice ``index``.

    The ROI's eight corners (world) are projected onto the slice; a rotated ROI gives its bounding rectangle.

    Raises:
        ValueError: the ROI is not defined, or it does not cross this slice.
    """
    if roiNode is None or roiNode.GetNumberOfControlPoints() == 0:
        raise ValueError("Place a box (ROI) on the slice first.")
    objectToWorld = _matrixToArray(roiNode.GetObjectToWorldMatrix())  # origin at the ROI centre, unit axes
    size = [0.0, 0.0, 0.0]
    roiNode.GetSizeWorld(size)
    half = np.asarray(size, dtype=float) / 2.0
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=float) * half
    # GetObjectToWorldMatrix has unit axes; the size is already in world units
    cornersWorld = (objectToWorld @ np.c_[corners, np.ones(8)].T).T[:, :3]
    xy, depth = worldToSliceXY(volumeNode, axis, cornersWorld)
    if depth.max() < index - 0.5 or depth.min() > index + 0.5:
        # a flat ROI drawn in the view has zero thickness: accept it when its plane is on the slice
        raise ValueError(f"The box does not cross slice {index}; draw it on the slice you are segmenting.")
    return geometry.check_box(geometry.box_from_points(xy), sliceShapeHW(volumeNode, axis))


def twoPointBoxOnSlice(volumeNode, axis: int, index: int, pointsWorld) -> np.ndarray:
    """The box (XYXY, slice pixels) spanned by two opposite corner points (a two-click rectangle).

    Raises:
        ValueError: fewer than two points on this slice.
    """
    xy = pointsOnSlice(volumeNode, axis, index, pointsWorld)
    if len(xy) < 2:
        raise ValueError("Place two corner points of the box on this slice.")
    return geometry.check_box(geometry.box_from_points(xy[-2:]), sliceShapeHW(volumeNode, axis))


def sliceXYToWorld(volumeNode, axis: int, index: int, points_xy) -> np.ndarray:
    """World RAS (Nx3) of slice pixels (Nx2, x = column, y = row) on slice ``index`` (inverse of worldToSliceXY)."""
    xy = np.asarray(points_xy, dtype=float).reshape(-1, 2)
    ijk = np.zeros((len(xy), 4))
    cx, cy = geometry.slice_ijk_axes(axis)
    ijk[:, cx] = xy[:, 0]
    ijk[:, cy] = xy[:, 1]
    ijk[:, geometry.ijk_axis(axis)] = index
    ijk[:, 3] = 1.0
    return (ijkToWorldMatrix(volumeNode) @ ijk.T).T[:, :3]


def sliceRangeFromROI(roiNode, volumeNode, axis: int) -> tuple[int, int]:
    """First and last slice (inclusive) on array ``axis`` that a markups ROI covers, clipped to the volume.

    Raises:
        ValueError: the ROI does not overlap the volume along ``axis``.
    """
    bounds = [0.0] * 6
    roiNode.GetRASBounds(bounds)
    corners = np.array([[x, y, z, 1.0] for x in bounds[0:2] for y in bounds[2:4] for z in bounds[4:6]])
    ijk = (worldToIJKMatrix(volumeNode) @ corners.T).T[:, :3]
    values = ijk[:, geometry.ijk_axis(axis)]
    n = volumeShapeKJI(volumeNode)[axis]
    first = max(int(np.ceil(values.min() - 1e-6)), 0)  # slices whose centre lies inside the ROI
    last = min(int(np.floor(values.max() + 1e-6)), n - 1)
    if first > last:
        raise ValueError(f"The ROI '{roiNode.GetName()}' does not overlap the volume; move it over the volume.")
    return first, last


def sliceCenterRAS(volumeNode, axis: int, index: int) -> tuple[float, float, float]:
    """World RAS position of the centre of slice ``index`` on array ``axis`` (to move the slice views there)."""
    shape = volumeShapeKJI(volumeNode)
    geometry.check_index(shape, axis, index)
    h, w = geometry.slice_shape(shape, axis)
    ras = sliceXYToWorld(volumeNode, axis, index, [[(w - 1) / 2.0, (h - 1) / 2.0]])[0]
    return float(ras[0]), float(ras[1]), float(ras[2])
