"""The registration logic of the MRML bridge: :class:`RegistrationRequest` (what to register, where the results
go) and :class:`RegistrationLogic` (check, run here or in a worker process, publish native nodes).

It needs only the ``slicer-core`` wheel (real MRML scenes, no Qt, no Slicer application), so it runs in pytest.

Conventions:

* Slicer is RAS, the library LPS: the conversions are those of :mod:`.nodes` and :mod:`.transforms`, through
  :mod:`DeepRegistrationLib.geometry`'s one flip.
* Volumes are used in their own (local) coordinates: ``IJKToRAS`` gives the library grid. When the
  fixed volume sits under a transform, the output transform is placed under that same transform,
  so the registered moving volume lines up with what the user sees.
* The library's transform maps fixed -> moving points (resampling direction). In Slicer that is the
  transform **from parent**: placing the moving volume under it shows it aligned with the fixed one.
  Deformable results are stored from parent, so the node's ``.h5`` is a
  ``DisplacementFieldTransform`` that ITK/SimpleITK read as the same mapping.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InputError
from ..geometry import Grid
from ..image import Image
from ..transforms import Transform
from .background import CANCEL_FILE, BackgroundRegistration, default_python_executable
from .nodes import image_from_volume_node, mask_from_node, points_from_markups, slicer_module, update_volume_node_from_image
from .planar import as_planar, embed_image, embed_points_axes, embed_transform, is_single_slice
from .transforms import set_vtk_transform, transform_from_node, vtk_transform

__all__ = ["RegistrationRequest", "RegistrationLogic", "RegistrationOutputs", "PreparedJob", "INTERPOLATIONS",
           "overrides_from_parameters", "show_as_jacobian", "result_layers"]


@dataclass(frozen=True)
class RegistrationRequest:
    """One registration asked of the logic: the input and output nodes, the preset, the device and the preset
    parameters (:func:`overrides_from_parameters`). The one description shared by :meth:`RegistrationLogic.process`,
    :meth:`RegistrationLogic.processInBackground`, the worker's command line and the module's panel.

    Keyword names are those of the panel's parameter node and of Slicer's scripting conventions (camelCase nodes).

    ``inverseTransformNode`` receives the inverse (moving -> fixed, *from parent*; exact for linear results, the
    numerical inverse of the stored field, 0.001 mm at its nodes, for deformable ones); ``displacementFieldOnly`` stores each result as one displacement field (a grid transform node
    that ``slicer.util.arrayFromGridTransform`` reads: the forward one on the fixed grid, the inverse on the moving
    grid) instead of its linear and grid parts; ``interpolation`` (``linear``, ``nearest`` or ``label``) is that of
    the output volume.
    """

    fixedVolumeNode: Any
    movingVolumeNode: Any
    preset: str = "deformable-fast"
    outputTransformNode: Any = None
    outputVolumeNode: Any = None
    fixedMaskNode: Any = None
    movingMaskNode: Any = None
    initialTransformNode: Any = None
    fixedLandmarksNode: Any = None
    movingLandmarksNode: Any = None
    jacobianVolumeNode: Any = None
    inverseTransformNode: Any = None
    displacementFieldOnly: bool = False
    interpolation: str = "linear"
    device: str = "auto"
    parameters: dict = field(default_factory=dict)

    @classmethod
    def from_keywords(cls, fixedVolumeNode=None, movingVolumeNode=None, preset: str = "deformable-fast",
                      **keywords) -> "RegistrationRequest":
        """A request from keyword arguments: the node and device fields by name, everything else a preset
        parameter (``similarity``, ``levels_mm``, ``iterations``, ``learning_rate``, ``regularisation_weight``,
        ``seed``, ``initialise``, ``overrides``)."""
        names = {f.name for f in fields(cls)} - {"parameters"}
        nodes = {k: v for k, v in keywords.items() if k in names}
        return cls(fixedVolumeNode, movingVolumeNode, preset, **nodes,
                   parameters={k: v for k, v in keywords.items() if k not in names})

    def overrides(self) -> list[str]:
        return overrides_from_parameters(self.parameters)


# ---------------------------------------------------------------------- registration
@dataclass
class RegistrationOutputs:
    """The nodes a registration produced, its figures (time, device, folding, per stage loss, inverse
    consistency), and the library transform (fixed -> moving, LPS) that the transform node holds."""

    transform_node: Any
    volume_node: Any = None
    jacobian_node: Any = None
    figures: dict = field(default_factory=dict)
    transform: Transform | None = None
    inverse_node: Any = None


@dataclass
class PreparedJob:
    """A checked request and everything it needs, taken from the scene before anything runs."""

    fixed_node: Any
    moving_node: Any
    preset: str
    overrides: list[str]
    device: str
    fixed: Image
    moving: Image
    fixed_mask: Image | None = None
    moving_mask: Image | None = None
    fixed_points: np.ndarray | None = None
    moving_points: np.ndarray | None = None
    initial: Transform | None = None
    output_transform_node: Any = None
    output_volume_node: Any = None
    jacobian_node: Any = None
    inverse_node: Any = None
    displacement_field_only: bool = False
    interpolation: str = "linear"
    #: Two single slices (photographs) registered as 2D images: the slices' 3D grids, where results go back, and
    #: the moving image's colours when it is RGB (what a vector output volume shows).
    fixed_slice_grid: Grid | None = None
    moving_slice_grid: Grid | None = None
    moving_colour: Image | None = None

    @property
    def planar(self) -> bool:
        return self.fixed_slice_grid is not None


INTERPOLATIONS = ("linear", "nearest", "label")


def overrides_from_parameters(parameters: dict) -> list[str]:
    """Keyword parameters of :meth:`RegistrationLogic.process` as preset overrides (``key=value``).

    ``similarity`` (every stage; resets ``similarity_options``), ``levels_mm``, ``iterations``,
    ``learning_rate`` (every stage), ``regularisation_weight`` (deformable stages), ``seed``,
    ``initialise``; ``overrides`` passes raw ``key=value`` strings (see ``registration.presets``).
    """
    parameters = dict(parameters)
    out: list[str] = []
    raw = parameters.pop("overrides", None) or []
    if "similarity" in parameters and parameters["similarity"] not in (None, ""):
        out.append(f"similarity={json.dumps(parameters.pop('similarity'))}")
        out.append("similarity_options={}")
    mapping = {"levels_mm": "levels_mm", "iterations": "iterations", "learning_rate": "learning_rate",
               "regularisation_weight": "svf.regularisation_weight", "seed": "seed", "initialise": "initialise"}
    for key, value in parameters.items():
        if key not in mapping and key != "similarity":
            raise InputError(f"unknown registration parameter {key!r} (known: {sorted(mapping) + ['overrides', 'similarity']})")
        if value is None or value == "" or key == "similarity":
            continue
        out.append(f"{mapping[key]}={json.dumps(value)}")
    return out + list(raw)


def _describe_registration(node, fixed_node, moving_node, preset: str, figures: dict) -> None:
    """What Slicer and the panel show of a result: the registered pair, the preset and the figures."""
    node.SetNodeReferenceID("spatialRegistrationFixed", fixed_node.GetID())
    node.SetNodeReferenceID("spatialRegistrationMoving", moving_node.GetID())
    node.SetAttribute("DeepRegistration.preset", preset)
    node.SetAttribute("DeepRegistration.figures", json.dumps(figures))
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()


JACOBIAN_WINDOW = (0.0, 2.0)  # det 1 (volume kept) mid-range; det <= 0 (folding) at the bottom


def show_as_jacobian(volume_node) -> None:
    """Display a Jacobian determinant volume: fixed window 0..2 around 1, a diverging colour table when the
    scene has Slicer's (``ColdToHotRainbow``), so that shrinking, growth and folding read at a glance."""
    display = volume_node.GetDisplayNode()
    if display is None:
        volume_node.CreateDefaultDisplayNodes()
        display = volume_node.GetDisplayNode()
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(*JACOBIAN_WINDOW)
    color = volume_node.GetScene().GetNodeByID("vtkMRMLColorTableNodeFileColdToHotRainbow.txt")
    if color is not None:
        display.SetAndObserveColorNodeID(color.GetID())


