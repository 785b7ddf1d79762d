"""FIRE protocol on a folder of fundus pairs: the retinal presets beside classical peers, in one run.

A folder in FIRE's layout holds ``<name>_1.jpg`` (fixed), ``<name>_2.jpg`` (moving) and
``Ground_Truth/control_points_<name>_1_2.txt`` (``x_fixed y_fixed x_moving y_moving`` per line, pixels). Each
method runs in its own process over all pairs (the first pair also pays the imports, so the time per pair is
the median); the registration time excludes reading the JPEGs. The error of a pair is the mean distance
between the fixed control points mapped by the method's fixed -> moving transform and the moving ones
(:mod:`DeepRegistrationLib.metrics.fire`); the summary gives FIRE's AUC over 0..25 px, failures (> 25 px) and
the median error. SuperRetina's published AUC for the category (0.554 on P) is drawn as a reference line.

Methods:
* ``retina-fundus`` (SIFT on the enhanced image and ORB on the vessel map, pooled) and its ablations:
  ``...-homography`` (the same keypoints, a homography), ``...-enhanced`` / ``...-vessels`` (one feature set
  alone), ``...+refine`` (followed by the polynomial intensity refinement on vessel maps);
* ``retina-fundus-vessel-net``: ``retina-fundus`` with the vessel network's maps instead of the Frangi filter's;
* ``retina-multimodal-vessel-net``: the multimodal preset with the vessel network's maps (no polarity used);
* ``retina-learned``: the correlation network's homography on the vessel network's maps, then guided ORB keypoints
  and the quadratic model; ``correlation-net``: its first stage alone (MAGSAC++ on the network's matches);
  ``correlation-net-regression``: the homography the network regresses from its correlation volume;
* ``...+dense``: a method followed by the dense refinement network (stage ``dense_refinement``, the residual flow
  on the vessel network's maps; ``retina-learned`` holds it already, so ``retina-learned+dense`` is the preset
  itself); ``correlation-net+dense`` is the seed's registration network (correlation volume -> homography -> dense
  refinement) with no keypoints, ``...-coarse-to-fine`` the same with the refinement at 256, 512 and 768 px, two
  passes each;
* ``sift-ransac``: OpenCV SIFT on the CLAHE-enhanced green channel at 1/4 size, Lowe ratio 0.8, RANSAC
  homography with a 5 px threshold (full size): the peer measured in ../shared/REFERENCES.md;
* ``sitk-affine``: SimpleITK affine registration of the green channels (Mattes MI, 3 levels, at 1/4 size,
  geometric centre initialisation).

Fundus <-> angiogram: with ``--multimodal`` (default: ../shared/data/retina/cf_fa_pair and the control points of
``Testing/Data/retina``), ``retina-multimodal`` and the peers register that pair too, and its mean control-point
error is reported (moving pixels).

Run: ``.venv/bin/python benchmarks/retina_fire.py [--fire DIR] [--methods ...] [--figure Docs/retina_fire.png]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

SUPERRETINA_AUC = {"P": 0.554, "S": 0.950, "A": 0.783}  # published (FIRE), for the reference line
METHODS = ("retina-fundus", "retina-fundus-homography", "retina-fundus-enhanced", "retina-fundus-vessels",
           "retina-fundus-vessel-net", "retina-fundus+refine", "retina-fundus-learned-keypoints",
           "retina-fundus-learned-keypoints-512", "retina-learned", "correlation-net",
           "correlation-net-regression", "correlation-net+dense", "correlation-net+dense-coarse-to-fine",
           "retina-learned+dense", "retina-fundus+dense",
           "sift-ransac", "sitk-affine")
MULTIMODAL_METHODS = ("retina-multimodal", "retina-multimodal-vessel-net", "retina-multimodal+refine",
                      "retina-learned", "correlation-net", "correlation-net+dense",
                      "correlation-net+dense-coarse-to-fine", "retina-learned+dense",
                      "retina-multimodal+dense", "sift-ransac", "sitk-affine")
CF_FA = (ROOT.parent / "shared" / "data" / "retina" / "cf_fa_pair",
         ROOT / "Testing" / "Data" / "retina" / "cf_fa_pair_control_points.txt")


def pairs_in(folder: Path) -> list[tuple[str, Path, Path, Path]]:
    out = []
    for fixed in sorted(folder.glob("*_1.jpg")):
        name = fixed.name[:-len("_1.jpg")]
        points = folder / "Ground_Truth" / f"control_points_{name}_1_2.txt"
        moving = folder / f"{name}_2.jpg"
        if moving.exists() and points.exists():
            out.append((name, fixed, moving, points))
    return out


# ---------------------------------------------------------------------------------------------- methods
def _engine(method: str):
    from DeepRegistrationLib.registration import RegistrationConfig, load_preset, register
    from DeepRegistrationLib.registration.inputs import read_pair_inputs

    if method == "retina-fundus-homography":
        config = load_preset("retina-fundus", ["stages.0.transform=homography"])
    elif method == "retina-fundus-enhanced":
        config = load_preset("retina-fundus", ['stages.0.features="enhanced"'])
    elif method == "retina-fundus-vessels":
        config = load_preset("retina-fundus", ['stages.0.features="vessels"'])
    elif method == "retina-fundus-vessel-net":
        config = load_preset("retina-fundus", ['stages.0.vessel_model="vessels-retina"'])
    elif method.startswith("retina-fundus-learned-keypoints"):
        size = method.rsplit("-", 1)[-1]
        config = load_preset("retina-fundus", ['stages.0.detector="learned"',
                                               f"stages.0.working_size={size if size.isdigit() else 728}"])
    elif method == "retina-multimodal-vessel-net":
        config = load_preset("retina-multimodal", ['stages.0.vessel_model="vessels-retina"'])
    elif "+dense" in method:  # followed by the dense refinement network (coarse to fine: 256, 512, 768 px, 2 passes)
        base, levels = method.split("+dense")
        data = load_preset("retina-learned" if base == "correlation-net" else base).to_dict()
        if base == "correlation-net":
            data["stages"] = data["stages"][:1]
        data["stages"] = [s for s in data["stages"] if s["model"] != "dense_refinement"]
        data["stages"].append({"model": "dense_refinement"} if not levels else
                              {"model": "dense_refinement", "working_sizes": [256, 512, 768], "passes": 2})
        config = RegistrationConfig.from_dict(data)
    elif method.startswith("correlation-net"):
        data = load_preset("retina-learned").to_dict()
        first = {**data["stages"][0], "fit": "regression" if method.endswith("-regression") else "magsac"}
        config = RegistrationConfig.from_dict({**data, "stages": [first]})
    elif method.endswith("+refine"):
        data = load_preset(method[:-len("+refine")]).to_dict()
        first = data["stages"][0]
        data["stages"].append({"model": "polynomial", "fixed_polarity": first["fixed_polarity"],
                               "moving_polarity": first["moving_polarity"]})
        config = RegistrationConfig.from_dict(data)
    else:
        config = load_preset(method)

    def run(fixed: Path, moving: Path):
        pair = read_pair_inputs(fixed, moving, channel=config.channel)
        start = time.perf_counter()
        result = register(pair.fixed, pair.moving, config)
        return result.transform, time.perf_counter() - start, pair.fixed.grid, pair.moving.grid

    return run


def _green(path: Path, scale: float):
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise SystemExit(f"{path}: cannot read")
    green = image[:, :, 1]
    return cv2.resize(green, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale != 1 else green


def _sift_ransac():
    import cv2

    from DeepRegistrationLib.transforms.polynomial import HomographyTransform

    def run(fixed: Path, moving: Path):
        scale = 0.25
        f, m = _green(fixed, scale), _green(moving, scale)
        start = time.perf_counter()
        clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
        f, m = clahe.apply(f), clahe.apply(m)
        sift = cv2.SIFT_create()
        kf, df = sift.detectAndCompute(f, None)
        km, dm = sift.detectAndCompute(m, None)
        good = [a for a, b in cv2.BFMatcher().knnMatch(df, dm, k=2) if a.distance < 0.8 * b.distance]
        src = (np.float64([kf[g.queryIdx].pt for g in good]) + 0.5) / scale - 0.5
        dst = (np.float64([km[g.trainIdx].pt for g in good]) + 0.5) / scale - 0.5
        h, _ = cv2.findHomography(src, dst, cv2.RANSAC, 5.0) if len(good) >= 4 else (None, None)
        elapsed = time.perf_counter() - start
        if h is None:
            h = np.eye(3)
        return HomographyTransform(h), elapsed, None, None

    return run


def _sitk_affine():
    import SimpleITK as sitk

    from DeepRegistrationLib.transforms import AffineTransform

    def run(fixed: Path, moving: Path):
        scale = 0.25
        f = sitk.GetImageFromArray(_green(fixed, scale).astype(np.float32))
        m = sitk.GetImageFromArray(_green(moving, scale).astype(np.float32))
        for image in (f, m):  # physical = full-size pixels
            image.SetSpacing((1 / scale, 1 / scale))
            image.SetOrigin((0.5 / scale - 0.5, 0.5 / scale - 0.5))
        start = time.perf_counter()
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMattesMutualInformation(32)
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(0.2, seed=0)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(4.0, 1e-3, 200)
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel([4, 2, 1])
        reg.SetSmoothingSigmasPerLevel([2, 1, 0])
        initial = sitk.CenteredTransformInitializer(f, m, sitk.AffineTransform(2),
                                                    sitk.CenteredTransformInitializerFilter.GEOMETRY)
        reg.SetInitialTransform(initial, inPlace=False)
        tx = reg.Execute(f, m)
        elapsed = time.perf_counter() - start
        affine = sitk.AffineTransform(tx.GetNthTransform(0) if hasattr(tx, "GetNthTransform") else tx)
        matrix = np.array(affine.GetMatrix()).reshape(2, 2)
        center = np.array(affine.GetCenter())
        return AffineTransform(matrix, np.array(affine.GetTranslation()), center), elapsed, None, None

    return run


def worker(method: str, folder: Path, multimodal: bool = False) -> dict:
    """Every pair with one method (in this process): per pair the error (px) and the registration time (s)."""
    from DeepRegistrationLib.metrics.fire import pair_error, read_fire_points
    from DeepRegistrationLib.runtime import peak_resident_gb

    run = {"sift-ransac": _sift_ransac, "sitk-affine": _sitk_affine}.get(method, lambda: _engine(method))()
    rows = []
    pairs = [("cf_fa", folder / "color_fundus_f1.jpg", folder / "fluorescein_angio_f2.jpg", CF_FA[1])] \
        if multimodal else pairs_in(folder)
    for name, fixed, moving, points_file in pairs:
        try:
            transform, seconds, fixed_grid, moving_grid = run(fixed, moving)
            # the engine works in mm (a JPEG may state a resolution), the peers in pixels; errors in moving pixels
            points = read_fire_points(points_file, fixed_grid, moving_grid)
            error = pair_error(transform, points) / (float(np.mean(moving_grid.spacing)) if moving_grid else 1.0)
        except Exception as err:  # a method that fails on a pair scores it as a failure, with the reason
            error, seconds = float("inf"), float("nan")
            print(f"{method} {name}: {type(err).__name__}: {err}", file=sys.stderr)
        rows.append({"pair": name, "error_px": error, "time_s": seconds})
    return {"method": method, "pairs": rows, "peak_gb": peak_resident_gb()}


# ---------------------------------------------------------------------------------------------- report
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fire", type=Path, default=ROOT.parent / "shared" / "data" / "retina" / "fire")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--category", default="P", help="FIRE category of the folder (for the reference line)")
    parser.add_argument("--figure", type=Path, help="success curves as a PNG (matplotlib)")
    parser.add_argument("--json", type=Path, help="all figures as JSON")
    parser.add_argument("--multimodal", type=Path, nargs="?", const=CF_FA[0], default=CF_FA[0],
                        help="the fundus/angiogram pair's folder (default: ../shared/data/retina/cf_fa_pair)")
    parser.add_argument("--no-multimodal", action="store_true")
    parser.add_argument("--multimodal-methods", nargs="+", default=list(MULTIMODAL_METHODS), choices=MULTIMODAL_METHODS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-multimodal", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.multimodal if args.worker_multimodal else args.fire,
                                args.worker_multimodal)))
        return
    if not pairs_in(args.fire):
        raise SystemExit(f"{args.fire}: no FIRE pairs (<name>_1.jpg, <name>_2.jpg, Ground_Truth/control_points_...)")
    from DeepRegistrationLib.metrics.fire import fire_summary

    results = []
    for method in args.methods:
        proc = subprocess.run([sys.executable, __file__, "--fire", str(args.fire), "--worker", method],
                              capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            raise SystemExit(f"{method} failed:\n{proc.stderr[-3000:]}")
        sys.stderr.write(proc.stderr)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["summary"] = fire_summary([r["error_px"] for r in result["pairs"]])
        results.append(result)
    names = [r["pair"] for r in results[0]["pairs"]]
    print(f"FIRE category {args.category}, {len(names)} pairs in {args.fire} (2 CPU cores); SuperRetina (published) "
          f"AUC {SUPERRETINA_AUC.get(args.category, float('nan')):.3f}")
    print("| method | AUC | failures (> 25 px) | median error px | " + " | ".join(f"{n} px" for n in names)
          + " | median time s | peak GB |")
    print("|---|---|---|---|" + "---|" * len(names) + "---|---|")
    for r in results:
        s = r["summary"]
        times = [p["time_s"] for p in r["pairs"] if np.isfinite(p["time_s"])]
        print(f"| {r['method']} | {s['auc']:.3f} | {s['failures']} | {s['median_error_px']:.2f} | "
              + " | ".join(f"{p['error_px']:.2f}" for p in r["pairs"])
              + f" | {np.median(times) if times else float('nan'):.2f} | {r['peak_gb']:.2f} |")
    multimodal = []
    if not args.no_multimodal and (args.multimodal / "color_fundus_f1.jpg").exists():
        for method in args.multimodal_methods:
            proc = subprocess.run([sys.executable, __file__, "--multimodal", str(args.multimodal), "--worker", method,
                                   "--worker-multimodal"], capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                raise SystemExit(f"{method} failed:\n{proc.stderr[-3000:]}")
            sys.stderr.write(proc.stderr)
            multimodal.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"\nFundus <-> fluorescein angiogram ({args.multimodal.name}; 13 control points, Testing/Data/retina)")
        print("| method | mean control-point error px (moving) | time s | peak GB |")
        print("|---|---|---|---|")
        for r in multimodal:
            p = r["pairs"][0]
            print(f"| {r['method']} | {p['error_px']:.2f} | {p['time_s']:.2f} | {r['peak_gb']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"fire": results, "multimodal": multimodal}, indent=1))
    if args.figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from DeepRegistrationLib.metrics.fire import success_curve

        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        for r in results:
            t, rate = success_curve([p["error_px"] for p in r["pairs"]])
            ax.plot(t, rate, label=f"{r['method']} (AUC {r['summary']['auc']:.3f})")
        if args.category in SUPERRETINA_AUC:
            ax.axhline(SUPERRETINA_AUC[args.category], color="grey", ls=":",
                       label=f"SuperRetina AUC (published, {args.category}) {SUPERRETINA_AUC[args.category]:.3f}")
        ax.set_xlabel("threshold (px)")
        ax.set_ylabel("success rate (pairs with mean error <= threshold)")
        ax.set_title(f"FIRE category {args.category}: {len(names)} pairs")
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        fig.savefig(args.figure)
        print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
