"""Evaluation metrics against SimpleITK on real label maps; similarity losses on real images."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import DeepRegistrationLib as dr
from conftest import OASIS, data_file, from_shared, known_transform
from DeepRegistrationLib.metrics import (LNCCLoss, MINDSSCLoss, MSELoss, MutualInformationLoss, NCCLoss, label_values,
                                         jacobian_determinant, jacobian_stats, make_similarity, mind_ssc, overlap,
                                         surface_distances, target_registration_error)


@pytest.fixture(scope="module")
def seg_pair(oasis_seg_pair):
    """OASIS seg35 of subjects 1 and 2 (same 1 mm grid), with the spacing made anisotropic to test mm units."""
    fixed, moving = oasis_seg_pair
    grid = dr.Grid(fixed.grid.size, fixed.grid.origin, (0.9, 1.2, 1.5), fixed.grid.direction)
    return dr.Image(fixed.data, grid, "fixed seg35"), dr.Image(moving.data, grid, "moving seg35")


def test_dice_and_jaccard_equal_simpleitk(seg_pair):
    fixed, moving = seg_pair
    ours = overlap(fixed, moving)
    assert len(ours) == len(label_values(fixed, moving)) >= 20
    f = sitk.LabelOverlapMeasuresImageFilter()
    f.Execute(fixed.to_sitk(), moving.to_sitk())
    for label, v in ours.items():
        assert v["dice"] == pytest.approx(f.GetDiceCoefficient(label), abs=1e-12)
        assert v["jaccard"] == pytest.approx(f.GetJaccardCoefficient(label), abs=1e-12)
    if from_shared(OASIS.format("0001", "seg35")):
        assert len(ours) == 35
        assert np.mean([v["dice"] for v in ours.values()]) == pytest.approx(0.459, abs=0.005)  # MANIFEST figure


def test_surface_distances_equal_simpleitk_hausdorff(seg_pair):
    fixed, moving = seg_pair
    both = set(np.unique(fixed.numpy())) & set(np.unique(moving.numpy())) - {0}
    labels = sorted(int(v) for v in both)[::5][:5]  # OASIS: 1, 6, 11, 16, 21
    assert len(labels) == 5
    ours = surface_distances(fixed, moving, labels)
    for label in labels:
        contours = []
        for img in (fixed, moving):
            mask = sitk.BinaryThreshold(img.to_sitk(), label, label, 1, 0)
            contours.append(sitk.BinaryContour(mask, fullyConnected=False))
        h = sitk.HausdorffDistanceImageFilter()
        h.Execute(contours[0], contours[1])
        assert ours[label]["hd"] == pytest.approx(h.GetHausdorffDistance(), rel=1e-5)
        directed_mean = (ours[label]["mean_fixed_to_warped"] + ours[label]["mean_warped_to_fixed"]) / 2
        assert directed_mean == pytest.approx(h.GetAverageHausdorffDistance(), rel=1e-5)
        assert 0 < ours[label]["assd"] <= ours[label]["hd95"] <= ours[label]["hd"]


def test_surface_distance_of_shifted_label_in_mm():
    """A cube shifted by 2 voxels along an axis of 1.5 mm spacing is 3 mm away on the shifted faces."""
    a = np.zeros((20, 20, 20), np.int32)
    a[5:15, 5:15, 5:15] = 1
    b = np.roll(a, 2, axis=0)  # array axis 0 = index k, spacing 1.5 mm
    grid = dr.Grid([20, 20, 20], spacing=[1.0, 1.0, 1.5])
    d = surface_distances(dr.Image(a, grid), dr.Image(b, grid))[1]
    assert d["hd"] == pytest.approx(3.0)


def test_tre_equals_hand_computation():
    fixed = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 20.0, 5.0]])
    moving = np.array([[1.0, 2.0, 2.0], [11.0, 2.0, 2.0], [1.0, 22.0, 3.0]])
    shift = dr.TranslationTransform([1.0, 2.0, 0.0])
    tre = target_registration_error(shift, fixed, moving)
    np.testing.assert_allclose(tre["per_point"], [2.0, 2.0, 2.0])
    with pytest.raises(dr.InputError, match="3 fixed vs 2 moving"):
        target_registration_error(shift, fixed, moving[:2])


def test_tre_on_real_lung_landmarks():
    from DeepRegistrationLib.io import read_points

    fixed = read_points(data_file("lung_ct/itkelastix_CT_3D_lung_fixed_point_set.txt"))
    moving = read_points(data_file("lung_ct/itkelastix_CT_3D_lung_moving_point_set.txt"))
    tre = target_registration_error(dr.IdentityTransform(3), fixed, moving)
    assert tre["count"] == 100 and tre["mean"] == pytest.approx(np.linalg.norm(fixed - moving, axis=1).mean())
    assert 25 < tre["mean"] < 45  # MANIFEST: mean landmark displacement 34 mm


def test_jacobian_of_known_affine_is_its_determinant(oasis_oblique):
    matrix = np.array([[1.05, 0.03, -0.02], [0.01, 0.97, 0.04], [-0.03, 0.02, 1.02]])
    affine = dr.AffineTransform(matrix, [1.0, 2.0, -1.0])
    coarse = oasis_oblique.grid.with_spacing([4.0, 4.0, 5.0])
    det = jacobian_determinant(affine, coarse)
    np.testing.assert_allclose(det.numpy(), np.linalg.det(matrix), rtol=1e-12)
    # The same affine as a sampled dense field (finite differences on an oblique anisotropic grid).
    field = dr.to_displacement_field(affine, coarse, dtype=torch.float64)
    np.testing.assert_allclose(jacobian_determinant(field, coarse).numpy(), np.linalg.det(matrix), rtol=1e-6)
    stats = jacobian_stats(det)
    assert stats["folding_percent"] == 0 and stats["std_log_jacobian"] < 1e-9


def test_jacobian_detects_folding():
    grid = dr.Grid([16, 16, 16], spacing=[2.0, 2.0, 2.0])
    x = grid.physical_points()
    u = torch.zeros(3, *grid.shape, dtype=torch.float64)
    u[0] = -2.0 * x[..., 0]  # x -> -x along one axis: det = -1 everywhere
    stats = jacobian_stats(jacobian_determinant(dr.DisplacementField(u, grid), grid))
    assert stats["folding_percent"] == 100.0


# ---------------------------------------------------------------------- similarity losses
@pytest.fixture(scope="module")
def slices():
    """Real 2D T1 slice (OASIS), its shifted copy, and an intensity-inverted copy (a 'different modality')."""
    img = dr.read_image(data_file("brain2d/oasis_neurite_2d/OAS1_0001_MR1_slice_norm.nii.gz"), dim=2)
    t1 = img.data.float().unsqueeze(0)
    shifted = torch.roll(t1, shifts=(3, -2), dims=(2, 3))
    inverted = float(t1.max()) - t1
    return t1, shifted, inverted


ALL = ["ssd", "ncc", "lncc", "mapped-lncc", "mi", "nmi", "mind"]


@pytest.mark.parametrize("name", ALL)
def test_identical_images_are_optimal_and_gradients_finite(slices, name):
    t1, shifted, _ = slices
    loss = make_similarity(name)
    same = float(loss(t1, t1))
    assert same < float(loss(t1, shifted))
    optimum = {"ssd": 0.0, "ncc": -1.0, "lncc": None, "mapped-lncc": None, "mi": None, "nmi": None, "mind": 0.0}[name]
    if optimum is not None:
        assert same == pytest.approx(optimum, abs=1e-5)
    moving = shifted.clone().requires_grad_(True)
    value = loss(t1, moving)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(moving.grad).all() and moving.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["mi", "nmi", "mind"])
def test_multimodal_losses_match_inverted_contrast(slices, name):
    t1, _, inverted = slices
    loss = make_similarity(name)
    inv_shifted = torch.roll(inverted, shifts=(3, -2), dims=(2, 3))
    aligned, misaligned = float(loss(t1, inverted)), float(loss(t1, inv_shifted))
    assert aligned < misaligned
    if name in ("mi", "nmi"):  # MI is invariant to a bijective intensity map
        assert aligned == pytest.approx(float(loss(t1, t1)), rel=1e-4)
    else:  # MIND-SSC is invariant to negation
        assert aligned == pytest.approx(0.0, abs=1e-6)


def test_conditional_mean_maps_a_non_monotonic_contrast(slices):
    """A PD-like rendering of a real T1 slice (CSF brightest, white matter darker: the curve rises, then falls):
    the conditional mean E[PD | T1] reproduces the curve, E[T1 | PD] brings the PD image back to the T1 contrast,
    and voxels of weight 0 do not count."""
    from fresh_data import contrast_from_t1

    from DeepRegistrationLib.intensity import ConditionalMean

    t1 = slices[0][0, 0]
    pd = contrast_from_t1(t1, float(torch.quantile(t1[t1 > 0.05], 0.9)), "pd")
    err = (ConditionalMean.fit(pd.reshape(-1), t1.reshape(-1))(t1) - pd).abs().reshape(-1)
    assert float(err.median()) < 0.005 and float(torch.quantile(err, 0.99)) < 0.08  # the peak is smoothed a little
    to_t1 = ConditionalMean.fit(t1.reshape(-1), pd.reshape(-1))
    raw, mapped = (float(torch.corrcoef(torch.stack([t1.reshape(-1), x.reshape(-1)]))[0, 1]) for x in (pd, to_t1(pd)))
    assert mapped > 0.95 and mapped > raw + 0.1, (raw, mapped)
    weight = (torch.arange(t1.numel()) % 2 == 0).float()
    corrupt = pd.reshape(-1).clone()
    corrupt[weight == 0] = 1e3
    assert torch.equal(ConditionalMean.fit(corrupt, t1.reshape(-1), weight).table,
                       ConditionalMean.fit(pd.reshape(-1), t1.reshape(-1), weight).table)
    moving = pd.clone().requires_grad_(True)  # differentiable through the table's slope
    to_t1(moving).sum().backward()
    assert torch.isfinite(moving.grad).all() and moving.grad.abs().sum() > 0
    with pytest.raises(dr.InputError, match="at least 4 bins"):
        ConditionalMean.fit(pd.reshape(-1), t1.reshape(-1), bins=2)


def test_homogeneity_weighting_keeps_tissues_apart_under_misalignment():
    """The mapping of a PD-like rendering of a real T1 slice back into T1, estimated through a transform 3.6 px
    off (the misalignment left before a deformable stage): counting voxels on edges less
    (``homogeneity``) brings the mapped image closer to the real T1 within the brain (measured: mean error 0.080 ->
    0.046); 0 is the unweighted estimate; the weights fall on edges and are refused negative."""
    from fresh_data import contrast_from_t1

    from DeepRegistrationLib.intensity import homogeneity_weights
    from DeepRegistrationLib.methods.pyramid import mapped_image
    from DeepRegistrationLib.metrics.similarity import MappedLNCCLoss

    img = dr.read_image(data_file("brain2d/oasis_neurite_2d/OAS1_0001_MR1_slice_norm.nii.gz"), dim=2)
    t1 = img.with_data(img.data.float() / float(img.data.max()))
    pd = t1.with_data(contrast_from_t1(t1.data, float(torch.quantile(t1.data[t1.data > 0.05], 0.9)), "pd"))
    brain = t1.data[0] > 0.05
    off = dr.TranslationTransform(torch.tensor([3.0, -2.0], dtype=torch.float64))

    def error(homogeneity: float, transform=off) -> float:
        mapped = mapped_image(t1, pd, transform, MappedLNCCLoss(), "moving", homogeneity=homogeneity)
        return float((mapped.data[0][brain] - t1.data[0][brain]).abs().mean())

    plain, weighted = error(0.0), error(1.0)
    assert weighted < 0.75 * plain, (plain, weighted)
    # aligned, it costs little (OASIS 0.050 -> 0.038; the wheel-built ICBM slice 0.016 -> 0.017)
    assert error(1.0, dr.IdentityTransform(2)) < error(0.0, dr.IdentityTransform(2)) + 0.005
    gradient = torch.tensor([0.0, 0.5, 1.0, 1.5, 3.0])  # median over the counted edges: 1
    counted = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])
    weights = homogeneity_weights(gradient, gradient, 1.0, counted)
    assert weights[0] == 1 and weights[4] == 0
    assert torch.allclose(weights[1:4], torch.exp(-2 * gradient[1:4] ** 2))
    assert torch.equal(homogeneity_weights(gradient, gradient, 0.0, counted), counted)
    with pytest.raises(dr.InputError, match="homogeneity strength must be >= 0"):
        homogeneity_weights(gradient, gradient, -1.0)


def test_mapping_gradient_norm_is_in_millimetres_on_an_oblique_anisotropic_grid():
    """The gradient norm that weights the mapping's samples, on a linear ramp in LPS mm sampled on an oblique
    0.9 x 1.2 x 2.5 mm grid: the ramp's slope (intensity per mm) at interior points, as SimpleITK's gradient
    magnitude (image spacing) gives at the voxel centres."""
    from DeepRegistrationLib.geometry import Grid
    from DeepRegistrationLib.sampling import gradient_norm
    from DeepRegistrationLib.synthetic import oblique_grid

    grid = oblique_grid(Grid((40, 40, 40), spacing=(1.0, 1.0, 1.0)))
    slope = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    points = grid.physical_points(dtype=torch.float64)  # (k, j, i, 3)
    ramp = dr.Image((points @ slope).float()[None], grid)
    interior = points[4:-4, 4:-4, 4:-4].reshape(-1, 3)
    ours = gradient_norm(ramp.data, grid, interior)
    assert torch.allclose(ours, torch.full_like(ours, float(slope.norm())), rtol=1e-4)
    reference = sitk.GetArrayFromImage(sitk.GradientMagnitude(ramp.to_sitk(), useImageSpacing=True))
    np.testing.assert_allclose(reference[2:-2, 2:-2, 2:-2], float(slope.norm()), rtol=1e-4)


def test_mi_does_not_depend_on_intensity_range(slices):
    """Unlike MONAI 1.6.1's Gaussian MI (which assumes [0, 1]), scaling intensities by 1000 changes nothing."""
    t1, shifted, _ = slices
    for kernel in ("bspline", "gaussian"):
        mi = MutualInformationLoss(kernel=kernel)
        assert float(mi(t1 * 1000, shifted * 1000)) == pytest.approx(float(mi(t1, shifted)), rel=1e-5)


