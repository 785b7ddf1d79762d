"""The one registry of stage kinds: a stage's ``model`` names a kind; a kind gives its settings and its runner.

Each family declares its kinds in one light module (no torch, no network code at import) listed in
:data:`FAMILIES`; the registry imports those modules on the first lookup. A kind names its runner (and its
input check) as ``"module:function"``, imported when a stage of that kind runs, so parsing a preset or running
a classical stage never imports a network, training code or MONAI.

Roles give the order rule checked when a configuration is parsed: ``image`` stages (which change the moving image
that every later stage registers, e.g. a modality translation) come first, every ``linear`` stage comes before
every ``deformable`` one, and a deformable stage may follow another only if it ``refines`` a deformable start.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import InputError
from .stage import StageSettings

__all__ = ["StageKind", "FAMILIES", "register_stage_kind", "stage_kind", "stage_models", "check_stage_order"]

#: Modules that declare the stage kinds of each family (imported on the first lookup).
FAMILIES: tuple[str, ...] = (
    "DeepRegistrationLib.methods.classical.kinds",
    "DeepRegistrationLib.methods.voxelmorph.kinds",
    "DeepRegistrationLib.methods.retina.kinds",
    "DeepRegistrationLib.methods.translation.kinds",
)

#: Stage roles, in the order a configuration must give them.
ROLES = ("image", "linear", "deformable")

_KINDS: dict[str, "StageKind"] = {}
_LOADED = False


def _resolve(target: str) -> Callable:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class StageKind:
    """A stage kind.

    Attributes:
        model: the name a preset's stage gives in ``model``.
        settings: its settings class (a :class:`StageSettings` dataclass).
        runner: ``"module:function"`` of ``run(settings, context, state) -> StageOutcome``; for an ``image``
            stage ``run(settings, fixed, moving, device) -> (moving image, figures)`` on the normalised images.
        role: ``image`` (replaces the moving image the later stages see), ``linear`` (updates ``state.linear``)
            or ``deformable`` (sets ``state.deformable``).
        refines: a deformable stage that starts from the deformable result of an earlier stage, if any.
        check: ``"module:function"`` of ``check(settings, fixed, moving, device) -> list[str]``, run on the
            original images before anything else: errors for inputs the stage cannot take, warnings returned.
        family: the family package (for messages and documentation).
        global_search: the stage finds the whole mapping itself (keypoint matching), so as a first stage it needs
            no overlap of the images in physical space (photographs whose files state different resolutions).
    """

    model: str
    settings: type[StageSettings]
    runner: str
    role: str
    refines: bool = False
    check: str | None = None
    family: str = ""
    global_search: bool = False

    def run(self, settings: StageSettings, context, state):
        return _resolve(self.runner)(settings, context, state)

    def transform_image(self, settings: StageSettings, fixed, moving, device):
        """An ``image`` stage's runner: ``(the new moving image, figures)``."""
        return _resolve(self.runner)(settings, fixed, moving, device)

    def check_inputs(self, settings: StageSettings, fixed, moving, device) -> list[str]:
        return list(_resolve(self.check)(settings, fixed, moving, device)) if self.check else []


def register_stage_kind(kind: StageKind) -> StageKind:
    """Add ``kind`` (a family's kinds module calls this at import); a second kind of the same name is an error."""
    if kind.role not in ROLES:
        raise ValueError(f"stage kind {kind.model!r}: role must be one of {ROLES}, got {kind.role!r}")
    if kind.model in _KINDS and _KINDS[kind.model] != kind:
        raise ValueError(f"stage kind {kind.model!r} is registered twice")
    _KINDS[kind.model] = kind
    return kind


def _load() -> None:
    global _LOADED
    if not _LOADED:
        for module in FAMILIES:
            importlib.import_module(module)
        _LOADED = True


def stage_models(role: str | None = None) -> tuple[str, ...]:
    """Every registered ``model`` name (of one ``role`` when given), in registration order."""
    _load()
    return tuple(m for m, k in _KINDS.items() if role is None or k.role == role)


def stage_kind(model: Any) -> StageKind:
    """The kind registered as ``model``; an error naming the known ones otherwise."""
    _load()
    if not isinstance(model, str) or model not in _KINDS:
        raise InputError(f"unknown model {model!r} (choose from {stage_models()})")
    return _KINDS[model]


def check_stage_order(stages: list[StageSettings]) -> None:
    """Refuse an order the pipeline cannot run (see the module docstring)."""
    deformable = None
    registering = None  # the first stage that is not an image stage
    for settings in stages:
        kind = stage_kind(settings.model)
        if kind.role == "image" and registering is not None:
            raise InputError(f"a {settings.model} stage changes the moving image, so it must come before the "
                             f"registration stages (it comes after {registering!r})")
        if kind.role != "image" and registering is None:
            registering = settings.model
        if kind.role == "linear" and deformable is not None:
            raise InputError(f"linear stages must come before the deformable stages ({settings.model!r} comes "
                             f"after {deformable!r})")
        if kind.role == "deformable":
            if deformable is not None and not kind.refines:
                raise InputError(f"a {settings.model} stage must come before any other deformable stage "
                                 f"(it comes after {deformable!r}, which cannot be refined by it)")
            deformable = settings.model
    if stages and registering is None:
        raise InputError("a configuration of image stages only registers nothing: add a rigid, affine or "
                         "deformable stage after them")
