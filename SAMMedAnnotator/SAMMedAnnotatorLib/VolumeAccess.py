"""MRML volumes <-> numpy and world (RAS) <-> slice pixels, for the SAMMed annotator.

Uses only ``slicer`` MRML classes, ``vtk``, ``numpy`` and ``sammed`` (testable with ``slicer-core``).

Frames:
- IJK: voxel index of the volume node (I fastest). Arrays are KJI (``slicer.util.arrayFromVolume``).
- world: RAS after the volume's parent transforms (where markups live and slice views cut).
- slice pixels: ``(x, y) = (column, row)`` of ``sammed.geometry.extract_slice(volume_kji, axis, index)``:
  axis 0 -> (x, y) = (I, J); axis 1 -> (I, K); axis 2 -> (J, K). Array axis = 2 - IJK axis.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk
from sammed.io import Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
ALIGNMENT_TOLERANCE = 0.999  # |cos| between a view normal and a volume IJK axis
# slice pixel (x, y) -> IJK component, per array axis
_XY_IJK = {0: (0, 1), 1: (0, 2), 2: (1, 2)}


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
    axis = 2 - ijkAxis
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
    cx, cy = _XY_IJK[axis]
    return np.c_[ijk[:, cx], ijk[:, cy]], ijk[:, 2 - axis]


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


def _clipBox(box: np.ndarray, shape_hw: tuple[int, int]) -> np.ndarray:
    h, w = shape_hw
    x0, y0, x1, y1 = box
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    if x1 < -0.5 or y1 < -0.5 or x0 > w - 0.5 or y0 > h - 0.5:
        raise ValueError("The box is outside the volume on this slice.")
    out = np.array([max(x0, 0.0), max(y0, 0.0), min(x1, w - 1.0), min(y1, h - 1.0)])
    return np.round(out).astype(float)


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
    box = np.array([xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()])
    return _clipBox(box, sliceShapeHW(volumeNode, axis))


def twoPointBoxOnSlice(volumeNode, axis: int, index: int, pointsWorld) -> np.ndarray:
    """The box (XYXY, slice pixels) spanned by two opposite corner points (a two-click rectangle).

    Raises:
        ValueError: fewer than two points on this slice.
    """
    xy = pointsOnSlice(volumeNode, axis, index, pointsWorld)
    if len(xy) < 2:
        raise ValueError("Place two corner points of the box on this slice.")
    xy = xy[-2:]
    box = np.array([xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()])
    return _clipBox(box, sliceShapeHW(volumeNode, axis))


def sliceXYToWorld(volumeNode, axis: int, index: int, points_xy) -> np.ndarray:
    """World RAS (Nx3) of slice pixels (Nx2, x = column, y = row) on slice ``index`` (inverse of worldToSliceXY)."""
    xy = np.asarray(points_xy, dtype=float).reshape(-1, 2)
    ijk = np.zeros((len(xy), 4))
    cx, cy = _XY_IJK[axis]
    ijk[:, cx] = xy[:, 0]
    ijk[:, cy] = xy[:, 1]
    ijk[:, 2 - axis] = index
    ijk[:, 3] = 1.0
    return (ijkToWorldMatrix(volumeNode) @ ijk.T).T[:, :3]


def sliceOriginToRAS(volumeNode, axis: int, index: int, sliceToRAS) -> np.ndarray:
    """A copy of ``sliceToRAS`` moved along its normal so the plane passes through slice ``index`` (for views)."""
    matrix = asArray4x4(sliceToRAS).copy()
    center = sliceXYToWorld(volumeNode, axis, index, [[0.0, 0.0]])[0]
    normal = matrix[:3, 2] / np.linalg.norm(matrix[:3, 2])
    matrix[:3, 3] += normal * float(np.dot(center - matrix[:3, 3], normal))
    return matrix
