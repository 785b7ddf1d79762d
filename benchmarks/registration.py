"""Registration benchmark on brain MRI pairs: OASIS moving 0002 -> fixed 0001 (160x192x224, seg35), and the
voxelmorph subject -> OASIS 0001 (a third subject; its FreeSurfer aseg labels mapped to the 35 seg35 ids).

Each method runs in its own process (so the peak memory is its own) and writes an ITK transform
file; every transform is then evaluated the same way: moving labels warped with the library's
label-aware resampler onto the fixed grid, Dice per label, HD95, folding, std log|J|.

Methods: this project's presets (``preset:NAME``; ``preset:voxelmorph-brain[-io]`` once a model named
voxelmorph-brain exists, see scripts/train_voxelmorph_brain.sh, which holds OASIS 0001 out), SimpleITK FastSymmetricForcesDemons (3 levels,
50/30/20 iterations, field sigma 1.5 voxels; the pair is already affinely aligned), and, when
installed, ANTsPy SyN (``ants:SyN``; ``ants:SyN+mi`` with Mattes mutual information for the affine and SyN
stages; any ANTsPy ``type_of_transform``, e.g. ``ants:Rigid+mi``) and its quick variant (``ants:antsRegistrationSyNQuick[s]``) and itk-elastix affine + B-spline
(``elastix``; ``elastix:rigid``), both with elastix's default maps (Mattes mutual information).

``--contrast pd|t2`` renders the moving image (``--contrast-of fixed``: the fixed one) in another contrast by a
non-monotonic intensity curve
(``Testing/Python/fresh_data.CONTRAST_CURVES``), for the multimodal methods (``preset:multimodal-deformable``, ``ants:SyN+mi``,
``elastix``).

The voxelmorph subject comes as numpy arrays on the OASIS crop (1 mm, same orientation); it is written
with OASIS 0001's geometry, its intensities scaled to OASIS 0001's 99th percentile (demons compares raw
intensities), and its labels mapped aseg -> seg35 (seg35 = aseg labels 2, 3, 4, 5, 7, 8, 10-18, 26, 28,
30, 31, 41-44, 46, 47, 49-54, 58, 60, 62, 63 numbered 1..35; the unambiguous ones agree with the largest
overlap before registration).

Every method's process keeps freed memory for reuse, as the ``deepreg`` command does
(``DeepRegistrationLib.runtime``; page faults on fresh allocations otherwise cost this machine class up to a
third of the wall time, and vary by the hour).

Run:  .venv/bin/python benchmarks/registration.py [--pairs oasis vm] [--methods preset:deformable-fast sitk:demons ...]
      [--repeat N]  (each method N times per pair, in fresh processes: the median time, the mean Dice and its
      spread; ANTs SyN is randomised, our presets are deterministic on the CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_memory_gb  # noqa: E402
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "brain3d"
DEFAULT_METHODS = ["preset:deformable-fast", "preset:deformable-accurate", "sitk:demons", "ants:SyN",
                   "ants:antsRegistrationSyNQuick[s]", "elastix"]


def _run_method(method: str, fixed: str, moving: str, out: str) -> dict:
    """Run one method in this process; write its transform to ``out``; return timing figures."""
    import torch

    torch.set_num_threads(int(os.environ.get("DEEPREG_THREADS", "2")))
    t0 = time.perf_counter()
    device = "cpu"
    if method.startswith("preset:"):
        import DeepRegistrationLib as dr
        from DeepRegistrationLib.registration import load_preset, register

        result = register(dr.read_image(fixed), dr.read_image(moving), load_preset(method.split(":", 1)[1]),
                          device=os.environ.get("DEEPREG_DEVICE", "auto"))
        device = result.figures["device"]
        elapsed = time.perf_counter() - t0
        dr.write_transform(result.transform, out)
        network = [st for st in result.figures["stages"] if st["model"] == "voxelmorph"]
        if network:  # the network's own share: resampling to the model grid, and the forward pass
            return {"time_s": elapsed, "peak_gb": peak_memory_gb(), "device": device,
                    "network_s": network[0]["network_s"], "resample_s": network[0]["resample_s"],
                    "stage_s": {st["model"]: round(st["time_s"], 2) for st in result.figures["stages"]}}
    elif method == "sitk:demons":
        import SimpleITK as sitk

        f = sitk.ReadImage(fixed, sitk.sitkFloat32)
        m = sitk.ReadImage(moving, sitk.sitkFloat32)
        field = None
        for shrink, iterations in ((4, 50), (2, 30), (1, 20)):
            fs = sitk.Shrink(f, [shrink] * 3) if shrink > 1 else f
            ms = sitk.Shrink(m, [shrink] * 3) if shrink > 1 else m
            init = (sitk.Resample(field, fs, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
                    if field is not None else sitk.Image(fs.GetSize(), sitk.sitkVectorFloat64))
            init.CopyInformation(fs)
            demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
            demons.SetNumberOfIterations(iterations)
            demons.SetStandardDeviations(1.5)
            field = demons.Execute(fs, ms, init)
        elapsed = time.perf_counter() - t0
        sitk.WriteTransform(sitk.DisplacementFieldTransform(field), out)
    elif method.startswith("ants:"):
        import ants  # antspyx

        f, m = ants.image_read(fixed), ants.image_read(moving)
        kind, metric = (method.split(":", 1)[1].split("+") + [None])[:2]
        options = {"aff_metric": "mattes", "syn_metric": "mattes"} if metric == "mi" else {}
        reg = ants.registration(f, m, type_of_transform=kind, **options)
        elapsed = time.perf_counter() - t0
        import SimpleITK as sitk

        # ANTs' forward list [warp, affine] is applied to fixed points last-first, as an ITK composite.
        parts = []
        for path in reg["fwdtransforms"]:
            if path.endswith(".mat"):
                parts.append(sitk.ReadTransform(path))
            else:
                parts.append(sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(path), sitk.sitkVectorFloat64)))
        sitk.WriteTransform(sitk.CompositeTransform(parts), out)
    elif method in ("elastix", "elastix:rigid"):
        import itk

        os.chdir(Path(out).parent)  # transformix writes deformationField.nii into the working folder
        f = itk.imread(fixed, itk.F)
        m = itk.imread(moving, itk.F)
        params = itk.ParameterObject.New()
        for kind in (["rigid"] if method == "elastix:rigid" else ["affine", "bspline"]):
            params.AddParameterMap(params.GetDefaultParameterMap(kind))  # Mattes mutual information
        _, tparams = itk.elastix_registration_method(f, m, parameter_object=params, log_to_console=False)
        elapsed = time.perf_counter() - t0
        field = itk.transformix_deformation_field(m, tparams)
        import SimpleITK as sitk

        arr = itk.array_from_image(field).astype("float64")
        img = sitk.GetImageFromArray(arr, isVector=True)
        img.CopyInformation(sitk.ReadImage(fixed))
        sitk.WriteTransform(sitk.DisplacementFieldTransform(img), out)
    else:
        raise SystemExit(f"unknown method {method}")
    peak_gb = peak_memory_gb()
    return {"time_s": elapsed, "peak_gb": peak_gb, "device": device}


def _available(method: str) -> bool:
    module = {"ants": "ants", "elastix": "itk"}.get(method.split(":")[0])
    if module is None:
        return True
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    parser.add_argument("--pairs", nargs="+", default=["oasis", "vm"], choices=["oasis", "vm"])
    parser.add_argument("--contrast", choices=["t1", "pd", "t2"], default="t1",
                        help="render the moving image in another contrast (brain_data.CONTRASTS: a non-monotonic "
                             "curve) for the multimodal methods")
    parser.add_argument("--contrast-of", choices=["moving", "fixed"], default="moving",
                        help="which image --contrast renders (fixed: a T1 moving image onto a PD- or T2-like "
                             "fixed one, e.g. a T1 atlas onto a patient's scan)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each method per pair (median time)")
    parser.add_argument("--json", help="write all figures here")
    parser.add_argument("--_child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        from DeepRegistrationLib.runtime import retain_freed_memory

        retain_freed_memory()  # every method's process as `deepreg` runs (peers included: they allocate through glibc too)
        method, fixed, moving, out = args._child
        print(json.dumps(_run_method(method, fixed, moving, out)))
        return

    import DeepRegistrationLib as dr

    data = Path(args.data)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        pairs = {"oasis": ("OASIS 0002 -> 0001", data / "oasis" / "OAS1_0001_MR1_aligned_norm.nii.gz",
                           data / "oasis" / "OAS1_0002_MR1_aligned_norm.nii.gz",
                           data / "oasis" / "OAS1_0001_MR1_aligned_seg35.nii.gz",
                           data / "oasis" / "OAS1_0002_MR1_aligned_seg35.nii.gz")}
        if "vm" in args.pairs:
            pairs["vm"] = ("voxelmorph subject -> OASIS 0001",) + _voxelmorph_pair(data, Path(tmp))
        for key in args.pairs:
            title, fixed, moving, fixed_seg, moving_seg = pairs[key]
            if args.contrast != "t1":
                from brain_data import remap_contrast

                out = Path(tmp) / f"{key}_{args.contrast_of}_{args.contrast}.nii.gz"
                if args.contrast_of == "fixed":
                    fixed = remap_contrast(fixed, fixed_seg, args.contrast, out)
                else:
                    moving = remap_contrast(moving, moving_seg, args.contrast, out)
                title += f" ({args.contrast_of} rendered {args.contrast.upper()}-like)"
            results[key] = _run_pair(args.methods, str(fixed), str(moving), dr.read_image(fixed_seg).as_label_map(),
                                     dr.read_image(moving_seg).as_label_map(), Path(tmp), max(1, args.repeat))
            _print_table(title, results[key])
        if len(results) > 1:
            _print_summary(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def _voxelmorph_pair(data: Path, tmp: Path) -> tuple[Path, Path, Path, Path]:
    """The voxelmorph subject as NIfTI files beside OASIS 0001 (see ``brain_data.py``)."""
    from brain_data import oasis, write_voxelmorph_subject

    image, labels = write_voxelmorph_subject(tmp, data)
    fixed, fixed_labels = oasis("0001", data)
    return fixed, image, fixed_labels, labels


def _run_pair(methods, fixed: str, moving: str, fixed_labels, moving_labels, tmp: Path, repeat: int = 1) -> list[dict]:
    """Each method ``repeat`` times (fresh processes): figures of the first run, the median time (and the range),
    the mean of the Dice figures over the runs and their spread."""
    import statistics

    import DeepRegistrationLib as dr
    from DeepRegistrationLib.metrics.report import evaluate_transform

    rows = []
    for method in methods:
        if not _available(method):
            print(f"{method}: not installed, skipped", file=sys.stderr)
            continue
        runs = []
        for _ in range(repeat):
            out = str(tmp / (re.sub(r"[^A-Za-z0-9_.+-]", "_", method) + ".h5"))  # a preset may be a path
            proc = subprocess.run([sys.executable, __file__, "--_child", method, fixed, moving, out],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{method}: failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                break
            figures = json.loads(proc.stdout.strip().splitlines()[-1])
            transform = dr.read_transform(out, reference=fixed_labels.grid)
            report = evaluate_transform(transform, fixed_labels, moving_labels)
            runs.append({"method": method, **figures, "dice": report["mean"]["dice"], "hd95": report["mean"]["hd95"],
                         "dice_before": report["mean_dice_before"],
                         "folding_percent": report["jacobian"]["folding_percent"],
                         "std_log_jacobian": report["jacobian"]["std_log_jacobian"],
                         "dice_per_label": {k: v["dice"] for k, v in report["labels"].items()}})
        if len(runs) < repeat:
            continue
        row = dict(runs[0])
        times, dices = [r["time_s"] for r in runs], [r["dice"] for r in runs]
        row.update(time_s=statistics.median(times), time_range_s=[min(times), max(times)], runs=repeat,
                   dice=statistics.fmean(dices), dice_range=[min(dices), max(dices)],
                   hd95=statistics.fmean(r["hd95"] for r in runs), peak_gb=max(r["peak_gb"] for r in runs))
        rows.append(row)
        spread = f" (runs {min(dices):.4f}-{max(dices):.4f}, {min(times):.1f}-{max(times):.1f} s)" if repeat > 1 else ""
        print(f"{method}: Dice {row['dice']:.4f} in {row['time_s']:.1f} s{spread}", file=sys.stderr, flush=True)
    return rows


def _print_summary(results: dict[str, list[dict]]) -> None:
    """Mean Dice over the pairs (4 decimals) and the median time on each pair, per method."""
    pairs = list(results)
    methods = [r["method"] for r in results[pairs[0]]]
    print(f"\nOver the pairs ({', '.join(pairs)})")
    print("| method | mean Dice | time s per pair |")
    print("|---|---|---|")
    for method in methods:
        rows = [next((r for r in results[p] if r["method"] == method), None) for p in pairs]
        if all(rows):
            times = " / ".join(f"{r['time_s']:.1f}" for r in rows)
            print(f"| {method} | {sum(r['dice'] for r in rows) / len(rows):.4f} | {times} |")


def _print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}, seg35, mean Dice before registration {rows[0]['dice_before']:.3f}" if rows else "")
    print("| method | mean Dice | HD95 mm | % det J <= 0 | std log\\|J\\| | time s | peak GB | device |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        time_s = f"{r['time_s']:.1f}" + (f" ({r['time_range_s'][0]:.1f}-{r['time_range_s'][1]:.1f})" if r["runs"] > 1 else "")
        print(f"| {r['method']} | {r['dice']:.3f} | {r['hd95']:.2f} | {r['folding_percent']:.3f} | "
              f"{r['std_log_jacobian']:.3f} | {time_s} | {r['peak_gb']:.2f} | {r['device']} |")
    for r in rows:
        if "network_s" in r:
            print(f"{r['method']}: network forward {r['network_s']:.2f} s, resampling to the model grid "
                  f"{r['resample_s']:.2f} s; stages {r['stage_s']}")
    if rows:
        labels = list(rows[0]["dice_per_label"])
        print("\nDice per label (seg35 ids " + " ".join(str(k) for k in labels) + "): " + "; ".join(
            f"{r['method']}: " + " ".join(f"{r['dice_per_label'][k]:.2f}" for k in labels) for r in rows))


if __name__ == "__main__":
    main()