def test_mi_is_finite_on_constant_image(slices):
    t1, _, _ = slices
    constant = torch.full_like(t1, 3.0).requires_grad_(True)
    value = MutualInformationLoss()(t1, constant)
    value.backward()
    assert torch.isfinite(value) and abs(float(value.detach())) < 1e-6 and torch.isfinite(constant.grad).all()


def test_lncc_matches_monai_rectangular_kernel_inside(slices):
    from monai.losses import LocalNormalizedCrossCorrelationLoss

    t1, shifted, _ = slices
    loss = LNCCLoss(window=9)
    monai = LocalNormalizedCrossCorrelationLoss(spatial_dims=2, kernel_size=9, kernel_type="rectangular",
                                                reduction="none")
    theirs_map = -monai(shifted, t1)
    # Compare the interior mean: MONAI zero-pads at the border, we use only the voxels inside the image there.
    inner = torch.zeros_like(t1)
    inner[..., 8:-8, 8:-8] = 1
    ours_inner = -float(loss(t1, shifted, mask=inner))
    theirs_inner = float((theirs_map * inner).sum() / inner.sum())
    # MONAI clamps each window variance at 1e-5 where VoxelMorph (and we) add 1e-5 to their product: 0.2 % apart
    # on the OASIS slice, 0.6 % on the ICBM stand-in (more flat windows).
    assert ours_inner == pytest.approx(theirs_inner, rel=1e-2)


