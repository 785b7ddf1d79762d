"""The linear stages: a translation, rigid, similarity or affine transform optimised level by level.

Parameters are those of ITK's centred transforms (``y = M (x - c) + c + t``, ``c`` the fixed image's centre),
scaled so that Adam's steps mean the same at every level: step sizes are given for a 4 mm level and scaled
with the level spacing (a fresh Adam's first steps have about its step size whatever the gradient, so a finer
level must start with smaller steps than a coarse one, or it first undoes the precision already reached).
Adam's moment estimates carry over from level to level.
"""

from __future__ import annotations

import numpy as np
import torch

from ...metrics.similarity import make_similarity
from ..pyramid import feature_levels
from ...sampling import index_to_normalised_map, voxel_index
from ...transforms import AffineTransform, RigidTransform, SimilarityTransform, TranslationTransform
from ...transforms.linear import LinearTransform, rotation_matrix
from ..loop import optimise
from ..optim import Adam
from ..stage import StageContext, StageOutcome, StageState
from .kinds import LinearSettings

__all__ = ["LinearModel", "VoxelSampler", "run_linear_stage"]


class LinearModel(torch.nn.Module):
    """Optimisable linear transform around ``center``, starting at ``start`` (any linear transform)."""

    def __init__(self, model: str, dim: int, center: torch.Tensor, start: LinearTransform) -> None:
        super().__init__()
        self.model, self.dim = model, dim
        # built on the CPU (the start transform may live there while the images are on a GPU); the caller moves
        # the module to the images' device
        self.register_buffer("center", center.detach().double().cpu())
        a0 = start.matrix().detach().double().cpu()
        # translation such that start(x) = A0 (x - c) + c + t0
        t0 = start.offset().detach().double().cpu() + a0 @ self.center - self.center
        self.translation = torch.nn.Parameter(t0.clone())
        if model in ("rigid", "similarity"):
            # start from the rotation nearest to the start matrix (polar decomposition), so that an affine
            # initial transform can start a rigid stage
            u, sv, vt = np.linalg.svd(a0.numpy())
            rotation = u @ np.diag([1.0] * (dim - 1) + [np.sign(np.linalg.det(u @ vt))]) @ vt
            s0 = float(np.prod(sv)) ** (1.0 / dim)
            self.angles = torch.nn.Parameter(RigidTransform.from_matrix(rotation).angles.clone())
            self.log_scale = torch.nn.Parameter(torch.tensor(np.log(s0) if model == "similarity" else 0.0,
                                                             dtype=torch.float64), requires_grad=model == "similarity")
        elif model == "affine":
            self.matrix_param = torch.nn.Parameter(a0.clone())

    def matrix(self) -> torch.Tensor:
        """``M`` (float64, differentiable): built from the parameters directly, no transform object and no check
        on the hot path."""
        if self.model == "translation":
            return torch.eye(self.dim, dtype=torch.float64, device=self.center.device)
        if self.model in ("rigid", "similarity"):
            rotation = rotation_matrix(self.angles, self.dim)
            return torch.exp(self.log_scale) * rotation if self.model == "similarity" else rotation
        return self.matrix_param

    def matrix_and_offset(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, b)`` of ``y = A x + b``."""
        m = self.matrix()
        if self.model == "translation":
            return m, self.translation
        return m, self.translation + self.center - m @ self.center

    def transform(self) -> LinearTransform:
        """The current transform, detached and on the CPU (results leave the optimisation device; later stages
        move what they need back)."""
        def c(x: torch.Tensor) -> torch.Tensor:
            return x.detach().cpu()

        center = c(self.center)
        if self.model == "translation":
            return TranslationTransform(c(self.translation))
        if self.model == "rigid":
            return RigidTransform(c(self.angles), c(self.translation), center, dim=self.dim)
        if self.model == "similarity":
            return SimilarityTransform(torch.exp(c(self.log_scale)), c(self.angles), c(self.translation), center,
                                       dim=self.dim)
        return AffineTransform(c(self.matrix_param), c(self.translation), center).to_affine()  # y = A x + b

    def param_groups(self, settings: LinearSettings, spacing_mm: float) -> list[dict]:
        """Adam step sizes proportional to the level spacing (the values are those of a 4 mm level)."""
        scale = spacing_mm / 4.0
        groups = [{"params": [self.translation], "lr": settings.translation_step_mm * scale}]
        if self.model in ("rigid", "similarity"):
            groups.append({"params": [self.angles], "lr": settings.learning_rate * scale})
            if self.model == "similarity":
                groups.append({"params": [self.log_scale], "lr": settings.learning_rate * scale})
        elif self.model == "affine":
            groups.append({"params": [self.matrix_param], "lr": settings.learning_rate * scale})
        return groups


#: Voxels of room around a learned metric's moving features (PyramidLevel.warped_features): remade before the
#: transform moves a level corner further than this less one.
FEATURE_MARGIN = 3


def _corners(grid) -> torch.Tensor:
    """``(2^dim, dim)`` float64 physical points of the corners of ``grid``."""
    import itertools

    index = np.array(list(itertools.product(*[(0, n - 1) for n in grid.size])), dtype=np.float64)
    return torch.as_tensor(grid.index_to_physical(index), dtype=torch.float64)


class VoxelSampler:
    """Draws ``samples`` of a level's fixed voxels (with replacement, inside the fixed mask) at every step, from
    its own generator (seeded from the run's seed, the stage and the level: runs are reproducible). A level of
    no more than 4 x ``samples`` voxels is measured whole (exact, and as fast). The count is the level's whole
    grid, masked voxels included, since measuring it whole evaluates every one of them: a learned metric's
    feature level is always masked (its support), and its 4 mm level on the 3D slab case (101000 voxels, 74000
    in the support) took 37 ms a step measured whole, 13 ms sampled."""

    def __init__(self, level, samples: int, seed: int) -> None:
        self.candidates = level.sampling_candidates() if samples else None
        self.active = (bool(samples) and level.grid.num_voxels > 4 * samples
                       and self.candidates.numel() > 0)  # small levels: every voxel
        self.samples = samples
        self.generator = torch.Generator().manual_seed(torch.initial_seed() + seed)

    def draw(self) -> torch.Tensor:
        pick = torch.randint(self.candidates.numel(), (self.samples,), generator=self.generator)
        return self.candidates.index_select(0, pick.to(self.candidates.device))


def run_linear_stage(settings: LinearSettings, context: StageContext, state: StageState) -> StageOutcome:
    """Optimise ``settings.model`` from ``state.linear`` on the stage's pyramid levels."""
    dim = context.dim
    center = context.center
    similarity = make_similarity(settings.similarity, **settings.similarity_options)
    refresh = int(getattr(similarity, "refresh_every", 0))
    # with refreshes the moving features are made through the transform (look() below), not from the unwarped
    # image; feature levels cover the box of the fixed mask and the similarity's support only
    levels = feature_levels(context.pyramid.levels(settings.pyramid_levels(), settings.smoothing_factor()), similarity,
                            moving=not refresh, crop=True)
    model = LinearModel(settings.model, dim, center, state.linear).to(levels[0].fixed.device)
    loss = float("nan")
    opt = None
    for li, (level, iters) in enumerate(zip(levels, settings.iterations_per_level())):
        groups = model.param_groups(settings, level.spacing_mm)
        if opt is None:
            opt = Adam(groups)
        else:  # keep Adam's moment estimates across levels: a converged state takes small first steps
            for group, new in zip(opt.groups, groups):
                group["lr"] = new["lr"]
            opt.factor = 1.0
        decay = 1.0 - settings.final_lr_fraction
        # coords = N (A x + b) with N the moving level's physical -> normalised map and x = P i + p the fixed voxel
        # i's centre: K i + t, one small float64 product per step (index_to_normalised_map), then a float32
        # (n, dim) @ (dim, dim) on the voxel indices (exact in float32)
        sampler = VoxelSampler(level, settings.samples, seed=7919 * context.index + li)
        # the indices of the whole level; a sampled level computes only those of the voxels drawn
        index = None if sampler.active else voxel_index(level.grid, torch.arange(level.grid.num_voxels,
                                                                                  device=center.device))
        # A learned metric's moving features are made from the moving image as the transform T_k warps it onto the
        # fixed grid, and then read through T_k^-1 T (near the identity): see PyramidLevel.warped_features. Every
        # `refresh` steps they are remade if the linear part of T_k^-1 T has left the identity by more than the
        # similarity's refresh_tolerance, or if T_k^-1 T moves a corner of the level by more than the margin the
        # features were made with. `seen` holds that level and T_k^-1 (as A_k^-1 and b_k).
        seen: dict = {}
        halo = similarity.halo(dim, center.device) if refresh else 0
        corners = _corners(level.grid).to(center.device)

        def look(level=level) -> None:
            seen.clear()  # the previous features go before the new ones are made (peak memory)
            current = model.transform()
            seen["level"] = level.warped_features(current, similarity.features, halo, FEATURE_MARGIN,
                                                  similarity.interpolation)
            inv = torch.linalg.inv(current.matrix().double()).to(center.device)
            seen["frozen"] = (inv, current.offset().double().to(center.device))
            keep_fixed()

        def keep_fixed() -> None:
            # a level measured whole reads its fixed values in the standard layout, as the warped ones come (feature
            # levels are stored channels-last for sampling; a level measured whole is small): copied once per look
            if not sampler.active:
                seen["fixed"] = seen["level"].fixed.contiguous()

        if refresh:
            look()
        else:
            seen.update(level=level, frozen=None)
            keep_fixed()

        def step(index=index, sampler=sampler):
            lv = seen["level"]
            a, b = model.matrix_and_offset()
            if seen["frozen"] is not None:  # relative to the transform the features were made through
                inv, b0 = seen["frozen"]
                a, b = inv @ a, inv @ (b - b0)
            k_map, t_map = index_to_normalised_map(lv.grid, lv.moving_grid, a, b)
            k_map, t_map = k_map.float(), t_map.float()
            if sampler.active:  # a new random set of fixed voxels each step
                voxels = sampler.draw()
                coords = voxel_index(lv.grid, voxels) @ k_map.T + t_map
                fixed, warped, weights = lv.sample_moving(coords, voxels)
            else:
                coords = index @ k_map.T + t_map
                fixed = seen["fixed"]
                warped, weights = lv.warp_moving(coords)
            value = similarity(fixed, warped, weights)
            return value, value, {}

        def schedule(it: int, iters=iters) -> None:
            opt.factor = 1.0 - decay * (it + 1) / max(iters, 1)
            if refresh and (it + 1) % refresh == 0 and it + 1 < iters and stale():
                look()

        def stale(level=level, corners=corners) -> bool:
            with torch.no_grad():
                a, b = model.matrix_and_offset()
                inv, b0 = seen["frozen"]
                a, b = inv @ a.double(), inv @ (b.double() - b0)
                drift = a - torch.eye(dim, dtype=torch.float64, device=a.device)
                moved = (corners @ a.T + b - corners).norm(dim=1).max() / level.spacing_mm
                return float(drift.abs().max()) > similarity.refresh_tolerance or float(moved) > FEATURE_MARGIN - 1

        loss = optimise(context, opt, iters, step, model=settings.model, level=li, after_step=schedule)
    return StageOutcome(StageState(model.transform(), state.deformable), loss)
