"""Regularisers of dense fields (differentiable; used by the iterative engine and by network training).

A field is a tensor ``(dim, *shape)`` (array order ``([k,] j, i)``), its channels the vector components in
any consistent unit; ``spacing`` is the grid spacing along the index axes ``(i, j[, k])`` in the same
length unit, so the result is dimensionless for mm vectors on a mm grid (or voxels on a unit grid).
"""

from __future__ import annotations

import torch

__all__ = ["diffusion_regulariser", "diffusion_regulariser_batch"]


def diffusion_regulariser(field: torch.Tensor, spacing: tuple[float, ...]) -> torch.Tensor:
    """Mean squared spatial gradient of a vector field ``(dim, *shape)`` (forward differences), summed over the
    ``dim`` derivative directions: ``sum_a dim * mean((d field / d x_a)^2)``."""
    total = field.new_zeros(())
    dim = field.dim() - 1
    for axis in range(dim):  # array axis `axis` is index axis dim-1-axis
        h = spacing[dim - 1 - axis]
        d = torch.diff(field, dim=axis + 1) / h
        total = total + (d**2).mean() * dim
    return total


def diffusion_regulariser_batch(fields: torch.Tensor) -> torch.Tensor:
    """:func:`diffusion_regulariser` averaged over a batch ``(N, dim, *shape)`` of voxel-unit fields (unit spacing)."""
    ones = (1.0,) * (fields.dim() - 2)
    return sum(diffusion_regulariser(field, ones) for field in fields) / fields.shape[0]
