"""Work proportional to the anatomy: both images cropped to their foreground (plus a margin) before the pyramid
is built, and a velocity field that ends at a crop face ramped down to zero beyond it.

The transform stays in the original physical space: a crop is an exact sub-grid of the image (the same voxels,
sliced), every stage works in millimetres, and the result is applied to the uncropped images. Only voxels far
from both foregrounds are left out: a whole-head 256^3 volume costs what its head costs.

Foreground: the normalised image (``[0, 1]``) averaged over blocks of about 4 mm above 0.05, or the mask when
there is one. Each image's box is the union of its own foreground and the other image's foreground mapped
through the initial linear transform, widened by ``margin_mm`` (the transform still moves during the run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry import Grid
from ..image import Image
from ..transforms import StationaryVelocityField
from ..transforms.linear import LinearTransform
from ..warp import warp_image

__all__ = ["Crop", "foreground_crops", "extend_to_zero"]

#: Below this fraction of voxels kept, an image is cropped (a crop that saves little is not worth a boundary).
WORTH_CROPPING = 0.8


@dataclass
class Crop:
    """An image's crop: the index box ``start <= (i, j[, k]) < stop`` and, per axis, whether the low / high face
    was moved inwards (a face at the image's own border is not a crop face)."""

    start: tuple[int, ...]
    stop: tuple[int, ...]
    faces: list[tuple[bool, bool]] = field(default_factory=list)

    def apply(self, image: Image) -> Image:
        slices = tuple(slice(a, b) for a, b in zip(reversed(self.start), reversed(self.stop)))  # array order
        data = image.data[(slice(None),) + slices].contiguous()
        return Image(data, image.grid.cropped(self.start, self.stop), name=image.name)

    def describe(self, grid: Grid) -> dict:
        return {"size": [b - a for a, b in zip(self.start, self.stop)], "of": list(grid.size)}


def _index_box(mask: torch.Tensor) -> tuple[np.ndarray, np.ndarray] | None:
    """First and last array index ``(k, j[, i])`` of the ``True`` voxels of ``mask`` (per-axis projections: no list
    of voxels), or None when there is none."""
    lo, hi = [], []
    for axis in range(mask.dim()):
        hits = torch.nonzero(mask.any(dim=tuple(a for a in range(mask.dim()) if a != axis))).flatten()
        if hits.numel() == 0:
            return None
        lo.append(int(hits[0]))
        hi.append(int(hits[-1]))
    return np.array(lo), np.array(hi)


def _foreground_box(image: Image, mask: Image | None) -> np.ndarray | None:
    """Physical corners ``(2**dim, dim)`` of the index box of the image's foreground (or of its mask)."""
    grid = image.grid
    if mask is not None:
        box = _index_box(warp_image(mask, None, grid, "nearest").data[0] != 0)
        return None if box is None else _corners(grid, box[0][::-1], box[1][::-1])
    block = np.array([max(1, int(round(4.0 / s))) for s in grid.spacing][::-1])  # array order
    pool = F.avg_pool3d if image.dim == 3 else F.avg_pool2d
    pooled = pool(image.data[None].float(), kernel_size=block.tolist(), stride=block.tolist(), ceil_mode=True)[0, 0]
    box = _index_box(pooled > 0.05)
    if box is None:
        return None
    lo, hi = box[0] * block, np.minimum((box[1] + 1) * block, np.array(grid.shape)) - 1
    return _corners(grid, lo[::-1], hi[::-1])


def _corners(grid: Grid, lo_ijk: np.ndarray, hi_ijk: np.ndarray) -> np.ndarray:
    dim = grid.dim
    corners = np.array([[hi_ijk[a] if (c >> a) & 1 else lo_ijk[a] for a in range(dim)] for c in range(2 ** dim)],
                       dtype=np.float64)
    return grid.index_to_physical(corners)


def _crop_for(grid: Grid, points: list[np.ndarray], margin_mm: float) -> Crop | None:
    """The index box of ``grid`` holding all ``points`` (physical) widened by ``margin_mm``; None when it keeps
    most of the grid."""
    index = np.concatenate([grid.physical_to_index(p) for p in points], axis=0)
    margin = np.array([margin_mm / s for s in grid.spacing])
    size = np.array(grid.size)
    start = np.clip(np.floor(index.min(axis=0) - margin), 0, size - 1).astype(int)
    stop = np.clip(np.ceil(index.max(axis=0) + margin) + 1, 1, size).astype(int)
    stop = np.maximum(stop, np.minimum(start + 4, size))  # at least 4 voxels an axis (check_image_pair's rule)
    start = np.minimum(start, stop - np.minimum(4, size))
    if np.prod(stop - start) > WORTH_CROPPING * np.prod(size):
        return None
    faces = [(bool(a > 0), bool(b < n)) for a, b, n in zip(start, stop, size)]
    return Crop(tuple(int(a) for a in start), tuple(int(b) for b in stop), faces)


def foreground_crops(fixed: Image, moving: Image, fixed_mask: Image | None, moving_mask: Image | None,
                     linear: LinearTransform, margin_mm: float = 15.0) -> tuple[Crop | None, Crop | None]:
    """The crops of the (normalised) fixed and moving images; None for an image not worth cropping, or when a
    foreground is empty (nothing is cropped then)."""
    fixed_box, moving_box = _foreground_box(fixed, fixed_mask), _foreground_box(moving, moving_mask)
    if fixed_box is None or moving_box is None:
        return None, None
    with torch.no_grad():
        moving_in_fixed = linear.inverse().map_points(torch.from_numpy(moving_box)).numpy()
        fixed_in_moving = linear.map_points(torch.from_numpy(fixed_box)).numpy()
    return (_crop_for(fixed.grid, [fixed_box, moving_in_fixed], margin_mm),
            _crop_for(moving.grid, [moving_box, fixed_in_moving], margin_mm))


def extend_to_zero(svf: StationaryVelocityField, crop: Crop, ramp_mm: float = 15.0) -> StationaryVelocityField:
    """The velocity field, estimated on a cropped fixed image, extended beyond each crop face by nodes that fall
    linearly to zero over at least ``ramp_mm``: its exponential then goes continuously to the identity outside
    the crop (a field stopped at a crop face would jump there, inside the fixed image). The added region lies in
    both images' background, so the registration's result over the anatomy is unchanged."""
    grid, v = svf.grid, svf.velocity.detach()
    dim = grid.dim
    pads = []
    for axis in range(dim):
        n = int(math.ceil(ramp_mm / grid.spacing[axis])) + 1
        low, high = crop.faces[axis]
        pads.append((n if low else 0, n if high else 0))
    if not any(a or b for a, b in pads):
        return svf
    def ramp(field: torch.Tensor, t_axis: int, index: int, count: int) -> torch.Tensor:
        """``count`` copies of the face ``index`` scaled from 0 (outermost) towards 1 (next to the crop)."""
        shape = [1] * field.dim()
        shape[t_axis] = count
        weights = (torch.arange(count, dtype=field.dtype) / count).reshape(shape)
        if index != 0:
            weights = weights.flip(t_axis)
        return field.select(t_axis, index).unsqueeze(t_axis) * weights

    out = v
    for axis, (low, high) in enumerate(pads):  # axis in (i, j, k); tensor axis = 1 + (dim - 1 - axis)
        t_axis = 1 + (dim - 1 - axis)
        pieces = ([ramp(out, t_axis, 0, low)] if low else []) + [out] + \
                 ([ramp(out, t_axis, out.shape[t_axis] - 1, high)] if high else [])
        out = torch.cat(pieces, dim=t_axis)
    start = [-a for a, _ in pads]
    origin = grid.index_to_physical(np.array(start, dtype=np.float64))
    new_grid = Grid([n + a + b for n, (a, b) in zip(grid.size, pads)], origin, grid.spacing, grid.direction)
    return StationaryVelocityField(out.contiguous(), new_grid, svf.steps)
