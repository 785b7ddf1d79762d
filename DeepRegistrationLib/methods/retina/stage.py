"""The ``keypoints`` stage: a global 2D model from matched keypoints (see :mod:`.keypoints`)."""

from __future__ import annotations

import time

import numpy as np

from ...errors import InputError
from ...transforms import IdentityTransform
from ..stage import StageContext, StageOutcome, StageState
from .kinds import KeypointSettings

__all__ = ["run_keypoint_stage", "check_stage_inputs", "check_network_stage_inputs", "stage_network", "card_vessel_model",
           "feature_image", "moving_pixel_mm", "MIN_SIZE_PX"]

#: The smallest photograph a retinal stage takes (pixels a side): below it, too few keypoints or vessels.
MIN_SIZE_PX = 128


def check_stage_inputs(settings: KeypointSettings, fixed, moving, device) -> list[str]:
    """Retinal stages register 2D images (photographs; a colour one through its registration channel) of at least
    :data:`MIN_SIZE_PX` pixels a side."""
    for img in (fixed, moving):
        if img.dim != 2:
            raise InputError(f"{img.name}: the {settings.model} stage registers 2D images (fundus photographs, "
                             f"angiograms), got a {img.dim}D image")
        if min(img.grid.size) < MIN_SIZE_PX:
            raise InputError(f"{img.name}: {img.grid.size[0]}x{img.grid.size[1]} pixels is too small for the "
                             f"{settings.model} stage (at least {MIN_SIZE_PX} pixels a side)")
    from .fundus import _cv2

    _cv2()  # a clear error now when OpenCV is missing
    if getattr(settings, "vessel_model", "") not in ("", "frangi"):
        vessel_network(settings.vessel_model)  # found, checksum verified, the right network: before anything runs
    if getattr(settings, "detector", "") == "learned" and "enhanced" in settings.features:
        from .keypoints import keypoint_network

        keypoint_network(settings.keypoint_model)
    return []


def vessel_network(name: str):
    """The vessel network of a model name or folder (checksum verified; kept for the process)."""
    from ...io.models import cached_model, find_model

    net, _ = cached_model(find_model(name), "cpu", network="VesselNet")
    return net


def stage_network(name: str, network: str):
    """A retinal stage's network and its card (model name or folder; checksum verified, the class ``network``
    checked; kept for the process)."""
    from ...io.models import cached_model, find_model

    return cached_model(find_model(name), "cpu", network=network)


def card_vessel_model(settings, card: dict) -> str:
    """The vessel network a network stage makes its maps with: the stage's ``vessel_model``, else the one the model's
    card names (what it was trained on); empty for the Frangi filter (``frangi``)."""
    if settings.vessel_model == "frangi":
        return ""
    return settings.vessel_model or str(card["input"].get("vessel_model", ""))


def check_network_stage_inputs(settings, fixed, moving, device, network: str) -> list[str]:
    """:func:`check_stage_inputs`, and the stage's network (class ``network``) and its vessel network found and
    verified before anything runs."""
    check_stage_inputs(settings, fixed, moving, device)
    _, card = stage_network(settings.network, network)
    if card_vessel_model(settings, card):
        vessel_network(card_vessel_model(settings, card))
    return []


def feature_image(image, features: str, working_size: int, polarity: str = "auto", clahe_clip: float = 2.0,
                  vessel_model: str = ""):
    """The working image of ``image`` (an :class:`~DeepRegistrationLib.image.Image`, [0, 1]) and its feature image
    (uint8): the CLAHE-enhanced image (``enhanced``) or its vessel map (``vessels``: the Frangi filter's for the
    given polarity, or ``vessel_model``'s probability; ``frangi`` or empty: the filter)."""
    from .fundus import enhance, vesselness, working_image

    try:
        work = working_image(image.data.detach().cpu().numpy()[0].astype(np.float32), working_size)
    except InputError as err:
        raise InputError(f"{image.name}: {err}") from None
    if features == "vessels" and vessel_model not in ("", "frangi"):
        from .vessel_net import vessel_probability

        u8 = (vessel_probability(vessel_network(vessel_model), work.array, work.mask) * 255).astype(np.uint8)
    elif features == "vessels":
        u8 = (vesselness(work, polarity) * 255).astype(np.uint8)
    else:
        u8 = enhance(work, clahe_clip)
    return work, u8


def _feature_set(context: StageContext, settings: KeypointSettings, features: str):
    """One detector on one kind of feature image of both images, ratio-matched, points in mm."""
    from .keypoints import FeatureSet, detect, ratio_matches

    detector = settings.vessel_detector if features == "vessels" else settings.detector
    ratio = settings.vessel_ratio if features == "vessels" else settings.ratio
    found = []
    for image, polarity in ((context.fixed, settings.fixed_polarity), (context.moving, settings.moving_polarity)):
        work, u8 = feature_image(image, features, settings.working_size, polarity, settings.clahe_clip,
                                 settings.vessel_model)
        found.append(detect(work, u8, detector, settings.max_keypoints, settings.keypoint_model))
        context.check_cancel()
    fixed, moving = found
    return FeatureSet(fixed, moving, context.fixed.grid.index_to_physical(fixed.points.reshape(-1, 2)),
                      context.moving.grid.index_to_physical(moving.points.reshape(-1, 2)),
                      ratio_matches(fixed, moving, ratio))


def run_keypoint_stage(settings: KeypointSettings, context: StageContext, state: StageState) -> StageOutcome:
    """Detect, match and fit; the new state is the fitted model (the starting transform is used only with
    ``start: previous``, to guide the matching)."""
    from .keypoints import robust_fit

    start = time.perf_counter()
    context.check_cancel()
    sets = [_feature_set(context, settings, features) for features in settings.features.split("+")]
    pixel_mm = moving_pixel_mm(context.moving)
    start_transform = None
    if settings.start == "previous":
        from ...transforms import compose

        start_transform = compose(state.deformable, state.linear) if state.deformable is not None else state.linear
    fit = robust_fit(settings.transform, sets, settings.threshold_px * pixel_mm, settings.guided_radius_px * pixel_mm,
                     settings.guided_rounds, seed=torch_seed(), min_inliers=settings.min_inliers,
                     min_inlier_fraction=settings.min_inlier_fraction, start=start_transform,
                     start_radius_mm=settings.start_radius_px * pixel_mm)
    figures = {"keypoints_fixed": sum(len(fs.fixed) for fs in sets),
               "keypoints_moving": sum(len(fs.moving) for fs in sets), **fit.figures,
               "keypoint_time_s": time.perf_counter() - start}
    context.report({"model": settings.model, "level": 0, "iteration": 0,
                    "loss": float(fit.figures["inlier_residual_median_mm"])})
    state = StageState(fit.transform) if fit.transform.is_linear else StageState(IdentityTransform(context.dim),
                                                                                 fit.transform)
    return StageOutcome(state, fit.figures["inlier_residual_median_mm"], figures)


def moving_pixel_mm(image) -> float:
    """The moving image's pixel size (mm): the settings' pixel distances become mm with it."""
    return float(np.mean(image.grid.spacing))


def torch_seed() -> int:
    """The run's seed (the pipeline seeds torch from the configuration), for OpenCV's RANSAC."""
    import torch

    return int(torch.initial_seed() % (2**31))