def test_box_filter_is_the_border_aware_mean_and_its_gradient_the_adjoint(slices):
    """The box mean on a real slice equals SciPy's window sums divided by the in-image counts, and its hand-written
    backward pass (the operator's adjoint) passes PyTorch's numerical gradient check, windows wider than the image
    and axes of size 1 included."""
    from scipy import ndimage

    from DeepRegistrationLib.metrics import box_filter

    t1 = slices[0].double()
    ours = box_filter(t1, [5, 9])[0, 0].numpy()
    sums = ndimage.uniform_filter(t1[0, 0].numpy(), size=(5, 9), mode="constant") * 45
    counts = ndimage.uniform_filter(np.ones(t1.shape[2:]), size=(5, 9), mode="constant") * 45
    assert np.abs(ours - sums / counts).max() < 1e-9
    patch = t1[:, :, 40:47, 60:69].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: box_filter(x, [3, 11]), (patch,))
    volume = torch.rand(1, 2, 1, 6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: box_filter(x, [3, 3, 7]), (volume,))


def test_lncc_fixed_image_statistics_follow_the_fixed_image(slices):
    """LNCC keeps the fixed image's local statistics between calls (optimisers): a new fixed tensor, one changed
    in place, or one that needs a gradient gives the value and gradients of a fresh loss."""
    t1, shifted, _ = slices
    loss = LNCCLoss(window=5)
    first = float(loss(t1, shifted))
    assert float(loss(t1, shifted)) == first == float(LNCCLoss(window=5)(t1, shifted))
    other = t1.flip(-1)
    assert float(loss(other, shifted)) == pytest.approx(float(LNCCLoss(window=5)(other, shifted)), abs=1e-7)
    changed = t1.clone()
    loss(changed, shifted)
    changed.mul_(0.5).add_(shifted)  # same object, new content
    assert float(loss(changed, shifted)) == pytest.approx(float(LNCCLoss(window=5)(changed, shifted)), abs=1e-7)
    fixed = t1.clone().requires_grad_(True)
    moving = shifted.clone().requires_grad_(True)
    loss(fixed, moving).backward()
    assert fixed.grad is not None and float(fixed.grad.abs().sum()) > 0 and float(moving.grad.abs().sum()) > 0


