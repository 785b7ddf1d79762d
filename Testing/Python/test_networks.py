"""VoxelMorph networks: shapes, the voxel -> physical field bridge against the library's warp, and a short
unsupervised training on real 2D slices that must improve the overlap of anatomical labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import DeepRegistrationLib as dr
from conftest import data_file, oasis_slice, write_2d_slices
from DeepRegistrationLib.metrics import overlap
from DeepRegistrationLib.methods.voxelmorph.network import ARCHITECTURES, VoxelMorphNet
from DeepRegistrationLib.transforms.voxel import voxel_field_to_physical
from DeepRegistrationLib.synthetic import oblique_grid


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
@pytest.mark.parametrize("dim", [2, 3])
def test_shapes_and_identity_at_start(architecture, dim):
    net = VoxelMorphNet(dim, architecture, diffeomorphic=True)
    x = torch.rand(2, 1, *([16] * dim))
    warped, field = net(x, x)
    assert warped.shape == x.shape and field.shape == (2, dim, *([16] * dim))
    assert float(field.abs().max()) < 1e-2  # flow head initialised near zero, as in the papers
    norms = [m for m in net.modules() if isinstance(m, (torch.nn.InstanceNorm2d, torch.nn.InstanceNorm3d))]
    assert bool(norms) == ("norm" in ARCHITECTURES[architecture])  # vm1-lite-in: normalised body, bare flow head
    with pytest.raises(dr.InputError, match="divisible by 8"):
        net(torch.rand(1, 1, *([12] * dim)), torch.rand(1, 1, *([12] * dim)))
    with pytest.raises(dr.InputError, match="unknown VoxelMorph architecture"):
        VoxelMorphNet(dim, "vm9")


def test_voxel_field_matches_library_warp(oasis_t1):
    """MONAI's Warp of a voxel field == the library's voxel warp (training) == the library's warp with the field
    converted to LPS mm (oblique grid)."""
    from monai.networks.blocks import Warp

    from DeepRegistrationLib.transforms.voxel import warp_voxels

    grid = oblique_grid(oasis_t1.grid, spacing=(2.0, 2.4, 3.0))
    image = oasis_t1.resample_to(grid).minmax()
    g = torch.Generator().manual_seed(0)
    coarse = torch.randn(1, 3, 4, 4, 4, generator=g) * 2.0
    field = torch.nn.functional.interpolate(coarse, size=grid.shape, mode="trilinear", align_corners=True)[0]
    monai_warped = Warp(mode="bilinear", padding_mode="zeros")(image.data[None].float(), field[None])[0]
    assert float((warp_voxels(image.data[None].float(), field[None]) - monai_warped[None]).abs().max()) < 1e-5
    ours = dr.warp_image(image, voxel_field_to_physical(field.double(), grid), grid)
    inner = tuple(slice(3, -3) for _ in range(3))
    diff = (monai_warped[0][inner] - ours.data[0][inner]).abs().max()
    assert float(diff) < 1e-4, float(diff)


def test_mirror_field_is_the_field_of_the_mirrored_pair(oasis_t1):
    """If ``u`` warps image I onto W, ``mirror_field`` of the field found for the mirrored pair is ``u`` again:
    warping mirror(I) by mirror_field(u) gives mirror(W), along every axis, and the scaling-and-squaring
    exponential commutes with the mirroring (so velocities may be averaged as fields are)."""
    from DeepRegistrationLib.methods.voxelmorph.inference import mirror_field
    from DeepRegistrationLib.transforms.voxel import integrate_voxel_velocity, warp_voxels

    grid = oblique_grid(oasis_t1.grid, spacing=(3.0, 4.0, 5.0))  # voxel units: anisotropy must not matter
    image = oasis_t1.resample_to(grid).minmax().data[None].float()
    g = torch.Generator().manual_seed(1)
    coarse = torch.randn(1, 3, 4, 4, 4, generator=g) * 2.0
    u = torch.nn.functional.interpolate(coarse, size=grid.shape, mode="trilinear", align_corners=True)
    def warp(img, field):
        return warp_voxels(img, field)

    warped = warp(image, u)
    inner = (slice(None), slice(None)) + tuple(slice(3, -3) for _ in range(3))
    for axis in range(3):
        mirrored = warp(image.flip(2 + axis), mirror_field(u, axis)).flip(2 + axis)
        assert float((mirrored - warped)[inner].abs().max()) < 1e-4, axis
        wrong = warp(image.flip(2 + axis), u.flip(2 + axis)).flip(2 + axis)  # component not negated
        assert float((wrong - warped)[inner].abs().max()) > 0.05
        def exp(v):
            return integrate_voxel_velocity(v, 7)

        diff = (exp(mirror_field(u, axis)) - mirror_field(exp(u), axis))[inner].abs().max()
        assert float(diff) < 1e-4, (axis, float(diff))
    assert torch.equal(mirror_field(mirror_field(u, 1), 1), u)


def test_left_right_axis_of_model_grids():
    """The tensor axis of a model grid along the patient's left-right: found from its direction, whatever the
    orientation code; an oblique grid is refused with a message naming the setting to change."""
    from DeepRegistrationLib.methods.voxelmorph.inference import left_right_axis
    from DeepRegistrationLib.methods.voxelmorph.model_grid import ModelInput

    center = np.zeros(3)
    axes = {code: left_right_axis(ModelInput((16, 16, 16), (2.0,) * 3, code).grid_at(center))
            for code in ("LIA", "RAS", "PLI", "SPR", "LPS")}
    assert axes == {"LIA": 2, "RAS": 2, "PLI": 1, "SPR": 0, "LPS": 2}  # array order (k, j, i)
    assert left_right_axis(ModelInput((16, 16), (2.0, 2.0), "PL").grid_at(np.zeros(2))) == 0
    with pytest.raises(dr.InputError, match="mirror_average"):
        left_right_axis(oblique_grid(dr.Grid((16, 16, 16), (0, 0, 0), (2, 2, 2)), angles=(0.4, -0.3, 0.35)))


def test_short_training_on_real_slices_improves_overlap():
    """Unsupervised (LNCC + diffusion) training on one OASIS slice pair: seg24 Dice must rise."""
    from DeepRegistrationLib.metrics.similarity import LNCCLoss
    from DeepRegistrationLib.metrics import diffusion_regulariser

    fixed, moving = oasis_slice("0001", "norm"), oasis_slice("0002", "norm")
    fseg, mseg = oasis_slice("0001", "seg24"), oasis_slice("0002", "seg24")
    assert fixed.shape == (192, 160)  # divisible by 8: the network sees the slices as they are
    torch.manual_seed(0)
    net = VoxelMorphNet(2, "vm1", diffeomorphic=True, integration_steps=5)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sim = LNCCLoss(window=9)
    f, m = fixed.data[None].float(), moving.data[None].float()
    for _ in range(150):
        opt.zero_grad()
        warped, field = net(m, f)
        loss = sim(f, warped) + 0.5 * diffusion_regulariser(field[0], (1.0, 1.0))
        loss.backward()
        opt.step()
    with torch.no_grad():
        _, field = net(m, f)
    transform = voxel_field_to_physical(field[0].double(), fixed.grid)
    before = np.mean([v["dice"] for v in overlap(fseg, dr.warp_image(mseg, None, fseg, "label")).values()])
    after = np.mean([v["dice"] for v in overlap(fseg, dr.warp_image(mseg, transform, fseg, "label")).values()])
    assert after > before + 0.05, (before, after)


def test_instance_normalised_variant_learns_faster_on_real_slices():
    """vm1-lite-in vs vm1-lite, same seed, losses and 40 steps on the OASIS slice pair: the normalised network
    must gain seg24 Dice where the plain one has not started yet (measured: +0.10 against +0.00)."""
    from DeepRegistrationLib.metrics.similarity import LNCCLoss
    from DeepRegistrationLib.metrics import diffusion_regulariser

    fixed, moving = oasis_slice("0001", "norm"), oasis_slice("0002", "norm")
    fseg, mseg = oasis_slice("0001", "seg24"), oasis_slice("0002", "seg24")
    f, m = fixed.data[None].float(), moving.data[None].float()

    def mean_dice(net) -> float:
        with torch.no_grad():
            _, field = net(m, f)
        warped = dr.warp_image(mseg, voxel_field_to_physical(field[0].double(), fixed.grid), fseg, "label")
        return float(np.mean([v["dice"] for v in overlap(fseg, warped).values()]))

    gains = {}
    for architecture in ("vm1-lite", "vm1-lite-in"):
        torch.manual_seed(0)
        net = VoxelMorphNet(2, architecture, diffeomorphic=True, integration_steps=5)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        sim = LNCCLoss(window=9)
        before = mean_dice(net)
        for _ in range(40):
            opt.zero_grad()
            warped, field = net(m, f)
            (sim(f, warped) + 0.5 * diffusion_regulariser(field[0], (1.0, 1.0))).backward()
            opt.step()
        gains[architecture] = mean_dice(net) - before
    assert gains["vm1-lite-in"] > 0.05 and gains["vm1-lite-in"] > gains["vm1-lite"] + 0.05, gains


def test_model_folder_roundtrip_and_refusals(tmp_path):
    from DeepRegistrationLib.io.models import CARD, WEIGHTS, load_model, save_model

    torch.manual_seed(0)
    net = VoxelMorphNet(2, "vm1", diffeomorphic=True, integration_steps=5)
    card = {"name": "test-vm1", "input": {"shape": [16, 16], "spacing_mm": [1.0, 1.0]}, "training": {"steps": 0},
            "licence": "Apache-2.0"}
    folder = save_model(net, tmp_path / "m", card)
    loaded, got = load_model(folder)
    x = torch.rand(1, 1, 16, 16)
    assert torch.equal(loaded(x, x)[1], net.eval()(x, x)[1])
    assert got["architecture"] == net.config and len(got["sha256"]) == 64 and got["weights_bytes"] < 10 * 1024 * 1024
    with pytest.raises(dr.InputError, match="exists and is not an empty folder"):
        save_model(net, folder, card)
    # a corrupted weights file
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / CARD).write_text((folder / CARD).read_text())
    data = bytearray((folder / WEIGHTS).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(dr.InputError, match="checksum mismatch"):
        load_model(bad)
    # weights of another architecture (card edited consistently except for the architecture)
    import json

    other = tmp_path / "other"
    other.mkdir()
    (other / WEIGHTS).write_bytes((folder / WEIGHTS).read_bytes())
    edited = json.loads((folder / CARD).read_text())
    edited["architecture"]["architecture"] = "vm2"
    (other / CARD).write_text(json.dumps(edited))
    with pytest.raises(dr.InputError, match="do not match the architecture"):
        load_model(other)
    edited["architecture"]["dim"] = 3
    (other / CARD).write_text(json.dumps(edited))
    with pytest.raises(dr.InputError, match="do not match the architecture"):
        load_model(other)
    (other / CARD).write_text("{not json")
    with pytest.raises(dr.InputError, match="not a valid model card"):
        load_model(other)
    with pytest.raises(dr.InputError, match="model file not found"):
        load_model(tmp_path / "missing")


def _slice_subjects():
    from DeepRegistrationLib.methods.voxelmorph.training import Subject

    return [Subject(oasis_slice(sid, "norm").data.float(), oasis_slice(sid, "seg4").data, sid)
            for sid in ("0001", "0002")]


def test_augmented_training_pairs_distinct_subjects_when_asked(tmp_path):
    """With augmentation a subject may meet a fresh deformation of itself; self_pairs=False never pairs it so."""
    from DeepRegistrationLib.methods.voxelmorph.augment import AugmentConfig
    from DeepRegistrationLib.methods.voxelmorph.training import TrainConfig, train_voxelmorph

    subjects = _slice_subjects()
    pairs = {}
    for self_pairs in (True, False):
        events = []
        torch.manual_seed(0)
        train_voxelmorph(VoxelMorphNet(2, "vm1-lite-in", integration_steps=4), subjects,
                         TrainConfig(steps=8, learning_rate=1e-3, self_pairs=self_pairs, checkpoint_every=8),
                         tmp_path / str(self_pairs), augment=AugmentConfig(rotation_deg=0, scaling=0, translation_mm=0),
                         progress=events.append)
        pairs[self_pairs] = [tuple(e["pair"]) for e in events]
    assert any(m == f for m, f in pairs[True]), pairs[True]
    assert all(m != f for m, f in pairs[False]) and len(set(pairs[False])) == 2, pairs[False]


def test_training_is_reproducible_and_resumes_exactly(tmp_path):
    """Same seed -> same weights; 3 steps (stopped early) + resume to 8 == 8 steps in one go (the checkpoint
    holds everything)."""
    from DeepRegistrationLib.methods.voxelmorph.training import TrainConfig, train_voxelmorph

    subjects = _slice_subjects()
    cfg = dict(learning_rate=1e-3, seed=3, checkpoint_every=4, validate_every=4, dice_weight=0.5)

    def fresh():
        torch.manual_seed(0)
        return VoxelMorphNet(2, "vm1", diffeomorphic=True, integration_steps=4)

    straight = fresh()
    events = []
    figures = train_voxelmorph(straight, subjects, TrainConfig(steps=8, **cfg), tmp_path / "a",
                               validation=[(subjects[1], subjects[0])], progress=events.append)
    assert len(events) == 8 and "validation_dice" in figures and 0 < figures["validation_dice"] <= 1
    assert "soft_dice" in figures
    # the training's validation Dice is the library's: field -> LPS mm, nearest-neighbour warp, overlap
    with torch.no_grad():
        _, u = straight(subjects[1].image[None], subjects[0].image[None])
    fseg, mseg = oasis_slice("0001", "seg4"), oasis_slice("0002", "seg4")
    warped = dr.warp_image(mseg, voxel_field_to_physical(u[0].double(), fseg.grid), fseg.grid, "nearest")
    library = np.mean([v["dice"] for v in overlap(fseg, warped).values()])
    assert abs(library - figures["validation_dice"]) < 2e-3, (library, figures["validation_dice"])
    half = fresh()  # asked to stop after step 3 (a time limit): checkpoints there and says so
    asked = iter(range(100))
    stopped = train_voxelmorph(half, subjects, TrainConfig(steps=8, **cfg), tmp_path / "b",
                               stop=lambda: next(asked) >= 2)
    assert stopped["stopped"] and stopped["step"] == 3
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["step"] == 3
    # resumed with steps = the stopped step (to write the model as it is): no step, the last figures + validation
    kept = train_voxelmorph(fresh(), subjects, TrainConfig(steps=3, **cfg), tmp_path / "b", resume=True,
                            validation=[(subjects[1], subjects[0])])
    assert kept["step"] == 3 and kept["loss"] == stopped["loss"] and 0 < kept["validation_dice"] <= 1
    assert "stopped" not in kept  # so the train command writes the model
    resumed = fresh()
    train_voxelmorph(resumed, subjects, TrainConfig(steps=8, **cfg), tmp_path / "b", resume=True)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(dr.InputError, match="no checkpoint to resume from"):
        train_voxelmorph(fresh(), subjects, TrainConfig(steps=2), tmp_path / "empty", resume=True)
    with pytest.raises(dr.InputError, match="at least two subjects"):
        train_voxelmorph(fresh(), subjects[:1], TrainConfig(steps=2), tmp_path / "c")


def test_training_refuses_bad_subjects(tmp_path):
    from DeepRegistrationLib.methods.voxelmorph.training import Subject, TrainConfig, train_voxelmorph

    good = Subject(torch.rand(1, 16, 16), torch.zeros(1, 16, 16, dtype=torch.int32), "a")
    nan = Subject(torch.full((1, 16, 16), float("nan")), None, "scan-with-nan")
    net = VoxelMorphNet(2, "vm1")
    with pytest.raises(dr.InputError, match="scan-with-nan: has NaN"):
        train_voxelmorph(net, [good, nan], TrainConfig(steps=1), tmp_path / "a")
    with pytest.raises(dr.InputError, match="every label map is empty"):
        train_voxelmorph(net, [good, good], TrainConfig(steps=1, dice_weight=1.0), tmp_path / "b")
    with pytest.raises(dr.InputError, match="model grid"):
        train_voxelmorph(net, [good, Subject(torch.rand(1, 24, 16))], TrainConfig(steps=1), tmp_path / "c")
    assert not (tmp_path / "a" / "checkpoint.pt").exists()


# ---------------------------------------------------------------------- model grid, augmentation, CLI training
def test_model_grid_orientation_and_placement(oasis_t1):
    from DeepRegistrationLib.methods.voxelmorph.model_grid import ModelInput, direction_from_code, orientation_code

    assert orientation_code(oasis_t1.grid.direction_matrix()) == "LIA"  # FreeSurfer's conformed orientation
    for code in ("LIA", "RAS", "LPS", "PIR", "LA", "RP"):
        assert orientation_code(direction_from_code(code)) == code
    for bad in ("LRA", "XYZ", "L", "LIAS", "LS"):
        with pytest.raises(dr.InputError, match="orientation code"):
            direction_from_code(bad)
    with pytest.raises(dr.InputError, match="multiple of 8"):
        ModelInput((56, 60, 72), (3.0,) * 3, "LIA")
    model = ModelInput((56, 64, 72), (3.0,) * 3, "LIA")
    grid = model.grid_for(oasis_t1)
    assert grid.size == (56, 64, 72) and np.allclose(grid.spacing, 3.0)
    assert np.allclose(grid.direction_matrix(), oasis_t1.grid.direction_matrix())
    # centred at the brain's intensity centre of mass, not at the field of view's centre
    from DeepRegistrationLib.intensity import center_of_mass

    assert np.allclose(grid.center(), center_of_mass(oasis_t1.minmax()), atol=0.5)
    assert ModelInput.from_dict(model.to_dict()) == model
    with pytest.raises(dr.InputError, match="not a model grid"):
        ModelInput.from_dict({"size": [56, 64, 72]})


def test_network_input_checks(oasis_t1, oasis_seg_pair):
    from DeepRegistrationLib.methods.voxelmorph.model_grid import ModelInput, check_network_input

    model = ModelInput((56, 64, 72), (3.0,) * 3, "LIA")
    assert check_network_input(oasis_t1, model, "fixed") == []
    with pytest.raises(dr.InputError, match="looks like a label map"):
        check_network_input(oasis_seg_pair[0].float(), model, "fixed")
    slice2d = dr.read_image(data_file("brain2d/oasis_neurite_2d/OAS1_0001_MR1_slice_norm.nii.gz"), dim=2)
    with pytest.raises(dr.InputError, match="2D but the model is 3D"):
        check_network_input(slice2d, model, "moving")
    # the same voxels declared 2.5 mm apart: a head far larger than the model's field of view -> a warning
    big = dr.Image(oasis_t1.data, dr.Grid(oasis_t1.grid.size, oasis_t1.grid.origin, [2.5] * 3,
                                          oasis_t1.grid.direction), "big")
    notes = check_network_input(big, model, "fixed")
    assert len(notes) == 1 and "field of view" in notes[0] and "crop" in notes[0]
    # stored sagittally (axes permuted in the header): resampling handles it, but the user is told to check
    perm = dr.Grid(oasis_t1.grid.size, oasis_t1.grid.origin, oasis_t1.grid.spacing,
                   oasis_t1.grid.direction_matrix()[:, [2, 0, 1]])
    notes = check_network_input(dr.Image(oasis_t1.data, perm, "sagittal"), model, "moving")
    assert any("orientation" in n and "LIA" in n for n in notes)


def test_augmentation_is_seeded_smooth_and_label_consistent():
    from DeepRegistrationLib.methods.voxelmorph.augment import AugmentConfig, augment_subject, random_displacement

    subject = _slice_subjects()[0]
    cfg = AugmentConfig(deformation_mm=3.0, synth_probability=0.5)
    a = augment_subject(subject.image, subject.labels, 1.0, cfg, torch.Generator().manual_seed(5))
    b = augment_subject(subject.image, subject.labels, 1.0, cfg, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
    ddf = random_displacement((192, 160), 1.0, AugmentConfig(deformation_mm=3.0, rotation_deg=0, scaling=0,
                                                             translation_mm=0), torch.Generator().manual_seed(1))
    assert 0.5 < float(ddf.abs().max()) < 20  # mm = voxels here: a few mm, not a scramble
    # smooth and unfolded away from the border (MONAI's integration pads with zeros): 1 + du/dx > 0
    d = ddf[:, 0].diff(dim=1)[:, 4:-4, 4:-4]
    assert float(d.abs().mean()) < 0.2 and float(d.min()) > -0.8
    gen = torch.Generator().manual_seed(0)
    for _ in range(6):  # both branches: real (bias/gamma/noise) and synthesised from the labels
        image, labels, synth, _, _ = augment_subject(subject.image, subject.labels, 1.0, cfg, gen)
        assert image.shape == subject.image.shape and float(image.min()) >= 0 and float(image.max()) <= 1
        assert set(torch.unique(labels).tolist()) <= set(torch.unique(subject.labels).tolist())
        if synth:  # a synthesised image is a per-label contrast: labels explain most of its variance
            flat, lab = image.reshape(-1), labels.reshape(-1).long()
            means = torch.zeros(int(lab.max()) + 1).index_add_(0, lab, flat) / torch.bincount(lab).clamp(min=1)
            residual = flat - means[lab]
            assert float(residual.var()) < 0.5 * float(flat.var())


def test_random_contrast_swaps_tissue_order_and_keeps_the_anatomy():
    """The contrast remapping of real images (contrast-agnostic training): a seeded piecewise-linear curve of the
    intensity, background kept at 0, tissues change order across draws (as between T1, T2 and PD), while every
    voxel's new value depends on its old value only: the label-wise structure of a real slice is kept."""
    from DeepRegistrationLib.methods.voxelmorph.augment import AugmentConfig, augment_subject, random_contrast

    subject = _slice_subjects()[0]
    image, labels = subject.image, subject.labels
    a = random_contrast(image, torch.Generator().manual_seed(3))
    assert torch.equal(a, random_contrast(image, torch.Generator().manual_seed(3)))
    assert a.shape == image.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    assert float(a[image == 0].abs().max()) == 0  # background stays dark
    # the same intensity always maps to the same value: a function of the image, not of position
    order = image.reshape(-1).argsort()
    assert float((a.reshape(-1)[order].diff().abs() * (image.reshape(-1)[order].diff() == 0)).max()) == 0
    lab = labels.reshape(-1).long()
    tissue = [int(v) for v in torch.unique(lab) if v != 0][:4]

    def ranking(img):
        means = [float(img.reshape(-1)[lab == v].mean()) for v in tissue]
        return tuple(sorted(range(len(tissue)), key=means.__getitem__))

    rankings = {ranking(random_contrast(image, torch.Generator().manual_seed(s))) for s in range(12)}
    assert len(rankings) >= 3, rankings  # non-monotonic: the tissues' order changes between draws
    with pytest.raises(ValueError, match="2 knots"):
        random_contrast(image, torch.Generator(), knots=1)
    # through augment_subject: a remapped real image is flagged as a new contrast (no LNCC for it)
    cfg = AugmentConfig(deformation_mm=3.0, remap_probability=1.0)
    out = augment_subject(image, labels, 1.0, cfg, torch.Generator().manual_seed(0))
    assert out.new_contrast and out.image.shape == image.shape and out.labels.shape == labels.shape
    # without remapping the random stream is the one of earlier runs (reproducible checkpoints resume exactly)
    plain = augment_subject(image, labels, 1.0, AugmentConfig(deformation_mm=3.0), torch.Generator().manual_seed(0))
    assert not plain.new_contrast
    # the reference: the real image under the same deformation, whatever contrast the network is shown
    from DeepRegistrationLib.transforms.voxel import warp_voxels

    assert float(out.ddf.abs().max()) > 0.5 and torch.equal(out.ddf, plain.ddf)
    assert torch.allclose(out.reference, warp_voxels(image[None].float(), out.ddf)[0])
    assert torch.equal(out.reference, plain.reference) and not torch.allclose(out.image, out.reference, atol=0.05)


