"""The quick-start job end to end (the same files the demo fetches from PyPI, read here from ../shared/data)."""

import json

import numpy as np
import SimpleITK as sitk

import DeepRegistrationLib as dr
from conftest import data_file
from DeepRegistrationLib.cli.demo import run_demo

ICBM = "brain3d/icbm152_2009a/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"


def test_demo_recovers_known_transform(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("t1", "gm", "wm"):
        (data / f"{name}.nii.gz").symlink_to(data_file(ICBM.format(name)))
    (data / "warp_fsl.nii.gz").symlink_to(data_file("deformation/ds-005_sub-01_from-OASIS_to-T1_warp_fsl.nii.gz"))
    out = tmp_path / "out"
    report = run_demo(out, data_dir=data, device="cpu")

    errors = report["error_mm_inside_brain"]
    assert errors["before"]["mean"] > 10
    assert errors["after_affine"]["mean"] < 0.3 * errors["before"]["mean"]
    assert errors["after_deformable"]["mean"] < 1.0 and errors["after_deformable"]["p95"] < 2.0
    assert report["dice"]["grey_matter"]["after"] > 0.9 > report["dice"]["grey_matter"]["before"]
    assert report["jacobian"]["folding_percent"] < 0.01
    assert json.loads((out / "report.json").read_text())["dice"] == report["dice"]
    assert (out / "report.png").stat().st_size > 10_000 and "report.png" in (out / "report.md").read_text()

    # The written transform, applied by SimpleITK to the written moving image, gives the written warped image.
    fixed = sitk.ReadImage(str(out / "fixed.nii.gz"))
    moving = sitk.ReadImage(str(out / "moving.nii.gz"))
    theirs = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, sitk.ReadTransform(str(out / "transform.h5")),
                                                  sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    ours = dr.read_image(out / "warped.nii.gz").numpy()
    assert np.abs(theirs - ours).max() < 1e-3 * float(ours.max())


def test_demo_refuses_missing_data(tmp_path):
    import pytest

    with pytest.raises(dr.InputError, match="t1.nii.gz: file not found"):
        run_demo(tmp_path / "out", data_dir=tmp_path)
    assert not (tmp_path / "out").exists()
