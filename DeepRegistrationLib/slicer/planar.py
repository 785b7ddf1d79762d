"""2D images in Slicer: a photograph is a single-slice (often RGB vector) volume there; the library registers it as
the 2D image it is, and the 2D result goes back into the scene as a 3D transform and single-slice volumes.

A single slice whose normal is a physical axis ``p`` is a 2D image on the other two axes (``keep``), in LPS mm
(:func:`~DeepRegistrationLib.io.images.single_slice_as_2d`). A 2D transform ``T2`` (fixed -> moving, on ``keep``)
becomes the 3D mapping ``y[keep] = T2(x[keep])``, ``y[p] = x[p]``: exactly for a linear ``T2`` (an affine with
the 2D block), and otherwise as a displacement field on the fixed slice's grid, two nodes thick along ``p`` (half
a slice either side, the same vectors on both), so that every point of the slice's slab moves in-plane.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from ..geometry import Grid
from ..image import Image
from ..transforms import AffineTransform, DisplacementField, Transform
from ..transforms.polynomial import PolynomialTransform

__all__ = ["is_single_slice", "planar_axes", "as_planar", "embed_image", "embed_transform", "embed_points_axes"]


def is_single_slice(image: Image) -> bool:
    return image.dim == 3 and image.grid.size[2] == 1


def planar_axes(grid: Grid) -> tuple[int, list[int]]:
    """``(p, keep)``: the physical axis along the slice normal and the two in-plane axes of a single-slice grid."""
    d3 = grid.direction_matrix()
    p = int(np.argmax(np.abs(d3[:, 2])))
    if not np.isclose(abs(d3[p, 2]), 1.0, atol=1e-6):
        raise InputError("the slice is oblique (its normal is not a physical axis); resample it to an axis-aligned "
                         "slice to register it as a 2D image")
    return p, [a for a in range(3) if a != p]


def as_planar(image: Image) -> Image:
    """A single-slice 3D image as its 2D image."""
    from ..io.images import single_slice_as_2d

    planar_axes(image.grid)  # a clear error for an oblique slice
    flat = single_slice_as_2d(image)
    if flat is None:
        raise InputError(f"{image.name}: not a single slice")
    return flat


def embed_image(image: Image, slice_grid: Grid) -> Image:
    """A 2D image on the in-plane grid of ``slice_grid`` as the single-slice 3D image on ``slice_grid``."""
    if image.dim != 2 or tuple(image.grid.size) != tuple(slice_grid.size[:2]):
        raise InputError(f"{image.name}: expected a 2D image of {slice_grid.size[0]}x{slice_grid.size[1]} pixels")
    return Image(image.data[:, None], slice_grid, image.name)


def embed_points_axes(points: np.ndarray, slice_grid: Grid) -> np.ndarray:
    """3D points (LPS mm) -> their in-plane coordinates (the ``keep`` axes)."""
    _, keep = planar_axes(slice_grid)
    return np.asarray(points, dtype=np.float64)[:, keep]


def embed_transform(transform: Transform, slice_grid: Grid, field_spacing_px: int | None = None) -> Transform:
    """The 3D mapping of a 2D ``transform`` (see the module docstring), for the slice ``slice_grid``.

    ``field_spacing_px``: node spacing of the field in slice pixels (default 4 for a global 2D model, whose linear
    interpolation between nodes 4 px apart errs by < 0.01 px, else 1)."""
    if transform.dim == 3:
        return transform
    p, keep = planar_axes(slice_grid)
    if transform.is_linear:
        affine = transform.collapse_linear() if hasattr(transform, "collapse_linear") else transform.to_affine()
        matrix, offset = np.eye(3), np.zeros(3)
        matrix[np.ix_(keep, keep)] = affine.matrix().detach().double().numpy()
        offset[keep] = affine.offset().detach().double().numpy()
        return AffineTransform(matrix, offset)
    factor = field_spacing_px or (4 if isinstance(transform, PolynomialTransform) else 1)
    plane = slice_grid.coarsened(factor)
    normal = slice_grid.direction_matrix()[:, 2] * slice_grid.spacing[2]
    grid = Grid((plane.size[0], plane.size[1], 2), np.asarray(plane.origin) - 0.5 * normal,
                (plane.spacing[0], plane.spacing[1], slice_grid.spacing[2]), plane.direction)
    points = grid.physical_points(dtype=torch.float64)  # (2, j, i, 3)
    with torch.no_grad():
        in_plane = points[..., keep]
        mapped = transform.map_points(in_plane.reshape(-1, 2)).reshape(in_plane.shape)
    field = torch.zeros((3, *grid.shape), dtype=torch.float64)
    for axis, k in enumerate(keep):
        field[k] = mapped[..., axis] - in_plane[..., axis]
    if not bool(torch.isfinite(field).all()):
        raise InputError("the 2D transform cannot map every point of the slice (a homography's horizon crosses it)")
    return DisplacementField(field, grid)
