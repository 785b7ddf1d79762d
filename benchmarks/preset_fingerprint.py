"""Fingerprint of every preset: where its transform maps a lattice of fixed-image points (LPS mm).

A refactoring that must not change results runs this before and after and compares the two files:

    .venv/bin/python benchmarks/preset_fingerprint.py save before.npz        # on the old commit
    .venv/bin/python benchmarks/preset_fingerprint.py save after.npz         # on the new one
    .venv/bin/python benchmarks/preset_fingerprint.py compare before.npz after.npz

Cases (real data from ../shared/data): the OASIS pair 0002 -> 0001 at full resolution (monomodal and network
presets), the same pair resampled to 2 mm (the multimodal presets, which do not fit the full pair in memory),
and the 2D BrainWeb T1 -> shifted PD slice (every preset without a 3D network). For each (case, preset) the
file holds the mapped positions of a 9^d lattice spanning the fixed image; ``compare`` prints the largest
distance (mm) per entry and exits 1 when any exceeds ``--tolerance`` (1e-4 mm by default).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"


def _lattice(grid, n: int = 9) -> np.ndarray:
    """``n^d`` points spanning the grid's voxel centres, LPS mm."""
    axes = [np.linspace(0, s - 1, n) for s in grid.size]
    index = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, grid.dim)
    return grid.index_to_physical(index)


def _cases():
    import DeepRegistrationLib as dr

    oasis = str(DATA / "brain3d" / "oasis" / "OAS1_{}_MR1_aligned_norm.nii.gz")
    fixed, moving = dr.read_image(oasis.format("0001")), dr.read_image(oasis.format("0002"))
    yield "oasis", fixed, moving, lambda p: not p.startswith("multimodal")
    coarse = [fixed.grid.with_spacing([2.0] * 3), moving.grid.with_spacing([2.0] * 3)]
    yield "oasis2mm", fixed.resample_to(coarse[0]), moving.resample_to(coarse[1]), lambda p: p.startswith("multimodal")
    mm2d = DATA / "multimodal2d"
    t1 = dr.read_image(mm2d / "BrainT1Slice.png").to_grayscale()
    pd = dr.read_image(mm2d / "BrainProtonDensitySliceShifted13x17y.png").to_grayscale()
    yield "brainweb2d", t1, pd, lambda p: not p.startswith("voxelmorph")


def save(path: str, only: list[str], cases: list[str]) -> None:
    from DeepRegistrationLib.registration import list_presets, load_preset, register

    torch.set_num_threads(2)
    out: dict[str, np.ndarray] = {}
    for case, fixed, moving, wanted in _cases():
        if cases and case not in cases:
            continue
        points = _lattice(fixed.grid)
        for preset in sorted(list_presets()):
            if not wanted(preset) or (only and preset not in only):
                continue
            start = time.perf_counter()
            result = register(fixed, moving, load_preset(preset), device="cpu")
            mapped = result.transform.map_points(torch.as_tensor(points)).detach().cpu().numpy()
            out[f"{case}/{preset}"] = mapped
            np.savez(path, **out)  # after every entry: an interrupted run keeps what it measured
            print(f"{case:11s} {preset:22s} {time.perf_counter() - start:6.1f} s", flush=True)


def compare(a_path: str, b_path: str, tolerance: float) -> int:
    a, b = np.load(a_path), np.load(b_path)
    worst = 0.0
    for key in sorted(set(a.files) | set(b.files)):
        if key not in a.files or key not in b.files:
            print(f"{key:36s} only in {'the first' if key in a.files else 'the second'} file")
            worst = float("inf")
            continue
        d = float(np.linalg.norm(a[key] - b[key], axis=-1).max())
        worst = max(worst, d)
        print(f"{key:36s} max {d:.2e} mm")
    print(f"largest difference {worst:.2e} mm (tolerance {tolerance:g} mm)")
    return int(worst > tolerance)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("save")
    s.add_argument("out")
    s.add_argument("--presets", nargs="*", default=[])
    s.add_argument("--cases", nargs="*", default=[], help="oasis, oasis2mm, brainweb2d (default: all)")
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()
    if args.command == "save":
        save(args.out, args.presets, args.cases)
        return 0
    return compare(args.a, args.b, args.tolerance)


if __name__ == "__main__":
    sys.exit(main())
