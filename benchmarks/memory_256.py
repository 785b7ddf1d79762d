"""Peak memory of a registration of a 256^3 pair on the CPU (one preset per process, so peaks do not mix).

The OASIS pair (160 x 192 x 224 at 1 mm) is zero-padded to 256^3 at 1 mm; the process registers it with
the preset and reports wall time and the process's peak resident memory (``VmHWM``), which includes
Python, torch and the images themselves.

    .venv/bin/python benchmarks/memory_256.py [deformable-fast deformable-accurate ...]
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
DATA = ROOT.parent / "shared" / "data" / "brain3d" / "oasis"


def padded(subject: str, kind: str = "norm"):
    """OASIS ``subject``'s ``kind`` image (``norm`` T1 or ``seg35`` labels) zero-padded to 256^3, voxels in place."""
    import numpy as np
    import torch

    import DeepRegistrationLib as dr

    image = dr.read_image(DATA / f"OAS1_{subject}_MR1_aligned_{kind}.nii.gz")
    out = np.zeros((256, 256, 256), dtype=image.numpy().dtype)
    shape = image.shape
    start = [(256 - n) // 2 for n in shape]
    out[tuple(slice(s, s + n) for s, n in zip(start, shape))] = image.numpy()
    origin = image.grid.index_to_physical([[-start[2], -start[1], -start[0]]])[0]
    grid = dr.Grid((256, 256, 256), origin, image.grid.spacing, image.grid.direction_matrix())
    return dr.Image(torch.from_numpy(out)[None], grid, name=f"OAS1_{subject} 256^3")


def run_one(preset: str) -> dict:
    import torch

    from DeepRegistrationLib.registration import load_preset, register

    torch.set_num_threads(2)
    fixed, moving = padded("0001"), padded("0002")
    base = peak_memory_gb() * 1024
    start = time.perf_counter()
    result = register(fixed, moving, load_preset(preset), device="cpu")
    elapsed = time.perf_counter() - start
    result.warped()  # the output image too
    peak = peak_memory_gb() * 1024
    return {"preset": preset, "shape": list(fixed.shape), "time_s": round(elapsed, 1),
            "peak_rss_mb": round(peak), "peak_before_registration_mb": round(base)}


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(json.dumps(run_one(sys.argv[2])))
        return 0
    presets = sys.argv[1:] or ["deformable-fast", "deformable-accurate"]
    print("| preset | image | time | peak memory (process) |\n|---|---|---|---|")
    for preset in presets:
        out = subprocess.run([sys.executable, __file__, "--one", preset], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {r['preset']} | {'x'.join(map(str, r['shape']))} at 1 mm | {r['time_s']} s | "
              f"{r['peak_rss_mb'] / 1024:.2f} GB (inputs loaded: {r['peak_before_registration_mb'] / 1024:.2f} GB) |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
