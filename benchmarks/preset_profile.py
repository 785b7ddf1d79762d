"""Profile of every bundled preset, stage by stage, on the brain benchmark pairs: time and memory per stage, Dice.

All presets run in one process on one device, with warm-up runs first (on a GPU the first run of a process pays
for the CUDA context, the kernels' compilation and cuDNN's algorithm search; an interactive session pays that
once). The timed run is synchronised with the device at its end, so the time is the registration's own (the
images already read, no interpreter start), which is what "end to end < 1 s on a GPU" refers to. Per stage: its
time and the peak memory so far (the process's resident peak, and on CUDA the GPU's allocated peak, reset before
each preset). The Dice figures use the same evaluation as ``registration.py`` (moving seg35 labels warped with the
label-aware resampler). For peak memory per preset on the CPU, use ``registration.py``: it gives every method a
process of its own.

Run:  .venv/bin/python benchmarks/preset_profile.py [--device cuda] [--presets rigid affine ...] [--pairs oasis vm]
      [--warmup N] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "brain3d"


def _synchronise(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def profile_preset(name: str, fixed, moving, fixed_labels, moving_labels, device: str, warmup: int) -> dict:
    """Warm-up runs, then one timed run of preset ``name``: total and per-stage figures, Dice and folding."""
    import torch

    from DeepRegistrationLib.metrics.report import evaluate_transform
    from DeepRegistrationLib.registration import load_preset, register

    config = load_preset(name)
    for _ in range(warmup):
        register(fixed, moving, config, device=device)
    _synchronise(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = register(fixed, moving, config, device=device)
    _synchronise(device)
    elapsed = time.perf_counter() - start
    report = evaluate_transform(result.transform, fixed_labels, moving_labels, surface=False)
    figures = result.figures
    stages = [{"model": st["model"], "similarity": st.get("similarity"), "time_s": round(st["time_s"], 3),
               "peak_resident_gb": round(st["peak_resident_gb"], 2),
               **({"peak_gpu_gb": round(st["peak_gpu_allocated_gb"], 2)} if "peak_gpu_allocated_gb" in st else {})}
              for st in figures["stages"]]
    return {"preset": name, "device": figures["device"], "time_s": elapsed,
            "pyramid_s": figures.get("pyramid_time_s", 0.0), "stages": stages,
            "dice": report["mean"]["dice"], "dice_before": report["mean_dice_before"],
            "folding_percent": report["jacobian"]["folding_percent"],
            "peak_gpu_gb": max((s.get("peak_gpu_gb", 0.0) for s in stages), default=0.0)}


def _print_rows(title: str, rows: list[dict]) -> None:
    print(f"\n{title} (device {rows[0]['device'] if rows else '?'})")
    print("| preset | time s | of which pyramid s | stages (s, peak GPU GB) | Dice | % det J <= 0 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        stages = "; ".join(f"{s['model']}/{s['similarity']} {s['time_s']:.2f}"
                           + (f" ({s['peak_gpu_gb']:.2f})" if "peak_gpu_gb" in s else "") for s in r["stages"])
        print(f"| {r['preset']} | {r['time_s']:.2f} | {r['pyramid_s']:.2f} | {stages} | {r['dice']:.3f} | "
              f"{r['folding_percent']:.3f} |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--presets", nargs="+", help="default: every bundled preset")
    parser.add_argument("--pairs", nargs="+", default=["oasis"], choices=["oasis", "vm"])
    parser.add_argument("--warmup", type=int, help="untimed runs before the timed one (default 1 on CUDA, 0 on CPU)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("DEEPREG_THREADS", "2")))
    parser.add_argument("--json", help="write all figures here")
    args = parser.parse_args()

    import torch

    import DeepRegistrationLib as dr
    from DeepRegistrationLib.registration import list_presets
    from DeepRegistrationLib.devices import resolve_device
    from DeepRegistrationLib.runtime import retain_freed_memory

    retain_freed_memory()
    torch.set_num_threads(args.threads)
    device = str(resolve_device(args.device))
    warmup = args.warmup if args.warmup is not None else (1 if device.startswith("cuda") else 0)
    presets = args.presets or sorted(list_presets())
    data = Path(args.data)
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        from brain_data import oasis, write_voxelmorph_subject

        fixed_image, fixed_seg = oasis("0001", data)
        sources = {"oasis": ("OASIS 0002 -> 0001", oasis("0002", data))}
        if "vm" in args.pairs:
            sources["vm"] = ("voxelmorph subject -> OASIS 0001", write_voxelmorph_subject(Path(tmp), data))
        fixed = dr.read_image(fixed_image)
        fixed_labels = dr.read_image(fixed_seg).as_label_map()
        for key in args.pairs:
            title, (moving_image, moving_seg) = sources[key]
            moving, moving_labels = dr.read_image(moving_image), dr.read_image(moving_seg).as_label_map()
            rows = []
            for name in presets:
                try:
                    rows.append(profile_preset(name, fixed, moving, fixed_labels, moving_labels, device, warmup))
                except dr.InputError as error:  # a 2D preset (retina, the 2D translation model) on a 3D pair
                    print(f"{key} {name}: skipped ({error})", file=sys.stderr, flush=True)
                    continue
                print(f"{key} {name}: {rows[-1]['time_s']:.2f} s, Dice {rows[-1]['dice']:.3f}", file=sys.stderr,
                      flush=True)
            results[key] = rows
            _print_rows(title, rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "warmup": warmup, "pairs": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
