"""The extension as Slicer builds it: a CMake configure, build and install of this repository against a stand-in
for Slicer's CMake macros (Testing/CMake/SlicerStub: they copy a scripted module's files into the build tree as
Slicer's and CTK's do), then the build tree checked as Slicer's CTest would use it: every file the module needs at
runtime is there, and the library, its presets and its model import and load from there, not from the sources."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STUB = ROOT / "Testing" / "CMake" / "SlicerStub"
MODULES_DIR = "lib/Slicer-5.8/qt-scripted-modules"  # the stub's Slicer_QTSCRIPTEDMODULES_LIB_DIR

#: cmake from the test extra (the ``cmake`` wheel, beside this interpreter), else the system's
CMAKE = shutil.which("cmake", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
pytestmark = pytest.mark.skipif(CMAKE is None or shutil.which("c++") is None,
                                reason="cmake and a C++ compiler are needed to configure a Slicer extension")


def _run(*args, cwd=None) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("extension")
    build_dir, install_dir = base / "build", base / "install"
    _run(CMAKE, "-S", ROOT, "-B", build_dir, f"-DSlicer_DIR={STUB}", "-DCMAKE_BUILD_TYPE=Release")
    _run(CMAKE, "--build", build_dir, "-j2")
    _run(CMAKE, "--install", build_dir, "--prefix", install_dir)
    return {"build": build_dir / MODULES_DIR, "install": install_dir / MODULES_DIR, "root": build_dir}


def _library_sources() -> set[str]:
    """Every file of the package in the source tree (what a wheel carries): modules, presets, model files."""
    out = set()
    for path in (ROOT / "DeepRegistrationLib").rglob("*"):
        rel = path.relative_to(ROOT)
        if path.is_file() and "__pycache__" not in rel.parts and not any(p.startswith(".") for p in rel.parts):
            out.add(rel.as_posix())
    return out


def _tree(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def test_build_tree_holds_the_module_and_the_whole_library(build):
    for tree in (build["build"], build["install"]):
        files = _tree(tree)
        module_files = {"DeepRegistration.py", "Resources/UI/DeepRegistration.ui", "Resources/Icons/DeepRegistration.png",
                        "Resources/requirements.txt"}
        assert module_files <= files, module_files - files
        library = {f for f in files if f.startswith("DeepRegistrationLib/")}
        assert library == _library_sources(), (library ^ _library_sources())
        assert "DeepRegistrationLib/resources/models/voxelmorph-brain/weights.pt" in library
    tests = (build["root"] / "python-unittests.txt").read_text()
    assert f"generic DeepRegistration --additional-module-path {build['build']}" in tests  # where CTest looks
    assert "unittest DeepRegistration.py" in tests


def _module_imports() -> set[str]:
    """``DeepRegistrationLib`` modules that DeepRegistration.py imports anywhere (function-level included)."""
    tree = ast.parse((ROOT / "DeepRegistration" / "DeepRegistration.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("DeepRegistrationLib"):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("DeepRegistrationLib"))
    return names


CHECK = r"""
import importlib, json, pkgutil, sys
tree = sys.argv[1]
sys.path.insert(0, tree)
import DeepRegistrationLib
assert DeepRegistrationLib.__file__.startswith(tree), DeepRegistrationLib.__file__
wanted = json.loads(sys.argv[2])
loaded = {}
for info in pkgutil.walk_packages(DeepRegistrationLib.__path__, "DeepRegistrationLib."):
    if info.name.startswith("DeepRegistrationLib.slicer") or info.name.endswith("__main__"):
        continue  # slicer: imported below through the module's own imports (slicer-core); __main__ runs the CLI
    loaded[info.name] = importlib.import_module(info.name).__file__
for name in wanted:
    loaded[name] = importlib.import_module(name).__file__
outside = [f for f in loaded.values() if f and not f.startswith(tree)]
assert not outside, outside
from DeepRegistrationLib.registration import list_presets, load_preset
from DeepRegistrationLib.io.models import load_model
from DeepRegistrationLib.resources import bundled_models_dir
presets = list_presets()
for name in presets:
    load_preset(name)
