"""Peak memory and time of ``deepreg evaluate`` on a 256^3 label-map pair (issue: <= 2 GB, a few seconds).

The pair: the OASIS seg35 maps of subjects 1 and 2 (``../shared/data``; the wheel-built stand-ins of
``Testing/Python/fresh_data.py`` otherwise) placed in a 256^3 1 mm volume, as FreeSurfer's conformed aseg
is; the transform: an affine followed by a smooth displacement field on a 2 mm grid, written as ITK .h5
(the kind ``deepreg register`` writes). Run: ``python benchmarks/evaluate_memory.py [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "Testing" / "Python"), str(ROOT / "benchmarks")]

import DeepRegistrationLib as dr  # noqa: E402
from common import run_measured  # noqa: E402
from DeepRegistrationLib.synthetic import smooth_field  # noqa: E402


def build(folder: Path) -> list[Path]:
    from conftest import OASIS, data_file

    segs = [dr.read_image(data_file(OASIS.format(s, "seg35"))) for s in ("0001", "0002")]
    grid = dr.Grid.centred(segs[0].grid.center(), (256, 256, 256), (1.0, 1.0, 1.0), segs[0].grid.direction_matrix())
    paths = []
    for name, seg in zip(("fixed", "moving"), segs):
        path = folder / f"{name}_aseg.nii.gz"
        dr.warp_image(seg, None, grid, "nearest").write(path)
        paths.append(path)
    field = smooth_field(grid.center(), 4.0, 2.0, size=(128, 128, 128))  # 2 mm control grid over the volume
    affine = dr.AffineTransform(np.eye(3) * 1.02, [1.5, -2.0, 1.0], grid.center())
    dr.write_transform(dr.compose(affine, field), folder / "T.h5")
    return paths + [folder / "T.h5"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="folder to keep the generated files in")
    args = parser.parse_args()
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="deepreg-evaluate-"))
    folder.mkdir(parents=True, exist_ok=True)
    fixed, moving, transform = build(folder)
    cmd = [sys.executable, "-m", "DeepRegistrationLib", "evaluate", "--transform",
           str(transform), "--fixed-labels", str(fixed), "--moving-labels", str(moving),
           "--json", str(folder / "report.json")]
    for surface in (False, True):
        run = cmd + ([] if surface else ["--no-surface"])
        result, wall, peak_gb = run_measured(run, ROOT)
        if result.returncode != 0:
            raise SystemExit(result.stderr)
        mean = [ln for ln in result.stdout.splitlines() if ln.strip().startswith("mean ")][0].split()
        print(f"evaluate 256^3 aseg pair ({'with' if surface else 'without'} HD95/ASSD): {wall:.1f} s, "
              f"peak RSS {peak_gb:.2f} GB, mean Dice {mean[1]}")


if __name__ == "__main__":
    main()
