"""Cost of the Slicer result nodes on a full-size pair: the plain transform node, the inverse node and the
displacement-field-only nodes, each in its own process (peak memory does not mix), through a real MRML scene
(``slicer-core``), ``deformable-fast`` on the OASIS pair zero-padded to 256^3 at 1 mm (as ``memory_256.py``).

    .venv/bin/python benchmarks/slicer_outputs.py [--cropped]

Prints the registration time (the engine's own figure), the time spent making the nodes (inverse and
fields included), the inverse's consistency and the process's peak resident memory.
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
from memory_256 import DATA, padded  # noqa: E402

CONFIGS = {"transform node": {}, "+ inverse node": {"inverse": True},
           "field only + inverse": {"inverse": True, "displacementFieldOnly": True}}


def run_one(name: str, cropped: bool) -> dict:
    import torch
    import vtk

    import DeepRegistrationLib as dr
    import slicer
    from DeepRegistrationLib.slicer.logic import RegistrationLogic
    from DeepRegistrationLib.slicer.nodes import update_volume_node_from_image

    vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_OFF)
    torch.set_num_threads(2)
    if cropped:
        fixed, moving = (dr.read_image(DATA / f"OAS1_{s}_MR1_aligned_norm.nii.gz") for s in ("0001", "0002"))
    else:
        fixed, moving = padded("0001"), padded("0002")
    scene = slicer.vtkMRMLScene()
    nodes = []
    for image, label in ((fixed, "fixed"), (moving, "moving")):
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", label)
        update_volume_node_from_image(node, image)
        nodes.append(node)
    del fixed, moving
    options = dict(CONFIGS[name])
    if options.pop("inverse", False):
        options["inverseTransformNode"] = scene.AddNewNodeByClass("vtkMRMLTransformNode", "inverse")
    start = time.perf_counter()
    out = RegistrationLogic(scene).process(nodes[0], nodes[1], "deformable-fast", device="cpu", **options)
    total = time.perf_counter() - start
    figures = out.figures
    inverse = figures.get("inverse", {})
    return {"config": name, "shape": list(nodes[0].GetImageData().GetDimensions())[::-1],
            "registration_s": round(figures["time_s"], 1), "nodes_s": round(total - figures["time_s"], 1),
            "inverse_mean_mm": inverse.get("consistency_mean_mm"), "inverse_max_mm": inverse.get("consistency_max_mm"),
            "peak_gb": round(peak_memory_gb(), 2)}


def main() -> int:
    if len(sys.argv) >= 3 and sys.argv[1] == "--one":
        print(json.dumps(run_one(sys.argv[2], "--cropped" in sys.argv)))
        return 0
    cropped = "--cropped" in sys.argv
    print("| nodes | image | registration | making the nodes | inverse consistency (mean / max) | peak memory |")
    print("|---|---|---|---|---|---|")
    for name in CONFIGS:
        out = subprocess.run([sys.executable, __file__, "--one", name] + (["--cropped"] if cropped else []),
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(f"| {name} | failed: {out.stderr.strip().splitlines()[-1]} |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        inv = (f"{r['inverse_mean_mm']:.3f} / {r['inverse_max_mm']:.2f} mm" if r["inverse_mean_mm"] is not None
               else "-")
        print(f"| {r['config']} | {'x'.join(map(str, r['shape']))} at 1 mm | {r['registration_s']} s | "
              f"{r['nodes_s']} s | {inv} | {r['peak_gb']:.2f} GB |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
