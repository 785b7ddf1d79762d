"""Settings of the classical stages and their registration (light: no torch at import).

Units: ``levels_mm`` are the isotropic spacings (mm) of the pyramid levels, coarse to fine; a level never
samples finer than the input along any axis, so anisotropic images keep their coarse axis.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import InputError
from ..registry import StageKind, register_stage_kind
from ..stage import StageSettings, check_number

__all__ = ["IterativeSettings", "LinearSettings", "SVFSettings", "LINEAR_MODELS", "MAX_ITERATIONS",
           "POINTWISE_SIMILARITIES", "is_pointwise"]

#: Similarities of voxel values alone (no neighbourhood): they can be measured on randomly sampled voxels. A
#: learned metric (``learned:<model>``) is one too: it compares feature maps made once per level.
POINTWISE_SIMILARITIES = ("ssd", "mse", "ncc", "mi", "nmi", "learned:<model>")



def is_pointwise(similarity: str) -> bool:
    """Whether ``similarity`` can be measured on randomly sampled voxels (:data:`POINTWISE_SIMILARITIES`)."""
    return similarity.lower() in POINTWISE_SIMILARITIES or similarity.lower().startswith("learned:")


LINEAR_MODELS = ("translation", "rigid", "similarity", "affine")
MAX_ITERATIONS = 100_000  # per level; far above any useful count, below a typo's


@dataclass
class IterativeSettings(StageSettings):
    """What every iterative stage has.

    Attributes:
        similarity: ``ssd``, ``ncc``, ``lncc``, ``mapped-lncc`` (deformable stages: LNCC against the moving image
            mapped into the fixed contrast), ``mi``, ``nmi``, ``mind`` or ``learned:<model>`` (a learned metric
            model: :mod:`DeepRegistrationLib.metrics.learned`).
        similarity_options: keyword arguments of the similarity (e.g. ``{"window": 5}`` for LNCC).
        levels_mm: pyramid spacings in mm, coarse to fine.
        iterations: optimiser steps per level (one value, or one per level).
        learning_rate: Adam step of a 4 mm level, scaled with the level spacing: radians for angles (also
            matrix entries and log-scale) in linear stages; mm per mm of spacing for velocities.
        smoothing_sigma_mm: Gaussian smoothing of each level image = this factor x level spacing (none along
            an axis where that is at most half the input's spacing). A smaller factor keeps detail at the
            coarse levels; a larger one widens their capture range (README, "Presets").
    """

    model: str = "affine"
    similarity: str = "ncc"
    similarity_options: dict = field(default_factory=dict)
    levels_mm: list[float] = field(default_factory=lambda: [4.0, 2.0])
    iterations: list[int] | int = 100
    learning_rate: float = 0.01
    smoothing_sigma_mm: float = 0.5

    def pyramid_levels(self) -> list[float]:
        return [float(s) for s in self.levels_mm]

    def smoothing_factor(self) -> float:
        return float(self.smoothing_sigma_mm)

    def iterations_per_level(self) -> list[int]:
        its = self.iterations if isinstance(self.iterations, list) else [self.iterations] * len(self.levels_mm)
        if len(its) != len(self.levels_mm):
            raise InputError(f"stage {self.model}: {len(its)} iteration counts for {len(self.levels_mm)} levels")
        return [int(i) for i in its]

    def validate(self) -> "IterativeSettings":
        from ...metrics.similarity import make_similarity  # torch: only when a config is used

        if not isinstance(self.similarity_options, dict):
            raise InputError(f"similarity_options must be a mapping, got {self.similarity_options!r}")
        try:  # the options must fit the similarity (e.g. 'window' is LNCC's, not SSD's)
            make_similarity(self.similarity, **self.similarity_options)
        except TypeError:
            raise InputError(f"similarity {self.similarity!r} does not take the option(s) "
                             f"{sorted(self.similarity_options)}; set similarity_options for it too") from None
        if not isinstance(self.levels_mm, list) or not self.levels_mm:
            raise InputError(f"levels_mm must be a list of positive spacings (mm), got {self.levels_mm!r}")
        for value in self.levels_mm:
            check_number("levels_mm", value, 0.0, low_open=True)
        for value in (self.iterations if isinstance(self.iterations, list) else [self.iterations]):
            check_number("iterations", value, 0, MAX_ITERATIONS, integer=True)
        self.iterations_per_level()
        check_number("learning_rate", self.learning_rate, 0.0, low_open=True)
        check_number("smoothing_sigma_mm", self.smoothing_sigma_mm, 0.0)
        return self


@dataclass
class LinearSettings(IterativeSettings):
    """A linear stage (``model``: translation, rigid, similarity or affine).

    Attributes:
        translation_step_mm: Adam step for translations (mm) of a 4 mm level, scaled with the level spacing.
        final_lr_fraction: the step size decays linearly to this fraction within each level (the final step
            bounds the precision: 0.01 x 0.02 rad ~ 0.016 mm at 80 mm).
        samples: fixed voxels drawn at random at every step (a new draw each step, inside the fixed mask when
            there is one, as elastix's random sampler), so that time and memory per step do not grow with the
            image; 0 = every voxel of the level, as is a level of at most 4 x ``samples`` voxels (its whole grid,
            masked voxels included: measuring it whole evaluates them all). For the
            point-wise similarities (``ssd``, ``ncc``, ``mi``, ``nmi``, ``learned:<model>``).
    """

    translation_step_mm: float = 1.0
    final_lr_fraction: float = 0.1
    samples: int = 0

    def validate(self) -> "LinearSettings":
        if self.model not in LINEAR_MODELS:
            raise InputError(f"a linear stage's model is one of {LINEAR_MODELS}, got {self.model!r}")
        super().validate()
        check_number("translation_step_mm", self.translation_step_mm, 0.0, low_open=True)
        check_number("final_lr_fraction", self.final_lr_fraction, 0.0, 1.0, low_open=True)
        check_number("samples", self.samples, 0, 10_000_000, integer=True)
        if self.similarity.lower() == "mapped-lncc":
            raise InputError("mapped-lncc is for deformable (svf) stages: its intensity mapping needs the images "
                             "roughly aligned first; use nmi or mi in linear stages")
        if self.samples and not is_pointwise(self.similarity):
            raise InputError(f"samples: random voxel sampling needs a point-wise similarity "
                             f"({', '.join(POINTWISE_SIMILARITIES)}), not {self.similarity!r} (it needs neighbourhoods)")
        return self


@dataclass
class SVFSettings(IterativeSettings):
    """The diffeomorphic stationary velocity field stage (``model``: svf), integrated by scaling and squaring.
    After a deformable stage (a network's) it starts from that stage's velocity: instance optimisation.

    Attributes:
        regularisation: ``diffusion`` (squared gradient of the velocity, mm/mm).
        regularisation_weight: weight of that term (>= 0).
        control_spacing_factor: the velocity grid is the level grid coarsened by this whole factor (>= 1).
        integration_steps: scaling-and-squaring steps.
    """

    model: str = "svf"
    regularisation: str = "diffusion"
    regularisation_weight: float = 1.0
    control_spacing_factor: float = 2.0
    integration_steps: int = 7

    def validate(self) -> "SVFSettings":
        if self.model != "svf":
            raise InputError(f"an SVF stage's model is 'svf', got {self.model!r}")
        super().validate()
        if self.regularisation not in ("diffusion",):
            raise InputError(f"unknown regularisation {self.regularisation!r} (choose from ['diffusion'])")
        check_number("regularisation_weight", self.regularisation_weight, 0.0)
        check_number("control_spacing_factor", self.control_spacing_factor, 1.0, 64.0)
        check_number("integration_steps", self.integration_steps, 0, 20, integer=True)
        return self


for _model in LINEAR_MODELS:
    register_stage_kind(StageKind(_model, LinearSettings, "DeepRegistrationLib.methods.classical.linear:run_linear_stage",
                                  "linear", family="classical"))
register_stage_kind(StageKind("svf", SVFSettings, "DeepRegistrationLib.methods.classical.svf:run_svf_stage",
                              "deformable", refines=True, family="classical"))
