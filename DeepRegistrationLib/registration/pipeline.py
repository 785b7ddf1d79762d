"""The registration pipeline: check the inputs, normalise, initialise, build the pyramid, run every stage
through the method registry, and return a :class:`~.result.RegistrationResult`.

``register(fixed, moving, config)`` returns the resampling transform fixed -> moving (LPS mm):
``compose(deformable, linear)`` maps a fixed point through the deformation first, then the linear part. The
pipeline names no method: each stage's ``model`` is looked up in :mod:`DeepRegistrationLib.methods.registry`,
whose kinds check their inputs before anything runs and then run on a shared
:class:`~DeepRegistrationLib.methods.stage.StageContext`.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..devices import gpu_memory_gb, is_out_of_memory, resolve_device
from ..errors import InputError, RegistrationCancelled
from ..image import Image
from ..intensity import center_of_mass, normalise_unit_range
from ..methods.pyramid import build_level, build_pyramid
from ..methods.registry import stage_kind
from ..methods.stage import ProgressCallback, StageContext, StageState
from ..transforms import (CompositeTransform, IdentityTransform, StationaryVelocityField, Transform,
                          TranslationTransform, compose)
from ..transforms.linear import LinearTransform
from ..transforms.polynomial import PolynomialTransform
from ..warp import warp_image
from .config import INITIALISATIONS, RegistrationConfig
from .foreground import extend_to_zero, foreground_crops
from .landmarks import fit_landmarks
from .result import RegistrationResult

__all__ = ["register", "RegistrationRequest", "check_image_pair", "check_stages", "run_request"]


@dataclass(frozen=True)
class RegistrationRequest:
    """One checked registration: what :func:`register` was given, with masks as label maps."""

    fixed: Image
    moving: Image
    config: RegistrationConfig
    fixed_mask: Image | None = None
    moving_mask: Image | None = None
    fixed_points: np.ndarray | None = None
    moving_points: np.ndarray | None = None
    initial_transform: Transform | None = None
    initialise: str = "moments"
    progress: ProgressCallback | None = None
    cancel: Callable[[], bool] | None = None
    start_time: float = 0.0


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


def _memory_figures(device: torch.device) -> dict:
    """Peak memory so far (the process's resident memory; on CUDA also the GPU's allocated peak), in GB."""
    from ..runtime import peak_resident_gb

    out = {"peak_resident_gb": peak_resident_gb()}
    if device.type == "cuda":
        out["peak_gpu_allocated_gb"] = torch.cuda.max_memory_allocated(device) / 1024**3
    return out


def check_image_pair(fixed: Image, moving: Image) -> None:
    """Refuse images that cannot be registered: NaN, several channels, constant, a single slice posing as a
    3D volume, fewer than 4 voxels along an axis, or a fixed and a moving image of different dimensions."""
    for img in (fixed, moving):
        img.check_finite()
        if img.num_channels != 1:
            raise InputError(f"{img.name}: registration needs single-channel images (convert to grayscale)")
        if float(img.data.max() - img.data.min()) == 0:
            raise InputError(f"{img.name}: the image is constant; nothing to register")
        if img.dim == 3 and 1 in img.grid.size:
            raise InputError(f"{img.name}: a single slice ({'x'.join(map(str, img.grid.size))}) cannot be registered "
                             "in 3D; read it as a 2D image (read_image(path, dim=2); 'deepreg register' does this "
                             "when both images are single slices)")
        if min(img.grid.size) < 4:
            raise InputError(f"{img.name}: {'x'.join(map(str, img.grid.size))} voxels is too small to register "
                             "(at least 4 along every axis)")
    if fixed.dim != moving.dim:
        raise InputError(f"cannot register a {moving.dim}D moving image to a {fixed.dim}D fixed image")


def check_stages(config: RegistrationConfig, fixed: Image, moving: Image, device: torch.device) -> list[str]:
    """Every stage kind's input check on the original images (models loaded, grids checked); the warnings.
    Run before anything else by :func:`register`, and by the Slicer bridge before it starts a worker."""
    notes: list[str] = []
    for settings in config.stages:
        notes += stage_kind(settings.model).check_inputs(settings, fixed, moving, device)
    return notes


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
        device: ``auto``, ``cpu`` or ``cuda`` (an error when CUDA is absent); ``auto`` falls back to the CPU
            when the GPU runs out of memory.
        progress: called with ``{"stage", "model", "level", "iteration", "loss"}`` after steps.
        cancel: polled every step; when it returns True, :class:`~DeepRegistrationLib.errors.RegistrationCancelled`
            is raised.
    """
    start_time = time.perf_counter()
    initialise = initialise or config.initialise
    check_image_pair(fixed, moving)
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
    if initialise not in INITIALISATIONS:
        raise InputError(f"initialise must be moments, center, landmarks or none, got {initialise!r}")
    if initial_transform is not None and initial_transform.dim != fixed.dim:
        raise InputError(f"the initial transform is {initial_transform.dim}D, the images are {fixed.dim}D")
    if initial_transform is not None and not initial_transform.is_linear:
        raise InputError("only a linear initial transform is supported")
    dev = resolve_device(device)
    notes = check_stages(config, fixed, moving, dev)  # models and inputs checked before anything runs
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    request = RegistrationRequest(fixed, moving, config, fixed_mask, moving_mask, fixed_points, moving_points,
                                  initial_transform, initialise, progress, cancel, start_time)
    try:
        result = run_request(request, dev)
    except (torch.OutOfMemoryError, RuntimeError) as err:
        if not is_out_of_memory(err):
            raise
        if dev.type != "cuda":
            raise InputError("out of memory: the images are too large for this machine's RAM "
                             "(use a preset with a coarser finest level, or crop the images)") from None
        torch.cuda.empty_cache()
        if device != "auto":
            raise InputError(f"out of GPU memory on {dev} ({gpu_memory_gb(dev):.1f} GB); use device 'cpu' or "
                             "'auto' (which falls back to the CPU), or crop the images") from None
        result = run_request(request, torch.device("cpu"))
        result.figures["note"] = f"out of GPU memory on {dev}; ran on the CPU instead"
    if notes:
        result.figures["warnings"] = notes
    return result


