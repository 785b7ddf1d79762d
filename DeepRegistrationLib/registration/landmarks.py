"""Linear transforms fitted to landmark pairs (initialisation, and a baseline).

``fit_landmarks(fixed_points, moving_points)`` returns the resampling transform fixed -> moving
(``y ~ A x + b``, LPS mm) minimising the squared landmark distances: rigid (Kabsch/Umeyama without
scale) or affine (linear least squares).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..transforms import AffineTransform, RigidTransform, TranslationTransform
from ..transforms.linear import LinearTransform

__all__ = ["fit_landmarks"]


def fit_landmarks(fixed_points: np.ndarray, moving_points: np.ndarray, model: str = "rigid") -> LinearTransform:
    """Least-squares ``translation``, ``rigid`` or ``affine`` transform mapping fixed landmarks onto moving ones."""
    x = np.asarray(fixed_points, dtype=np.float64)
    y = np.asarray(moving_points, dtype=np.float64)
    if x.shape != y.shape:
        raise InputError(f"landmark sets differ: {x.shape[0]} fixed vs {y.shape[0]} moving points")
    if x.ndim != 2 or x.shape[1] not in (2, 3) or x.shape[0] == 0:
        raise InputError(f"landmarks must be (N, 2) or (N, 3) arrays, got {x.shape}")
    dim = x.shape[1]
    cx, cy = x.mean(0), y.mean(0)
    needed = {"translation": 1, "rigid": dim, "affine": dim + 1}.get(model)
    if needed is None:
        raise InputError(f"landmark model must be translation, rigid or affine, got {model!r}")
    if x.shape[0] < needed:
        raise InputError(f"a {model} fit needs at least {needed} landmark pairs, got {x.shape[0]}")
    if model == "translation":
        return TranslationTransform(cy - cx)
    if model == "rigid":
        u, _, vt = np.linalg.svd((y - cy).T @ (x - cx))
        d = np.sign(np.linalg.det(u @ vt))
        r = u @ np.diag([1.0] * (dim - 1) + [d]) @ vt
        return RigidTransform.from_matrix(r, cy - cx, cx)  # y = R (x - cx) + cx + (cy - cx)
    xh = np.hstack([x, np.ones((x.shape[0], 1))])
    sol, _, rank, _ = np.linalg.lstsq(xh, y, rcond=None)
    if rank < dim + 1:
        raise InputError("the landmarks are degenerate (collinear or coplanar): no affine fit")
    return AffineTransform(sol[:dim].T, sol[dim])
