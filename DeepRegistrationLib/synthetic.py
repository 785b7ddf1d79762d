"""Known geometry for tests, benchmarks and (later) training: oblique anisotropic grids, smooth fields.

All positions in LPS mm; every transform returned is a resampling transform fixed -> moving.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .geometry import Grid
from .transforms import AffineTransform, DisplacementField, RigidTransform, Transform, compose, rotation_matrix

__all__ = ["oblique_grid", "smooth_field", "known_transform"]


def oblique_grid(reference: Grid, spacing: Sequence[float] = (0.9, 1.2, 2.5),
                 angles: Sequence[float] = (0.2, -0.1, 0.15), extent: Sequence[float] | None = None) -> Grid:
    """A grid with ``spacing`` (mm) and a direction rotated by ``angles`` (radians, ITK Euler) from
    ``reference``'s, covering ``extent`` mm (default: the reference's), centred on the reference's centre."""
    rot = rotation_matrix(torch.tensor(angles, dtype=torch.float64), 3).numpy() @ reference.direction_matrix()
    extent = np.asarray(extent if extent is not None else reference.extent_mm(), dtype=np.float64)
    size = [max(2, int(e / s)) for e, s in zip(extent, spacing)]
    return Grid.centred(reference.center(), size, spacing, rot)


def smooth_field(center: np.ndarray, amplitude: float = 4.0, spacing: float = 12.0,
                 size: Sequence[int] = (16, 18, 20)) -> DisplacementField:
    """A smooth 3D displacement field (LPS mm, up to ~``amplitude`` mm) on its own oblique grid around
    ``center``, tapered to zero at the grid border as a deformation of a bounded region is."""
    rot = rotation_matrix(torch.tensor([0.1, 0.2, -0.3], dtype=torch.float64), 3).numpy()
    size_a = np.asarray(size)
    grid = Grid.centred(center, size_a, [spacing] * 3, rot)
    p = grid.physical_points().reshape(-1, 3)
    u = torch.stack([amplitude * torch.sin(p[:, 1] / 25), 0.75 * amplitude * torch.cos(p[:, 2] / 30),
                     amplitude * torch.sin(p[:, 0] / 20 + p[:, 1] / 40)], -1)
    idx = torch.as_tensor(grid.physical_to_index(p.numpy()))
    u = u * torch.sin(torch.pi * idx / torch.as_tensor(size_a - 1)).prod(-1, keepdim=True).clamp(min=0)
    return DisplacementField(u.T.reshape(3, *grid.shape).float().contiguous(), grid)


def known_transform(center: np.ndarray) -> Transform:
    """Rigid (6, -4, 8 deg; 5, -3, 7 mm) then affine (shear/scale, 1, 2, -1 mm) then a smooth field."""
    rigid = RigidTransform(np.radians([6.0, -4.0, 8.0]), [5.0, -3.0, 7.0], center=center)
    affine = AffineTransform(np.array([[1.05, 0.03, -0.02], [0.01, 0.97, 0.04], [-0.03, 0.02, 1.02]]),
                             [1.0, 2.0, -1.0], center=center)
    return compose(rigid, affine, smooth_field(center))
