"""The MRML bridge: Slicer nodes <-> library objects, and :class:`RegistrationLogic`.

This is the only module of the library that imports ``slicer`` / ``vtk``; it needs only the
``slicer-core`` wheel (real MRML scenes, no Qt, no Slicer application), so it runs in pytest.

Conventions:

* Slicer is RAS, the library LPS: points and vectors are flipped by ``diag(-1, -1, 1)``, matrices
  conjugated by it. This module is the only place where that happens.
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
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .errors import DeepRegError, InputError
from .geometry import Grid
from .image import Image
from .transforms import CompositeTransform, DisplacementField, StationaryVelocityField, Transform
from .transforms.linear import AffineTransform, LinearTransform
from .warp import warp_image

__all__ = ["RegistrationLogic", "RegistrationOutputs", "BackgroundRegistration", "image_from_volume_node",
           "update_volume_node_from_image", "transform_from_node", "update_transform_node",
           "mask_from_node", "points_from_markups", "grid_from_volume_node", "LPS_FROM_RAS"]

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])  # its own inverse: also RAS from LPS
_H_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


def _slicer():
    import slicer  # noqa: PLC0415 - only here, so the rest of the library never needs Slicer

    return slicer


def _matrix_to_numpy(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _numpy_to_matrix(array: np.ndarray):
    import vtk

    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(array[r, c]))
    return m


# ---------------------------------------------------------------------- volumes
def _check_volume_node(node, role: str, allow_labelmap: bool = False) -> None:
    """Refuse what cannot be registered, with the node named."""
    if node is None:
        raise InputError(f"no {role} volume selected")
    if not node.IsA("vtkMRMLVolumeNode"):
        raise InputError(f"{node.GetName()}: the {role} input is a {node.GetClassName()}, not a volume")
    if not allow_labelmap and node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(f"{node.GetName()}: the {role} volume is a labelmap; choose an intensity image "
                         "(labelmaps and segmentations go in the mask inputs)")
    data = node.GetImageData()
    if data is None or data.GetNumberOfPoints() == 0:
        raise InputError(f"{node.GetName()}: the {role} volume has no voxels")
    comps = data.GetNumberOfScalarComponents()
    if comps != 1:
        raise InputError(f"{node.GetName()}: the {role} volume has {comps} components per voxel (a vector, RGB "
                         "or 4D volume); registration needs a single-component scalar volume")
    dims = data.GetDimensions()
    if min(dims) < 2:
        raise InputError(f"{node.GetName()}: the {role} volume is a single slice ({dims[0]}x{dims[1]}x{dims[2]}); "
                         "the Slicer module registers 3D volumes (use 'deepreg register' for 2D images)")


def image_from_volume_node(node, role: str = "input", allow_labelmap: bool = False) -> Image:
    """The volume's voxels and geometry as a library :class:`Image` (LPS; the volume's local coordinates).

    The voxel array is copied (array order ``(k, j, i)``, dtype kept); the node is not modified.
    """
    slicer = _slicer()
    _check_volume_node(node, role, allow_labelmap)
    array = np.array(slicer.util.arrayFromVolume(node), copy=True)
    return Image(torch.from_numpy(array)[None], grid_from_volume_node(node), name=node.GetName())


def grid_from_volume_node(node) -> Grid:
    """The library :class:`Grid` (LPS) of a volume node's voxels, in its local coordinates (no voxel copy)."""
    return _grid_from_ijk_to_ras(_slicer_ijk_to_ras(node), node.GetImageData().GetDimensions())


def _grid_from_ijk_to_ras(ijk_to_ras: np.ndarray, size, start_index=(0, 0, 0)) -> Grid:
    """Grid of ``size`` voxels whose first voxel has index ``start_index`` under the 4x4 ``ijk_to_ras``."""
    ijk_to_lps = _H_FLIP @ ijk_to_ras
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    origin = ijk_to_lps @ np.array([*start_index, 1.0])
    return Grid(size=tuple(int(n) for n in size), origin=origin[:3], spacing=spacing,
                direction=ijk_to_lps[:3, :3] / spacing)


def _slicer_ijk_to_ras(node) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return _matrix_to_numpy(m)


