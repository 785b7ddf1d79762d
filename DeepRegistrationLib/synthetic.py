"""Known geometry for tests, benchmarks and (later) training: oblique anisotropic grids, smooth fields.

All positions in LPS mm; every transform returned is a resampling transform fixed -> moving.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .geometry import Grid
from .transforms import AffineTransform, DisplacementField, RigidTransform, Transform, compose, rotation_matrix

__all__ = ["oblique_grid", "smooth_field", "known_transform", "head_phantom"]


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


def head_phantom(grid: Grid, seed: int = 0) -> np.ndarray:
    """A head-like test volume on ``grid`` (array order ``(k, j, i)``, float32, about 0..1): scalp, a textured
    brain with two ventricles, in LPS mm around the grid's centre. For registration tests that need anatomy-like
    structure without any data file (the Slicer self-test runs offline); the texture is low-pass noise
    (``seed``), so that no two offsets look alike."""
    rng = np.random.default_rng(seed)
    p = grid.physical_points(dtype=torch.float64).numpy() - grid.center()  # (k, j, i, 3) LPS mm from the centre

    def inside(center, radii, soft=1.5):
        r = np.sqrt((((p - np.asarray(center)) / np.asarray(radii)) ** 2).sum(-1))
        return 1.0 / (1.0 + np.exp((r - 1.0) * min(radii) / soft))  # a smooth edge ~``soft`` mm wide

    noise = rng.standard_normal(grid.shape)
    freq = np.meshgrid(*[np.fft.fftfreq(n, d=s) for n, s in zip(grid.shape, grid.spacing[::-1])], indexing="ij")
    lowpass = np.exp(-2.0 * (np.pi * 6.0) ** 2 * sum(f ** 2 for f in freq))  # Gaussian, sigma 6 mm
    texture = np.real(np.fft.ifftn(np.fft.fftn(noise) * lowpass))
    texture /= np.abs(texture).max() + 1e-12
    volume = 0.35 * inside((0, 0, 0), (72, 88, 66)) + 0.3 * inside((0, 0, 0), (62, 78, 56)) * (1.0 + 0.5 * texture)
    for x in (-9.0, 9.0):
        volume -= 0.45 * inside((x, -6.0, 6.0), (6.0, 22.0, 9.0))
    return np.clip(volume, 0.0, None).astype(np.float32)
