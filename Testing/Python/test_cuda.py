"""The GPU path: what the engine, the learned metric and the bundled networks give on a CUDA device equals what they give on
the CPU. Skipped without CUDA (CI has none); run on a CUDA machine with
``pytest Testing/Python/test_cuda.py``. Training on CUDA is tested in test_networks.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import DeepRegistrationLib as dr
from conftest import OASIS, data_file, mean_label_dice
from DeepRegistrationLib.registration import RegistrationConfig, load_preset, register

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def oasis_pair_with_labels():
    images = [dr.read_image(data_file(OASIS.format(s, "norm"))) for s in ("0001", "0002")]
    labels = [dr.read_image(data_file(OASIS.format(s, "seg35"))).as_label_map() for s in ("0001", "0002")]
    return images, labels


def test_rigid_2d_on_cuda_gives_the_cpu_answer():
    """BrainWeb PD rotated by 10 deg and shifted (ITK's example): the same angle and translation on both devices,
    and the result is a CPU transform whatever the device it was computed on."""
    png = "multimodal2d/BrainProtonDensitySlice{}.png"
    fixed = dr.read_image(data_file(png.format("Border20")), grayscale=True)
    moving = dr.read_image(data_file(png.format("R10X13Y17")), grayscale=True)
    cfg = RegistrationConfig.from_dict({"stages": [{"model": "rigid", "similarity": "ncc", "levels_mm": [4, 2, 1],
                                                    "iterations": [150, 100, 60], "learning_rate": 0.02}]})
    cpu = register(fixed, moving, cfg, initialise="center", device="cpu").transform.describe()
    gpu_result = register(fixed, moving, cfg, initialise="center", device="cuda")
    gpu = gpu_result.transform.describe()
    assert gpu_result.figures["device"].startswith("cuda")
    assert gpu["angles_deg"][0] == pytest.approx(cpu["angles_deg"][0], abs=0.02)
    np.testing.assert_allclose(gpu["translation_mm"], cpu["translation_mm"], atol=0.05)
    assert gpu_result.transform.offset().device.type == "cpu"


@pytest.mark.parametrize("preset, overrides", [
    (name, []) for name in ("affine", "deformable-fast", "multimodal-deformable", "voxelmorph-brain",
                            "voxelmorph-brain-io", "voxelmorph-brain-multimodal", "voxelmorph-brain-multimodal-io",
                            "supervised-brain")] + [
    ("voxelmorph-brain-multimodal", ["voxelmorph.network=voxelmorph-brain", "voxelmorph.mapped_image=fixed"])])
def test_brain_presets_on_cuda_give_the_cpu_overlap(preset, overrides, oasis_pair_with_labels, tmp_path):
    """OASIS 0002 -> 0001 at full size: mean seg35 Dice on the GPU within 0.01 of the CPU's, no folding, and the
    transform writes to a file (it left the GPU). The last case maps the fixed image (``mapped_image: fixed``)."""
    (fixed, moving), (fixed_seg, moving_seg) = oasis_pair_with_labels
    dice = {}
    for device in ("cpu", "cuda"):
        result = register(fixed, moving, load_preset(preset, overrides), device=device)
        assert result.figures["device"].startswith(device)
        dice[device] = mean_label_dice(fixed_seg, moving_seg, result.transform)
        if result.transform.is_linear:
            continue
        _, _, stats = result.jacobian()
        assert stats["folding_percent"] < 0.1
    dr.write_transform(result.transform, tmp_path / "gpu.h5")
    assert dice["cuda"] == pytest.approx(dice["cpu"], abs=0.01), dice


def test_learned_metric_on_cuda_gives_the_cpu_answer():
    """The multimodal rigid preset with the learned metric (features made and resampled on the GPU): T1 vs PD
    shifted (13, 17) px gives the CPU's transform."""
    t1 = dr.read_image(data_file("multimodal2d/BrainT1SliceBorder20.png"), grayscale=True)
    pd = dr.read_image(data_file("multimodal2d/BrainProtonDensitySliceShifted13x17y.png"), grayscale=True)
    answers = {}
    for device in ("cpu", "cuda"):
        result = register(t1, pd, load_preset("multimodal-rigid-learned"), initialise="center", device=device)
        assert result.figures["device"].startswith(device)
        answers[device] = result.transform.describe()
    np.testing.assert_allclose(answers["cuda"]["translation_mm"], answers["cpu"]["translation_mm"], atol=0.05)
    assert answers["cuda"]["angles_deg"][0] == pytest.approx(answers["cpu"]["angles_deg"][0], abs=0.02)


def test_translation_on_cuda_gives_the_cpu_image_and_answer():
    """The bundled PD -> T1 translator on the GPU: the translated image equals the CPU's (float tolerance), the
    preset that uses it finds the CPU's transform, and NeMAR training runs a few steps on the GPU."""
    from DeepRegistrationLib.intensity import normalise_unit_range
    from DeepRegistrationLib.methods.translation.inference import translate_image
    from DeepRegistrationLib.methods.translation.network import TranslationGenerator
    from DeepRegistrationLib.methods.translation.training import (TranslationPair, TranslationTrainConfig,
                                                                  train_translation)

    png = "multimodal2d/Brain{}.png"
    t1 = dr.read_image(data_file(png.format("T1SliceBorder20")), grayscale=True)
    pd = dr.read_image(data_file(png.format("ProtonDensitySliceShifted13x17y")), grayscale=True)
    cpu_image, _ = translate_image("translation-brainweb-pd-t1", pd, "cpu")
    gpu_image, _ = translate_image("translation-brainweb-pd-t1", pd, "cuda")
    assert float((cpu_image.data - gpu_image.data).abs().max()) < 1e-3
    answers = {device: register(t1, pd, load_preset("multimodal-rigid-translated"), initialise="center",
                                device=device).transform.describe() for device in ("cpu", "cuda")}
    np.testing.assert_allclose(answers["cuda"]["translation_mm"], answers["cpu"]["translation_mm"], atol=0.05)
    pair = TranslationPair(normalise_unit_range(pd).data.float(), normalise_unit_range(t1).data.float(), "brainweb")
    figures = train_translation(TranslationGenerator(2, 8, 2), [pair], [], TranslationTrainConfig(steps=5, crop=64),
                                device="cuda")
    assert figures["steps_done"] == 5
