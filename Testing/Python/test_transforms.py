"""Transforms in physical space, checked in millimetres against SimpleITK on real images."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import DeepRegistrationLib as dr
from conftest import data_file, known_transform, oblique_grid, smooth_field
from DeepRegistrationLib.io.transforms import read_fsl_displacement_field


def _sitk_resample(image: dr.Image, tx, reference: dr.Image | None = None) -> np.ndarray:
    ref = (reference or image).to_sitk()
    return sitk.GetArrayFromImage(sitk.Resample(image.to_sitk(), ref, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32))


def _points_in(grid: dr.Grid, n: int = 400, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = rng.uniform(0, 1, (n, grid.dim)) * (np.asarray(grid.size) - 1)
    return grid.index_to_physical(idx)


def _intensity_range(image: dr.Image) -> float:
    return float(image.data.max() - image.data.min())


# ---------------------------------------------------------------------- the library's files in SimpleITK
@pytest.mark.parametrize("suffix", [".h5", ".tfm"])
def test_library_transform_applied_by_simpleitk_matches_library_warp(tmp_path, oasis_oblique, suffix):
    """Rigid + affine + smooth field on a real anisotropic oblique volume: same image, same points."""
    transform = known_transform(oasis_oblique.grid.center())
    if suffix == ".tfm":  # text files hold the linear part only
        transform = dr.compose(*transform.parts[:2])
    path = tmp_path / f"T{suffix}"
    dr.write_transform(transform, path)
    tx = sitk.ReadTransform(str(path))

    ours = dr.warp_image(oasis_oblique, transform, oasis_oblique).numpy()
    theirs = _sitk_resample(oasis_oblique, tx)
    assert np.abs(ours - theirs).max() <= 1e-3 * _intensity_range(oasis_oblique)

    pts = _points_in(oasis_oblique.grid)
    mapped = transform.map_points(pts)
    expected = np.array([tx.TransformPoint(p.tolist()) for p in pts])
    assert np.abs(mapped - expected).max() < 0.01
    assert np.linalg.norm(mapped - pts, axis=1).mean() > 5  # the transform really moves things


def test_library_reads_back_what_it_writes(tmp_path, oasis_oblique):
    transform = known_transform(oasis_oblique.grid.center())
    dr.write_transform(transform, tmp_path / "T.h5")
    back = dr.read_transform(tmp_path / "T.h5")
    assert isinstance(back, dr.CompositeTransform) and [p.kind for p in back.parts] == \
        ["RigidTransform", "AffineTransform", "DisplacementField"]
    pts = _points_in(oasis_oblique.grid)
    np.testing.assert_allclose(back.map_points(pts), transform.map_points(pts), atol=1e-4)
    np.testing.assert_allclose(back.parts[0].angles.numpy(), transform.parts[0].angles.numpy(), atol=1e-12)


# ---------------------------------------------------------------------- SimpleITK's files in the library
def _sitk_transforms(center, field_image):
    c = list(center)
    affine = sitk.AffineTransform([1.04, 0.05, 0.0, -0.03, 0.96, 0.02, 0.01, 0.0, 1.01], [3.0, -2.0, 4.0], c)
    euler = sitk.Euler3DTransform(c, 0.1, -0.05, 0.2, (2.0, 1.0, -3.0))
    zyx = sitk.Euler3DTransform(c, 0.1, -0.05, 0.2, (2.0, 1.0, -3.0))
    zyx.SetComputeZYX(True)
    similarity = sitk.Similarity3DTransform(1.1, (0.2, 0.1, 0.3), 0.15, (1.0, 2.0, 3.0), c)
    versor = sitk.VersorRigid3DTransform((0.0, 0.0, 1.0), 0.2, (4.0, 0.0, 0.0), c)
    field = sitk.DisplacementFieldTransform(sitk.Image(field_image))
    composite = sitk.CompositeTransform([affine, field])
    return {"affine": affine, "euler": euler, "euler_zyx": zyx, "similarity": similarity, "versor": versor,
            "field": field, "composite": composite}


@pytest.mark.parametrize("kind", ["affine", "euler", "euler_zyx", "similarity", "versor", "field", "composite"])
def test_simpleitk_written_transform_applied_by_library(tmp_path, oasis_oblique, kind):
    center = oasis_oblique.grid.center()
    field = smooth_field(center)
    field_image = sitk.GetImageFromArray(field.field.double().movedim(0, -1).numpy(), isVector=True)
    field.grid.apply_to_sitk(field_image)
    tx = _sitk_transforms(center, field_image)[kind]
    path = tmp_path / "sitk.h5"
    sitk.WriteTransform(tx, str(path))
    ours = dr.read_transform(path)
    warped = dr.warp_image(oasis_oblique, ours, oasis_oblique).numpy()
    assert np.abs(warped - _sitk_resample(oasis_oblique, tx)).max() <= 1e-3 * _intensity_range(oasis_oblique)
    pts = _points_in(oasis_oblique.grid)
    expected = np.array([tx.TransformPoint(p.tolist()) for p in pts])
    assert np.abs(ours.map_points(pts) - expected).max() < 0.01


def test_displacement_field_image_written_by_simpleitk(tmp_path, oasis_oblique):
    field = smooth_field(oasis_oblique.grid.center())
    image = sitk.GetImageFromArray(field.field.double().movedim(0, -1).numpy(), isVector=True)
    field.grid.apply_to_sitk(image)
    for suffix in (".nii.gz", ".nrrd"):
        sitk.WriteImage(image, str(tmp_path / f"field{suffix}"))
        ours = dr.read_transform(tmp_path / f"field{suffix}")
        tx = sitk.DisplacementFieldTransform(sitk.Cast(image, sitk.sitkVectorFloat64))
        pts = _points_in(oasis_oblique.grid)
        expected = np.array([tx.TransformPoint(p.tolist()) for p in pts])
        assert np.abs(ours.map_points(pts) - expected).max() < 0.01
    dr.write_transform(field, tmp_path / "ours.nii.gz")
    back = sitk.ReadImage(str(tmp_path / "ours.nii.gz"))
    assert back.GetNumberOfComponentsPerPixel() == 3 and dr.Grid.from_sitk(back).same_as(field.grid)


def test_2d_rigid_matches_simpleitk_on_real_slice(tmp_path):
    image = dr.read_image(data_file("multimodal2d/BrainProtonDensitySliceBorder20.png"), grayscale=True)
    center = image.grid.center()
    rigid = dr.RigidTransform([np.radians(10.0)], [13.0, 17.0], center=center)
    dr.write_transform(rigid, tmp_path / "r.tfm")
    tx = sitk.ReadTransform(str(tmp_path / "r.tfm"))
    assert tx.GetName() == "Euler2DTransform"
    ours = dr.warp_image(image, rigid, image).numpy()
    assert np.abs(ours - _sitk_resample(image, tx)).max() <= 1e-3 * _intensity_range(image)


# ---------------------------------------------------------------------- inverses
def test_linear_inverse_is_exact(oasis_oblique):
    c = oasis_oblique.grid.center()
    transform = dr.compose(*known_transform(c).parts[:2])
    pts = _points_in(oasis_oblique.grid)
    np.testing.assert_allclose(transform.inverse().map_points(transform.map_points(pts)), pts, atol=1e-9)


def test_numerical_inverse_of_real_field_is_identity_inside_brain():
    field = read_fsl_displacement_field(data_file("deformation/ds-005_sub-01_from-OASIS_to-T1_warp_fsl.nii.gz"))
    inverse = field.inverse()
    assert inverse.inverse_residual_mm["p95"] < 0.1
    brain = field.field.norm(dim=0) > 0.01  # the warp's support: the head
    x = field.grid.physical_points(dtype=torch.float64)[brain]
    forward_then_back = inverse.map_points(field.map_points(x))
    back_then_forward = field.map_points(inverse.map_points(x))
    for err in ((forward_then_back - x).norm(dim=-1), (back_then_forward - x).norm(dim=-1)):
        assert float(torch.quantile(err, 0.95)) < 0.1
    assert float(field.field.norm(dim=0).max()) > 10  # a real, large deformation


def test_numerical_inverse_converges_where_the_field_stretches():
    """A field that stretches by 2.5 along x (``grad u = 1.5``: invertible, but the plain fixed point ``w <- -u(x + w)``
    diverges there): the damped iteration finds the exact inverse ``w = -0.6 (y - c)`` at the central nodes."""
    grid = dr.Grid([41, 21, 21], [-40.0, -20.0, -20.0], [2.0, 2.0, 2.0])
    x = grid.physical_points(dtype=torch.float64)
    u = torch.zeros((3, *grid.shape), dtype=torch.float64)
    u[0] = 1.5 * x[..., 0]  # c = 0
    field = dr.DisplacementField(u, grid)
    inverse = field.inverse()
    central = (x[..., 0].abs() <= 12.0).flatten()
    w = inverse.field.reshape(3, -1).T[central]
    expected = torch.zeros_like(w)
    expected[:, 0] = -0.6 * x.reshape(-1, 3)[central, 0]
    assert float((w - expected).abs().max()) < 2e-3
    y = x.reshape(-1, 3)[central]
    assert float((field.map_points(inverse.map_points(y)) - y).norm(dim=-1).max()) < 2e-3


def test_inverse_transform_of_a_velocity_field_result(oasis_oblique):
    """``inverse_transform``: linear parts exactly, the field part to 0.001 mm at its nodes on a grid refined towards
    the reference, from ``exp(-v)``, and better than ``exp(-v)`` alone at inverting the stored field."""
    from DeepRegistrationLib.transforms import inverse_transform

    velocity = smooth_field(oasis_oblique.grid.center(), amplitude=6.0, spacing=8.0, size=(24, 27, 30))
    svf = dr.StationaryVelocityField(velocity.field, velocity.grid, steps=3)
    rigid = dr.RigidTransform(np.radians([3.0, -2.0, 5.0]), [4.0, -3.0, 2.0], center=oasis_oblique.grid.center())
    transform = dr.compose(svf, rigid)
    reference = velocity.grid.with_spacing([4.0] * 3)
    inverse = inverse_transform(transform, reference)
    first, field = inverse.parts
    assert isinstance(first, dr.AffineTransform) and isinstance(field, dr.DisplacementField)
    assert field.grid.spacing == pytest.approx([4.0] * 3)  # 8 mm refined by 2 towards the 4 mm reference
    assert field.inverse_residual_mm["p95"] < 1e-3
    inner = dr.Grid([12, 13, 15], velocity.grid.index_to_physical(np.array([6.0, 7.0, 7.5])), [8.0] * 3,
                    velocity.grid.direction_matrix())
    y = transform.map_points(torch.as_tensor(_points_in(inner, seed=4)))
    ours = (transform.map_points(inverse.map_points(y)) - y).norm(dim=-1)
    naive = (transform.map_points(transform.inverse().map_points(y)) - y).norm(dim=-1)
    assert float(ours.mean()) < 0.5 * float(naive.mean()), (float(ours.mean()), float(naive.mean()))


def test_stationary_velocity_field_is_diffeomorphic_and_invertible(oasis_oblique):
    velocity = smooth_field(oasis_oblique.grid.center(), amplitude=6.0, spacing=4.0, size=(48, 54, 60))
    svf = dr.StationaryVelocityField(velocity.field, velocity.grid, steps=7)
    inner = dr.Grid([24, 27, 30], velocity.grid.index_to_physical(np.array([12.0, 13.5, 15.0])), [4.0] * 3,
                    velocity.grid.direction_matrix())
    x = torch.as_tensor(_points_in(inner, seed=3))
    round_trip = svf.inverse().map_points(svf.map_points(x))
    assert float((round_trip - x).norm(dim=-1).quantile(0.95)) < 0.1
    from DeepRegistrationLib.metrics import jacobian_determinant

    assert float(jacobian_determinant(svf, inner).min()) > 0  # the field does not vanish at its border: look inside


def test_composite_order_and_inverse(oasis_oblique):
    c = oasis_oblique.grid.center()
    shift = dr.TranslationTransform([10.0, 0.0, 0.0])
    scale = dr.AffineTransform(np.diag([2.0, 2.0, 2.0]))
    both = dr.compose(shift, scale)  # shift first, then scale
    np.testing.assert_allclose(both.map_points(np.array([[1.0, 1.0, 1.0]])), [[22.0, 2.0, 2.0]])
    np.testing.assert_allclose(both.inverse().map_points(both.map_points(c[None])), c[None], atol=1e-9)
    np.testing.assert_allclose(both.collapse_linear().map_points(c[None]), both.map_points(c[None]), atol=1e-9)


# ---------------------------------------------------------------------- label maps and points
def test_label_aware_warp_keeps_label_set(oasis_seg_pair):
    seg = oasis_seg_pair[0]
    coarse = seg.resample_to(oblique_grid(seg.grid, spacing=(2.0, 2.0, 2.0)), interpolation="nearest")
    transform = known_transform(coarse.grid.center())
    warped = dr.warp_image(coarse, transform, coarse, interpolation="label")
    assert warped.data.dtype == coarse.data.dtype
    assert set(torch.unique(warped.data).tolist()) <= set(torch.unique(coarse.data).tolist())
    same = dr.warp_image(coarse, None, coarse, interpolation="label")
    assert torch.equal(same.data, coarse.data)


def test_label_aware_warp_equals_argmax_of_interpolated_indicators(oasis_seg_pair):
    """The one-pass implementation gives the definition's answer: argmax over labels of linear indicators."""
    from DeepRegistrationLib.sampling import sample

    seg = oasis_seg_pair[1]
    grid = oblique_grid(seg.grid, spacing=(2.1, 2.3, 2.7))
    transform = known_transform(grid.center())
    fast = dr.warp_image(seg, transform, grid, interpolation="label").data[0]
    y = transform.map_points(grid.physical_points())
    labels = torch.unique(seg.data)
    scores = torch.stack([sample((seg.data[0] == lab).float()[None], seg.grid, y, default_value=-1.0)[0]
                          for lab in labels])
    reference = labels[scores.argmax(0)]
    reference = torch.where(scores.max(0).values < 0, torch.zeros_like(reference), reference)
    top2 = scores.topk(2, dim=0).values
    decided = (top2[0] - top2[1]) > 1e-4  # ties may go either way
    assert bool((fast[decided] == reference[decided]).all())
    inside = scores.max(0).values >= 0
    assert float(decided[inside].float().mean()) > 0.95
    assert bool((fast[~inside] == 0).all())