def test_masks_restrict_the_measure(slices):
    t1, shifted, _ = slices
    mask = torch.zeros_like(t1)
    mask[..., :, :40] = 1
    for loss in (MSELoss(), NCCLoss(), LNCCLoss(), MutualInformationLoss(), MINDSSCLoss()):
        assert float(loss(t1, shifted, mask)) != pytest.approx(float(loss(t1, shifted)), rel=1e-6)
        with pytest.raises(dr.InputError, match="mask is empty"):
            loss(t1, shifted, torch.zeros_like(t1))


def test_mind_ssc_descriptor_shapes():
    assert mind_ssc(torch.rand(1, 1, 12, 14, 16)).shape == (1, 12, 12, 14, 16)
    assert mind_ssc(torch.rand(2, 1, 20, 24)).shape == (2, 4, 20, 24)


def test_losses_in_3d_have_finite_gradients(oasis_t1):
    vol = oasis_t1.resample_to(oasis_t1.grid.with_spacing([4.0, 4.0, 4.0])).data.unsqueeze(0)
    warped = dr.warp_image(dr.Image(vol[0], oasis_t1.grid.with_spacing([4.0, 4.0, 4.0])),
                           known_transform(oasis_t1.grid.center()), oasis_t1.grid.with_spacing([4.0, 4.0, 4.0]))
    moving = warped.data.unsqueeze(0).requires_grad_(True)
    for name in ALL:
        value = make_similarity(name)(vol, moving)
        grad, = torch.autograd.grad(value, moving)
        assert torch.isfinite(value) and torch.isfinite(grad).all(), name