def test_remapped_training_refuses_what_it_cannot_learn_from():
    from DeepRegistrationLib.errors import InputError
    from DeepRegistrationLib.methods.voxelmorph.augment import AugmentConfig
    from DeepRegistrationLib.methods.voxelmorph.training import Subject, TrainConfig, train_voxelmorph

    subjects = _slice_subjects()
    net = VoxelMorphNet(2, "vm1-lite")
    with pytest.raises(InputError, match="remapped images have random contrasts"):
        train_voxelmorph(net, subjects, TrainConfig(steps=1), "/nonexistent/never-written",
                         augment=AugmentConfig(remap_probability=0.5))
    unlabelled = [Subject(s.image, None, s.name) for s in subjects]
    with pytest.raises(InputError, match="remapped images have random contrasts|needs a label map|needs label maps"):
        train_voxelmorph(net, unlabelled, TrainConfig(steps=1, dice_weight=1.0), "/nonexistent/never-written",
                         augment=AugmentConfig(remap_probability=0.5))


def test_similarity_on_references_trains_alignment_from_random_contrasts(tmp_path):
    """Contrast-agnostic training with a dense signal: half the images the network sees are the real slice through
    a random contrast curve, the loss is LNCC between the pair's references (the real slices under the same
    deformations) + diffusion, no Dice. The similarity term is live on the remapped pairs too, and 120 steps raise
    the seg4 Dice of the T1 pair (measured on 1 and 2 threads: OASIS 0.498 -> 0.526-0.534, the wheel-built
    stand-ins 0.704 -> 0.724-0.732; 80 steps were not enough on one thread, where a run can fall back to its
    near-zero output). Without the references the same run has nothing to learn the remapped pairs from and is
    refused."""
    from DeepRegistrationLib.errors import InputError
    from DeepRegistrationLib.methods.voxelmorph.augment import AugmentConfig
    from DeepRegistrationLib.methods.voxelmorph.training import TrainConfig, train_voxelmorph, validation_dice

    subjects = _slice_subjects()
    augment = AugmentConfig(remap_probability=0.5, deformation_mm=2.0, rotation_deg=0, scaling=0, translation_mm=0)
    config = dict(steps=120, learning_rate=1e-3, dice_weight=0.0, lncc_weight=1.0, lncc_window=9,
                  regularisation_weight=0.5, self_pairs=False, checkpoint_every=1000)
    with pytest.raises(InputError, match="remapped images have random contrasts"):
        train_voxelmorph(VoxelMorphNet(2, "vm1-lite-in"), subjects, TrainConfig(**config), tmp_path / "refused",
                         augment=augment)
    assert not (tmp_path / "refused").exists()
    torch.manual_seed(0)
    net = VoxelMorphNet(2, "vm1-lite-in", integration_steps=5)
    validation = [(subjects[1], subjects[0])]
    before = validation_dice(net, validation, "cpu")
    events = []
    figures = train_voxelmorph(net, subjects, TrainConfig(similarity_on_reference=True, **config), tmp_path / "a",
                               augment=augment, validation=validation, progress=events.append)
    remapped = [e for e in events if e["synthetic"]]
    assert len(events) == 120 and len(remapped) > 30
    assert all(e["similarity"] < -0.05 for e in remapped)  # LNCC loss (negative): not skipped for new contrasts
    assert figures["validation_dice"] > before + 0.01, (before, figures["validation_dice"])


