"""Settings of the retinal stages and their registration (light: no OpenCV, scikit-image or torch at import)."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import InputError
from ..registry import StageKind, register_stage_kind
from ..stage import StageSettings, check_flag, check_number

__all__ = ["KeypointSettings", "FEATURE_IMAGES"]

#: What keypoints are detected on: the CLAHE-enhanced image (same modality) or Frangi vessel maps (any
#: modality: a colour photograph's dark vessels and an angiogram's bright ones give the same map).
FEATURE_IMAGES = ("enhanced", "vessels")


@dataclass
class KeypointSettings(StageSettings):
    """Keypoints matched between the two images give a global 2D model (fixed -> moving, mm), which replaces the
    starting transform (the stage estimates the whole mapping; it is not a refinement).

    Attributes:
        detector: ``sift`` or ``orb`` (OpenCV).
        features: ``enhanced`` (CLAHE of the image) or ``vessels`` (Frangi vessel maps, for two modalities).
        vessel_polarity: ``auto`` (from each image's intensity skewness), ``dark`` or ``bright`` (both images).
        transform: ``quadratic`` (the retina's surface model), ``homography`` or ``affine``.
        working_size: pixels along each image's longer side where keypoints are detected (64-4096).
        ratio: Lowe's ratio test threshold (0, 1].
        threshold_mm: inlier distance of the robust fits, in mm of the moving image (pixels for a photograph).
        guided_radius_mm: search radius of guided matching around the model's prediction.
        guided_rounds: rounds of guided matching and refitting (0 = the MAGSAC++ inliers only).
        max_keypoints: per image.
        clahe_clip: CLAHE clip limit of the enhanced image.
    """

    model: str = "keypoints"
    detector: str = "sift"
    features: str = "enhanced"
    vessel_polarity: str = "auto"
    transform: str = "quadratic"
    working_size: int = 728
    ratio: float = 0.8
    threshold_mm: float = 5.0
    guided_radius_mm: float = 20.0
    guided_rounds: int = 3
    max_keypoints: int = 4000
    clahe_clip: float = 2.0

    def validate(self) -> "KeypointSettings":
        from .fundus_names import DETECTORS, POLARITIES, TRANSFORM_MODELS

        if self.model != "keypoints":
            raise InputError(f"a keypoint stage's model is 'keypoints', got {self.model!r}")
        for name, value, allowed in (("detector", self.detector, DETECTORS), ("features", self.features, FEATURE_IMAGES),
                                     ("vessel_polarity", self.vessel_polarity, POLARITIES),
                                     ("transform", self.transform, TRANSFORM_MODELS)):
            if value not in allowed:
                raise InputError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        check_number("working_size", self.working_size, 64, 4096, integer=True)
        check_number("ratio", self.ratio, 0.0, 1.0, low_open=True)
        check_number("threshold_mm", self.threshold_mm, 0.0, low_open=True)
        check_number("guided_radius_mm", self.guided_radius_mm, 0.0, low_open=True)
        check_number("guided_rounds", self.guided_rounds, 0, 20, integer=True)
        check_number("max_keypoints", self.max_keypoints, 16, 100_000, integer=True)
        check_number("clahe_clip", self.clahe_clip, 0.0, 100.0, low_open=True)
        return self


register_stage_kind(StageKind("keypoints", KeypointSettings,
                              "DeepRegistrationLib.methods.retina.stage:run_keypoint_stage", "deformable",
                              check="DeepRegistrationLib.methods.retina.stage:check_stage_inputs", family="retina"))