def test_mi_scatter_add_histogram_equals_dense_parzen_product(slices):
    """The B-spline joint histogram built by scatter-add (16 values a sample) is the dense (P, bins)^T (P, bins)
    product of the Parzen weights, in value and in gradient."""
    t1, shifted, _ = slices
    loss = MutualInformationLoss(bins=32)
    f = t1.reshape(-1).double()
    m = shifted.reshape(-1).double().clone().requires_grad_(True)
    w = (torch.arange(f.numel()) % 3 != 0).double()  # weights that are not all one

    def dense(x):
        centres = torch.arange(32, dtype=x.dtype)
        d = (((loss._unit(x, w)) * 27 + 2.0).unsqueeze(1) - centres).abs()
        return torch.where(d < 1, (4 - 6 * d**2 + 3 * d**3) / 6, torch.where(d < 2, (2 - d) ** 3 / 6, 0 * d))

    reference = (dense(f) * w.unsqueeze(1)).T @ dense(m)
    reference = reference / reference.sum()
    ours = loss._joint(f, m, w)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-15)
    g_ours, = torch.autograd.grad((ours * torch.log(ours + 1e-10)).sum(), m)
    g_ref, = torch.autograd.grad((reference * torch.log(reference + 1e-10)).sum(), m)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-9, atol=1e-12)


def test_mind_keeps_the_fixed_descriptors_only_while_the_fixed_image_is_unchanged(slices):
    t1, shifted, inverted = slices
    loss = MINDSSCLoss()
    first = float(loss(t1, shifted))
    assert loss._fixed_mind is not None and loss._fixed_mind[0] is t1
    assert float(loss(t1, shifted)) == first == float(MINDSSCLoss()(t1, shifted))
    other = t1.clone()
    other[..., :10, :] = 0.5  # a new fixed image, then the same one changed in place
    assert float(loss(other, shifted)) == pytest.approx(float(MINDSSCLoss()(other, shifted)), abs=1e-7)
    other[..., 10:20, :] = 0.2
    assert float(loss(other, shifted)) == pytest.approx(float(MINDSSCLoss()(other, shifted)), abs=1e-7)
