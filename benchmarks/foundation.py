"""Foundation benchmark: accuracy of the library's geometry against SimpleITK, and speed, at full size.

Run:  .venv/bin/python benchmarks/foundation.py [--data ../shared/data]
Prints a Markdown table (accuracy in mm / fraction of intensity range, wall time on this machine).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import DeepRegistrationLib as dr  # noqa: E402
from DeepRegistrationLib.io.transforms import read_fsl_displacement_field  # noqa: E402
from DeepRegistrationLib.metrics.report import evaluate_transform  # noqa: E402
from DeepRegistrationLib.synthetic import known_transform, oblique_grid  # noqa: E402


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    args = parser.parse_args()
    data = Path(args.data)
    torch.set_num_threads(int(os.environ.get("DEEPREG_THREADS", "2")))
    rows = []

    t1 = dr.read_image(data / "brain3d/oasis/OAS1_0001_MR1_aligned_norm.nii.gz")
    image = t1.resample_to(oblique_grid(t1.grid))  # 0.9 x 1.2 x 2.5 mm, oblique
    transform = known_transform(image.grid.center())
    with tempfile.TemporaryDirectory() as tmp:
        dr.write_transform(transform, Path(tmp) / "T.h5")
        tx = sitk.ReadTransform(str(Path(tmp) / "T.h5"))
    ours, t_ours = timed(lambda: dr.warp_image(image, transform, image).numpy())
    s_img = image.to_sitk()
    theirs, t_sitk = timed(lambda: sitk.GetArrayFromImage(sitk.Resample(s_img, s_img, tx, sitk.sitkLinear, 0.0,
                                                                         sitk.sitkFloat32)))
    rng = float(image.data.max() - image.data.min())
    pts = image.grid.index_to_physical(np.random.default_rng(0).uniform(0, 1, (2000, 3)) * (np.asarray(image.grid.size) - 1))
    point_err = np.abs(transform.map_points(pts) - np.array([tx.TransformPoint(p.tolist()) for p in pts])).max()
    rows.append(("warp OASIS T1 (oblique 0.9x1.2x2.5 mm, %s) by rigid+affine+field: library vs SimpleITK.Resample"
                 % "x".join(map(str, image.grid.size)),
                 f"max diff {np.abs(ours - theirs).max() / rng:.1e} of range; points max {point_err:.1e} mm",
                 f"{t_ours:.2f} s (SimpleITK {t_sitk:.2f} s)"))

    field = read_fsl_displacement_field(data / "deformation/ds-005_sub-01_from-OASIS_to-T1_warp_fsl.nii.gz")
    inverse, t_inv = timed(field.inverse)
    r = inverse.inverse_residual_mm
    rows.append(("numerical inverse of the real FSL warp (108x146x128 at 2 mm, up to %.1f mm)"
                 % float(field.field.norm(dim=0).max()),
                 f"residual p95 {r['p95']:.1e} mm, mean {r['mean']:.1e} mm, max {r['max']:.2f} mm", f"{t_inv:.2f} s"))

    fixed = dr.read_image(data / "brain3d/oasis/OAS1_0001_MR1_aligned_seg35.nii.gz").as_label_map()
    moving = dr.read_image(data / "brain3d/oasis/OAS1_0002_MR1_aligned_seg35.nii.gz").as_label_map()
    warped, t_label = timed(lambda: dr.warp_image(moving, transform, fixed, "label"))
    rows.append(("label-aware warp of OASIS seg35 (160x192x224, 36 labels)", "-", f"{t_label:.2f} s"))
    report, t_eval = timed(lambda: evaluate_transform(dr.IdentityTransform(3), fixed, moving))
    rows.append(("evaluate OASIS 0002 -> 0001 before registration (identity): mean Dice / HD95 / ASSD",
                 f"{report['mean']['dice']:.3f} / {report['mean']['hd95']:.2f} mm / {report['mean']['assd']:.2f} mm",
                 f"{t_eval:.2f} s"))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu\n")
    print("| check | result | time |")
    print("|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
