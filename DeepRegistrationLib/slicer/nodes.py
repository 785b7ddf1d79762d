"""Slicer nodes <-> library images and points: volumes (in their local coordinates), masks, markups.

Slicer is RAS, the library LPS: every conversion goes through :mod:`DeepRegistrationLib.geometry`'s one flip
(``Grid.from_affine(..., ras=True)``, ``Grid.to_affine(ras=True)``, :func:`lps_from_ras_points`). Volumes are
used in their own (local) coordinates: ``IJKToRAS`` gives the library grid (parent transforms are the caller's).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from ..geometry import Grid, lps_from_ras_points
from ..image import Image
from ..warp import warp_image

__all__ = ["slicer_module", "image_from_volume_node", "grid_from_volume_node", "update_volume_node_from_image",
           "mask_from_node", "points_from_markups"]


def slicer_module():
    """The ``slicer`` package (imported here only, so the rest of the library never needs Slicer)."""
    import slicer  # noqa: PLC0415

    return slicer


# ---------------------------------------------------------------------- volumes
def _check_volume_node(node, role: str, allow_labelmap: bool = False, allow_colour: bool = False) -> None:
    """Refuse what cannot be registered, with the node named (RGB(A) vector volumes with ``allow_colour``)."""
    if node is None:
        raise InputError(f"no {role} volume selected")
    if not node.IsA("vtkMRMLVolumeNode"):
        raise InputError(f"{node.GetName()}: the {role} input is a {node.GetClassName()}, not a volume")
    if not allow_labelmap and node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(f"{node.GetName()}: the {role} volume is a labelmap; choose an intensity image "
                         "(labelmaps and segmentations go in the mask inputs)")
    data = node.GetImageData()
    if data is None or data.GetNumberOfPoints() == 0:
        raise InputError(f"{node.GetName()}: the {role} volume has no voxels")
    comps = data.GetNumberOfScalarComponents()
    if comps != 1 and not (allow_colour and comps in (3, 4)):
        raise InputError(f"{node.GetName()}: the {role} volume has {comps} components per voxel (a vector or 4D "
                         "volume); registration needs a scalar volume or an RGB(A) image")
    dims = data.GetDimensions()
    if min(dims[:2]) < 2:
        raise InputError(f"{node.GetName()}: the {role} volume is {dims[0]}x{dims[1]}x{dims[2]} voxels: a line, "
                         "not an image")


def image_from_volume_node(node, role: str = "input", allow_labelmap: bool = False, channel: str | None = None,
                           keep_colour: bool = False) -> Image:
    """The volume's voxels and geometry as a library :class:`Image` (LPS; the volume's local coordinates).

    The voxel array is copied (array order ``(k, j, i)``, dtype kept); the node is not modified. An RGB(A) vector
    volume (a photograph) is accepted when ``channel`` is given (:meth:`Image.to_grayscale`: ``luminance``,
    ``red``, ``green``, ``blue``) or ``keep_colour`` (all its channels); other vector volumes are refused.
    """
    slicer = slicer_module()
    _check_volume_node(node, role, allow_labelmap, allow_colour=channel is not None or keep_colour)
    array = np.array(slicer.util.arrayFromVolume(node), copy=True)
    grid = grid_from_volume_node(node)
    if array.ndim == 4:  # (k, j, i, C): a vector volume
        image = Image(torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, -1, 0))), grid, name=node.GetName())
        return image if keep_colour else image.to_grayscale(channel)
    return Image(torch.from_numpy(array)[None], grid, name=node.GetName())


def grid_from_volume_node(node) -> Grid:
    """The library :class:`Grid` (LPS) of a volume node's voxels, in its local coordinates (no voxel copy)."""
    return Grid.from_affine(_slicer_ijk_to_ras(node), node.GetImageData().GetDimensions(), ras=True)


def _slicer_ijk_to_ras(node) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return slicer_module().util.arrayFromVTKMatrix(m)


def update_volume_node_from_image(node, image: Image) -> None:
    """Set the voxels and geometry of volume ``node`` from a 3D :class:`Image`: single-channel, or RGB(A) for a
    vector volume node."""
    slicer = slicer_module()
    colour = image.num_channels in (3, 4) and node.IsA("vtkMRMLVectorVolumeNode")
    if image.dim != 3 or (image.num_channels != 1 and not colour):
        raise InputError(f"{image.name}: a Slicer volume needs a 3D single-channel image (or RGB for a vector "
                         "volume node)")
    array = image.numpy()  # (k, j, i), or (k, j, i, C) for a colour image
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(image.grid.to_affine(ras=True)))
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()


def mask_from_node(node, reference_volume_node, role: str) -> Image:
    """A mask image from a labelmap volume or a segmentation node (all segments, on the reference's grid)."""
    if node.IsA("vtkMRMLSegmentationNode"):
        segmentation = node.GetSegmentation()
        ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
        if not ids:
            raise InputError(f"{node.GetName()}: the {role} mask segmentation has no segments")
        _check_volume_node(reference_volume_node, role)
        grid = grid_from_volume_node(reference_volume_node)
        union = torch.zeros(grid.shape, dtype=torch.bool)
        for sid in ids:
            segment = _segment_labelmap(node, sid)
            if segment is not None:
                union |= warp_image(segment, None, grid, "nearest").data[0] != 0
        mask = Image(union.to(torch.uint8)[None], grid, name=f"{node.GetName()} ({role} mask)")
    elif node.IsA("vtkMRMLScalarVolumeNode"):
        mask = image_from_volume_node(node, f"{role} mask", allow_labelmap=True)
        mask.name = f"{node.GetName()} ({role} mask)"
        mask = mask.as_label_map()
    else:
        raise InputError(f"{node.GetName()}: the {role} mask must be a segmentation or a labelmap, "
                         f"not a {node.GetClassName()}")
    return mask.check_not_empty_labels()


def _segment_labelmap(node, segment_id: str) -> Image | None:
    """One segment's binary labelmap in its own geometry (local coordinates), without touching the scene."""
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    slicer = slicer_module()
    labelmap = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(node, segment_id, labelmap, False)
    extent = labelmap.GetExtent()
    if extent[1] < extent[0] or extent[3] < extent[2] or extent[5] < extent[4]:
        return None  # an empty segment
    dims = labelmap.GetDimensions()
    m = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(m)
    grid = Grid.from_affine(slicer.util.arrayFromVTKMatrix(m), dims, ras=True,
                           start_index=(extent[0], extent[2], extent[4]))
    array = vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(dims[::-1]) != 0
    return Image(torch.from_numpy(array.astype(np.uint8))[None], grid, name=segment_id)


def points_from_markups(node, role: str) -> np.ndarray:
    """Control points of a markups node, ``(N, 3)`` LPS mm (local coordinates of the node)."""
    slicer = slicer_module()
    if not node.IsA("vtkMRMLMarkupsNode"):
        raise InputError(f"{node.GetName()}: the {role} landmarks must be a markups node")
    ras = np.asarray(slicer.util.arrayFromMarkupsControlPoints(node), dtype=np.float64).reshape(-1, 3)
    if len(ras) == 0:
        raise InputError(f"{node.GetName()}: the {role} landmarks node has no points")
    return lps_from_ras_points(ras)

