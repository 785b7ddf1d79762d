"""Interpolation of gridded data at physical points: the one sampler used by warps, fields and optimisers.

``sample(data, grid, points)`` evaluates ``data`` ``(C, *grid.shape)`` at LPS mm ``points`` ``(..., dim)``
and returns ``(C, ...)``. Points whose continuous index lies outside ``[-0.5, size - 0.5)`` get
``default_value``; inside, the border voxels are clamped (ITK's ``ResampleImageFilter`` and
``DisplacementFieldTransform`` rule). Differentiable in ``data`` and ``points`` (linear mode).

Hot loops (optimisers, scaling and squaring) precompute ``normalised = to_normalised(grid, points)``
for fixed points, add displacements with :func:`normalised_linear` and call :func:`sample_normalised`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .geometry import Grid

__all__ = ["sample", "sample_normalised", "to_normalised", "normalised_linear", "inside_normalised",
           "gradient_stack", "sample_with_gradient"]


def to_normalised(grid: Grid, points: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``grid_sample`` coordinates ``(..., dim)`` of physical points (computed in float64, cast to ``dtype``)."""
    n = grid.physical_to_normalised(points if points.dtype == torch.float64 else points.double())
    return n.to(dtype or points.dtype)


def normalised_linear(grid: Grid, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """``(dim, dim)`` matrix ``L`` with ``normalised(x + u) = normalised(x) + u @ L.T`` for mm vectors ``u``."""
    m = grid.physical_to_normalised_matrix()[: grid.dim, : grid.dim]
    return torch.as_tensor(m, dtype=dtype, device=device)


def sample_normalised(data: torch.Tensor, grid: Grid, normalised: torch.Tensor, mode: str = "bilinear",
                      default_value: float = 0.0, extrapolate: bool = False) -> torch.Tensor:
    """Interpolate ``data`` ``(C, *grid.shape)`` at ``grid_sample`` coordinates ``(..., dim)``; returns ``(C, ...)``.

    ``extrapolate=True`` clamps to the border everywhere instead of using ``default_value`` outside.
    """
    dim = grid.dim
    lead = normalised.shape[:-1]
    flat = normalised.reshape(1, -1, *([1] * (dim - 1)), dim).to(data.dtype)
    out = F.grid_sample(data.unsqueeze(0), flat, mode=mode, padding_mode="border", align_corners=True)
    out = out.reshape(data.shape[0], -1)
    if extrapolate:
        return out.reshape(data.shape[0], *lead)
    inside = inside_normalised(grid, flat.reshape(-1, dim))
    if default_value == 0.0:
        out = out * inside.to(out.dtype)
    else:
        out = torch.where(inside, out, torch.as_tensor(default_value, dtype=out.dtype, device=out.device))
    return out.reshape(data.shape[0], *lead)


def inside_normalised(grid: Grid, normalised: torch.Tensor) -> torch.Tensor:
    """Boolean ``(...)``: ``Grid.inside`` (ITK's rule) for ``grid_sample`` coordinates ``(..., dim)``.

    Axes of size 1 count as infinitely thick (their normalised coordinate is always 0).
    """
    size = torch.as_tensor(grid.size, dtype=normalised.dtype, device=normalised.device)
    index = (normalised.detach() + 1.0) * 0.5 * (size - 1)
    return grid.inside(index)


def sample(data: torch.Tensor, grid: Grid, points: torch.Tensor, mode: str = "bilinear",
           default_value: float = 0.0) -> torch.Tensor:
    """Interpolate ``data`` ``(C, *grid.shape)`` at physical ``points`` ``(..., dim)``; returns ``(C, ...)``.

    ``mode``: ``"bilinear"`` ((bi/tri)linear) or ``"nearest"``. Coordinates are converted in float64.
    """
    return sample_normalised(data, grid, to_normalised(grid, points, torch.float64), mode, default_value)


def gradient_stack(data: torch.Tensor, grid: Grid) -> torch.Tensor:
    """``(1, C * (1 + dim), *shape)``: ``data`` ``(C, *shape)`` (C channels: an image, or feature maps) followed
    by its derivatives along the ``grid_sample`` coordinates ``(x, y[, z])``, C channels each (central
    differences; per unit of normalised coordinate)."""
    dim = grid.dim
    chans = [data]
    for c in range(dim):
        axis = dim - c  # array axis of coordinate c in (C, k, j, i)
        chans.append(torch.gradient(data, dim=axis)[0] * (0.5 * (grid.size[c] - 1)))
    return torch.cat(chans).unsqueeze(0).contiguous()


class _SampleWithGradient(torch.autograd.Function):
    """Linear interpolation whose derivative in the coordinates is the interpolated image gradient.

    One forward ``grid_sample`` of the stacked image and its gradient replaces ``grid_sample``'s costly
    backward pass (the hot spot of every optimiser step); the derivative is that of the smooth image
    rather than the piecewise-constant one of trilinear interpolation (as ITK's metrics do).
    """

    @staticmethod
    def forward(ctx, normalised: torch.Tensor, stack: torch.Tensor) -> torch.Tensor:
        dim = normalised.shape[-1]
        channels = stack.shape[1] // (1 + dim)
        flat = normalised.reshape(1, -1, *([1] * (dim - 1)), dim).to(stack.dtype)
        out = F.grid_sample(stack, flat, mode="bilinear", padding_mode="border", align_corners=True)
        out = out.reshape(stack.shape[1], -1)
        ctx.save_for_backward(out[channels:].reshape(dim, channels, -1))
        return out[:channels]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (gradient,) = ctx.saved_tensors  # (dim, C, N)
        return (grad.unsqueeze(0) * gradient).sum(1).T, None


def sample_with_gradient(stack: torch.Tensor, normalised: torch.Tensor) -> torch.Tensor:
    """The C channels of ``stack`` (from :func:`gradient_stack`) at ``normalised`` ``(N, dim)``: ``(C, N)``, border
    clamped (multiply by :func:`inside_normalised` for ITK's zero outside); differentiable in ``normalised``
    through the image gradient."""
    return _SampleWithGradient.apply(normalised, stack)