def update_volume_node_from_image(node, image: Image) -> None:
    """Set the voxels and geometry of volume ``node`` from a 3D single-channel :class:`Image`."""
    slicer = _slicer()
    if image.dim != 3 or image.num_channels != 1:
        raise InputError(f"{image.name}: a Slicer volume needs a 3D single-channel image")
    lps = np.eye(4)
    lps[:3, :3] = image.grid.direction_matrix() @ np.diag(image.grid.spacing)
    lps[:3, 3] = image.grid.origin
    array = image.numpy()  # (k, j, i)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
    node.SetIJKToRASMatrix(_numpy_to_matrix(_H_FLIP @ lps))
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()


def mask_from_node(node, reference_volume_node, role: str) -> Image:
    """A mask image from a labelmap volume or a segmentation node (all segments, on the reference's grid)."""
    slicer = _slicer()
    if node.IsA("vtkMRMLSegmentationNode"):
        segmentation = node.GetSegmentation()
        ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
        if not ids:
            raise InputError(f"{node.GetName()}: the {role} mask segmentation has no segments")
        _check_volume_node(reference_volume_node, role)
        grid = grid_from_volume_node(reference_volume_node)
        union = torch.zeros(grid.shape, dtype=torch.bool)
        for sid in ids:
            segment = _segment_labelmap(node, sid)
            if segment is not None:
                union |= warp_image(segment, None, grid, "nearest").data[0] != 0
        mask = Image(union.to(torch.uint8)[None], grid, name=f"{node.GetName()} ({role} mask)")
    elif node.IsA("vtkMRMLScalarVolumeNode"):
        mask = image_from_volume_node(node, f"{role} mask", allow_labelmap=True)
        mask.name = f"{node.GetName()} ({role} mask)"
        mask = mask.as_label_map()
    else:
        raise InputError(f"{node.GetName()}: the {role} mask must be a segmentation or a labelmap, "
                         f"not a {node.GetClassName()}")
    return mask.check_not_empty_labels()


def _segment_labelmap(node, segment_id: str) -> Image | None:
    """One segment's binary labelmap in its own geometry (local coordinates), without touching the scene."""
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    slicer = _slicer()
    labelmap = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(node, segment_id, labelmap, False)
    extent = labelmap.GetExtent()
    if extent[1] < extent[0] or extent[3] < extent[2] or extent[5] < extent[4]:
        return None  # an empty segment
    dims = labelmap.GetDimensions()
    m = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(m)
    grid = _grid_from_ijk_to_ras(_matrix_to_numpy(m), dims, (extent[0], extent[2], extent[4]))
    array = vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(dims[::-1]) != 0
    return Image(torch.from_numpy(array.astype(np.uint8))[None], grid, name=segment_id)


def points_from_markups(node, role: str) -> np.ndarray:
    """Control points of a markups node, ``(N, 3)`` LPS mm (local coordinates of the node)."""
    slicer = _slicer()
    if not node.IsA("vtkMRMLMarkupsNode"):
        raise InputError(f"{node.GetName()}: the {role} landmarks must be a markups node")
    ras = np.asarray(slicer.util.arrayFromMarkupsControlPoints(node), dtype=np.float64).reshape(-1, 3)
    if len(ras) == 0:
        raise InputError(f"{node.GetName()}: the {role} landmarks node has no points")
    return ras @ LPS_FROM_RAS


# ---------------------------------------------------------------------- transforms
def transform_from_node(node) -> Transform:
    """A linear transform node as a library fixed -> moving transform (its *from parent* matrix, in LPS)."""
    import vtk

    if not node.IsA("vtkMRMLTransformNode"):
        raise InputError(f"{node.GetName()}: not a transform node")
    if not node.IsLinear():
        raise InputError(f"{node.GetName()}: only a linear (rigid/affine) initial transform is supported; "
                         "this one is non-linear")
    m = vtk.vtkMatrix4x4()
    node.GetMatrixTransformFromParent(m)
    h = _H_FLIP @ _matrix_to_numpy(m) @ _H_FLIP
    return AffineTransform(h[:3, :3], h[:3, 3], center=[0.0, 0.0, 0.0])


