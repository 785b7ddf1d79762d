"""The report of a cohort run: ``summary.csv`` (one row per pair) and ``report.md`` (the same table with each
pair's thumbnail, outliers flagged).

An outlier is a finished pair whose Dice is low, or whose TRE or folding is high, against the run: more than 3
robust standard deviations (1.4826 x the median absolute deviation) from the median, when at least 4 pairs have
the figure; folding above 1 % of the voxels is always flagged. Failed pairs are listed with their error.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_output
from .manifest import Manifest

__all__ = ["write_report", "outliers", "SUMMARY_COLUMNS"]

SUMMARY_COLUMNS = ("id", "status", "preset", "fixed", "moving", "attempts", "registration_s", "dice_before", "dice",
                   "tre_mean_mm", "folding_percent", "std_log_jacobian", "outlier", "error")


def _row(pair_id: str, record: dict) -> dict:
    figures = record.get("figures", {})
    spec = record.get("spec", {})
    return {"id": pair_id, "status": record["status"], "preset": spec.get("preset"), "fixed": spec.get("fixed"),
            "moving": spec.get("moving"), "attempts": record.get("attempts", 0),
            "registration_s": figures.get("registration_s"), "dice_before": figures.get("dice_before"),
            "dice": figures.get("dice"), "tre_mean_mm": figures.get("tre_mm", {}).get("mean"),
            "folding_percent": figures.get("folding_percent"), "std_log_jacobian": figures.get("std_log_jacobian"),
            "outlier": "", "error": record.get("error", "")}


def outliers(rows: list[dict]) -> dict[str, list[str]]:
    """Reasons each finished pair is an outlier (see the module's description), by pair id."""
    reasons: dict[str, list[str]] = {r["id"]: [] for r in rows}
    done = [r for r in rows if r["status"] == "done"]
    for key, worse in (("dice", -1), ("tre_mean_mm", 1), ("folding_percent", 1)):
        values = np.array([r[key] for r in done if r[key] is not None], dtype=float)
        if len(values) < 4:
            continue
        median = float(np.median(values))
        spread = 1.4826 * float(np.median(np.abs(values - median)))
        for r in done:
            if r[key] is not None and spread > 0 and worse * (r[key] - median) > 3 * spread:
                reasons[r["id"]].append(f"{key} {r[key]:.3g} (median {median:.3g})")
    for r in done:
        if (r["folding_percent"] or 0) > 1.0 and not any(s.startswith("folding") for s in reasons[r["id"]]):
            reasons[r["id"]].append(f"folding {r['folding_percent']:.2f} %")
    return reasons


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def write_report(manifest: Manifest, out_dir: Path, ids: list[str]) -> Path:
    """Write ``summary.csv`` and ``report.md`` for the pairs ``ids`` into ``out_dir``; return the report's path."""
    rows = [_row(i, manifest.records[i]) for i in ids if i in manifest.records]
    flagged = outliers(rows)
    for r in rows:
        r["outlier"] = "; ".join(flagged[r["id"]])
    with atomic_output(out_dir / "summary.csv", verify=False) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=SUMMARY_COLUMNS)
            writer.writeheader()
            writer.writerows({k: _cell(v) for k, v in r.items()} for r in rows)
    done = [r for r in rows if r["status"] == "done"]
    lines = [f"# Cohort run: {len(done)} of {len(rows)} pairs registered", ""]
    for key, label in (("dice", "mean Dice"), ("tre_mean_mm", "mean TRE mm"), ("registration_s", "time s")):
        values = [r[key] for r in done if r[key] is not None]
        if values:
            lines.append(f"- {label}: median {np.median(values):.3f}, range {min(values):.3f} - {max(values):.3f}")
    lines += ["", "Thumbnail: checkerboard of the fixed and the warped moving image (middle slice) | Jacobian "
              "determinant (blue < 1 < red, black: folding).", "",
              "| pair | status | Dice (before) | TRE mm | folding % | time s | outlier | thumbnail |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        record = manifest.records[r["id"]]
        thumb = record.get("outputs", {}).get("thumbnail")
        dice = f"{r['dice']:.3f} ({r['dice_before']:.3f})" if r["dice"] is not None else ""
        status = r["status"] if r["status"] != "failed" else f"failed: {r['error']}"
        lines.append(f"| {r['id']} | {status} | {dice} | {_cell(r['tre_mean_mm'])} | {_cell(r['folding_percent'])} | "
                     f"{_cell(r['registration_s'])} | {r['outlier'] or ''} | {f'![]({thumb})' if thumb else ''} |")
    path = out_dir / "report.md"
    with atomic_output(path, verify=False) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
