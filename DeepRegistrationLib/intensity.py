"""Intensity normalisation. Each function returns a new float32 :class:`Image`; the input is never modified.

Statistics are taken over ``mask`` (non-zero voxels, on the image's grid) when one is given, else over
all voxels; the result is applied to every voxel.

:func:`normalise_unit_range` is the one preprocessing every method shares (the iterative engine and the
networks' model grid): clip the 0.5 / 99.5 percentiles, min-max to [0, 1]. :func:`smooth_gaussian` smooths with a
physical sigma (mm) and :func:`center_of_mass` gives the intensity centre (LPS mm) used for initialisation and
for placing a network's grid.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .errors import InputError
from .image import Image

__all__ = ["clip_percentiles", "zscore", "minmax", "normalise_unit_range", "smooth_gaussian", "center_of_mass"]


def _values(image: Image, mask: Image | None) -> torch.Tensor:
    data = image.data.float()
    if mask is None:
        return data.reshape(-1)
    if not mask.grid.same_as(image.grid):
        raise InputError(f"{mask.name}: mask is not on the grid of {image.name}; resample it first")
    sel = (mask.data[0] != 0).expand_as(data)
    if not bool(sel.any()):
        raise InputError(f"{mask.name}: the mask is empty (no non-zero voxel)")
    return data[sel]


def _quantiles(values: torch.Tensor, q: Sequence[float]) -> list[float]:
    """Quantiles with linear interpolation (as ``torch.quantile``), by selection (numpy) instead of a full sort.

    Above 4M values a deterministic stride subsample is used (exact enough for clipping percentiles).
    """
    step = max(1, values.numel() // 4_000_000)
    v = values[::step].detach().cpu().numpy()
    return [float(x) for x in np.quantile(v, list(q))]


def clip_percentiles(image: Image, lower: float = 0.5, upper: float = 99.5, mask: Image | None = None) -> Image:
    """Clip intensities to the ``[lower, upper]`` percentiles (0..100)."""
    if not 0 <= lower < upper <= 100:
        raise InputError(f"percentiles must satisfy 0 <= lower < upper <= 100, got {lower}, {upper}")
    lo, hi = _quantiles(_values(image, mask), [lower / 100.0, upper / 100.0])
    return image.with_data(image.data.float().clamp(lo, hi))


def zscore(image: Image, mask: Image | None = None, eps: float = 1e-8) -> Image:
    """Subtract the mean and divide by the standard deviation."""
    v = _values(image, mask).double()
    mean, std = float(v.mean()), float(v.std(unbiased=False))
    return image.with_data((image.data.float() - mean) / max(std, eps))


def minmax(image: Image, out_range: Sequence[float] = (0.0, 1.0), mask: Image | None = None) -> Image:
    """Map ``[min, max]`` linearly to ``out_range``; a constant image maps to ``out_range[0]``."""
    v = _values(image, mask)
    lo, hi = float(v.min()), float(v.max())
    a, b = float(out_range[0]), float(out_range[1])
    scale = (b - a) / (hi - lo) if hi > lo else 0.0
    return image.with_data((image.data.float() - lo) * scale + a)


def normalise_unit_range(image: Image, mask: Image | None = None) -> Image:
    """Intensities to [0, 1] after clipping the 0.5 / 99.5 percentiles (statistics inside ``mask`` when it is
    given and not empty; the mask must be on the image's grid)."""
    if mask is not None and not bool(mask.data.ne(0).any()):
        mask = None
    return minmax(clip_percentiles(image.float(), 0.5, 99.5, mask), (0.0, 1.0), mask)


def smooth_gaussian(image: Image, sigma_mm: float) -> Image:
    """Gaussian smoothing with a physical sigma (mm) through SimpleITK's recursive Gaussian; axes whose spacing
    is at least twice the sigma are left alone (the image unchanged when every axis is)."""
    if sigma_mm <= 0:
        return image
    import SimpleITK as sitk

    sigmas = [sigma_mm if sigma_mm > 0.5 * s else 0.0 for s in image.grid.spacing]
    if not any(sigmas):
        return image
    out = sitk.SmoothingRecursiveGaussian(image.float().to_sitk(), [max(s, 1e-6) for s in sigmas])
    return Image.from_sitk(out, name=image.name)


def center_of_mass(image: Image) -> np.ndarray:
    """Intensity-weighted centre (LPS mm) of the non-negative part of ``image``; its geometric centre when empty.

    Computed from the marginal sums along each index axis (no per-voxel coordinates), then mapped to
    physical space (the index -> physical map is affine, so it maps the centroid exactly).
    """
    w = image.data[0].double().clamp(min=0)
    total = float(w.sum())
    if total <= 0:
        return image.grid.center()
    dim = image.dim
    index = []
    for axis in range(dim):  # index axis a is array axis dim-1-a
        other = tuple(d for d in range(dim) if d != dim - 1 - axis)
        marginal = w.sum(dim=other)
        index.append(float((marginal * torch.arange(marginal.numel(), dtype=torch.float64)).sum()) / total)
    return image.grid.index_to_physical(np.array([index]))[0]
