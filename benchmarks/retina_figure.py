"""The README's retinal figure: checkerboards of the fixed photograph and the registered moving image, for a FIRE
category-P pair (same modality) and the colour-fundus / fluorescein-angiogram pair, before and after.

Run: ``.venv/bin/python benchmarks/retina_figure.py [--out Docs/retina_checkerboard.png]`` (needs ../shared/data).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "retina"


def _unit(a: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(a[a > 0], [1, 99]) if (a > 0).any() else (0, 1)
    return np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1)


def checkerboard(fixed: np.ndarray, moving: np.ndarray, tiles: int = 8, invert_moving: bool = False) -> np.ndarray:
    f, m = _unit(fixed), _unit(moving)
    if invert_moving:
        m = np.where(moving > 0, 1 - m, 0)
    rows, cols = np.indices(f.shape)
    board = ((rows * tiles // f.shape[0]) + (cols * tiles // f.shape[1])) % 2 == 0
    return np.where(board, f, m)


def panel(fixed_path: Path, moving_path: Path, preset: str, invert: bool):
    import DeepRegistrationLib as dr
    from DeepRegistrationLib.registration import load_preset, register
    from DeepRegistrationLib.registration.inputs import read_pair_inputs
    from DeepRegistrationLib.transforms import IdentityTransform

    config = load_preset(preset)
    pair = read_pair_inputs(fixed_path, moving_path, channel=config.channel)
    result = register(pair.fixed, pair.moving, config)
    small = pair.fixed.grid.coarsened(4)  # the figure at a quarter size
    fixed = dr.warp_image(pair.fixed, None, small).data[0].numpy()
    before = dr.warp_image(pair.moving, IdentityTransform(2), small).data[0].numpy()
    after = dr.warp_image(pair.moving, result.transform, small).data[0].numpy()
    return checkerboard(fixed, before, invert_moving=invert), checkerboard(fixed, after, invert_moving=invert)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "Docs" / "retina_checkerboard.png")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [("FIRE P04 (same eye, small overlap): retina-fundus", DATA / "fire" / "P04_1.jpg",
              DATA / "fire" / "P04_2.jpg", "retina-fundus", False),
             ("colour fundus / fluorescein angiogram (angiogram inverted): retina-multimodal",
              DATA / "cf_fa_pair" / "color_fundus_f1.jpg", DATA / "cf_fa_pair" / "fluorescein_angio_f2.jpg",
              "retina-multimodal", True)]
    fig, axes = plt.subplots(2, 2, figsize=(9, 9), dpi=110)
    for row, (title, fixed, moving, preset, invert) in zip(axes, cases):
        before, after = panel(fixed, moving, preset, invert)
        for ax, image, when in zip(row, (before, after), ("before", "after")):
            ax.imshow(image, cmap="gray")
            ax.set_title(f"{title}\n{when}" if when == "before" else when, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
