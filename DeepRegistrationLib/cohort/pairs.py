"""The pairs of a cohort run: read from a table (``PAIRS.csv``) or made all-to-one (every image onto a template).

A pair names its files; nothing is read here but the table itself, so a pair with a missing or corrupt file is
reported by its own task and never stops the others. Paths in a table are relative to the table's folder.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import InputError
from ..io.formats import IMAGE_SUFFIXES
from ..io.atomic import full_suffix

__all__ = ["PairSpec", "read_pairs", "all_to_one", "COLUMNS"]

#: The columns a pairs table may have; ``fixed`` and ``moving`` are required, the others optional per row.
COLUMNS = ("id", "fixed", "moving", "preset", "fixed_mask", "moving_mask", "fixed_labels", "moving_labels",
           "fixed_landmarks", "moving_landmarks")
FILE_COLUMNS = tuple(c for c in COLUMNS if c not in ("id", "preset"))


@dataclass(frozen=True)
class PairSpec:
    """One registration of a cohort: ``moving`` onto ``fixed`` with ``preset`` (the resampling transform fixed ->
    moving, as ``deepreg register`` writes it); labels and landmarks only for the figures (Dice, TRE)."""

    id: str
    fixed: str
    moving: str
    preset: str
    fixed_mask: str | None = None
    moving_mask: str | None = None
    fixed_labels: str | None = None
    moving_labels: str | None = None
    fixed_landmarks: str | None = None
    moving_landmarks: str | None = None

    def files(self) -> dict[str, str]:
        """Every input file of the pair, by column."""
        return {c: getattr(self, c) for c in FILE_COLUMNS if getattr(self, c)}

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _stem(path: str) -> str:
    name = Path(path).name
    suffix = full_suffix(name)
    return name[: len(name) - len(suffix)] if suffix else name


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "pair"


def _unique_ids(rows: list[dict]) -> list[PairSpec]:
    seen: dict[str, int] = {}
    specs = []
    for row in rows:
        base = _safe_id(row.pop("id", None) or f"{_stem(row['moving'])}_to_{_stem(row['fixed'])}")
        count = seen.get(base, 0)
        seen[base] = count + 1
        specs.append(PairSpec(id=base if count == 0 else f"{base}_{count + 1}", **row))
    return specs


def read_pairs(table: str | os.PathLike, preset: str = "deformable-fast") -> list[PairSpec]:
    """The pairs of a CSV table (header row: :data:`COLUMNS`, ``fixed`` and ``moving`` required; an empty
    ``preset`` cell takes ``preset``). Relative paths are resolved against the table's folder."""
    path = Path(table)
    if not path.is_file():
        raise InputError(f"{path}: no such pairs table")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        unknown = sorted(set(header) - set(COLUMNS))
        if unknown:
            raise InputError(f"{path}: unknown column(s) {', '.join(unknown)}; the columns are {', '.join(COLUMNS)}")
        if not {"fixed", "moving"} <= set(header):
            raise InputError(f"{path}: needs the columns fixed and moving (found {', '.join(header) or 'none'})")
        rows = []
        for line, raw in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            if not any(row.values()):
                continue
            if not row.get("fixed") or not row.get("moving"):
                raise InputError(f"{path}, line {line}: fixed and moving are required")
            spec = {k: v for k, v in row.items() if v}
            for column in FILE_COLUMNS:
                if column in spec:
                    spec[column] = str((path.parent / spec[column]).resolve())
            spec.setdefault("preset", preset)
            rows.append(spec)
    if not rows:
        raise InputError(f"{path}: no pairs in the table")
    return _unique_ids(rows)


def all_to_one(template: str | os.PathLike, images: str | os.PathLike | list, preset: str = "deformable-fast"
               ) -> list[PairSpec]:
    """Every image (a folder's image files, or a list of paths) registered onto ``template`` (the fixed image)."""
    if isinstance(images, (str, os.PathLike)):
        folder = Path(images)
        if not folder.is_dir():
            raise InputError(f"{folder}: no such folder of images")
        paths = sorted(p for p in folder.iterdir() if p.is_file() and full_suffix(p.name) in IMAGE_SUFFIXES)
        if not paths:
            raise InputError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    else:
        paths = [Path(p) for p in images]
    fixed = str(Path(template).resolve())
    rows = [{"fixed": fixed, "moving": str(p.resolve()), "preset": preset} for p in paths
            if p.resolve() != Path(fixed)]
    if not rows:
        raise InputError("no image to register onto the template")
    return _unique_ids(rows)
