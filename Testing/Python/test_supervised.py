"""Supervised registration (CNN regression of known displacements): the teacher target on model grids, the loss
falling on real slices with teacher and known pairs, and the ``deepreg train supervised`` command and its
refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import mean_label_dice, oasis_slice
from test_networks import _write_2d_subjects

import DeepRegistrationLib as dr
from DeepRegistrationLib.methods.voxelmorph.network import VoxelMorphNet
from DeepRegistrationLib.methods.voxelmorph.training import (Subject, Teacher, TrainConfig, teacher_displacement,
                                                             train_voxelmorph)
from DeepRegistrationLib.transforms.voxel import warp_voxels


def test_teacher_displacement_is_the_transform_on_two_model_grids():
    """Two model grids placed differently (an oblique 2D grid and a shifted one): the voxel target reproduces the
    teacher transform, i.e. pulling the moving grid's image through it equals resampling through the transform."""
    image = oasis_slice("0001", "norm")
    g = image.grid
    fixed_grid = dr.Grid(g.size, g.origin, g.spacing, g.direction_matrix())
    moving_grid = dr.Grid(g.size, np.asarray(g.origin) + [3.0, -2.0], g.spacing, g.direction_matrix())
    truth = dr.RigidTransform([np.radians(4.0)], [2.0, -1.5], center=g.center())
    u = teacher_displacement(truth, fixed_grid, moving_grid)
    assert u.shape == (1, 2, *fixed_grid.shape)
    on_moving = image.resample_to(moving_grid).data.float()[None]
    pulled = warp_voxels(on_moving, u)[0, 0]
    direct = dr.warp_image(image, truth, fixed_grid).data[0].float()
    inner = (slice(10, -10), slice(10, -10))
    assert float((pulled - direct)[inner].abs().mean()) < 2e-3


def _teacher_pair():
    from DeepRegistrationLib.registration import load_preset, register

    fixed, moving = oasis_slice("0001", "norm"), oasis_slice("0002", "norm")
    result = register(fixed, moving, load_preset("deformable-fast"), device="cpu")
    return fixed, moving, result.transform


def test_supervised_loss_falls_on_real_slices():
    """Regression of a teacher's displacement between two real OASIS slices: the supervised error falls and the
    network's own prediction moves the labels towards the teacher's answer; with known pairs (random
    deformations) mixed in, the error on those falls too."""
    import tempfile

    from DeepRegistrationLib.methods.voxelmorph.augment import AugmentConfig
    from DeepRegistrationLib.transforms.voxel import voxel_field_to_physical

    fixed, moving, transform = _teacher_pair()
    f = Subject(fixed.data.float(), oasis_slice("0001", "seg4").data.long(), "0001")
    m = Subject(moving.data.float(), oasis_slice("0002", "seg4").data.long(), "0002")
    teacher = Teacher(m, f, teacher_displacement(transform, fixed.grid, moving.grid), "t")
    torch.manual_seed(0)
    net = VoxelMorphNet(2, "vm1-lite-in", diffeomorphic=True, integration_steps=5)
    history: list = []
    config = TrainConfig(steps=50, learning_rate=1e-3, lncc_weight=0.0, regularisation_weight=0.01,
                         supervised_weight=1.0, teacher_probability=1.0, checkpoint_every=1000, validate_every=1000)
    with tempfile.TemporaryDirectory() as tmp:
        train_voxelmorph(net, [m, f], config, tmp, teachers=[teacher], progress=history.append)
    mse = [h["supervised_mse"] for h in history]
    assert np.mean(mse[-5:]) < 0.6 * np.mean(mse[:5]), mse
    with torch.no_grad():
        _, u = net.eval()(m.image[None], f.image[None])
    fseg, mseg = oasis_slice("0001", "seg4"), oasis_slice("0002", "seg4")
    before = mean_label_dice(fseg, mseg, None)
    after = mean_label_dice(fseg, mseg, voxel_field_to_physical(u[0].double(), fixed.grid))
    assert after > before + 0.02, (before, after)
    # known pairs only (each a random 3 mm deformation of one subject): the error falls over the steps
    history = []
    config.teacher_probability, config.steps = 0.0, 80
    augment = AugmentConfig(deformation_mm=3.0, rotation_deg=0, scaling=0, translation_mm=0, known_pair_probability=1.0)
    with tempfile.TemporaryDirectory() as tmp:
        train_voxelmorph(net, [m, f], config, tmp, augment=augment, progress=history.append)
    known = [h["supervised_mse"] for h in history]
    assert np.mean(known[-20:]) < 0.8 * np.mean(known[:20]), known


