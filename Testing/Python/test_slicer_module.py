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
import unittest
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
    # every field is bound to a widget, except the preset (its list is dynamic) and the stage table's edits
    # (a table of the preset's stages): both synchronised in code
    assert set(fields) - set(bound) == {"preset", "stageOverrides"}
    assert "_parameterNode.preset" in SOURCE and "_parameterNode.stageOverrides" in SOURCE
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
    for resource in ("Resources/Icons/${MODULE_NAME}.png", "Resources/UI/${MODULE_NAME}.ui",
                     "Resources/requirements.txt"):
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
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic"):
        setattr(slm, name, type(name, (), {"__init__": lambda self, parent=None, *a, **k: setattr(self, "parent", parent)}))
    slm.ScriptedLoadableModuleTest = type("ScriptedLoadableModuleTest", (unittest.TestCase,),
                                          {"delayDisplay": lambda self, message, msec=0: print(message)})
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


def test_user_presets_folder_is_searched_first(module, monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPREG_PRESETS", "")
    module.DeepRegistrationLogic.usePresetsFolder(str(tmp_path))
    module.DeepRegistrationLogic.usePresetsFolder(str(tmp_path))
    from DeepRegistrationLib.registration import presets_dir

    assert presets_dir()[0] == tmp_path and len(presets_dir()) == 2


def test_stage_table_edits_become_checked_overrides(module):
    """The Advanced stage table: the preset's stages as text, edits back as ``stages.N.FIELD`` overrides that the
    engine accepts; a bad value is refused naming the stage and the column."""
    from DeepRegistrationLib.registration import load_preset
    from DeepRegistrationLib.registration.stage_table import stage_rows

    logic = module.DeepRegistrationLogic
    rows = stage_rows("deformable-fast")
    assert [r["model"] for r in rows] == ["rigid", "affine", "svf"]
    assert rows[0]["regularisation_weight"] is None and rows[2]["regularisation_weight"] == "0.05"
    assert logic.stageOverridesFromRows("deformable-fast", rows) == []
    rows[2].update(similarity="mi", levels_mm="6, 3", iterations="12, 4", regularisation_weight="0.3")
    overrides = logic.stageOverridesFromRows("deformable-fast", rows)
    config = load_preset("deformable-fast", overrides)
    svf = config.stages[2]
    assert (svf.similarity, svf.levels_mm, svf.iterations, svf.regularisation_weight) == ("mi", [6.0, 3.0], [12, 4], 0.3)
    assert config.stages[0].similarity == "ncc"  # the other stages as in the preset
    assert stage_rows("deformable-fast", overrides)[2]["levels_mm"] == "6, 3"  # a saved scene shows its edits
    rows[2]["iterations"] = "12, x"
    with pytest.raises(Exception, match=r"stage 3 \(svf\), Iterations: '12, x' is not whole numbers"):
        logic.stageOverridesFromRows("deformable-fast", rows)
    rows[2].update(iterations="12, 4", similarity="nonsense")
    with pytest.raises(Exception, match="unknown similarity 'nonsense'"):
        logic.stageOverridesFromRows("deformable-fast", rows)
    vm = stage_rows("voxelmorph-brain-io")
    assert vm[2]["model"] == "voxelmorph (voxelmorph-brain)" and vm[2]["levels_mm"] is None  # the network: read-only


def test_stage_edits_are_saved_as_a_user_preset(module, monkeypatch, tmp_path):
    import slicer

    monkeypatch.setattr(slicer, "app", SimpleNamespace(slicerUserSettingsFilePath=str(tmp_path / "Slicer.ini"),
                                                       testingEnabled=lambda: True), raising=False)
    p = SimpleNamespace(preset="rigid", stageOverrides='["stages.0.iterations=[5, 3]"]')
    path = module.DeepRegistrationLogic().savePreset("my-rigid", p)
    assert path == str(tmp_path / "DeepRegistration" / "Presets" / "my-rigid.json")
    from DeepRegistrationLib.registration import load_preset

    assert load_preset(path).stages[0].iterations == [5, 3]


def test_apply_tooltip_names_what_is_missing(module):
    fixed, moving, t = object(), object(), object()
    p = SimpleNamespace(fixedVolume=fixed, movingVolume=fixed, fixedLandmarks=None, movingLandmarks=object(),
                        outputVolume=moving, inverseTransform=t, outputTransform=t, initialTransform=None)
    missing = module.DeepRegistrationLogic.whatIsMissing(p)
    assert missing == ["choose different fixed and moving volumes", "select both fixed and moving landmarks, or neither",
                       "the inverse transform must be a node of its own"]
    assert module.DeepRegistrationLogic.whatIsMissing(None)[:2] == ["select a fixed volume", "select a moving volume"]


def test_requirements_match_the_package():
    """What the module pip-installs is what the library declares (torch aside: the PyTorch extension's job)."""
    import tomllib

    from DeepRegistrationLib.slicer.dependencies import TORCH_REQUIREMENT, missing_requirements, read_requirements

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    module_requirements = read_requirements(MODULE_DIR / "Resources" / "requirements.txt")
    assert module_requirements and set(module_requirements) <= set(declared)
    assert TORCH_REQUIREMENT in declared
    assert missing_requirements(module_requirements + [TORCH_REQUIREMENT]) == []  # this environment has them
    assert missing_requirements(["no-such-package-xyz>=1", "numpy>=999"]) == ["no-such-package-xyz>=1", "numpy>=999"]


def test_testing_mode_never_installs(module, monkeypatch, tmp_path):
    """Under --testing a missing package fails the self-test at once, named; nothing is installed."""
    import slicer
    import slicer.util

    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# test\nno-such-package-xyz>=1\n")
    monkeypatch.setattr(module, "requirementsFile", lambda: str(requirements))
    monkeypatch.setattr(slicer, "app", SimpleNamespace(testingEnabled=lambda: True), raising=False)
    monkeypatch.setattr(slicer.util, "pip_install", lambda *a, **k: pytest.fail("pip_install called"), raising=False)
    with pytest.raises(RuntimeError, match=r"missing Python packages \(no-such-package-xyz>=1\).*does not install"):
        module.ensureDependencies()


@pytest.mark.slow
def test_self_test_runs_offline_without_installing(module, monkeypatch, tmp_path):
    """The module's own self-test (what Slicer's CTest runs) on real MRML scenes, with the network cut and pip
    forbidden: its data is made locally and its dependencies are only checked."""
    import socket

    import slicer
    import slicer.util

    def no_network(*args, **kwargs):
        raise AssertionError("the self-test tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(slicer.util, "pip_install", lambda *a, **k: pytest.fail("pip_install called"), raising=False)
    scene = slicer.vtkMRMLScene()
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.setattr(slicer, "app", SimpleNamespace(
        testingEnabled=lambda: True, temporaryPath=str(tmp_path), processEvents=lambda: None,
        slicerUserSettingsFilePath=str(tmp_path / "Slicer.ini")), raising=False)
    result = unittest.TestResult()
    module.DeepRegistrationTest("runTest").run(result)
    assert result.testsRun == 1 and not result.errors and not result.failures, result.errors + result.failures
    assert list(tmp_path.iterdir()) == []  # the worker's temporary folder is gone


def test_results_are_shown_in_the_slice_views(module, monkeypatch):
    """After a run the panel shows the registered volume over the fixed one, or the Jacobian (window 0..2, so that
    folding sits at the bottom of the colour scale) when one was asked for: set on real slice composite nodes."""
    import numpy as np
    import slicer
    import torch

    from DeepRegistrationLib.geometry import Grid
    from DeepRegistrationLib.image import Image
    from DeepRegistrationLib.slicer.logic import RegistrationOutputs, show_as_jacobian
    from DeepRegistrationLib.slicer.nodes import update_volume_node_from_image
    from DeepRegistrationLib.synthetic import head_phantom

    scene = slicer.vtkMRMLScene()
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    views = [scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(3)]
    grid = Grid.centred([0.0, 0.0, 0.0], [24, 28, 20], [8.0, 8.0, 9.0], np.eye(3))
    image = Image(torch.from_numpy(head_phantom(grid))[None], grid)
    nodes = {}
    for name in ("fixed", "moving", "warped", "jacobian"):
        nodes[name] = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        update_volume_node_from_image(nodes[name], image)
    show_as_jacobian(nodes["jacobian"])
    display = nodes["jacobian"].GetDisplayNode()
    assert not display.GetAutoWindowLevel() and (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == (0.0, 2.0)
    transform = scene.AddNewNodeByClass("vtkMRMLTransformNode", "T")
    logic = module.DeepRegistrationLogic
    shown = logic.showResults(nodes["fixed"], nodes["moving"], RegistrationOutputs(transform_node=transform))
    assert shown == "moving over fixed"
    assert all((v.GetBackgroundVolumeID(), v.GetForegroundVolumeID(), v.GetForegroundOpacity())
               == (nodes["fixed"].GetID(), nodes["moving"].GetID(), 0.5) for v in views)
    outputs = RegistrationOutputs(transform_node=transform, volume_node=nodes["warped"])
    assert logic.showResults(nodes["fixed"], nodes["moving"], outputs) == "warped over fixed"
    outputs.jacobian_node = nodes["jacobian"]
    assert logic.showResults(nodes["fixed"], nodes["moving"], outputs) == "jacobian over warped"
    assert all((v.GetBackgroundVolumeID(), v.GetForegroundVolumeID()) == (nodes["warped"].GetID(),
                                                                         nodes["jacobian"].GetID()) for v in views)


def test_ui_offers_what_the_new_parameters_hold():
    """The outputs section binds the inverse node, the interpolation (choices filled by the parameter node from
    INTERPOLATION_CHOICES) and the displacement-field-only switch; the Advanced section holds the stage table."""
    widgets = ui_widgets()
    assert widgets["stagesTable"].get("class") == "QTableWidget"
    assert widgets["stagesStatusLabel"].get("class") == "QLabel"
    assert widgets["interpolationComboBox"].findall("item") == []  # no static items to disagree with the choices
    fields = parameter_fields()
    assert "INTERPOLATION_CHOICES" in fields["interpolation"] and fields["displacementFieldOnly"] == "bool"
    from DeepRegistrationLib.slicer.logic import INTERPOLATIONS

    assert re.search(r'INTERPOLATION_CHOICES = \["linear", "nearest", "label"\]', SOURCE)
    assert list(INTERPOLATIONS) == ["linear", "nearest", "label"]
