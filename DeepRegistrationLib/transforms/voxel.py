"""Fields in voxel units on a network's grid: integrate, warp, and convert to a physical transform.

Networks work on tensors of one grid in **voxels**: a field ``(N, dim, *shape)`` has channel ``c`` along tensor
axis ``c`` (array order ``([k,] j, i)``) and is a pull-back displacement, ``warped(x) = image(x + u(x))``
(MONAI's ``Warp`` convention). :func:`voxel_field_to_physical` turns one into the library's
:class:`~.dense.DisplacementField` (LPS mm) on the grid the network saw. Integration is the library's own
scaling and squaring (:func:`~.dense.squaring_normalised`, border-extended), the same one that
:class:`~.dense.StationaryVelocityField` applies at inference.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from ..geometry import Grid
from ..sampling import grid_sample
from .dense import DisplacementField, squaring_normalised

__all__ = ["integrate_voxel_velocity", "warp_voxels", "voxel_field_to_physical"]


def _to_normalised_scale(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """``(1, dim, 1, ...)`` factors voxel -> ``grid_sample`` units for channels in array order."""
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in shape], dtype=like.dtype, device=like.device)
    return scale.reshape(1, len(shape), *([1] * len(shape)))


def integrate_voxel_velocity(velocity: torch.Tensor, steps: int) -> torch.Tensor:
    """Scaling and squaring of a batch of voxel velocities ``(N, dim, *shape)``: the displacement (voxels, same
    layout), ``exp(v) - Id``, with ``v / 2**steps`` squared ``steps`` times (border-extended); differentiable."""
    shape = tuple(velocity.shape[2:])
    scale = _to_normalised_scale(shape, velocity)
    u_n = (velocity / (2.0 ** steps) * scale).flip(1)  # array-order voxels -> (x, y[, z]) normalised
    return squaring_normalised(u_n, steps).flip(1) / scale


def warp_voxels(image: torch.Tensor, displacement: torch.Tensor, mode: str = "bilinear",
                padding_mode: str = "zeros") -> torch.Tensor:
    """``image`` ``(N, C, *shape)`` pulled through a voxel displacement ``(N, dim, *shape)``:
    ``out(x) = image(x + u(x))`` (``grid_sample`` with ``align_corners=True``)."""
    shape = tuple(image.shape[2:])
    dim = len(shape)
    if displacement.shape != (image.shape[0], dim, *shape):
        raise InputError(f"a displacement for images {tuple(image.shape)} must be {(image.shape[0], dim, *shape)}, "
                         f"got {tuple(displacement.shape)}")
    axes = [torch.linspace(-1.0, 1.0, n, dtype=displacement.dtype, device=displacement.device) for n in shape]
    identity = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], -1).unsqueeze(0)  # (1, *shape, dim) xyz
    u_n = (displacement * _to_normalised_scale(shape, displacement)).flip(1)
    grid = identity + u_n.permute(0, *range(2, dim + 2), 1)
    return grid_sample(image, grid.to(image.dtype), mode=mode, padding_mode=padding_mode, align_corners=True)


def voxel_field_to_physical(field: torch.Tensor, grid: Grid) -> DisplacementField:
    """A network displacement ``(dim, *grid.shape)`` in voxels (channel ``k`` along tensor axis ``k``) as
    a :class:`DisplacementField` in LPS mm on ``grid`` (the grid the network saw)."""
    dim = grid.dim
    if field.dim() != dim + 1 or field.shape[0] != dim or tuple(field.shape[1:]) != tuple(grid.shape):
        raise InputError(f"a {dim}D field on a grid of shape {grid.shape} must be ({dim}, *shape); got {tuple(field.shape)}")
    index_to_mm = torch.as_tensor(grid.direction_matrix() @ np.diag(grid.spacing), dtype=field.dtype,
                                  device=field.device)
    index_disp = field.flip(0)  # tensor axes (k, j, i) -> index axes (i, j, k)
    mm = torch.einsum("ij,j...->i...", index_to_mm, index_disp)
    return DisplacementField(mm.contiguous(), grid)
