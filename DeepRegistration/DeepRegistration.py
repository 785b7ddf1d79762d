"""DeepRegistration: the 3D Slicer module (panel, logic, test).

The module is thin: the panel binds its widgets to a parameter node and calls
:class:`DeepRegistrationLogic`, which hands the work to ``DeepRegistrationLib`` (the MRML bridge in
``DeepRegistrationLib/slicer/``; the registration itself runs in a separate ``PythonSlicer``
process so Slicer stays responsive). Heavy packages (torch) are imported only after
:func:`ensureDependencies` has checked them.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Optional, Union

import vtk

import slicer
from slicer import (vtkMRMLLabelMapVolumeNode, vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode,
                    vtkMRMLSegmentationNode, vtkMRMLTransformNode, vtkMRMLVectorVolumeNode)
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

# Developer mode ("Add module path" pointing at this folder): the library lives one level up.
_SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_SOURCE_ROOT, "DeepRegistrationLib")) and _SOURCE_ROOT not in sys.path:
    sys.path.insert(0, _SOURCE_ROOT)

INTERPOLATION_CHOICES = ["linear", "nearest", "label"]


def userPresetsFolder() -> str:
    """User presets live beside Slicer's settings, never in the install tree."""
    settingsDir = os.path.dirname(slicer.app.slicerUserSettingsFilePath)
    return os.path.join(settingsDir, "DeepRegistration", "Presets")


def requirementsFile() -> str:
    """The Python packages the module installs on first use (torch aside: it comes from the PyTorch extension)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "Resources", "requirements.txt")


def ensureDependencies(askConfirmation: bool = True) -> bool:
    """Make torch (PyTorch extension) and the packages of ``Resources/requirements.txt`` available, behind one
    confirmation. True when ready.

    Never installs anything in testing mode (``--testing``, where confirmations answer themselves): the self-test
    then fails at once, naming what is missing, instead of downloading packages."""
    from DeepRegistrationLib.slicer.dependencies import (TORCH_REQUIREMENT, missing_requirements, read_requirements,
                                                         slicer_pip_module)

    missingTorch = missing_requirements([TORCH_REQUIREMENT])
    missingPip = missing_requirements(read_requirements(requirementsFile()))
    if not missingTorch and not missingPip:
        return True
    if slicer.app.testingEnabled():
        raise RuntimeError("DeepRegistration: missing Python packages ({what}); the self-test does not install "
                           "packages: install them first (PyTorch extension, then pip)".format(
                               what=", ".join(missingTorch + missingPip)))
    what = ([_("PyTorch (through the PyTorch extension)")] if missingTorch else []) + missingPip
    if askConfirmation and not slicer.util.confirmOkCancelDisplay(
            _("DeepRegistration needs these Python packages, which are not installed yet:\n\n{what}\n\n"
              "Install them now? This can take a few minutes.").format(what="\n".join(what)),
            windowTitle=_("DeepRegistration: install dependencies")):
        return False
    if missingTorch:
        try:
            import PyTorchUtils
        except ImportError:
            slicer.util.errorDisplay(_("Install the 'PyTorch' extension from the Extensions Manager, restart Slicer "
                                       "and try again."))
            return False
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        version = TORCH_REQUIREMENT[len("torch"):]
        if torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=version) is None:
            slicer.util.errorDisplay(_("PyTorch could not be installed; see the PyTorch Utils module."))
            return False
    if missingPip:
        pip = slicer_pip_module()
        if pip is not None:
            from packaging.requirements import Requirement

            pip.pip_ensure([Requirement(r) for r in missingPip], prompt_install=False, requester="DeepRegistration")
        else:
            slicer.util.pip_install(missingPip)
    return True


#
# DeepRegistration
#
class DeepRegistration(ScriptedLoadableModule):
    """Module description (title, category, help, acknowledgement)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("DeepRegistration")
        self.parent.categories = [_("Registration")]
        self.parent.dependencies = []
        self.parent.contributors = ["DeepRegistration maintainers (DeepRegistration project)"]
        self.parent.helpText = _("""
Register a moving volume to a fixed volume: rigid, affine and diffeomorphic deformable registration by
iterative optimisation on the GPU or CPU, or by a trained VoxelMorph network for T1 brain MRI (presets
voxelmorph-brain, voxelmorph-brain-io which refines the network's result, voxelmorph-brain-multimodal for a
moving brain scan of another contrast than the fixed T1, and voxelmorph-brain-multimodal-io which refines that).
The result is a native
transform node (linear for rigid/affine; a displacement field stored <i>from parent</i> for deformable
results, readable by ITK) that the Transforms module and other extensions understand.
Pick the fixed and moving volumes and a preset, then press Apply; Slicer stays usable while it runs.
See the <a href="https://github.com/DeepRegistration/DeepRegistration">project page</a> for the presets,
measured accuracy and Python scripting.
""")
        self.parent.acknowledgementText = _("""
Methods: stationary velocity field registration integrated by scaling and squaring (Arsigny et al., MICCAI 2006;
Ashburner, NeuroImage 2007); local normalised cross-correlation as in VoxelMorph (Balakrishnan et al., IEEE TMI 2019);
mutual information (Mattes et al., IEEE TMI 2003); MIND-SSC (Heinrich et al., MICCAI 2013); VoxelMorph (Balakrishnan
et al., CVPR 2018 / IEEE TMI 2019; Dalca et al., MICCAI 2018) trained with SynthMorph-style synthesis (Hoffmann et al.,
IEEE TMI 2022). The bundled brain model was trained on OASIS-1 data (Marcus et al. 2007; Hoopes et al. 2021).
Built on PyTorch, SimpleITK and 3D Slicer, after MONAI's VoxelMorph design.
""")