def _initial_linear(request: RegistrationRequest, fixed_n: Image, moving_n: Image) -> LinearTransform:
    """The starting transform: the given one, or the ``initialise`` rule's."""
    dim = request.fixed.dim
    if request.initial_transform is not None:
        initial = request.initial_transform
    elif request.initialise == "landmarks":
        n = len(request.fixed_points)
        initial = fit_landmarks(request.fixed_points, request.moving_points, "rigid" if n >= dim else "translation")
    elif request.initialise == "moments":
        initial = TranslationTransform(center_of_mass(moving_n) - center_of_mass(fixed_n))
    elif request.initialise == "center":
        initial = TranslationTransform(request.moving.grid.center() - request.fixed.grid.center())
    else:
        initial = IdentityTransform(dim)
    return initial.collapse_linear() if isinstance(initial, CompositeTransform) else initial


def _normalised(image: Image, mask: Image | None) -> Image:
    if mask is not None and not mask.grid.same_as(image.grid):
        mask = warp_image(mask, None, image.grid, "nearest")
    return normalise_unit_range(image, mask)


def run_request(request: RegistrationRequest, device: torch.device) -> RegistrationResult:
    """Run the stages of a checked request on ``device`` (what :func:`register` does after its checks)."""
    config = request.config
    torch.manual_seed(config.seed)
    fixed_n = _normalised(request.fixed, request.fixed_mask)
    moving_n = _normalised(request.moving, request.moving_mask)
    figures: dict = {"device": str(device), "stages": []}
    stages = list(enumerate(config.stages))
    while stages and stage_kind(stages[0][1].model).role == "image":  # e.g. a modality translation, first
        index, settings = stages.pop(0)
        stage_start = time.perf_counter()
        moving_n, stage_figures = stage_kind(settings.model).transform_image(settings, fixed_n, moving_n, device)
        figures["stages"].append({"model": settings.model, "final_loss": float("nan"),
                                  "time_s": time.perf_counter() - stage_start, **_memory_figures(device),
                                  **stage_figures})
        if request.progress is not None:  # one event without a loss, as a network stage reports
            request.progress({"stage": index, "model": settings.model, "level": 0, "iteration": 0, "loss": None})
        if request.cancel is not None and request.cancel():
            raise RegistrationCancelled("registration cancelled")
    center = torch.as_tensor(request.fixed.grid.center(), dtype=torch.float64, device=device)
    state = StageState(_initial_linear(request, fixed_n, moving_n))
    fixed_crop = moving_crop = None
    if config.crop_to_foreground:  # work on the anatomy only; the transform stays in physical space
        fixed_crop, moving_crop = foreground_crops(fixed_n, moving_n, request.fixed_mask, request.moving_mask,
                                                   state.linear)
        if fixed_crop is not None:
            figures["fixed_crop"] = fixed_crop.describe(fixed_n.grid)
            fixed_n = fixed_crop.apply(fixed_n)
        if moving_crop is not None:
            figures["moving_crop"] = moving_crop.describe(moving_n.grid)
            moving_n = moving_crop.apply(moving_n)
    keys = {(sp, s.smoothing_factor()) for s in config.stages for sp in s.pyramid_levels()}
    pyramid = build_pyramid(fixed_n, moving_n, request.fixed_mask, request.moving_mask, keys, device)
    figures["pyramid_time_s"] = time.perf_counter() - request.start_time
    coarsest = pyramid.coarsest() or build_level(fixed_n, moving_n, None, None, 8.0, 0.0, device)
    overlap = coarsest.overlap_fraction(state.linear)
    if overlap < 0.01 and not stage_kind(stages[0][1].model).global_search:
        raise InputError(f"the images do not overlap after initialisation ({overlap * 100:.2f} % of the fixed image "
                         f"maps inside the moving one, '{request.initialise}' initialisation): check that both are in "
                         "the same physical space, or give an initial transform or landmarks")
    for index, settings in stages:
        stage_start = time.perf_counter()
        context = StageContext(fixed_n, moving_n, pyramid, center, device, index, request.progress, request.cancel)
        outcome = stage_kind(settings.model).run(settings, context, state)
        state = outcome.state
        figures["stages"].append({"model": settings.model, "similarity": getattr(settings, "similarity", None),
                                  "final_loss": outcome.loss, "time_s": time.perf_counter() - stage_start,
                                  **_memory_figures(device), **outcome.figures})
    deformable = state.deformable
    if fixed_crop is not None and isinstance(deformable, StationaryVelocityField):
        deformable = extend_to_zero(deformable, fixed_crop)  # continuous to the identity beyond the crop
    transform = compose(deformable, state.linear) if deformable is not None else state.linear
    for part in transform.parts if isinstance(transform, CompositeTransform) else [transform]:
        if isinstance(part, PolynomialTransform):  # a global 2D model: written as a field on the fixed grid
            part.domain = request.fixed.grid
    figures["time_s"] = time.perf_counter() - request.start_time
    return RegistrationResult(transform=transform, fixed_grid=request.fixed.grid, moving=request.moving,
                              figures=figures)
