"""Iterative registration by gradient descent in PyTorch (CPU or CUDA).

``register(fixed, moving, config)`` runs the stages of a :class:`RegistrationConfig` (e.g. rigid ->
affine -> diffeomorphic SVF), each on a multi-resolution pyramid built in physical space, and returns
a :class:`RegistrationResult` whose ``transform`` is the resampling transform fixed -> moving (LPS mm):
``compose(svf, affine)`` maps a fixed point through the deformation first, then the affine.

Every level samples the moving image *through the current transform at the fixed level's voxel
centres*, with the same sampler as :func:`~DeepRegistrationLib.warp.warp_image`, so what is
optimised is exactly what is applied afterwards.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DeepRegError, InputError
from ..geometry import Grid
from ..image import Image
from ..metrics.similarity import make_similarity
from ..sampling import (gradient_stack, sample_with_gradient, inside_normalised, normalised_linear, sample,
                        sample_normalised, to_normalised)
from ..transforms import (AffineTransform, CompositeTransform, IdentityTransform, RigidTransform, SimilarityTransform,
                          StationaryVelocityField, Transform, TranslationTransform, compose)
from ..transforms.linear import LinearTransform
from ..warp import warp_image
from .config import LINEAR_MODELS, RegistrationConfig, StageConfig

__all__ = ["register", "RegistrationResult", "RegistrationCancelled", "resolve_device", "diffusion_regulariser"]

ProgressCallback = Callable[[dict], None]


class RegistrationCancelled(DeepRegError):
    """Raised when the cancel flag is set; nothing is returned or written."""


@dataclass
class RegistrationResult:
    """What a registration produced.

    Attributes:
        transform: resampling transform fixed -> moving (LPS mm).
        fixed_grid: the fixed image's grid (where ``warped()`` samples).
        figures: ``time_s``, ``device``, per stage final loss, ...
    """

    transform: Transform
    fixed_grid: Grid
    moving: Image
    figures: dict = field(default_factory=dict)

    def warped(self, interpolation: str = "linear") -> Image:
        """The moving image resampled through ``transform`` onto the fixed grid."""
        return warp_image(self.moving, self.transform, self.fixed_grid, interpolation)

    def jacobian(self, max_voxels: int = 4_000_000) -> tuple[torch.Tensor, Grid, dict]:
        """Jacobian determinant of ``transform`` on the fixed grid (coarsened 2x per axis above
        ``max_voxels``), that grid, and its figures: ``folding_percent`` (det <= 0), ``std_log_jacobian``,
        min, max, mean. Also stored in ``figures`` as ``jacobian_*``."""
        from ..metrics.evaluation import jacobian_determinant, jacobian_stats

        grid = self.fixed_grid
        if grid.num_voxels > max_voxels:
            grid = grid.with_spacing([2 * s for s in grid.spacing])
        det = jacobian_determinant(self.transform, grid)
        stats = jacobian_stats(det)
        self.figures.update({f"jacobian_{k}": v for k, v in stats.items()})
        return det, grid, stats


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available else CPU; ``cuda`` without a GPU is an error (no silent fallback)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("CUDA was requested but no CUDA GPU is available (use --device auto or cpu)")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise InputError(f"device must be auto, cpu or cuda, got {device!r}")
    return torch.device(device)


# ---------------------------------------------------------------------- pyramid
def _level_grid(grid: Grid, spacing_mm: float) -> Grid:
    """``grid`` resampled to ``spacing_mm`` (never finer than the original along any axis), same centre."""
    spacing = [max(float(spacing_mm), s) for s in grid.spacing]
    size = [max(2, int(round((n - 1) * s / t)) + 1) for n, s, t in zip(grid.size, grid.spacing, spacing)]
    direction = grid.direction_matrix()
    origin = grid.center() - direction @ (np.asarray(spacing) * (np.asarray(size) - 1) / 2)
    return Grid(size, origin, spacing, direction)


def _smoothed(image: Image, sigma_mm: float) -> Image:
    """Gaussian smoothing with a physical sigma (mm), per axis through SimpleITK's recursive Gaussian."""
    if sigma_mm <= 0:
        return image
    import SimpleITK as sitk

    sigmas = [sigma_mm if sigma_mm > 0.5 * s else 0.0 for s in image.grid.spacing]
    if not any(sigmas):
        return image
    out = sitk.SmoothingRecursiveGaussian(image.float().to_sitk(), [max(s, 1e-6) for s in sigmas])
    return Image.from_sitk(out, name=image.name)


