"""Read and write point sets (landmarks) as ``(N, dim)`` float64 arrays in **LPS millimetres**.

Formats:
* ``.csv``: one point per row, ``x,y[,z]`` physical LPS mm; a header row names the columns (``x``, ``y``,
  ``z``; others such as ``id`` or ``label`` are left out); without one, a non-numeric first column is a label.
* ``.txt``: elastix/transformix point sets: first line ``point`` (physical LPS mm) or ``index``
  (voxel indices, needs ``reference`` to convert), second line the count, then one point per line.
* ``.fcsv`` / ``.mrk.json``: 3D Slicer markups (RAS or LPS as their header says; converted to LPS).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..geometry import Grid, lps_from_ras_points
from .atomic import atomic_output, full_suffix

__all__ = ["read_points", "write_points"]


def read_points(path: str | os.PathLike, reference: Grid | None = None, dim: int | None = None) -> np.ndarray:
    """Read a point set as ``(N, dim)`` LPS mm. ``reference``: grid for elastix ``index`` files."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    name = path.name.lower()
    try:
        if name.endswith(".mrk.json"):
            pts = _read_markups_json(path)
        elif name.endswith(".fcsv"):
            pts = _read_fcsv(path)
        elif full_suffix(path) == ".txt":
            pts = _read_elastix(path, reference)
        elif full_suffix(path) == ".csv":
            pts = _read_csv(path)
        else:
            raise InputError(f"{path}: unsupported point file type (use .csv, elastix .txt, .fcsv or .mrk.json)")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, UnicodeDecodeError) as err:
        if isinstance(err, InputError):
            raise
        raise InputError(f"{path}: cannot parse point file: {err}") from None
    if pts.ndim != 2 or pts.shape[0] == 0:
        raise InputError(f"{path}: holds no points")
    if pts.shape[1] not in (2, 3):
        raise InputError(f"{path}: points must have 2 or 3 coordinates, got {pts.shape[1]}")
    if dim is not None and pts.shape[1] != dim:
        raise InputError(f"{path}: {dim}D points are needed, got {pts.shape[1]}D")
    if not np.isfinite(pts).all():
        raise InputError(f"{path}: holds NaN or infinite coordinates")
    return pts


def write_points(points: np.ndarray, path: str | os.PathLike) -> None:
    """Write ``(N, dim)`` LPS mm points as CSV with a header row, atomically."""
    pts = np.asarray(points, dtype=np.float64)
    if full_suffix(path) != ".csv":
        raise InputError(f"{path}: points are written as .csv")
    header = ["x", "y", "z"][: pts.shape[1]]
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows([[repr(float(v)) for v in row] for row in pts])


_COORDINATE_NAMES = ("x", "y", "z")
_LABEL_NAMES = {"id", "label", "name", "index", "point", "landmark"}


def _read_csv(path: Path) -> np.ndarray:
    """Rows of numbers; a header row names the columns: ``x``, ``y`` (and ``z``) are the coordinates and any
    other column (``id``, ``label``...) is left out. Without a header, a non-numeric first column is a label."""
    with open(path, newline="") as fh:
        rows = [[c.strip() for c in row] for row in csv.reader(fh)]
    rows = [r for r in rows if any(r) and not r[0].startswith("#")]
    if not rows:
        return np.zeros((0, 0))
    columns = None
    if not any(_is_number(c) for c in rows[0] if c):  # a header row
        names = [c.lower() for c in rows[0]]
        rows = rows[1:]
        coords = [names.index(n) for n in _COORDINATE_NAMES if n in names]
        if coords:
            if [names[i] for i in coords] not in (["x", "y"], ["x", "y", "z"]):
                raise InputError(f"{path}: header {names} names coordinates {[names[i] for i in coords]};"
                                 " x, y (and z) are needed")
            columns = coords
        else:
            unknown = [n for n in names if n not in _LABEL_NAMES and n]
            columns = [i for i, n in enumerate(names) if n not in _LABEL_NAMES]
            if len(unknown) != len(columns):
                columns = None
    out = []
    for number, row in enumerate(rows, start=2 if columns is not None else 1):
        if columns is not None:
            cells = [row[i] if i < len(row) else "" for i in columns]
        else:
            cells = [c for c in row if c != ""]
            if cells and not _is_number(cells[0]):
                cells = cells[1:]  # a leading label column
        try:
            out.append([float(c) for c in cells])
        except ValueError:
            raise InputError(f"{path}: row {number} {row!r} is not numeric") from None
    lengths = {len(r) for r in out}
    if len(lengths) > 1:
        raise InputError(f"{path}: rows have different numbers of coordinates {sorted(lengths)}")
    return np.asarray(out, dtype=np.float64)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _read_elastix(path: Path, reference: Grid | None) -> np.ndarray:
    lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    kind = lines[0][0].lower()
    if kind not in ("point", "index"):
        raise InputError(f"{path}: elastix point files start with 'point' or 'index', got {lines[0][0]!r}")
    count = int(lines[1][0])
    pts = np.asarray([[float(v) for v in ln] for ln in lines[2:]], dtype=np.float64)
    if pts.shape[0] != count:
        raise InputError(f"{path}: header says {count} points, file holds {pts.shape[0]}")
    if kind == "index":
        if reference is None:
            raise InputError(f"{path}: holds voxel indices; a reference image is needed to convert them to mm")
        pts = reference.index_to_physical(pts)
    return pts


def _read_fcsv(path: Path) -> np.ndarray:
    ras = True
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.startswith("#"):
            if "CoordinateSystem" in line:
                ras = not ("LPS" in line or "= 1" in line)
            continue
        if line.strip():
            cells = line.split(",")
            try:
                rows.append([float(c) for c in cells[1:4]])
            except ValueError:
                raise InputError(f"{path}: line {number} is not an fcsv point (id,x,y,z,...)") from None
            if len(rows[-1]) != 3:
                raise InputError(f"{path}: line {number} is not an fcsv point (id,x,y,z,...)")
    pts = np.asarray(rows, dtype=np.float64)
    return lps_from_ras_points(pts) if ras and len(pts) else pts


def _read_markups_json(path: Path) -> np.ndarray:
    doc = json.loads(path.read_text())
    markups = doc.get("markups") if isinstance(doc, dict) else None
    if not isinstance(markups, list):
        raise InputError(f"{path}: not a Slicer markups file (needs a 'markups' list at the top level)")
    pts = []
    for markup in markups:
        if not isinstance(markup, dict):
            raise InputError(f"{path}: each entry of 'markups' must be an object")
        system = markup.get("coordinateSystem", "LPS")
        if not isinstance(system, str) or system.upper() not in ("LPS", "RAS"):
            raise InputError(f"{path}: coordinateSystem must be \"LPS\" or \"RAS\", got {system!r}")
        points = markup.get("controlPoints", [])
        if not isinstance(points, list):
            raise InputError(f"{path}: controlPoints must be a list")
        for cp in points:
            position = cp.get("position") if isinstance(cp, dict) else None
            if not isinstance(position, list) or len(position) != 3:
                raise InputError(f"{path}: a control point needs a 3-number 'position'")
            p = np.asarray(position, dtype=np.float64)
            pts.append(p if system.upper() == "LPS" else lps_from_ras_points(p))
    return np.asarray(pts, dtype=np.float64)
