"""Linear (affine-family) transforms in physical space: ``y = A x + b`` (LPS mm, fixed -> moving).

The parametric classes follow ITK's ``MatrixOffsetTransformBase`` exactly, so that their parameters
are those of the corresponding ITK transform files::

    y = M (x - c) + c + t        (M: matrix, c: fixed centre of rotation, t: translation)

* :class:`TranslationTransform`: ``M = I``.
* :class:`RigidTransform`: ``M = R``; 2D ``R(theta)``; 3D Euler angles in radians with ITK's
  ``Euler3DTransform`` default order ``R = Rz @ Rx @ Ry``.
* :class:`SimilarityTransform`: ``M = s R`` (isotropic scale ``s``).
* :class:`AffineTransform`: any invertible ``M``.

Parameters are float64 tensors and may ``requires_grad`` (optimisers use them directly).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from ..errors import InputError
from .base import Transform

__all__ = ["LinearTransform", "TranslationTransform", "RigidTransform", "SimilarityTransform", "AffineTransform",
           "rotation_matrix", "euler_angles_from_matrix"]


def _tensor(values, length: int | None, name: str) -> torch.Tensor:
    t = values if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values, dtype=np.float64))
    t = t.to(torch.float64) if t.dtype != torch.float64 else t
    if length is not None and t.numel() != length:
        raise InputError(f"{name} must have {length} values, got {t.numel()}")
    if not bool(torch.isfinite(t.detach()).all()):
        raise InputError(f"{name} must be finite, got {t.detach().tolist()}")
    return t.reshape(-1) if length is not None else t


def rotation_matrix(angles: torch.Tensor, dim: int) -> torch.Tensor:
    """Rotation matrix from angles in radians: 2D ``[theta]``; 3D ITK Euler ``[ax, ay, az]``, ``R = Rz Rx Ry``."""
    if dim == 2:
        c, s = torch.cos(angles[0]), torch.sin(angles[0])
        return torch.stack([torch.stack([c, -s]), torch.stack([s, c])])
    cx, cy, cz = torch.cos(angles)
    sx, sy, sz = torch.sin(angles)
    one, zero = torch.ones_like(cx), torch.zeros_like(cx)
    rx = torch.stack([torch.stack([one, zero, zero]), torch.stack([zero, cx, -sx]), torch.stack([zero, sx, cx])])
    ry = torch.stack([torch.stack([cy, zero, sy]), torch.stack([zero, one, zero]), torch.stack([-sy, zero, cy])])
    rz = torch.stack([torch.stack([cz, -sz, zero]), torch.stack([sz, cz, zero]), torch.stack([zero, zero, one])])
    return rz @ rx @ ry


def euler_angles_from_matrix(rotation: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rotation_matrix` (ITK's ``Euler3DTransform::SetMatrix`` decomposition)."""
    r = np.asarray(rotation, dtype=np.float64)
    if r.shape == (2, 2):
        return np.array([math.atan2(r[1, 0], r[0, 0])])
    ax = math.asin(max(-1.0, min(1.0, r[2, 1])))
    if abs(math.cos(ax)) > 1e-12:
        ay = math.atan2(-r[2, 0], r[2, 2])
        az = math.atan2(-r[0, 1], r[1, 1])
    else:  # gimbal lock: only az - ay (or az + ay) is defined
        ay = 0.0
        az = math.atan2(r[1, 0], r[0, 0])
    return np.array([ax, ay, az])


class LinearTransform(Transform):
    """Base of the affine family: subclasses define :meth:`matrix` and :meth:`offset`."""

    @property
    def is_linear(self) -> bool:
        return True

    def matrix(self) -> torch.Tensor:
        """``(dim, dim)`` float64 matrix ``A`` of ``y = A x + b``."""
        raise NotImplementedError

    def offset(self) -> torch.Tensor:
        """``(dim,)`` float64 vector ``b`` of ``y = A x + b`` (mm)."""
        raise NotImplementedError

    def homogeneous(self) -> torch.Tensor:
        """``(dim+1, dim+1)`` homogeneous matrix of ``y = A x + b`` (float64)."""
        h = torch.eye(self.dim + 1, dtype=torch.float64)
        h = h.clone()
        h[: self.dim, : self.dim] = self.matrix()
        h[: self.dim, self.dim] = self.offset()
        return h

    def _map(self, points: torch.Tensor) -> torch.Tensor:
        a = self.matrix().to(points.device)
        b = self.offset().to(points.device)
        if points.dtype == torch.float64:
            return points @ a.T + b
        return (points.double() @ a.T + b).to(points.dtype)

    def inverse(self) -> "AffineTransform":
        """Exact inverse ``x = A^-1 y - A^-1 b``."""
        a = self.matrix().detach()
        if abs(float(torch.linalg.det(a))) < 1e-12:
            raise InputError(f"{self.kind} is singular (det A = 0) and has no inverse")
        ainv = torch.linalg.inv(a)
        return AffineTransform(ainv, -ainv @ self.offset().detach())

    def to_affine(self) -> "AffineTransform":
        return AffineTransform(self.matrix().detach(), self.offset().detach())

    def parameters_dict(self) -> dict:
        return {"matrix": self.matrix().detach().tolist(), "offset_mm": self.offset().detach().tolist()}


