"""The transform interface shared by every transform of the library.

Convention: a transform is a **resampling transform**. It maps a point of the *fixed* (reference)
image's physical space to the corresponding point of the *moving* image's physical space, both in
LPS millimetres (ITK convention; Slicer's transform "from parent"). Warping the moving image onto
the fixed grid evaluates ``moving(T(x))`` at every fixed voxel centre ``x``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from ..errors import InputError

__all__ = ["Transform"]


class Transform(ABC):
    """Abstract resampling transform of dimension ``dim`` (2 or 3), fixed -> moving, LPS mm."""

    dim: int

    def map_points(self, points):
        """Map points ``(..., dim)`` (LPS mm, fixed space) to moving space.

        Accepts a numpy array (returns float64 numpy) or a tensor (keeps dtype, device and autograd).
        """
        if isinstance(points, torch.Tensor):
            self._check_points(points)
            return self._map(points)
        pts = torch.as_tensor(np.asarray(points, dtype=np.float64))
        self._check_points(pts)
        return self._map(pts).detach().cpu().numpy()

    def _check_points(self, points: torch.Tensor) -> None:
        if points.shape[-1] != self.dim:
            raise InputError(f"{self.kind} transform is {self.dim}D but points have {points.shape[-1]} coordinates")

    @abstractmethod
    def _map(self, points: torch.Tensor) -> torch.Tensor:
        """Map a tensor of points ``(..., dim)``."""

    @abstractmethod
    def inverse(self) -> "Transform":
        """The inverse mapping (moving -> fixed)."""

    @property
    def kind(self) -> str:
        return type(self).__name__

    @property
    def is_linear(self) -> bool:
        return False

    def parameters_dict(self) -> dict:
        """Human-readable parameters (for ``deepreg info``)."""
        return {}

    def describe(self) -> dict:
        return {"kind": self.kind, "dimension": self.dim, **self.parameters_dict()}

    def then(self, other: "Transform") -> "Transform":
        """The composition that applies ``self`` first and ``other`` second: ``x -> other(self(x))``."""
        from .composite import compose

        return compose(self, other)
