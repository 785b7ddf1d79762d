"""A preset's stages as rows of editable text (the Slicer panel's stage table), and edited rows back as preset
overrides ``stages.N.FIELD=VALUE``: one table, one validation, whatever shows it.

Light: reads the preset JSON and applies overrides without importing torch (the panel fills the table before the
dependencies are installed); :func:`check_stage_overrides` validates fully through :func:`load_preset`.
Units: ``levels_mm`` are voxel spacings in mm, coarse to fine; ``iterations`` one count per level.
"""

from __future__ import annotations

import json
from typing import Iterable

from ..errors import InputError
from .presets import apply_overrides, preset_data

__all__ = ["STAGE_COLUMNS", "stage_rows", "overrides_from_rows", "check_stage_overrides"]

#: ``(field, heading)`` of the table's columns; ``model`` is shown, not edited.
STAGE_COLUMNS = [("model", "Stage"), ("similarity", "Similarity"), ("levels_mm", "Levels (mm)"),
                 ("iterations", "Iterations"), ("regularisation_weight", "Regularisation")]
_EDITABLE = [field for field, _ in STAGE_COLUMNS[1:]]


def _text(value) -> str:
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value)


def stage_rows(preset: str, overrides: Iterable[str] = ()) -> list[dict[str, str | None]]:
    """One row per stage of ``preset`` (with ``overrides`` applied): ``{field: text}`` for :data:`STAGE_COLUMNS`;
    ``None`` marks a field the stage does not have (a network stage has no similarity, a linear one no
    regularisation), shown greyed out."""
    rows = []
    for stage in apply_overrides(preset_data(preset)[0], overrides)["stages"]:
        model = stage.get("model", "affine")
        network = "network" in stage
        row: dict[str, str | None] = {"model": model + (f" ({stage['network']})" if network else "")}
        for field in _EDITABLE:
            present = field in stage or (field == "regularisation_weight" and model == "svf")
            row[field] = _text(stage.get(field)) if present and not network else None
        rows.append(row)
    return rows


def _parse(field: str, text: str, where: str):
    text = text.strip()
    try:
        if field == "similarity":
            if not text:
                raise ValueError
            return text
        if field == "levels_mm":
            values = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
            if not values or min(values) <= 0:
                raise ValueError
            return values
        if field == "iterations":
            values = [int(v) for v in text.replace(";", ",").split(",") if v.strip()]
            if not values or min(values) < 0:
                raise ValueError
            return values if len(values) > 1 else values[0]
        value = float(text)
        if value < 0:
            raise ValueError
        return value
    except ValueError:
        expected = {"similarity": "a similarity name (ssd, ncc, lncc, mapped-lncc, mi, nmi, mind, learned:<model>)",
                    "levels_mm": "spacings in mm > 0, coarse to fine, e.g. 4, 2",
                    "iterations": "whole numbers >= 0, one per level, e.g. 60, 30",
                    "regularisation_weight": "a number >= 0"}[field]
        raise InputError(f"{where}: {text!r} is not {expected}") from None


def overrides_from_rows(preset: str, rows: list[dict[str, str | None]]) -> list[str]:
    """The overrides that turn ``preset`` into the edited ``rows`` (only what differs); errors name the stage and
    the column. Shape checks only; :func:`check_stage_overrides` validates against the engine."""
    original = stage_rows(preset)
    if len(rows) != len(original):
        raise InputError(f"the table has {len(rows)} stages but preset {preset!r} has {len(original)}")
    overrides = []
    for index, (row, before) in enumerate(zip(rows, original)):
        for field, heading in STAGE_COLUMNS[1:]:
            text = row.get(field)
            if before[field] is None or text is None or text.strip() == before[field]:
                continue
            value = _parse(field, text, f"stage {index + 1} ({before['model']}), {heading}")
            overrides.append(f"stages.{index}.{field}={json.dumps(value)}")
            if field == "similarity":  # the preset's options (an LNCC window...) belong to its similarity
                overrides.append(f"stages.{index}.similarity_options={{}}")
    return overrides


def check_stage_overrides(preset: str, overrides: Iterable[str]) -> None:
    """Refuse overrides the engine would refuse (unknown similarity, levels and iterations of different lengths,
    ...): raises :class:`InputError` naming the preset and the field."""
    from .presets import load_preset

    load_preset(preset, list(overrides))
