"""A trained network as a registration step: model lookup, the model grid, prediction, the field in LPS mm.

:func:`predict_transform` is what the engine's ``voxelmorph`` stage runs: both normalised images are put on
the model grid (centred on the fixed image; the moving one seen through the current linear transform), the
network predicts, and its voxel field becomes a physical transform on that grid: a
:class:`StationaryVelocityField` for one pass of a diffeomorphic model (so an instance optimisation can start
from the network's velocity), else a :class:`DisplacementField`. Composed after the linear transform it is the usual
fixed -> moving resampling transform of the original images, at any resolution.

With ``mirror_average`` the pair is also given to the network mirrored left-right (both images, about the
model grid's centre plane across the patient's left-right axis) and the prediction is mirrored back
(:func:`mirror_field`) and averaged with the direct one (two forward passes of one pair: half the peak memory
of a batch of two, and no slower on a CPU).

With ``passes`` > 1 the prediction is refined recursively: the moving image is resampled (from the original,
not the model-grid copy) through the deformation so far, the network predicts the remaining deformation of
that nearly aligned pair, and ``pass_step`` x that prediction is composed before the deformation so far. The
step is damped because the network, trained only on pairs that differ by a deformation, over-predicts on a
nearly aligned pair (its prediction for two identical brains is not zero). The measured effect of the step and
of the number of passes is in the README ("Learned registration").
The passes after the first return the composition sampled on the model grid as one displacement field (a
following ``svf`` stage takes it as its starting velocity, to first order).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from ...errors import InputError
from ...geometry import Grid
from ...image import Image
from ...transforms.voxel import voxel_field_to_physical
from ...transforms import (AffineTransform, DisplacementField, StationaryVelocityField, Transform, compose,
                          to_displacement_field)
from ...io.models import cached_model as load_cached
from ...io.models import find_model
from ..stage import StageContext, StageOutcome, StageState
from .kinds import DEFAULT_PASS_STEP, VoxelMorphSettings
from .model_grid import ModelInput, check_network_input, smoothed_for_grid, to_model_grid
from .onednn import use_onednn

__all__ = ["cached_model", "check_inputs", "check_stage_inputs", "left_right_axis",
           "mirror_field", "predict_transform", "run_voxelmorph_stage"]

def cached_model(name_or_path: str, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """:func:`~DeepRegistrationLib.io.models.load_model` of a name or path, kept for the process (reloaded when the file changes);
    on the CPU its 3D convolutions run through oneDNN (:mod:`.onednn`)."""
    net, card = load_cached(find_model(name_or_path), device, network="VoxelMorphNet")
    return (use_onednn(net) if device.type == "cpu" else net), card


def check_inputs(name_or_path: str, fixed: Image, moving: Image, device: torch.device) -> list[str]:
    """Load the model (cached) and check both original images against it (:func:`check_network_input`):
    errors for what it cannot register, warnings (returned) for what it may register badly."""
    _, card = cached_model(name_or_path, device)
    model = ModelInput.from_dict(card["input"])
    return check_network_input(fixed, model, "fixed") + check_network_input(moving, model, "moving")


def check_stage_inputs(settings: VoxelMorphSettings, fixed: Image, moving: Image, device: torch.device) -> list[str]:
    """The registry's input check of a ``voxelmorph`` stage: :func:`check_inputs`, and with ``mirror_average`` a
    model grid that has a left-right axis to mirror along; run before anything else. Returns the warnings."""
    notes = check_inputs(settings.network, fixed, moving, device)
    if settings.mirror_average:
        _, card = cached_model(settings.network, device)
        model = ModelInput.from_dict(card["input"])
        left_right_axis(model.grid_at(np.zeros(model.dim)))
    return notes


def left_right_axis(grid: Grid) -> int:
    """The tensor axis (array order ``(k, j, i)``, 0-based among the spatial axes) of ``grid`` that runs along
    the patient's left-right axis (LPS x); an error when no grid axis is within 10 degrees of it."""
    direction = grid.direction_matrix()
    index_axis = int(np.argmax(np.abs(direction[0])))
    if abs(direction[0, index_axis]) < np.cos(np.radians(10.0)):
        raise InputError(f"the model grid has no axis along left-right (direction {direction.tolist()}): "
                         "cannot mirror the pair (set mirror_average to false)")
    return grid.dim - 1 - index_axis


def mirror_field(field: torch.Tensor, axis: int) -> torch.Tensor:
    """A voxel field ``(N, dim, *shape)`` (channel ``c`` along tensor axis ``c``) predicted for a pair mirrored
    along tensor ``axis``, mirrored back: ``u(x) = M u'(M x)`` (reversed along the axis, component negated).
    Exact for a displacement and for a stationary velocity (whose exponential commutes with the mirroring)."""
    out = field.flip(2 + axis).clone()
    out[:, axis] = -out[:, axis]
    return out


