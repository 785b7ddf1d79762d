"""Whole-head volumes at the cost of their anatomy: each preset on the OASIS pair as distributed (160 x 192 x 224,
1 mm, cropped around the head) and zero-padded to 256^3 (a FreeSurfer-conformed size), with the foreground crop
on (the default) and off. One process per run (2 threads); Dice over the seg35 labels (label interpolation),
folding on the full fixed grid (256^3 for the padded pair).

    .venv/bin/python benchmarks/whole_head.py [preset ...]

Issue 19's target: every preset on the 256^3 pair within 1.5x of its time on the cropped anatomy, Dice unchanged.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_memory_gb  # noqa: E402
from memory_256 import DATA, padded as pad_to_256  # noqa: E402


def _pair(padded: bool, kind: str):
    import DeepRegistrationLib as dr

    if padded:
        return [pad_to_256(subject, kind) for subject in ("0001", "0002")]
    return [dr.read_image(DATA / f"OAS1_{subject}_MR1_aligned_{kind}.nii.gz") for subject in ("0001", "0002")]


def run_one(preset: str, padded: bool, crop: bool) -> dict:
    import torch

    from DeepRegistrationLib.metrics.report import evaluate_transform
    from DeepRegistrationLib.registration import load_preset, register

    torch.set_num_threads(2)
    fixed, moving = _pair(padded, "norm")
    fixed_labels, moving_labels = _pair(padded, "seg35")
    config = load_preset(preset, [f"crop_to_foreground={'true' if crop else 'false'}"])
    start = time.perf_counter()
    result = register(fixed, moving, config, device="cpu")
    elapsed = time.perf_counter() - start
    peak = peak_memory_gb()
    report = evaluate_transform(result.transform, fixed_labels, moving_labels, surface=False)
    return {"preset": preset, "shape": list(fixed.shape), "crop": crop, "time_s": round(elapsed, 1),
            "dice": round(report["mean"]["dice"], 4), "dice_before": round(report["mean_dice_before"], 4),
            "folding": report["jacobian"]["folding_percent"], "peak_gb": round(peak, 2),
            "crop_size": result.figures.get("fixed_crop", {}).get("size")}


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--one":
        print(json.dumps(run_one(sys.argv[2], sys.argv[3] == "padded", sys.argv[4] == "crop")))
        return 0
    presets = sys.argv[1:] or ["rigid", "affine", "deformable-fast", "deformable-accurate"]
    print("| preset | image | foreground crop | time | mean Dice (before) | folding | peak memory |")
    print("|---|---|---|---|---|---|---|")
    for preset in presets:
        for padded, crop in ((False, True), (True, True), (True, False)):
            out = subprocess.run([sys.executable, __file__, "--one", preset, "padded" if padded else "cropped",
                                  "crop" if crop else "nocrop"], capture_output=True, text=True)
            if out.returncode != 0:
                print(f"| {preset} | failed: {out.stderr.strip().splitlines()[-1]} |", flush=True)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            where = "x".join(map(str, r["shape"]))
            crop_txt = ("on: " + "x".join(map(str, r["crop_size"][::-1]))) if r["crop_size"] else ("on: not needed" if crop else "off")
            print(f"| {preset} | {where} | {crop_txt} | {r['time_s']} s | {r['dice']:.3f} ({r['dice_before']:.3f}) | "
                  f"{r['folding']:.3f} % | {r['peak_gb']:.2f} GB |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