def test_identity_resample_is_exact(oasis_oblique):
    same = oasis_oblique.resample_to(oasis_oblique)
    np.testing.assert_allclose(same.numpy(), oasis_oblique.numpy(), atol=1e-6)


# ---------------------------------------------------------------------- bad input
def test_unsupported_transform_kind(tmp_path, oasis_oblique):
    bspline = sitk.BSplineTransformInitializer(oasis_oblique.to_sitk(), [4, 4, 4])
    path = tmp_path / "bspline.h5"
    sitk.WriteTransform(bspline, str(path))
    with pytest.raises(dr.UnsupportedTransformError, match=r"bspline\.h5: unsupported transform kind BSplineTransform"):
        dr.read_transform(path)
    sampled = dr.read_transform(path, reference=oasis_oblique.grid)  # with a grid it is sampled exactly
    assert isinstance(sampled, dr.DisplacementField)


def test_bad_transform_files(tmp_path, oasis_oblique):
    (tmp_path / "broken.h5").write_bytes(b"\x89HDF\r\n garbage")
    with pytest.raises(dr.InputError, match=r"broken\.h5: cannot read transform"):
        dr.read_transform(tmp_path / "broken.h5")
    with pytest.raises(dr.InputError, match="file not found"):
        dr.read_transform(tmp_path / "missing.tfm")
    field = smooth_field(oasis_oblique.grid.center())
    with pytest.raises(dr.InputError, match="cannot hold a dense field"):
        dr.write_transform(field, tmp_path / "field.tfm")
    assert not (tmp_path / "field.tfm").exists()


