"""The ``polynomial`` stage: a global 2D model (quadratic or homography) refined on the images' feature maps.

The model's coefficients are optimised with the engine's Adam loop for the normalised cross-correlation between
the fixed feature image and the moving one sampled through the model, at the fixed field-of-view pixels, level by
level. Coefficients live in conditioned coordinates (``u = (x - c) / s`` with ``c`` the fixed field of view's
centre and ``s`` its half extent, mm), so one step size fits every coefficient: a coefficient of 1 mm moves the
edge of the field of view by 1 mm.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ...errors import InputError
from ...metrics.similarity import NCCLoss
from ...transforms import IdentityTransform
from ...transforms.polynomial import HomographyTransform, PolynomialTransform, QuadraticTransform, fit_quadratic
from ..loop import optimise
from ..optim import Adam
from ..stage import StageContext, StageOutcome, StageState
from .kinds import PolynomialSettings
from .stage import feature_image, moving_pixel_mm

__all__ = ["run_polynomial_stage"]


class _Model(torch.nn.Module):
    """Optimisable model in conditioned coordinates: ``quadratic`` (C, 2x6, mm) or ``homography`` (H~ on ``u``)."""

    def __init__(self, kind: str, start, center: np.ndarray, scale: float, samples: np.ndarray) -> None:
        super().__init__()
        self.kind = kind
        self.register_buffer("center", torch.as_tensor(center, dtype=torch.float64))
        self.scale = float(scale)
        if kind == "quadratic":
            if isinstance(start, QuadraticTransform) and np.allclose(start.center.numpy(), center) \
                    and np.isclose(start.scale, scale):
                coefficients = start.coefficients.clone()
            else:  # the start's best quadratic on the field of view (exact for a quadratic or an affine map)
                coefficients = fit_quadratic(samples, start.map_points(samples), center=center, scale=scale).coefficients
            self.coefficients = torch.nn.Parameter(coefficients.clone())
        else:
            # H~ = N H N^-1 with N: x -> (x - c) / s, so that its entries are of order 1
            n = np.array([[1 / scale, 0, -center[0] / scale], [0, 1 / scale, -center[1] / scale], [0, 0, 1.0]])
            if isinstance(start, HomographyTransform):
                h = start.matrix.numpy()
            else:
                affine = start.collapse_linear() if hasattr(start, "collapse_linear") else start
                if not getattr(affine, "is_linear", False):
                    raise InputError(f"a homography refinement cannot start from a {start.kind}")
                h = affine.homogeneous().numpy() if hasattr(affine, "homogeneous") else None
            h_n = n @ h @ np.linalg.inv(n)
            self.h = torch.nn.Parameter(torch.as_tensor(h_n / h_n[2, 2]))
            self.register_buffer("n", torch.as_tensor(n))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        u = (points - self.center) / self.scale
        if self.kind == "quadratic":
            a, b = u[:, 0], u[:, 1]
            monomials = torch.stack([torch.ones_like(a), a, b, a * a, a * b, b * b], -1)
            return monomials @ self.coefficients.T
        w = u @ self.h[2, :2] + self.h[2, 2]
        v = (u @ self.h[:2, :2].T + self.h[:2, 2]) / w[:, None]
        return v * self.scale + self.center

    def transform(self) -> PolynomialTransform:
        if self.kind == "quadratic":
            return QuadraticTransform(self.coefficients.detach().clone(), self.center.numpy(), self.scale)
        n = self.n.numpy()
        return HomographyTransform(np.linalg.inv(n) @ self.h.detach().numpy() @ n)


def _level_data(context: StageContext, settings: PolynomialSettings, size: int):
    """The fixed points (mm) and feature values at one working size, and the moving feature image and its field
    of view (tensors (1, 1, h, w)) with the map mm -> grid_sample coordinates of the moving working image."""
    import cv2

    maps = []
    for image, polarity in ((context.fixed, settings.fixed_polarity), (context.moving, settings.moving_polarity)):
        work, u8 = feature_image(image, settings.features, size, polarity, vessel_model=settings.vessel_model)
        feature = u8.astype(np.float32) / 255.0
        if settings.smoothing_px > 0:
            feature = cv2.GaussianBlur(feature, (0, 0), settings.smoothing_px)
        maps.append((work, feature))
    (fixed_work, fixed_feature), (moving_work, moving_feature) = maps
    rows, cols = np.nonzero(fixed_work.mask)
    index = fixed_work.to_original(np.stack([cols, rows], 1).astype(np.float64))
    points = torch.as_tensor(context.fixed.grid.index_to_physical(index))
    values = torch.as_tensor(fixed_feature[rows, cols]).view(1, 1, 1, -1)
    moving = torch.as_tensor(np.stack([moving_feature, moving_work.mask.astype(np.float32)]))[None]

    def to_grid(mm: torch.Tensor) -> torch.Tensor:
        return moving_work.normalised(context.moving.grid, mm).float()

    return points, values, moving, to_grid


def run_polynomial_stage(settings: PolynomialSettings, context: StageContext, state: StageState) -> StageOutcome:
    """Refine ``state``'s global model (or linear transform) on the feature images; see the module docstring."""
    start_time = time.perf_counter()
    if state.deformable is None:
        start = state.linear
    elif isinstance(state.deformable, PolynomialTransform) and not bool(
            (state.linear.homogeneous() - torch.eye(3, dtype=torch.float64)).abs().max() > 1e-12):
        start = state.deformable  # a keypoints (or polynomial) stage's model
    else:
        raise InputError(f"a polynomial stage refines a keypoints or polynomial stage's model or a linear transform, "
                         f"not a {state.deformable.kind}")
    similarity = NCCLoss()
    model = None
    finest = max(settings.working_sizes)
    opt = None
    samples_mm = None
    for level, (size, iters) in enumerate(zip(settings.working_sizes, settings.iterations)):
        context.check_cancel()
        points, values, moving, to_grid = _level_data(context, settings, size)
        if model is None:
            center = points.mean(0).numpy()
            scale = float((points - points.mean(0)).abs().max())
            samples_mm = points[:: max(1, len(points) // 5000)].numpy()
            model = _Model(settings.transform, start, center, scale, samples_mm)
            opt = Adam([{"params": list(model.parameters()), "lr": settings.learning_rate}])
        lr = settings.learning_rate * moving_pixel_mm(context.moving) * finest / size
        if settings.transform == "homography":
            lr /= model.scale
        opt.groups[0]["lr"] = lr
        moving_t = moving.float()

        def step(points=points, values=values, moving_t=moving_t, to_grid=to_grid):
            coords = to_grid(model(points)).view(1, 1, -1, 2)
            sampled = torch.nn.functional.grid_sample(moving_t, coords, align_corners=True, padding_mode="zeros")
            warped, inside = sampled[:, :1], sampled[:, 1:]
            value = similarity(values, warped, (inside > 0.5).float())
            return value, value, {}

        def schedule(it: int, iters=iters) -> None:
            opt.factor = 1.0 - 0.8 * (it + 1) / max(iters, 1)

        if level == len(settings.working_sizes) - 1:
            with torch.no_grad():
                first = _ncc_of(start, points, values, moving_t, to_grid, similarity)
        optimise(context, opt, iters, step, model=settings.model, level=level, after_step=schedule)
    refined = model.transform()
    with torch.no_grad():
        final = _ncc_of(refined, points, values, moving_t, to_grid, similarity)
        # the change where it matters: fixed points that land inside the moving field of view (elsewhere the
        # images say nothing and a quadratic is free)
        ahead = torch.as_tensor(start.map_points(samples_mm))
        inside = torch.nn.functional.grid_sample(moving_t[:, 1:], to_grid(ahead).view(1, 1, -1, 2),
                                                 align_corners=True).view(-1) > 0.5
        change = np.linalg.norm(refined.map_points(samples_mm) - ahead.numpy(), axis=1)[inside.numpy()]
        shift = float(change.max()) if change.size else 0.0
    figures = {"ncc_start": -first, "ncc_final": -final, "max_change_px": shift / moving_pixel_mm(context.moving),
               "polynomial_time_s": time.perf_counter() - start_time}
    if not final < first or shift > settings.max_shift_px * moving_pixel_mm(context.moving):  # keep the start: the refinement did not help
        figures["refinement_kept"] = False
        result = start
    else:
        figures["refinement_kept"] = True
        result = refined
    return StageOutcome(StageState(IdentityTransform(context.dim), result), min(first, final), figures)


def _ncc_of(transform, points, values, moving, to_grid, similarity) -> float:
    mapped = transform.map_points(points) if not isinstance(points, np.ndarray) else None
    coords = to_grid(mapped.double()).view(1, 1, -1, 2)
    sampled = torch.nn.functional.grid_sample(moving, coords, align_corners=True, padding_mode="zeros")
    return float(similarity(values, sampled[:, :1], (sampled[:, 1:] > 0.5).float()))
