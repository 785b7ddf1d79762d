"""The learned metric beside MI, NMI and MIND: the cost around a known alignment (a figure), the error and time
of the multimodal rigid stage with NMI vs. the learned metric on cases with known answers, and the capture range.

Cases (none of these images is in the metric's training data, which is OASIS only):
* 2D BrainWeb T1 (fixed) vs PD (ITK's example slices, simulated from one anatomy, so aligned): the cost along a
  translation (x, px) and a rotation (deg) around the truth, at the finest (1 mm) and the coarsest (8 mm) level
  of the multimodal presets, each metric scaled to [0, 1] (``Docs/learned_metric_sweep.png``); where the minimum
  is and how far the cost falls monotonically towards it.
* 2D BrainWeb T1 vs PD shifted (13, 17) px and vs PD rotated 10 deg and shifted (ITK's answers): ``multimodal-rigid``
  with its NMI and with ``learned:<model>``; error = mean |T_est(x) - T(x)| over the fixed image (px).
* Capture range: T1 vs PD under rigid offsets of k x (5 deg, 5 px, 5 px), k = 1..12; a run succeeds below 1 px.
* 3D: ICBM152 T1 vs a PD-like slab 10 deg / 10 mm off (``benchmarks/multimodal3d.py``'s case), both metrics.
* 3D bias (where the learned metric's 3D error comes from): the cost along the slab's normal around the truth at
  the 1 mm level (moving features made through the truth, as the stage makes them), for T1 vs PD-like and T1 vs
  T1 on the oblique slab and T1 vs PD-like on the T1's own grid, optionally with the fixed image smoothed
  (``--fixed-blur``): where the minimum lies (mm, a parabola through the lowest sample and its neighbours).
* Bias (where the learned metric's 2D error comes from): the same shifts between images of one contrast (T1 vs
  T1, PD vs PD) and of two (T1 vs PD), and T1 vs PD with the 2 and 1 mm levels measured only inside the head
  outline eroded by 0 or 10 px (the 8-4-2 mm levels unmasked first, then 2-1 mm with the mask).

Run: ``.venv/bin/python benchmarks/learned_metric.py [--model metric-mr] [--parts sweep known capture 3d bias]
[--repeat N] [--fixed-blur MM ...]`` (``--repeat``: the 3D runs alternate N times; medians and the learned /
NMI time ratio; ``--fixed-blur``: the bias3d part's smoothing of the fixed image, sigma in mm, 0 for none).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "Testing" / "Python"), str(ROOT / "benchmarks")]
DATA = Path(os.environ.get("DEEPREG_SHARED_DATA", ROOT.parent / "shared" / "data"))

import DeepRegistrationLib as dr  # noqa: E402
from DeepRegistrationLib.registration import load_preset, register  # noqa: E402
from DeepRegistrationLib.transforms import RigidTransform, rotation_matrix  # noqa: E402


def png(name: str) -> dr.Image:
    return dr.read_image(DATA / "multimodal2d" / name, grayscale=True)


def metrics(model: str) -> dict[str, str]:
    return {"MI": "mi", "NMI": "nmi", "MIND": "mind", "learned": f"learned:{model}"}


def sweep(model: str, out_png: Path | None) -> list[str]:
    """Cost along x translation and rotation around the truth (T1 vs aligned PD), at the finest level (1 mm) and
    at the coarsest level of the multimodal presets (8 mm), where the capture range is decided."""
    from DeepRegistrationLib.intensity import normalise_unit_range
    from DeepRegistrationLib.methods.pyramid import build_pyramid, feature_levels
    from DeepRegistrationLib.metrics.similarity import make_similarity
    from DeepRegistrationLib.sampling import to_normalised

    fixed = normalise_unit_range(png("BrainT1SliceBorder20.png"))
    moving = normalise_unit_range(png("BrainProtonDensitySliceBorder20.png"))
    spacings = (1.0, 8.0)
    pyramid = build_pyramid(fixed, moving, None, None, [(sp, 0.5) for sp in spacings], torch.device("cpu"))
    center = fixed.grid.center()
    shifts = np.arange(-40, 40.5, 1.0)
    angles = np.arange(-60, 60.5, 2.0)
    curves: dict = {}
    lines = []
    for spacing in spacings:
        level = pyramid.levels([spacing], 0.5)[0]
        pts = level.grid.physical_points().reshape(-1, 2)
        for label, name in metrics(model).items():
            sim = make_similarity(name)
            lv = feature_levels([level], sim)[0]

            def cost(t: RigidTransform) -> float:
                coords = to_normalised(lv.moving_grid, t.map_points(pts), torch.float32)
                with torch.no_grad():
                    warped, weights = lv.warp_moving(coords)
                    return float(sim(lv.fixed, warped, weights))

            start = time.perf_counter()
            tx = np.array([cost(RigidTransform([0.0], [s, 0.0], center=center)) for s in shifts])
            per_eval = (time.perf_counter() - start) / len(shifts)
            rot = np.array([cost(RigidTransform([np.radians(a)], [0.0, 0.0], center=center)) for a in angles])
            curves[spacing, label] = (tx, rot)
            row = [f"{spacing:g} mm", label]
            for values, axis, unit in ((tx, shifts, "px"), (rot, angles, "deg")):
                i0 = int(np.argmin(values))
                mid = int(np.argmin(np.abs(axis)))
                lo = mid
                while lo > 0 and values[lo - 1] >= values[lo]:
                    lo -= 1
                hi = mid
                while hi < len(values) - 1 and values[hi + 1] >= values[hi]:
                    hi += 1
                row.append(f"min at {axis[i0]:+.0f} {unit}; monotonic {axis[lo]:+.0f}..{axis[hi]:+.0f} {unit}")
            row.append(f"{1000 * per_eval:.1f} ms")
            lines.append("| " + " | ".join(row) + " |")
    if out_png is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(2, 2, figsize=(10, 6.4), sharex="col")
        for r, spacing in enumerate(spacings):
            for label in metrics(model):
                tx, rot = curves[spacing, label]
                for ax, values, axis in ((axes[r, 0], tx, shifts), (axes[r, 1], rot, angles)):
                    ax.plot(axis, (values - values.min()) / max(values.max() - values.min(), 1e-12), label=label)
            axes[r, 0].set_ylabel(f"{spacing:g} mm level: cost, to [0, 1]")
        axes[1, 0].set_xlabel("translation along x (px)")
        axes[1, 1].set_xlabel("rotation (deg)")
        axes[0, 0].legend()
        fig.suptitle("BrainWeb T1 vs PD (aligned at 0): the cost around the truth")
        fig.tight_layout()
        out_png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_png, dpi=100)
    header = ("| level | metric | translation sweep (+-40 px) | rotation sweep (+-60 deg) | one dense evaluation |\n"
              "|---|---|---|---|---|")
    return [header, *lines]


def point_error(result, truth: RigidTransform, grid: dr.Grid) -> float:
    pts = grid.physical_points().reshape(-1, 2)[::7]
    return float(np.linalg.norm(result.transform.map_points(pts) - truth.map_points(pts), axis=1).mean())


def run_rigid(fixed, moving, similarity: str):
    overrides = [] if similarity == "nmi" else [f"similarity={similarity}"]
    config = load_preset("multimodal-rigid", overrides)
    start = time.perf_counter()
    result = register(fixed, moving, config, device="cpu", initialise="center")
    seconds = time.perf_counter() - start
    iterations = sum(sum(s.iterations_per_level()) for s in config.stages)
    return result, seconds, iterations


def known(model: str) -> list[str]:
    t1 = png("BrainT1SliceBorder20.png")
    center = t1.grid.center()
    cases = [("T1 vs PD shifted (13, 17) px", "BrainProtonDensitySliceShifted13x17y.png", (0.0, 13.0, 17.0)),
             ("T1 vs PD rotated 10 deg, shifted", "BrainProtonDensitySliceR10X13Y17.png", (10.0, 13.09, 15.92))]
    lines = ["| case | similarity | result | mean error (px) | time | per iteration |", "|---|---|---|---|---|---|"]
    for title, name, (angle, tx, ty) in cases:
        truth = RigidTransform([np.radians(angle)], [tx, ty], center=center)
        for label, sim in (("NMI", "nmi"), ("learned", f"learned:{model}")):
            result, seconds, its = run_rigid(t1, png(name), sim)
            d = result.transform.describe()
            lines.append(f"| {title} | {label} | {d['angles_deg'][0]:.2f} deg, ({d['translation_mm'][0]:.2f}, "
                         f"{d['translation_mm'][1]:.2f}) px | {point_error(result, truth, t1.grid):.3f} | "
                         f"{seconds:.2f} s | {1000 * seconds / its:.1f} ms |")
    return lines


def capture(model: str) -> list[str]:
    t1 = png("BrainT1SliceBorder20.png")
    pd = png("BrainProtonDensitySliceBorder20.png")
    center = t1.grid.center()
    ks = range(1, 13)
    lines = ["| offset k: (5k deg, 5k px, 5k px) | " + " | ".join(str(k) for k in ks) + " |",
             "|---|" + "---|" * len(ks)]
    for label, sim in (("NMI", "nmi"), ("learned", f"learned:{model}")):
        cells = []
        for k in ks:
            truth = RigidTransform([np.radians(5.0 * k)], [5.0 * k, 5.0 * k], center=center)  # fixed -> moving
            moving = dr.warp_image(pd, truth.inverse(), pd.grid)
            result, _, _ = run_rigid(t1, moving, sim)
            err = point_error(result, truth, t1.grid)
            cells.append(f"{err:.2f}" + ("" if err < 1.0 else " (lost)"))
        lines.append(f"| {label}: mean error (px) | " + " | ".join(cells) + " |")
    return lines


def three_d(model: str, repeat: int = 1) -> list[str]:
    """``repeat`` > 1: NMI and the learned metric run alternately that many times in the process (the machine's
    drift falls on both alike); the table gives the median time and the range, and the ratio of the medians."""
    from multimodal3d import build

    lines = ["| 3D case | similarity | mean error (mm) | time | per iteration |", "|---|---|---|---|---|"]
    labels = {"NMI": "nmi", "learned": f"learned:{model}"}
    seconds: dict[str, list[float]] = {label: [] for label in labels}
    errors: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        truth, pts = build(Path(tmp))
        fixed, moving = dr.read_image(Path(tmp) / "fixed.nii.gz"), dr.read_image(Path(tmp) / "moving.nii.gz")
        for _ in range(repeat):
            for label, sim in labels.items():
                config = load_preset("multimodal-rigid", [] if sim == "nmi" else [f"similarity={sim}"])
                start = time.perf_counter()
                result = register(fixed, moving, config, device="cpu")
                seconds[label].append(time.perf_counter() - start)
                errors[label] = float(np.linalg.norm(result.transform.map_points(pts) - truth.map_points(pts),
                                                     axis=1).mean())
    its = sum(sum(s.iterations_per_level()) for s in load_preset("multimodal-rigid").stages)
    for label in labels:
        runs = seconds[label]
        spread = f" ({min(runs):.1f}-{max(runs):.1f})" if repeat > 1 else ""
        lines.append(f"| ICBM T1 vs PD-like slab, 10 deg + 10 mm | {label} | {errors[label]:.3f} | "
                     f"{np.median(runs):.1f} s{spread} | {1000 * np.median(runs) / its:.0f} ms |")
    ratio = np.median(seconds["learned"]) / np.median(seconds["NMI"])
    lines.append(f"\nlearned / NMI time per iteration: {ratio:.2f}x (median of {repeat} run{'s' * (repeat > 1)} each)")
    return lines


def bias3d(model: str, fixed_blur: list[float]) -> list[str]:
    """Where the cost along the slab's normal (mm, around the truth; 1 mm level) is lowest, by case and by the
    fixed image's extra smoothing: NMI and the learned metric."""
    from multimodal3d import SLAB_TILT_DEG, build

    from DeepRegistrationLib.intensity import normalise_unit_range, smooth_gaussian
    from DeepRegistrationLib.methods.pyramid import build_pyramid, feature_levels
    from DeepRegistrationLib.metrics.similarity import make_similarity
    from DeepRegistrationLib.sampling import index_to_normalised_map, voxel_index
    from DeepRegistrationLib.transforms import AffineTransform

    shifts = np.arange(-0.6, 0.601, 0.1)  # the minima found lie within +-0.3 mm
    lines = ["| fixed vs moving | moving grid | fixed smoothed (mm) | similarity | minimum along the slab normal (mm) |",
             "|---|---|---|---|---|"]
    for contrast, second in (("PD", "slab"), ("T1", "slab"), ("PD", "head")):
        with tempfile.TemporaryDirectory() as tmp:
            truth, _ = build(Path(tmp), second_image=second, contrast=contrast)
            fixed0 = normalise_unit_range(dr.read_image(Path(tmp) / "fixed.nii.gz"))
            moving = normalise_unit_range(dr.read_image(Path(tmp) / "moving.nii.gz"))
        a0 = truth.matrix().double()
        b0 = truth.offset().double()
        normal = rotation_matrix(torch.tensor(np.radians(SLAB_TILT_DEG), dtype=torch.float64), 3)[:, 2]  # the slab's normal (its third axis), LPS
        for blur in fixed_blur:
            fixed = smooth_gaussian(fixed0, blur) if blur > 0 else fixed0
            level = build_pyramid(fixed, moving, None, None, [(1.0, 0.5)], torch.device("cpu")).levels([1.0], 0.5)[0]
            for label, name in (("NMI", "nmi"), ("learned", f"learned:{model}")):
                sim = make_similarity(name)
                learned = getattr(sim, "extracts_features", False)
                lv = feature_levels([level], sim, moving=not learned, crop=True)[0]
                if learned:  # features of the moving image warped through the truth; read relative to it
                    lv = lv.warped_features(AffineTransform(a0, b0), sim.features, sim.halo(3, torch.device("cpu")))
                    inv = torch.linalg.inv(a0)
                index = voxel_index(lv.grid, torch.arange(lv.grid.num_voxels))
                costs = []
                for s in shifts:
                    a, b = a0, b0 + s * normal
                    if learned:
                        a, b = inv @ a, inv @ (b - b0)
                    k, t = index_to_normalised_map(lv.grid, lv.moving_grid, a, b)
                    with torch.no_grad():
                        warped, weights = lv.warp_moving(index @ k.float().T + t.float())
                        costs.append(float(sim(lv.fixed, warped, weights)))
                y = np.array(costs)
                i = int(np.clip(np.argmin(y), 1, len(y) - 2))
                curvature = y[i - 1] - 2 * y[i] + y[i + 1]
                at = shifts[i] + 0.5 * (shifts[1] - shifts[0]) * (y[i - 1] - y[i + 1]) / curvature if curvature > 0 \
                    else shifts[int(np.argmin(y))]
                lines.append(f"| T1 vs {contrast}{'-like' if contrast == 'PD' else ''} | "
                             f"{'oblique slab, 120 mm of the head' if second == 'slab' else 'the T1 grid, whole head'} "
                             f"| {blur:g} | {label} | {at:+.3f} |")
    return lines


