"""The FIRE protocol for retinal registration (Hernandez-Matas et al. 2017): control points and the success curve.

A FIRE ground-truth file has one line per control point, ``x_fixed y_fixed x_moving y_moving`` in pixels of the
two photographs (lines starting with ``#`` are comments) (``(x, y) = (column, row)``; image ``_1`` of a pair is the fixed one). A registration's error on a
pair is the mean distance between the fixed points mapped by the resampling transform (fixed -> moving) and the
moving points, in moving-image pixels. Over a set of pairs, the success rate at threshold ``t`` is the fraction of
pairs whose error is below ``t``; the AUC is the mean of that rate over ``t`` in [0, 25] px, and a pair above 25 px
counts as a failure. Photographs read with unit spacing and the origin at 0 have millimetres equal to pixels; for
other grids, :func:`read_fire_points` converts through the images' grids.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..errors import InputError

__all__ = ["FirePoints", "read_fire_points", "pair_error", "success_curve", "fire_summary", "FAILURE_PX"]

#: The largest error of a pair that still counts as a success, and the end of the AUC's threshold range.
FAILURE_PX = 25.0


@dataclass
class FirePoints:
    """Corresponding control points ``(N, 2)`` of the fixed and the moving image (physical coordinates)."""

    fixed: np.ndarray
    moving: np.ndarray


def read_fire_points(path: str | os.PathLike, fixed_grid=None, moving_grid=None) -> FirePoints:
    """Read a FIRE control-point file; pixel coordinates become physical through the grids when given."""
    try:
        with open(path, encoding="utf-8") as handle:
            rows = [line.split() for line in handle if line.strip() and not line.lstrip().startswith("#")]
    except FileNotFoundError:
        raise InputError(f"{path}: control-point file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read the control points ({err})") from None
    try:
        values = np.array(rows, dtype=np.float64)
    except ValueError:
        raise InputError(f"{path}: not a FIRE control-point file (each line must be 'x_fixed y_fixed x_moving "
                         "y_moving', numbers)") from None
    if values.ndim != 2 or values.shape[1] != 4 or len(values) == 0:
        raise InputError(f"{path}: not a FIRE control-point file (each line must hold 4 numbers: x_fixed y_fixed "
                         "x_moving y_moving)")
    if not np.isfinite(values).all():
        raise InputError(f"{path}: the control points contain NaN or infinite values")
    fixed, moving = values[:, :2], values[:, 2:]
    if fixed_grid is not None:
        fixed = fixed_grid.index_to_physical(fixed)
    if moving_grid is not None:
        moving = moving_grid.index_to_physical(moving)
    return FirePoints(fixed, moving)


def pair_error(transform, points: FirePoints) -> float:
    """Mean distance (moving-image units) between ``transform(fixed points)`` and the moving points; infinite
    when the transform cannot map a point (e.g. behind a homography's horizon)."""
    mapped = np.asarray(transform.map_points(points.fixed), dtype=np.float64)
    distances = np.linalg.norm(mapped - points.moving, axis=1)
    return float(distances.mean()) if np.isfinite(distances).all() else float("inf")


def success_curve(errors, thresholds: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Thresholds (default 0..25 px in 0.1 px steps) and the fraction of pairs with an error at most each."""
    errors = np.asarray(errors, dtype=np.float64)
    thresholds = np.linspace(0.0, FAILURE_PX, 251) if thresholds is None else np.asarray(thresholds)
    return thresholds, (errors[None, :] <= thresholds[:, None]).mean(1)


def fire_summary(errors) -> dict:
    """AUC of the success curve over 0..25 px, failures (error > 25 px), median and mean error of a set of pairs."""
    errors = np.asarray(errors, dtype=np.float64)
    if errors.size == 0:
        raise InputError("no pair to summarise")
    thresholds, rate = success_curve(errors)
    return {"pairs": int(errors.size), "auc": float(np.trapezoid(rate, thresholds) / FAILURE_PX),
            "failures": int((errors > FAILURE_PX).sum()), "median_error_px": float(np.median(errors)),
            "mean_error_px": float(np.mean(errors)), "max_error_px": float(np.max(errors))}
