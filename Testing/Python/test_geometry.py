"""The one coordinate helper (Grid): voxel <-> physical <-> normalised, against SimpleITK and grid_sample."""

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

import DeepRegistrationLib as dr
from conftest import oblique_grid


def _grid() -> dr.Grid:
    return oblique_grid(dr.Grid([40, 50, 30], [10.0, -20.0, 30.0], [1.0, 1.0, 1.0]), spacing=(0.9, 1.2, 2.5))


def test_index_physical_matches_simpleitk():
    grid = _grid()
    image = sitk.Image(grid.size, sitk.sitkFloat32)
    grid.apply_to_sitk(image)
    rng = np.random.default_rng(1)
    idx = rng.uniform(-1, 40, (50, 3))
    ours = grid.index_to_physical(idx)
    theirs = np.array([image.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in idx])
    np.testing.assert_allclose(ours, theirs, atol=1e-9)
    np.testing.assert_allclose(grid.physical_to_index(ours), idx, atol=1e-9)
    assert dr.Grid.from_sitk(image).same_as(grid, atol=1e-12)


def test_physical_points_are_voxel_centres_in_array_order():
    grid = _grid()
    pts = grid.physical_points()
    assert pts.shape == (*grid.shape, 3)
    k, j, i = 3, 7, 11
    np.testing.assert_allclose(pts[k, j, i].numpy(), grid.index_to_physical(np.array([i, j, k])), atol=1e-9)


def test_normalised_coordinates_sample_the_right_voxel():
    """grid_sample at physical_to_normalised(x) must return the voxel value at x, for an oblique anisotropic grid."""
    grid = _grid()
    data = torch.rand(1, 1, *grid.shape, dtype=torch.float64)
    k, j, i = np.meshgrid(np.arange(2, 6), np.arange(5, 9), np.arange(10, 14), indexing="ij")
    idx = np.stack([i.ravel(), j.ravel(), k.ravel()], -1).astype(np.float64)
    norm = torch.as_tensor(grid.physical_to_normalised(grid.index_to_physical(idx))).view(1, -1, 1, 1, 3)
    sampled = F.grid_sample(data, norm, mode="bilinear", align_corners=True).view(-1)
    expected = data[0, 0][k.ravel(), j.ravel(), i.ravel()]
    torch.testing.assert_close(sampled, expected, atol=1e-9, rtol=0)


def test_inside_follows_itk_half_voxel_rule():
    grid = dr.Grid([5, 4, 3])
    idx = torch.tensor([[-0.5, 0, 0], [-0.51, 0, 0], [4.49, 0, 0], [4.5, 0, 0], [0, 3.49, 1.9]], dtype=torch.float64)
    assert grid.inside(idx).tolist() == [True, False, True, False, True]


def test_with_spacing_keeps_extent_and_direction():
    grid = _grid()
    coarse = grid.with_spacing([2.0, 2.4, 5.0])
    assert coarse.direction == grid.direction and coarse.origin == grid.origin
    np.testing.assert_allclose(coarse.extent_mm(), grid.extent_mm(), atol=2.5)


def test_bad_geometry_is_refused():
    import pytest

    with pytest.raises(dr.InputError, match="orthonormal"):
        dr.Grid([2, 2, 2], direction=np.ones((3, 3)))
    with pytest.raises(dr.InputError, match="spacing"):
        dr.Grid([2, 2, 2], spacing=[1, 0, 1])
    with pytest.raises(dr.InputError, match="2D or 3D"):
        dr.Grid([2, 2, 2, 2])
