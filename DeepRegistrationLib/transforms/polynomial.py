"""2D global models of a curved surface seen by a camera: the homography (projective) and the quadratic
(second-order polynomial, the usual model of the retina's surface in fundus photography, Can et al. 2002).

Both are resampling transforms like every other (fixed -> moving, LPS mm; for a photograph read with unit
spacing and identity direction, millimetres are pixels ``(x, y) = (column, row)``). Neither has an ITK type:
:meth:`PolynomialTransform.to_field` samples one as a :class:`~.dense.DisplacementField` on its domain grid
(which is what a ``.h5`` file or a Slicer grid transform holds), and :meth:`PolynomialTransform.parameters_dict`
/ :func:`polynomial_from_dict` give its exact parameters as JSON.

* :class:`HomographyTransform`: ``y = (H [x, 1])[:2] / (H [x, 1])[2]`` with a 3x3 ``H``; the inverse is ``H^-1``.
* :class:`QuadraticTransform`: ``y = C m(u)`` with ``u = (x - c) / s`` (centre ``c`` mm and scale ``s`` mm set
  the conditioning, not the mapping) and ``m(u) = [1, u1, u2, u1^2, u1 u2, u2^2]``, ``C`` 2x6 in mm. Its
  inverse has no closed form; :class:`InverseQuadraticTransform` solves ``Q(x) = y`` by Newton's method.

``fit_homography`` (normalised DLT) and ``fit_quadratic`` (linear least squares) fit the models to point
correspondences ``fixed -> moving`` (N, 2) in mm.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import InputError
from .base import Transform
from .linear import AffineTransform

if TYPE_CHECKING:
    from ..geometry import Grid
    from .dense import DisplacementField

__all__ = ["PolynomialTransform", "HomographyTransform", "QuadraticTransform", "InverseQuadraticTransform",
           "fit_homography", "fit_quadratic", "fit_affine_2d", "fit_model", "polynomial_from_dict", "MODELS",
           "MIN_POINTS"]

#: The global 2D models a retinal stage may fit, and the fewest correspondences each needs.
MODELS = ("affine", "homography", "quadratic")
MIN_POINTS = {"affine": 3, "homography": 4, "quadratic": 6}


class PolynomialTransform(Transform):
    """A 2D global model with exact JSON parameters; ``domain`` is the fixed grid it was estimated for (where
    :meth:`to_field` samples it), if known."""

    dim = 2
    domain: "Grid | None" = None

    def to_field(self, grid: "Grid | None" = None, spacing_factor: int = 4) -> "DisplacementField":
        """The model sampled as a displacement field on ``grid`` (default: the domain coarsened ``spacing_factor``
        times; linear interpolation of these smooth models between nodes 4 px apart errs by < 0.01 px)."""
        from .composite import to_displacement_field

        if grid is None:
            if self.domain is None:
                raise InputError(f"a {self.kind} needs a grid to be sampled on (it has no domain)")
            grid = self.domain.coarsened(spacing_factor) if spacing_factor > 1 else self.domain
        return to_displacement_field(self, grid, dtype=torch.float64)


def _homogeneous_map(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    h = matrix.to(points)
    w = points @ h[2, :2] + h[2, 2]
    return (points @ h[:2, :2].T + h[:2, 2]) / w[..., None]


class HomographyTransform(PolynomialTransform):
    """``y = (H [x, 1])[:2] / (H [x, 1])[2]`` (fixed -> moving, mm); ``H`` is scaled so that ``H[2, 2] = 1``."""

    def __init__(self, matrix, domain: "Grid | None" = None) -> None:
        h = torch.as_tensor(np.asarray(matrix, dtype=np.float64) if not isinstance(matrix, torch.Tensor) else matrix,
                            dtype=torch.float64)
        if h.shape != (3, 3) or not bool(torch.isfinite(h).all()):
            raise InputError(f"a homography needs a finite 3x3 matrix, got shape {tuple(h.shape)}")
        if abs(float(h[2, 2])) < 1e-12 or abs(float(torch.linalg.det(h))) < 1e-18:
            raise InputError("the homography is singular")
        self.matrix = h / h[2, 2]
        self.domain = domain

    def _map(self, points: torch.Tensor) -> torch.Tensor:
        return _homogeneous_map(self.matrix, points)

    def inverse(self) -> "HomographyTransform":
        return HomographyTransform(torch.linalg.inv(self.matrix))

    def parameters_dict(self) -> dict:
        return {"model": "homography", "matrix": self.matrix.tolist()}


def _monomials(u: torch.Tensor) -> torch.Tensor:
    a, b = u[..., 0], u[..., 1]
    return torch.stack([torch.ones_like(a), a, b, a * a, a * b, b * b], -1)


class QuadraticTransform(PolynomialTransform):
    """``y = C m((x - c) / s)`` (fixed -> moving, mm); see the module docstring."""

    def __init__(self, coefficients, center, scale: float, domain: "Grid | None" = None) -> None:
        self.coefficients = torch.as_tensor(np.asarray(coefficients, dtype=np.float64), dtype=torch.float64) \
            if not isinstance(coefficients, torch.Tensor) else coefficients.detach().double().cpu()
        self.center = torch.as_tensor(np.asarray(center, dtype=np.float64), dtype=torch.float64)
        self.scale = float(scale)
        if self.coefficients.shape != (2, 6) or not bool(torch.isfinite(self.coefficients).all()):
            raise InputError(f"a quadratic transform needs finite 2x6 coefficients, got {tuple(self.coefficients.shape)}")
        if self.center.shape != (2,) or not self.scale > 0:
            raise InputError("a quadratic transform needs a 2D centre and a positive scale")
        self.domain = domain

    def _map(self, points: torch.Tensor) -> torch.Tensor:
        u = (points - self.center.to(points)) / self.scale
        return _monomials(u) @ self.coefficients.to(points).T

    def jacobian(self, points: torch.Tensor) -> torch.Tensor:
        """``dy/dx`` at ``points`` (..., 2) -> (..., 2, 2)."""
        u = (points - self.center.to(points)) / self.scale
        a, b = u[..., 0], u[..., 1]
        one, zero = torch.ones_like(a), torch.zeros_like(a)
        dm_da = torch.stack([zero, one, zero, 2 * a, b, zero], -1)
        dm_db = torch.stack([zero, zero, one, zero, a, 2 * b], -1)
        c = self.coefficients.to(points)
        return torch.stack([dm_da @ c.T, dm_db @ c.T], -1) / self.scale

    def linear_part(self) -> AffineTransform:
        """The first-order part at the centre (the affine map the model reduces to near ``c``)."""
        c = self.coefficients
        matrix = c[:, 1:3] / self.scale  # y = C0 + M (x - c) = M (x - c) + c + (C0 - c)
        return AffineTransform(matrix, c[:, 0] - self.center, self.center)

    def inverse(self) -> "InverseQuadraticTransform":
        return InverseQuadraticTransform(self)

    def parameters_dict(self) -> dict:
        return {"model": "quadratic", "coefficients": self.coefficients.tolist(), "center": self.center.tolist(),
                "scale": self.scale}


class InverseQuadraticTransform(PolynomialTransform):
    """The inverse of a :class:`QuadraticTransform` (moving -> fixed): Newton's method on ``Q(x) = y`` from the
    inverse of its linear part; points where it does not converge to ``tolerance_mm`` are NaN."""

    def __init__(self, forward: QuadraticTransform, iterations: int = 30, tolerance_mm: float = 1e-6) -> None:
        self.forward = forward
        self.iterations, self.tolerance_mm = iterations, tolerance_mm
        self.domain = None

    def _map(self, points: torch.Tensor) -> torch.Tensor:
        y = points.double()
        x = self.forward.linear_part().inverse().map_points(y.detach())
        for _ in range(self.iterations):
            r = self.forward.map_points(x) - y
            step = torch.linalg.solve(self.forward.jacobian(x), r.unsqueeze(-1)).squeeze(-1)
            x = x - step
            if step.numel() == 0 or float(step.abs().nan_to_num(0.0).max()) < self.tolerance_mm:
                break
        residual = (self.forward.map_points(x) - y).norm(dim=-1)
        x = torch.where((residual < max(1e-3, 1e3 * self.tolerance_mm))[..., None], x, torch.full_like(x, float("nan")))
        return x.to(points.dtype)

    def inverse(self) -> QuadraticTransform:
        return self.forward

    def parameters_dict(self) -> dict:
        return {"model": "inverse-quadratic", "forward": self.forward.parameters_dict()}


# ---------------------------------------------------------------------------------------------------- fitting
def _check_pairs(fixed, moving, model: str) -> tuple[np.ndarray, np.ndarray]:
    f, m = np.asarray(fixed, dtype=np.float64), np.asarray(moving, dtype=np.float64)
    if f.ndim != 2 or f.shape[1] != 2 or f.shape != m.shape:
        raise InputError(f"fitting a {model} needs two (N, 2) point sets of the same shape, got {f.shape} and {m.shape}")
    if len(f) < MIN_POINTS[model]:
        raise InputError(f"fitting a {model} needs at least {MIN_POINTS[model]} correspondences, got {len(f)}")
    if not (np.isfinite(f).all() and np.isfinite(m).all()):
        raise InputError(f"fitting a {model}: the points contain NaN or infinite values")
    return f, m


def _similarity_normaliser(points: np.ndarray) -> np.ndarray:
    """Hartley's normalisation: centroid to the origin, mean distance sqrt(2)."""
    c = points.mean(0)
    d = np.linalg.norm(points - c, axis=1).mean() or 1.0
    s = np.sqrt(2.0) / d
    return np.array([[s, 0, -s * c[0]], [0, s, -s * c[1]], [0, 0, 1.0]])


