"""A thumbnail of one registration for the cohort report: a checkerboard of the fixed and the warped moving image
beside the Jacobian determinant map, on the fixed image's middle slice (array axis 0 of a 3D volume), as an RGB PNG.

Jacobian colours: log2(det J) from -1 (blue, halved volume) through 0 (white) to +1 (red, doubled); det J <= 0
(folding) is black.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["checkerboard", "jacobian_colours", "write_thumbnail"]


def _unit(a: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    values = a[mask] if mask is not None and mask.any() else a
    lo, hi = np.percentile(values, [1, 99]) if values.size else (0.0, 1.0)
    return np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1)


def checkerboard(fixed: np.ndarray, warped: np.ndarray, tiles: int = 8) -> np.ndarray:
    """Alternate square tiles of ``fixed`` and ``warped`` (2D arrays, same shape), each scaled to [0, 1]."""
    a, b = _unit(fixed), _unit(warped)
    rows, cols = np.indices(a.shape)
    size = max(1, max(a.shape) // tiles)
    return np.where(((rows // size) + (cols // size)) % 2 == 0, a, b)


def jacobian_colours(det: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] of a 2D Jacobian determinant map (see the module's description)."""
    t = np.clip(np.log2(np.clip(det, 1e-6, None)), -1, 1)
    rgb = np.ones(det.shape + (3,))
    rgb[..., 0] = np.where(t < 0, 1 + t, 1)  # blue side: less red and green
    rgb[..., 1] = 1 - np.abs(t)
    rgb[..., 2] = np.where(t > 0, 1 - t, 1)
    rgb[det <= 0] = 0
    return rgb


def _middle(a: np.ndarray) -> np.ndarray:
    return a[a.shape[0] // 2] if a.ndim == 3 else a


def write_thumbnail(path: str | os.PathLike, fixed: np.ndarray, warped: np.ndarray, det: np.ndarray) -> None:
    """Write ``[checkerboard | gap | Jacobian]`` of the middle slice as an 8-bit RGB PNG (array order, no
    resampling: one pixel per voxel of the fixed grid)."""
    import SimpleITK as sitk

    board = checkerboard(_middle(fixed), _middle(warped))
    grey = np.repeat(board[..., None], 3, axis=-1)
    jac = jacobian_colours(_middle(det))
    gap = np.ones((grey.shape[0], 4, 3))
    rgb = np.concatenate([grey, gap, jac], axis=1)[::-1]  # row 0 at the top of the picture
    image = sitk.GetImageFromArray(np.round(rgb * 255).astype(np.uint8), isVector=True)
    sitk.WriteImage(image, str(path))
