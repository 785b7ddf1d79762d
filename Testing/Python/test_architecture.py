"""The library's shape stays as designed (Docs/ARCHITECTURE.md): layers import strictly downward, no cycle between
packages, no package uses another's private names, method families never import each other, and the registry
parses presets without importing a network or MONAI. Read from the source with ``ast`` (function-level imports
included), so a hidden upward import fails here."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[2] / "DeepRegistrationLib"

#: Layer of each top-level unit of the library (a module or a package); imports must go to the same or a lower one.
LAYERS = {
    "errors": 0, "_lazy": 0, "runtime": 0, "devices": 0, "resources": 0, "__init__": 0, "__main__": 9,
    "geometry": 1,
    "image": 2, "intensity": 2, "sampling": 2,
    "transforms": 3, "warp": 3, "synthetic": 3,
    "io": 4,
    "metrics": 5,
    "methods": 6,
    "registration": 7,
    "cli": 8, "slicer": 8, "cohort": 8,
}
#: The one tolerated upward import: ``Image``'s convenience methods forward lazily to files, warps and intensity.
TOLERATED = {("image", "io"), ("image", "warp"), ("image", "intensity")}
#: Inside ``methods``: the shared core below the families.
METHOD_CORE = {"registry", "stage", "pyramid", "optim", "loop", "data_parallel", "unet", "__init__"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(LIB.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """``(absolute module, imported names, line)`` of every import in ``path`` (any depth in the file)."""
    tree = ast.parse(path.read_text(), str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
    return out


def _unit(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "DeepRegistrationLib":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _edges():
    for path in sorted(LIB.rglob("*.py")):
        source = _module_name(path)
        for module, names, line in _imports(path):
            if _unit(module) is not None:
                yield path, source, module, names, line


def test_layers_import_downward():
    bad = []
    for path, source, module, _names, line in _edges():
        a, b = _unit(source), _unit(module)
        if a not in LAYERS or b not in LAYERS:
            bad.append(f"{path.name}:{line}: unit {a if a not in LAYERS else b} has no layer in this test")
        elif LAYERS[b] > LAYERS[a] and (a, b) not in TOLERATED:
            bad.append(f"{path.relative_to(LIB)}:{line} imports {module} (layer {LAYERS[b]} above {LAYERS[a]})")
    assert not bad, "\n".join(bad)


def test_no_cycle_between_packages():
    graph: dict[str, set[str]] = {}
    for _path, source, module, _names, _line in _edges():
        a, b = _unit(source), _unit(module)
        if a != b and (a, b) not in TOLERATED:
            graph.setdefault(a, set()).add(b)
    seen: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        seen[node] = 1
        for nxt in graph.get(node, ()):
            if seen.get(nxt) == 1:
                pytest.fail("cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in seen:
                visit(nxt, stack + [nxt])
        seen[node] = 2

    for node in list(graph):
        if node not in seen:
            visit(node, [node])


def test_no_private_name_crosses_a_package():
    bad = []
    for path, source, module, names, line in _edges():
        same_package = source.rsplit(".", 1)[0] == module.rsplit(".", 1)[0] or module.startswith(source + ".") \
            or source.startswith(module + ".")
        for name in names:
            if name.startswith("_") and not name.startswith("__") and not same_package:
                bad.append(f"{path.relative_to(LIB)}:{line}: {module}.{name}")
        if any(part.startswith("_") and not part.startswith("__") and part != "_lazy"
               for part in module.split(".")[1:]) and not same_package:
            bad.append(f"{path.relative_to(LIB)}:{line}: private module {module}")
    assert not bad, "\n".join(bad)


def test_method_families_do_not_import_each_other():
    bad = []
    for path, source, module, _names, line in _edges():
        if source.startswith("DeepRegistrationLib.methods.") and module.startswith("DeepRegistrationLib.methods."):
            fa, fb = source.split(".")[2], module.split(".")[2]
            if fa not in METHOD_CORE and fb not in METHOD_CORE and fa != fb:
                bad.append(f"{path.relative_to(LIB)}:{line}: family {fa} imports family {fb}")
            if fa in METHOD_CORE and fb not in METHOD_CORE:
                bad.append(f"{path.relative_to(LIB)}:{line}: the shared core imports family {fb}")
    assert not bad, "\n".join(bad)


def test_private_names_are_not_used_by_tests():
    """Tests use the public API (what a user can rely on), never a module's private names."""
    bad = []
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        for module, names, line in _imports(path):
            if module.startswith("DeepRegistrationLib"):
                bad += [f"{path.name}:{line}: {module}.{n}" for n in names if n.startswith("_") and not n.startswith("__")]
    assert not bad, "\n".join(bad)


def test_parsing_every_preset_imports_no_network_and_no_monai():
    """The registry loads families lazily: parsing presets (the Slicer panel does, and every CLI run) imports no
    network code, no training code and no MONAI."""
    code = ("import sys\n"
            "from DeepRegistrationLib.registration import list_presets, load_preset\n"
            "[load_preset(name) for name in list_presets()]\n"
            "bad = [m for m in sys.modules if m.startswith(('monai', 'DeepRegistrationLib.methods.voxelmorph.network',"
            " 'DeepRegistrationLib.methods.voxelmorph.training', 'DeepRegistrationLib.methods.voxelmorph.inference'))]\n"
            "assert not bad, bad\n")
    _run_fresh(code)


def _run_fresh(code: str) -> None:
    """Run ``code`` in a fresh interpreter (nothing imported yet); it must succeed."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=LIB.parent)
    assert result.returncode == 0, result.stderr[-2000:]


def test_panel_setup_needs_no_torch():
    """What the Slicer panel does before its dependencies are installed (list presets, fill the stage table, check
    the requirements) works in a Python without torch: a fresh Slicer can open the module, and the generic
    widget test can build it."""
    code = ("import sys\n"
            "sys.modules['torch'] = None  # import torch now fails, as in a Slicer without the PyTorch extension\n"
            "from DeepRegistrationLib.registration.presets import list_presets\n"
            "from DeepRegistrationLib.registration.stage_table import overrides_from_rows, stage_rows\n"
            "from DeepRegistrationLib.slicer.dependencies import TORCH_REQUIREMENT, missing_requirements\n"
            "names = list_presets()\n"
            "assert len(names) >= 9, names\n"
            "for name in names:\n"
            "    rows = stage_rows(name)\n"
            "    assert overrides_from_rows(name, rows) == []\n"
            "assert missing_requirements(['nibabel>=5.0']) == []\n")
    _run_fresh(code)