def fit_homography(fixed, moving, weights=None) -> HomographyTransform:
    """The homography mapping ``fixed`` to ``moving`` (N >= 4 pairs, mm) by the normalised DLT (weighted least
    squares of the algebraic error)."""
    f, m = _check_pairs(fixed, moving, "homography")
    tf, tm = _similarity_normaliser(f), _similarity_normaliser(m)
    fh = np.c_[f, np.ones(len(f))] @ tf.T
    mh = np.c_[m, np.ones(len(m))] @ tm.T
    zero = np.zeros((len(f), 3))
    rows = np.concatenate([np.concatenate([fh, zero, -mh[:, :1] * fh], 1),
                           np.concatenate([zero, fh, -mh[:, 1:2] * fh], 1)])
    if weights is not None:
        w = np.sqrt(np.asarray(weights, dtype=np.float64))
        rows = rows * np.concatenate([w, w])[:, None]
    _, sv, vt = np.linalg.svd(rows)
    h = np.linalg.inv(tm) @ vt[-1].reshape(3, 3) @ tf
    if abs(h[2, 2]) < 1e-12 or sv[-2] < 1e-12:
        raise InputError("the correspondences do not determine a homography (collinear points?)")
    return HomographyTransform(h / h[2, 2])


def _least_squares(a: np.ndarray, b: np.ndarray, weights, what: str) -> np.ndarray:
    """The (weighted) least-squares solution of ``a x = b``; an error naming ``what`` when ``a`` is rank-deficient."""
    if weights is not None:
        w = np.sqrt(np.asarray(weights, dtype=np.float64))[:, None]
        a, b = a * w, b * w
    if np.linalg.matrix_rank(a) < a.shape[1]:
        raise InputError(f"the correspondences do not determine {what}")
    solution, *_ = np.linalg.lstsq(a, b, rcond=None)
    return solution