def bias(model: str) -> list[str]:
    """Mean point error (px) of the rigid stage by contrast pair, and T1 vs PD with the fine levels measured only
    inside the head (its outline filled and eroded), at shifts with sub-pixel parts."""
    from scipy import ndimage

    t1, pd = png("BrainT1SliceBorder20.png"), png("BrainProtonDensitySliceBorder20.png")
    center = t1.grid.center()
    shifts = [(13.0, 17.0), (13.5, 17.5), (13.3, 16.8)]
    lines = ["| fixed vs moving | fine levels measured | similarity | mean error (px) at shifts "
             + ", ".join(f"({a}, {b})" for a, b in shifts) + " |", "|---|---|---|---|"]

    def moved(image, shift):
        truth = RigidTransform([0.0], list(shift), center=center)
        return dr.warp_image(image, truth.inverse(), image.grid), truth

    for (fname, fixed), (mname, moving) in [(("T1", t1), ("T1", t1)), (("PD", pd), ("PD", pd)),
                                            (("T1", t1), ("PD", pd))]:
        for label, sim in (("NMI", "nmi"), ("learned", f"learned:{model}")):
            errors = []
            for shift in shifts:
                image, truth = moved(moving, shift)
                result, _, _ = run_rigid(fixed, image, sim)
                errors.append(point_error(result, truth, fixed.grid))
            lines.append(f"| {fname} vs {mname} | all | {label} | " + ", ".join(f"{e:.3f}" for e in errors) + " |")
    head = ndimage.binary_fill_holes(t1.data[0].numpy() > 0.05 * float(t1.data.max()))
    for erode in (0, 10):
        inside = ndimage.binary_erosion(head, iterations=erode) if erode else head
        mask = dr.Image(torch.from_numpy(inside.astype(np.float32))[None], t1.grid)
        for label, sim in (("NMI", "nmi"), ("learned", f"learned:{model}")):
            errors = []
            for shift in shifts:
                image, truth = moved(pd, shift)
                over = [] if sim == "nmi" else [f"similarity={sim}"]
                coarse = register(t1, image, load_preset("multimodal-rigid", over + ["levels_mm=[8,4,2]",
                                                                                  "iterations=[100,60,30]"]),
                                  device="cpu", initialise="center")
                fine = register(t1, image, load_preset("multimodal-rigid", over + ["levels_mm=[2,1]",
                                                                                "iterations=[30,30]"]),
                                fixed_mask=mask, initial_transform=coarse.transform, device="cpu")
                errors.append(point_error(fine, truth, t1.grid))
            where = "inside the head" + (f", eroded {erode} px" if erode else "")
            lines.append(f"| T1 vs PD | {where} | {label} | " + ", ".join(f"{e:.3f}" for e in errors) + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="metric-mr", help="learned metric model (name or folder)")
    parser.add_argument("--parts", nargs="+", default=["sweep", "known", "capture", "3d"])
    parser.add_argument("--figure", default=str(ROOT / "Docs" / "learned_metric_sweep.png"))
    parser.add_argument("--fixed-blur", type=float, nargs="+", default=[0.0],
                        help="bias3d part: the fixed image's smoothing, sigma in mm (0: none), one table row each")
    parser.add_argument("--repeat", type=int, default=1,
                        help="3d part: runs of each similarity, alternating; the table gives medians")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("DEEPREG_THREADS", "2")))
    from DeepRegistrationLib.runtime import retain_freed_memory

    retain_freed_memory()  # as the `deepreg` process runs (fresh large allocations cost page faults otherwise)
    parts = {"sweep": lambda: sweep(args.model, Path(args.figure) if args.figure else None),
             "known": lambda: known(args.model), "capture": lambda: capture(args.model),
             "3d": lambda: three_d(args.model, max(1, args.repeat)), "bias": lambda: bias(args.model),
             "bias3d": lambda: bias3d(args.model, args.fixed_blur)}
    for part in args.parts:
        print("\n".join(parts[part]()) + "\n", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
