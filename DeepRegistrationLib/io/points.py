"""Read and write point sets (landmarks) as ``(N, dim)`` float64 arrays in **LPS millimetres**.

Formats:
* ``.csv``: one point per row, ``x,y[,z]`` physical LPS mm; an optional header row (e.g. ``x,y,z``)
  and an optional leading ``label``/``id`` column are accepted.
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
    except (ValueError, KeyError, IndexError, json.JSONDecodeError) as err:
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


def _read_csv(path: Path) -> np.ndarray:
    rows = []
    with open(path, newline="") as fh:
        for row in csv.reader(fh):
            cells = [c.strip() for c in row if c.strip() != ""]
            if not cells or cells[0].startswith("#"):
                continue
            try:
                values = [float(c) for c in cells]
            except ValueError:
                if not rows and all(not _is_number(c) for c in cells):
                    continue  # header row
                try:  # leading label column
                    values = [float(c) for c in cells[1:]]
                except ValueError:
                    raise InputError(f"{path}: row {row!r} is not numeric") from None
            rows.append(values)
    lengths = {len(r) for r in rows}
    if len(lengths) > 1:
        raise InputError(f"{path}: rows have different numbers of coordinates {sorted(lengths)}")
    return np.asarray(rows, dtype=np.float64)


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
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            if "CoordinateSystem" in line:
                ras = not ("LPS" in line or "= 1" in line)
            continue
        if line.strip():
            cells = line.split(",")
            rows.append([float(c) for c in cells[1:4]])
    pts = np.asarray(rows, dtype=np.float64)
    return lps_from_ras_points(pts) if ras else pts


def _read_markups_json(path: Path) -> np.ndarray:
    doc = json.loads(path.read_text())
    markups = doc["markups"]
    pts = []
    for markup in markups:
        lps = markup.get("coordinateSystem", "LPS").upper() == "LPS"
        for cp in markup.get("controlPoints", []):
            p = np.asarray(cp["position"], dtype=np.float64)
            pts.append(p if lps else lps_from_ras_points(p))
    return np.asarray(pts, dtype=np.float64)
