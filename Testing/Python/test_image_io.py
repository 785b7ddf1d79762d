"""Image IO keeps voxels and geometry exactly; bad files give one clear error and write nothing."""

import gzip

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import DeepRegistrationLib as dr
from conftest import data_file, oblique_grid


@pytest.fixture(scope="module")
def small_oblique(oasis_t1) -> dr.Image:
    """A real, small, oblique anisotropic volume (OASIS T1 at ~3 mm)."""
    grid = oblique_grid(oasis_t1.grid, spacing=(2.7, 3.6, 7.5))
    return oasis_t1.resample_to(grid)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha", ".mhd", ".mgz"])
def test_roundtrip_keeps_voxels_and_geometry(tmp_path, small_oblique, suffix):
    path = tmp_path / f"img{suffix}"
    small_oblique.write(path)
    back = dr.read_image(path)
    assert back.grid.same_as(small_oblique.grid, atol=1e-5)
    np.testing.assert_array_equal(back.numpy(), small_oblique.numpy())
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"


def test_mgz_geometry_matches_itk_convention(tmp_path, small_oblique):
    """The MGZ (RAS, nibabel) path puts every voxel at the same LPS position as the NIfTI (ITK) path."""
    small_oblique.write(tmp_path / "a.mgz")
    small_oblique.write(tmp_path / "a.nii.gz")
    a, b = dr.read_image(tmp_path / "a.mgz"), dr.read_image(tmp_path / "a.nii.gz")
    idx = np.array([[0, 0, 0], [3, 5, 7], [10, 2, 4]], dtype=float)
    np.testing.assert_allclose(a.grid.index_to_physical(idx), b.grid.index_to_physical(idx), atol=1e-4)


def test_dicom_series_roundtrip(tmp_path, small_oblique):
    folder = tmp_path / "series"
    small_oblique.write(folder)
    assert len(list(folder.glob("*.dcm"))) == small_oblique.grid.size[2]
    back = dr.read_image(folder)
    assert back.grid.same_as(small_oblique.grid, atol=1e-4)
    quantum = float(small_oblique.data.max() - small_oblique.data.min()) / 60000
    assert np.abs(back.numpy() - small_oblique.numpy()).max() <= quantum


def test_png_roundtrip_and_real_rgb_png():
    img = dr.read_image(data_file("multimodal2d/BrainT1SliceBorder20.png"))
    assert img.dim == 2 and img.num_channels == 3 and img.grid.size == (221, 257)
    gray = dr.read_image(data_file("multimodal2d/BrainT1SliceBorder20.png"), grayscale=True)
    assert gray.num_channels == 1 and gray.data.is_floating_point()


def test_png_write_roundtrip(tmp_path):
    img = dr.read_image(data_file("multimodal2d/BrainProtonDensitySlice.png"))
    img.write(tmp_path / "pd.png")
    back = dr.read_image(tmp_path / "pd.png")
    np.testing.assert_array_equal(back.numpy(), img.numpy())
    img.write(tmp_path / "pd.jpg")  # lossy but must work
    assert dr.read_image(tmp_path / "pd.jpg").grid.size == img.grid.size


def test_single_slice_volume_reads_as_2d():
    path = data_file("brain2d/oasis_neurite_2d/OAS1_0001_MR1_slice_norm.nii.gz")
    three = dr.read_image(path)
    two = dr.read_image(path, dim=2)
    assert two.dim == 2 and two.grid.size == three.grid.size[:2]
    # Same physical positions, minus the dropped (constant) axis.
    p3 = three.grid.index_to_physical(np.array([[5.0, 7.0, 0.0]]))
    p2 = two.grid.index_to_physical(np.array([[5.0, 7.0]]))
    np.testing.assert_allclose(np.delete(p3, 1, axis=1), p2, atol=1e-9)
    np.testing.assert_array_equal(two.numpy(), three.numpy()[0])


def test_intensity_helpers_do_not_modify_input(small_oblique):
    before = small_oblique.data.clone()
    z = small_oblique.zscore()
    assert abs(float(z.data.mean())) < 1e-4 and abs(float(z.data.std()) - 1) < 1e-3
    mm = small_oblique.minmax()
    assert float(mm.data.min()) == 0.0 and abs(float(mm.data.max()) - 1.0) < 1e-6
    mask = small_oblique.with_data((small_oblique.data > 0.1).to(torch.uint8))
    clipped = small_oblique.clip_percentiles(1, 99, mask=mask)
    inside = small_oblique.data[mask.data.bool()]
    assert float(clipped.data.max()) <= float(torch.quantile(inside.double(), 0.99)) + 1e-5
    assert torch.equal(small_oblique.data, before)
    with pytest.raises(dr.InputError, match="empty"):
        small_oblique.zscore(mask=mask.with_data(torch.zeros_like(mask.data)))



