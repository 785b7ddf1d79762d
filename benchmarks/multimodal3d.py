"""Multimodal 3D with a known answer: time, peak memory and error of the multimodal presets.

The case (built from the ICBM152 2009a template in the nilearn wheel, as ``Testing/Python/fresh_data.py``):
* fixed: the T1 (197 x 233 x 189, 1 mm);
* moving: a proton-density-like contrast made from the template's tissue maps (CSF > grey > white matter), on
  an oblique slab of 0.9 x 0.9 x 2.4 mm, 200 x 240 x 50 voxels (120 mm thick: part of the head, as a thick-slice
  second sequence is), under a known rigid offset of 10 deg and 10 mm; ``--second-image head``: on the T1's own
  1 mm grid instead (the whole head, isotropic).

Each preset runs as ``deepreg register`` in its own process (peak resident memory from ``/usr/bin/time -v``);
the error is |T_est(x) - T(x)| in mm over the brain voxels of the fixed image that the slab covers.
``--peers elastix:rigid ants:Rigid+mi`` runs the peers on the same files, each in its own process, as
``benchmarks/registration.py`` runs them (time = registration from reading the images; peak = the process's),
with the same error measure.
Run: ``.venv/bin/python benchmarks/multimodal3d.py [--presets multimodal-rigid ...] [--set KEY=VALUE ...]
[--peers elastix:rigid ...] [--angles 10 -4 6] [--second-image slab|head]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "Testing" / "Python"), str(ROOT / "benchmarks")]

import DeepRegistrationLib as dr  # noqa: E402
from common import run_measured  # noqa: E402
from DeepRegistrationLib.transforms import rotation_matrix  # noqa: E402


#: ITK Euler angles (degrees) of the slab's axes: its third axis (the 2.4 mm one) is its normal
SLAB_TILT_DEG = (12.0, 0.0, -8.0)


def build(folder: Path, angles_deg=(10.0, -4.0, 6.0),
          second_image: str = "slab", contrast: str = "PD") -> tuple[dr.Transform, torch.Tensor]:
    """Write fixed.nii.gz and moving.nii.gz (the PD-like image, or with ``contrast="T1"`` the T1 itself, on the
    oblique slab, or with ``second_image="head"`` on the T1's grid); return the known transform (fixed -> moving)
    and the evaluation points (LPS mm)."""
    from fresh_data import icbm_tissues, pd_contrast

    t1, brain, csf, gm, wm = icbm_tissues()
    t1n = t1.data[0] / float(torch.quantile(t1.data[0][brain][::7], 0.995))
    pd = dr.Image(pd_contrast(t1n, brain, csf, gm, wm), t1.grid, "PD-like")
    t1.write(folder / "fixed.nii.gz")
    center = t1.grid.index_to_physical(torch.nonzero(brain).double().mean(0).flip(0).numpy()[None])[0]
    truth = dr.RigidTransform(np.radians(list(angles_deg)), [10.0, -6.0, 5.0], center=center)
    tilt = rotation_matrix(torch.tensor(np.radians(SLAB_TILT_DEG), dtype=torch.float64), 3).numpy()
    if second_image == "slab":
        grid = dr.Grid.centred(truth.map_points(center[None] + np.array([[0.0, 0.0, 15.0]]))[0], (200, 240, 50),
                               (0.9, 0.9, 2.4), tilt)
    else:
        grid = t1.grid
    dr.warp_image(t1 if contrast == "T1" else pd, truth.inverse(), grid).write(folder / "moving.nii.gz")
    pts = t1.grid.physical_points()[brain][::20]
    covered = grid.inside(grid.physical_to_index(truth.map_points(pts)))
    return truth, pts[covered]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["multimodal-rigid", "multimodal-affine",
                                                          "multimodal-deformable"])
    parser.add_argument("--set", action="append", default=[], help="override passed to every run")
    parser.add_argument("--keep", help="folder to keep the files in")
    parser.add_argument("--peers", nargs="*", default=[], help="methods of benchmarks/registration.py "
                        "(elastix:rigid, ants:Rigid+mi, ...) when installed")
    parser.add_argument("--angles", type=float, nargs=3, default=[10.0, -4.0, 6.0],
                        help="the known rotation (degrees, ITK Euler angles about the brain's centre)")
    parser.add_argument("--second-image", choices=["slab", "head"], default="slab",
                        help="the PD-like image on an oblique 2.4 mm slab, or on the T1's whole-head 1 mm grid")
    args = parser.parse_args()
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="deepreg-mm3d-"))
    folder.mkdir(parents=True, exist_ok=True)
    truth, pts = build(folder, args.angles, args.second_image)
    before = float((pts - truth.map_points(pts)).norm(dim=-1).mean())
    print(f"known rigid offset: mean displacement {before:.1f} mm over {len(pts)} brain points the second image covers")
    print("| preset | time (s) | peak memory (GB) | mean error (mm) | 95th pct (mm) | profile (per stage: time, "
          "peak memory so far) |")
    print("|---|---|---|---|---|---|")
    for preset in args.presets:
        out = folder / f"{preset}.h5"
        cmd = [sys.executable, "-m", "DeepRegistrationLib", "register", "--fixed",
               str(folder / "fixed.nii.gz"), "--moving", str(folder / "moving.nii.gz"), "--preset", preset,
               "--out-transform", str(out), "--progress", "json"] + [a for s in args.set for a in ("--set", s)]
        result, wall, peak_gb = run_measured(cmd, ROOT)
        if result.returncode != 0:
            tail = [ln for ln in result.stderr.splitlines() if "deepreg" in ln or "Command" in ln][-2:]
            print(f"| {preset} | {wall:.1f} | {peak_gb:.2f} | failed: {tail} | |")
            continue
        estimate = dr.read_transform(out)
        err = (estimate.map_points(pts) - truth.map_points(pts)).norm(dim=-1)
        figures = json.loads(result.stdout.strip().splitlines()[-1])["figures"]
        profile = "; ".join(f"{s['model']} {s['time_s']:.1f} s, {s['peak_resident_gb']:.2f} GB"
                            for s in figures["stages"])
        print(f"| {preset} | {wall:.1f} | {peak_gb:.2f} | {float(err.mean()):.3f} | "
              f"{float(torch.quantile(err, 0.95)):.2f} | pyramid {figures['pyramid_time_s']:.1f} s; {profile} |",
              flush=True)
    for method in args.peers:
        out = folder / (method.replace(":", "_").replace("+", "_") + ".h5")
        cmd = [sys.executable, str(ROOT / "benchmarks" / "registration.py"), "--_child", method,
               str(folder / "fixed.nii.gz"), str(folder / "moving.nii.gz"), str(out)]
        result, wall, _ = run_measured(cmd, ROOT)
        if result.returncode != 0:
            print(f"| {method} | {wall:.1f} | | failed: {result.stderr.strip().splitlines()[-1:]} | |")
            continue
        figures = json.loads(result.stdout.strip().splitlines()[-1])
        err = (dr.read_transform(out).map_points(pts) - truth.map_points(pts)).norm(dim=-1)
        print(f"| {method} (peer) | {figures['time_s']:.1f} (process {wall:.1f}) | {figures['peak_gb']:.2f} | "
              f"{float(err.mean()):.3f} | {float(torch.quantile(err, 0.95)):.2f} | |", flush=True)


if __name__ == "__main__":
    main()