def fit_quadratic(fixed, moving, weights=None, center=None, scale: float | None = None) -> QuadraticTransform:
    """The quadratic transform mapping ``fixed`` to ``moving`` (N >= 6 pairs, mm) by least squares; ``center``
    and ``scale`` (conditioning) default to the fixed points' centroid and spread."""
    f, m = _check_pairs(fixed, moving, "quadratic")
    center = f.mean(0) if center is None else np.asarray(center, dtype=np.float64)
    scale = float(scale or (np.abs(f - center).max() or 1.0))
    a = _monomials(torch.as_tensor((f - center) / scale)).numpy()
    coefficients = _least_squares(a, m, weights, "a quadratic transform (too few or collinear points)")
    return QuadraticTransform(coefficients.T, center, scale)


def fit_affine_2d(fixed, moving, weights=None) -> AffineTransform:
    """The 2D affine map ``fixed -> moving`` (N >= 3 pairs, mm) by least squares."""
    f, m = _check_pairs(fixed, moving, "affine")
    sol = _least_squares(np.c_[f, np.ones(len(f))], m, weights, "an affine map (collinear points?)")
    return AffineTransform(sol[:2].T, sol[2])


def fit_model(model: str, fixed, moving, weights=None) -> Transform:
    """Fit one of :data:`MODELS` to correspondences ``fixed -> moving`` (mm)."""
    if model == "homography":
        return fit_homography(fixed, moving, weights)
    if model == "quadratic":
        return fit_quadratic(fixed, moving, weights)
    if model == "affine":
        return fit_affine_2d(fixed, moving, weights)
    raise InputError(f"unknown 2D model {model!r} (choose from {MODELS})")


def polynomial_from_dict(data: dict) -> PolynomialTransform:
    """The exact model from :meth:`PolynomialTransform.parameters_dict`'s JSON."""
    try:
        kind = data["model"]
        if kind == "homography":
            return HomographyTransform(data["matrix"])
        if kind == "quadratic":
            return QuadraticTransform(data["coefficients"], data["center"], data["scale"])
        if kind == "inverse-quadratic":
            return polynomial_from_dict(data["forward"]).inverse()
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"not a valid 2D model description ({err})") from None
    raise InputError(f"unknown 2D model {data.get('model')!r} in a model description")
