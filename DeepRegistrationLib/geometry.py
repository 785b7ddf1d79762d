"""Sampling grids in physical space: the one place where voxel, normalised and physical coordinates meet.

Conventions (used everywhere in the library):

* Physical space is **LPS millimetres** (ITK / SimpleITK / DICOM convention).
* A grid of dimension ``d`` (2 or 3) has ``size`` in **ITK index order** ``(i, j[, k])`` and
  ``shape`` in **array order** ``([k,] j, i)``, as ``SimpleITK.GetArrayFromImage`` and torch tensors
  ``(N, C, [D,] H, W)`` hold it.
* ``direction`` is a ``d x d`` matrix whose **columns** are the physical directions of the index
  axes ``i, j, k`` (SimpleITK's row-major ``GetDirection`` tuple reshaped to ``(d, d)``).
* ``physical = origin + direction @ diag(spacing) @ index``.
* Normalised coordinates are those of ``torch.nn.functional.grid_sample`` with
  ``align_corners=True``: component order ``(x, y[, z]) = (i, j[, k])``, ``-1`` at the centre of the
  first voxel and ``+1`` at the centre of the last one.
* A point is *inside* the grid when its continuous index lies in ``[-0.5, size - 0.5)`` along every
  axis; this is ITK's rule for ``ResampleImageFilter`` and ``DisplacementFieldTransform``.
* **RAS** (Slicer, NIfTI/MGH headers, markups) meets LPS only through :data:`LPS_FROM_RAS`:
  :func:`lps_from_ras_points` for points and vectors, :func:`lps_from_ras_matrix` for homogeneous matrices
  (conjugation), and ``Grid.from_affine(..., ras=True)`` / ``Grid.to_affine(ras=True)`` for voxel -> world maps.
  The flip is its own inverse, so the same helpers convert LPS to RAS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import sys

import numpy as np

from .errors import InputError

if TYPE_CHECKING:  # torch is imported where tensors are made, so that Grid works without it
    import torch

__all__ = ["Grid", "LPS_FROM_RAS", "lps_from_ras_points", "lps_from_ras_matrix"]

#: ``diag(-1, -1, 1)``: RAS -> LPS for points and vectors (and LPS -> RAS: it is its own inverse).
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])
_FLIP_4X4 = np.diag([-1.0, -1.0, 1.0, 1.0])  # the same flip on homogeneous 3D points


def lps_from_ras_points(points: np.ndarray) -> np.ndarray:
    """Points or vectors ``(..., 3)`` flipped between RAS and LPS (either way)."""
    return np.asarray(points, dtype=np.float64) @ LPS_FROM_RAS


def lps_from_ras_matrix(matrix: np.ndarray) -> np.ndarray:
    """A homogeneous ``4 x 4`` map between points (``y = M x``) conjugated between RAS and LPS (either way)."""
    return _FLIP_4X4 @ np.asarray(matrix, dtype=np.float64) @ _FLIP_4X4


def _as_tuple(values: Sequence[float], dim: int, name: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in np.asarray(values, dtype=np.float64).ravel())
    if len(values) != dim:
        raise InputError(f"{name} must have {dim} components, got {len(values)}")
    return values


@dataclass(frozen=True)
class Grid:
    """A regular sampling grid in physical (LPS, mm) space.

    Attributes:
        size: number of voxels along the index axes ``(i, j[, k])`` (ITK order).
        origin: physical position (LPS mm) of the centre of voxel ``(0, 0[, 0])``.
        spacing: voxel size in mm along ``(i, j[, k])``.
        direction: ``d x d`` tuple of rows; column ``a`` is the LPS direction of index axis ``a``.
    """

    size: tuple[int, ...]
    origin: tuple[float, ...]
    spacing: tuple[float, ...]
    direction: tuple[tuple[float, ...], ...]

    def __init__(
        self,
        size: Sequence[int],
        origin: Sequence[float] | None = None,
        spacing: Sequence[float] | None = None,
        direction: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        size_t = tuple(int(s) for s in size)
        dim = len(size_t)
        if dim not in (2, 3):
            raise InputError(f"a grid must be 2D or 3D, got {dim} dimensions (size {size_t})")
        if any(s < 1 for s in size_t):
            raise InputError(f"grid size must be positive along every axis, got {size_t}")
        origin_t = _as_tuple(origin if origin is not None else [0.0] * dim, dim, "origin")
        spacing_t = _as_tuple(spacing if spacing is not None else [1.0] * dim, dim, "spacing")
        if any(not np.isfinite(s) or s <= 0 for s in spacing_t):
            raise InputError(f"spacing must be positive and finite, got {spacing_t}")
        if any(not np.isfinite(o) for o in origin_t):
            raise InputError(f"origin must be finite, got {origin_t}")
        dmat = np.eye(dim) if direction is None else np.asarray(direction, dtype=np.float64).reshape(dim, dim)
        if not np.allclose(dmat.T @ dmat, np.eye(dim), atol=1e-4):
            raise InputError(f"direction matrix must be orthonormal, got {dmat.tolist()}")
        object.__setattr__(self, "size", size_t)
        object.__setattr__(self, "origin", origin_t)
        object.__setattr__(self, "spacing", spacing_t)
        object.__setattr__(self, "direction", tuple(tuple(float(v) for v in row) for row in dmat))

    # ------------------------------------------------------------------ basic properties
    @property
    def dim(self) -> int:
        return len(self.size)

    @property
    def shape(self) -> tuple[int, ...]:
        """Array-order shape ``([k,] j, i)`` of tensors sampled on this grid."""
        return tuple(reversed(self.size))

    @property
    def num_voxels(self) -> int:
        return int(np.prod(self.size))

    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64)

    def index_to_physical_matrix(self) -> np.ndarray:
        """Homogeneous ``(d+1) x (d+1)`` matrix mapping ``(i, j[, k], 1)`` to LPS mm."""
        m = np.eye(self.dim + 1)
        m[: self.dim, : self.dim] = self.direction_matrix() @ np.diag(self.spacing)
        m[: self.dim, self.dim] = self.origin
        return m

    def physical_to_index_matrix(self) -> np.ndarray:
        return np.linalg.inv(self.index_to_physical_matrix())

    def extent_mm(self) -> tuple[float, ...]:
        """Physical length of the grid along each index axis, voxel centre to voxel centre."""
        return tuple((n - 1) * s for n, s in zip(self.size, self.spacing))

    def center(self) -> np.ndarray:
        """Physical position (LPS mm) of the grid's geometric centre."""
        idx = (np.asarray(self.size, dtype=np.float64) - 1.0) / 2.0
        return self.index_to_physical(idx)

    # ------------------------------------------------------------------ coordinate maps
    def index_to_physical(self, index):
        """Map continuous indices ``(..., d)`` in ``(i, j[, k])`` order to LPS mm ``(..., d)``."""
        return _apply_homogeneous(self.index_to_physical_matrix(), index)

    def physical_to_index(self, points):
        """Map LPS mm points ``(..., d)`` to continuous indices ``(i, j[, k])``."""
        return _apply_homogeneous(self.physical_to_index_matrix(), points)

    def physical_to_normalised_matrix(self) -> np.ndarray:
        """Homogeneous matrix mapping LPS mm to ``grid_sample`` coordinates (``align_corners=True``)."""
        size = np.asarray(self.size, dtype=np.float64)
        scale = np.where(size > 1, 2.0 / np.maximum(size - 1.0, 1.0), 0.0)
        n = np.eye(self.dim + 1)
        n[: self.dim, : self.dim] = np.diag(scale)
        n[: self.dim, self.dim] = np.where(size > 1, -1.0, 0.0)
        return n @ self.physical_to_index_matrix()

    def physical_to_normalised(self, points):
        """Map LPS mm points ``(..., d)`` to ``grid_sample`` coordinates ``(x, y[, z]) = (i, j[, k])``."""
        return _apply_homogeneous(self.physical_to_normalised_matrix(), points)

    def inside(self, index: "torch.Tensor") -> "torch.Tensor":
        """Boolean mask of continuous indices ``(..., d)`` inside ``[-0.5, size - 0.5)`` on every axis."""
        import torch

        size = torch.as_tensor(self.size, dtype=index.dtype, device=index.device)
        return ((index >= -0.5) & (index < size - 0.5)).all(dim=-1)

    def physical_points(
        self, dtype: "torch.dtype | None" = None, device: "torch.device | str | None" = None, slices: slice | None = None
    ) -> "torch.Tensor":
        """LPS mm position of every voxel centre, shape ``(*shape, d)`` (array order, xyz components), a torch
        tensor of ``dtype`` (default float64).

        ``slices`` restricts the first array axis (``k`` in 3D, ``j`` in 2D) for chunked processing.
        """
        import torch

        dtype = torch.float64 if dtype is None else dtype
        axes = [torch.arange(n, dtype=dtype, device=device) for n in self.shape]
        if slices is not None:
            axes[0] = axes[0][slices]
        mesh = torch.meshgrid(*axes, indexing="ij")  # array order (k, j, i)
        index = torch.stack(list(reversed(mesh)), dim=-1)  # components (i, j, k)
        m = torch.as_tensor(self.index_to_physical_matrix(), dtype=dtype, device=device)
        return index @ m[: self.dim, : self.dim].T + m[: self.dim, self.dim]

    # ------------------------------------------------------------------ derived grids
    def with_spacing(self, spacing: Sequence[float]) -> "Grid":
        """Grid covering the same physical extent (same first voxel centre, same direction) at another spacing."""
        spacing_t = _as_tuple(spacing, self.dim, "spacing")
        size = [max(1, int(round(e / s)) + 1) for e, s in zip(self.extent_mm(), spacing_t)]
        return Grid(size, self.origin, spacing_t, self.direction)

    @classmethod
    def centred(cls, center_mm: Sequence[float], size: Sequence[int], spacing: Sequence[float],
                direction: Sequence[float] | np.ndarray | None = None) -> "Grid":
        """The grid of ``size`` voxels of ``spacing`` mm along ``direction`` whose centre is ``center_mm`` (LPS)."""
        dim = len(size)
        dmat = np.eye(dim) if direction is None else np.asarray(direction, dtype=np.float64).reshape(dim, dim)
        origin = np.asarray(center_mm, dtype=np.float64) - dmat @ (np.asarray(spacing, dtype=np.float64)
                                                                   * (np.asarray(size) - 1) / 2)
        return cls([int(n) for n in size], origin, spacing, dmat)

    def centred_at_spacing(self, spacing: Sequence[float], min_size: int = 1) -> "Grid":
        """Grid of the same centre, direction and extent (voxel centre to voxel centre, rounded to whole voxels)
        at another ``spacing``, with at least ``min_size`` voxels per axis (pyramid levels use 2)."""
        spacing_t = _as_tuple(spacing, self.dim, "spacing")
        size = [max(min_size, int(round((n - 1) * s / t)) + 1) for n, s, t in zip(self.size, self.spacing, spacing_t)]
        return Grid.centred(self.center(), size, spacing_t, self.direction_matrix())

    def coarsened(self, factor: int) -> "Grid":
        """Every ``factor``-th voxel of this grid (same origin and direction), extended by one node where the size
        is not a multiple: the returned grid covers this one, and :meth:`subdivided` by ``factor`` contains it."""
        f = int(factor)
        if f < 1:
            raise InputError(f"a coarsening factor must be a whole number >= 1, got {factor}")
        size = [(n - 1 + f - 1) // f + 1 for n in self.size]
        return Grid(size, self.origin, [s * f for s in self.spacing], self.direction)

    def cropped(self, start: Sequence[int], stop: Sequence[int]) -> "Grid":
        """The voxels ``start <= index < stop`` of this grid (``(i, j[, k])`` order), in place: same spacing and
        direction, origin at voxel ``start``; an image's data sliced likewise lies on it exactly."""
        start_a, stop_a = np.asarray(start, dtype=int), np.asarray(stop, dtype=int)
        if len(start_a) != self.dim or len(stop_a) != self.dim or (start_a < 0).any() or \
                (stop_a > np.asarray(self.size)).any() or (stop_a <= start_a).any():
            raise InputError(f"crop {list(start_a)}..{list(stop_a)} is not inside a grid of size {list(self.size)}")
        origin = self.index_to_physical(start_a.astype(np.float64))
        return Grid((stop_a - start_a).tolist(), origin, self.spacing, self.direction)

    def subdivided(self, factors: int | Sequence[int]) -> "Grid":
        """This grid with ``factors - 1`` nodes inserted between neighbours along each axis (same origin and
        direction): it holds every node of this grid, so linear interpolation on it is the same function."""
        fs = [int(factors)] * self.dim if np.isscalar(factors) else [int(f) for f in factors]
        if len(fs) != self.dim or any(f < 1 for f in fs):
            raise InputError(f"subdivision factors must be {self.dim} whole numbers >= 1, got {factors}")
        return Grid([(n - 1) * f + 1 for n, f in zip(self.size, fs)], self.origin,
                    [s / f for s, f in zip(self.spacing, fs)], self.direction)

    @classmethod
    def from_affine(cls, matrix: np.ndarray, size: Sequence[int], ras: bool = False,
                    start_index: Sequence[float] | None = None) -> "Grid":
        """The grid of ``size`` voxels of a homogeneous voxel -> world matrix (``(d+1) x (d+1)``; world in LPS mm,
        or RAS mm when ``ras``, as NIfTI/MGH headers and Slicer's ``IJKToRAS`` are). ``start_index``: the index
        of the first voxel under that matrix (a VTK extent that does not start at 0)."""
        m = np.asarray(matrix, dtype=np.float64)
        if ras:
            if m.shape != (4, 4):
                raise InputError(f"an RAS voxel -> world matrix is 4 x 4, got {m.shape}")
            m = _FLIP_4X4 @ m
        d = m.shape[0] - 1
        linear = m[:d, :d]
        spacing = np.linalg.norm(linear, axis=0)
        if np.any(spacing <= 0) or not np.all(np.isfinite(linear)):
            raise InputError(f"the voxel -> world matrix is singular or not finite: {m.tolist()}")
        origin = m[:d, d] if start_index is None else (m @ np.array([*start_index, 1.0]))[:d]
        return cls(tuple(int(n) for n in size), origin, spacing, linear / spacing)

    def to_affine(self, ras: bool = False) -> np.ndarray:
        """Homogeneous voxel ``(i, j[, k], 1)`` -> world matrix: LPS mm, or RAS mm when ``ras`` (3D only)."""
        m = self.index_to_physical_matrix()
        if ras:
            if self.dim != 3:
                raise InputError("an RAS affine is defined for 3D grids only")
            m = _FLIP_4X4 @ m
        return m

    def same_as(self, other: "Grid", atol: float = 1e-4) -> bool:
        """True when both grids sample the same voxel centres (within ``atol`` mm / relative)."""
        return (
            self.size == other.size
            and np.allclose(self.origin, other.origin, atol=atol)
            and np.allclose(self.spacing, other.spacing, rtol=atol, atol=atol)
            and np.allclose(self.direction, other.direction, atol=atol)
        )

    # ------------------------------------------------------------------ SimpleITK interop
    @classmethod
    def from_sitk(cls, image) -> "Grid":
        """Geometry of a ``SimpleITK.Image``."""
        return cls(image.GetSize(), image.GetOrigin(), image.GetSpacing(), image.GetDirection())

    def apply_to_sitk(self, image) -> None:
        """Set origin, spacing and direction of a ``SimpleITK.Image`` (sizes must already agree)."""
        if tuple(image.GetSize()) != self.size:
            raise InputError(f"image size {image.GetSize()} does not match grid size {self.size}")
        image.SetOrigin(self.origin)
        image.SetSpacing(self.spacing)
        image.SetDirection(tuple(self.direction_matrix().ravel()))

    def describe(self) -> dict:
        return {
            "dimension": self.dim,
            "size": list(self.size),
            "spacing_mm": list(self.spacing),
            "origin_mm": list(self.origin),
            "direction": [list(r) for r in self.direction],
        }


def _apply_homogeneous(matrix: np.ndarray, points):
    """Apply a homogeneous matrix to points ``(..., d)``; keeps numpy/torch type, dtype and device."""
    d = matrix.shape[0] - 1
    torch = sys.modules.get("torch")  # a tensor can only come from an imported torch: geometry never imports it first
    if torch is not None and isinstance(points, torch.Tensor):
        m = torch.as_tensor(matrix, dtype=points.dtype, device=points.device)
        return points @ m[:d, :d].T + m[:d, d]
    pts = np.asarray(points, dtype=np.float64)
    return pts @ matrix[:d, :d].T + matrix[:d, d]
