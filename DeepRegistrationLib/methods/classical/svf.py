"""The diffeomorphic SVF stage: a stationary velocity field optimised level by level after the linear part.

The velocity lives on a control grid (every ``control_spacing_factor``-th level voxel, same origin and
direction: :meth:`~DeepRegistrationLib.geometry.Grid.coarsened`), so its displacement is brought to the level
voxels exactly by linear interpolation onto the subdivided grid (:func:`~DeepRegistrationLib.sampling.subdivide_nodes`),
much cheaper than ``grid_sample``. Each level starts from the previous level's velocity; the first from the state's deformable
part when there is one (a velocity field, or a displacement field taken as its own velocity to first order).
"""

from __future__ import annotations

import torch

from ...metrics.regularisers import diffusion_regulariser
from ...metrics.similarity import make_similarity
from ..pyramid import feature_levels, mapped_image
from ...sampling import grid_to_normalised, normalised_linear, sample, subdivide_nodes
from ...transforms import StationaryVelocityField, compose, integrate_velocity
from ..loop import optimise
from ..optim import Adam
from ..stage import StageContext, StageOutcome, StageState
from .kinds import SVFSettings

__all__ = ["run_svf_stage"]


def run_svf_stage(settings: SVFSettings, context: StageContext, state: StageState) -> StageOutcome:
    """Optimise a stationary velocity field applied before ``state.linear``."""
    dim = context.dim
    device = context.device
    similarity = make_similarity(settings.similarity, **settings.similarity_options)
    # the moving features are made per level through the linear part (below), never from the unwarped image
    levels = feature_levels(context.pyramid.levels(settings.pyramid_levels(), settings.smoothing_factor()), similarity,
                            moving=False)
    linear = state.linear
    mapped = None
    if getattr(similarity, "maps_intensities", False):
        # the moving image in the fixed contrast, mapped unsmoothed through the starting transform, once: mapped
        # again after each level it follows the deformation's errors (OASIS T1 vs PD-like: Dice 0.760 -> 0.733)
        start_transform = linear if state.deformable is None else compose(state.deformable, linear)
        mapped = mapped_image(context.fixed, context.moving, start_transform, similarity, "moving")
    velocity = vgrid = None
    start = state.deformable
    if isinstance(start, StationaryVelocityField):
        velocity, vgrid = start.velocity.to(device).float(), start.grid
    elif start is not None:
        velocity, vgrid = start.field.to(device).float(), start.grid
    loss = float("nan")
    factor = max(1, int(round(settings.control_spacing_factor)))
    for li, (level, iters) in enumerate(zip(levels, settings.iterations_per_level())):
        new_grid = level.grid.coarsened(factor)
        if velocity is None:
            v0 = torch.zeros(dim, *new_grid.shape, dtype=torch.float32, device=device)
        else:  # upsample the previous level's velocity (LPS mm vectors) onto the new control grid
            v0 = sample(velocity.detach(), vgrid, new_grid.physical_points(device=device)).float()
        if mapped is not None:
            level = level.with_moving_image(mapped)
        vgrid = new_grid
        velocity = torch.nn.Parameter(v0)
        opt = Adam([{"params": [velocity], "lr": settings.learning_rate * level.spacing_mm}])
        # y = A (x + u(x)) = A x + A u(x): in the moving level's normalised coordinates both terms are linear,
        # so only u changes between iterations (computed in float32 on precomputed coordinates).
        if getattr(similarity, "extracts_features", False):
            # a learned metric: moving features made from the moving image seen through the linear part, on the
            # fixed grid (features do not rotate with the image); the deformation is then read from there
            level = level.warped_features(linear, similarity.features, interpolation=similarity.interpolation)
            moving_base = grid_to_normalised(level.grid, level.moving_grid, device=device).reshape(-1, dim)
            moving_lin = normalised_linear(level.moving_grid, torch.float32, device)
        else:
            a = linear.matrix().to(device)
            moving_base = grid_to_normalised(level.grid, level.moving_grid, a, linear.offset(),
                                             device=device).reshape(-1, dim)
            moving_lin = (normalised_linear(level.moving_grid, torch.float64, device) @ a).float()

        fixed = level.fixed.contiguous()  # feature levels are stored channels-last; the warped values are not

        def step(level=level, velocity=velocity, vgrid=vgrid, moving_base=moving_base, moving_lin=moving_lin,
                 fixed=fixed):
            u_field = integrate_velocity(velocity, vgrid, settings.integration_steps)
            u = subdivide_nodes(u_field.unsqueeze(0), factor, level.grid.shape)
            coords = torch.addmm(moving_base, u.reshape(dim, -1).T, moving_lin.T)  # one pass: 9.4 -> 6.1 ms at 2M points
            warped, weights = level.warp_moving(coords)
            sim = similarity(fixed, warped, weights)
            reg = diffusion_regulariser(velocity, vgrid.spacing)
            return sim + settings.regularisation_weight * reg, sim, {"regularisation": reg}

        loss = optimise(context, opt, iters, step, model="svf", level=li)
    svf = StationaryVelocityField(velocity.detach().cpu(), vgrid, settings.integration_steps)
    return StageOutcome(StageState(linear, svf), loss)
