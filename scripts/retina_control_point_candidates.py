"""Candidate control points for a fundus / angiogram pair without ground truth (how
``Testing/Data/retina/cf_fa_pair_control_points.txt`` was made; see ``Testing/Data/retina/README.md``).

Vessel junctions are found in each image on its own: Frangi vesselness at half size (dark vessels in the colour
photograph's green channel, bright ones in the angiogram), thresholded at its 88th percentile in the field of
view, skeletonised; skeleton pixels with three or more neighbours are junctions (clusters within 4 px merged).
A junction of the fixed image is paired with the moving image's nearest junction to where a preliminary
registration (``--transform``, a ``deepreg register`` output: its ``.model.json``) puts it, when that junction is
within 25 px and the next one is far (> 2.5 x + 10 px): the registration only proposes pairs; the coordinates
written are each image's own junction. One candidate per 330 px cell is kept, to spread them; each must then be
checked by eye (both neighbourhoods side by side) before it becomes a control point.

Run: ``.venv/bin/python scripts/retina_control_point_candidates.py FIXED MOVING --transform T.h5 > candidates.txt``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def junctions(path: Path, dark: bool, scale: float = 0.5) -> np.ndarray:
    """Vessel junctions (x, y) in full-size pixels."""
    import cv2
    from skimage.filters import frangi
    from skimage.morphology import skeletonize

    green = cv2.imread(str(path))[:, :, 1].astype(np.float32) / 255
    small = cv2.resize(green, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    vessels = frangi(small, sigmas=[1.5, 2.5, 3.5], black_ridges=dark)
    fov = cv2.erode((cv2.GaussianBlur(small, (0, 0), 3) > 0.08).astype(np.uint8), np.ones((31, 31)))
    vessels = vessels * fov
    skeleton = skeletonize(vessels > np.percentile(vessels[fov > 0], 88))
    neighbours = cv2.filter2D(skeleton.astype(np.uint8), -1, np.ones((3, 3))) - skeleton
    ys, xs = np.nonzero(skeleton & (neighbours >= 3))
    points = np.c_[xs, ys].astype(float)
    merged, used = [], np.zeros(len(points), bool)
    for i in range(len(points)):
        if not used[i]:
            near = np.linalg.norm(points - points[i], axis=1) < 4
            used |= near
            merged.append(points[near].mean(0))
    return (np.array(merged) + 0.5) / scale - 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fixed", type=Path, help="colour photograph (dark vessels)")
    parser.add_argument("moving", type=Path, help="angiogram (bright vessels)")
    parser.add_argument("--transform", type=Path, required=True, help="a deepreg register transform (.h5) whose "
                                                                      ".model.json lies beside it")
    args = parser.parse_args()
    from scipy.spatial import cKDTree

    import DeepRegistrationLib as dr
    from DeepRegistrationLib.io.transforms import model_parameters_path, read_model_parameters

    model = read_model_parameters(model_parameters_path(args.transform))
    fixed_grid, moving_grid = dr.read_image(args.fixed).grid, dr.read_image(args.moving).grid
    fixed_j, moving_j = junctions(args.fixed, True), junctions(args.moving, False)
    predicted = moving_grid.physical_to_index(model.map_points(fixed_grid.index_to_physical(fixed_j)))
    distance, index = cKDTree(moving_j).query(predicted, k=2)
    ok = (distance[:, 0] < 25) & (distance[:, 1] > 2.5 * distance[:, 0] + 10)
    cells: dict = {}
    for f, m in zip(fixed_j[ok], moving_j[index[ok, 0]]):
        cells.setdefault((int(f[0]) // 330, int(f[1]) // 330), []).append((f, m))
    print("# x_fixed y_fixed x_moving y_moving (candidates: check each by eye)")
    for _, found in sorted(cells.items()):
        f, m = found[len(found) // 2]
        print(f"{f[0]:.1f} {f[1]:.1f} {m[0]:.1f} {m[1]:.1f}")


if __name__ == "__main__":
    main()