@torch.no_grad()
def predict_transform(name_or_path: str, fixed_n: Image, moving_n: Image, linear: Transform | None,
                      device: torch.device, mirror_average: bool = False, passes: int = 1,
                      pass_step: float = DEFAULT_PASS_STEP,
                      contrast_map: Callable[[Transform], Image] | None = None,
                      fixed_contrast_map: Callable[[Transform], Image] | None = None) -> tuple[Transform, dict]:
    """The network's fixed -> moving deformation of ``moving_n`` (seen through ``linear``) onto ``fixed_n``.

    ``fixed_n``/``moving_n`` are the engine's normalised images (checked beforehand with
    :func:`check_inputs`). ``mirror_average``: average with the prediction for the left-right mirrored pair
    (module docstring), in every pass. ``passes`` > 1: each later pass resamples ``moving_n`` through the
    deformation so far and composes ``pass_step`` x the network's prediction for that pair onto it (module
    docstring). ``contrast_map``: before each pass, ``moving_n`` is replaced by ``contrast_map(transform so
    far)`` (the moving image mapped into the fixed contrast through that transform: each later pass maps
    through a better alignment). ``fixed_contrast_map``: the same for ``fixed_n``, replaced before each pass by the
    fixed image mapped into the moving contrast through the transform so far. Returns the transform on the model
    grid (LPS mm; apply it before ``linear``): a :class:`StationaryVelocityField` for one pass of a diffeomorphic
    model, else a :class:`DisplacementField` (for several passes, the composition sampled at the model grid's
    nodes), and figures: ``network`` (the model's name), its grid and times.
    """
    start = time.perf_counter()
    net, card = cached_model(name_or_path, device)
    model = ModelInput.from_dict(card["input"])
    grid = model.grid_for(fixed_n)
    axis = left_right_axis(grid) if mirror_average else -1
    f = None if fixed_contrast_map else to_model_grid(fixed_n, grid).to(device)
    moving_s = None if contrast_map else smoothed_for_grid(moving_n, grid)  # smoothed once, resampled every pass
    network_s = map_s = 0.0

    def predict(seen_through: Transform | None, scale: float) -> Transform:
        nonlocal network_s, map_s, moving_s, f
        if fixed_contrast_map is not None:
            t0 = time.perf_counter()
            f = to_model_grid(fixed_contrast_map(seen_through), grid).to(device)
            map_s += time.perf_counter() - t0
        if contrast_map is not None:
            t0 = time.perf_counter()
            moving_s = smoothed_for_grid(contrast_map(seen_through), grid)
            map_s += time.perf_counter() - t0
        m = to_model_grid(moving_s, grid, seen_through, smooth=False).to(device)
        t1 = time.perf_counter()
        out = net.velocity(m[None], f[None])
        if axis >= 0:
            out = 0.5 * (out + mirror_field(net.velocity(m.flip(1 + axis)[None], f.flip(1 + axis)[None]), axis))
        out = scale * out[0].float().cpu()  # float32: the squarings run twice as fast as in float64
        if device.type == "cuda":
            torch.cuda.synchronize()
        network_s += time.perf_counter() - t1
        field = voxel_field_to_physical(out, grid)
        if net.config["diffeomorphic"]:
            return StationaryVelocityField(field.field, grid, net.config["integration_steps"])
        return DisplacementField(field.field, grid)

    transform = predict(linear, 1.0)
    for _ in range(passes - 1):
        seen = compose(transform, linear) if linear is not None else transform
        transform = to_displacement_field(compose(predict(seen, pass_step), transform), grid)
    figures = {"network": card["name"], "model_sha256": card["sha256"][:16], "model_grid": grid.describe(),
               "mirror_average": bool(mirror_average), "passes": int(passes),
               "resample_s": time.perf_counter() - start - network_s - map_s,  # but the passes and mappings
               "network_s": network_s}
    if contrast_map is not None or fixed_contrast_map is not None:
        figures["map_contrast_s"] = map_s
    return transform, figures


def run_voxelmorph_stage(settings: VoxelMorphSettings, context: StageContext, state: StageState) -> StageOutcome:
    """The registry's runner: :func:`predict_transform` after ``state.linear`` (as an affine); with
    ``map_contrast`` the ``mapped_image`` (moving, or fixed) is mapped into the other image's contrast before every
    pass (:func:`~DeepRegistrationLib.methods.pyramid.mapped_image`), through the transform so far."""
    context.check_cancel()
    linear = state.linear if isinstance(state.linear, AffineTransform) else state.linear.to_affine()
    contrast_map = fixed_contrast_map = None
    if settings.map_contrast:
        from ...metrics.similarity import MappedLNCCLoss
        from ..pyramid import mapped_image

        mapping = MappedLNCCLoss()

        def mapped(through: Transform) -> Image:
            return mapped_image(context.fixed, context.moving, through, mapping, settings.mapped_image,
                                homogeneity=settings.mapping_homogeneity)

        if settings.mapped_image == "fixed":
            fixed_contrast_map = mapped
        else:
            contrast_map = mapped

    deformable, figures = predict_transform(settings.network, context.fixed, context.moving, linear,
                                            context.device, settings.mirror_average, settings.passes,
                                            settings.pass_step, contrast_map, fixed_contrast_map)
    context.report({"model": "voxelmorph", "level": 0, "iteration": 0, "loss": None})  # a network has no loss
    return StageOutcome(StageState(state.linear, deformable), float("nan"), figures)
