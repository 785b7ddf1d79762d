"""A registration configuration: stages run in order, each a typed settings object of a registered stage kind.

A configuration is plain data (JSON-compatible dicts), so a preset file is just a serialised
:class:`RegistrationConfig`. :meth:`RegistrationConfig.from_dict` checks everything (each stage's fields,
types and values through its kind's settings class, and the order of the stages) before any image is read.
The stage kinds and their fields are those of :mod:`DeepRegistrationLib.methods.registry`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from ..methods.registry import check_stage_order, stage_kind
from ..methods.stage import StageSettings

__all__ = ["RegistrationConfig", "parse_stage", "INITIALISATIONS"]

INITIALISATIONS = ("moments", "center", "landmarks", "none")
#: The same names as :data:`DeepRegistrationLib.image.COLOUR_CHANNELS` (kept here so that parsing a preset does not
#: import torch; a test keeps the two equal).
COLOUR_CHANNELS = ("luminance", "red", "green", "blue")


def parse_stage(data: Any) -> StageSettings:
    """The typed settings of one stage object (``{"model": ..., ...}``), checked."""
    if not isinstance(data, dict):
        raise InputError(f"a stage must be a JSON object with a 'model', got {data!r}")
    model = data.get("model", "affine")  # the historical default
    return stage_kind(model).settings.from_dict({**data, "model": model})


@dataclass
class RegistrationConfig:
    """A full registration: stages run in order, each starting from the previous result."""

    stages: list[StageSettings]
    name: str = ""
    description: str = ""
    initialise: str = "moments"
    seed: int = 0
    #: Crop both images to their foreground (plus a margin) before the pyramid (see ``registration.foreground``).
    crop_to_foreground: bool = True
    #: What a colour (RGB) image is registered through: ``luminance``, or one channel (``green`` for fundus
    #: photographs); single-channel images are unaffected.
    channel: str = "luminance"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RegistrationConfig":
        if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
            raise InputError("a registration configuration needs a 'stages' list")
        unknown = set(data) - {"stages", "name", "description", "initialise", "seed", "crop_to_foreground", "channel"}
        if unknown:
            raise InputError(f"unknown configuration field(s) {sorted(unknown)}")
        stages = [parse_stage(s) for s in data["stages"]]
        if not stages:
            raise InputError("a registration configuration needs at least one stage")
        check_stage_order(stages)
        initialise = data.get("initialise", "moments")
        if initialise not in INITIALISATIONS:
            raise InputError(f"initialise must be one of {', '.join(INITIALISATIONS)}, got {initialise!r}")
        seed = data.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InputError(f"seed must be a whole number, got {seed!r}")
        crop = data.get("crop_to_foreground", True)
        if not isinstance(crop, bool):
            raise InputError(f"crop_to_foreground must be true or false, got {crop!r}")
        channel = data.get("channel", "luminance")
        if channel not in COLOUR_CHANNELS:
            raise InputError(f"channel must be one of {', '.join(COLOUR_CHANNELS)}, got {channel!r}")
        return cls(stages=stages, name=str(data.get("name", "")), description=str(data.get("description", "")),
                   initialise=initialise, seed=seed, crop_to_foreground=crop, channel=channel)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "initialise": self.initialise,
                "seed": self.seed, "crop_to_foreground": self.crop_to_foreground, "channel": self.channel,
                "stages": [s.to_dict() for s in self.stages]}

    @property
    def is_linear(self) -> bool:
        """Whether the result is a linear transform (no deformable stage): a .tfm/.txt/.mat file can hold it."""
        from ..methods.registry import stage_kind

        return all(stage_kind(stage.model).role != "deformable" for stage in self.stages)

    def uses(self, model: str) -> bool:
        return any(s.model == model for s in self.stages)