#
# Parameter node
#
@parameterNodeWrapper
class DeepRegistrationParameterNode:
    """Every setting of the panel; saved with the scene.

    preset: name of the preset (JSON shipped in DeepRegistrationLib/resources/presets or in the user presets folder).
    stageOverrides: the stage table's edits of that preset, a JSON list of ``stages.N.FIELD=VALUE`` overrides
        ("" = the preset as it is); cleared when another preset is chosen.
    inverseTransform, displacementFieldOnly, interpolation: see ``RegistrationRequest`` in DeepRegistrationLib.slicer.logic.
    """

    # vector volumes: photographs (single-slice RGB volumes) for the retinal presets
    fixedVolume: Union[vtkMRMLScalarVolumeNode, vtkMRMLVectorVolumeNode]
    movingVolume: Union[vtkMRMLScalarVolumeNode, vtkMRMLVectorVolumeNode]
    fixedMask: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode]
    movingMask: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode]
    initialTransform: vtkMRMLTransformNode
    fixedLandmarks: vtkMRMLMarkupsFiducialNode
    movingLandmarks: vtkMRMLMarkupsFiducialNode
    preset: str = "deformable-fast"
    stageOverrides: str = ""
    outputTransform: vtkMRMLTransformNode
    outputVolume: Union[vtkMRMLScalarVolumeNode, vtkMRMLVectorVolumeNode]  # a vector one: a photograph in colour
    jacobianVolume: vtkMRMLScalarVolumeNode
    inverseTransform: vtkMRMLTransformNode
    interpolation: Annotated[str, Choice(INTERPOLATION_CHOICES)] = "linear"
    displacementFieldOnly: bool = False
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    keepTemporaryFiles: bool = False
    showLog: bool = False


