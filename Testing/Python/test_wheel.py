"""The package as a user installs it: build the wheel and sdist, install the wheel (not editable) into a fresh
virtual environment outside the source tree, and run ``deepreg`` from there with a classical and a network
preset. Catches package data left out of the wheel (presets, the bundled model), a dependency missing from
the metadata, and code that only works from the source tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import DeepRegistrationLib as dr
from conftest import OASIS, ROOT, data_file

pytestmark = pytest.mark.slow

_IGNORE = shutil.ignore_patterns(".git", ".venv", "__pycache__", "build", "dist", "*.egg-info", ".pytest_cache",
                                 "demo_output", "*.checkpoints")


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{cmd}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The ``bin`` folder of a fresh virtual environment with the built wheel installed (torch from the local
    wheel, as scripts/setup_env.sh installs it)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=_IGNORE)
    dist = work / "dist"
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, source])  # sdist, then wheel from it
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    _run([sys.executable, "-m", "twine", "check", "--strict", *wheels, *sdists])
    env_dir = work / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    bin_dir = env_dir / "bin"
    torch_version = __import__("torch").__version__.split("+")[0]
    _run([bin_dir / "python", "-m", "pip", "install", "--quiet", f"torch=={torch_version}"], cwd=work)
    _run([bin_dir / "python", "-m", "pip", "install", "--quiet", wheels[0]], cwd=work)
    return bin_dir


def _deepreg(bin_dir: Path, *args, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DEEPREG_PRESETS", "DEEPREG_MODELS")}
    return subprocess.run([str(bin_dir / "deepreg"), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=env)


def test_installed_package_is_not_the_source_tree(installed, tmp_path):
    where = _run([installed / "python", "-c", "import DeepRegistrationLib as d; print(d.__file__)"], cwd=tmp_path)
    assert str(installed.parent) in where.stdout and str(ROOT) not in where.stdout
    version = _deepreg(installed, "--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == f"deepreg {dr.__version__}"


def test_wheel_lists_presets_and_registers(installed, tmp_path, oasis_t1):
    presets = _deepreg(installed, "presets", "--json", cwd=tmp_path)
    assert presets.returncode == 0, presets.stderr
    assert {"rigid", "deformable-fast", "voxelmorph-brain"} <= set(__import__("json").loads(presets.stdout))

    # classical: a real 2D pair with a known shift
    fixed2d = dr.read_image(data_file("multimodal2d/BrainProtonDensitySliceBorder20.png"), grayscale=True)
    moving2d = dr.read_image(data_file("multimodal2d/BrainProtonDensitySliceShifted13x17y.png"), grayscale=True)
    fixed2d.write(tmp_path / "f2.nii.gz")
    moving2d.write(tmp_path / "m2.nii.gz")
    r = _deepreg(installed, "register", "--fixed", "f2.nii.gz", "--moving", "m2.nii.gz", "--preset", "rigid",
                 "--set", "initialise=center", "--out-transform", "T.tfm", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(sitk.ReadTransform(str(tmp_path / "T.tfm")).Downcast().GetTranslation(),
                               [13.0, 17.0], atol=0.2)

    # network: the bundled model, read from the installed package data
    grid = oasis_t1.grid.with_spacing([2.0, 2.0, 2.0])
    oasis_t1.resample_to(grid).write(tmp_path / "f3.nii.gz")
    dr.read_image(data_file(OASIS.format("0002", "norm"))).resample_to(grid).write(tmp_path / "m3.nii.gz")
    r = _deepreg(installed, "register", "--fixed", "f3.nii.gz", "--moving", "m3.nii.gz", "--preset",
                 "voxelmorph-brain", "--out-transform", "T.h5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sitk.ReadTransform(str(tmp_path / "T.h5")).GetNumberOfTransforms() >= 2  # linear + the network's field


def test_missing_presets_fail_loudly(installed, tmp_path):
    """An installation without its presets says so (exit 2, where it looked) instead of listing nothing."""
    presets_dir = _run([installed / "python", "-c", "from DeepRegistrationLib.resources import bundled_presets_dir as b;"
                        " print(b())"], cwd=tmp_path).stdout.strip()
    hidden = Path(presets_dir).with_name("presets-hidden")
    Path(presets_dir).rename(hidden)
    try:
        r = _deepreg(installed, "presets", cwd=tmp_path)
    finally:
        hidden.rename(presets_dir)
    assert r.returncode == 2 and "no preset found (looked in:" in r.stderr and presets_dir in r.stderr