def test_dimension_mismatch(oasis_oblique):
    with pytest.raises(dr.InputError, match="2D transform cannot warp 3D"):
        dr.warp_image(oasis_oblique, dr.RigidTransform([0.1]), oasis_oblique)
    with pytest.raises(dr.InputError, match="3 coordinates"):
        dr.RigidTransform([0.1]).map_points(np.zeros((2, 3)))


def test_gradient_sampler_values_and_derivative(oasis_t1):
    """The optimisers' sampler: values equal grid_sample's; its coordinate derivative is the image gradient."""
    import torch.nn.functional as F

    from DeepRegistrationLib.sampling import gradient_stack, sample_with_gradient

    image = oasis_t1.resample_to(oasis_t1.grid.with_spacing([3.0, 3.0, 3.0])).minmax()
    stack = gradient_stack(image.data.float(), image.grid)
    g = torch.Generator().manual_seed(0)
    coords = (torch.rand(5000, 3, generator=g) * 1.6 - 0.8).requires_grad_(True)
    value = sample_with_gradient(stack, coords)[0]
    ref = F.grid_sample(image.data.float()[None], coords.detach().view(1, -1, 1, 1, 3), align_corners=True).reshape(-1)
    assert torch.allclose(value.detach(), ref, atol=1e-6)
    value.sum().backward()
    # central finite differences of the interpolated image, one normalised voxel wide
    h = torch.tensor([2.0 / (n - 1) for n in image.grid.size])
    fd = []
    for axis in range(3):
        step = torch.zeros(3)
        step[axis] = h[axis]
        up = F.grid_sample(image.data.float()[None], (coords.detach() + step).view(1, -1, 1, 1, 3), align_corners=True)
        down = F.grid_sample(image.data.float()[None], (coords.detach() - step).view(1, -1, 1, 1, 3), align_corners=True)
        fd.append(((up - down) / (2 * h[axis])).reshape(-1))
    fd = torch.stack(fd, -1)
    rel = (coords.grad - fd).norm(dim=-1).mean() / fd.norm(dim=-1).mean()
    assert float(rel) < 0.1, float(rel)


