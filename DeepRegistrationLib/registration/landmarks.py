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

__all__ = ["fit_landmarks", "check_landmarks"]


def check_landmarks(points: np.ndarray, model: str = "rigid", source: str = "landmarks") -> None:
    """Refuse a point set that cannot fix a ``model`` transform; the message starts with ``source``."""
    pts = np.asarray(points, dtype=np.float64)
    try:
        _check_spread(pts - pts.mean(0), "", model, pts.shape[1])
    except InputError as err:
        raise InputError(f"{source}: {str(err).replace('the  landmarks', 'the landmarks')}") from None


def _check_spread(centred: np.ndarray, side: str, model: str, dim: int) -> None:
    """Refuse point sets that do not fix the transform: all at one place, on a line (rigid, 3D: the rotation
    about that line is arbitrary), or in a plane (affine, 3D). Tolerance: 1e-3 of the set's extent, in mm."""
    spread = np.linalg.svd(centred, compute_uv=False) / np.sqrt(max(len(centred), 1))
    scale = float(spread[0]) if spread.size else 0.0
    if scale < 1e-6:
        raise InputError(f"the {side} landmarks are all at the same position: they cannot fix a {model} transform")
    rank = int(np.sum(spread > 1e-3 * scale))
    needed = {"rigid": dim - 1, "affine": dim}[model]
    if rank < needed:
        shape = "on one line" if rank == 1 else "in one plane"
        raise InputError(f"the {side} landmarks lie {shape}: they cannot fix a {model} transform "
                         f"(needs points spread in {needed} dimensions)")


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
    for side, pts, centre in (("fixed", x, cx), ("moving", y, cy)):
        if not np.isfinite(pts).all():
            raise InputError(f"the {side} landmarks hold NaN or infinite coordinates")
        if model != "translation":
            _check_spread(pts - centre, side, model, dim)
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
