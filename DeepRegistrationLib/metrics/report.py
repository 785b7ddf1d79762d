"""One evaluation report of a resampling transform: what ``deepreg evaluate`` prints and benchmarks tabulate."""

from __future__ import annotations

import numpy as np
import torch

from ..image import Image
from ..transforms import Transform, to_displacement_field
from .evaluation import jacobian_determinant, jacobian_stats, overlap, surface_distances, target_registration_error

__all__ = ["evaluate_transform"]


def evaluate_transform(transform: Transform, fixed_labels: Image | None = None, moving_labels: Image | None = None,
                       fixed_points: np.ndarray | None = None, moving_points: np.ndarray | None = None,
                       reference: Image | None = None, interpolation: str = "label", surface: bool = True) -> dict:
    """All evaluation figures of a resampling transform (fixed -> moving) as one dict.

    Moving labels are warped onto the fixed labels' grid (``interpolation``: ``label`` or ``nearest``);
    Dice/Jaccard (and HD95/ASSD in mm when ``surface``) per label and their means, the mean Dice before
    registration (identity), TRE of landmark pairs in mm, and Jacobian figures on the fixed grid (all
    voxels, and inside the fixed labels).
    """
    from ..warp import warp_image

    report: dict = {"transform": transform.describe().get("kind")}
    grid = fixed_labels.grid if fixed_labels is not None else (reference.grid if reference is not None else None)
    if grid is not None and not transform.is_linear:
        # sampled once on the evaluation grid, for the warp and the Jacobian (exact at the voxel centres)
        transform = to_displacement_field(transform, grid, dtype=torch.float64)
    if fixed_labels is not None:
        warped = warp_image(moving_labels, transform, fixed_labels, interpolation)
        before = warp_image(moving_labels, None, fixed_labels, interpolation)
        ov = overlap(fixed_labels, warped)
        ov_before = overlap(fixed_labels, before, labels=list(ov))
        sd = surface_distances(fixed_labels, warped, labels=list(ov)) if surface else {}
        per_label = {str(k): {**ov[k], **sd.get(k, {})} for k in ov}
        report["labels"] = per_label
        report["mean"] = {key: float(np.nanmean([v[key] for v in per_label.values()]))
                          for key in ("dice", "jaccard", "hd95", "assd") if key in next(iter(per_label.values()))}
        report["mean_dice_before"] = float(np.nanmean([v["dice"] for v in ov_before.values()]))
    if fixed_points is not None:
        report["tre_mm"] = target_registration_error(transform, fixed_points, moving_points)
    if grid is not None:
        det = jacobian_determinant(transform, grid)
        report["jacobian"] = jacobian_stats(det)
        if fixed_labels is not None:
            report["jacobian_in_labels"] = jacobian_stats(det, fixed_labels.numpy() != 0)
    return report
