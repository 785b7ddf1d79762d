"""Evaluation of a registration: label overlap, surface distances, landmark error, Jacobian determinant.

Conventions:
* Label maps are integer :class:`Image` s on the same grid (the moving labels warped onto the fixed
  grid); label 0 is background and is never scored.
* Surfaces are the label voxels with a face-neighbour outside the label (``BinaryContour``, not fully
  connected); distances are Euclidean between voxel centres in **mm** (spacing honoured).
  ``hd95 = max(P95(d(A->B)), P95(d(B->A)))``, ``hd = max`` of all, ``assd`` = mean of the pooled
  distances of both directions (MONAI's definitions).
* TRE maps the fixed landmarks through the resampling transform (fixed -> moving) and measures the
  distance to the moving landmarks, in mm.
* The Jacobian is ``dT/dx`` of the physical map (mm/mm) by central finite differences on a grid;
  "folded" means ``det J <= 0``; ``std_log_jacobian`` is the std of ``log(clip(det J, 1e-9, 1e9))``
  (the Learn2Reg convention).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from ..geometry import Grid
from ..image import Image
from ..transforms import DisplacementField, Transform, to_displacement_field

__all__ = ["overlap", "surface_distances", "target_registration_error", "jacobian_determinant", "jacobian_stats",
           "label_values"]


def _label_array(labels: Image, what: str) -> np.ndarray:
    if labels.num_channels != 1 or not labels.is_label_map:
        raise InputError(f"{labels.name}: {what} must be a single-channel integer label map (got {labels.data.dtype})")
    return labels.numpy()


def label_values(fixed: Image, moving: Image) -> list[int]:
    """Non-zero labels present in either map (sorted)."""
    values = np.union1d(np.unique(_label_array(fixed, "fixed labels")), np.unique(_label_array(moving, "moving labels")))
    return [int(v) for v in values if v != 0]


def _check_pair(fixed: Image, warped: Image) -> tuple[np.ndarray, np.ndarray]:
    a, b = _label_array(fixed, "fixed labels"), _label_array(warped, "warped labels")
    if not fixed.grid.same_as(warped.grid):
        raise InputError(f"{warped.name} is not on the grid of {fixed.name}; warp or resample it first")
    for arr, img in ((a, fixed), (b, warped)):
        if not arr.any():
            raise InputError(f"{img.name}: the label map is empty (no non-zero voxel)")
    return a, b


def overlap(fixed: Image, warped: Image, labels: list[int] | None = None) -> dict[int, dict[str, float]]:
    """Dice and Jaccard per label: ``{label: {"dice": .., "jaccard": ..}}``."""
    a, b = _check_pair(fixed, warped)
    labels = labels or label_values(fixed, warped)
    a, b = a.ravel(), b.ravel()
    counts = _label_counts(a, b, labels)
    result = {}
    for label in labels:
        na, nb, inter = counts[label]
        union = na + nb - inter
        result[label] = {"dice": 2.0 * inter / (na + nb) if na + nb else float("nan"),
                         "jaccard": inter / union if union else float("nan")}
    return result


def _label_counts(a: np.ndarray, b: np.ndarray, labels: list[int]) -> dict[int, tuple[int, int, int]]:
    """Voxels of each label in ``a``, in ``b`` and in both, in one pass (``bincount``) when the labels are
    non-negative integers below 2^20, label by label otherwise."""
    lo = min(int(a.min()), int(b.min()), *labels) if labels else 0
    hi = max(int(a.max()), int(b.max()), *labels) if labels else 0
    if lo >= 0 and hi < (1 << 20):
        n = hi + 1
        na, nb = np.bincount(a, minlength=n), np.bincount(b, minlength=n)
        both = np.bincount(a[a == b], minlength=n)
        return {label: (int(na[label]), int(nb[label]), int(both[label])) for label in labels}
    out = {}
    for label in labels:
        in_a, in_b = a == label, b == label
        out[label] = (int(np.count_nonzero(in_a)), int(np.count_nonzero(in_b)), int(np.count_nonzero(in_a & in_b)))
    return out


def _surface_and_distance(mask: np.ndarray, spacing_xyz: tuple[float, ...]):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(mask.astype(np.uint8))
    img.SetSpacing(spacing_xyz)
    contour = sitk.BinaryContour(img, fullyConnected=False, backgroundValue=0, foregroundValue=1)
    dist = sitk.Abs(sitk.SignedMaurerDistanceMap(contour, insideIsPositive=False, squaredDistance=False,
                                                 useImageSpacing=True, backgroundValue=0))
    return sitk.GetArrayFromImage(contour).astype(bool), sitk.GetArrayFromImage(dist)


def surface_distances(fixed: Image, warped: Image, labels: list[int] | None = None,
                      percentile: float = 95.0) -> dict[int, dict[str, float]]:
    """Per label ``{"hd95", "hd", "assd", "mean_fixed_to_warped", "mean_warped_to_fixed"}`` in mm (NaN if absent)."""
    a, b = _check_pair(fixed, warped)
    labels = labels or label_values(fixed, warped)
    spacing = fixed.grid.spacing
    nan = float("nan")
    result = {}
    for label in labels:
        ma, mb = a == label, b == label
        if not ma.any() or not mb.any():
            result[label] = {"hd95": nan, "hd": nan, "assd": nan, "mean_fixed_to_warped": nan, "mean_warped_to_fixed": nan}
            continue
        both = ma | mb
        box = tuple(slice(max(int(idx.min()) - 1, 0), int(idx.max()) + 2) for idx in np.nonzero(both))
        sa, da = _surface_and_distance(ma[box], spacing)
        sb, db = _surface_and_distance(mb[box], spacing)
        d_ab, d_ba = db[sa], da[sb]  # distance of each surface voxel of A to B's surface, and back
        result[label] = {
            "hd95": float(max(np.percentile(d_ab, percentile), np.percentile(d_ba, percentile))),
            "hd": float(max(d_ab.max(), d_ba.max())),
            "assd": float(np.concatenate([d_ab, d_ba]).mean()),
            "mean_fixed_to_warped": float(d_ab.mean()),
            "mean_warped_to_fixed": float(d_ba.mean()),
        }
    return result


def target_registration_error(transform: Transform, fixed_points: np.ndarray, moving_points: np.ndarray) -> dict:
    """TRE in mm of landmark pairs: ``|T(p_fixed) - p_moving|``; returns summary and per-point errors."""
    fp, mp = np.asarray(fixed_points, dtype=np.float64), np.asarray(moving_points, dtype=np.float64)
    if fp.shape != mp.shape:
        raise InputError(f"landmark sets differ: {fp.shape[0]} fixed vs {mp.shape[0]} moving points "
                         f"({fp.shape[1]}D vs {mp.shape[1]}D)")
    if fp.shape[1] != transform.dim:
        raise InputError(f"{fp.shape[1]}D landmarks cannot be mapped by a {transform.dim}D transform")
    err = np.linalg.norm(transform.map_points(fp) - mp, axis=1)
    return {"mean": float(err.mean()), "std": float(err.std()), "median": float(np.median(err)),
            "p95": float(np.percentile(err, 95)), "max": float(err.max()), "count": int(err.size),
            "per_point": err.tolist()}


def jacobian_determinant(transform: Transform, grid: Grid, slab_voxels: int = 1 << 20) -> torch.Tensor:
    """``det(dT/dx)`` at every voxel of ``grid`` (array order), float64. Exact for linear transforms.

    Dense transforms are sampled and differentiated in slabs of about ``slab_voxels`` voxels along the first
    array axis (one voxel of overlap each side), so memory stays near that of the result (8 bytes a voxel)
    whatever the grid: the values are those of central differences over the whole grid (one-sided at its
    borders)."""
    if transform.dim != grid.dim:
        raise InputError(f"a {transform.dim}D transform cannot be evaluated on a {grid.dim}D grid")
    if transform.is_linear:
        from ..transforms.composite import CompositeTransform

        lin = transform.collapse_linear() if isinstance(transform, CompositeTransform) else transform
        return torch.full(grid.shape, float(torch.linalg.det(lin.matrix().detach())), dtype=torch.float64)
    dim = grid.dim
    index_to_mm = torch.as_tensor(grid.direction_matrix() @ np.diag(grid.spacing), dtype=torch.float64)
    mm_from_index = torch.linalg.inv(index_to_mm)
    n0 = grid.shape[0]
    rows = max(1, slab_voxels // max(1, grid.num_voxels // n0))
    on_grid = transform.field.detach() if isinstance(transform, DisplacementField) \
        and transform.grid.same_as(grid, atol=1e-9) else None
    det = torch.empty(grid.shape, dtype=torch.float64)
    for start in range(0, n0, rows):
        stop = min(n0, start + rows)
        lo, hi = max(0, start - 1), min(n0, stop + 1)  # one row of halo for central differences
        u = on_grid[:, lo:hi].double() if on_grid is not None else \
            to_displacement_field(transform, _rows_of(grid, lo, hi), dtype=torch.float64).field.double()
        det[start:stop] = _det_of_field(u, mm_from_index, dim)[start - lo: start - lo + stop - start]
    return det


def _rows_of(grid: Grid, lo: int, hi: int) -> Grid:
    """The sub-grid of array rows ``lo:hi`` along the first array axis (the last index axis)."""
    start = np.zeros(grid.dim)
    start[-1] = lo
    size = list(grid.size)
    size[-1] = hi - lo
    return Grid(size, grid.index_to_physical(start[None])[0], grid.spacing, grid.direction)


def _det_of_field(u: torch.Tensor, mm_from_index: torch.Tensor, dim: int) -> torch.Tensor:
    """det(I + du/dx) of a displacement field ``u`` (dim, *shape) in mm, by central differences in index space."""
    if u.shape[1] == 1:  # a single row along the first axis: no derivative along it
        grads = [[torch.zeros_like(u[c])] + list(torch.gradient(u[c], dim=tuple(range(1, dim))))
                 for c in range(dim)]
    else:
        grads = [list(torch.gradient(u[c], dim=tuple(range(dim)))) for c in range(dim)]
    # J[c][b] = delta_cb + sum_a d u_c / d index_a * (d index_a / d x_b); index axis a is array axis dim-1-a
    m = mm_from_index.tolist()
    jac = [[sum(grads[c][dim - 1 - a] * m[a][b] for a in range(dim)) + (1.0 if b == c else 0.0)
            for b in range(dim)] for c in range(dim)]
    del grads
    if dim == 2:
        return jac[0][0] * jac[1][1] - jac[0][1] * jac[1][0]
    (a, b, c), (d, e, f), (g, h, i) = jac
    return a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)


def jacobian_stats(det: torch.Tensor, mask: np.ndarray | torch.Tensor | None = None) -> dict:
    """``folding_percent`` (det <= 0), ``std_log_jacobian``, min, max and mean over ``mask`` (all voxels if None)."""
    d = det.reshape(-1)
    if mask is not None:
        m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).reshape(-1) != 0
        if not bool(m.any()):
            raise InputError("the Jacobian mask is empty")
        d = d[m]
    d = d.double()
    log_j = d.clamp(1e-9, 1e9).log_()
    return {"folding_percent": float(torch.count_nonzero(d <= 0)) * 100.0 / d.numel(),
            "std_log_jacobian": float(log_j.std()), "min": float(d.min()), "max": float(d.max()),
            "mean": float(d.mean())}