def result_layers(fixed_node, moving_node, outputs: "RegistrationOutputs") -> dict:
    """What the panel shows after a run (slice-view layers): ``background``, ``foreground`` (nodes), ``opacity``
    and a ``description`` in words.

    The fixed volume behind the registered moving volume (the output volume, else the moving volume, which is
    then under the result transform) at half opacity; a Jacobian volume, when one was asked for, takes the
    foreground over the registered volume (or over the fixed one when there is no output volume)."""
    registered = outputs.volume_node if outputs.volume_node is not None else moving_node
    if outputs.jacobian_node is not None:
        background = outputs.volume_node if outputs.volume_node is not None else fixed_node
        return {"background": background, "foreground": outputs.jacobian_node, "opacity": 0.5,
                "description": f"{outputs.jacobian_node.GetName()} over {background.GetName()}"}
    return {"background": fixed_node, "foreground": registered, "opacity": 0.5,
            "description": f"{registered.GetName()} over {fixed_node.GetName()}"}


class RegistrationLogic:
    """Register two volume nodes of a scene and put the result in native Slicer nodes.

    ``process`` runs in the calling thread (scripting); ``processInBackground`` runs ``deepreg
    register`` in a separate Python process and returns a :class:`BackgroundRegistration` handle.
    Input nodes are never modified, except that when no output volume is requested the moving
    volume is placed under the output transform (that is how Slicer shows a registration result).
    On any error or cancel, nothing is added to or changed in the scene.
    """

    def __init__(self, scene=None) -> None:
        self.scene = scene if scene is not None else slicer_module().mrmlScene
        if self.scene is None:
            raise InputError("no MRML scene (pass one, or run inside Slicer)")

    # ------------------------------------------------------------------ gathering inputs
    def prepare(self, request: RegistrationRequest) -> PreparedJob:
        """Check ``request`` against the scene and the preset and read its inputs (errors name the node)."""
        from ..registration import load_preset

        r = request
        fixedVolumeNode, movingVolumeNode, preset = r.fixedVolumeNode, r.movingVolumeNode, r.preset
        outputTransformNode, outputVolumeNode, jacobianVolumeNode = (r.outputTransformNode, r.outputVolumeNode,
                                                                     r.jacobianVolumeNode)
        fixedMaskNode, movingMaskNode, initialTransformNode = r.fixedMaskNode, r.movingMaskNode, r.initialTransformNode
        fixedLandmarksNode, movingLandmarksNode, device = r.fixedLandmarksNode, r.movingLandmarksNode, r.device

        if fixedVolumeNode is not None and fixedVolumeNode is movingVolumeNode:
            raise InputError(f"{fixedVolumeNode.GetName()} is both the fixed and the moving volume; choose two volumes")
        overrides = r.overrides()
        config = load_preset(preset, overrides)  # fail now on an unknown preset or parameter
        fixed = image_from_volume_node(fixedVolumeNode, "fixed", channel=config.channel)
        moving = image_from_volume_node(movingVolumeNode, "moving", channel=config.channel)
        slices = [is_single_slice(fixed), is_single_slice(moving)]
        if slices[0] != slices[1]:
            one, other = (fixedVolumeNode, "fixed") if slices[0] else (movingVolumeNode, "moving")
            raise InputError(f"{one.GetName()}: the {other} volume is a single slice and the other a 3D volume; "
                             "register two 3D volumes, or two 2D images (single slices)")
        planar = {}
        if all(slices):  # photographs: registered in 2D, results put back on the slices
            planar = {"fixed_slice_grid": fixed.grid, "moving_slice_grid": moving.grid}
            colour = None
            if movingVolumeNode.GetImageData().GetNumberOfScalarComponents() in (3, 4):
                colour = as_planar(image_from_volume_node(movingVolumeNode, "moving", keep_colour=True))
            fixed, moving = as_planar(fixed), as_planar(moving)
            planar["moving_colour"] = colour
        for out_node, what in ((outputVolumeNode, "output volume"), (jacobianVolumeNode, "Jacobian volume")):
            if out_node is not None and out_node in (fixedVolumeNode, movingVolumeNode):
                raise InputError(f"{out_node.GetName()}: the {what} is an input volume; choose or create another node")
        if outputVolumeNode is not None and outputVolumeNode is jacobianVolumeNode:
            raise InputError("the output volume and the Jacobian volume must be different nodes")
        if r.interpolation not in INTERPOLATIONS:
            raise InputError(f"interpolation {r.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
        inverseNode = r.inverseTransformNode
        if inverseNode is not None:
            if not inverseNode.IsA("vtkMRMLTransformNode"):
                raise InputError(f"{inverseNode.GetName()}: the inverse transform output must be a transform node")
            if inverseNode in (outputTransformNode, initialTransformNode):
                raise InputError(f"{inverseNode.GetName()}: the inverse transform must be a node of its own (it is "
                                 f"also the {'output' if inverseNode is outputTransformNode else 'initial'} transform)")
            for volume, what in ((fixedVolumeNode, "fixed"), (movingVolumeNode, "moving")):
                if volume.GetParentTransformNode() is inverseNode:
                    raise InputError(f"the {what} volume is under the inverse transform {inverseNode.GetName()}; "
                                     "choose another node")
        if outputTransformNode is not None:
            if not outputTransformNode.IsA("vtkMRMLTransformNode"):
                raise InputError(f"{outputTransformNode.GetName()}: the output transform must be a transform node")
            if outputTransformNode is initialTransformNode:
                raise InputError(f"{outputTransformNode.GetName()} is both the initial and the output transform")
            if fixedVolumeNode.GetParentTransformNode() is outputTransformNode:
                raise InputError(f"the fixed volume is under the output transform {outputTransformNode.GetName()}; "
                                 "choose another output transform")
        import torch

        from ..registration import check_image_pair, check_stages

        check_image_pair(fixed, moving)  # constant, single-slice or tiny volumes: refused here, not in the worker
        check_stages(config, fixed, moving, torch.device("cpu"))  # and on a model or volumes a stage refuses
        job = PreparedJob(fixedVolumeNode, movingVolumeNode, preset, overrides, device, fixed, moving,
                          output_transform_node=outputTransformNode, output_volume_node=outputVolumeNode,
                          jacobian_node=jacobianVolumeNode, inverse_node=inverseNode,
                          displacement_field_only=bool(r.displacementFieldOnly), interpolation=r.interpolation,
                          **planar)
        if fixedMaskNode is not None:
            job.fixed_mask = mask_from_node(fixedMaskNode, fixedVolumeNode, "fixed")
        if movingMaskNode is not None:
            job.moving_mask = mask_from_node(movingMaskNode, movingVolumeNode, "moving")
        if job.planar:
            job.fixed_mask = as_planar(job.fixed_mask) if job.fixed_mask is not None else None
            job.moving_mask = as_planar(job.moving_mask) if job.moving_mask is not None else None
        if (fixedLandmarksNode is None) != (movingLandmarksNode is None):
            raise InputError("landmarks need both a fixed and a moving markups node")
        if fixedLandmarksNode is not None:
            job.fixed_points = points_from_markups(fixedLandmarksNode, "fixed")
            job.moving_points = points_from_markups(movingLandmarksNode, "moving")
            if len(job.fixed_points) != len(job.moving_points):
                raise InputError(f"landmark counts differ: {len(job.fixed_points)} fixed "
                                 f"({fixedLandmarksNode.GetName()}) vs {len(job.moving_points)} moving "
                                 f"({movingLandmarksNode.GetName()})")
            from ..registration.landmarks import check_landmarks

            if job.planar:
                job.fixed_points = embed_points_axes(job.fixed_points, job.fixed_slice_grid)
                job.moving_points = embed_points_axes(job.moving_points, job.moving_slice_grid)
            for pts, node in ((job.fixed_points, fixedLandmarksNode), (job.moving_points, movingLandmarksNode)):
                check_landmarks(pts, "rigid", node.GetName())
        if initialTransformNode is not None:
            if job.planar:
                raise InputError(f"{initialTransformNode.GetName()}: an initial transform is not supported for 2D "
                                 "images (single slices); the retinal presets find the whole mapping themselves")
            job.initial = transform_from_node(initialTransformNode)
        return job

    # ------------------------------------------------------------------ publishing results
    def publish(self, job: PreparedJob, transform: Transform, warped: Image | None, jacobian: Image | None,
                figures: dict, inverse: Transform | None = None) -> RegistrationOutputs:
        """Create or update the output nodes (the only place that changes the scene).

        ``inverse`` (moving -> fixed) fills the request's inverse node. Everything that can fail (conversions to
        VTK, checks of the result images) happens before the first change to the scene.
        """
        scene = self.scene
        fixed_node, moving_node = job.fixed_node, job.moving_node
        field_only = job.displacement_field_only
        fixed_grid, moving_grid = job.fixed.grid, job.moving.grid
        if job.planar:  # a 2D result: in-plane on the slices (see slicer.planar)
            fixed_grid, moving_grid = job.fixed_slice_grid, job.moving_slice_grid
            transform = embed_transform(transform, fixed_grid)
            inverse = embed_transform(inverse, moving_grid) if inverse is not None else None
            warped = embed_image(warped, fixed_grid) if warped is not None else None
            jacobian = embed_image(jacobian, fixed_grid) if jacobian is not None else None
        vtk_result = vtk_transform(transform, fixed_grid, field_only=field_only)
        vtk_inverse = None
        if job.inverse_node is not None:
            if inverse is None:
                raise InputError("the registration gave no inverse transform")
            vtk_inverse = vtk_transform(inverse, moving_grid, field_only=field_only)
        for image in (warped, jacobian):
            colour = image is warped and job.output_volume_node is not None and \
                job.output_volume_node.IsA("vtkMRMLVectorVolumeNode")
            if image is not None and (image.dim != 3 or (image.num_channels != 1 and not colour)):
                raise InputError(f"{image.name}: expected a 3D single-channel result image")
        node = job.output_transform_node
        if node is None:
            node = scene.AddNewNodeByClass("vtkMRMLTransformNode",
                                           scene.GenerateUniqueName(f"{moving_node.GetName()}-to-{fixed_node.GetName()}"))
        set_vtk_transform(node, *vtk_result)
        _describe_registration(node, fixed_node, moving_node, job.preset, figures)
        node.SetAndObserveTransformNodeID(fixed_node.GetTransformNodeID())
        outputs = RegistrationOutputs(transform_node=node, figures=figures, transform=transform)
        if vtk_inverse is not None:
            set_vtk_transform(job.inverse_node, *vtk_inverse)
            _describe_registration(job.inverse_node, moving_node, fixed_node, job.preset, figures)
            job.inverse_node.SetAttribute("DeepRegistration.inverseOf", node.GetID())
            job.inverse_node.SetAndObserveTransformNodeID(moving_node.GetTransformNodeID())
            outputs.inverse_node = job.inverse_node
        if job.output_volume_node is not None and warped is not None:
            update_volume_node_from_image(job.output_volume_node, warped)
            job.output_volume_node.SetAndObserveTransformNodeID(fixed_node.GetTransformNodeID())
            outputs.volume_node = job.output_volume_node
        else:
            moving_node.SetAndObserveTransformNodeID(node.GetID())
        if job.jacobian_node is not None and jacobian is not None:
            update_volume_node_from_image(job.jacobian_node, jacobian)
            job.jacobian_node.SetAndObserveTransformNodeID(fixed_node.GetTransformNodeID())
            show_as_jacobian(job.jacobian_node)
            outputs.jacobian_node = job.jacobian_node
        return outputs

    # ------------------------------------------------------------------ synchronous
    def process(self, fixedVolumeNode=None, movingVolumeNode=None, preset: str = "deformable-fast", *,
                request: RegistrationRequest | None = None, progress: Callable[[dict], None] | None = None,
                cancel: Callable[[], bool] | None = None, **keywords) -> RegistrationOutputs:
        """Register in this thread and return the output nodes (see the class docstring).

        Give a :class:`RegistrationRequest`, or its fields as keywords (``outputTransformNode``,
        ``outputVolumeNode``, ``fixedMaskNode``, ..., ``device``, and preset parameters such as ``similarity``,
        ``levels_mm``, ``iterations``, ``regularisation_weight``, ``overrides``).
        """
        from ..registration import load_preset, register

        request = request or RegistrationRequest.from_keywords(fixedVolumeNode, movingVolumeNode, preset, **keywords)
        job = self.prepare(request)
        device, preset = request.device, request.preset
        config = load_preset(preset, job.overrides)
        result = register(job.fixed, job.moving, config, fixed_mask=job.fixed_mask, moving_mask=job.moving_mask,
                          fixed_points=job.fixed_points, moving_points=job.moving_points,
                          initial_transform=job.initial, device=device, progress=progress, cancel=cancel,
                          initialise="landmarks" if job.fixed_points is not None and job.initial is None else None)
        # full resolution only when a Jacobian volume is asked for (as `deepreg register --out-jacobian`)
        det, grid, _ = result.jacobian()
        figures = result.figures
        jacobian = Image(det.float()[None], grid, name="jacobian") if job.jacobian_node is not None else None
        warped = None
        if job.output_volume_node is not None:
            if job.moving_colour is not None and job.output_volume_node.IsA("vtkMRMLVectorVolumeNode"):
                from ..warp import warp_in_own_type  # the photograph in colour, in its own integer type

                warped = warp_in_own_type(job.moving_colour, result.transform, result.fixed_grid, job.interpolation)
            else:
                warped = result.warped(job.interpolation)
        inverse = result.inverse() if job.inverse_node is not None else None
        return self.publish(job, result.transform, warped, jacobian, figures, inverse)

    # ------------------------------------------------------------------ background
    def processInBackground(self, fixedVolumeNode=None, movingVolumeNode=None, preset: str = "deformable-fast", *,
                            request: RegistrationRequest | None = None,
                            onProgress: Callable[[dict], None] | None = None,
                            onFinished: Callable[["BackgroundRegistration"], None] | None = None,
                            pythonExecutable: str | None = None, tempDirectory: str | None = None,
                            keepTemporaryFiles: bool = False, **keywords) -> "BackgroundRegistration":
        """Start ``deepreg register`` in a separate process; poll the returned handle from the main thread.

        The request is given as in :meth:`process`. Inputs are checked and written to a temporary folder first
        (errors are raised here, before anything starts). ``onProgress`` gets each JSON progress event;
        ``onFinished`` the handle once it is ``completed``, ``failed`` or ``cancelled``. Nodes are created only by
        :meth:`BackgroundRegistration.poll` (call it from the thread that owns the scene).
        """
        from ..io import write_points, write_transform

        request = request or RegistrationRequest.from_keywords(fixedVolumeNode, movingVolumeNode, preset, **keywords)
        job = self.prepare(request)
        preset, device = request.preset, request.device
        folder = Path(tempfile.mkdtemp(prefix="DeepRegistration-", dir=tempDirectory))
        try:
            args = ["register", "--preset", preset, "--device", device, "--progress", "json",
                    "--fixed", str(folder / "fixed.nrrd"), "--moving", str(folder / "moving.nrrd"),
                    "--out-transform", str(folder / "transform.h5")]
            job.fixed.write(folder / "fixed.nrrd")
            colour_out = job.moving_colour is not None and job.output_volume_node is not None and \
                job.output_volume_node.IsA("vtkMRMLVectorVolumeNode")
            # a colour moving image: the worker registers its preset's channel and warps the colours
            (job.moving_colour if colour_out else job.moving).write(folder / "moving.nrrd")
            for image, name in ((job.fixed_mask, "fixed-mask"), (job.moving_mask, "moving-mask")):
                if image is not None:
                    image.write(folder / f"{name}.nrrd")
                    args += [f"--{name}", str(folder / f"{name}.nrrd")]
            if job.fixed_points is not None:
                write_points(job.fixed_points, folder / "fixed-landmarks.csv")
                write_points(job.moving_points, folder / "moving-landmarks.csv")
                args += ["--fixed-landmarks", str(folder / "fixed-landmarks.csv"),
                         "--moving-landmarks", str(folder / "moving-landmarks.csv")]
            if job.initial is not None:
                write_transform(job.initial, folder / "initial.h5")
                args += ["--initial-transform", str(folder / "initial.h5")]
            if job.output_volume_node is not None:
                args += ["--out-image", str(folder / "warped.nrrd")]
            if job.jacobian_node is not None:
                args += ["--out-jacobian", str(folder / "jacobian.nrrd")]
            if job.inverse_node is not None:
                args += ["--out-inverse", str(folder / "inverse.h5")]
            if job.interpolation != "linear":
                args += ["--interpolation", job.interpolation]
            args += ["--cancel-file", str(folder / CANCEL_FILE)]
            for item in job.overrides:
                args += ["--set", item]
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return BackgroundRegistration(self, job, args, folder, onProgress, onFinished,
                                      pythonExecutable or default_python_executable(), keepTemporaryFiles)


