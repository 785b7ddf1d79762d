"""The quick-start job (``deepreg demo``): register a real brain pair with a known answer, end to end.

Data (no ``../shared`` needed; fetched once from PyPI with ``pip download`` and cached):
* fixed: the ICBM152 2009a T1 template and its grey/white-matter maps (inside the nilearn 0.14.1 wheel);
* a real nonlinear inter-subject warp (FSL field, inside the nitransforms 25.1.0 wheel).

The known transform (fixed -> moving) is ``T = A o W``: the real warp ``W`` (re-centred on the
template) followed by an affine ``A`` (8 deg, 10 mm, 4 % scaling). The moving image is the template
resampled through ``T^-1`` onto an anisotropic (1.2 x 1.2 x 2.0 mm) oblique grid, as a differently
acquired scan would be. The engine then registers moving -> fixed (rigid, affine, diffeomorphic SVF)
and the report compares the recovered transform with ``T`` in millimetres inside the brain, and the
grey/white-matter Dice before and after.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from ..geometry import Grid
from ..image import Image
from ..io import read_image, write_transform
from ..io.atomic import atomic_output_dir
from ..io.transforms import read_fsl_displacement_field
from ..registration import load_preset, register
from ..transforms import AffineTransform, DisplacementField, compose, rotation_matrix
from ..warp import warp_image

__all__ = ["run_demo", "fetch_demo_data", "DEMO_PRESET"]

#: The preset the demo runs (DeepRegistrationLib/resources/presets/deformable-fast.json).
DEMO_PRESET = "deformable-fast"

#: Demo file name -> :data:`~DeepRegistrationLib.io.wheel_data.WHEEL_FILES` key.
_DEMO_FILES = {"t1.nii.gz": "icbm152_t1.nii.gz", "gm.nii.gz": "icbm152_gm.nii.gz", "wm.nii.gz": "icbm152_wm.nii.gz",
               "warp_fsl.nii.gz": "warp_fsl.nii.gz"}


def fetch_demo_data(cache_dir: Path | None = None) -> Path:
    """Download (once) the nilearn and nitransforms wheels, extract and check the demo files; returns a folder
    holding them under the names :func:`run_demo` reads."""
    from ..io.wheel_data import default_cache_dir, fetch_wheel_files

    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    paths = fetch_wheel_files(list(_DEMO_FILES.values()), cache)
    data = cache / "demo_data"
    data.mkdir(parents=True, exist_ok=True)
    for name, key in _DEMO_FILES.items():
        link = data / name
        if link.is_symlink() or link.exists():
            if link.resolve() == paths[key].resolve():
                continue
            link.unlink()
        link.symlink_to(paths[key])
    return data


def _recentred(field: DisplacementField, center: np.ndarray) -> DisplacementField:
    """The same displacement vectors on a grid moved so that its centre is ``center`` (LPS mm)."""
    g = field.grid
    shift = np.asarray(center) - g.center()
    return DisplacementField(field.field, Grid(g.size, np.asarray(g.origin) + shift, g.spacing, g.direction))


def _moving_grid(fixed: Grid, transform_center: np.ndarray) -> Grid:
    rot = rotation_matrix(torch.tensor([0.12, -0.08, 0.15], dtype=torch.float64), 3).numpy() @ fixed.direction_matrix()
    spacing = np.array([1.2, 1.2, 2.0])
    size = np.ceil(np.asarray(fixed.extent_mm()) * 1.1 / spacing).astype(int) + 1
    return Grid.centred(transform_center, size, spacing, rot)


def _montage(panels: list[list[np.ndarray]]) -> np.ndarray:
    """Rows x columns of 2D float arrays in [0, 1] -> one uint8 picture (zero-padded to common sizes)."""
    h = max(p.shape[0] for row in panels for p in row)
    w = max(p.shape[1] for row in panels for p in row)
    rows = []
    for row in panels:
        cells = []
        for p in row:
            cell = np.zeros((h, w))
            cell[(h - p.shape[0]) // 2:(h - p.shape[0]) // 2 + p.shape[0], (w - p.shape[1]) // 2:(w - p.shape[1]) // 2 + p.shape[1]] = p
            cells.append(np.pad(cell, 2))
        rows.append(np.concatenate(cells, axis=1))
    return (np.clip(np.concatenate(rows, axis=0), 0, 1) * 255).astype(np.uint8)


def _views(volume: np.ndarray) -> list[np.ndarray]:
    """Axial, coronal and sagittal mid-slices of a (k, j, i) volume, flipped for display."""
    k, j, i = (n // 2 for n in volume.shape)
    return [np.flipud(volume[k]), np.flipud(volume[:, j, :]), np.flipud(volume[:, :, i])]


def run_demo(output: Path, cache_dir: Path | None = None, data_dir: Path | None = None, device: str = "auto") -> dict:
    """Run the demo and write ``transform.h5``, ``warped.nii.gz``, ``moving.nii.gz``, ``report.{md,json,png}``."""
    t_start = time.perf_counter()
    data = Path(data_dir) if data_dir else fetch_demo_data(cache_dir)
    fixed = read_image(data / "t1.nii.gz").float()
    gm, wm = read_image(data / "gm.nii.gz").float(), read_image(data / "wm.nii.gz").float()
    brain = ((gm.data + wm.data) > 0.5 * float(gm.data.max())).squeeze(0)
    center = fixed.grid.center()

    warp = _recentred(read_fsl_displacement_field(data / "warp_fsl.nii.gz"), center)
    matrix = 1.04 * rotation_matrix(torch.tensor(np.radians([8.0, -5.0, 6.0]), dtype=torch.float64), 3)
    affine = AffineTransform(matrix, [10.0, -6.0, 4.0], center)
    truth = compose(warp, affine)  # fixed -> moving: warp first, then affine
    warp_inverse = warp.inverse()
    truth_inverse = compose(affine.inverse(), warp_inverse)
    mgrid = _moving_grid(fixed.grid, affine.map_points(center[None])[0])
    moving = warp_image(fixed, truth_inverse, mgrid)
    moving.name = "moving (template through the known transform's inverse)"
    moving_gm = warp_image(gm, truth_inverse, mgrid)
    moving_wm = warp_image(wm, truth_inverse, mgrid)

    config = load_preset(DEMO_PRESET)
    result = register(fixed, moving, config, device=device)
    estimate = result.transform
    warped = result.warped()

    # accuracy in mm inside the brain (every 2nd voxel along each axis)
    pts = fixed.grid.physical_points(dtype=torch.float64)[::2, ::2, ::2][brain[::2, ::2, ::2]]
    true_y = truth.map_points(pts)
    err_after = (estimate.map_points(pts) - true_y).norm(dim=-1)
    err_before = (pts - true_y).norm(dim=-1)
    after_linear = (compose(*[p for p in estimate.parts if p.is_linear]).map_points(pts) - true_y).norm(dim=-1) \
        if hasattr(estimate, "parts") else err_after

    def dice(a: torch.Tensor, b: torch.Tensor) -> float:
        a, b = a > 0.5 * 255, b > 0.5 * 255
        return float(2 * (a & b).sum() / (a.sum() + b.sum()))

    before_gm = warp_image(moving_gm, None, fixed.grid).data
    before_wm = warp_image(moving_wm, None, fixed.grid).data
    after_gm = warp_image(moving_gm, estimate, fixed.grid).data
    after_wm = warp_image(moving_wm, estimate, fixed.grid).data
    from ..metrics import jacobian_determinant, jacobian_stats

    jac = jacobian_stats(jacobian_determinant(estimate, fixed.grid.with_spacing([2.0, 2.0, 2.0])))

    def q(t: torch.Tensor, p: float) -> float:
        return float(torch.quantile(t.double(), p))

    report = {
        "data": {"fixed": "ICBM152 2009a T1 (nilearn 0.14.1 wheel), 197x233x189 at 1 mm",
                 "moving": f"fixed through the inverse of the known transform, on a {list(mgrid.size)} grid at "
                           f"{list(mgrid.spacing)} mm, oblique",
                 "known_transform": "real FSL warp (nitransforms 25.1.0 wheel, up to "
                                    f"{float(warp.field.norm(dim=0).max()):.1f} mm) then affine (8/-5/6 deg, "
                                    "10/-6/4 mm, 4 % scale)",
                 "numerical_inverse_residual_mm": warp_inverse.inverse_residual_mm},
        "registration": {"preset": DEMO_PRESET, "config": config.to_dict(), "device": result.figures["device"],
                         "time_s": round(result.figures["time_s"], 1)},
        "error_mm_inside_brain": {
            "before": {"mean": float(err_before.mean()), "p95": q(err_before, 0.95)},
            "after_affine": {"mean": float(after_linear.mean()), "p95": q(after_linear, 0.95)},
            "after_deformable": {"mean": float(err_after.mean()), "p95": q(err_after, 0.95),
                                 "max": float(err_after.max())},
        },
        "dice": {"grey_matter": {"before": dice(gm.data, before_gm), "after": dice(gm.data, after_gm)},
                 "white_matter": {"before": dice(wm.data, before_wm), "after": dice(wm.data, after_wm)}},
        "jacobian": jac,
        "total_time_s": round(time.perf_counter() - t_start, 1),
    }

    output = Path(output)
    with atomic_output_dir(output) as tmp:
        write_transform(estimate, tmp / "transform.h5")
        warped.write(tmp / "warped.nii.gz")
        moving.write(tmp / "moving.nii.gz")
        fixed.write(tmp / "fixed.nii.gz")
        scale = float(torch.quantile(fixed.data.flatten()[::7], 0.995))
        f, m0 = fixed.numpy() / scale, warp_image(moving, None, fixed.grid).numpy() / scale
        w = warped.numpy() / scale
        cols = [_views(f), _views(m0), _views(w), _views(np.abs(f - m0) * 2), _views(np.abs(f - w) * 2)]
        picture = _montage([[c[v] for c in cols] for v in range(3)])
        Image(picture, Grid(picture.shape[::-1])).write(tmp / "report.png")
        (tmp / "report.json").write_text(json.dumps(report, indent=2))
        (tmp / "report.md").write_text(_markdown(report))
    print(_markdown(report))
    print(f"wrote {output}/: transform.h5 (fixed -> moving, ITK), warped.nii.gz, moving.nii.gz, fixed.nii.gz, "
          "report.md, report.json, report.png")
    return report


def _markdown(r: dict) -> str:
    e, d = r["error_mm_inside_brain"], r["dice"]
    return "\n".join([
        "# DeepRegistration demo: known-transform recovery on the ICBM152 template",
        "",
        f"- fixed: {r['data']['fixed']}",
        f"- moving: {r['data']['moving']}",
        f"- known transform: {r['data']['known_transform']}",
        f"- registration: preset `{r['registration']['preset']}` ({r['registration']['config']['description']}) "
        f"on {r['registration']['device']}, "
        f"{r['registration']['time_s']} s",
        "",
        "| inside the brain | mean error (mm) | 95th percentile (mm) |",
        "|---|---|---|",
        f"| before registration | {e['before']['mean']:.2f} | {e['before']['p95']:.2f} |",
        f"| after rigid + affine | {e['after_affine']['mean']:.2f} | {e['after_affine']['p95']:.2f} |",
        f"| after deformable (SVF) | {e['after_deformable']['mean']:.2f} | {e['after_deformable']['p95']:.2f} |",
        "",
        "| Dice (tissue map > 0.5) | before | after |",
        "|---|---|---|",
        f"| grey matter | {d['grey_matter']['before']:.3f} | {d['grey_matter']['after']:.3f} |",
        f"| white matter | {d['white_matter']['before']:.3f} | {d['white_matter']['after']:.3f} |",
        "",
        f"Jacobian of the result: {r['jacobian']['folding_percent']:.3f} % folded voxels, "
        f"std log|J| {r['jacobian']['std_log_jacobian']:.3f}.",
        "",
        "![fixed | moving | warped | |fixed - moving| | |fixed - warped|](report.png)",
        "",
        "Columns: fixed, moving (before), warped moving (after), difference before, difference after; "
        "rows: axial, coronal, sagittal.",
        "",
    ])
