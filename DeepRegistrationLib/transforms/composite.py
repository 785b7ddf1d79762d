"""Composition of transforms, and sampling any transform as a displacement field.

Convention: :class:`CompositeTransform` lists its parts in **application order**: the first part is
applied first to the fixed-space point, ``T(x) = t_n(...t_2(t_1(x)))``. (ITK's ``CompositeTransform``
stores them the other way round, last applied first; the file readers and writers convert.)
A typical registration result with an affine pre-alignment ``A`` and a deformable correction ``D``
estimated in the fixed space is ``compose(D, A)``: ``x -> A(D(x))``.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from ..geometry import Grid
from .base import Transform
from .dense import DisplacementField, StationaryVelocityField, refined_grid
from .linear import AffineTransform, LinearTransform

__all__ = ["CompositeTransform", "compose", "to_displacement_field", "inverse_transform", "IdentityTransform"]


class IdentityTransform(LinearTransform):
    """``T(x) = x``."""

    def __init__(self, dim: int) -> None:
        if dim not in (2, 3):
            raise InputError(f"transforms are 2D or 3D, got dim={dim}")
        self.dim = dim

    def matrix(self) -> torch.Tensor:
        return torch.eye(self.dim, dtype=torch.float64)

    def offset(self) -> torch.Tensor:
        return torch.zeros(self.dim, dtype=torch.float64)

    def inverse(self) -> "IdentityTransform":
        return self


class CompositeTransform(Transform):
    """``x -> parts[-1](...parts[0](x))``: parts in application order (first applied first)."""

    def __init__(self, parts: list[Transform]) -> None:
        if not parts:
            raise InputError("a composite transform needs at least one part")
        dims = {p.dim for p in parts}
        if len(dims) != 1:
            raise InputError(f"cannot compose transforms of different dimensions {sorted(dims)}")
        self.parts = list(parts)
        self.dim = parts[0].dim

    @property
    def is_linear(self) -> bool:
        return all(p.is_linear for p in self.parts)

    def _map(self, points: torch.Tensor) -> torch.Tensor:
        for part in self.parts:
            points = part._map(points)
        return points

    def inverse(self) -> "CompositeTransform":
        return CompositeTransform([p.inverse() for p in reversed(self.parts)])

    def collapse_linear(self) -> AffineTransform:
        """The single affine transform equal to an all-linear composite."""
        if not self.is_linear:
            raise InputError("only an all-linear composite collapses to one affine transform")
        h = torch.eye(self.dim + 1, dtype=torch.float64)
        for part in self.parts:
            h = part.homogeneous().detach() @ h
        return AffineTransform(h[: self.dim, : self.dim], h[: self.dim, self.dim])

    def parameters_dict(self) -> dict:
        return {"application_order": [p.describe() for p in self.parts]}


def compose(*transforms: Transform) -> Transform:
    """Transform that applies ``transforms`` in the given order (first applied first); nested composites flatten."""
    parts: list[Transform] = []
    for t in transforms:
        parts.extend(t.parts if isinstance(t, CompositeTransform) else [t])
    parts = [p for p in parts if not isinstance(p, IdentityTransform)] or [IdentityTransform(transforms[0].dim)]
    return parts[0] if len(parts) == 1 else CompositeTransform(parts)


def inverse_transform(transform: Transform, reference: Grid | None = None, tolerance_mm: float = 1e-3,
                      max_voxels_factor: float = 1.0, max_voxels: int = 8_000_000) -> Transform:
    """The inverse of ``transform`` as the mapping it actually is (fields interpolated linearly on their grids).

    Linear parts invert exactly. A dense part is inverted numerically (:meth:`DisplacementField.inverse`, to
    ``tolerance_mm`` at the nodes) on its own grid refined towards ``reference``'s resolution (the grid the inverse
    will be used on, e.g. the moving image's; at most ``max_voxels_factor`` times its voxels and ``max_voxels``:
    8 million nodes, about 1.3 mm for a whole head, keep time and memory bounded), starting, for a
    velocity field, from ``exp(-v)``: the inverse of the continuous flow, which differs from the inverse of the
    sampled ``exp(v)`` by up to a few mm where the field is coarse and large.
    """
    parts = transform.parts if isinstance(transform, CompositeTransform) else [transform]
    inverted: list[Transform] = []
    for part in reversed(parts):
        if part.is_linear:
            inverted.append(part.inverse())
            continue
        if isinstance(part, StationaryVelocityField):
            field, start = part.exponential(), part.inverse()
        elif isinstance(part, DisplacementField):
            field, start = part, None
        else:
            inverse = part.inverse()
            if reference is not None and hasattr(inverse, "domain"):  # a 2D global model: sampled there if written
                inverse.domain = reference
            inverted.append(inverse)
            continue
        grid = (refined_grid(field.grid, reference, max_voxels_factor, max_voxels) if reference is not None
                else field.grid)
        inverted.append(field.inverse(tolerance_mm=tolerance_mm, grid=grid, initial=start))
    return inverted[0] if len(inverted) == 1 else CompositeTransform(inverted)


def to_displacement_field(transform: Transform, grid: Grid, dtype: torch.dtype = torch.float32,
                          chunk_voxels: int = 1 << 21) -> DisplacementField:
    """Sample ``u(x) = T(x) - x`` at every voxel of ``grid`` (LPS mm); exact at the voxel centres."""
    if transform.dim != grid.dim:
        raise InputError(f"a {transform.dim}D transform cannot be sampled on a {grid.dim}D grid")
    if isinstance(transform, DisplacementField) and transform.grid.same_as(grid, atol=1e-9):
        return transform
    if isinstance(transform, StationaryVelocityField) and transform.grid.same_as(grid, atol=1e-9):
        return transform.exponential()
    rows = max(1, chunk_voxels // max(1, grid.num_voxels // grid.shape[0]))
    field = torch.empty((grid.dim, *grid.shape), dtype=dtype)  # filled chunk by chunk: no second copy
    with torch.no_grad():
        for start in range(0, grid.shape[0], rows):
            x = grid.physical_points(dtype=torch.float64, slices=slice(start, start + rows))
            field[:, start:start + rows] = (transform.map_points(x) - x).movedim(-1, 0)
    return DisplacementField(field, grid)
