"""The Slicer module without the Slicer application: the .ui against the code, and the module's own logic.

``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper`` and ``slicer.i18n`` exist only in the
application, so minimal stand-ins are installed for the import; the MRML classes are slicer-core's.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "DeepRegistration"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "DeepRegistration.ui"
SOURCE = (MODULE_DIR / "DeepRegistration.py").read_text()

# which parameter types each bound widget class can hold (the parameterNodeWrapper's connectors)
WIDGET_TYPES = {"qMRMLNodeComboBox": "node", "QComboBox": "choice", "QSpinBox": "int", "QDoubleSpinBox": "float",
                "QCheckBox": "bool", "QLineEdit": "str"}


def ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI_FILE).getroot().iter("widget")}


def parameter_fields() -> dict[str, str]:
    """``{field: annotation source}`` of the ``@parameterNodeWrapper`` class."""
    tree = ast.parse(SOURCE)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list):
            return {s.target.id: ast.unparse(s.annotation) for s in node.body if isinstance(s, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class in DeepRegistration.py")


def kind_of(annotation: str) -> str:
    if "vtkMRML" in annotation:
        return "node"
    if "Choice" in annotation:
        return "choice"
    return re.sub(r"Annotated\[(\w+),.*", r"\1", annotation)


def test_ui_parses_and_every_widget_the_code_uses_exists():
    widgets = ui_widgets()
    used = set(re.findall(r"self\.ui\.(\w+)", SOURCE))
    assert used, "the widget uses no ui names?"
    missing = sorted(used - set(widgets))
    assert not missing, f"names used in DeepRegistration.py but absent from the .ui: {missing}"
    assert len(widgets) == len(list(ET.parse(UI_FILE).getroot().iter("widget"))), "duplicate widget names in the .ui"


def test_every_slicer_parameter_name_maps_to_a_field_of_the_right_type():
    fields = parameter_fields()
    bound = {}
    for name, widget in ui_widgets().items():
        for p in widget.findall("property"):
            if p.get("name") == "SlicerParameterName":
                param = p.find("string").text
                assert param in fields, f"{name}: SlicerParameterName {param!r} is not a parameter node field"
                assert WIDGET_TYPES[widget.get("class")] == kind_of(fields[param]), (name, fields[param])
                bound[param] = widget
    # every field is bound to a widget, except the preset (its list is dynamic: synchronised in code)
    assert set(fields) - set(bound) == {"preset"}
    assert "_parameterNode.preset" in SOURCE
    # node selectors offer exactly the node classes the field accepts
    for param, widget in bound.items():
        if widget.get("class") == "qMRMLNodeComboBox":
            types_ = [s.text for p in widget.findall("property") if p.get("name") == "nodeTypes" for s in p.iter("string")]
            assert sorted(types_) == sorted(re.findall(r"vtkMRML\w+", fields[param])), param


def test_mrml_combo_boxes_receive_the_scene():
    root = ET.parse(UI_FILE).getroot()
    receivers = {c.find("receiver").text for c in root.iter("connection")
                 if c.find("signal").text == "mrmlSceneChanged(vtkMRMLScene*)"}
    combos = {n for n, w in ui_widgets().items() if w.get("class") == "qMRMLNodeComboBox"}
    assert combos == receivers


def test_cmake_lists_the_module_files():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text()
    assert "WITH_GENERIC_TESTS" in cmake and "slicer_add_python_unittest" in cmake
    for resource in ("Resources/Icons/${MODULE_NAME}.png", "Resources/UI/${MODULE_NAME}.ui"):
        assert resource in cmake
        assert (MODULE_DIR / resource.replace("${MODULE_NAME}", "DeepRegistration")).is_file()
    top = (ROOT / "CMakeLists.txt").read_text()
    assert "add_subdirectory(DeepRegistration)" in top and 'EXTENSION_DEPENDS "PyTorch"' in top


# ---------------------------------------------------------------------- the module's code, imported
@pytest.fixture(scope="module")
def module():
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")
    saved = {k: sys.modules.get(k) for k in ("slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper", "slicer.i18n")}
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
                 "ScriptedLoadableModuleTest"):
        setattr(slm, name, type(name, (), {"__init__": lambda self, parent=None, *a, **k: setattr(self, "parent", parent)}))
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper = lambda cls: cls
    pnw.Choice = lambda choices: SimpleNamespace(choices=choices)
    pnw.WithinRange = lambda lo, hi: SimpleNamespace(minimum=lo, maximum=hi)
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    sys.modules.update({"slicer.ScriptedLoadableModule": slm, "slicer.parameterNodeWrapper": pnw, "slicer.i18n": i18n})
    try:
        spec = importlib.util.spec_from_file_location("DeepRegistration", MODULE_DIR / "DeepRegistration.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
        del slicer


def test_module_metadata(module):
    parent = SimpleNamespace()
    module.DeepRegistration(parent)
    assert parent.title == "DeepRegistration" and parent.categories == ["Registration"]
    assert "from parent" in parent.helpText and "VoxelMorph" in parent.acknowledgementText


def test_similarity_choices_are_the_library_metrics(module):
    from DeepRegistrationLib.metrics.similarity import SIMILARITIES

    assert set(module.SIMILARITY_CHOICES) - {"(preset)"} <= set(SIMILARITIES)


def test_advanced_settings_become_valid_preset_overrides(module):
    from DeepRegistrationLib.registration import load_preset
    from DeepRegistrationLib.slicer.logic import overrides_from_parameters

    defaults = SimpleNamespace(similarity="(preset)", levels="", iterations=0, regularisationWeight=-1.0)
    assert module.DeepRegistrationLogic.advancedParameters(defaults) == {}
    p = SimpleNamespace(similarity="mi", levels="6, 3", iterations=12, regularisationWeight=0.3)
    params = module.DeepRegistrationLogic.advancedParameters(p)
    assert params == {"similarity": "mi", "levels_mm": [6.0, 3.0], "iterations": 12, "regularisation_weight": 0.3}
    config = load_preset("deformable-fast", overrides_from_parameters(params))
    assert all(s.similarity == "mi" and s.levels_mm == [6.0, 3.0] and s.iterations == 12 for s in config.stages)
    assert config.stages[-1].regularisation_weight == 0.3
    with pytest.raises(ValueError, match="Levels must be spacings"):
        module.DeepRegistrationLogic.advancedParameters(SimpleNamespace(**{**vars(defaults), "levels": "4,x"}))


def test_user_presets_folder_is_searched_first(module, monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPREG_PRESETS", "")
    module.DeepRegistrationLogic.usePresetsFolder(str(tmp_path))
    module.DeepRegistrationLogic.usePresetsFolder(str(tmp_path))
    from DeepRegistrationLib.registration import presets_dir

    assert presets_dir()[0] == tmp_path and len(presets_dir()) == 2
