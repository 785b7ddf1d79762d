"""Dense transforms: displacement fields and stationary velocity fields.

Convention: a field is a tensor ``(dim, *grid.shape)``; channel ``c`` is the **physical LPS component**
``c`` (x, y[, z]) in **millimetres** of the vector at each voxel of ``grid`` (its own origin, spacing
and direction). ``T(x) = x + u(x)``, with ``u`` interpolated linearly; outside the grid
(continuous index outside ``[-0.5, size - 0.5)``) ``u = 0`` and inside, near the edge, the border value
is used: exactly ITK's ``DisplacementFieldTransform``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import InputError
from ..geometry import Grid
from ..sampling import grid_sample, normalised_linear, sample, sample_normalised, to_normalised
from .base import Transform

__all__ = ["DisplacementField", "StationaryVelocityField", "sample_field", "integrate_velocity", "squaring_normalised",
           "refined_grid"]


def refined_grid(grid: Grid, reference: Grid, max_voxels_factor: float = 2.0, max_voxels: int | None = None) -> Grid:
    """``grid`` subdivided by integer factors per axis towards ``reference``'s spacing (its smallest spacing when
    the axes differ), within ``max_voxels_factor`` times ``reference``'s voxel count (and ``max_voxels``).

    The refined grid contains the original nodes, so a field interpolated linearly onto it is the same function
    (an exact change of representation), and a field computed on it resolves what the reference resolves.
    """
    same_axes = np.allclose(grid.direction_matrix(), reference.direction_matrix(), atol=1e-6)
    target = reference.spacing if same_axes else [min(reference.spacing)] * grid.dim
    factors = [max(1, math.ceil(s / t - 1e-6)) for s, t in zip(grid.spacing, target)]
    budget = max_voxels_factor * reference.num_voxels
    if max_voxels is not None:
        budget = min(budget, max_voxels)
    while math.prod((n - 1) * f + 1 for n, f in zip(grid.size, factors)) > budget and max(factors) > 1:
        factors = [max(1, f - 1) if f == max(factors) else f for f in factors]
    return grid if all(f == 1 for f in factors) else grid.subdivided(factors)


def sample_field(field: torch.Tensor, grid: Grid, points: torch.Tensor) -> torch.Tensor:
    """Linearly interpolate ``field`` ``(C, *grid.shape)`` at physical ``points`` ``(..., dim)``.

    Returns ``(..., C)`` in the points' dtype; zero outside the grid (ITK rule; see :mod:`..sampling`).
    """
    return sample(field, grid, points).movedim(0, -1).to(points.dtype)


def squaring_normalised(u_n: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` squarings ``u <- u + u o (Id + u)`` of a batch of fields ``(N, dim, *shape)`` in ``grid_sample``
    units (components ``(x, y[, z])``, ``align_corners=True``); points pushed outside the grid take the border
    value (a zero there, ITK's rule for *applying* a field, would tear the field at the edge)."""
    dim = u_n.shape[1]
    shape = u_n.shape[2:]
    axes = [torch.linspace(-1.0, 1.0, n, dtype=u_n.dtype, device=u_n.device) for n in shape]
    identity = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], -1).unsqueeze(0)  # (1, *shape, dim)
    channels_last = (0, *range(2, dim + 2), 1)
    for _ in range(steps):
        grid = identity + u_n.permute(*channels_last)
        u_n = u_n + grid_sample(u_n, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return u_n


def integrate_velocity(velocity: torch.Tensor, grid: Grid, steps: int) -> torch.Tensor:
    """Scaling and squaring: the displacement ``exp(v) - Id`` ``(dim, *grid.shape)`` (LPS mm) of a stationary
    velocity ``(dim, *grid.shape)`` (LPS mm) on ``grid``: ``u = v / 2**steps``, then ``steps`` squarings.
    No checks (the hot path of the SVF stages); differentiable in ``velocity``."""
    dim = grid.dim
    u_field = velocity / (2.0 ** steps)
    if min(grid.size) > 1:  # in grid_sample units throughout: one grid_sample per squaring, nothing else
        lin = normalised_linear(grid, torch.float64, velocity.device)
        to_n, from_n = lin.to(u_field.dtype), torch.linalg.inv(lin).to(u_field.dtype)
        u_n = torch.einsum("ij,j...->i...", to_n, u_field).unsqueeze(0)  # (1, dim, *shape), (x, y[, z])
        u_n = squaring_normalised(u_n, steps)
        return torch.einsum("ij,j...->i...", from_n, u_n[0])
    base = to_normalised(grid, grid.physical_points(device=velocity.device).reshape(-1, dim), velocity.dtype)
    lin = normalised_linear(grid, velocity.dtype, velocity.device)
    for _ in range(steps):
        u = u_field.reshape(dim, -1).T
        u = u + sample_normalised(u_field, grid, base + u @ lin.T, extrapolate=True).T
        u_field = u.T.reshape(dim, *grid.shape)
    return u_field


def _check_field(field: torch.Tensor, grid: Grid, what: str) -> torch.Tensor:
    if not isinstance(field, torch.Tensor):
        field = torch.as_tensor(field)
    if not field.is_floating_point():
        field = field.float()
    if tuple(field.shape) != (grid.dim, *grid.shape):
        raise InputError(f"{what} must have shape {(grid.dim, *grid.shape)} (components first), got {tuple(field.shape)}")
    # finite iff the sum is (NaN and +-inf propagate); no temporary the size of the field, as isfinite makes
    if not bool(torch.isfinite(field.detach().sum(dtype=torch.float64))):
        raise InputError(f"{what} holds NaN or infinite vectors")
    return field


class DisplacementField(Transform):
    """``T(x) = x + u(x)``; ``u`` is ``(dim, *grid.shape)`` LPS mm vectors on ``grid``."""

    def __init__(self, field: torch.Tensor, grid: Grid) -> None:
        self.grid = grid
        self.dim = grid.dim
        self.field = _check_field(field, grid, "displacement field")
        #: Residual of the numerical inversion that produced this field (set by :meth:`inverse`).
        self.inverse_residual_mm: dict | None = None

    def displacement_at(self, points: torch.Tensor) -> torch.Tensor:
        return sample_field(self.field, self.grid, points)

    def _map(self, points: torch.Tensor) -> torch.Tensor:
        return points + self.displacement_at(points)

    def inverse(self, iterations: int = 200, tolerance_mm: float = 1e-3, grid: Grid | None = None,
                initial: Transform | None = None) -> "DisplacementField":
        """Numerical inverse at the voxels ``x`` of ``grid`` (default: this field's grid): the ``w`` with
        ``x + w + u(x + w) = x``, starting from ``initial``'s displacement (e.g. ``exp(-v)`` for the exponential
        of a velocity field) or from ``-u(x)``.

        Each step moves ``w`` against the residual ``r = w + u(x + w)`` (``T(T^-1(x)) - x``): ``w <- w - a r``,
        the plain fixed-point step ``w <- -u(x + w)`` when ``a = 1``. A step is kept only where it lowers the
        residual; elsewhere ``a`` is halved (and doubled again after a success, up to 1), so that the iteration
        also converges where the field compresses or stretches strongly (``|grad u| >= 1``, where the plain
        fixed point diverges). Voxels whose residual is below ``tolerance_mm`` stop. The returned field carries
        ``inverse_residual_mm`` (``max``, ``p95``, ``mean`` of ``|T(T^-1(x)) - x|`` over the grid voxels, and
        the iterations used).
        """
        grid = grid or self.grid
        x = grid.physical_points(dtype=self.field.dtype, device=self.field.device).reshape(-1, self.dim)
        u = self.field.detach()
        with torch.no_grad():
            w = (initial.map_points(x) - x if initial is not None else -self.displacement_at(x)).detach()
            residual = w + sample_field(u, self.grid, x + w)
            norm = residual.norm(dim=-1)
            step = torch.ones_like(norm)
            active = torch.nonzero(norm >= tolerance_mm).flatten()
            iters = 0
            while active.numel() and iters < iterations:
                iters += 1
                candidate = w[active] - step[active, None] * residual[active]
                r_new = candidate + sample_field(u, self.grid, x[active] + candidate)
                n_new = r_new.norm(dim=-1)
                better = n_new < norm[active]
                kept = active[better]
                w[kept], residual[kept], norm[kept] = candidate[better], r_new[better], n_new[better]
                step[kept] = (step[kept] * 2.0).clamp(max=1.0)
                step[active[~better]] *= 0.5
                active = active[(norm[active] >= tolerance_mm) & (step[active] > 1e-4)]
        inv = DisplacementField(w.T.reshape(self.dim, *grid.shape).contiguous(), grid)
        sub = norm.double()[:: max(1, norm.numel() // 4_000_000)]
        inv.inverse_residual_mm = {"max": float(norm.max()), "p95": float(torch.quantile(sub, 0.95)),
                                   "mean": float(norm.mean()), "iterations": iters}
        return inv

    def parameters_dict(self) -> dict:
        norms = self.field.detach().norm(dim=0)
        d = {"grid": self.grid.describe(), "max_displacement_mm": float(norms.max()),
             "mean_displacement_mm": float(norms.mean())}
        if self.inverse_residual_mm is not None:
            d["inverse_residual_mm"] = self.inverse_residual_mm
        return d


class StationaryVelocityField(Transform):
    """Diffeomorphic ``T = exp(v)``: velocity ``(dim, *grid.shape)`` in LPS mm, integrated by scaling and squaring.

    ``steps`` squarings: ``u = v / 2**steps``, then ``steps`` times ``u <- u + u o (Id + u)`` on the grid
    (the field is extended by its border values during the squarings). The result is an ordinary
    displacement field on the same grid (zero outside it, as every ITK displacement field).
    The inverse is ``exp(-v)`` (exact within the model).
    """

    def __init__(self, velocity: torch.Tensor, grid: Grid, steps: int = 7) -> None:
        self.grid = grid
        self.dim = grid.dim
        self.velocity = _check_field(velocity, grid, "velocity field")
        if steps < 0:
            raise InputError(f"scaling-and-squaring steps must be >= 0, got {steps}")
        self.steps = int(steps)
        self._cache: DisplacementField | None = None

    def exponential(self) -> DisplacementField:
        """The displacement field ``exp(v) - Id`` on the velocity's grid (differentiable in ``v``)."""
        if self._cache is not None and not self.velocity.requires_grad:
            return self._cache
        result = DisplacementField(integrate_velocity(self.velocity, self.grid, self.steps), self.grid)
        if not self.velocity.requires_grad:
            self._cache = result
        return result

    def _map(self, points: torch.Tensor) -> torch.Tensor:
        return self.exponential()._map(points)

    def inverse(self) -> "StationaryVelocityField":
        return StationaryVelocityField(-self.velocity.detach(), self.grid, self.steps)

    def parameters_dict(self) -> dict:
        return {"grid": self.grid.describe(), "steps": self.steps,
                "max_velocity_mm": float(self.velocity.detach().norm(dim=0).max())}
