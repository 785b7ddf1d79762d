"""The ``deepreg`` command line: real files in, exit status, one-line errors, no partial outputs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

import DeepRegistrationLib as dr
from conftest import ROOT, data_file, known_transform, oblique_grid


def deepreg(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "DeepRegistrationLib", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def _error_line(result) -> str:
    """The one error line (notes such as 'note: ... RGB' may precede it; no traceback)."""
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.startswith("deepreg:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def case(tmp_path_factory, oasis_t1, oasis_seg_pair):
    """A 3 mm oblique OASIS pair on disk: moving = fixed warped by a known transform, plus label maps."""
    d = tmp_path_factory.mktemp("cli")
    grid = oblique_grid(oasis_t1.grid, spacing=(2.5, 3.0, 3.5))
    fixed = oasis_t1.resample_to(grid)
    seg = oasis_seg_pair[0].resample_to(grid, interpolation="nearest")
    transform = known_transform(grid.center())
    fixed.write(d / "fixed.nii.gz")
    seg.write(d / "fixed_seg.nii.gz")
    # moving image such that moving(T(x)) = fixed(x): warp by the inverse
    inverse = dr.to_displacement_field(transform, grid).inverse()
    dr.warp_image(seg, inverse, seg, interpolation="label").write(d / "moving_seg.nii.gz")
    dr.write_transform(transform, d / "T.h5")
    return d, fixed, transform


@pytest.mark.parametrize("command", ["apply", "evaluate", "info", "demo"])
def test_help(command):
    result = deepreg(command, "--help")
    assert result.returncode == 0 and "usage: deepreg" in result.stdout


def test_apply_image_matches_library_and_simpleitk(case):
    d, fixed, transform = case
    out = d / "warped.nii.gz"
    result = deepreg("apply", "--transform", d / "T.h5", "--moving", d / "fixed.nii.gz", "--reference",
                     d / "fixed.nii.gz", "--output", out)
    assert result.returncode == 0, result.stderr
    ours = dr.read_image(out).numpy()
    np.testing.assert_allclose(ours, dr.warp_image(fixed, transform, fixed).numpy(), atol=1e-5)
    img = sitk.ReadImage(str(d / "fixed.nii.gz"))
    theirs = sitk.GetArrayFromImage(sitk.Resample(img, img, sitk.ReadTransform(str(d / "T.h5")), sitk.sitkLinear, 0.0))
    assert np.abs(ours - theirs).max() < 1e-3 * float(fixed.data.max())


def test_apply_points(case, tmp_path):
    d, fixed, transform = case
    pts = fixed.grid.index_to_physical(np.array([[10.0, 12.0, 14.0], [30.0, 20.0, 25.0]]))
    np.savetxt(tmp_path / "p.csv", pts, delimiter=",", header="x,y,z", comments="")
    result = deepreg("apply", "--transform", d / "T.h5", "--points-in", tmp_path / "p.csv", "--points-out",
                     tmp_path / "q.csv")
    assert result.returncode == 0, result.stderr
    q = np.loadtxt(tmp_path / "q.csv", delimiter=",", skiprows=1)
    tx = sitk.ReadTransform(str(d / "T.h5"))
    np.testing.assert_allclose(q, [tx.TransformPoint(p.tolist()) for p in pts], atol=0.01)
    back = deepreg("apply", "--transform", d / "T.h5", "--inverse", "--points-in", tmp_path / "q.csv",
                   "--points-out", tmp_path / "r.csv")
    assert back.returncode == 0, back.stderr
    np.testing.assert_allclose(np.loadtxt(tmp_path / "r.csv", delimiter=",", skiprows=1), pts, atol=0.05)


def test_evaluate_recovers_known_transform(case, tmp_path):
    d, _, _ = case
    result = deepreg("evaluate", "--transform", d / "T.h5", "--fixed-labels", d / "fixed_seg.nii.gz",
                     "--moving-labels", d / "moving_seg.nii.gz", "--json", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    assert "mean" in result.stdout and "Jacobian" in result.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    # The moving labels were made by the exact inverse, so the true transform gives a high Dice and before is low.
    assert report["mean"]["dice"] > 0.8 > report["mean_dice_before"]
    assert report["jacobian"]["folding_percent"] == 0


def test_evaluate_lung_landmarks_and_masks(tmp_path):
    fixed = data_file("lung_ct/itkelastix_CT_3D_lung_fixed_mask.mha")
    moving = data_file("lung_ct/itkelastix_CT_3D_lung_moving_mask.mha")
    dr.write_transform(dr.IdentityTransform(3), tmp_path / "id.tfm")
    result = deepreg("evaluate", "--transform", tmp_path / "id.tfm", "--fixed-labels", fixed, "--moving-labels",
                     moving, "--fixed-landmarks", data_file("lung_ct/itkelastix_CT_3D_lung_fixed_point_set.txt"),
                     "--moving-landmarks", data_file("lung_ct/itkelastix_CT_3D_lung_moving_point_set.txt"),
                     "--no-surface")
    assert result.returncode == 0, result.stderr
    assert "TRE (100 landmarks)" in result.stdout


def test_info_image_and_transform(case):
    d, _, _ = case
    img = deepreg("info", d / "fixed.nii.gz", "--json")
    assert img.returncode == 0 and json.loads(img.stdout)["spacing_mm"] == pytest.approx([2.5, 3.0, 3.5])
    tx = deepreg("info", d / "T.h5")
    assert tx.returncode == 0 and "CompositeTransform" in tx.stdout and "RigidTransform" in tx.stdout


def test_info_on_an_image_needs_no_torch(case, tmp_path):
    """``deepreg info IMAGE`` reads the header and the values with SimpleITK alone (torch takes about 1 s to
    import): it runs with torch made unimportable and prints what the full reader gives."""
    d, _, _ = case
    code = ("import sys; sys.modules['torch'] = None\n"
            "from DeepRegistrationLib.cli import main\n"
            "raise SystemExit(main(sys.argv[1:]))\n")
    for path in (d / "fixed.nii.gz", data_file("multimodal2d/BrainT1SliceBorder20.png")):
        light = subprocess.run([sys.executable, "-c", code, "info", str(path), "--json"], capture_output=True,
                               text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
        assert light.returncode == 0, light.stderr
        info = json.loads(light.stdout)
        image = dr.read_image(path)
        assert info["size"] == list(image.grid.size) and info["channels"] == image.num_channels
        assert info["range"] == pytest.approx([float(image.data.min()), float(image.data.max())])
        assert info["spacing_mm"] == pytest.approx(list(image.grid.spacing))
    truncated = tmp_path / "cut.nii.gz"
    truncated.write_bytes((d / "fixed.nii.gz").read_bytes()[:-2000])
    bad = subprocess.run([sys.executable, "-c", code, "info", str(truncated)], capture_output=True, text=True,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert bad.returncode == 2 and "cannot read image: truncated" in bad.stderr, bad.stderr


# ---------------------------------------------------------------------- bad input
def test_missing_file(case, tmp_path):
    d, _, _ = case
    result = deepreg("apply", "--transform", tmp_path / "nope.h5", "--moving", d / "fixed.nii.gz", "--reference",
                     d / "fixed.nii.gz", "--output", tmp_path / "out.nii.gz")
    assert result.returncode == 2
    assert "nope.h5: file not found" in _error_line(result)
    assert not (tmp_path / "out.nii.gz").exists()


def test_corrupt_image(case, tmp_path):
    d, _, _ = case
    (tmp_path / "bad.nii.gz").write_bytes(b"\x1f\x8b garbage")
    result = deepreg("apply", "--transform", d / "T.h5", "--moving", tmp_path / "bad.nii.gz", "--reference",
                     d / "fixed.nii.gz", "--output", tmp_path / "out.nii.gz")
    assert result.returncode == 2 and "bad.nii.gz: cannot read image" in _error_line(result)
    assert not (tmp_path / "out.nii.gz").exists()


def test_4d_and_2d3d_mismatch(case, tmp_path):
    d, _, _ = case
    sitk.WriteImage(sitk.JoinSeries([sitk.Image([4, 4, 4], sitk.sitkFloat32)] * 2), str(tmp_path / "four.nii.gz"))
    r4 = deepreg("apply", "--transform", d / "T.h5", "--moving", tmp_path / "four.nii.gz", "--reference",
                 d / "fixed.nii.gz", "--output", tmp_path / "o.nii.gz")
    assert r4.returncode == 2 and "four.nii.gz: is a 4D image" in _error_line(r4)
    png = data_file("multimodal2d/BrainProtonDensitySlice.png")
    r2 = deepreg("apply", "--transform", d / "T.h5", "--moving", png, "--reference", png, "--output",
                 tmp_path / "o.nii.gz")
    assert r2.returncode == 2 and "2D but" in _error_line(r2) and "3D transform" in _error_line(r2)
    assert not list(tmp_path.glob("o.*"))


def test_nan_image(case, tmp_path):
    d, _, _ = case
    arr = np.ones((8, 8, 8), np.float32)
    arr[2, 2, 2] = np.inf
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "inf.nrrd"))
    r = deepreg("apply", "--transform", d / "T.h5", "--moving", tmp_path / "inf.nrrd", "--reference",
                d / "fixed.nii.gz", "--output", tmp_path / "o.nii.gz")
    assert r.returncode == 2 and "inf.nrrd: 1 voxels are NaN or infinite" in _error_line(r)


def test_empty_label_map(case, tmp_path):
    d, fixed, _ = case
    fixed.with_data(np.zeros(fixed.shape, np.int16)).write(tmp_path / "empty.nii.gz")
    r = deepreg("evaluate", "--transform", d / "T.h5", "--fixed-labels", tmp_path / "empty.nii.gz",
                "--moving-labels", d / "moving_seg.nii.gz", "--json", tmp_path / "r.json")
    assert r.returncode == 2 and "empty.nii.gz: the label map / mask is empty" in _error_line(r)
    assert not (tmp_path / "r.json").exists()


def test_unsupported_transform_kind(case, tmp_path):
    d, fixed, _ = case
    sitk.WriteTransform(sitk.BSplineTransformInitializer(fixed.to_sitk(), [3, 3, 3]), str(tmp_path / "b.h5"))
    r = deepreg("info", tmp_path / "b.h5")
    assert r.returncode == 2 and "b.h5: unsupported transform kind BSplineTransform" in _error_line(r)
    (tmp_path / "x.xyz").write_text("1 2 3")
    r = deepreg("apply", "--transform", tmp_path / "x.xyz", "--points-in", tmp_path / "x.xyz", "--points-out",
                tmp_path / "y.csv")
    assert r.returncode == 2 and "x.xyz: unsupported transform file type" in _error_line(r)


def test_output_never_overwrites_input(case):
    d, _, _ = case
    r = deepreg("apply", "--transform", d / "T.h5", "--moving", d / "fixed.nii.gz", "--reference",
                d / "fixed.nii.gz", "--output", d / "fixed.nii.gz")
    assert r.returncode == 2 and "would overwrite an input" in _error_line(r)


def test_landmark_count_mismatch(case, tmp_path):
    d, _, _ = case
    np.savetxt(tmp_path / "a.csv", np.zeros((3, 3)), delimiter=",")
    np.savetxt(tmp_path / "b.csv", np.zeros((2, 3)), delimiter=",")
    r = deepreg("evaluate", "--transform", d / "T.h5", "--fixed-landmarks", tmp_path / "a.csv",
                "--moving-landmarks", tmp_path / "b.csv")
    assert r.returncode == 2 and "3 fixed vs 2 moving" in _error_line(r)


_KEPT = """
import os, sys
import numpy as np
if sys.argv[1] == "retain":
    from DeepRegistrationLib.runtime import retain_freed_memory
    assert retain_freed_memory()
def resident_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
a = np.ones(40_000_000, dtype=np.float32)  # 160 MB, far above glibc's largest mmap threshold (32 MB)
held = resident_mb()
del a
print(held - resident_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_deepreg_process_keeps_freed_memory_for_reuse():
    """What ``deepreg`` sets at start (``runtime.retain_freed_memory``): a freed 160 MB block stays with the
    process (to be reused without new page faults), where glibc's default returns it to the system at once."""
    def released_mb(mode):
        out = subprocess.run([sys.executable, "-c", _KEPT, mode], capture_output=True, text=True, cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
        return float(out.stdout.split()[-1])

    assert released_mb("default") > 150
    assert released_mb("retain") < 10
