"""Recovery of known transforms: 3D rigid/affine on an anisotropic real brain, BrainWeb 2D (mono- and
multimodal), and lung masks with 100 landmarks (TRE). Prints one Markdown table.

* 3D: the ICBM152 2009a T1 resampled to 1.0 x 1.2 x 1.5 mm (fixed) and the same brain rotated by 10 deg
  about the L-R axis and moved 10 mm (moving, 1 mm). Error = mean |T(x) - truth(x)| over brain voxels.
  With itk-elastix installed, elastix's default rigid (Euler) run is timed on the same pair.
* 2D BrainWeb (``multimodal2d``): PD and T1 vs PD shifted by (13, 17) px, and vs PD rotated 10 deg and
  shifted (ITK's answer: 10.00 deg, (13.09, 15.92) px).
* Lung: inhale/exhale lung masks (ITKElastix example), 100 corresponding landmarks; TRE before/after.

Run:  .venv/bin/python benchmarks/known_transforms.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("DEEPREG_SHARED_DATA", ROOT.parent / "shared" / "data"))


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def rigid_3d(rows: list) -> None:
    import DeepRegistrationLib as dr
    from DeepRegistrationLib.registration import load_preset, register
    from DeepRegistrationLib.transforms import RigidTransform

    t1 = dr.read_image(DATA / "brain3d/icbm152_2009a/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    g = t1.grid
    spacing = (1.0, 1.2, 1.5)
    grid = dr.Grid([int(n * s0 / s) for n, s0, s in zip(g.size, g.spacing, spacing)], g.origin, spacing,
                   g.direction_matrix())
    fixed = t1.resample_to(grid)
    truth = RigidTransform(np.radians([10.0, 0.0, 0.0]), [10.0, 0.0, 0.0], center=grid.center())  # fixed -> moving
    moving = dr.warp_image(t1, truth.inverse(), g)
    idx = np.argwhere(fixed.numpy() > 0.1 * float(fixed.data.max()))[::20, ::-1].astype(np.float64)
    pts = grid.index_to_physical(idx)
    before = np.linalg.norm(pts - truth.map_points(pts), axis=1).mean()
    for preset in ("rigid", "affine"):
        result, seconds = _timed(lambda: register(fixed, moving, load_preset(preset), device="cpu"))
        err = np.linalg.norm(result.transform.map_points(pts) - truth.map_points(pts), axis=1)
        rows.append((f"3D {preset}: ICBM T1 1.0x1.2x1.5 mm, 10 deg + 10 mm", f"preset {preset}",
                     f"mean point error {before:.1f} -> {err.mean():.3f} mm (max {err.max():.3f})", f"{seconds:.1f} s"))
    try:
        import itk
    except ImportError:
        return
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        fixed.write(Path(tmp) / "f.nii.gz")
        moving.write(Path(tmp) / "m.nii.gz")
        f = itk.imread(str(Path(tmp) / "f.nii.gz"), itk.F)
        m = itk.imread(str(Path(tmp) / "m.nii.gz"), itk.F)
        params = itk.ParameterObject.New()
        params.AddParameterMap(params.GetDefaultParameterMap("rigid"))
        (_, tparams), seconds = _timed(lambda: itk.elastix_registration_method(f, m, parameter_object=params,
                                                                              log_to_console=False))
        values = [float(v) for v in tparams.GetParameterMap(0)["TransformParameters"]]
        center = [float(v) for v in tparams.GetParameterMap(0)["CenterOfRotationPoint"]]
        est = RigidTransform(values[:3], values[3:], center=center)
        err = np.linalg.norm(est.map_points(pts) - truth.map_points(pts), axis=1)
        rows.append(("3D rigid (same pair)", "elastix default rigid", f"mean point error {err.mean():.3f} mm",
                     f"{seconds:.1f} s"))


def brainweb_2d(rows: list) -> None:
    import DeepRegistrationLib as dr
    from DeepRegistrationLib.registration import load_preset, register

    def png(name):
        return dr.read_image(DATA / "multimodal2d" / name, grayscale=True)

    pd, t1 = png("BrainProtonDensitySliceBorder20.png"), png("BrainT1SliceBorder20.png")
    cases = [("PD vs PD shifted (13, 17) px", pd, "BrainProtonDensitySliceShifted13x17y.png", "rigid", (0.0, 13.0, 17.0)),
             ("T1 vs PD shifted (13, 17) px", t1, "BrainProtonDensitySliceShifted13x17y.png", "multimodal-rigid",
              (0.0, 13.0, 17.0)),
             ("PD vs PD rotated 10 deg, shifted", pd, "BrainProtonDensitySliceR10X13Y17.png", "rigid", (10.0, 13.09, 15.92)),
             ("T1 vs PD rotated 10 deg, shifted", t1, "BrainProtonDensitySliceR10X13Y17.png", "multimodal-rigid",
              (10.0, 13.09, 15.92))]
    for title, fixed, moving_name, preset, (angle, tx, ty) in cases:
        moving = png(moving_name)
        result, seconds = _timed(lambda: register(fixed, moving, load_preset(preset), device="cpu", initialise="center"))
        d = result.transform.describe()
        got = (d["angles_deg"][0], *d["translation_mm"])
        rows.append((f"2D BrainWeb: {title}", f"preset {preset}",
                     f"{got[0]:.2f} deg, ({got[1]:.2f}, {got[2]:.2f}) px; truth {angle:.2f} deg, ({tx:.2f}, {ty:.2f})",
                     f"{seconds:.1f} s"))


def lung_masks(rows: list) -> None:
    import DeepRegistrationLib as dr
    from DeepRegistrationLib.metrics import target_registration_error
    from DeepRegistrationLib.registration import load_preset, register

    lung = DATA / "lung_ct"
    fixed = dr.read_image(lung / "itkelastix_CT_3D_lung_fixed_mask.mha").float()
    moving = dr.read_image(lung / "itkelastix_CT_3D_lung_moving_mask.mha").float()
    fp = dr.read_points(lung / "itkelastix_CT_3D_lung_fixed_point_set.txt", reference=fixed.grid)
    mp = dr.read_points(lung / "itkelastix_CT_3D_lung_moving_point_set.txt", reference=moving.grid)
    before = np.linalg.norm(fp - mp, axis=1).mean()
    for preset, overrides in (("affine", ["similarity=ssd"]), ("deformable-fast", ["similarity=ssd", "similarity_options={}"])):
        result, seconds = _timed(lambda: register(fixed, moving, load_preset(preset, overrides), device="cpu"))
        tre = target_registration_error(result.transform, fp, mp)
        rows.append(("3D lung masks, 100 landmarks", f"preset {preset} (SSD)",
                     f"TRE {before:.1f} -> {tre['mean']:.1f} mm (p95 {tre['p95']:.1f})",
                     f"{seconds:.1f} s"))


def main() -> int:
    import torch

    torch.set_num_threads(int(os.environ.get("DEEPREG_THREADS", "2")))
    rows: list = []
    for part in (rigid_3d, brainweb_2d, lung_masks):
        try:
            part(rows)
        except FileNotFoundError as err:
            print(f"{part.__name__}: data missing ({err})", file=sys.stderr)
        print(f"{part.__name__} done", file=sys.stderr, flush=True)
    print("| case | method | result | time (2 cores) |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