def _node_parts(transform: Transform, reference: Grid | None = None) -> list[Transform]:
    """``transform`` as a list of linear maps and displacement fields, in application order.

    Consecutive linear parts collapse into one affine; velocity fields are integrated on their own grid.
    Each field is then refined by an integer factor on its own grid (see :func:`_refined`), which keeps
    the mapping exactly as the library's (linear interpolation of the same function) while bringing
    the grid to the ``reference`` (fixed) resolution, where Slicer's cubic interpolation of a reloaded
    field and ITK's linear one agree closely.
    """
    parts = transform.parts if isinstance(transform, CompositeTransform) else [transform]
    out: list[Transform] = []
    for part in parts:
        if part.is_linear:
            if out and isinstance(out[-1], LinearTransform):
                out[-1] = CompositeTransform([out[-1], part]).collapse_linear()
            else:
                out.append(part if isinstance(part, LinearTransform) else part.collapse_linear())
        elif isinstance(part, (StationaryVelocityField, DisplacementField)):
            field = part.exponential() if isinstance(part, StationaryVelocityField) else part
            out.append(_refined(field, reference) if reference is not None else field)
        else:
            raise InputError(f"cannot convert a {part.kind} to a Slicer transform")
    return out


def _refined(field: DisplacementField, reference: Grid, max_voxels_factor: float = 2.0) -> DisplacementField:
    """``field`` on its own grid subdivided by integer factors (spacing <= the reference's where affordable).

    The refined grid contains the original nodes and the field is piecewise (tri)linear between them, so
    linear interpolation on the refined grid is the same function: an exact change of representation.
    """
    import math

    same_axes = np.allclose(field.grid.direction_matrix(), reference.direction_matrix(), atol=1e-6)
    target = reference.spacing if same_axes else [min(reference.spacing)] * 3
    factors = [max(1, math.ceil(s / t - 1e-6)) for s, t in zip(field.grid.spacing, target)]
    budget = max_voxels_factor * reference.num_voxels
    while math.prod((n - 1) * f + 1 for n, f in zip(field.grid.size, factors)) > budget and max(factors) > 1:
        factors = [max(1, f - 1) if f == max(factors) else f for f in factors]
    if all(f == 1 for f in factors):
        return field
    grid = Grid(size=[(n - 1) * f + 1 for n, f in zip(field.grid.size, factors)], origin=field.grid.origin,
                spacing=[s / f for s, f in zip(field.grid.spacing, factors)], direction=field.grid.direction_matrix())
    with torch.no_grad():
        points = grid.physical_points(dtype=torch.float64).reshape(-1, 3)
        values = field.displacement_at(points.to(field.field.dtype)).T.reshape(3, *grid.shape)
    return DisplacementField(values.float().contiguous(), grid)


def _ras_matrix(part: LinearTransform):
    """``vtkMatrix4x4`` of a linear fixed -> moving map in RAS (conjugated by ``diag(-1, -1, 1)``)."""
    return _numpy_to_matrix(_H_FLIP @ part.homogeneous().detach().double().numpy() @ _H_FLIP)


def _vtk_linear(part: LinearTransform):
    import vtk

    t = vtk.vtkTransform()
    t.SetMatrix(_ras_matrix(part))
    return t


def _vtk_grid(part: DisplacementField):
    """``vtkOrientedGridTransform`` (RAS vectors on the field's grid, linear interpolation like ITK)."""
    import vtk
    from vtk.util import numpy_support

    grid = part.grid
    u_ras = part.field.detach().float().cpu().numpy() * np.array([-1.0, -1.0, 1.0], dtype=np.float32).reshape(3, 1, 1, 1)
    vectors = np.ascontiguousarray(np.moveaxis(u_ras, 0, -1).reshape(-1, 3))  # float32: 1e-6 mm, half the memory
    image = vtk.vtkImageData()
    image.SetDimensions(*grid.size)
    image.SetSpacing(*grid.spacing)
    image.SetOrigin(*(LPS_FROM_RAS @ np.asarray(grid.origin)))
    array = numpy_support.numpy_to_vtk(vectors, deep=True, array_type=vtk.VTK_FLOAT)
    array.SetNumberOfComponents(3)
    image.GetPointData().SetScalars(array)
    t = _slicer().vtkOrientedGridTransform()
    t.SetDisplacementGridData(image)
    t.SetGridDirectionMatrix(_numpy_to_matrix(np.block([[LPS_FROM_RAS @ grid.direction_matrix(), np.zeros((3, 1))],
                                                        [np.zeros((1, 3)), np.ones((1, 1))]])))
    t.SetInterpolationModeToLinear()
    return t