#
# DeepRegistrationWidget
#
class DeepRegistrationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: binds the .ui to the parameter node and runs the logic in the background."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None
        self._timer = None
        self._stagesError = ""
        self._stageRows = []

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        import qt

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DeepRegistration.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = DeepRegistrationLogic()

        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.connect("timeout()", self.onPoll)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.presetComboBox.connect("currentIndexChanged(int)", self.onPresetSelected)
        self.ui.savePresetButton.connect("clicked(bool)", self.onSavePreset)
        self.ui.showLogCheckBox.connect("toggled(bool)", self.ui.logTextEdit.setVisible)
        self.ui.stagesTable.connect("itemChanged(QTableWidgetItem*)", self.onStageEdited)
        self.ui.logTextEdit.setVisible(False)
        self.ui.progressBar.setVisible(False)
        self._showDeviceChoice()
        self.refreshPresets()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._run is not None and self._run.running:
            self._run.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        if self._run is not None and self._run.running:
            self._run.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # ------------------------------------------------------------------ parameter node
    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.fixedVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and not first.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.fixedVolume = first

    def setParameterNode(self, inputParameterNode: Optional[DeepRegistrationParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()
            self._fillStagesTable()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        index = self.ui.presetComboBox.findText(self._parameterNode.preset) if self._parameterNode else -1
        if index >= 0 and index != self.ui.presetComboBox.currentIndex:
            self.ui.presetComboBox.setCurrentIndex(index)
        self._checkCanApply()

    # ------------------------------------------------------------------ presets, stage table and device
    def refreshPresets(self) -> None:
        from DeepRegistrationLib.registration.presets import list_presets

        self.logic.usePresetsFolder(userPresetsFolder())
        presets = list_presets()
        combo = self.ui.presetComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for name, description in presets.items():
            combo.addItem(name)
            combo.setItemData(combo.count - 1, description, 3)  # Qt.ToolTipRole
        combo.blockSignals(wasBlocked)
        wanted = self._parameterNode.preset if self._parameterNode else "deformable-fast"
        combo.setCurrentIndex(max(0, combo.findText(wanted)))
        self.onPresetSelected(combo.currentIndex)

    def onPresetSelected(self, index: int) -> None:
        name = self.ui.presetComboBox.itemText(index)
        self.ui.presetDescriptionLabel.text = self.ui.presetComboBox.itemData(index, 3) or ""
        if self._parameterNode and name and self._parameterNode.preset != name:
            self._parameterNode.stageOverrides = ""  # the edits belong to the previous preset
            self._parameterNode.preset = name
        self._fillStagesTable()

    def _fillStagesTable(self) -> None:
        """The preset's stages (with the saved edits) as rows; cells a stage does not have are greyed out."""
        import qt

        from DeepRegistrationLib.registration.stage_table import STAGE_COLUMNS, stage_rows

        table = self.ui.stagesTable
        wasBlocked = table.blockSignals(True)
        table.clear()
        table.setColumnCount(len(STAGE_COLUMNS))
        table.setHorizontalHeaderLabels([_(heading) for _field, heading in STAGE_COLUMNS])
        rows = []
        self._stagesError = ""
        if self._parameterNode and self._parameterNode.preset:
            try:
                rows = stage_rows(self._parameterNode.preset, self.logic.stageOverrides(self._parameterNode))
            except Exception as err:  # a broken user preset: say so, do not break the panel
                self._stagesError = str(err)
        self._stageRows = rows
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, (field, _heading) in enumerate(STAGE_COLUMNS):
                item = qt.QTableWidgetItem(row[field] if row[field] is not None else "")
                if field == "model" or row[field] is None:
                    item.setFlags(qt.Qt.ItemIsEnabled if field == "model" else qt.Qt.NoItemFlags)
                table.setItem(r, c, item)
        table.resizeColumnsToContents()
        table.blockSignals(wasBlocked)
        self._showStagesStatus()

    def _tableRows(self) -> list:
        """The table's text, row by row, with ``None`` where the stage has no such field (as ``stage_rows``)."""
        from DeepRegistrationLib.registration.stage_table import STAGE_COLUMNS

        table = self.ui.stagesTable
        rows = []
        for r, template in enumerate(self._stageRows):
            row = {}
            for c, (field, _heading) in enumerate(STAGE_COLUMNS):
                item = table.item(r, c)
                row[field] = None if template[field] is None or item is None else item.text()
            rows.append(row)
        return rows

    def onStageEdited(self, item=None) -> None:
        """Check the table's edits and keep them in the parameter node; a bad value disables Apply, named."""
        if not self._parameterNode:
            return
        self._stagesError = ""
        try:
            overrides = self.logic.stageOverridesFromRows(self._parameterNode.preset, self._tableRows())
            self._parameterNode.stageOverrides = json.dumps(overrides) if overrides else ""
        except Exception as err:
            self._stagesError = str(err)
        self._showStagesStatus()
        self._checkCanApply()

    def _showStagesStatus(self) -> None:
        label = self.ui.stagesStatusLabel
        if self._stagesError:
            label.text = _("Not valid: {error}").format(error=self._stagesError)
            label.styleSheet = "color: red"
        else:
            edits = self.logic.stageOverrides(self._parameterNode) if self._parameterNode else []
            label.text = (_("{n} edit(s) of the preset; Save as user preset keeps them.").format(n=len(edits))
                          if edits else _("The preset as it is."))
            label.styleSheet = ""

    def onSavePreset(self) -> None:
        import qt

        name = qt.QInputDialog.getText(slicer.util.mainWindow(), _("Save preset"),
                                       _("Name of the new preset (the current preset with the stage table's edits):"))
        if not name:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to save the preset."), waitCursor=True):
            path = self.logic.savePreset(name, self._parameterNode)
            self.refreshPresets()
            self.ui.presetComboBox.setCurrentIndex(self.ui.presetComboBox.findText(name))
            self.ui.statusLabel.text = _("Saved preset {name} in {path}").format(name=name, path=path)

    def _showDeviceChoice(self) -> None:
        """The device choice is offered only when a CUDA GPU is there (and torch is already installed)."""
        import importlib.util

        cuda = False
        if importlib.util.find_spec("torch") is not None:
            import torch

            cuda = torch.cuda.is_available()
        self.ui.deviceLabel.setVisible(cuda)
        self.ui.deviceComboBox.setVisible(cuda)

    # ------------------------------------------------------------------ apply / cancel
    def _checkCanApply(self, caller=None, event=None) -> None:
        button = self.ui.applyButton
        if self._run is not None and self._run.running:
            button.text = _("Cancel")
            button.toolTip = _("Stop the registration; nothing is added to the scene.")
            button.enabled = True
            return
        button.text = _("Apply")
        missing = self.logic.whatIsMissing(self._parameterNode)
        if self._stagesError:
            missing.append(_("correct the stage table ({error})").format(error=self._stagesError))
        button.enabled = not missing
        button.toolTip = (_("Register the moving volume to the fixed volume.") if not missing
                          else _("To register: ") + "; ".join(missing) + ".")

    def onApplyButton(self) -> None:
        if self._run is not None and self._run.running:
            self._run.cancel()
            return
        started = False
        try:
            with slicer.util.tryWithErrorDisplay(_("The registration could not start."), waitCursor=True):
                if not ensureDependencies():
                    return
                self._showDeviceChoice()
                p = self._parameterNode
                self.ui.logTextEdit.clear()
                self.ui.progressBar.setValue(0)
                self.ui.progressBar.setVisible(True)
                self.ui.statusLabel.text = _("Starting...")
                self._run = self.logic.processInBackground(
                    request=self.logic.requestFromParameters(p), onProgress=self.onProgress,
                    onFinished=self.onFinished, keepTemporaryFiles=p.keepTemporaryFiles)
                self._timer.start()
                started = True
        finally:
            if not started:  # refused or failed before the worker started: no progress bar left behind
                self.ui.progressBar.setVisible(False)
                if self.ui.statusLabel.text == _("Starting..."):
                    self.ui.statusLabel.text = _("Not started.")
            self._checkCanApply()

    def onPoll(self) -> None:
        if self._run is not None:
            self._run.poll()

    def onProgress(self, event: dict) -> None:
        self.ui.progressBar.setValue(int(100 * event.get("fraction", 0.0)))
        if event.get("loss") is None:  # a network stage: forward pass(es), no loss
            self.ui.statusLabel.text = _("Stage {stage} ({model}): network forward pass").format(
                stage=event["stage"] + 1, model=event["model"])
            return
        self.ui.statusLabel.text = _("Stage {stage} ({model}), level {level}, iteration {iteration}: loss {loss:.4f}").format(
            stage=event["stage"] + 1, model=event["model"], level=event["level"] + 1, iteration=event["iteration"] + 1,
            loss=event["loss"])

    def onFinished(self, run) -> None:
        self._timer.stop()
        self.ui.progressBar.setVisible(False)
        self.ui.logTextEdit.setPlainText("\n".join([" ".join(run.command)] + run.log))
        if run.state == "completed":
            outputs = run.outputs
            figures = outputs.figures
            if self._parameterNode and not self._parameterNode.outputTransform:
                self._parameterNode.outputTransform = outputs.transform_node
            shown = self.logic.showResults(run.job.fixed_node, run.job.moving_node, outputs)
            self.ui.statusLabel.text = _("Done in {t:.1f} s on {device}; folded voxels {fold:.3f} %. Shown: {shown}.").format(
                t=figures.get("time_s", 0.0), device=figures.get("device", "?"),
                fold=figures.get("jacobian_folding_percent", 0.0), shown=shown)
        elif run.state == "cancelled":
            self.ui.statusLabel.text = _("Cancelled; the scene was not changed.")
        else:
            self.ui.statusLabel.text = _("Failed: {error}").format(error=run.error)
            slicer.util.errorDisplay(_("Registration failed: {error}").format(error=run.error),
                                     detailedText="\n".join(run.log))
        self._checkCanApply()


#
# DeepRegistrationLogic
#
class DeepRegistrationLogic(ScriptedLoadableModuleLogic):
    """Slicer-side logic: the parameter node, and the library's ``RegistrationLogic`` on ``slicer.mrmlScene``.

    Scripting from the Python console::

        logic = slicer.util.getModuleLogic("DeepRegistration")
        out = logic.process(fixedNode, movingNode, "deformable-fast")   # waits; returns the output nodes
        out.transform_node, out.figures["time_s"]
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self) -> DeepRegistrationParameterNode:
        return DeepRegistrationParameterNode(super().getParameterNode())

    @staticmethod
    def usePresetsFolder(folder: str) -> None:
        """Make ``folder`` (user presets) visible to the library and to the worker process."""
        current = [p for p in os.environ.get("DEEPREG_PRESETS", "").split(os.pathsep) if p]
        if folder not in current:
            os.environ["DEEPREG_PRESETS"] = os.pathsep.join([folder] + current)

    @staticmethod
    def whatIsMissing(p) -> list:
        """What the user must still do before Apply (empty when ready), in the words of the Apply tooltip."""
        missing = []
        if not p or not p.fixedVolume:
            missing.append(_("select a fixed volume"))
        if not p or not p.movingVolume:
            missing.append(_("select a moving volume"))
        if p and p.fixedVolume and p.fixedVolume is p.movingVolume:
            missing.append(_("choose different fixed and moving volumes"))
        if p and bool(p.fixedLandmarks) != bool(p.movingLandmarks):
            missing.append(_("select both fixed and moving landmarks, or neither"))
        if p and p.outputVolume and p.outputVolume in (p.fixedVolume, p.movingVolume):
            missing.append(_("the output volume must not be an input volume"))
        if p and p.inverseTransform and p.inverseTransform in (p.outputTransform, p.initialTransform):
            missing.append(_("the inverse transform must be a node of its own"))
        return missing

    @staticmethod
    def stageOverrides(p) -> list:
        """The stage table's edits kept in the parameter node, as preset overrides."""
        text = p.stageOverrides.strip() if p and p.stageOverrides else ""
        return list(json.loads(text)) if text else []

    @staticmethod
    def stageOverridesFromRows(preset: str, rows: list) -> list:
        """The table's rows as overrides; validated by the engine when torch is there (else at Apply)."""
        import importlib.util

        from DeepRegistrationLib.registration.stage_table import check_stage_overrides, overrides_from_rows

        overrides = overrides_from_rows(preset, rows)
        if importlib.util.find_spec("torch") is not None:
            check_stage_overrides(preset, overrides)
        return overrides

    def savePreset(self, name: str, p) -> str:
        """Save the parameter node's preset with the stage table's edits as user preset ``name``; returns its path."""
        from DeepRegistrationLib.registration.presets import save_preset

        if not ensureDependencies():
            raise RuntimeError(_("the dependencies are needed to check the preset"))
        return str(save_preset(name, p.preset, self.stageOverrides(p), userPresetsFolder()))

    def requestFromParameters(self, p: DeepRegistrationParameterNode):
        """The panel's settings as the library's ``RegistrationRequest`` (the one description of a run)."""
        from DeepRegistrationLib.slicer.logic import RegistrationRequest

        return RegistrationRequest(
            p.fixedVolume, p.movingVolume, p.preset, outputTransformNode=p.outputTransform,
            outputVolumeNode=p.outputVolume, fixedMaskNode=p.fixedMask, movingMaskNode=p.movingMask,
            initialTransformNode=p.initialTransform, fixedLandmarksNode=p.fixedLandmarks,
            movingLandmarksNode=p.movingLandmarks, jacobianVolumeNode=p.jacobianVolume,
            inverseTransformNode=p.inverseTransform, displacementFieldOnly=p.displacementFieldOnly,
            interpolation=p.interpolation, device=p.device, parameters={"overrides": self.stageOverrides(p)})

    @staticmethod
    def showResults(fixedNode, movingNode, outputs) -> str:
        """Show what a run produced in the slice views; returns what is shown, in words.

        The fixed volume in the background and the registered moving volume (the output volume, else the moving
        volume under the transform) in the foreground at half opacity; a Jacobian volume, when one was asked for,
        takes the foreground instead (its colours: shrinking below 1, growth above, folding at 0 and below) over
        the registered volume."""
        from DeepRegistrationLib.slicer.logic import result_layers

        layers = result_layers(fixedNode, movingNode, outputs)
        slicer.util.setSliceViewerLayers(background=layers["background"], foreground=layers["foreground"],
                                         foregroundOpacity=layers["opacity"])
        return layers["description"]

    def _bridge(self):
        from DeepRegistrationLib.slicer.logic import RegistrationLogic

        self.usePresetsFolder(userPresetsFolder())
        return RegistrationLogic(slicer.mrmlScene)

    def process(self, fixedVolumeNode=None, movingVolumeNode=None, preset: str = "deformable-fast",
                outputTransformNode=None, outputVolumeNode=None, **parameters):
        """Register now, in this thread (for scripts); returns ``RegistrationOutputs`` (nodes and figures).

        Other keyword parameters: ``fixedMaskNode``, ``movingMaskNode``, ``initialTransformNode``,
        ``fixedLandmarksNode``, ``movingLandmarksNode``, ``jacobianVolumeNode``, ``inverseTransformNode``,
        ``displacementFieldOnly``, ``interpolation``, ``device``, and preset overrides ``similarity``,
        ``levels_mm``, ``iterations``, ``regularisation_weight``, ``overrides``.
        """
        if not ensureDependencies():
            raise RuntimeError("DeepRegistration's dependencies are not installed")
        return self._bridge().process(fixedVolumeNode, movingVolumeNode, preset, outputTransformNode=outputTransformNode,
                                      outputVolumeNode=outputVolumeNode, **parameters)

    def processInBackground(self, fixedVolumeNode=None, movingVolumeNode=None, preset: str = "deformable-fast",
                            **kwargs):
        """Start the registration in a ``PythonSlicer`` process; returns the ``BackgroundRegistration`` handle."""
        kwargs.setdefault("tempDirectory", slicer.app.temporaryPath)
        return self._bridge().processInBackground(fixedVolumeNode, movingVolumeNode, preset, **kwargs)


#
# DeepRegistrationTest
#
class DeepRegistrationTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer, offline and without installing anything: real registrations of a head phantom made
    here (no sample data download), checked against the known answer."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_rigid_in_background()
        self.setUp()
        self.test_scripted_deformable()

    def _pair(self):
        """A head phantom (fixed, 2.5 x 2.5 x 3 mm) and the same head moved by a known rigid transform (moving);
        returns the nodes and the RAS matrix that moved it (moving point = matrix @ fixed point)."""
        if not ensureDependencies(askConfirmation=False):  # in testing mode: raises, naming what is missing
            raise RuntimeError("DeepRegistration's dependencies are not installed")
        import numpy as np
        import torch

        from DeepRegistrationLib.geometry import Grid
        from DeepRegistrationLib.image import Image
        from DeepRegistrationLib.slicer.nodes import update_volume_node_from_image
        from DeepRegistrationLib.synthetic import head_phantom
        from DeepRegistrationLib.transforms import AffineTransform
        from DeepRegistrationLib.warp import warp_image

        grid = Grid.centred([0.0, 0.0, 0.0], [64, 76, 60], [2.5, 2.5, 3.0], np.eye(3))
        fixedImage = Image(torch.from_numpy(head_phantom(grid))[None], grid, name="phantom")
        angle = np.radians(8.0)
        matrix = np.array([[np.cos(angle), -np.sin(angle), 0, 6.0], [np.sin(angle), np.cos(angle), 0, -4.0],
                           [0, 0, 1, 3.0], [0, 0, 0, 1]])
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        lps = flip @ matrix @ flip  # the same motion in LPS; the moving volume shows the head moved by it
        movingImage = warp_image(fixedImage, AffineTransform(lps[:3, :3], lps[:3, 3]).inverse(), grid)
        nodes = []
        for image, name in ((fixedImage, "phantom"), (movingImage, "phantom moved")):
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
            update_volume_node_from_image(node, image)
            nodes.append(node)
        return nodes[0], nodes[1], matrix

    def test_rigid_in_background(self):
        import numpy as np

        self.delayDisplay("Rigid registration in the background")
        fixed, moving, matrix = self._pair()
        logic = DeepRegistrationLogic()
        events = []
        inverse = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTransformNode", "inverse")
        run = logic.processInBackground(fixed, moving, "rigid", onProgress=events.append, inverseTransformNode=inverse,
                                        overrides=["levels_mm=[8,4]"])
        while run.poll():
            slicer.app.processEvents()
        self.assertEqual(run.state, "completed", run.error)
        self.assertTrue(len(events) > 0)
        node = run.outputs.transform_node
        self.assertTrue(node.IsLinear())
        self.assertEqual(moving.GetTransformNodeID(), node.GetID())
        # moving point = matrix @ fixed point: the node's to-parent matrix must undo it
        toParent = slicer.util.arrayFromTransformMatrix(node)
        point = np.array([10.0, 20.0, 30.0, 1.0])
        error = np.linalg.norm((toParent @ matrix @ point)[:3] - point[:3])
        self.assertLess(error, 1.0)
        inverseMatrix = slicer.util.arrayFromTransformMatrix(inverse)  # to parent of the inverse = from parent of T
        self.assertLess(np.abs(inverseMatrix @ toParent - np.eye(4)).max(), 1e-6)
        self.delayDisplay(f"Rigid registration recovered the known motion within {error:.2f} mm")

    def test_scripted_deformable(self):
        self.delayDisplay("Deformable registration from a script")
        fixed, moving, _matrix = self._pair()
        warped = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "warped")
        out = DeepRegistrationLogic().process(fixed, moving, "deformable-fast", outputVolumeNode=warped,
                                              displacementFieldOnly=True, overrides=["levels_mm=[8,4]"])
        self.assertFalse(out.transform_node.IsLinear())
        self.assertEqual(slicer.util.arrayFromGridTransform(out.transform_node).shape[:3],
                         slicer.util.arrayFromVolume(fixed).shape)
        self.assertLess(out.figures["jacobian_folding_percent"], 0.01)
        self.assertIs(out.volume_node, warped)
        self.assertIsNone(moving.GetTransformNodeID())
        self.assertEqual(out.transform_node.GetNodeReference("spatialRegistrationFixed"), fixed)
        self.delayDisplay("Deformable registration passed")