model, card = load_model(bundled_models_dir() / "voxelmorph-brain")  # verified against its checksum
print(json.dumps({"presets": sorted(presets), "modules": len(loaded), "models_dir": str(bundled_models_dir())}))
"""


def test_every_runtime_import_resolves_in_the_build_tree(build, tmp_path):
    """Run from an empty folder with the build tree first on ``sys.path`` (as Slicer's module path puts it): every
    library module, the module's own imports, every preset and the bundled model load from the build tree."""
    pytest.importorskip("slicer", reason="slicer-core is needed for the MRML bridge modules")
    tree = str(build["build"])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DEEPREG_PRESETS", "DEEPREG_MODELS")}
    result = subprocess.run([sys.executable, "-c", CHECK, tree, json.dumps(sorted(_module_imports()))],
                            capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    from DeepRegistrationLib.registration import list_presets

    assert report["presets"] == sorted(list_presets()) and len(report["presets"]) >= 9
    assert report["models_dir"].startswith(tree) and report["modules"] > 50
    assert _module_imports() >= {"DeepRegistrationLib.slicer.dependencies", "DeepRegistrationLib.slicer.logic",
                                 "DeepRegistrationLib.registration.stage_table"}


def test_extension_metadata_is_consistent(build):
    """What the extension's CMakeLists declares is what the ExtensionsIndex entry and the module say."""
    meta = dict(line.split(" ", 1) for line in (build["root"] / "extension-metadata.txt").read_text().splitlines())
    entry = json.loads((ROOT / "Resources" / "ExtensionsIndex" / "DeepRegistration.json").read_text())
    assert meta["category"] == entry["category"] == "Registration"
    assert meta["depends"] == "PyTorch" and entry["build_dependencies"] == ["PyTorch"]
    assert entry["scm_url"].rstrip("/").removesuffix(".git") == meta["homepage"]
    assert "DeepRegistration developers" not in meta["contributors"]
    source = (ROOT / "DeepRegistration" / "DeepRegistration.py").read_text()
    assert meta["contributors"] in source
    for url in (meta["iconurl"], meta["screenshoturls"]):  # raw URLs of files that exist in the repository
        path = url.split("/main/", 1)[1]
        assert (ROOT / path).is_file(), url


# ---------------------------------------------------------------------- the Extensions Index entry
def _check(entry: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "check_extension_entry.py"), str(entry)],
                          capture_output=True, text=True)


def test_extensions_index_entry_validates():
    """The entry to submit passes the catalog schema v1.0.1 and agrees with CMakeLists.txt."""
    pytest.importorskip("jsonschema", reason="jsonschema (test extra) validates the entry")
    result = _check(ROOT / "Resources" / "ExtensionsIndex" / "DeepRegistration.json")
    assert result.returncode == 0 and "ok" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("change, message", [
    ({"description": "metadata belongs in CMakeLists.txt"}, "Additional properties are not allowed ('description'"),
    ({"scm_url": None}, "'scm_url' is a required property"),
    ({"tier": 2}, "2 is not one of [1, 3, 5]"),
    ({"scm_type": "svn"}, "'svn' is not one of ['git', 'local']"),
    ({"build_dependencies": []}, "differ from EXTENSION_DEPENDS ['PyTorch']"),
    ({"category": "Segmentation"}, "differs from EXTENSION_CATEGORY 'Registration'"),
])
def test_extensions_index_entry_refusals(tmp_path, change, message):
    """The checker can fail: each rule of the schema and each consistency check, on a damaged copy."""
    pytest.importorskip("jsonschema", reason="jsonschema (test extra) validates the entry")
    entry = json.loads((ROOT / "Resources" / "ExtensionsIndex" / "DeepRegistration.json").read_text())
    for key, value in change.items():
        if value is None:
            entry.pop(key)
        else:
            entry[key] = value
    path = tmp_path / "DeepRegistration.json"
    path.write_text(json.dumps(entry))
    result = _check(path)
    assert result.returncode == 1 and message in result.stdout, result.stdout + result.stderr