def _vtk_transform(transform: Transform, reference: Grid | None = None):
    """``("linear", vtkMatrix4x4)`` or ``("general", vtkGeneralTransform)``: the RAS *from parent* of ``transform``."""
    import vtk

    if transform.dim != 3:
        raise InputError("a Slicer transform node needs a 3D transform")
    parts = _node_parts(transform, reference)
    if len(parts) == 1 and isinstance(parts[0], LinearTransform):
        return "linear", _ras_matrix(parts[0])
    general = vtk.vtkGeneralTransform()
    general.PostMultiply()  # concatenated in application order
    for part in parts:
        general.Concatenate(_vtk_linear(part) if isinstance(part, LinearTransform) else _vtk_grid(part))
    return "general", general


def update_transform_node(node, transform: Transform, reference: Grid | None = None) -> None:
    """Store ``transform`` (fixed -> moving, LPS) in ``node`` as its transform **from parent**.

    A linear result gives a linear node; otherwise the node holds a general transform (displacement
    fields on their own grids and linear parts, in application order), written by Slicer as an ITK
    composite that SimpleITK reads as the same mapping. With ``reference`` (the fixed grid), fields are
    refined towards its resolution without changing the mapping (see :func:`_node_parts`).
    """
    _set_transform(node, *_vtk_transform(transform, reference))


def _set_transform(node, kind: str, vtk_transform) -> None:
    if kind == "linear":
        node.SetMatrixTransformFromParent(vtk_transform)
    else:
        node.SetAndObserveTransformFromParent(vtk_transform)


# ---------------------------------------------------------------------- registration
@dataclass
class RegistrationOutputs:
    """The nodes a registration produced, its figures (time, device, folding, per stage loss), and the
    library transform (fixed -> moving, LPS) that the transform node holds."""

    transform_node: Any
    volume_node: Any = None
    jacobian_node: Any = None
    figures: dict = field(default_factory=dict)
    transform: Transform | None = None


@dataclass
class _Job:
    """Everything a registration needs, taken from the scene before anything runs."""

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


