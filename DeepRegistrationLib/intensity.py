"""Intensity normalisation. Each function returns a new float32 :class:`Image`; the input is never modified.

Statistics are taken over ``mask`` (non-zero voxels, on the image's grid) when one is given, else over
all voxels; the result is applied to every voxel.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .errors import InputError
from .image import Image

__all__ = ["clip_percentiles", "zscore", "minmax"]


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