def test_moving_contrast_mapped_as_the_map_contrast_stage_shows_it(tmp_path):
    """map_into_contrast: a slice through a random non-monotonic curve, mapped into the contrast of the other
    subject's real slice by the conditional mean, correlates with its own real contrast again (the tissues' order
    restored); training with map_moving_contrast shows the network the fixed image in its real contrast."""
    from DeepRegistrationLib.methods.voxelmorph.augment import AugmentConfig, random_contrast
    from DeepRegistrationLib.methods.voxelmorph.training import TrainConfig, map_into_contrast, train_voxelmorph

    subjects = _slice_subjects()
    real, other = subjects[0].image, subjects[1].image
    brain = subjects[0].labels > 0

    def corr(a, b):
        return float(torch.corrcoef(torch.stack([a[brain], b[brain]]))[0, 1])

    remapped = [random_contrast(real, torch.Generator().manual_seed(s)) for s in range(6)]
    mapped = [map_into_contrast(r, other) for r in remapped]
    assert all(float(m.min()) >= 0 and float(m.max()) <= 1 and m.shape == real.shape for m in mapped)
    before, after = [corr(r, real) for r in remapped], [corr(m, real) for m in mapped]
    # measured: OASIS before -0.32..0.81 (mean 0.28), after 0.54..0.89 (mean 0.66); stand-ins before -0.83..0.78
    # (mean 0.03), after 0.22..0.85 (mean 0.56): the order of the tissues comes back, not their exact values (the
    # mapping is estimated between two subjects, through the identity)
    assert min(before) < 0 and min(after) > 0.15 and sum(after) / 6 > max(0.5, sum(before) / 6 + 0.2), (before, after)
    seen = []
    net = VoxelMorphNet(2, "vm1-lite-in")
    forward = net.forward
    net.forward = lambda m, f: seen.append((m, f)) or forward(m, f)
    train_voxelmorph(net, subjects, TrainConfig(steps=3, dice_weight=0.0, similarity_on_reference=True,
                                                map_moving_contrast=True, self_pairs=False, checkpoint_every=3),
                     tmp_path / "m", augment=AugmentConfig(remap_probability=1.0, rotation_deg=0, scaling=0,
                                                           translation_mm=0))
    for m, f in seen:  # the fixed input is a real slice (deformed), the moving one mapped into its contrast
        assert corr(f[0], subjects[0].image) > 0.5 or corr(f[0], subjects[1].image) > 0.5
        assert float(m.max()) <= 1 and float(f.max()) <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_augmentation_and_training_on_cuda_match_the_cpu(tmp_path):
    """On a GPU the augmentation runs on the device from the same CPU random stream: same images as on the
    CPU (to float precision); a short training run there works end to end."""
    from DeepRegistrationLib.methods.voxelmorph.augment import AugmentConfig, augment_subject
    from DeepRegistrationLib.methods.voxelmorph.training import TrainConfig, train_voxelmorph

    subjects = _slice_subjects()
    cfg = AugmentConfig(deformation_mm=3.0, synth_probability=0.5)
    cpu = augment_subject(subjects[0].image, subjects[0].labels, 1.0, cfg, torch.Generator().manual_seed(5))
    gpu = augment_subject(subjects[0].image.cuda(), subjects[0].labels.cuda(), 1.0, cfg,
                          torch.Generator().manual_seed(5))
    assert gpu[0].is_cuda and float((gpu[0].cpu() - cpu[0]).abs().max()) < 1e-3 and gpu[2] == cpu[2]
    assert float((gpu[1].cpu() != cpu[1]).float().mean()) < 1e-3
    torch.manual_seed(0)
    net = VoxelMorphNet(2, "vm1-lite")
    figures = train_voxelmorph(net, subjects, TrainConfig(steps=3, dice_weight=1.0), tmp_path, device="cuda",
                               augment=AugmentConfig(synth_probability=0.5, known_pair_probability=0.5),
                               validation=[(subjects[1], subjects[0])])
    assert figures["step"] == 3 and 0 < figures["validation_dice"] <= 1


