"""Shared fixtures: real data from ../shared/data (see its MANIFEST.md) and derived test images.

Without ../shared (a fresh clone) every file the tests read is built from pinned PyPI wheels instead
(:mod:`fresh_data`: real images, checksummed and cached); a test that needs a file with no stand-in is
skipped, and the run ends with one line saying how many tests did not run and why.
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


@pytest.fixture(autouse=True)
def _torch_thread_count():
    """Every test starts with the suite's torch thread count: commands run in-process (``deepreg train ...
    --threads 1``, a cohort task) set it for their process, and short trainings depend on it (summation order)."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


#: Where each data file a test used came from ("shared" or "wheels"), for the run's summary.
DATA_SOURCES: dict[str, str] = {}
SHARED_ONLY = "needs ../shared/data"


def data_file(relative: str) -> Path:
    """``../shared/data/<relative>`` when present, else its stand-in built from PyPI wheels (:mod:`fresh_data`),
    else the test is skipped."""
    path = DATA / relative
    if path.exists():
        DATA_SOURCES[relative] = "shared"
        return path
    from fresh_data import substitute

    stand_in = substitute(relative)
    if stand_in is None:
        pytest.skip(f"{SHARED_ONLY}: {relative} has no stand-in from PyPI wheels (see ../shared/data/MANIFEST.md)")
    DATA_SOURCES[relative] = "wheels"
    return stand_in


def from_shared(relative: str) -> bool:
    """Whether the tests read ``relative`` from ../shared/data (not a stand-in): for figures of those files."""
    return (DATA / relative).exists()


def shared_only(what: str) -> None:
    """Skip unless ../shared/data is present: for assertions about figures of the shared files themselves."""
    if not DATA.is_dir():
        pytest.skip(f"{SHARED_ONLY}: {what}")


OASIS = "brain3d/oasis/OAS1_{}_MR1_aligned_{}.nii.gz"
OASIS_SLICE = "brain2d/oasis_neurite_2d/OAS1_{}_MR1_slice_{}.nii.gz"


def write_2d_slices(folder: Path, kinds: tuple[str, ...] = ("norm", "seg4")) -> dict[tuple[str, str], Path]:
    """The OASIS 0001/0002 coronal slices (``kinds``: norm, seg4, seg24...) as 2D NIfTI files in ``folder`` (the
    shared files are single-slice 3D volumes), keyed by ``(subject, kind)``."""
    paths = {}
    for sid in ("0001", "0002"):
        for kind in kinds:
            path = folder / f"{sid}_{kind}.nii.gz"
            dr.read_image(data_file(OASIS_SLICE.format(sid, kind)), dim=2).write(path)
            paths[sid, kind] = path
    return paths


def oasis_slice(subject: str, kind: str) -> dr.Image:
    """An OASIS 2D slice as a 2D image: ``kind`` ``norm`` (intensities scaled to [0, 1]) or a label map
    (``seg4``, ``seg24``...). The shared files are single-slice 3D volumes."""
    image = dr.read_image(data_file(OASIS_SLICE.format(subject, kind)), dim=2)
    return image.minmax() if kind == "norm" else image.as_label_map()


#: Tests in these modules work on 3D volumes, train networks or start processes: ``-m "not slow"`` skips them.
SLOW_MODULES = {"test_networks", "test_voxelmorph_registration", "test_demo", "test_cuda", "test_slicer_logic"}


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """One line: which data the run used, and how many tests did not run for want of ../shared or a GPU."""
    skipped = terminalreporter.stats.get("skipped", [])
    reasons = [str(r.longrepr[2]) if isinstance(r.longrepr, tuple) else str(r.longrepr) for r in skipped]
    no_data = sum(SHARED_ONLY in r for r in reasons)
    no_gpu = sum("CUDA" in r for r in reasons)
    wheels = sorted(k for k, v in DATA_SOURCES.items() if v == "wheels")
    source = f"{DATA} ({len(DATA_SOURCES) - len(wheels)} files)" if not wheels else \
        f"stand-ins built from PyPI wheels for {len(wheels)} files (../shared/data absent)"
    terminalreporter.write_line(f"test data: {source}; not run: {no_data} need ../shared/data, {no_gpu} need CUDA, "
                                f"{len(skipped) - no_data - no_gpu} other")


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
    from DeepRegistrationLib.io.models import save_model
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
