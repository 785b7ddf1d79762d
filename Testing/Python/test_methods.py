"""The shared core of the methods: Adam against PyTorch's, the registry's parse-time checks, the loop's guards,
and the Grid helpers the pyramid and the model grids are built from (anisotropic, oblique)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import DeepRegistrationLib as dr
from DeepRegistrationLib.methods.optim import Adam
from DeepRegistrationLib.methods.registry import stage_kind, stage_models
from DeepRegistrationLib.registration import RegistrationConfig, load_preset
from DeepRegistrationLib.synthetic import oblique_grid


def test_adam_is_pytorch_adam_step_for_step():
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(5, generator=g, dtype=torch.float64), torch.randn(3, 3, generator=g, dtype=torch.float64)]
    ours = [torch.nn.Parameter(s.clone()) for s in start]
    ref = [torch.nn.Parameter(s.clone()) for s in start]
    opt = Adam([{"params": [ours[0]], "lr": 0.1}, {"params": [ours[1]], "lr": 0.01}])
    ref_opt = torch.optim.Adam([{"params": [ref[0]], "lr": 0.1}, {"params": [ref[1]], "lr": 0.01}])
    target = torch.randn(5, generator=g, dtype=torch.float64)
    for _ in range(50):
        for params, o in ((ours, opt), (ref, ref_opt)):
            o.zero_grad()
            loss = ((params[0] - target) ** 2).sum() + (params[1] @ params[1].T).diagonal().sum() * 0.1 + params[1].sum() ** 2
            loss.backward()
            o.step()
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, atol=1e-12, rtol=0), float((a - b).abs().max())


def test_registry_knows_every_preset_model_and_its_settings():
    assert set(stage_models("linear")) == {"translation", "rigid", "similarity", "affine"}
    assert set(stage_models("deformable")) >= {"svf", "voxelmorph"}
    for name in ("rigid", "deformable-accurate", "voxelmorph-brain-io", "multimodal-deformable"):
        config = load_preset(name)
        for settings in config.stages:
            assert isinstance(settings, stage_kind(settings.model).settings)
        assert RegistrationConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()  # round trip


@pytest.mark.parametrize("stages, message", [
    ([{"model": "svf"}, {"model": "rigid"}], "linear stages must come before"),
    ([{"model": "svf"}, {"model": "voxelmorph", "network": "x"}], "voxelmorph stage must come before"),
    ([{"model": "bspline"}], "unknown model"),
    ([{"model": "rigid", "learning_rate": -1}], "learning_rate must be a number > 0"),
    ([{"model": "svf", "regularisation_weight": -100}], "regularisation_weight must be a number >= 0"),
    ([{"model": "svf", "smoothing_sigma_mm": -1}], "smoothing_sigma_mm must be"),
    ([{"model": "svf", "control_spacing_factor": 0}], "control_spacing_factor must be"),
    ([{"model": "rigid", "iterations": 10**9}], "iterations must be a whole number"),
    ([{"model": "rigid", "iterations": "abc"}], "iterations must be a whole number"),
    ([{"model": "rigid", "levels_mm": [-1]}], "levels_mm must be a number > 0"),
    ([{"model": "rigid", "network": "voxelmorph-brain"}], r"unknown stage parameter.*'network'"),
    (["rigid"], "a stage must be a JSON object"),
    ([{"model": "rigid", "samples": -5}], "samples must be a whole number"),
    ([{"model": "rigid", "similarity": "lncc", "samples": 1000}], "needs a point-wise similarity"),
])
def test_configs_are_refused_when_parsed(stages, message):
    """Order, values and types are checked when the preset is parsed, before any image is read."""
    with pytest.raises(dr.InputError, match=message):
        RegistrationConfig.from_dict({"stages": stages})


def test_svf_may_refine_a_network_stage():
    config = RegistrationConfig.from_dict({"stages": [{"model": "rigid"}, {"model": "voxelmorph", "network": "x"},
                                                      {"model": "svf"}, {"model": "svf"}]})
    assert [s.model for s in config.stages] == ["rigid", "voxelmorph", "svf", "svf"]


def test_grid_helpers_on_an_oblique_anisotropic_grid():
    reference = dr.Grid([40, 50, 30], [10.0, -20.0, 5.0], [0.9, 1.1, 2.5])
    grid = oblique_grid(reference, spacing=(0.9, 1.2, 2.5))
    # centred: the requested centre, whatever the direction
    centred = dr.Grid.centred([1.0, 2.0, 3.0], [7, 8, 9], [1.5, 2.0, 3.0], grid.direction_matrix())
    assert np.allclose(centred.center(), [1.0, 2.0, 3.0])
    level = grid.centred_at_spacing([4.0, 4.0, 4.0], min_size=2)
    assert np.allclose(level.center(), grid.center()) and level.direction == grid.direction
    # coarsened then subdivided by the same factor holds every node of the original grid
    coarse = grid.coarsened(3)
    fine = coarse.subdivided(3)
    assert all(f >= n for f, n in zip(fine.size, grid.size))
    idx = np.array([[0, 0, 0], [39, 11, 7], [5, 49, 29]], dtype=float)
    assert np.allclose(fine.index_to_physical(idx), grid.index_to_physical(idx))
    # affine round trip, LPS and RAS (SimpleITK's grid of the same image is the LPS one)
    assert dr.Grid.from_affine(grid.to_affine(), grid.size).same_as(grid, 1e-9)
    assert dr.Grid.from_affine(grid.to_affine(ras=True), grid.size, ras=True).same_as(grid, 1e-9)
    import SimpleITK as sitk

    image = sitk.Image(list(grid.size), sitk.sitkUInt8)
    grid.apply_to_sitk(image)
    point = image.TransformContinuousIndexToPhysicalPoint((3.5, 7.25, 11.0))
    ras = grid.to_affine(ras=True) @ np.array([3.5, 7.25, 11.0, 1.0])
    assert np.allclose(ras[:3], dr.geometry.lps_from_ras_points(point), atol=1e-9)
