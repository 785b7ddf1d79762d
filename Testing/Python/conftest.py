"""Shared fixtures: real data from ../shared/data (see its MANIFEST.md) and derived test images.

Tests that need the shared data are skipped with a message naming the missing file; CI has the data.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("DEEPREG_SHARED_DATA", ROOT.parent / "shared" / "data"))

import DeepRegistrationLib as dr  # noqa: E402
from DeepRegistrationLib.synthetic import known_transform, oblique_grid, smooth_field  # noqa: E402,F401

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def data_file(relative: str) -> Path:
    path = DATA / relative
    if not path.exists():
        pytest.skip(f"shared test data missing: {path} (see ../shared/data/MANIFEST.md)")
    return path


OASIS = "brain3d/oasis/OAS1_{}_MR1_aligned_{}.nii.gz"
OASIS_SLICE = "brain2d/oasis_neurite_2d/OAS1_{}_MR1_slice_{}.nii.gz"


def oasis_slice(subject: str, kind: str) -> dr.Image:
    """An OASIS 2D slice as a 2D image: ``kind`` ``norm`` (intensities scaled to [0, 1]) or a label map
    (``seg4``, ``seg24``...). The shared files are single-slice 3D volumes."""
    image = dr.read_image(data_file(OASIS_SLICE.format(subject, kind)), dim=2)
    return image.minmax() if kind == "norm" else image.as_label_map()


#: Tests in these modules work on 3D volumes, train networks or start processes: ``-m "not slow"`` skips them.
SLOW_MODULES = {"test_networks", "test_voxelmorph_registration", "test_demo", "test_cuda", "test_slicer_logic"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


def mean_label_dice(fixed_seg: dr.Image, moving_seg: dr.Image, transform) -> float:
    """Mean Dice over the labels of ``fixed_seg`` and ``moving_seg`` warped (nearest neighbour) by the fixed ->
    moving ``transform`` onto the fixed grid."""
    from DeepRegistrationLib.metrics import overlap

    warped = dr.warp_image(moving_seg, transform, fixed_seg.grid, "nearest")
    return float(np.mean([v["dice"] for v in overlap(fixed_seg, warped).values()]))


@pytest.fixture(scope="session")
def oasis_t1() -> dr.Image:
    return dr.read_image(data_file(OASIS.format("0001", "norm")))


@pytest.fixture(scope="session")
def oasis_seg_pair() -> tuple[dr.Image, dr.Image]:
    return (dr.read_image(data_file(OASIS.format("0001", "seg35"))),
            dr.read_image(data_file(OASIS.format("0002", "seg35"))))


@pytest.fixture(scope="session")
def oasis_oblique(oasis_t1) -> dr.Image:
    """OASIS T1 resampled to 0.9 x 1.2 x 2.5 mm with an oblique direction matrix."""
    return oasis_t1.resample_to(oblique_grid(oasis_t1.grid))


@pytest.fixture(scope="session")
def voxelmorph_model(tmp_path_factory) -> Path:
    """A 3D brain model folder (vm1-lite, 56 x 64 x 72 at 3 mm, LIA) with *untrained* weights whose flow head
    is scaled up so that it deforms visibly: for the plumbing (grid, field conversion, checks, Slicer nodes),
    never for accuracy."""
    from DeepRegistrationLib.methods.voxelmorph.model_io import save_model
    from DeepRegistrationLib.methods.voxelmorph.network import VoxelMorphNet
    from DeepRegistrationLib.methods.voxelmorph.model_grid import ModelInput

    torch.manual_seed(0)
    net = VoxelMorphNet(3, "vm1-lite", diffeomorphic=True, integration_steps=7)
    head = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d) and m.out_channels == 3][-1]
    torch.nn.init.normal_(head.weight, 0.0, 0.5)
    card = {"name": "test-brain", "description": "untrained weights for plumbing tests",
            "input": ModelInput((56, 64, 72), (3.0, 3.0, 3.0), "LIA").to_dict(),
            "training": {"command": "none", "steps": 0}, "licence": "Apache-2.0"}
    return save_model(net, tmp_path_factory.mktemp("models") / "test-brain", card)