def _write_2d_subjects(folder):
    """The OASIS 2D slices as 2D NIfTI files (the shared files are single-slice 3D volumes)."""
    return write_2d_slices(folder)


def test_train_cli_writes_a_model_that_fine_tunes_and_resumes(tmp_path):
    """deepreg train voxelmorph on real 2D slices: the model folder has a complete card, loads, registers;
    --init fine-tunes it (card records the parent's checksum); --resume continues; bad input writes nothing."""
    from DeepRegistrationLib.cli import main
    from DeepRegistrationLib.io.models import load_model

    p = _write_2d_subjects(tmp_path)
    common = ["train", "voxelmorph", "--images", str(p["0002", "norm"]), str(p["0001", "norm"]),
              "--labels", str(p["0002", "seg4"]), str(p["0001", "seg4"]), "--val-images", str(p["0001", "norm"]),
              "--val-labels", str(p["0001", "seg4"]), "--grid-size", "72", "80", "--spacing", "2.5",
              "--orientation", "LA", "--architecture", "vm1", "--dice-weight", "1", "--augment", "--synth", "0.3",
              "--known-pairs", "0.5", "--no-self-pairs", "--rotation-deg", "2", "--scaling", "0.01",
              "--translation-mm", "1", "--lr", "1e-3", "--validate-every", "10", "--checkpoint-every", "5", "--threads", "2"]
    # a time limit stops with a checkpoint and writes no model; --resume then finishes the run
    assert main(common + ["--steps", "10", "--out", str(tmp_path / "m"), "--max-minutes", "1e-6"]) == 0
    assert not (tmp_path / "m").exists()
    assert torch.load(tmp_path / "m.checkpoints" / "checkpoint.pt", weights_only=True)["step"] == 1
    assert main(common + ["--steps", "10", "--out", str(tmp_path / "m"), "--resume"]) == 0
    net, card = load_model(tmp_path / "m")
    assert card["input"]["size"] == [72, 80] and card["input"]["orientation"] == "LA"
    t = card["training"]
    assert t["command"].startswith("deepreg train voxelmorph --images") and t["steps"] == 10
    assert 0 < t["validation_dice"] <= 1 and len(t["images"]) == 2 and t["augment"]["synth_probability"] == 0.3
    assert t["augment"]["known_pair_probability"] == 0.5 and t["config"]["supervised_weight"] == 0.1
    assert t["augment"]["rotation_deg"] == 2 and t["augment"]["scaling"] == 0.01 and t["augment"]["translation_mm"] == 1
    assert t["config"]["self_pairs"] is False
    assert (tmp_path / "m.checkpoints" / "checkpoint.pt").is_file()
    # --resume continues from the checkpoint of step 10 to step 15 and replaces the model folder
    assert main(common + ["--steps", "15", "--out", str(tmp_path / "m"), "--resume"]) == 0
    _, card15 = load_model(tmp_path / "m")
    assert card15["training"]["final"]["step"] == 15 and card15["sha256"] != card["sha256"]
    ckpt = torch.load(tmp_path / "m.checkpoints" / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 15 and len(json.loads(ckpt["history"])) == 15
    # fine-tune: architecture and grid come from the parent model
    assert main(["train", "voxelmorph", "--images", str(p["0002", "norm"]), str(p["0001", "norm"]),
                 "--init", str(tmp_path / "m"), "--steps", "3", "--out", str(tmp_path / "ft"), "--threads", "2"]) == 0
    _, ft = load_model(tmp_path / "ft")
    assert ft["training"]["init_sha256"] == card15["sha256"] and ft["input"] == card["input"]
    assert ft["architecture"] == card["architecture"]
    # contrast-agnostic fine-tuning (the synthmorph-brain recipe's options): remapped contrasts, Dice on labels,
    # and the card says what images the new model is for
    assert main(["train", "voxelmorph", "--images", str(p["0002", "norm"]), str(p["0001", "norm"]),
                 "--labels", str(p["0002", "seg4"]), str(p["0001", "seg4"]), "--dice-weight", "1",
                 "--synth", "0.5", "--remap", "0.5", "--similarity-on-reference",
                 "--modality", "brain MRI of any contrast",
                 "--init", str(tmp_path / "m"), "--steps", "3", "--out", str(tmp_path / "any"), "--threads", "2"]) == 0
    _, anyc = load_model(tmp_path / "any")
    assert anyc["input"]["modality"] == "brain MRI of any contrast" and anyc["input"]["size"] == card["input"]["size"]
    assert anyc["training"]["augment"]["remap_probability"] == 0.5
    assert anyc["training"]["config"]["similarity_on_reference"] is True
    assert main(["train", "voxelmorph", "--images", str(p["0002", "norm"]), str(p["0001", "norm"]),
                 "--remap", "0.5", "--init", str(tmp_path / "m"), "--steps", "3", "--out", str(tmp_path / "y"),
                 "--threads", "2"]) == 2  # remapped contrasts need labels (Dice): refused, nothing written
    assert not (tmp_path / "y").exists() or not any((tmp_path / "y").iterdir())
    # bad input: a message naming the problem, nothing written
    assert main(common[:2] + ["--images", str(tmp_path / "nope.nii.gz"), "--out", str(tmp_path / "x")]) == 2
    assert main(common[:2] + ["--images", str(p["0002", "norm"]), "--labels", str(p["0002", "seg4"]),
                              str(p["0001", "seg4"]), "--out", str(tmp_path / "x")]) == 2
    assert main(common[:2] + ["--images", str(p["0002", "seg4"]), str(p["0001", "seg4"]), "--grid-size", "72",
                              "80", "--orientation", "LA", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_onednn_inference_convolutions_match_and_skip_the_reference_kernel(oasis_t1):
    """:func:`use_onednn` (what the inference cache applies on the CPU): the same velocity as the plain network
    on a real pair, without PyTorch's slow reference ``conv3d`` kernel; training (autograd) keeps the usual path."""
    import copy

    from DeepRegistrationLib.methods.voxelmorph.onednn import OneDNNConv3d, use_onednn

    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    torch.manual_seed(0)
    net = VoxelMorphNet(3, "vm1-lite-in", diffeomorphic=True).eval()
    flow_head = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)][-1]
    torch.nn.init.normal_(flow_head.weight, 0.0, 0.05)  # a trained-like head, not the near-zero start
    fast = use_onednn(copy.deepcopy(net))
    assert all(type(m) is OneDNNConv3d for m in fast.modules() if isinstance(m, torch.nn.Conv3d))
    assert fast.state_dict().keys() == net.state_dict().keys()
    grid = oblique_grid(oasis_t1.grid, spacing=(6.0, 6.0, 6.0))
    image = oasis_t1.resample_to(grid).minmax().data.float()
    shape = [n - n % 8 for n in image.shape[1:]]
    fixed = image[None, :, : shape[0], : shape[1], : shape[2]]
    moving = fixed.roll(2, dims=-1)

    def kernels(model):
        with torch.no_grad(), torch.profiler.profile() as prof:
            out = model.velocity(moving, fixed)
        return out, {e.key for e in prof.key_averages()}

    plain, plain_kernels = kernels(net)
    ours, our_kernels = kernels(fast)
    assert "aten::slow_conv3d_forward" in plain_kernels  # these shapes take the reference kernel by default
    assert "aten::slow_conv3d_forward" not in our_kernels and "aten::mkldnn_convolution" in our_kernels
    assert float(plain.abs().max()) > 0.1
    assert float((ours - plain).abs().max()) < 1e-4 * float(plain.abs().max())
    trained = fast.velocity(moving, fixed)  # autograd on: the usual path, differentiable
    trained.abs().mean().backward()
    assert torch.allclose(trained.detach(), plain, atol=1e-4 * float(plain.abs().max()))


@pytest.mark.parametrize("dim", [2, 3])
def test_unet_is_monai_voxelmorph_unet_key_for_key(dim, oasis_t1):
    """The plain-PyTorch U-Net against MONAI's ``VoxelMorphUNet`` for every architecture: the same seed gives
    the same initial weights (modules built in MONAI's order), the state dicts load into each other strictly,
    and a real image pair gives the same output."""
    from monai.networks.nets import VoxelMorphUNet as MonaiUNet

    from DeepRegistrationLib.methods.unet import VoxelMorphUNet

    grid = oblique_grid(oasis_t1.grid, spacing=(4.0,) * 3)
    volume = oasis_t1.resample_to(grid).minmax().data.float()[0]
    shape = [n - n % 8 for n in volume.shape]
    volume = volume[: shape[0], : shape[1], : shape[2]]
    image = volume if dim == 3 else volume[shape[0] // 2]
    pair = torch.stack([image, image.roll(3, dims=-1)])[None]
    for architecture, arch in ARCHITECTURES.items():
        torch.manual_seed(7)
        reference = MonaiUNet(spatial_dims=dim, in_channels=2, **arch)
        torch.manual_seed(7)
        ours = VoxelMorphUNet(dim, 2, **arch)
        theirs = reference.state_dict()
        assert list(ours.state_dict()) == list(theirs), architecture
        assert all(torch.equal(v, theirs[k]) for k, v in ours.state_dict().items()), architecture
        reference.net[1].final_conv_out.adn = torch.nn.Identity()  # VoxelMorphNet's flow head: no normalisation
        with torch.no_grad():
            for weight in theirs.values():  # a trained-like state: no layer near zero
                weight.add_(0.02 * torch.randn_like(weight))
            reference.load_state_dict(theirs)
            ours.load_state_dict(theirs, strict=True)
            expected, got = reference(pair), ours(pair)
        assert float(expected.abs().max()) > 1e-3, architecture
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max())), architecture


def test_inference_does_not_import_monai(tmp_path):
    """Registering with the bundled model in a fresh process never imports MONAI (1.8-2.6 s of a cold run)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    script = (
        "import sys, torch\n"
        "import DeepRegistrationLib as dr\n"
        "from DeepRegistrationLib.methods.voxelmorph.inference import cached_model, predict_transform\n"
        "from DeepRegistrationLib.synthetic import oblique_grid\n"
        f"image = dr.read_image({str(data_file('brain3d/oasis/OAS1_0001_MR1_aligned_norm.nii.gz'))!r})\n"
        "image = image.resample_to(oblique_grid(image.grid, spacing=(3.0, 3.0, 3.0))).minmax()\n"
        "t, fig = predict_transform('voxelmorph-brain', image, image, None, torch.device('cpu'), mirror_average=True)\n"
        "print(fig['network'], fig['passes'], sorted(m for m in sys.modules if m.split('.')[0] == 'monai'))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "voxelmorph-brain 1 []"
