"""Library transforms <-> Slicer transform nodes (RAS, "from parent" = the library's fixed -> moving).

A linear part becomes a ``vtkTransform`` of the RAS-conjugated matrix; a dense part a
``vtkOrientedGridTransform`` of RAS vectors on its own grid (refined to the fixed image's resolution by an exact
change of representation); a composite a ``vtkGeneralTransform`` of those in application order.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..geometry import LPS_FROM_RAS, Grid, lps_from_ras_matrix
from ..transforms import (CompositeTransform, DisplacementField, StationaryVelocityField, Transform, refined_grid,
                          to_displacement_field)
from ..transforms.linear import AffineTransform, LinearTransform
from .nodes import slicer_module

__all__ = ["transform_from_node", "update_transform_node", "vtk_transform", "set_vtk_transform", "node_parts"]


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
    h = lps_from_ras_matrix(slicer_module().util.arrayFromVTKMatrix(m))
    return AffineTransform(h[:3, :3], h[:3, 3], center=[0.0, 0.0, 0.0])


def node_parts(transform: Transform, reference: Grid | None = None) -> list[Transform]:
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
    grid = refined_grid(field.grid, reference, max_voxels_factor)
    if grid is field.grid:
        return field
    return to_displacement_field(field, grid)  # sampled slab by slab: no full-size temporaries


def _ras_matrix(part: LinearTransform):
    """``vtkMatrix4x4`` of a linear fixed -> moving map in RAS (conjugated by ``diag(-1, -1, 1)``)."""
    return slicer_module().util.vtkMatrixFromArray(lps_from_ras_matrix(part.homogeneous().detach().double().numpy()))


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
    u = part.field.detach().float().cpu().numpy()
    vectors = np.empty((grid.num_voxels, 3), dtype=np.float32)  # float32: 1e-6 mm, half the memory
    for c, sign in enumerate((-1.0, -1.0, 1.0)):  # LPS -> RAS, one component at a time (no full-size temporary)
        np.multiply(u[c].reshape(-1), sign, out=vectors[:, c])
    image = vtk.vtkImageData()
    image.SetDimensions(*grid.size)
    image.SetSpacing(*grid.spacing)
    image.SetOrigin(*(LPS_FROM_RAS @ np.asarray(grid.origin)))
    array = numpy_support.numpy_to_vtk(vectors, deep=True, array_type=vtk.VTK_FLOAT)
    array.SetNumberOfComponents(3)
    image.GetPointData().SetScalars(array)
    t = slicer_module().vtkOrientedGridTransform()
    t.SetDisplacementGridData(image)
    t.SetGridDirectionMatrix(slicer_module().util.vtkMatrixFromArray(np.block([[LPS_FROM_RAS @ grid.direction_matrix(), np.zeros((3, 1))],
                                                        [np.zeros((1, 3)), np.ones((1, 1))]])))
    t.SetInterpolationModeToLinear()
    return t


def vtk_transform(transform: Transform, reference: Grid | None = None, field_only: bool = False):
    """``("linear", vtkMatrix4x4)``, ``("general", vtkGeneralTransform)`` or, with ``field_only``,
    ``("grid", vtkOrientedGridTransform)``: the RAS *from parent* of ``transform``.

    ``field_only`` samples the whole mapping (linear parts included) as one displacement field on ``reference``
    (exact at its voxel centres, linear interpolation between them): the form other tools and
    ``slicer.util.arrayFromGridTransform`` expect.
    """
    import vtk

    if transform.dim != 3:
        raise InputError("a Slicer transform node needs a 3D transform")
    if field_only:
        if reference is None:
            raise InputError("a displacement-field-only transform needs the grid to sample it on")
        return "grid", _vtk_grid(to_displacement_field(transform, reference))
    parts = node_parts(transform, reference)
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
    set_vtk_transform(node, *vtk_transform(transform, reference))


def set_vtk_transform(node, kind: str, vtk_transform) -> None:
    if kind == "linear":
        node.SetMatrixTransformFromParent(vtk_transform)
    else:
        node.SetAndObserveTransformFromParent(vtk_transform)

