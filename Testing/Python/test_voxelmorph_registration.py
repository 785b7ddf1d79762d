"""A VoxelMorph brain model behind the common registration interface: the plumbing with untrained weights (the
``voxelmorph_model`` fixture), and the bundled model ``voxelmorph-brain`` (package data) on a subject it never
saw in training (OASIS 0001).

Each bad input is refused before anything runs or is written.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import DeepRegistrationLib as dr
from conftest import OASIS, data_file, from_shared, mean_label_dice
from DeepRegistrationLib.registration import RegistrationCancelled, RegistrationConfig, load_preset, register
from DeepRegistrationLib.resources import bundled_models_dir


@pytest.fixture(scope="module")
def oasis_pair():
    return (dr.read_image(data_file(OASIS.format("0001", "norm"))), dr.read_image(data_file(OASIS.format("0002", "norm"))))


def test_network_stage_is_the_networks_own_field(oasis_pair, voxelmorph_model):
    """The physical transform the engine returns equals the network's scaling-and-squaring displacement
    (MONAI's, in voxels on the model grid) converted to mm, inside the model grid."""
    from DeepRegistrationLib.methods.voxelmorph.inference import cached_model, predict_transform
    from DeepRegistrationLib.methods.voxelmorph.model_grid import normalised, to_model_grid
    from DeepRegistrationLib.transforms.voxel import voxel_field_to_physical

    fixed, moving = oasis_pair
    fixed_n, moving_n = normalised(fixed), normalised(moving)
    transform, figures = predict_transform(str(voxelmorph_model), fixed_n, moving_n, None, torch.device("cpu"))
    grid = transform.grid
    net, _ = cached_model(str(voxelmorph_model), torch.device("cpu"))
    with torch.no_grad():
        _, ddf = net(to_model_grid(moving_n, grid)[None], to_model_grid(fixed_n, grid)[None])
    expected = voxel_field_to_physical(ddf[0].double(), grid).field
    actual = transform.exponential().field
    inner = (slice(None),) + (slice(4, -4),) * 3  # MONAI pads with zeros at the border, the library extends
    diff = (actual - expected)[inner].norm(dim=0)
    assert float(expected[inner].norm(dim=0).max()) > 0.5  # a visible deformation, in mm
    assert float(diff.mean()) < 0.01 and float(diff.max()) < 0.1, (float(diff.mean()), float(diff.max()))
    assert figures["network"] == "test-brain" and figures["model_grid"]["size"] == [56, 64, 72]


def test_voxelmorph_presets_run_and_instance_optimisation_starts_from_the_network(oasis_pair, oasis_seg_pair,
                                                                                 voxelmorph_model):
    """voxelmorph-brain: rigid, affine, then the network's field composed before the affine; voxelmorph-brain-io
    refines it with the engine's SVF (starting from the network's velocity) to a far better overlap."""
    fixed, moving = oasis_pair
    fixed_seg, moving_seg = (s.as_label_map() for s in oasis_seg_pair)
    use = [f"voxelmorph.network={voxelmorph_model}"]
    events: list[dict] = []
    net = register(fixed, moving, load_preset("voxelmorph-brain", use), device="cpu", progress=events.append)
    assert [s["model"] for s in net.figures["stages"]] == ["rigid", "affine", "voxelmorph"]
    # the network stage reports one event without a loss (None, valid JSON for the panel's progress stream)
    assert [e["loss"] for e in events if e["model"] == "voxelmorph"] == [None]
    stage = net.figures["stages"][-1]
    assert stage["network"] == "test-brain" and stage["network_s"] > 0 and stage["resample_s"] > 0
    io = register(fixed, moving, load_preset("voxelmorph-brain-io", use), device="cpu")
    assert [s["model"] for s in io.figures["stages"]] == ["rigid", "affine", "voxelmorph", "svf"]
    dice_net = mean_label_dice(fixed_seg, moving_seg, net.transform)
    dice_io = mean_label_dice(fixed_seg, moving_seg, io.transform)
    assert dice_io > 0.75 and dice_io > dice_net + 0.1, (dice_net, dice_io)
    _, _, stats = io.jacobian()
    assert stats["folding_percent"] < 0.1


def test_voxelmorph_bad_inputs_are_refused_before_anything_runs(oasis_pair, oasis_seg_pair, voxelmorph_model,
                                                                tmp_path):
    from DeepRegistrationLib.cli import main

    fixed, moving = oasis_pair
    config = load_preset("voxelmorph-brain", [f"voxelmorph.network={tmp_path / 'missing'}"])
    with pytest.raises(dr.InputError, match="model folder not found"):
        register(fixed, moving, config, device="cpu")
    use = [f"voxelmorph.network={voxelmorph_model}"]
    with pytest.raises(dr.InputError, match="model 'no-such-model' not found"):
        register(fixed, moving, load_preset("voxelmorph-brain", ["voxelmorph.network=no-such-model"]), device="cpu")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(voxelmorph_model, corrupt)
    data = bytearray((corrupt / "weights.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (corrupt / "weights.pt").write_bytes(bytes(data))
    with pytest.raises(dr.InputError, match="checksum mismatch"):
        register(fixed, moving, load_preset("voxelmorph-brain", [f"voxelmorph.network={corrupt}"]), device="cpu")
    other = tmp_path / "other-architecture"
    shutil.copytree(voxelmorph_model, other)
    card = json.loads((other / "model.json").read_text())
    card["architecture"]["architecture"] = "vm2"
    (other / "model.json").write_text(json.dumps(card))
    with pytest.raises(dr.InputError, match="do not match the architecture"):
        register(fixed, moving, load_preset("voxelmorph-brain", [f"voxelmorph.network={other}"]), device="cpu")
    with pytest.raises(dr.InputError, match="moving image looks like a label map"):
        register(fixed, oasis_seg_pair[1].float(), load_preset("voxelmorph-brain", use), device="cpu")
    slices = [dr.read_image(data_file(f"brain2d/oasis_neurite_2d/OAS1_{s}_MR1_slice_norm.nii.gz"), dim=2)
              for s in ("0001", "0002")]
    with pytest.raises(dr.InputError, match="2D but the model is 3D"):
        register(*slices, load_preset("voxelmorph-brain", use), device="cpu")
    # far outside the model's field of view (the same voxels declared 2.5 mm apart): a warning saying what to do
    big = dr.Image(fixed.data, dr.Grid(fixed.grid.size, fixed.grid.origin, [2.5] * 3, fixed.grid.direction), "big")
    with pytest.warns(UserWarning, match="field of view.*crop or skull-strip"), pytest.raises(RegistrationCancelled):
        register(big, moving, load_preset("voxelmorph-brain", use), device="cpu", cancel=lambda: True)
    # the command line: one clear line, exit status 2, nothing written
    out = tmp_path / "t.h5"
    rc = main(["register", "--fixed", str(data_file(OASIS.format("0001", "norm"))), "--moving",
               str(data_file(OASIS.format("0002", "seg35"))), "--preset", "voxelmorph-brain", "--set", use[0], "--out-transform", str(out)])
    assert rc == 2 and not out.exists()


# the bundled model improves OASIS 0002 -> 0001 from ~0.50 (rigid + affine) to ~0.69 mean seg35 Dice in one pass
BUNDLED_MODEL_GAIN = 0.15
# ... the mirror average (mirror_average) one pass from 0.690 to 0.705 on that pair (measured; 0.672 -> 0.678 on the
# vm pair) and a second pass at step 0.4 (the preset) to 0.734 (measured; 0.701 on the vm pair)
MIRROR_GAIN = 0.005
SECOND_PASS_GAIN = 0.015


def test_bundled_brain_model_card_and_weights():
    """The shipped model: loads with its checksum verified, under 10 MB, and its card says what the issue asks
    (architecture, input grid and normalisation, training data with checksums, command, steps, validation Dice,
    licence), with OASIS 0001 (the benchmarks' fixed subject) outside its training data."""
    from DeepRegistrationLib.io.models import WEIGHTS, load_model
    from DeepRegistrationLib.io.models import find_model

    folder = find_model("voxelmorph-brain")
    assert folder.parent == bundled_models_dir()  # the bundled one, shipped in the package
    net, card = load_model(folder)
    assert (folder / WEIGHTS).stat().st_size < 10e6
    assert card["architecture"]["dim"] == 3 and card["architecture"]["diffeomorphic"]
    assert card["input"]["size"] and card["input"]["spacing"] and card["input"]["orientation"]
    training = card["training"]
    assert "train voxelmorph" in training["command"]
    names = [item["file"] for item in training["images"] + training["labels"]]
    assert "OAS1_0002_MR1_aligned_norm.nii.gz" in names and not any("OAS1_0001" in n for n in names)
    assert all(len(item["sha256_16"]) == 16 for item in training["images"] + training["labels"])
    assert training["steps"] > 0 and 0 < training["validation_dice"] <= 1
    assert "OASIS" in card["licence"]
    assert not net.training


def test_bundled_brain_model_registers_an_unseen_subject(oasis_pair, oasis_seg_pair, monkeypatch):
    """voxelmorph-brain (the shipped model) on OASIS 0002 -> 0001, a fixed subject it never saw in training: one
    network pass must improve the overlap of the engine's rigid + affine start (same stages, same seed) without
    folding; averaging with the left-right mirrored pair must beat one pass, and the preset's second pass (which
    must be given the moving image as the first pass warped it: closer to the fixed one) must beat that."""
    from DeepRegistrationLib.metrics.similarity import make_similarity
    from DeepRegistrationLib.methods.voxelmorph.inference import cached_model

    fixed, moving = oasis_pair
    fixed_seg, moving_seg = (s.as_label_map() for s in oasis_seg_pair)
    preset = load_preset("voxelmorph-brain")
    assert preset.stages[-1].mirror_average and preset.stages[-1].passes == 2
    network, _ = cached_model("voxelmorph-brain", torch.device("cpu"))
    seen = []  # the (moving, fixed) model-grid inputs of every forward pass
    velocity = network.velocity
    monkeypatch.setattr(network, "velocity", lambda m, f: seen.append((m, f)) or velocity(m, f))
    net = register(fixed, moving, preset, device="cpu")
    monkeypatch.undo()
    mirrored = register(fixed, moving, load_preset("voxelmorph-brain", ["voxelmorph.passes=1"]), device="cpu")
    single = register(fixed, moving, load_preset("voxelmorph-brain", ["voxelmorph.passes=1",
                                                                      "voxelmorph.mirror_average=false"]), device="cpu")
    preset.stages = preset.stages[:-1]  # the same rigid + affine without the network
    affine = register(fixed, moving, preset, device="cpu")
    before = mean_label_dice(fixed_seg, moving_seg, affine.transform)
    one_pass = mean_label_dice(fixed_seg, moving_seg, single.transform)
    one_mirrored = mean_label_dice(fixed_seg, moving_seg, mirrored.transform)
    two_passes = mean_label_dice(fixed_seg, moving_seg, net.transform)
    # The wheel-built stand-in pair (one real warp of the same anatomy) starts at 0.73 Dice, not OASIS's 0.46:
    # less room to gain (measured there: 0.728 -> 0.820 one pass -> 0.829 mirrored -> 0.844 two passes).
    oasis = from_shared(OASIS.format("0001", "seg35"))
    gains = (BUNDLED_MODEL_GAIN, MIRROR_GAIN, SECOND_PASS_GAIN) if oasis else (0.05, 0.003, 0.008)
    assert one_pass > before + gains[0], (before, one_pass)
    assert one_mirrored > one_pass + gains[1], (one_pass, one_mirrored)
    assert two_passes > one_mirrored + gains[2], (one_mirrored, two_passes)
    figures = net.figures["stages"][-1]
    assert figures["mirror_average"] and figures["passes"] == 2 and not single.figures["stages"][-1]["mirror_average"]
    # four forward passes: direct and mirrored, twice; the second direct one sees a better aligned moving image
    assert len(seen) == 4 and torch.equal(seen[0][1], seen[2][1]) and not torch.equal(seen[0][1], seen[1][1])
    ncc = make_similarity("ncc")  # a loss: lower is more similar
    assert float(ncc(seen[2][1], seen[2][0])) < float(ncc(seen[0][1], seen[0][0])) - 0.01
    for result in (net, mirrored):
        _, _, stats = result.jacobian()
        assert stats["folding_percent"] < 0.1


def test_map_contrast_lets_the_t1_network_register_a_pd_like_image(oasis_pair, oasis_seg_pair):
    """The bundled T1 network given a PD-like moving image (a non-monotonic rendering of OASIS 0002): fed the
    PD image as it is, it lowers the overlap of the multimodal affine start; with ``map_contrast`` (the moving
    image mapped into the fixed contrast through the transform so far, before each pass) it raises it."""
    from fresh_data import contrast_from_t1

    fixed, moving = oasis_pair
    fixed_seg, moving_seg = (s.as_label_map() for s in oasis_seg_pair)
    pd = moving.with_data(contrast_from_t1(moving.data, float(torch.quantile(moving.data[moving.data > 0.05], 0.9)),
                                           "pd"))
    affine = load_preset("multimodal-affine")
    stages = [s.to_dict() for s in affine.stages]
    network = {"model": "voxelmorph", "network": "voxelmorph-brain", "mirror_average": True, "passes": 2}
    plain = RegistrationConfig.from_dict({"stages": stages + [network]})
    mapped = RegistrationConfig.from_dict({"stages": stages + [{**network, "map_contrast": True}]})
    before = mean_label_dice(fixed_seg, moving_seg, register(fixed, pd, affine, device="cpu").transform)
    result = register(fixed, pd, mapped, device="cpu")
    with_map = mean_label_dice(fixed_seg, moving_seg, result.transform)
    without = mean_label_dice(fixed_seg, moving_seg, register(fixed, pd, plain, device="cpu").transform)
    assert with_map > before + 0.03 and with_map > without + 0.05, (before, without, with_map)
    assert result.figures["stages"][-1]["map_contrast_s"] > 0
    with pytest.raises(dr.InputError, match="map_contrast must be true or false"):
        RegistrationConfig.from_dict({"stages": stages + [{**network, "map_contrast": "yes"}]})


def test_multimodal_preset_registers_a_pd_like_image_better_than_the_t1_model():
    """voxelmorph-brain-multimodal (the bundled voxelmorph-brain-mapped, fine-tuned for what map_contrast shows it)
    on OASIS 0002 rendered PD-like -> the T1 of 0001 (a subject outside its training): above the multimodal affine
    start and above the same stages with the T1 model, no folding; its card names the held-out subject and the
    recipe. Measured on the benchmark pairs: 0.682 / 0.670 against the T1 model's 0.668 / 0.665 (ANTs SyN-MI 0.700 /
    0.610; before the edge-weighted mapping 0.670 / 0.667 and 0.644 / 0.654)."""
    from fresh_data import contrast_from_t1
    from DeepRegistrationLib.io.models import find_model, load_model

    folder = find_model("voxelmorph-brain-mapped")
    assert folder.parent == bundled_models_dir()
    _, card = load_model(folder)
    training = card["training"]
    assert "--map-moving-contrast" in training["command"] and "--similarity-on-reference" in training["command"]
    assert not any("OAS1_0001" in item["file"] for item in training["images"] + training["labels"])
    assert "train_voxelmorph_brain_mapped.sh" in card["description"]
    fixed = dr.read_image(data_file(OASIS.format("0001", "norm")))
    moving = dr.read_image(data_file(OASIS.format("0002", "norm")))
    fixed_seg = dr.read_image(data_file(OASIS.format("0001", "seg35"))).as_label_map()
    moving_seg = dr.read_image(data_file(OASIS.format("0002", "seg35"))).as_label_map()
    pd = moving.with_data(contrast_from_t1(moving.data, float(torch.quantile(moving.data[moving.data > 0.05], 0.9)),
                                           "pd"))
    preset = load_preset("voxelmorph-brain-multimodal")
    assert preset.stages[-1].map_contrast and preset.stages[-1].network == "voxelmorph-brain-mapped"
    result = register(fixed, pd, preset, device="cpu")
    ours = mean_label_dice(fixed_seg, moving_seg, result.transform)
    t1_model = load_preset("voxelmorph-brain-multimodal", ["voxelmorph.network=voxelmorph-brain"])
    with_t1_model = mean_label_dice(fixed_seg, moving_seg, register(fixed, pd, t1_model, device="cpu").transform)
    preset.stages = preset.stages[:-1]
    before = mean_label_dice(fixed_seg, moving_seg, register(fixed, pd, preset, device="cpu").transform)
    assert ours > before + 0.05, (before, with_t1_model, ours)
    if from_shared(OASIS.format("0001", "seg35")):  # measured: affine 0.46, T1 model 0.668, this model 0.682
        assert ours > with_t1_model + 0.01, (before, with_t1_model, ours)
    # (the wheel-built stand-in pair is one anatomy through a real warp, 0.75 at the affine start: there the mapping
    # is nearly exact and the T1 model does better, 0.847 against 0.827; the fine-tuning is for real subject pairs)
    _, _, stats = result.jacobian()
    assert stats["folding_percent"] < 0.1


def test_multimodal_io_preset_refines_the_network_between_contrasts(oasis_pair, oasis_seg_pair):
    """voxelmorph-brain-multimodal-io (one mirrored pass of the mapped network, then the SVF stage on the moving
    image mapped through the network's transform) on OASIS 0002 rendered T2-like -> the T1 of 0001: above the
    network alone by a clear margin, no folding. Measured on the benchmark pairs: 0.729 / 0.695 against 0.670 /
    0.651 (ANTs SyN-MI 0.695 / 0.595). A negative mapping_homogeneity is refused."""
    from fresh_data import contrast_from_t1

    fixed, moving = oasis_pair
    fixed_seg, moving_seg = (s.as_label_map() for s in oasis_seg_pair)
    t2 = moving.with_data(contrast_from_t1(moving.data, float(torch.quantile(moving.data[moving.data > 0.05], 0.9)),
                                           "t2"))
    preset = load_preset("voxelmorph-brain-multimodal-io")
    network, refine = preset.stages[-2:]
    assert network.map_contrast and network.mapping_homogeneity == 1.0 and refine.similarity == "mapped-lncc"
    result = register(fixed, t2, preset, device="cpu")
    ours = mean_label_dice(fixed_seg, moving_seg, result.transform)
    preset.stages = preset.stages[:-1]  # the network alone, as in the preset
    alone = mean_label_dice(fixed_seg, moving_seg, register(fixed, t2, preset, device="cpu").transform)
    assert ours > alone + 0.03, (alone, ours)
    _, _, stats = result.jacobian()
    assert stats["folding_percent"] < 0.1
    with pytest.raises(dr.InputError, match="mapping_homogeneity"):
        load_preset("voxelmorph-brain-multimodal-io", ["voxelmorph.mapping_homogeneity=-1"])


def test_map_contrast_of_the_fixed_image_registers_a_t1_onto_a_pd_like_scan(oasis_pair, oasis_seg_pair):
    """A T1 moving image (OASIS 0002, or an atlas) onto a PD-like fixed scan (0001 rendered by a non-monotonic
    curve): ``mapped_image: fixed`` maps the *fixed* image into the moving T1 contrast (``E[moving | fixed]``), so
    the T1 network sees two T1 images; mapping the moving T1 into PD instead shows the network a PD pair. Measured
    on the benchmark pairs (``benchmarks/registration.py --contrast pd --contrast-of fixed``): 0.632 / 0.559
    against 0.534 / 0.526."""
    from fresh_data import contrast_from_t1
    from DeepRegistrationLib.methods.pyramid import mapped_image
    from DeepRegistrationLib.metrics.similarity import MappedLNCCLoss

    fixed, moving = oasis_pair
    fixed_seg, moving_seg = (s.as_label_map() for s in oasis_seg_pair)
    pd = fixed.with_data(contrast_from_t1(fixed.data, float(torch.quantile(fixed.data[fixed.data > 0.05], 0.9)),
                                          "pd"))
    # the mapping itself: PD-like 0001 brought back towards its own T1 through the identity
    back = mapped_image(pd, fixed, dr.IdentityTransform(3), MappedLNCCLoss(), "fixed")
    assert back.grid.same_as(pd.grid)
    brain = fixed_seg.data[0] > 0

    def corr(a, b):  # within the brain, where the curve is non-monotonic
        return float(torch.corrcoef(torch.stack([a.data[0][brain].float(), b.data[0][brain].float()]))[0, 1])

    assert corr(back, fixed) > 0.8 and corr(back, fixed) > corr(pd, fixed) + 0.3, (corr(pd, fixed), corr(back, fixed))
    t1_net = ["voxelmorph.network=voxelmorph-brain"]
    side_fixed = load_preset("voxelmorph-brain-multimodal", t1_net + ["voxelmorph.mapped_image=fixed"])
    assert side_fixed.stages[-1].mapped_image == "fixed"
    result = register(pd, moving, side_fixed, device="cpu")
    ours = mean_label_dice(fixed_seg, moving_seg, result.transform)
    side_moving = load_preset("voxelmorph-brain-multimodal", t1_net)
    other = mean_label_dice(fixed_seg, moving_seg, register(pd, moving, side_moving, device="cpu").transform)
    side_moving.stages = side_moving.stages[:-1]
    before = mean_label_dice(fixed_seg, moving_seg, register(pd, moving, side_moving, device="cpu").transform)
    # the wheel-built stand-in pair (one anatomy through a warp, 0.74 after the affine stages) leaves less room:
    # measured there 0.811 -> 0.839
    margin = 0.03 if from_shared(OASIS.format("0001", "seg35")) else 0.02
    assert ours > before + 0.05 and ours > other + margin, (before, other, ours)
    assert result.figures["stages"][-1]["map_contrast_s"] > 0
    _, _, stats = result.jacobian()
    assert stats["folding_percent"] < 0.1
    with pytest.raises(dr.InputError, match="mapped_image must be 'moving' or 'fixed'"):
        load_preset("voxelmorph-brain-multimodal", ["voxelmorph.mapped_image=both"])
    with pytest.raises(dr.InputError, match="mapped_image 'fixed' needs map_contrast: true"):
        load_preset("voxelmorph-brain-multimodal", ["voxelmorph.mapped_image=fixed", "voxelmorph.map_contrast=false"])