def _normalise(image: Image, mask: Image | None) -> Image:
    """Intensities to [0, 1] after clipping the 0.5 / 99.5 percentiles (inside the mask when there is one)."""
    if mask is not None and not mask.grid.same_as(image.grid):
        mask = warp_image(mask, None, image.grid, "nearest")
    if mask is not None and not bool(mask.data.ne(0).any()):
        mask = None
    return image.float().clip_percentiles(0.5, 99.5, mask).minmax((0.0, 1.0), mask)


@dataclass
class _Level:
    spacing_mm: float
    fixed: torch.Tensor  # (1, 1, *shape) on device
    grid: Grid
    points: torch.Tensor  # (*shape, dim) float64 LPS mm of the level voxels, on device
    mask: torch.Tensor | None  # (1, 1, *shape)
    moving: torch.Tensor  # (1, *moving_level_shape)
    moving_grid: Grid
    moving_mask: torch.Tensor | None = None  # (1, *moving_level_shape), 1 inside
    sigma_mm: float = 0.0  # Gaussian smoothing applied to the level images (mm)
    _moving_stack: torch.Tensor | None = None

    def warp_moving(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The moving level image at ``grid_sample`` coordinates ``(N, dim)`` as ``(1, 1, *fixed level shape)``
        (differentiable in ``coords`` through the image gradient), and the similarity weights: fixed voxels
        whose mapped point is inside the moving image (and inside both masks), same shape."""
        if self._moving_stack is None:
            self._moving_stack = gradient_stack(self.moving, self.moving_grid)
        inside = inside_normalised(self.moving_grid, coords).to(self.fixed.dtype)
        warped = sample_with_gradient(self._moving_stack, coords) * inside
        if self.moving_mask is not None:
            inside = inside * (sample_normalised(self.moving_mask, self.moving_grid, coords.detach(), mode="nearest")[0] > 0.5)
        inside = inside.reshape(1, 1, *self.grid.shape)
        return warped.reshape(1, 1, *self.grid.shape), inside if self.mask is None else inside * self.mask


def _build_level(fixed: Image, moving: Image, fixed_mask: Image | None, moving_mask: Image | None,
                 spacing_mm: float, sigma_mm: float, device: torch.device, finer: "_Level | None" = None) -> _Level:
    """The images at ``spacing_mm`` after Gaussian smoothing of ``sigma_mm``.

    With ``finer`` (a level of the same pyramid, already smoothed with ``finer.sigma_mm``), the level is
    made from it with the remaining ``sqrt(sigma^2 - sigma_finer^2)`` (Gaussian variances add), which is
    much cheaper than smoothing the full-resolution images again.
    """
    fgrid = _level_grid(fixed.grid, spacing_mm)
    mgrid = _level_grid(moving.grid, spacing_mm)
    sigma = sigma_mm
    if finer is not None:
        fixed = Image(finer.fixed[0].cpu(), finer.grid)
        moving = Image(finer.moving.cpu(), finer.moving_grid)
        sigma = float(np.sqrt(max(sigma_mm**2 - finer.sigma_mm**2, 0.0)))
    f = _smoothed(fixed, sigma).resample_to(fgrid)
    m = _smoothed(moving, sigma).resample_to(mgrid)
    mask = mmask = None
    if fixed_mask is not None:
        mask = warp_image(fixed_mask, None, fgrid, "nearest").data.ne(0).float().unsqueeze(0).to(device)
    if moving_mask is not None:
        mmask = warp_image(moving_mask, None, mgrid, "nearest").data.ne(0).float().to(device)
    return _Level(spacing_mm, f.data.unsqueeze(0).to(device), fgrid,
                  fgrid.physical_points(dtype=torch.float64, device=device), mask, m.data.to(device), mgrid, mmask,
                  sigma_mm=sigma_mm)


def _build_pyramid(fixed: Image, moving: Image, fixed_mask: Image | None, moving_mask: Image | None,
                   config: RegistrationConfig, device: torch.device) -> dict[tuple[float, float], _Level]:
    """Every level the stages use, keyed by (spacing, smoothing factor), built fine to coarse."""
    keys = sorted({(sp, float(st.smoothing_sigma_mm)) for st in config.stages for sp in st.pyramid_levels()})
    levels: dict[tuple[float, float], _Level] = {}
    for spacing, factor in keys:
        finer = max((lv for (sp, fa), lv in levels.items() if fa == factor and sp < spacing),
                    key=lambda lv: lv.spacing_mm, default=None)
        if finer is not None and finer.spacing_mm * 1.25 > spacing:
            finer = None  # too close to the finer level's resolution: smooth the originals instead
        levels[(spacing, factor)] = _build_level(fixed, moving, fixed_mask, moving_mask, spacing, factor * spacing,
                                                 device, finer)
    return levels


# ---------------------------------------------------------------------- models
class _LinearModel(torch.nn.Module):
    """Optimisable linear transform around ``center``; parameters scaled so Adam steps are meaningful."""

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

    def transform(self) -> LinearTransform:
        c = self.center
        if self.model == "translation":
            return TranslationTransform(self.translation)
        if self.model == "rigid":
            return RigidTransform(self.angles, self.translation, c, dim=self.dim)
        if self.model == "similarity":
            return SimilarityTransform(torch.exp(self.log_scale), self.angles, self.translation, c, dim=self.dim)
        return AffineTransform(self.matrix_param, self.translation, c)

    def param_groups(self, stage: StageConfig, spacing_mm: float) -> list[dict]:
        """Adam step sizes proportional to the level spacing (the values are those of a 4 mm level).

        A fresh Adam's first steps have about the step size whatever the gradient, so a finer level must
        start with smaller steps than a coarse one, or it first undoes the precision already reached.
        """
        scale = spacing_mm / 4.0
        groups = [{"params": [self.translation], "lr": stage.translation_step_mm * scale}]
        if self.model in ("rigid", "similarity"):
            groups.append({"params": [self.angles], "lr": stage.learning_rate * scale})
            if self.model == "similarity":
                groups.append({"params": [self.log_scale], "lr": stage.learning_rate * scale})
        elif self.model == "affine":
            groups.append({"params": [self.matrix_param], "lr": stage.learning_rate * scale})
        return groups


class _Adam:
    """Adam (Kingma & Ba 2015, PyTorch's defaults) for a few parameter groups, with a step-size factor.

    Written out because constructing ``torch.optim.Adam`` imports ``torch._dynamo`` (about 2 s, once
    per process: a large share of a short registration run from the command line).
    """

    def __init__(self, groups: list[dict], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.groups = [{"params": list(g["params"]), "lr": float(g["lr"])} for g in groups]
        self.beta1, self.beta2, self.eps = betas[0], betas[1], eps
        self.state = {id(p): (torch.zeros_like(p), torch.zeros_like(p)) for g in self.groups for p in g["params"]}
        self.t = 0
        self.factor = 1.0  # multiplies every group's step size (linear decay schedules)

    def zero_grad(self) -> None:
        for g in self.groups:
            for p in g["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        c1 = 1.0 - self.beta1**self.t
        c2 = 1.0 - self.beta2**self.t
        for g in self.groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                m, v = self.state[id(p)]
                m.mul_(self.beta1).add_(p.grad, alpha=1.0 - self.beta1)
                v.mul_(self.beta2).addcmul_(p.grad, p.grad, value=1.0 - self.beta2)
                denom = (v / c2).sqrt_().add_(self.eps)
                p.addcdiv_(m, denom, value=-g["lr"] * self.factor / c1)


def diffusion_regulariser(field: torch.Tensor, spacing: tuple[float, ...]) -> torch.Tensor:
    """Mean squared spatial gradient of a vector field ``(dim, *shape)`` in (mm/mm)^2 (forward differences)."""
    total = field.new_zeros(())
    dim = field.dim() - 1
    for axis in range(dim):  # array axis `axis` is index axis dim-1-axis
        h = spacing[dim - 1 - axis]
        d = torch.diff(field, dim=axis + 1) / h
        total = total + (d**2).mean() * dim
    return total


# ---------------------------------------------------------------------- optimisation
def _run_linear(stage: StageConfig, levels: list[_Level], start: LinearTransform, center: torch.Tensor,
                dim: int, progress: ProgressCallback | None, cancel: Callable[[], bool] | None,
                stage_index: int) -> tuple[LinearTransform, float]:
    model = _LinearModel(stage.model, dim, center, start).to(levels[0].fixed.device)
    similarity = make_similarity(stage.similarity, **stage.similarity_options)
    loss_value = float("nan")
    opt = None
    for li, (level, iters) in enumerate(zip(levels, stage.iterations_per_level())):
        groups = model.param_groups(stage, level.spacing_mm)
        if opt is None:
            opt = _Adam(groups)
        else:  # keep Adam's moment estimates across levels: a converged state takes small first steps
            for group, new in zip(opt.groups, groups):
                group["lr"] = new["lr"]
            opt.factor = 1.0
        decay = 1.0 - stage.final_lr_fraction
        # coords = N (A x + b) with N the moving level's physical -> normalised map: one small float64
        # product per step, then a float32 (n, dim) @ (dim, dim) on points centred for precision
        pts = (level.points.reshape(-1, dim) - center).float()
        to_norm = torch.as_tensor(level.moving_grid.physical_to_normalised_matrix(), device=center.device)
        for it in range(iters):
            if cancel is not None and cancel():
                raise RegistrationCancelled("registration cancelled")
            opt.zero_grad()
            t = model.transform()
            m = to_norm[:dim, :dim] @ t.matrix().to(center.device)
            off = m @ center + to_norm[:dim, :dim] @ t.offset().to(center.device) + to_norm[:dim, dim]
            coords = pts @ m.T.float() + off.float()
            warped, weights = level.warp_moving(coords)
            loss = similarity(level.fixed, warped, weights)
            loss.backward()
            opt.step()
            opt.factor = 1.0 - decay * (it + 1) / max(iters, 1)
            loss_value = float(loss.detach())
            if progress is not None:
                progress({"stage": stage_index, "model": stage.model, "level": li, "iteration": it, "loss": loss_value})
    return _detached(model.transform()), loss_value


def _detached(t: LinearTransform) -> LinearTransform:
    """``t`` detached from the autograd graph and on the CPU (results leave the optimisation device; later
    stages move what they need back)."""
    def c(x: torch.Tensor) -> torch.Tensor:
        return x.detach().cpu()

    if isinstance(t, SimilarityTransform):
        return SimilarityTransform(c(t.scale), c(t.angles), c(t.translation), c(t.center), t.dim)
    if isinstance(t, RigidTransform):
        return RigidTransform(c(t.angles), c(t.translation), c(t.center), t.dim)
    if isinstance(t, TranslationTransform):
        return TranslationTransform(c(t.translation))
    a = t.to_affine()
    return AffineTransform(c(a.linear), c(a.translation), c(a.center))


def _run_svf(stage: StageConfig, levels: list[_Level], linear: LinearTransform, dim: int,
             progress: ProgressCallback | None, cancel: Callable[[], bool] | None,
             stage_index: int, start: Transform | None = None) -> tuple[StationaryVelocityField, float]:
    """Optimise a stationary velocity field (after ``linear``), level by level; ``start`` (a velocity field,
    or a displacement field taken as its own velocity, first order) is where the first level begins."""
    similarity = make_similarity(stage.similarity, **stage.similarity_options)
    velocity = vgrid = None
    if isinstance(start, StationaryVelocityField):
        velocity, vgrid = start.velocity.to(levels[0].fixed.device).float(), start.grid
    elif start is not None:
        velocity, vgrid = start.field.to(levels[0].fixed.device).float(), start.grid
    loss_value = float("nan")
    device = levels[0].fixed.device
    factor = max(1, int(round(stage.control_spacing_factor)))
    for li, (level, iters) in enumerate(zip(levels, stage.iterations_per_level())):
        # control grid = every `factor`-th level voxel (same origin and direction), so the displacement is
        # brought to the level voxels exactly by F.interpolate(align_corners=True), much cheaper than grid_sample
        csize = [(n - 1 + factor - 1) // factor + 1 for n in level.grid.size]
        new_grid = Grid(csize, level.grid.origin, [s * factor for s in level.grid.spacing], level.grid.direction)
        up_shape = [(n - 1) * factor + 1 for n in new_grid.shape]
        crop = tuple([slice(None), slice(None)] + [slice(0, n) for n in level.grid.shape])
        if velocity is None:
            v0 = torch.zeros(dim, *new_grid.shape, dtype=torch.float32, device=device)
        else:  # upsample the previous level's velocity (LPS mm vectors) onto the new control grid
            v0 = sample(velocity.detach(), vgrid, new_grid.physical_points(device=device)).float()
        vgrid = new_grid
        velocity = torch.nn.Parameter(v0)
        opt = _Adam([{"params": [velocity], "lr": stage.learning_rate * level.spacing_mm}])
        # y = A (x + u(x)) = A x + A u(x): in the moving level's normalised coordinates both terms are linear,
        # so only u changes between iterations (computed in float32 on precomputed coordinates).
        pts = level.points.reshape(-1, dim)
        a = linear.matrix().to(device)
        moving_base = to_normalised(level.moving_grid, linear._map(pts), torch.float32)
        moving_lin = (normalised_linear(level.moving_grid, torch.float64, device) @ a).float()
        mode = "trilinear" if dim == 3 else "bilinear"
        for it in range(iters):
            if cancel is not None and cancel():
                raise RegistrationCancelled("registration cancelled")
            opt.zero_grad()
            u_field = StationaryVelocityField(velocity, vgrid, stage.integration_steps).exponential().field
            u = F.interpolate(u_field.unsqueeze(0), size=up_shape, mode=mode, align_corners=True)[crop]
            coords = moving_base + u.reshape(dim, -1).T @ moving_lin.T
            warped, weights = level.warp_moving(coords)
            sim = similarity(level.fixed, warped, weights)
            reg = diffusion_regulariser(velocity, vgrid.spacing)
            loss = sim + stage.regularisation_weight * reg
            loss.backward()
            opt.step()
            loss_value = float(sim.detach())
            if progress is not None:
                progress({"stage": stage_index, "model": "svf", "level": li, "iteration": it, "loss": loss_value,
                          "regularisation": float(reg.detach())})
    return StationaryVelocityField(velocity.detach().cpu(), vgrid, stage.integration_steps), loss_value


def _center_of_mass(image: Image) -> np.ndarray:
    """Intensity-weighted centre (LPS mm) of the non-negative part of ``image``; its centre when empty.

    Computed from the marginal sums along each index axis (no per-voxel coordinates), then mapped to
    physical space (the index -> physical map is affine, so it maps the centroid exactly).
    """
    w = image.data[0].double().clamp(min=0)
    total = float(w.sum())
    if total <= 0:
        return image.grid.center()
    dim = image.dim
    index = []
    for axis in range(dim):  # index axis a is array axis dim-1-a
        other = tuple(d for d in range(dim) if d != dim - 1 - axis)
        marginal = w.sum(dim=other)
        index.append(float((marginal * torch.arange(marginal.numel(), dtype=torch.float64)).sum()) / total)
    return image.grid.index_to_physical(np.array([index]))[0]


def _check_mask(mask: Image, image: Image, what: str) -> Image:
    """A mask must be a non-empty label map of the image's dimension that overlaps the image."""
    mask = mask.as_label_map()
    if mask.dim != image.dim:
        raise InputError(f"{mask.name}: the {what} mask is {mask.dim}D but the image is {image.dim}D")
    mask.check_not_empty_labels()
    if not bool(warp_image(mask, None, image.grid.with_spacing([max(4.0, s) for s in image.grid.spacing]),
                           "nearest").data.ne(0).any()):
        raise InputError(f"{mask.name}: the {what} mask does not overlap the {what} image (wrong grid?)")
    return mask


def register(fixed: Image, moving: Image, config: RegistrationConfig, fixed_mask: Image | None = None,
             moving_mask: Image | None = None, fixed_points=None, moving_points=None,
             initial_transform: Transform | None = None, device: str = "auto",
             progress: ProgressCallback | None = None, cancel: Callable[[], bool] | None = None,
             initialise: str | None = None) -> RegistrationResult:
    """Register ``moving`` onto ``fixed``; see the module docstring for the conventions.

    Args:
        fixed_mask, moving_mask: label maps (any grid overlapping their image); the similarity is
            measured where both are non-zero.
        fixed_points, moving_points: corresponding landmarks (N, dim) in LPS mm, for ``initialise="landmarks"``.
        initial_transform: a linear fixed -> moving transform to start from (overrides ``initialise``).
        initialise: ``moments`` (align centres of mass), ``center`` (geometric centres), ``landmarks``
            (rigid least-squares fit to the landmark pairs) or ``none``; default: the config's.
        device: ``auto``, ``cpu`` or ``cuda`` (an error when CUDA is absent).
        progress: called with ``{"stage", "model", "level", "iteration", "loss"}`` after every step.
        cancel: polled every step; when it returns True, :class:`RegistrationCancelled` is raised.
    """
    start_time = time.perf_counter()
    initialise = initialise or config.initialise
    for img in (fixed, moving):
        img.check_finite()
        if img.num_channels != 1:
            raise InputError(f"{img.name}: registration needs single-channel images (convert to grayscale)")
        if float(img.data.max() - img.data.min()) == 0:
            raise InputError(f"{img.name}: the image is constant; nothing to register")
    if fixed.dim != moving.dim:
        raise InputError(f"cannot register a {moving.dim}D moving image to a {fixed.dim}D fixed image")
    if fixed_mask is not None:
        fixed_mask = _check_mask(fixed_mask, fixed, "fixed")
    if moving_mask is not None:
        moving_mask = _check_mask(moving_mask, moving, "moving")
    if (fixed_points is None) != (moving_points is None):
        raise InputError("landmarks need both fixed and moving points")
    if fixed_points is not None and np.shape(fixed_points) != np.shape(moving_points):
        raise InputError(f"landmark sets differ: {np.shape(fixed_points)[0]} fixed vs {np.shape(moving_points)[0]} "
                         "moving points (they must correspond one to one)")
    if initialise == "landmarks" and fixed_points is None:
        raise InputError("initialise='landmarks' needs fixed and moving landmarks")
    if initialise not in ("moments", "center", "landmarks", "none"):
        raise InputError(f"initialise must be moments, center, landmarks or none, got {initialise!r}")
    dev = resolve_device(device)
    notes: list[str] = []
    if any(stage.model == "voxelmorph" for stage in config.stages):  # models and inputs checked before anything runs
        from ..networks.inference import check_network_stages

        notes = check_network_stages(config, fixed, moving, dev)
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    args = (fixed, moving, config, fixed_mask, moving_mask, fixed_points, moving_points, initial_transform, progress,
            cancel, initialise, start_time)
    try:
        result = _register(*args, dev)
        if notes:
            result.figures["warnings"] = notes
        return result
    except (torch.OutOfMemoryError, RuntimeError) as err:
        if not isinstance(err, torch.OutOfMemoryError) and "can't allocate memory" not in str(err):
            raise
        if dev.type != "cuda":
            raise InputError("out of memory: the images are too large for this machine's RAM "
                             "(use a preset with a coarser finest level, or crop the images)") from None
        torch.cuda.empty_cache()
        if device != "auto":
            raise InputError(f"out of GPU memory on {dev} ({_gpu_memory_gb(dev):.1f} GB); use device 'cpu' or "
                             "'auto' (which falls back to the CPU), or crop the images") from None
    result = _register(*args, torch.device("cpu"))
    if notes:
        result.figures["warnings"] = notes
    result.figures["note"] = f"out of GPU memory on {dev}; ran on the CPU instead"
    return result


def _overlap_fraction(level: _Level, transform: LinearTransform) -> float:
    """Fraction of the level's fixed voxels (inside the fixed mask, if any) that ``transform`` maps into the moving image."""
    with torch.no_grad():
        points = level.points.reshape(-1, level.grid.dim)
        coords = to_normalised(level.moving_grid, transform._map(points), torch.float32)
        inside = inside_normalised(level.moving_grid, coords).float()
        if level.mask is not None:
            m = level.mask.reshape(-1)
            return float((inside * m).sum() / m.sum().clamp(min=1))
        return float(inside.mean())


def _gpu_memory_gb(dev: torch.device) -> float:
    try:
        return torch.cuda.get_device_properties(dev).total_memory / 1024**3
    except Exception:  # noqa: BLE001 - only for the message
        return float("nan")


def _register(fixed: Image, moving: Image, config: RegistrationConfig, fixed_mask, moving_mask, fixed_points,
              moving_points, initial_transform, progress, cancel, initialise: str, start_time: float,
              dev: torch.device) -> RegistrationResult:
    """:func:`register` after the inputs were checked, on ``dev``."""
    dim = fixed.dim
    torch.manual_seed(config.seed)
    fixed_n = _normalise(fixed, fixed_mask)
    moving_n = _normalise(moving, moving_mask)

    center = torch.as_tensor(fixed.grid.center(), dtype=torch.float64, device=dev)
    if initial_transform is not None:
        if initial_transform.dim != dim:
            raise InputError(f"the initial transform is {initial_transform.dim}D, the images are {dim}D")
        initial = initial_transform
    elif initialise == "landmarks":
        from .landmarks import fit_landmarks

        initial = fit_landmarks(fixed_points, moving_points, "rigid" if len(fixed_points) >= dim else "translation")
    elif initialise == "moments":
        initial = TranslationTransform(_center_of_mass(moving_n) - _center_of_mass(fixed_n))
    elif initialise == "center":
        initial = TranslationTransform(moving.grid.center() - fixed.grid.center())
    else:
        initial = IdentityTransform(dim)
    if not initial.is_linear:
        raise InputError("only a linear initial transform is supported")
    linear: LinearTransform = initial.collapse_linear() if isinstance(initial, CompositeTransform) else initial
    svf: Transform | None = None
    figures: dict = {"device": str(dev), "stages": []}
    pyramid = _build_pyramid(fixed_n, moving_n, fixed_mask, moving_mask, config, dev)
    figures["pyramid_time_s"] = time.perf_counter() - start_time
    coarsest = pyramid[max(pyramid)] if pyramid else _build_level(fixed_n, moving_n, None, None, 8.0, 0.0, dev)
    overlap = _overlap_fraction(coarsest, linear)
    if overlap < 0.01:
        raise InputError(f"the images do not overlap after initialisation ({overlap * 100:.2f} % of the fixed image "
                         f"maps inside the moving one, '{initialise}' initialisation): check that both are in the "
                         "same physical space, or give an initial transform or landmarks")
    for si, stage in enumerate(config.stages):
        stage_start = time.perf_counter()
        levels = [pyramid[(sp, float(stage.smoothing_sigma_mm))] for sp in stage.pyramid_levels()]
        affine = linear.to_affine() if not isinstance(linear, AffineTransform) else linear
        extra: dict = {}
        if stage.model in LINEAR_MODELS:
            if svf is not None:
                raise InputError("linear stages must come before the deformable stages")
            linear, loss = _run_linear(stage, levels, linear, center, dim, progress, cancel, si)
        elif stage.model == "voxelmorph":
            from ..networks.inference import predict_transform

            if svf is not None:
                raise InputError("a voxelmorph stage must come before any svf stage (which then refines it)")
            if cancel is not None and cancel():
                raise RegistrationCancelled("registration cancelled")
            svf, extra = predict_transform(stage.network, fixed_n, moving_n, affine, dev, stage.mirror_average,
                                           stage.passes, stage.pass_step)
            loss = float("nan")
            if progress is not None:
                progress({"stage": si, "model": "voxelmorph", "level": 0, "iteration": 0, "loss": None})  # no loss
        else:
            svf, loss = _run_svf(stage, levels, affine, dim, progress, cancel, si, start=svf)
        figures["stages"].append({"model": stage.model, "similarity": stage.similarity, "final_loss": loss,
                                  "time_s": time.perf_counter() - stage_start, **extra})
    transform = compose(svf, linear) if svf is not None else linear
    figures["time_s"] = time.perf_counter() - start_time
    return RegistrationResult(transform=transform, fixed_grid=fixed.grid, moving=moving, figures=figures)
