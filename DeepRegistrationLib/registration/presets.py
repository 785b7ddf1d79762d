"""Registration presets: JSON files in the :class:`RegistrationConfig` format.

Looked up by name in ``$DEEPREG_PRESETS`` (folders separated by ``os.pathsep``; the Slicer module puts
the user's presets folder there) and then among the presets that ship in the package
(``DeepRegistrationLib/resources/presets/``, see :mod:`..resources`);
a path to a ``.json`` file works too. Overrides ``key=value`` (value parsed as JSON, else a string):

* ``stages.N.FIELD=VALUE`` sets a field of stage ``N`` (0-based);
* ``FIELD=VALUE`` sets a top-level field (``seed``, ``initialise``, ``crop_to_foreground``...), or a stage field of
  every stage that has it;
* ``MODEL.FIELD=VALUE`` (``svf``, ``voxelmorph``, ``rigid``... any registered stage model) or ``linear.FIELD=VALUE``
  sets a field of every stage of that model / of every linear stage (e.g. ``voxelmorph.network=path/to/my-model``
  runs a voxelmorph preset with a fine-tuned model).

When ``levels_mm`` of a stage changes but its per-level ``iterations`` are not overridden, each new
level takes the iteration count of the preset level nearest in spacing.
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import Iterable

from ..errors import InputError
from ..io.atomic import atomic_output
from ..methods.registry import stage_kind, stage_models
from ..resources import bundled_presets_dir
from .config import RegistrationConfig

__all__ = ["presets_dir", "list_presets", "load_preset", "preset_data", "apply_overrides", "save_preset"]

_TOP_LEVEL = {"name", "description", "initialise", "seed", "crop_to_foreground", "channel"}


def presets_dir() -> list[Path]:
    """Folders searched for presets, in order."""
    folders = [Path(p) for p in os.environ.get("DEEPREG_PRESETS", "").split(os.pathsep) if p]
    folders.append(bundled_presets_dir())
    return folders


def list_presets() -> dict[str, str]:
    """``{name: description}`` of every preset found (the first folder wins for a name)."""
    found: dict[str, str] = {}
    for folder in presets_dir():
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            if path.stem not in found:
                try:
                    found[path.stem] = json.loads(path.read_text()).get("description", "")
                except (OSError, json.JSONDecodeError):
                    found[path.stem] = "(unreadable preset file)"
    return found


def _preset_path(name: str) -> Path:
    if name.endswith(".json"):
        path = Path(name)
        if not path.is_file():
            raise InputError(f"{path}: preset file not found")
        return path
    for folder in presets_dir():
        path = folder / f"{name}.json"
        if path.is_file():
            return path
    raise InputError(f"unknown preset {name!r} (available: {', '.join(sorted(list_presets())) or 'none found'})")


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """A copy of the preset dict ``data`` with ``key=value`` overrides applied (see module docstring)."""
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
        raise InputError("a registration configuration needs a 'stages' list")
    data = copy.deepcopy(data)
    original = copy.deepcopy(data["stages"])
    for item in overrides:
        if "=" not in item:
            raise InputError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        value = _parse_value(raw)
        parts = key.strip().split(".")
        stages = data.get("stages", [])
        if parts[0] == "stages" and len(parts) == 3:
            try:
                stage = stages[int(parts[1])]
            except (ValueError, IndexError):
                raise InputError(f"override {key!r}: no stage {parts[1]} (the preset has {len(stages)})") from None
            targets, field = [stage], parts[2]
        elif len(parts) == 2 and (parts[0] == "linear" or parts[0] in stage_models()):
            linear = stage_models("linear")
            targets = [s for s in stages if (s.get("model", "affine") in linear if parts[0] == "linear"
                                             else s.get("model") == parts[0])]
            field = parts[1]
        elif len(parts) == 1 and parts[0] in _TOP_LEVEL:
            data[parts[0]] = value
            continue
        elif len(parts) == 1:
            # every stage whose kind has the field (a network stage has no learning_rate, for instance)
            targets = [s for s in stages if parts[0] in _fields_of(s)]
            field = parts[0]
            if not targets:
                known = sorted(set().union(*(_fields_of(s) for s in stages))) if stages else []
                raise InputError(f"override {key!r}: unknown stage field {field!r} (known: {known})")
        else:
            raise InputError(f"override {key!r} not understood (use FIELD, stages.N.FIELD, linear.FIELD or "
                             f"MODEL.FIELD with MODEL one of {', '.join(stage_models())})")
        if not targets:
            raise InputError(f"override {key!r}: the preset has no such stage")
        for stage in targets:
            if field not in _fields_of(stage):
                raise InputError(f"override {key!r}: unknown stage field {field!r} for a {stage.get('model')!r} "
                                 f"stage (known: {sorted(_fields_of(stage))})")
            stage[field] = value
    for old, stage in zip(original, data.get("stages", [])):
        _remap_iterations(old, stage)
    return data


def _fields_of(stage: dict) -> set[str]:
    """The fields a stage object may set: those of its kind's settings (all kinds' for an unknown model, whose
    error comes when the configuration is parsed)."""
    if not isinstance(stage, dict):
        raise InputError(f"a stage must be a JSON object with a 'model', got {stage!r}")
    try:
        return stage_kind(stage.get("model", "affine")).settings.field_names()
    except InputError:
        return set().union(*(stage_kind(m).settings.field_names() for m in stage_models()))


def _remap_iterations(old: dict, new: dict) -> None:
    """Per-level iterations follow a changed ``levels_mm`` (nearest preset level in log spacing)."""
    levels, its = new.get("levels_mm"), new.get("iterations")
    if (levels == old.get("levels_mm") or its != old.get("iterations") or not isinstance(its, list)
            or not isinstance(levels, list) or len(its) != len(old.get("levels_mm", []))):
        return
    old_levels = [float(v) for v in old["levels_mm"]]
    new["iterations"] = [its[min(range(len(old_levels)), key=lambda i: abs(math.log(old_levels[i] / float(v))))]
                         if float(v) > 0 else its[-1] for v in levels]


def preset_data(name: str) -> tuple[dict, Path]:
    """The preset ``name`` (or ``.json`` path) as it is written (a JSON object, not yet validated), and its file."""
    path = _preset_path(name)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a preset is a JSON object with a 'stages' list, got a JSON {type(data).__name__}")
    return data, path


def load_preset(name: str, overrides: Iterable[str] = ()) -> RegistrationConfig:
    """The preset ``name`` (or ``.json`` path) with ``overrides`` applied, validated."""
    data, path = preset_data(name)
    try:
        return RegistrationConfig.from_dict(apply_overrides(data, overrides))
    except InputError as err:
        where = path if str(name).endswith(".json") or os.sep in str(name) else f"preset {name!r}"
        raise InputError(f"{where}: {err}") from None


def save_preset(name: str, base: str, overrides: Iterable[str], folder: str | os.PathLike,
                description: str = "") -> Path:
    """Write preset ``base`` with ``overrides`` applied as ``folder/name.json`` (validated; atomic).

    This is how user presets are made (the Slicer module saves them in its settings folder).
    """
    if not name or any(c in name for c in '/\\:*?"<>|') or name.startswith("."):
        raise InputError(f"preset name {name!r} is not a valid file name")
    data = apply_overrides(preset_data(base)[0], overrides)
    data["name"] = name
    if description:
        data["description"] = description
    RegistrationConfig.from_dict(data)  # refuse to save what cannot be loaded
    out = Path(folder) / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    return out