def test_gaussian_smoothing_is_scipys_and_itks_gaussian(oasis_oblique):
    """The pyramid's smoothing on a real oblique anisotropic image: SciPy's Gaussian filter per axis (same
    sampled kernel, border voxels repeated), SimpleITK's recursive Gaussian to within its approximation, and an
    axis whose spacing is over twice the sigma left alone."""
    from scipy import ndimage

    from DeepRegistrationLib.intensity import smooth_gaussian

    image = oasis_oblique.float()
    image = image.with_data(image.data / image.data.max())
    before = image.data.clone()
    sigma = 1.1  # spacing 0.9 x 1.2 x 2.5 mm: the third axis is not smoothed
    assert image.grid.spacing[2] >= 2 * sigma > image.grid.spacing[1]
    ours = smooth_gaussian(image, sigma)
    assert torch.equal(image.data, before) and ours.grid.same_as(image.grid)
    sigmas_voxels = [0.0] + [sigma / s for s in image.grid.spacing[1::-1]]  # array order (k, j, i)
    reference = ndimage.gaussian_filter(image.data[0].double().numpy(), sigmas_voxels, mode="nearest", truncate=4.0)
    assert np.abs(ours.data[0].double().numpy() - reference).max() < 1e-5
    itk = dr.Image.from_sitk(sitk.SmoothingRecursiveGaussian(image.to_sitk(), [sigma, sigma, 1e-6]))
    assert float((ours.data - itk.data).abs().max()) < 0.01
    assert float((ours.data - image.data).abs().max()) > 0.05  # it did smooth

# ---------------------------------------------------------------------- bad input
def test_missing_file(tmp_path):
    with pytest.raises(dr.InputError, match=r"nothere\.nii\.gz: file not found"):
        dr.read_image(tmp_path / "nothere.nii.gz")


def test_corrupt_file(tmp_path):
    bad = tmp_path / "corrupt.nii.gz"
    bad.write_bytes(gzip.compress(b"this is not a nifti header" * 3))
    with pytest.raises(dr.InputError, match=r"corrupt\.nii\.gz: cannot read image"):
        dr.read_image(bad)
    junk = tmp_path / "junk.mgz"
    junk.write_bytes(b"\x00\x01garbage")
    with pytest.raises(dr.InputError, match=r"junk\.mgz: cannot read"):
        dr.read_image(junk)


def test_4d_image_refused(tmp_path):
    img4 = sitk.JoinSeries([sitk.Image([4, 4, 4], sitk.sitkFloat32)] * 2)
    sitk.WriteImage(img4, str(tmp_path / "four.nii.gz"))
    with pytest.raises(dr.InputError, match=r"four\.nii\.gz: is a 4D image"):
        dr.read_image(tmp_path / "four.nii.gz")


def test_nan_voxels_refused(tmp_path):
    arr = np.ones((4, 5, 6), np.float32)
    arr[1, 2, 3] = np.nan
    for suffix in (".nii.gz", ".nrrd"):  # ITK reads NIfTI NaN as 0: the reader must still notice them
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / f"nan{suffix}"))
        with pytest.raises(dr.InputError, match=rf"nan{suffix}: 1 voxels are NaN or infinite"):
            dr.read_image(tmp_path / f"nan{suffix}")
    assert dr.read_image(tmp_path / "nan.nrrd", allow_nonfinite=True).data.isnan().sum() == 1


def test_wrong_dimension_refused(small_oblique):
    with pytest.raises(dr.InputError, match="a 2D image is needed"):
        small_oblique.check_dimension(2)


def test_failed_write_leaves_nothing(tmp_path, small_oblique):
    with pytest.raises(dr.InputError, match="2D"):
        small_oblique.write(tmp_path / "vol.png")
    with pytest.raises(dr.InputError, match="does not exist"):
        small_oblique.write(tmp_path / "no" / "such" / "dir.nii.gz")
    assert list(tmp_path.iterdir()) == []
