"""Parameters of an iterative registration: a list of stages, each a model + similarity + pyramid.

A configuration is plain data (JSON-compatible dicts), so a preset file is just a serialised
:class:`RegistrationConfig`. Units: ``levels_mm`` are the isotropic spacings (mm) of the pyramid
levels, coarse to fine; a level never samples finer than the fixed image along any axis, so
anisotropic images keep their coarse axis.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import InputError

__all__ = ["StageConfig", "RegistrationConfig", "LINEAR_MODELS", "DEFORMABLE_MODELS"]

LINEAR_MODELS = ("translation", "rigid", "similarity", "affine")
DEFORMABLE_MODELS = ("svf", "voxelmorph")
DEFAULT_PASS_STEP = 0.4  # damping of the network passes after the first (networks/inference.py)


@dataclass
class StageConfig:
    """One optimisation stage.

    Attributes:
        model: ``translation``, ``rigid``, ``similarity``, ``affine``, ``svf`` (diffeomorphic
            stationary velocity field, integrated by scaling and squaring) or ``voxelmorph`` (a trained
            network predicts the deformation in one pass on its own grid; an ``svf`` stage after it starts
            from the network's velocity: instance optimisation). Pyramid, similarity and optimiser
            fields do not apply to ``voxelmorph``.
        network: for ``voxelmorph``: a model name (``Resources/Models/<name>``, ``$DEEPREG_MODELS``) or folder.
        mirror_average: for ``voxelmorph``: also predict on the pair mirrored left-right (both images) and
            average the two fields (the mirrored one mirrored back). For near-symmetric anatomy (brain) the
            mirrored pair is as plausible as the original, so this halves the network's independent errors at
            the cost of a second forward pass.
        passes: for ``voxelmorph``: network passes. Each pass after the first gives the network the moving
            image seen through the deformation so far and composes ``pass_step`` x its prediction onto it
            (damped recursive refinement, :func:`~DeepRegistrationLib.networks.inference.predict_transform`).
        pass_step: for ``voxelmorph`` with ``passes`` > 1: the fraction (0, 1] of each later pass's prediction
            that is applied.
        similarity: ``ssd``, ``ncc``, ``lncc``, ``mi``, ``nmi`` or ``mind``.
        similarity_options: keyword arguments of the similarity (e.g. ``{"window": 5}`` for LNCC).
        levels_mm: pyramid spacings in mm, coarse to fine.
        iterations: optimiser steps per level (one value, or one per level).
        learning_rate: Adam step of a 4 mm level, scaled with the level spacing: radians for angles
            (also matrix entries and log-scale) in linear stages; mm per mm of spacing for velocities.
        translation_step_mm: Adam step for translations (mm) of a 4 mm level, scaled with the level spacing.
        regularisation: ``diffusion`` (squared gradient of the velocity, mm/mm) for ``svf``.
        regularisation_weight: weight of that term.
        control_spacing_factor: the velocity grid is the level grid coarsened by this factor.
        integration_steps: scaling-and-squaring steps.
        smoothing_sigma_mm: Gaussian smoothing of each level image = this factor x level spacing (none along
            an axis where that is at most half the input's spacing). ``deformable-accurate`` and
            ``voxelmorph-brain-io`` use 0.25: for a 1 mm brain the 1.5 and 2 mm levels are then only resampled
            and the 4 mm level is smoothed by 1 mm, which gained 0.007 mean Dice on the brain benchmark over
            0.5. ``deformable-fast`` (finest level 2 mm) keeps 0.5: at 0.25 it gained 0.015 on the brains but
            lost the capture range of a 13 x 17 px shift of a 2D slice (2.1 mm error against < 1 mm).
        final_lr_fraction: linear stages decay their step size linearly to this fraction within each
            level (the final step bounds the precision: 0.01 x 0.02 rad ~ 0.016 mm at 80 mm).
    """

    model: str = "affine"
    network: str = ""
    mirror_average: bool = False
    passes: int = 1
    pass_step: float = DEFAULT_PASS_STEP
    similarity: str = "ncc"
    similarity_options: dict = field(default_factory=dict)
    levels_mm: list[float] = field(default_factory=lambda: [4.0, 2.0])
    iterations: list[int] | int = 100
    learning_rate: float = 0.01
    translation_step_mm: float = 1.0
    regularisation: str = "diffusion"
    regularisation_weight: float = 1.0
    control_spacing_factor: float = 2.0
    integration_steps: int = 7
    smoothing_sigma_mm: float = 0.5
    final_lr_fraction: float = 0.1

    def pyramid_levels(self) -> list[float]:
        """The pyramid spacings (mm) this stage optimises on; none for a network stage (it has its own grid)."""
        return [] if self.model == "voxelmorph" else [float(s) for s in self.levels_mm]

    def iterations_per_level(self) -> list[int]:
        if self.model == "voxelmorph":
            return [1]  # one network pass
        its = self.iterations if isinstance(self.iterations, list) else [int(self.iterations)] * len(self.levels_mm)
        if len(its) != len(self.levels_mm):
            raise InputError(f"stage {self.model}: {len(its)} iteration counts for {len(self.levels_mm)} levels")
        return [int(i) for i in its]

    def validate(self) -> "StageConfig":
        from ..metrics.similarity import SIMILARITIES, make_similarity  # torch: only when a config is used

        if self.model not in LINEAR_MODELS + DEFORMABLE_MODELS:
            raise InputError(f"unknown model {self.model!r} (choose from {LINEAR_MODELS + DEFORMABLE_MODELS})")
        if (self.model == "voxelmorph") != bool(self.network):
            raise InputError("a voxelmorph stage needs 'network' (a model name or folder)" if self.model == "voxelmorph"
                             else f"'network' applies to voxelmorph stages, not {self.model}")
        if not isinstance(self.mirror_average, bool):
            raise InputError(f"mirror_average must be true or false, got {self.mirror_average!r}")
        if self.mirror_average and self.model != "voxelmorph":
            raise InputError(f"'mirror_average' applies to voxelmorph stages, not {self.model}")
        if isinstance(self.passes, bool) or not isinstance(self.passes, int) or not 1 <= self.passes <= 8:
            raise InputError(f"passes must be a whole number from 1 to 8, got {self.passes!r}")
        if isinstance(self.pass_step, bool) or not isinstance(self.pass_step, (int, float)) \
                or not 0 < self.pass_step <= 1:
            raise InputError(f"pass_step must be a number in (0, 1], got {self.pass_step!r}")
        if self.model != "voxelmorph" and (self.passes != 1 or self.pass_step != DEFAULT_PASS_STEP):
            raise InputError(f"'passes' and 'pass_step' apply to voxelmorph stages, not {self.model}")
        if self.similarity.lower() not in SIMILARITIES:
            raise InputError(f"unknown similarity {self.similarity!r} (choose from {sorted(SIMILARITIES)})")
        if not isinstance(self.similarity_options, dict):
            raise InputError(f"similarity_options must be a mapping, got {self.similarity_options!r}")
        try:  # the options must fit the similarity (e.g. 'window' is LNCC's, not SSD's)
            make_similarity(self.similarity, **self.similarity_options)
        except TypeError:
            raise InputError(f"similarity {self.similarity!r} does not take the option(s) "
                             f"{sorted(self.similarity_options)}; set similarity_options for it too") from None
        if not self.levels_mm or any(float(s) <= 0 for s in self.levels_mm):
            raise InputError(f"levels_mm must be positive spacings, got {self.levels_mm}")
        if any(i < 0 for i in self.iterations_per_level()):
            raise InputError("iterations must be >= 0")
        if not 0 < self.final_lr_fraction <= 1:
            raise InputError(f"final_lr_fraction must be in (0, 1], got {self.final_lr_fraction}")
        if self.regularisation not in ("diffusion",):
            raise InputError(f"unknown regularisation {self.regularisation!r} (choose from ['diffusion'])")
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StageConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InputError(f"unknown stage parameter(s) {sorted(unknown)} (known: {sorted(known)})")
        return cls(**data).validate()


@dataclass
class RegistrationConfig:
    """A full registration: stages run in order, each starting from the previous result."""

    stages: list[StageConfig]
    name: str = ""
    description: str = ""
    initialise: str = "moments"
    seed: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RegistrationConfig":
        if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
            raise InputError("a registration configuration needs a 'stages' list")
        unknown = set(data) - {"stages", "name", "description", "initialise", "seed"}
        if unknown:
            raise InputError(f"unknown configuration field(s) {sorted(unknown)}")
        stages = [StageConfig.from_dict(s) for s in data["stages"]]
        if not stages:
            raise InputError("a registration configuration needs at least one stage")
        initialise = str(data.get("initialise", "moments"))
        if initialise not in ("moments", "center", "landmarks", "none"):
            raise InputError(f"initialise must be moments, center, landmarks or none, got {initialise!r}")
        return cls(stages=stages, name=str(data.get("name", "")), description=str(data.get("description", "")),
                   initialise=initialise, seed=int(data.get("seed", 0)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