class RegistrationLogic:
    """Register two volume nodes of a scene and put the result in native Slicer nodes.

    ``process`` runs in the calling thread (scripting); ``processInBackground`` runs ``deepreg
    register`` in a separate Python process and returns a :class:`BackgroundRegistration` handle.
    Input nodes are never modified, except that when no output volume is requested the moving
    volume is placed under the output transform (that is how Slicer shows a registration result).
    On any error or cancel, nothing is added to or changed in the scene.
    """

    def __init__(self, scene=None) -> None:
        self.scene = scene if scene is not None else _slicer().mrmlScene
        if self.scene is None:
            raise InputError("no MRML scene (pass one, or run inside Slicer)")

    # ------------------------------------------------------------------ gathering inputs
    def _job(self, fixedVolumeNode, movingVolumeNode, preset: str, outputTransformNode=None, outputVolumeNode=None,
             fixedMaskNode=None, movingMaskNode=None, initialTransformNode=None, fixedLandmarksNode=None,
             movingLandmarksNode=None, jacobianVolumeNode=None, device: str = "auto", **parameters) -> _Job:
        from .registration import load_preset

        if fixedVolumeNode is not None and fixedVolumeNode is movingVolumeNode:
            raise InputError(f"{fixedVolumeNode.GetName()} is both the fixed and the moving volume; choose two volumes")
        fixed = image_from_volume_node(fixedVolumeNode, "fixed")
        moving = image_from_volume_node(movingVolumeNode, "moving")
        for out_node, what in ((outputVolumeNode, "output volume"), (jacobianVolumeNode, "Jacobian volume")):
            if out_node is not None and out_node in (fixedVolumeNode, movingVolumeNode):
                raise InputError(f"{out_node.GetName()}: the {what} is an input volume; choose or create another node")
        if outputVolumeNode is not None and outputVolumeNode is jacobianVolumeNode:
            raise InputError("the output volume and the Jacobian volume must be different nodes")
        if outputTransformNode is not None:
            if not outputTransformNode.IsA("vtkMRMLTransformNode"):
                raise InputError(f"{outputTransformNode.GetName()}: the output transform must be a transform node")
            if outputTransformNode is initialTransformNode:
                raise InputError(f"{outputTransformNode.GetName()} is both the initial and the output transform")
            if fixedVolumeNode.GetParentTransformNode() is outputTransformNode:
                raise InputError(f"the fixed volume is under the output transform {outputTransformNode.GetName()}; "
                                 "choose another output transform")
        overrides = overrides_from_parameters(parameters)
        config = load_preset(preset, overrides)  # fail now on an unknown preset or parameter
        if any(stage.model == "voxelmorph" for stage in config.stages):  # and on a bad model or volumes it refuses
            import torch

            from .networks.inference import check_network_stages

            check_network_stages(config, fixed, moving, torch.device("cpu"))
        job = _Job(fixedVolumeNode, movingVolumeNode, preset, overrides, device, fixed, moving,
                   output_transform_node=outputTransformNode, output_volume_node=outputVolumeNode,
                   jacobian_node=jacobianVolumeNode)
        if fixedMaskNode is not None:
            job.fixed_mask = mask_from_node(fixedMaskNode, fixedVolumeNode, "fixed")
        if movingMaskNode is not None:
            job.moving_mask = mask_from_node(movingMaskNode, movingVolumeNode, "moving")
        if (fixedLandmarksNode is None) != (movingLandmarksNode is None):
            raise InputError("landmarks need both a fixed and a moving markups node")
        if fixedLandmarksNode is not None:
            job.fixed_points = points_from_markups(fixedLandmarksNode, "fixed")
            job.moving_points = points_from_markups(movingLandmarksNode, "moving")
            if len(job.fixed_points) != len(job.moving_points):
                raise InputError(f"landmark counts differ: {len(job.fixed_points)} fixed "
                                 f"({fixedLandmarksNode.GetName()}) vs {len(job.moving_points)} moving "
                                 f"({movingLandmarksNode.GetName()})")
        if initialTransformNode is not None:
            job.initial = transform_from_node(initialTransformNode)
        return job

    # ------------------------------------------------------------------ publishing results
    def _publish(self, job: _Job, transform: Transform, warped: Image | None, jacobian: Image | None,
                 figures: dict) -> RegistrationOutputs:
        """Create or update the output nodes (the only place that changes the scene)."""
        scene = self.scene
        fixed_node, moving_node = job.fixed_node, job.moving_node
        vtk_result = _vtk_transform(transform, job.fixed.grid)  # everything that can fail, before the scene changes
        for image in (warped, jacobian):
            if image is not None and (image.dim != 3 or image.num_channels != 1):
                raise InputError(f"{image.name}: expected a 3D single-channel result image")
        node = job.output_transform_node
        if node is None:
            node = scene.AddNewNodeByClass("vtkMRMLTransformNode",
                                           scene.GenerateUniqueName(f"{moving_node.GetName()}-to-{fixed_node.GetName()}"))
        _set_transform(node, *vtk_result)
        node.SetNodeReferenceID("spatialRegistrationFixed", fixed_node.GetID())
        node.SetNodeReferenceID("spatialRegistrationMoving", moving_node.GetID())
        node.SetAttribute("DeepRegistration.preset", job.preset)
        node.SetAttribute("DeepRegistration.figures", json.dumps(figures))
        node.SetAndObserveTransformNodeID(fixed_node.GetTransformNodeID())
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        outputs = RegistrationOutputs(transform_node=node, figures=figures, transform=transform)
        if job.output_volume_node is not None and warped is not None:
            update_volume_node_from_image(job.output_volume_node, warped)
            job.output_volume_node.SetAndObserveTransformNodeID(fixed_node.GetTransformNodeID())
            outputs.volume_node = job.output_volume_node
        else:
            moving_node.SetAndObserveTransformNodeID(node.GetID())
        if job.jacobian_node is not None and jacobian is not None:
            update_volume_node_from_image(job.jacobian_node, jacobian)
            job.jacobian_node.SetAndObserveTransformNodeID(fixed_node.GetTransformNodeID())
            outputs.jacobian_node = job.jacobian_node
        return outputs

    # ------------------------------------------------------------------ synchronous
    def process(self, fixedVolumeNode, movingVolumeNode, preset: str = "deformable-fast", outputTransformNode=None,
                outputVolumeNode=None, fixedMaskNode=None, movingMaskNode=None, initialTransformNode=None,
                fixedLandmarksNode=None, movingLandmarksNode=None, jacobianVolumeNode=None, device: str = "auto",
                progress: Callable[[dict], None] | None = None, cancel: Callable[[], bool] | None = None,
                **parameters) -> RegistrationOutputs:
        """Register in this thread and return the output nodes (see the class docstring).

        ``parameters``: ``similarity``, ``levels_mm``, ``iterations``, ``learning_rate``,
        ``regularisation_weight``, ``seed``, ``initialise``, ``overrides`` (see
        :func:`overrides_from_parameters`).
        """
        from .registration import load_preset, register

        job = self._job(fixedVolumeNode, movingVolumeNode, preset, outputTransformNode, outputVolumeNode,
                        fixedMaskNode, movingMaskNode, initialTransformNode, fixedLandmarksNode,
                        movingLandmarksNode, jacobianVolumeNode, device, **parameters)
        config = load_preset(preset, job.overrides)
        result = register(job.fixed, job.moving, config, fixed_mask=job.fixed_mask, moving_mask=job.moving_mask,
                          fixed_points=job.fixed_points, moving_points=job.moving_points,
                          initial_transform=job.initial, device=device, progress=progress, cancel=cancel,
                          initialise="landmarks" if job.fixed_points is not None and job.initial is None else None)
        # full resolution only when a Jacobian volume is asked for (as `deepreg register --out-jacobian`)
        det, grid, _ = result.jacobian(**({"max_voxels": job.fixed.grid.num_voxels} if job.jacobian_node is not None else {}))
        figures = result.figures
        jacobian = Image(det.float()[None], grid, name="jacobian") if job.jacobian_node is not None else None
        warped = result.warped() if job.output_volume_node is not None else None
        return self._publish(job, result.transform, warped, jacobian, figures)

    # ------------------------------------------------------------------ background
    def processInBackground(self, fixedVolumeNode, movingVolumeNode, preset: str = "deformable-fast",
                            outputTransformNode=None, outputVolumeNode=None, fixedMaskNode=None,
                            movingMaskNode=None, initialTransformNode=None, fixedLandmarksNode=None,
                            movingLandmarksNode=None, jacobianVolumeNode=None, device: str = "auto",
                            onProgress: Callable[[dict], None] | None = None,
                            onFinished: Callable[["BackgroundRegistration"], None] | None = None,
                            pythonExecutable: str | None = None, tempDirectory: str | None = None,
                            keepTemporaryFiles: bool = False, **parameters) -> "BackgroundRegistration":
        """Start ``deepreg register`` in a separate process; poll the returned handle from the main thread.

        Inputs are checked and written to a temporary folder first (errors are raised here, before
        anything starts). ``onProgress`` gets each JSON progress event; ``onFinished`` the handle once
        it is ``completed``, ``failed`` or ``cancelled``. Nodes are created only by
        :meth:`BackgroundRegistration.poll` (call it from the thread that owns the scene).
        """
        from .io import write_points, write_transform

        job = self._job(fixedVolumeNode, movingVolumeNode, preset, outputTransformNode, outputVolumeNode,
                        fixedMaskNode, movingMaskNode, initialTransformNode, fixedLandmarksNode,
                        movingLandmarksNode, jacobianVolumeNode, device, **parameters)
        folder = Path(tempfile.mkdtemp(prefix="DeepRegistration-", dir=tempDirectory))
        try:
            args = ["register", "--preset", preset, "--device", device, "--progress", "json",
                    "--fixed", str(folder / "fixed.nrrd"), "--moving", str(folder / "moving.nrrd"),
                    "--out-transform", str(folder / "transform.h5")]
            job.fixed.write(folder / "fixed.nrrd")
            job.moving.write(folder / "moving.nrrd")
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
            for item in job.overrides:
                args += ["--set", item]
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return BackgroundRegistration(self, job, args, folder, onProgress, onFinished,
                                      pythonExecutable or default_python_executable(), keepTemporaryFiles)


