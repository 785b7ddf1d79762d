"""Figure of a registration done through the MRML bridge, the way the Slicer panel does it.

Builds a real MRML scene (slicer-core), registers the OASIS pair with ``RegistrationLogic`` (the code
behind the panel), lets Slicer's own ``vtkSlicerVolumesLogic`` resample the moving volume through the
resulting transform node, and draws fixed / moving / Slicer's result / checkerboards / Jacobian.

    .venv/bin/python benchmarks/slicer_result_figure.py [--preset deformable-fast] [--out Docs/slicer_result.png]

Needs matplotlib and slicer-core: ``bash scripts/setup_env.sh bench``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "brain3d" / "oasis"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="deformable-fast")
    parser.add_argument("--out", default=str(ROOT / "Docs" / "slicer_result.png"))
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import slicer
    import vtk

    vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_OFF)
    import DeepRegistrationLib as dr
    from DeepRegistrationLib.slicer import logic as sl
    from DeepRegistrationLib.slicer import nodes as slicer_nodes

    scene = slicer.vtkMRMLScene()
    nodes = {}
    for name, subject in (("fixed", "0001"), ("moving", "0002")):
        nodes[name] = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"OAS1_{subject}")
        slicer_nodes.update_volume_node_from_image(nodes[name], dr.read_image(DATA / f"OAS1_{subject}_MR1_aligned_norm.nii.gz"))
    jacobian = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Jacobian")
    start = time.perf_counter()
    out = sl.RegistrationLogic(scene).process(nodes["fixed"], nodes["moving"], args.preset, jacobianVolumeNode=jacobian)
    elapsed = time.perf_counter() - start
    vlogic = slicer.vtkSlicerVolumesLogic()
    vlogic.SetMRMLScene(scene)
    resampled = vlogic.ResampleVolumeToReferenceVolume(nodes["moving"], nodes["fixed"])  # moving is under the transform

    fixed = slicer.util.arrayFromVolume(nodes["fixed"])
    moving = slicer_nodes.image_from_volume_node(nodes["moving"]).resample_to(slicer_nodes.grid_from_volume_node(nodes["fixed"])).numpy()
    result = slicer.util.arrayFromVolume(resampled)
    jac = slicer.util.arrayFromVolume(jacobian)
    k = fixed.shape[0] // 2

    def checker(a, b, n=8):
        yy, xx = np.indices(a.shape)
        mask = ((yy * n // a.shape[0]) + (xx * n // a.shape[1])) % 2 == 0
        return np.where(mask, a, b)

    panels = [("fixed (OAS1_0001)", fixed[k]), ("moving (OAS1_0002)", moving[k]),
              ("moving through the transform node\n(resampled by Slicer)", result[k]),
              ("checkerboard before", checker(fixed[k], moving[k])), ("checkerboard after", checker(fixed[k], result[k])),
              ("Jacobian determinant", jac[k])]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 3.4))
    for ax, (title, img) in zip(axes, panels):
        kw = {"cmap": "RdBu_r", "vmin": 0.5, "vmax": 1.5} if title.startswith("Jacobian") else {"cmap": "gray"}
        ax.imshow(np.flipud(img), **kw)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    f = out.figures
    fig.suptitle(f"DeepRegistration in a Slicer scene: preset {args.preset}, {elapsed:.1f} s on {f['device']}, "
                 f"folded voxels {f['jacobian_folding_percent']:.3f} %, transform node "
                 f"'{out.transform_node.GetName()}' (grid, from parent)", fontsize=10)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"registered in {elapsed:.1f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
