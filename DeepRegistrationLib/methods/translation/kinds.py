"""The ``translate`` stage kind (role ``image``): the moving image translated into the fixed image's modality by a
trained network; every later stage of the configuration registers the translated image instead."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import InputError
from ..registry import StageKind, register_stage_kind
from ..stage import StageSettings

__all__ = ["TranslateSettings"]


@dataclass
class TranslateSettings(StageSettings):
    """Settings of a ``translate`` stage.

    Attributes:
        network: a translation model's name (bundled or in ``$DEEPREG_MODELS``) or folder, trained from the moving
            image's modality (its card's ``source_modality``) to the fixed image's (``target_modality``).
    """

    model: str = "translate"
    network: str = ""

    def validate(self) -> "TranslateSettings":
        if self.model != "translate":
            raise InputError(f"not a translate stage: {self.model!r}")
        if not isinstance(self.network, str) or not self.network:
            raise InputError("a translate stage needs 'network' (a translation model name or folder)")
        return self


register_stage_kind(StageKind("translate", TranslateSettings,
                              "DeepRegistrationLib.methods.translation.inference:run_translate_stage", "image",
                              check="DeepRegistrationLib.methods.translation.inference:check_stage_inputs",
                              family="translation"))