def default_python_executable() -> str:
    """``PythonSlicer`` inside Slicer (Slicer's Python without the GUI), else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


class BackgroundRegistration:
    """A registration running in a worker process (``python -m DeepRegistrationLib register ...``).

    ``state`` is ``running``, ``completed``, ``failed`` or ``cancelled``. Call :meth:`poll` regularly
    from the main thread (in Slicer a QTimer does it): it forwards progress and, when the worker has
    finished, creates the result nodes. :meth:`cancel` kills the worker's process tree; the scene is
    then left as it was.
    """

    def __init__(self, logic: RegistrationLogic, job: _Job, args: list[str], folder: Path,
                 on_progress, on_finished, python: str, keep_files: bool) -> None:
        self.logic, self.job, self.folder = logic, job, folder
        self.on_progress, self.on_finished, self.keep_files = on_progress, on_finished, keep_files
        self.state = "running"
        self.error = ""
        self.outputs: RegistrationOutputs | None = None
        self.last_progress: dict = {}
        self.figures: dict = {}
        self.log: list[str] = []
        self._events: queue.Queue = queue.Queue()
        self._cancel_requested = False
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join([package_root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env["PYTHONUNBUFFERED"] = "1"
        self.command = [python, "-m", "DeepRegistrationLib"] + args
        kwargs: dict = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
        else:
            kwargs["start_new_session"] = True  # own process group: cancel kills the whole tree
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env=env, **kwargs)
        self._readers = [threading.Thread(target=self._read, args=(self.process.stdout, "stdout"), daemon=True),
                         threading.Thread(target=self._read, args=(self.process.stderr, "stderr"), daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, name: str) -> None:
        for line in stream:
            self._events.put((name, line.rstrip("\n")))
        stream.close()

    @property
    def running(self) -> bool:
        return self.state == "running"

    def cancel(self) -> None:
        """Stop the worker now (its whole process tree); nothing is added to the scene."""
        if self.state != "running":
            return
        self._cancel_requested = True
        try:
            if os.name == "nt":
                subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.process.pid)], capture_output=True)
            else:
                os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            pass
        self.process.wait()
        self.poll()

    def poll(self) -> bool:
        """Handle pending output; finish when the worker has exited. Returns True while running."""
        if self.state != "running":
            return False
        self._drain()
        if self.process.poll() is None:
            return True
        for reader in self._readers:  # the worker has exited: its pipes reach EOF at once
            reader.join(timeout=5.0)
        self._drain()
        try:
            if self._cancel_requested:
                self.state = "cancelled"
            elif self.process.returncode != 0:
                self.state = "failed"
                errors = [line for line in self.log if line.startswith("deepreg:")]
                self.error = (errors[-1] if errors else (self.log[-1] if self.log else
                              f"the registration process exited with code {self.process.returncode}"))
                self.error = self.error.replace("deepreg: error: ", "")
            else:
                self.outputs = self._finish()
                self.state = "completed"
        except DeepRegError as err:
            self.state, self.error = "failed", str(err)
        finally:
            if not self.keep_files:
                shutil.rmtree(self.folder, ignore_errors=True)
        if self.on_finished is not None:
            self.on_finished(self)
        return False

    def wait(self, timeout_s: float | None = None, interval_s: float = 0.05) -> str:
        """Poll until the worker has finished (or ``timeout_s`` passed, then cancel); returns ``state``."""
        import time

        start = time.monotonic()
        while self.poll():
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                self.cancel()
                break
            time.sleep(interval_s)
        return self.state

    def _drain(self) -> None:
        while True:
            try:
                name, line = self._events.get_nowait()
            except queue.Empty:
                return
            if name == "stdout" and line.startswith("{"):
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    self.log.append(line)
                    continue
                if event.get("event") == "progress":
                    self.last_progress = event
                    if self.on_progress is not None:
                        self.on_progress(event)
                elif event.get("event") == "done":
                    self.figures = event.get("figures", {})
            elif line.strip():
                self.log.append(line)

    def _finish(self) -> RegistrationOutputs:
        from .io import read_image, read_transform

        folder, job = self.folder, self.job
        transform = read_transform(folder / "transform.h5")
        warped = read_image(folder / "warped.nrrd") if job.output_volume_node is not None else None
        jacobian = read_image(folder / "jacobian.nrrd") if job.jacobian_node is not None else None
        return self.logic._publish(job, transform, warped, jacobian, self.figures)