def test_train_supervised_cli_records_teachers_and_refuses_bad_pairs(tmp_path):
    from DeepRegistrationLib.cli import main
    from DeepRegistrationLib.io.models import load_model

    p = _write_2d_subjects(tmp_path)
    _, _, transform = _teacher_pair()
    t = tmp_path / "teacher.h5"
    dr.write_transform(transform, t)
    common = ["train", "supervised", "--images", str(p["0002", "norm"]), str(p["0001", "norm"]),
              "--labels", str(p["0002", "seg4"]), str(p["0001", "seg4"]), "--val-images", str(p["0001", "norm"]),
              "--val-labels", str(p["0001", "seg4"]), "--grid-size", "72", "80", "--spacing", "2.5",
              "--orientation", "LA", "--architecture", "vm1", "--validate-every", "4", "--threads", "2"]
    assert main(common + ["--teacher", str(p["0002", "norm"]), str(p["0001", "norm"]), str(t), "--steps", "4",
                          "--out", str(tmp_path / "m")]) == 0
    net, card = load_model(tmp_path / "m", network="VoxelMorphNet")
    tr = card["training"]
    assert tr["objective"] == "supervised" and tr["teachers"][0]["transform"] == "teacher.h5"
    assert tr["config"]["lncc_weight"] == 0 and tr["config"]["supervised_weight"] == 1
    assert tr["config"]["teacher_probability"] == 0.5 and tr["augment"]["known_pair_probability"] == 1.0
    assert 0 < tr["validation_dice"] <= 1
    # a teacher image that is not a training image; the same image twice; nothing written
    assert main(common + ["--teacher", str(tmp_path / "other.nii.gz"), str(p["0001", "norm"]), str(t),
                          "--out", str(tmp_path / "x")]) == 2
    assert main(common + ["--teacher", str(p["0001", "norm"]), str(p["0001", "norm"]), str(t),
                          "--out", str(tmp_path / "x")]) == 2
    assert main(common + ["--known-pairs", "0", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_supervised_brain_presets_register_the_oasis_pair():
    """The bundled supervised model behind the same interface as VoxelMorph: on the OASIS pair the network raises
    the seg35 Dice over the affine start, instance optimisation adds to it, and nothing folds."""
    from conftest import OASIS, data_file

    from DeepRegistrationLib.io.models import find_model, load_model
    from DeepRegistrationLib.registration import load_preset, register

    _, card = load_model(find_model("supervised-brain"), network="VoxelMorphNet")
    assert card["training"]["objective"] == "supervised" and len(card["training"]["teachers"]) == 2
    fixed, moving = (dr.read_image(data_file(OASIS.format(s, "norm"))) for s in ("0001", "0002"))
    fseg, mseg = (dr.read_image(data_file(OASIS.format(s, "seg35"))).as_label_map() for s in ("0001", "0002"))
    dice = {}
    for preset in ("affine", "supervised-brain", "supervised-brain-io"):
        result = register(fixed, moving, load_preset(preset), device="cpu")
        dice[preset] = mean_label_dice(fseg, mseg, result.transform)
        if not result.transform.is_linear:
            assert result.jacobian()[2]["folding_percent"] < 0.1
    assert dice["supervised-brain"] > dice["affine"] + 0.05, dice
    assert dice["supervised-brain-io"] > dice["supervised-brain"] + 0.05, dice


def test_teacher_displacement_on_anisotropic_oblique_model_grids():
    """The teacher target between model grids of different spacings (0.8 x 1.3 mm and 1.1 x 0.9 mm) and directions
    (oblique by 20 and -10 deg), in millimetres: the moving grid point at index ``x + u(x)`` is the transform of
    the fixed grid point at ``x``, and SimpleITK's own index -> physical map of the moving grid agrees."""
    import SimpleITK as sitk

    c = np.asarray(oasis_slice("0001", "norm").grid.center())

    def oblique(deg: float, spacing) -> dr.Grid:
        a = np.radians(deg)
        return dr.Grid.centred(c, (150, 150), spacing, np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]))

    fixed_grid, moving_grid = oblique(20.0, (0.8, 1.3)), oblique(-10.0, (1.1, 0.9))
    truth = dr.RigidTransform([np.radians(5.0)], [2.5, -1.0], center=c)
    u = teacher_displacement(truth, fixed_grid, moving_grid)[0].double()  # (2, H, W): channel k along tensor axis k
    picks = [(3, 7), (75, 75), (140, 20), (149, 149)]  # (row j, column i)
    ref = sitk.Image(150, 150, sitk.sitkFloat32)
    ref.SetSpacing(moving_grid.spacing)
    ref.SetOrigin(moving_grid.origin)
    ref.SetDirection(np.asarray(moving_grid.direction_matrix()).ravel().tolist())
    for j, i in picks:
        expected = truth.map_points(np.asarray(fixed_grid.index_to_physical(np.array([[i, j]], float))))[0]
        index = (i + float(u[1, j, i]), j + float(u[0, j, i]))  # (i, j) = (x, y) index of the moving grid point
        got = ref.TransformContinuousIndexToPhysicalPoint(index)
        np.testing.assert_allclose(got, np.asarray(expected), atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_train_supervised_with_teachers_on_cuda(tmp_path):
    """Teacher pairs with augmentation on a GPU (the deformed teacher target is composed on the device): the run
    that crashed once with its teachers left on the CPU."""
    from DeepRegistrationLib.cli import main

    p = _write_2d_subjects(tmp_path)
    _, _, transform = _teacher_pair()
    t = tmp_path / "teacher.h5"
    dr.write_transform(transform, t)
    assert main(["train", "supervised", "--images", str(p["0002", "norm"]), str(p["0001", "norm"]),
                 "--grid-size", "72", "80", "--spacing", "2.5", "--orientation", "LA", "--architecture", "vm1",
                 "--teacher", str(p["0002", "norm"]), str(p["0001", "norm"]), str(t), "--teacher-probability", "1",
                 "--known-pairs", "0.5", "--deformation-mm", "3", "--device", "cuda", "--steps", "3",
                 "--out", str(tmp_path / "m")]) == 0
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    assert card["training"]["device"].startswith("cuda") and card["training"]["final"]["supervised_mse"] >= 0
