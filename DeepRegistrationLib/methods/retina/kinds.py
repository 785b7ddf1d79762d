"""Settings of the retinal stages and their registration (light: no OpenCV or torch at import)."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import InputError
from ..registry import StageKind, register_stage_kind
from ..stage import StageSettings, check_number

__all__ = ["KeypointSettings", "PolynomialSettings", "CorrelationSettings", "DenseRefinementSettings", "FEATURE_IMAGES"]

#: What keypoints are detected on: the CLAHE-enhanced image (same modality), vesselness maps (any modality: a
#: colour photograph's dark vessels and an angiogram's bright ones give the same map), or both pooled.
FEATURE_IMAGES = ("enhanced", "vessels", "enhanced+vessels")


def _check_vessel_fields(settings) -> None:
    """The vessel-map fields both retinal stages have: polarities and the optional vessel network."""
    from .fundus_names import POLARITIES

    for name in ("fixed_polarity", "moving_polarity"):
        if getattr(settings, name) not in POLARITIES:
            raise InputError(f"{name} must be one of {', '.join(POLARITIES)}, got {getattr(settings, name)!r}")
    if not isinstance(settings.vessel_model, str):
        raise InputError(f"vessel_model must be a model name or folder (or empty), got {settings.vessel_model!r}")


@dataclass
class KeypointSettings(StageSettings):
    """Keypoints matched between the two images give a global 2D model (fixed -> moving, mm), which replaces the
    starting transform (the stage estimates the whole mapping; it is not a refinement).

    Attributes:
        detector: ``sift`` or ``orb`` (OpenCV), or ``learned`` (the keypoint network ``keypoint_model``,
            SuperPoint-style), on the enhanced image.
        vessel_detector: ``sift`` or ``orb`` on the vessel maps (ORB's binary tests suit their thin lines better
            than SIFT).
        keypoint_model: the keypoint network (model name or folder, ``deepreg train keypoints``) of
            ``detector: learned``.
        features: ``enhanced`` (CLAHE of the image), ``vessels`` (vessel maps, for two modalities) or
            ``enhanced+vessels`` (both, their matches pooled in one robust fit).
        fixed_polarity, moving_polarity: each image's vessels for the vessel maps: ``dark`` (a colour or red-free
            photograph), ``bright`` (a fluorescein angiogram, OCT-A) or ``auto`` (a guess from the intensity
            skewness, :func:`~.fundus.vessel_polarity`).
        vessel_model: a vessel network (model name or folder, ``deepreg train vessels``) whose probability map
            replaces the Frangi filter's; it needs no polarity. Empty or ``frangi``: the Frangi filter.
        transform: ``quadratic`` (the retina's surface model), ``homography`` or ``affine``.
        working_size: pixels along each image's longer side where keypoints are detected (64-4096).
        ratio, vessel_ratio: Lowe's ratio test threshold (0, 1] for the enhanced image's and the vessel maps'
            keypoints.
        threshold_px: inlier distance of the robust fits, in pixels of the moving image (at full size; distances
            are converted to mm with its pixel spacing, so a photograph whose file states a resolution works the same).
        guided_radius_px: search radius of guided matching around the model's prediction (moving pixels).
        guided_rounds: rounds of guided matching and refitting (0 = the MAGSAC++ inliers only).
        max_keypoints: per image and feature image.
        min_inliers, min_inlier_fraction: the robust fit's consensus must hold this many matches and this share of
            them, or the stage fails (unrelated images still give a few percent of chance inliers).
        start: ``matching`` (global: ratio test and MAGSAC++; the starting transform is not used) or ``previous``
            (guided matching within ``start_radius_px`` of where the transform so far, e.g. an earlier keypoint
            stage's affine or a given initial transform, puts each keypoint).
        start_radius_px: the search radius around the previous transform (moving pixels).
        clahe_clip: CLAHE clip limit of the enhanced image.
    """

    model: str = "keypoints"
    detector: str = "sift"
    vessel_detector: str = "orb"
    keypoint_model: str = "keypoints-retina"
    features: str = "enhanced"
    fixed_polarity: str = "dark"
    moving_polarity: str = "dark"
    vessel_model: str = ""
    transform: str = "quadratic"
    working_size: int = 728
    ratio: float = 0.8
    vessel_ratio: float = 0.9
    threshold_px: float = 5.0
    guided_radius_px: float = 20.0
    guided_rounds: int = 3
    max_keypoints: int = 4000
    min_inliers: int = 25
    min_inlier_fraction: float = 0.1
    start: str = "matching"
    start_radius_px: float = 80.0
    clahe_clip: float = 2.0

    def validate(self) -> "KeypointSettings":
        from .fundus_names import DETECTORS, TRANSFORM_MODELS

        if self.model != "keypoints":
            raise InputError(f"a keypoint stage's model is 'keypoints', got {self.model!r}")
        for name, value, allowed in (("detector", self.detector, DETECTORS),
                                     ("vessel_detector", self.vessel_detector, DETECTORS[:2]),
                                     ("features", self.features, FEATURE_IMAGES),
                                     ("transform", self.transform, TRANSFORM_MODELS)):
            if value not in allowed:
                raise InputError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        _check_vessel_fields(self)
        if not isinstance(self.keypoint_model, str):
            raise InputError(f"keypoint_model must be a model name or folder, got {self.keypoint_model!r}")
        check_number("working_size", self.working_size, 64, 4096, integer=True)
        check_number("ratio", self.ratio, 0.0, 1.0, low_open=True)
        check_number("vessel_ratio", self.vessel_ratio, 0.0, 1.0, low_open=True)
        check_number("threshold_px", self.threshold_px, 0.0, low_open=True)
        check_number("guided_radius_px", self.guided_radius_px, 0.0, low_open=True)
        check_number("guided_rounds", self.guided_rounds, 0, 20, integer=True)
        check_number("max_keypoints", self.max_keypoints, 16, 100_000, integer=True)
        check_number("min_inliers", self.min_inliers, 4, 100_000, integer=True)
        check_number("min_inlier_fraction", self.min_inlier_fraction, 0.0, 1.0)
        if self.start not in ("matching", "previous"):
            raise InputError(f"start must be matching or previous, got {self.start!r}")
        check_number("start_radius_px", self.start_radius_px, 0.0, low_open=True)
        check_number("clahe_clip", self.clahe_clip, 0.0, 100.0, low_open=True)
        return self


register_stage_kind(StageKind("keypoints", KeypointSettings,
                              "DeepRegistrationLib.methods.retina.stage:run_keypoint_stage", "deformable",
                              refines=True, check="DeepRegistrationLib.methods.retina.stage:check_stage_inputs",
                              family="retina", global_search=True))


@dataclass
class PolynomialSettings(StageSettings):
    """Intensity refinement of a global 2D model (fixed -> moving, mm): the model's parameters are optimised for
    the normalised cross-correlation of the two images' feature images (vessel maps or enhanced images) over the
    fixed field of view, coarse to fine. Starts from the model of an earlier ``keypoints`` stage (refines it), or
    from the linear transform so far.

    Attributes:
        transform: ``quadratic`` or ``homography``.
        features: ``vessels`` (vesselness maps, any modality) or ``enhanced`` (CLAHE images, same modality).
        fixed_polarity, moving_polarity, vessel_model: as in the keypoint stage.
        working_sizes: pixels along each image's longer side, one per level (coarse to fine).
        iterations: steps per level.
        learning_rate: Adam's step on the model's coefficients, in moving-image pixels of displacement at the edge
            of the fixed field of view, at the finest level (coarser levels step in proportion to their pixel size).
        smoothing_px: Gaussian sigma (working pixels) applied to the feature images (widens the capture range).
        max_shift_px: the refinement is refused (the start is kept) when it moves any fixed point that lands in the
            moving field of view by more than this (moving pixels) from the start: a keypoint fit that good needs
            no larger change, and a larger one means the intensities disagree (pathology, another modality).
    """

    model: str = "polynomial"
    transform: str = "quadratic"
    features: str = "vessels"
    fixed_polarity: str = "dark"
    moving_polarity: str = "dark"
    vessel_model: str = ""
    working_sizes: tuple = (364, 728)
    iterations: tuple = (60, 40)
    learning_rate: float = 0.5
    smoothing_px: float = 1.0
    max_shift_px: float = 30.0

    def iterations_per_level(self) -> list[int]:
        return list(self.iterations)

    def validate(self) -> "PolynomialSettings":
        if self.model != "polynomial":
            raise InputError(f"a polynomial stage's model is 'polynomial', got {self.model!r}")
        for name, value, allowed in (("transform", self.transform, ("quadratic", "homography")),
                                     ("features", self.features, FEATURE_IMAGES[:2])):
            if value not in allowed:
                raise InputError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        _check_vessel_fields(self)
        if not isinstance(self.working_sizes, (list, tuple)) or not self.working_sizes:
            raise InputError(f"working_sizes must be a list of pixel counts, got {self.working_sizes!r}")
        if not isinstance(self.iterations, (list, tuple)) or len(self.iterations) != len(self.working_sizes):
            raise InputError(f"iterations must give one count per working size ({len(self.working_sizes)}), "
                             f"got {self.iterations!r}")
        for size in self.working_sizes:
            check_number("working_sizes[]", size, 32, 4096, integer=True)
        for count in self.iterations:
            check_number("iterations[]", count, 0, 10_000, integer=True)
        self.working_sizes, self.iterations = list(self.working_sizes), list(self.iterations)
        check_number("learning_rate", self.learning_rate, 0.0, 100.0, low_open=True)
        check_number("smoothing_px", self.smoothing_px, 0.0, 20.0)
        check_number("max_shift_px", self.max_shift_px, 0.0, low_open=True)
        return self


register_stage_kind(StageKind("polynomial", PolynomialSettings,
                              "DeepRegistrationLib.methods.retina.refine:run_polynomial_stage", "deformable",
                              refines=True, check="DeepRegistrationLib.methods.retina.stage:check_stage_inputs",
                              family="retina"))


@dataclass
class CorrelationSettings(StageSettings):
    """A global homography (fixed -> moving, mm) from the correlation network (:mod:`.correlation_net`): both
    images' vessel maps, their 4D correlation volume of deep features, its mutual dual-softmax matches and a
    MAGSAC++ fit. It replaces the starting transform (a global search: no start is needed, any rotation within
    the training range and any overlap); a ``keypoints`` stage with ``start: previous`` then refines it.

    Attributes:
        network: the correlation model (name or folder, ``deepreg train correlation``).
        vessel_model: the vessel network making the maps; empty: the one the model's card names (what it was
            trained on); ``frangi``: the Frangi filter, with the polarities below.
        fixed_polarity, moving_polarity: each image's vessels, for the Frangi filter only.
        fit: ``magsac`` (MAGSAC++ on the volume's mutual matches; robust, refuses images without a consistent
            set) or ``regression`` (the homography the network regresses from the whole volume, as in training;
            no refusal).
        size: the side (pixels, a multiple of 8) the whole square vessel map is resized to for the network; 0: the
            training size on the card. The network is convolutional: a larger side gives finer cells (one cell is
            8 of these pixels) and shows the vessels at the scale of the training windows (a fraction of the map).
        threshold_cells: MAGSAC++'s inlier distance in correlation cells.
        min_inliers: the fit's consensus must hold this many matches, or the stage fails (different retinas).
    """

    model: str = "correlation"
    network: str = "correlation-retina"
    vessel_model: str = ""
    fixed_polarity: str = "dark"
    moving_polarity: str = "dark"
    fit: str = "magsac"
    size: int = 0
    threshold_cells: float = 1.0
    min_inliers: int = 12

    def validate(self) -> "CorrelationSettings":
        if self.model != "correlation":
            raise InputError(f"a correlation stage's model is 'correlation', got {self.model!r}")
        if not isinstance(self.network, str) or not self.network:
            raise InputError(f"network must be a correlation model name or folder, got {self.network!r}")
        _check_vessel_fields(self)
        if self.fit not in ("magsac", "regression"):
            raise InputError(f"fit must be magsac or regression, got {self.fit!r}")
        check_number("size", self.size, 0, 1024, integer=True)
        if self.size % 8:
            raise InputError(f"size must be 0 or a multiple of 8 (pixels), got {self.size}")
        check_number("threshold_cells", self.threshold_cells, 0.0, 16.0, low_open=True)
        check_number("min_inliers", self.min_inliers, 4, 100_000, integer=True)
        return self


register_stage_kind(StageKind("correlation", CorrelationSettings,
                              "DeepRegistrationLib.methods.retina.correlation_stage:run_correlation_stage",
                              "deformable", refines=True,
                              check="DeepRegistrationLib.methods.retina.correlation_stage:check_inputs",
                              family="retina", global_search=True))


@dataclass
class DenseRefinementSettings(StageSettings):
    """A dense displacement refining the transform so far (2D, fixed -> moving, mm), predicted by the refinement
    network (:mod:`.flow_net`) from the fixed vessel map and the moving one resampled through that transform: the
    residual a global model (the correlation network's homography, a keypoint fit) leaves. The result is
    ``previous(x + u(x))``, ``u`` a displacement field on the fixed image's working pixels (zero beyond its field of
    view).

    Attributes:
        network: the refinement model (name or folder, ``deepreg train refinement``).
        vessel_model: the vessel network making the maps; empty: the one the model's card names; ``frangi``: the
            Frangi filter, with the polarities below.
        fixed_polarity, moving_polarity: each image's vessels, for the Frangi filter only.
        working_sizes: pixels along each image's longer side, one level each, coarse to fine (each level refines the
            previous one's result); empty: the card's finest working size alone. A coarse level widens the capture
            range: the network corrects a few working pixels, which are more image pixels at a small size.
        passes: network passes per level, each on the moving map resampled through the previous pass's result.
    """

    model: str = "dense_refinement"
    network: str = "refinement-retina"
    vessel_model: str = ""
    fixed_polarity: str = "dark"
    moving_polarity: str = "dark"
    working_sizes: tuple = ()
    passes: int = 1

    def iterations_per_level(self) -> list[int]:
        return [self.passes] * max(1, len(self.working_sizes))

    def validate(self) -> "DenseRefinementSettings":
        if self.model != "dense_refinement":
            raise InputError(f"a dense refinement stage's model is 'dense_refinement', got {self.model!r}")
        if not isinstance(self.network, str) or not self.network:
            raise InputError(f"network must be a refinement model name or folder, got {self.network!r}")
        _check_vessel_fields(self)
        if not isinstance(self.working_sizes, (list, tuple)):
            raise InputError(f"working_sizes must be a list of pixel counts (coarse to fine), got {self.working_sizes!r}")
        for size in self.working_sizes:
            check_number("working_sizes[]", size, 64, 4096, integer=True)
        self.working_sizes = [int(size) for size in self.working_sizes]
        check_number("passes", self.passes, 1, 5, integer=True)
        return self


register_stage_kind(StageKind("dense_refinement", DenseRefinementSettings,
                              "DeepRegistrationLib.methods.retina.flow_stage:run_dense_refinement_stage",
                              "deformable", refines=True,
                              check="DeepRegistrationLib.methods.retina.flow_stage:check_inputs",
                              family="retina"))
