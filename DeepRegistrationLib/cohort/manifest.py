"""The manifest of a cohort run (``OUT/manifest.json``): for each pair its inputs' checksums, preset, status,
attempts, figures and error. It makes a run resumable: a rerun skips the pairs that are ``done`` with the same
inputs (same sha256, same preset) and outputs still in place, and runs the others again.

Only the process that drives the run writes the manifest (workers return their figures to it), after every pair,
atomically (a killed driver leaves the previous complete manifest, never half of one).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..errors import InputError
from ..io.atomic import atomic_output
from ..io.checksums import file_sha256
from .pairs import PairSpec

__all__ = ["Manifest", "input_checksums", "MANIFEST", "STATUSES"]

MANIFEST = "manifest.json"
VERSION = 1
#: ``pending``: not run yet; ``running``: submitted (a driver that died leaves these, which a rerun runs again);
#: ``done``: outputs written; ``failed``: the pair's error is recorded.
STATUSES = ("pending", "running", "done", "failed")


def input_checksums(spec: PairSpec) -> dict[str, str | None]:
    """sha256 of every input file of ``spec`` by column (None for a missing file: that pair will fail, saying so)."""
    sums: dict[str, str | None] = {}
    for column, path in spec.files().items():
        try:
            sums[column] = file_sha256(path)
        except OSError:
            sums[column] = None
    return sums


class Manifest:
    """The records of a run's pairs, keyed by pair id; :meth:`save` writes them."""

    def __init__(self, path: str | os.PathLike, records: dict[str, dict] | None = None, meta: dict | None = None):
        self.path = Path(path)
        self.records: dict[str, dict] = records or {}
        self.meta: dict = meta or {}

    @classmethod
    def load(cls, out_dir: str | os.PathLike) -> "Manifest":
        """The manifest in ``out_dir`` (empty when there is none yet)."""
        path = Path(out_dir) / MANIFEST
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("version") != VERSION or not isinstance(data.get("pairs"), dict):
                raise ValueError("not a manifest of this version")
        except (ValueError, OSError) as err:
            raise InputError(f"{path}: unreadable manifest ({err}); move it away to start the run afresh") from None
        return cls(path, data["pairs"], data.get("meta", {}))

    def save(self) -> None:
        data = {"version": VERSION, "meta": self.meta, "pairs": self.records}
        with atomic_output(self.path, verify=False) as tmp:
            tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")

    def plan(self, spec: PairSpec, out_dir: Path) -> tuple[bool, dict[str, str | None]]:
        """(whether ``spec`` must run, its inputs' checksums). It must unless its record is ``done`` with the same
        preset, the same checksums and every output it recorded still present."""
        sums = input_checksums(spec)
        record = self.records.get(spec.id)
        if not record or record.get("status") != "done":
            return True, sums
        same = record.get("spec") == spec.to_dict() and record.get("checksums") == sums
        present = all((out_dir / rel).is_file() for rel in record.get("outputs", {}).values())
        return not (same and present), sums

    def mark(self, spec: PairSpec, status: str, **fields) -> dict:
        """Set a pair's status (and fields such as ``figures``, ``error``, ``checksums``); returns its record."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}")
        record = self.records.setdefault(spec.id, {})
        if status in ("pending", "running"):  # a new attempt: the last outcome no longer holds
            for key in ("error", "figures", "outputs"):
                record.pop(key, None)
        record.update(spec=spec.to_dict(), status=status, updated=time.strftime("%Y-%m-%dT%H:%M:%S"), **fields)
        return record

    def counts(self, ids: list[str] | None = None) -> dict[str, int]:
        """How many pairs (of ``ids``, default all) are in each status."""
        out = dict.fromkeys(STATUSES, 0)
        for key, record in self.records.items():
            if ids is None or key in ids:
                out[record["status"]] += 1
        return out