@pytest.mark.parametrize("dim", [2, 3])
def test_threaded_grid_sample_equals_pytorch_values_and_gradients(oasis_t1, dim, monkeypatch):
    """The sampler that shares a batch of one among the CPU threads gives F.grid_sample's values and gradients
    (of the coordinates and of the sampled field), also when the points do not divide evenly."""
    import torch.nn.functional as F

    from DeepRegistrationLib import sampling

    monkeypatch.setattr(sampling, "MIN_POINTS_PER_THREAD", {2: 1000, 3: 1000})
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    batches = []
    original = F.grid_sample
    monkeypatch.setattr(sampling.F, "grid_sample", lambda x, *a, **k: batches.append(x.shape[0]) or original(x, *a, **k))
    image = oasis_t1.resample_to(oasis_t1.grid.with_spacing([3.0, 3.0, 3.0])).minmax().data.float()
    data = (image if dim == 3 else image[:, image.shape[1] // 2])[None].repeat(1, 3, *[1] * dim)
    g = torch.Generator().manual_seed(1)
    shape = (1, 37, 53, 3) if dim == 3 else (1, 61, 83)  # 5883 / 5063 points: shares padded
    for mode, padding in [("bilinear", "border"), ("nearest", "zeros"), ("bilinear", "zeros")]:
        coords = (torch.rand(*shape, dim, generator=g) * 2.4 - 1.2)
        results = []
        for fn in (original, sampling.grid_sample):
            x = data.clone().requires_grad_(True)
            c = coords.clone().requires_grad_(True)
            out = fn(x, c, mode=mode, padding_mode=padding, align_corners=True)
            (out * torch.linspace(0, 1, out.numel()).reshape(out.shape)).sum().backward()
            results.append((out.detach(), x.grad, c.grad))
        for a, b in zip(*results):
            assert a.shape == b.shape
            assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())
    torch.set_num_threads(threads)
    assert batches and min(batches) >= 2  # the points were shared among threads


def test_cubic_convolution_is_pytorch_bicubic_in_2d_and_extends_it_to_3d(oasis_t1):
    """Keys' cubic convolution (a = -0.75) gives F.grid_sample's bicubic values in 2D on a real slice, inside the
    image and outside it (border rule); in 3D, on a volume constant along one axis, the 2D values; with a = -0.5
    a linear ramp is reproduced exactly inside; and it loses less than linear interpolation: a real volume
    shifted half a voxel and back is closer to itself. Wrong coordinates are refused."""
    import torch.nn.functional as F

    from DeepRegistrationLib.sampling import cubic_convolution, sample_normalised

    image = oasis_t1.resample_to(oasis_t1.grid.with_spacing([3.0, 3.0, 3.0])).minmax()
    volume = image.data.float()  # (1, D, H, W)
    plane = volume[:, volume.shape[1] // 2]
    g = torch.Generator().manual_seed(3)
    coords = torch.rand(20000, 2, generator=g) * 2.4 - 1.2
    reference = F.grid_sample(plane[None], coords.reshape(1, -1, 1, 2), mode="bicubic", padding_mode="border",
                              align_corners=True).reshape(1, -1)
    assert torch.allclose(cubic_convolution(plane, coords), reference, atol=1e-5)

    stacked = plane[:, None].expand(1, 7, *plane.shape[1:]).contiguous()  # constant along the first array axis
    coords3 = torch.cat([coords, torch.rand(20000, 1, generator=g) * 2.4 - 1.2], dim=1)
    assert torch.allclose(cubic_convolution(stacked, coords3), reference, atol=1e-5)

    k, j, i = torch.meshgrid(*(torch.arange(float(n)) for n in (9, 11, 13)), indexing="ij")
    ramp = (0.3 * i - 0.2 * j + 0.7 * k)[None]
    inner = torch.rand(5000, 3, generator=g) * 1.2 - 0.6  # taps inside the volume
    at = [(inner[:, c] + 1) / 2 * (n - 1) for c, n in enumerate((13, 11, 9))]
    assert torch.allclose(cubic_convolution(ramp, inner, a=-0.5)[0], 0.3 * at[0] - 0.2 * at[1] + 0.7 * at[2],
                          atol=1e-4)

    grid = image.grid
    half = torch.tensor([0.5, 0.5, 0.5]) * 2 / (torch.tensor(grid.size, dtype=torch.float32) - 1)
    base = torch.stack(torch.meshgrid(*(torch.linspace(-1, 1, n) for n in reversed(grid.size)), indexing="ij")[::-1],
                       dim=-1).reshape(-1, 3)
    errors = {}
    for mode in ("bilinear", "cubic"):
        there = sample_normalised(volume, grid, base + half, mode=mode, extrapolate=True)
        back = sample_normalised(there.reshape(volume.shape), grid, base - half, mode=mode, extrapolate=True)
        errors[mode] = float((back.reshape(volume.shape) - volume)[:, 4:-4, 4:-4, 4:-4].abs().mean())
    assert errors["cubic"] < 0.75 * errors["bilinear"], errors  # 0.012 against 0.021
    with pytest.raises(ValueError, match="coordinates"):
        cubic_convolution(volume, coords)


def test_cubic_sampling_in_millimetres_agrees_with_simpleitk(tmp_path, oasis_oblique):
    """Cubic sampling of a real anisotropic oblique volume (0.9 x 1.2 x 2.5 mm) through a rigid + affine transform
    onto another oblique grid, in LPS mm, against SimpleITK's cubic B-spline resampling of the same image through
    the same transform read from our file: 0.002 of the intensity range apart on average (a different cubic
    kernel), 3x closer than linear interpolation is, and 10x closer than the same sampling 1 mm off."""
    from DeepRegistrationLib.sampling import sample

    image = oasis_oblique.minmax()
    target = oblique_grid(oasis_oblique.grid, spacing=(2.1, 2.3, 2.7))
    transform = dr.compose(*known_transform(image.grid.center()).parts[:2])
    dr.write_transform(transform, tmp_path / "T.tfm")
    reference = dr.Image(torch.zeros(target.shape)[None], target).to_sitk()
    tx = sitk.ReadTransform(str(tmp_path / "T.tfm"))
    theirs = sitk.GetArrayFromImage(sitk.Resample(image.to_sitk(), reference, tx, sitk.sitkBSpline, 0.0,
                                                  sitk.sitkFloat32))
    points = torch.as_tensor(transform.map_points(target.physical_points()))
    cubic = sample(image.data.float(), image.grid, points, mode="cubic")[0].numpy()
    linear = sample(image.data.float(), image.grid, points)[0].numpy()
    off = sample(image.data.float(), image.grid, points + torch.tensor([1.0, 0.0, 0.0], dtype=points.dtype),
                 mode="cubic")[0].numpy()
    inside = (theirs != 0) & (cubic != 0)
    assert inside.mean() > 0.2
    error = {name: float(np.abs(values - theirs)[inside].mean()) for name, values in
             (("cubic", cubic), ("linear", linear), ("off", off))}
    assert error["cubic"] < 0.005 and error["cubic"] < 0.5 * error["linear"] and error["cubic"] < 0.2 * error["off"], error


@pytest.mark.parametrize("dim", [2, 3])
def test_mask_lookup_equals_nearest_interpolation(oasis_t1, dim):
    """mask_at (index arithmetic and one gather) equals nearest-neighbour grid_sample of a real brain mask, border
    clamped, at random points, points outside the image and points exactly half-way between voxels."""
    from DeepRegistrationLib.sampling import mask_at, sample_normalised

    image = oasis_t1.resample_to(oasis_t1.grid.with_spacing([2.0, 2.0, 2.0]))
    if dim == 2:
        image = dr.Image(image.data[:, image.data.shape[1] // 2], dr.Grid(image.grid.size[:2], [0.0, 0.0], [2.0, 2.0]))
    mask = (image.data > 0.1 * float(image.data.max())).float()
    g = torch.Generator().manual_seed(2)
    coords = torch.rand(5000, dim, generator=g) * 2.6 - 1.3
    size = torch.tensor(image.grid.size, dtype=torch.float32)
    halves = torch.randint(0, 2 * int(size.min()), (500, dim), generator=g).float() / 2  # index k + 0.5 and k
    coords[:500] = halves / (size - 1) * 2 - 1
    expected = sample_normalised(mask, image.grid, coords, mode="nearest", extrapolate=True)[0] > 0.5
    found = mask_at(mask, coords)
    assert found.dtype == torch.bool and torch.equal(found, expected)
    assert 0.1 < float(found.float().mean()) < 0.9


@pytest.mark.parametrize("size", [(37, 53, 29), (41, 1, 23), (61, 83)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inside_normalised_is_the_grids_rule_on_the_continuous_index(size, dtype):
    """inside_normalised (column by column) equals Grid.inside on the continuous index of grid_sample coordinates,
    to the bit: random points, points whose index is exactly -0.5 or size - 0.5 (ITK's half-open rule), an axis of
    one voxel (always inside) and NaN (never inside)."""
    from DeepRegistrationLib.sampling import inside_normalised

    dim = len(size)
    grid = dr.Grid(list(size), [0.0] * dim, [1.0] * dim)
    g = torch.Generator().manual_seed(4)
    coords = (torch.rand(4000, dim, generator=g, dtype=torch.float64) * 2.4 - 1.2).to(dtype)
    n = torch.tensor(size, dtype=dtype)
    edges = torch.where(torch.rand(200, dim, generator=g) < 0.5, torch.full((dim,), -0.5, dtype=dtype), n - 0.5)
    coords[:200] = torch.where(n > 1, edges / (n - 1).clamp(min=1) * 2 - 1, coords[:200])
    coords[200, 0] = float("nan")
    expected = grid.inside((coords + 1.0) * 0.5 * (n - 1))
    found = inside_normalised(grid, coords)
    assert found.dtype == torch.bool and torch.equal(found, expected)
    assert not bool(found[200]) and 0.2 < float(found.float().mean()) < 0.9



def test_voxel_coordinates_through_a_linear_transform_equal_mapping_then_normalising(oasis_t1):
    """grid_to_normalised (every voxel of a grid, from its indices) and index_to_normalised_map applied to the
    voxel_index of flat voxel numbers give the coordinates of to_normalised(target, transform.map_points(the
    grid's physical points)) within float rounding: a rotation from the OASIS grid into an oblique anisotropic
    grid, an affine map from the oblique grid, the identity, and a 2D grid. The map is differentiable in the
    transform."""
    from DeepRegistrationLib.sampling import grid_to_normalised, index_to_normalised_map, to_normalised, voxel_index

    oblique = oblique_grid(oasis_t1.grid, spacing=(2.5, 3.0, 3.5))
    source = oasis_t1.grid.with_spacing([3.0, 3.0, 3.0])
    rigid = dr.RigidTransform(torch.tensor([0.2, -0.1, 0.15], dtype=torch.float64),
                              torch.tensor([7.0, -3.0, 5.0], dtype=torch.float64), center=oblique.center())
    affine = dr.AffineTransform(torch.tensor([[1.05, 0.02, -0.01], [0.03, 0.97, 0.04], [-0.02, 0.01, 1.1]],
                                             dtype=torch.float64), torch.tensor([4.0, -6.0, 2.5], dtype=torch.float64))
    plane = dr.Grid([61, 83], [-20.0, 15.0], [0.8, 1.3], [[0.6, -0.8], [0.8, 0.6]])
    turn = dr.RigidTransform(torch.tensor([0.3], dtype=torch.float64), torch.tensor([3.0, -2.0], dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    for src, tgt, transform in ((source, oblique, rigid), (oblique, source, affine), (source, source, None),
                                (plane, plane, turn)):
        points = src.physical_points()
        expected = to_normalised(tgt, points if transform is None else transform.map_points(points), torch.float64)
        a, b = (None, None) if transform is None else (transform.matrix(), transform.offset())
        found = grid_to_normalised(src, tgt, a, b, dtype=torch.float64)
        assert found.shape == (*src.shape, src.dim)
        assert float((found - expected).abs().max()) < 1e-12
        assert 0.05 < float((found.abs() <= 1).all(-1).double().mean())  # the grids overlap
        flat = torch.randint(src.num_voxels, (500,), generator=g)
        k_map, t_map = index_to_normalised_map(src, tgt, a, b)
        assert torch.allclose(voxel_index(src, flat, torch.float64) @ k_map.T + t_map,
                              expected.reshape(-1, src.dim)[flat], rtol=0, atol=1e-12)
        assert torch.equal(grid_to_normalised(src, tgt, a, b), found.float())
    matrix = rigid.matrix().clone().requires_grad_(True)
    k_map, t_map = index_to_normalised_map(source, oblique, matrix, rigid.offset())
    (k_map.sum() + t_map.sum()).backward()
    assert matrix.grad is not None and float(matrix.grad.abs().sum()) > 0


def test_voxel_coordinates_through_a_transform_agree_with_simpleitk_in_mm(oasis_t1):
    """grid_to_normalised against SimpleITK: each voxel index of an oblique anisotropic fixed grid, taken to LPS mm by
    SimpleITK's image geometry, through SimpleITK's copy of the rigid transform, into the continuous index of an
    oblique anisotropic moving grid; the library's coordinates, brought back to that index, agree within 1e-4 voxel
    (round-off: 3e-6 voxel found; a convention error is voxels off)."""
    from DeepRegistrationLib.io.transforms import transform_to_sitk
    from DeepRegistrationLib.sampling import grid_to_normalised

    fixed = oblique_grid(oasis_t1.grid, spacing=(2.5, 3.0, 3.5))
    moving = oblique_grid(oasis_t1.grid, spacing=(3.2, 2.2, 2.8))
    rigid = dr.RigidTransform(torch.tensor([0.2, -0.1, 0.15], dtype=torch.float64),
                              torch.tensor([7.0, -3.0, 5.0], dtype=torch.float64), center=fixed.center())
    coords = grid_to_normalised(fixed, moving, rigid.matrix(), rigid.offset(), dtype=torch.float64)
    images = [dr.Image(torch.zeros(g.shape), g).to_sitk() for g in (fixed, moving)]
    tx = transform_to_sitk(rigid)
    size = torch.tensor(moving.size, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    for _ in range(200):
        index = [int(torch.randint(n, (1,), generator=g)) for n in fixed.size]
        expected = images[1].TransformPhysicalPointToContinuousIndex(
            tx.TransformPoint(images[0].TransformIndexToPhysicalPoint(index)))
        found = (coords[tuple(reversed(index))] + 1) / 2 * (size - 1)
        assert float((found - torch.tensor(expected)).abs().max()) < 1e-4

def test_node_subdivision_equals_linear_interpolation():
    """subdivide_nodes (the SVF stage's control grid -> level voxels) equals F.interpolate with aligned corners
    onto the subdivided grid, cropped to the kept nodes, in 2D and 3D and for factors 2 to 4."""
    import torch.nn.functional as F

    from DeepRegistrationLib.sampling import subdivide_nodes

    g = torch.Generator().manual_seed(2)
    for shape, factor, keep in [((9, 11, 13), 2, None), ((9, 11, 13), 2, (17, 20, 25)), ((7, 9), 3, (19, 25)),
                                ((5, 6, 7), 4, (10, 21, 25)), ((1, 6, 7), 2, (1, 11, 12))]:
        x = torch.randn(1, 3, *shape, generator=g, dtype=torch.float64)
        full = tuple((n - 1) * factor + 1 for n in shape)
        ref = F.interpolate(x, size=full, mode="trilinear" if len(shape) == 3 else "bilinear", align_corners=True)
        keep = keep or full
        ref = ref[(slice(None), slice(None)) + tuple(slice(0, k) for k in keep)]
        out = subdivide_nodes(x, factor, keep)
        assert out.shape == ref.shape
        assert torch.allclose(out, ref, atol=1e-12)


def test_svf_exponential_of_linear_velocity_is_matrix_exponential():
    """v(x) = A (x - c) on an oblique, anisotropic grid integrates to exp(A) (x - c) + c, checked in mm."""
    grid = oblique_grid(dr.Grid([120, 120, 120], spacing=[1.0, 1.0, 1.0]), spacing=(2.0, 2.5, 3.5), angles=(0.3, -0.2, 0.4))
    c = torch.as_tensor(grid.center())
    a = torch.tensor([[0.0, -0.12, 0.05], [0.12, 0.02, -0.04], [-0.05, 0.04, -0.03]], dtype=torch.float64)
    x = grid.physical_points(dtype=torch.float64)
    velocity = ((x - c) @ a.T).movedim(-1, 0).float()
    svf = dr.StationaryVelocityField(velocity, grid, steps=8)
    inner = x[8:-8, 8:-8, 8:-8].reshape(-1, 3)  # away from the border, where the field is extended by its edge
    expected = (inner - c) @ torch.linalg.matrix_exp(a).T + c
    error = (svf.map_points(inner) - expected).norm(dim=-1)
    assert float(error.max()) < 0.05, float(error.max())


def test_field_sampled_on_the_reference_grid_warps_as_the_transform(oasis_oblique, oasis_seg_pair):
    """``evaluate`` samples the transform once on the fixed grid and warps through that field (no interpolation
    of it at the voxel centres): on a real anisotropic oblique grid the result equals the warp through the
    transform and SimpleITK's resampling, for intensities and label maps."""
    grid = oasis_oblique.grid
    transform = known_transform(grid.center())
    field = dr.to_displacement_field(transform, grid, dtype=torch.float64)
    np.testing.assert_allclose(field.map_points(grid.physical_points()[::7, ::7, ::7].reshape(-1, 3)).numpy(),
                               transform.map_points(grid.physical_points()[::7, ::7, ::7].reshape(-1, 3)).numpy(),
                               atol=1e-9)  # at voxel centres the field is the transform, in mm
    through_field = dr.warp_image(oasis_oblique, field, oasis_oblique).numpy()
    np.testing.assert_allclose(through_field, dr.warp_image(oasis_oblique, transform, oasis_oblique).numpy(),
                               atol=1e-5 * _intensity_range(oasis_oblique))
    from DeepRegistrationLib.io import transform_to_sitk

    theirs = _sitk_resample(oasis_oblique, transform_to_sitk(transform))
    assert np.abs(through_field - theirs).max() <= 1e-3 * _intensity_range(oasis_oblique)
    seg = oasis_seg_pair[0].resample_to(grid, interpolation="nearest")
    np.testing.assert_array_equal(dr.warp_image(seg, field, seg, "label").numpy(),
                                  dr.warp_image(seg, transform, seg, "label").numpy())


def test_jacobian_in_slabs_is_the_jacobian_of_the_whole_grid(oasis_oblique):
    """The Jacobian computed slab by slab (many slabs here) equals the one-slab computation on a real oblique
    anisotropic grid, and the determinant of an affine sampled as a dense field is det(A)."""
    from DeepRegistrationLib.metrics import jacobian_determinant

    grid = oasis_oblique.grid.with_spacing([3.0, 3.5, 4.0])
    transform = known_transform(grid.center())
    whole = jacobian_determinant(transform, grid, slab_voxels=10**9)
    np.testing.assert_allclose(jacobian_determinant(transform, grid, slab_voxels=700).numpy(), whole.numpy(),
                               rtol=1e-10)
    field = dr.to_displacement_field(transform, grid, dtype=torch.float64)
    np.testing.assert_allclose(jacobian_determinant(field, grid, slab_voxels=700).numpy(), whole.numpy(), rtol=1e-10)
    matrix = np.array([[1.05, 0.03, -0.02], [0.01, 0.97, 0.04], [-0.03, 0.02, 1.02]])
    affine_field = dr.to_displacement_field(dr.AffineTransform(matrix, [1.0, 2.0, -1.0]), grid, dtype=torch.float64)
    np.testing.assert_allclose(jacobian_determinant(affine_field, grid, slab_voxels=700).numpy(),
                               np.linalg.det(matrix), rtol=1e-9)