class _Centred(LinearTransform):
    """Shared ITK-style parametrisation ``y = M (x - c) + c + t``."""

    def __init__(self, dim: int, translation, center) -> None:
        if dim not in (2, 3):
            raise InputError(f"transforms are 2D or 3D, got dim={dim}")
        self.dim = dim
        self.translation = _tensor(translation if translation is not None else [0.0] * dim, dim, "translation")
        self.center = _tensor(center if center is not None else [0.0] * dim, dim, "center")

    def offset(self) -> torch.Tensor:
        m = self.matrix()
        return self.translation + self.center - m @ self.center

    def parameters_dict(self) -> dict:
        return {**super().parameters_dict(), "translation_mm": self.translation.detach().tolist(),
                "center_mm": self.center.detach().tolist()}


class TranslationTransform(_Centred):
    """``y = x + t``."""

    def __init__(self, translation: Sequence[float] | torch.Tensor) -> None:
        t = _tensor(translation, None, "translation").reshape(-1)
        super().__init__(t.numel(), t, None)

    def matrix(self) -> torch.Tensor:
        return torch.eye(self.dim, dtype=torch.float64)

    def parameters_dict(self) -> dict:
        return {"translation_mm": self.translation.detach().tolist()}


class RigidTransform(_Centred):
    """Rotation about ``center`` then translation. ``angles`` in radians (1 in 2D, 3 in 3D, ITK Euler order)."""

    def __init__(self, angles, translation=None, center=None, dim: int | None = None) -> None:
        a = _tensor(angles, None, "angles").reshape(-1)
        dim = dim or (2 if a.numel() == 1 else 3)
        if a.numel() != (1 if dim == 2 else 3):
            raise InputError(f"a {dim}D rigid transform needs {1 if dim == 2 else 3} angles, got {a.numel()}")
        super().__init__(dim, translation, center)
        self.angles = a

    @classmethod
    def from_matrix(cls, rotation, translation=None, center=None) -> "RigidTransform":
        r = np.asarray(rotation, dtype=np.float64)
        if not np.allclose(r.T @ r, np.eye(r.shape[0]), atol=1e-6) or np.linalg.det(r) < 0:
            raise InputError("matrix is not a proper rotation")
        return cls(euler_angles_from_matrix(r), translation, center, dim=r.shape[0])

    def rotation(self) -> torch.Tensor:
        return rotation_matrix(self.angles, self.dim)

    def matrix(self) -> torch.Tensor:
        return self.rotation()

    def parameters_dict(self) -> dict:
        return {"angles_deg": [math.degrees(a) for a in self.angles.detach().tolist()], **super().parameters_dict()}


class SimilarityTransform(RigidTransform):
    """Isotropic ``scale`` times a rotation about ``center``, then translation."""

    def __init__(self, scale, angles, translation=None, center=None, dim: int | None = None) -> None:
        super().__init__(angles, translation, center, dim)
        self.scale = _tensor(scale, 1, "scale")[0]
        if float(self.scale.detach()) <= 0:
            raise InputError(f"similarity scale must be positive, got {float(self.scale)}")

    @classmethod
    def from_matrix(cls, matrix, translation=None, center=None) -> "SimilarityTransform":
        m = np.asarray(matrix, dtype=np.float64)
        s = abs(np.linalg.det(m)) ** (1.0 / m.shape[0])
        rigid = RigidTransform.from_matrix(m / s)
        return cls(s, rigid.angles, translation, center, dim=m.shape[0])

    def matrix(self) -> torch.Tensor:
        return self.scale * self.rotation()

    def parameters_dict(self) -> dict:
        return {"scale": float(self.scale.detach()), **super().parameters_dict()}


class AffineTransform(_Centred):
    """General ``y = M (x - c) + c + t``; with the defaults (``c = 0``) simply ``y = M x + t``."""

    def __init__(self, matrix, translation=None, center=None) -> None:
        m = _tensor(matrix, None, "matrix")
        dim = int(round(math.sqrt(m.numel())))
        if dim not in (2, 3) or dim * dim != m.numel():
            raise InputError(f"affine matrix must be 2x2 or 3x3, got {m.numel()} values")
        super().__init__(dim, translation, center)
        self.linear = m.reshape(dim, dim)

    def matrix(self) -> torch.Tensor:
        return self.linear
