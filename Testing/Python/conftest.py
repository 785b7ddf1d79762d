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
from DeepRegistrationLib.transforms import rotation_matrix  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def data_file(relative: str) -> Path:
    path = DATA / relative
    if not path.exists():
        pytest.skip(f"shared test data missing: {path} (see ../shared/data/MANIFEST.md)")
    return path


OASIS = "brain3d/oasis/OAS1_{}_MR1_aligned_{}.nii.gz"


@pytest.fixture(scope="session")
def oasis_t1() -> dr.Image:
    return dr.read_image(data_file(OASIS.format("0001", "norm")))


@pytest.fixture(scope="session")
def oasis_seg_pair() -> tuple[dr.Image, dr.Image]:
    return (dr.read_image(data_file(OASIS.format("0001", "seg35"))),
            dr.read_image(data_file(OASIS.format("0002", "seg35"))))


def oblique_grid(reference: dr.Grid, spacing=(0.9, 1.2, 2.5), angles=(0.2, -0.1, 0.15), extent=None) -> dr.Grid:
    """An anisotropic grid with an oblique direction, centred on ``reference``'s centre."""
    rot = rotation_matrix(torch.tensor(angles, dtype=torch.float64), 3).numpy() @ reference.direction_matrix()
    extent = np.asarray(extent if extent is not None else reference.extent_mm(), dtype=np.float64)
    size = [max(2, int(e / s)) for e, s in zip(extent, spacing)]
    origin = reference.center() - rot @ (np.asarray(spacing) * (np.asarray(size) - 1) / 2)
    return dr.Grid(size, origin, spacing, rot)


@pytest.fixture(scope="session")
def oasis_oblique(oasis_t1) -> dr.Image:
    """OASIS T1 resampled to 0.9 x 1.2 x 2.5 mm with an oblique direction matrix."""
    return oasis_t1.resample_to(oblique_grid(oasis_t1.grid))


def smooth_field(center: np.ndarray, amplitude: float = 4.0, spacing: float = 12.0,
                 size=(16, 18, 20)) -> dr.DisplacementField:
    """A smooth displacement field (LPS mm) on its own oblique grid around ``center``."""
    rot = rotation_matrix(torch.tensor([0.1, 0.2, -0.3], dtype=torch.float64), 3).numpy()
    size = np.asarray(size)
    grid = dr.Grid(size, center - rot @ ((size - 1) / 2 * spacing), [spacing] * 3, rot)
    p = grid.physical_points().reshape(-1, 3)
    u = torch.stack([amplitude * torch.sin(p[:, 1] / 25), 0.75 * amplitude * torch.cos(p[:, 2] / 30),
                     amplitude * torch.sin(p[:, 0] / 20 + p[:, 1] / 40)], -1)
    # taper to zero at the grid border, as a real deformation of a bounded region does
    idx = torch.as_tensor(grid.physical_to_index(p.numpy()))
    u = u * torch.sin(torch.pi * idx / torch.as_tensor(size - 1)).prod(-1, keepdim=True).clamp(min=0)
    return dr.DisplacementField(u.T.reshape(3, *grid.shape).float().contiguous(), grid)


def known_transform(center: np.ndarray) -> dr.Transform:
    """Rigid (6, -4, 8 deg; 5, -3, 7 mm) then affine then a smooth field: fixed -> moving."""
    rigid = dr.RigidTransform(np.radians([6.0, -4.0, 8.0]), [5.0, -3.0, 7.0], center=center)
    affine = dr.AffineTransform(np.array([[1.05, 0.03, -0.02], [0.01, 0.97, 0.04], [-0.03, 0.02, 1.02]]),
                                [1.0, 2.0, -1.0], center=center)
    return dr.compose(rigid, affine, smooth_field(center))
